package proxy

import (
	"bytes"
	"io"
	"math"
	"net/http"
	"strconv"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// response is the one wrapper around the ResponseWriter of every request the
// proxy answers. It notes the status and the bytes for the access log and
// carries what the handler tells the log; while http.ServeContent writes
// through it, it turns ServeContent's plain-text 4xx into OCI error bodies;
// and its ReadFrom hands the socket's ReadFrom (sendfile) a file, or a
// sectionSender, so content never needs copying through user space.
type response struct {
	http.ResponseWriter
	req         *http.Request
	status      int
	wroteHeader bool
	n           int64 // body bytes written

	attrs logAttrs

	serving  bool // inside serveContent: ServeContent's errors are rewritten
	dropping bool // an OCI error replaced ServeContent's answer: its own text is dropped

	body bytes.Reader // serveBytes' reader, part of the response to save an allocation
}

// Header values that never change, shared by every response that carries
// them: net/http only reads a header's values, and a handler that adds one
// appends past the slice's capacity, into a new array. Set by assignment
// under the canonical key, since Header.Set canonicalizes and allocates.
var (
	apiVersionValue   = []string{"registry/2.0"}
	acceptRangesValue = []string{"bytes"}
)

// setContentHeaders sets Content-Type, Docker-Content-Digest and the ETag
// (the digest, quoted) of content d: the digest formatted once (v1.Hash.String
// is a Sprintf), the three values in one allocation.
func setContentHeaders(h http.Header, contentType string, d v1.Hash) {
	etag := `"` + d.Algorithm + ":" + d.Hex + `"`
	v := make([]string, 3)
	v[0], v[1], v[2] = contentType, etag[1:len(etag)-1], etag
	// Capped, so that an Add to one header cannot write into the next.
	h["Content-Type"], h["Docker-Content-Digest"], h["Etag"] = v[0:1:1], v[1:2:2], v[2:3:3]
}

// logAttrs is what a handler tells the access log about its request.
type logAttrs struct {
	route  route
	routed bool   // route was parsed: the request is for the registry API
	kind   string // the metrics kind of a request outside the registry API (admin)
	cache  string // the cache outcome: cacheHit, cacheMiss, ...
	user   string // the user a client named, when client authentication is on
}

func (w *response) setCache(outcome string) { w.attrs.cache = outcome }
func (w *response) setUser(user string)     { w.attrs.user = user }
func (w *response) setKind(kind string)     { w.attrs.kind = kind }
func (w *response) setRoute(rt route)       { w.attrs.route, w.attrs.routed = rt, true }

// sectionSender is a reader that sends itself to a socket in sections of a
// file as they become readable (a blob in flight: what the download has
// written so far, then more), so that the socket's ReadFrom, sendfile,
// carries them. http.ServeContent hands ReadFrom the reader inside an
// *io.LimitedReader: sendTo sends at most lr.N bytes of it, lowering lr.N.
type sectionSender interface {
	sendTo(dst io.ReaderFrom, lr *io.LimitedReader) (int64, error)
}

// serveBytes serves content held in memory (a manifest) as serveContent
// does. A request without Range, If-Match or If-None-Match, nearly every
// one, gets what http.ServeContent would answer it (200, Accept-Ranges and
// Content-Length; a zero modification time makes If-Modified-Since and
// If-Unmodified-Since moot) without its parsing and seeking.
func (w *response) serveBytes(b []byte) {
	h := w.Header()
	if rh := w.req.Header; rh.Get("Range") != "" || rh.Get("If-Match") != "" || rh.Get("If-None-Match") != "" {
		w.body.Reset(b)
		w.serveContent(&w.body)
		return
	}
	h["Accept-Ranges"] = acceptRangesValue
	if h.Get("Content-Encoding") == "" {
		h["Content-Length"] = []string{strconv.Itoa(len(b))}
	}
	w.WriteHeader(http.StatusOK)
	if w.req.Method != http.MethodHead {
		w.Write(b)
	}
}

// serveContent serves content with http.ServeContent (Range, conditional
// requests), with its plain-text errors (416 for a bad Range, 412 for a
// failed precondition) turned into OCI error bodies.
func (w *response) serveContent(content io.ReadSeeker) {
	w.serving = true
	defer func() { w.serving, w.dropping = false, false }()
	http.ServeContent(w, w.req, "", time.Time{}, content)
}

func (w *response) WriteHeader(code int) {
	if w.serving {
		if code == http.StatusPartialContent { // emptyRange is only worth parsing then
			if size, empty := emptyRange(w.Header().Get("Content-Range")); empty {
				// ServeContent's answer to a suffix range of empty content:
				// nothing can satisfy it (RFC 9110), so say so.
				w.Header().Set("Content-Range", "bytes */"+size)
				code = http.StatusRequestedRangeNotSatisfiable
			}
		}
		if code >= 400 {
			w.serving = false // the OCI error's own header and body go out
			writeError(w, w.req, contentError(code))
			w.serving, w.dropping = true, true
			return
		}
	}
	if !w.wroteHeader && code >= 200 {
		w.status, w.wroteHeader = code, true
	}
	w.ResponseWriter.WriteHeader(code)
}

// contentError is the OCI error for one of http.ServeContent's 4xx answers.
func contentError(code int) *ociError {
	oe := &ociError{status: code, code: "UNKNOWN", message: strings.ToLower(http.StatusText(code))}
	switch code {
	case http.StatusRequestedRangeNotSatisfiable:
		oe.code = "RANGE_INVALID"
	case http.StatusPreconditionFailed:
		oe.code = "PRECONDITION_FAILED"
	}
	return oe
}

// emptyRange reports whether a Content-Range names no bytes, as in
// "bytes 0--1/0", and returns its complete length.
func emptyRange(cr string) (size string, empty bool) {
	spec, ok := strings.CutPrefix(cr, "bytes ")
	first, rest, ok2 := strings.Cut(spec, "-")
	last, size, ok3 := strings.Cut(rest, "/")
	a, err1 := strconv.ParseInt(first, 10, 64)
	b, err2 := strconv.ParseInt(last, 10, 64)
	return size, ok && ok2 && ok3 && err1 == nil && err2 == nil && b < a
}

func (w *response) Write(p []byte) (int, error) {
	if w.dropping {
		return len(p), nil
	}
	if !w.wroteHeader {
		w.WriteHeader(http.StatusOK)
	}
	n, err := w.ResponseWriter.Write(p)
	w.n += int64(n)
	return n, err
}

// ReadFrom sends src through the socket's ReadFrom (sendfile for a file),
// and a sectionSender's sections likewise.
func (w *response) ReadFrom(src io.Reader) (n int64, err error) {
	if w.dropping {
		return io.Copy(io.Discard, src)
	}
	if !w.wroteHeader {
		w.WriteHeader(http.StatusOK)
	}
	rf, ok := w.ResponseWriter.(io.ReaderFrom)
	switch {
	case !ok:
		n, err = io.Copy(writerOnly{w.ResponseWriter}, src)
	case sender(src) != nil:
		lr, limited := src.(*io.LimitedReader)
		if !limited {
			lr = &io.LimitedReader{R: src, N: math.MaxInt64}
		}
		n, err = sender(src).sendTo(rf, lr)
	default:
		n, err = rf.ReadFrom(src)
	}
	w.n += n
	return n, err
}

// sender returns src, or the reader ServeContent's limit wraps, if it is a
// sectionSender.
func sender(src io.Reader) sectionSender {
	if lr, ok := src.(*io.LimitedReader); ok {
		src = lr.R
	}
	s, _ := src.(sectionSender)
	return s
}

// short reports whether a GET's body ended before its Content-Length.
func (w *response) short() bool {
	if w.req.Method != http.MethodGet || !w.wroteHeader {
		return false
	}
	n, err := strconv.ParseInt(w.Header().Get("Content-Length"), 10, 64)
	return err == nil && w.n < n
}

func (w *response) statusCode() int {
	if !w.wroteHeader {
		return http.StatusOK
	}
	return w.status
}

func (w *response) Flush() { http.NewResponseController(w.ResponseWriter).Flush() }

func (w *response) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// writerOnly hides every method but Write, so io.Copy cannot loop back into ReadFrom.
type writerOnly struct{ io.Writer }
