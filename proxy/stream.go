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
func (p *Proxy) streamThrough(w http.ResponseWriter, r *http.Request, fl *flight, rt route) error {
	setCache(r.Context(), cacheStream)
	rd := &flightReader{p: p, fl: fl, size: fl.size, ctx: r.Context()}
	defer rd.Close()
	setBlobHeaders(w.Header(), rt.digest)
	if rd.size >= 0 {
		w.Header().Set("Content-Length", strconv.FormatInt(rd.size, 10))
	}
	w.WriteHeader(http.StatusOK)
	_, err := io.Copy(w, readerOnly{rd})
	return err
}
