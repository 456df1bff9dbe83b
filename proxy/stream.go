package proxy

import (
	"io"
	"net/http"
	"strconv"
)

// streamThrough serves a blob its flight passed through without storing,
// straight from upstream (reader.go: the flight's own response if this
// requester claims it, else a request of its own), verified on the way with
// its last byte held back until it matched, as for a blob in flight. Range is
// ignored (a 200 with the whole blob is a valid answer), because a part could
// not be verified.
func (p *Proxy) streamThrough(w *response, r *http.Request, fl *flight, rt route) error {
	w.setCache(cacheStream)
	rd := &flightReader{p: p, fl: fl, size: fl.size, ctx: r.Context()}
	defer rd.Close()
	if rd.size < 0 && !r.ProtoAtLeast(1, 1) {
		// Without chunked encoding, the end of the connection would end the
		// body, so a cut one would look whole: ask upstream for the size.
		size, err := p.blobSize(r, rt)
		if err != nil {
			return err
		}
		rd.size = size
	}
	setBlobHeaders(w.Header(), rt.digest)
	if rd.size >= 0 {
		w.Header().Set("Content-Length", strconv.FormatInt(rd.size, 10))
	}
	w.WriteHeader(http.StatusOK)
	_, err := io.Copy(w, readerOnly{rd})
	return err
}

// blobSize asks upstream for the size of a blob with a HEAD, for an HTTP/1.0
// client, which needs a Content-Length. A blob whose size upstream does not
// say is refused.
func (p *Proxy) blobSize(r *http.Request, rt route) (int64, error) {
	resp, err := p.ups[rt.registry].Blob(r.Context(), http.MethodHead, rt.repo, rt.digest)
	if err != nil {
		return -1, err
	}
	resp.Body.Close()
	if resp.ContentLength < 0 {
		return -1, errNeedsLength()
	}
	return resp.ContentLength, nil
}

func errNeedsLength() error {
	return &ociError{status: http.StatusHTTPVersionNotSupported, code: "UNSUPPORTED",
		message: "the upstream does not say this blob's size and the mirror is not storing it: an HTTP/1.0 client needs one; use HTTP/1.1"}
}
