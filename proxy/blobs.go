package proxy

import (
	"context"
	"errors"
	"io"
	"math"
	"net/http"
	"strconv"
	"strings"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/regmirror/regmirror/cache"
)

// Blobs is content at rest by digest, as serving and downloading blobs need
// it: what a storage backend of the cache provides (docs/ARCHITECTURE.md,
// Boundaries).
type Blobs interface {
	// OpenBlob opens a stored blob for serving: a local file (an *os.File,
	// which response.ReadFrom hands to sendfile) or, with a bucket, the
	// bucket's object, whose first GET starts at from (the request's range)
	// and whose reads after a seek elsewhere are ranged GETs bounded by ctx.
	// cache.ErrNotFound when it is not there.
	OpenBlob(ctx context.Context, h v1.Hash, from cache.From) (io.ReadSeekCloser, error)
	// StatBlob is the size of a stored blob, for a HEAD: no read of its
	// content (with a bucket, one HEAD of the object). cache.ErrNotFound
	// when OpenBlob would say so.
	StatBlob(ctx context.Context, h v1.Hash) (int64, error)
	Has(h v1.Hash) bool
	// Stored is Has that also asks the bucket (a HEAD, no read of the
	// content): for content another replica stored.
	Stored(ctx context.Context, h v1.Hash) bool
	// Create starts writing h; its Commit verifies size and digest before the
	// content is visible. cache.ErrNoSpace when the budget has no room.
	Create(h v1.Hash, size int64, mediaType string) (*cache.Writer, error)
	// Hold keeps h from eviction until release is called.
	Hold(h v1.Hash) (release func())
	// AwaitUpload returns once committed content is in the bucket (at once
	// without one), or when ctx ends.
	AwaitUpload(ctx context.Context, h v1.Hash) error
}

func (p *Proxy) serveBlob(w *response, r *http.Request, rt route) error {
	up := p.ups[rt.registry]
	defer p.blobs.Hold(rt.digest)() // eviction leaves a blob alone while it is served
	if r.Method == http.MethodHead {
		size, err := p.blobs.StatBlob(r.Context(), rt.digest)
		if err == nil {
			w.setCache(cacheHit)
			writeBlobHead(w, r, rt.digest, size)
			return nil
		}
		if !errors.Is(err, cache.ErrNotFound) {
			return err
		}
		return p.headBlob(w, r, up, rt)
	}
	// A flight can finish between our miss and our join; then the blob is in
	// the store and we look again. Twice is plenty; more means it vanished.
	for range 3 {
		f, err := p.blobs.OpenBlob(r.Context(), rt.digest, firstRead(r.Header))
		if err == nil {
			defer f.Close()
			w.setCache(cacheHit)
			serveContent(w, rt.digest, f)
			return nil
		}
		if !errors.Is(err, cache.ErrNotFound) {
			return err
		}
		fl, leader := p.join(up, rt)
		if fl == nil {
			continue
		}
		w.setCache(coalesced(cacheMiss, !leader))
		if err := p.follow(w, r, fl, rt); !errors.Is(err, errStoredMeanwhile) {
			return err
		}
		// Another replica stored it in the bucket first: nothing was
		// written yet, and the next look finds it.
	}
	return errors.New("blob vanished from the store while being served")
}

// follow streams a blob to the client as its flight downloads it.
func (p *Proxy) follow(w *response, r *http.Request, fl *flight, rt route) error {
	select {
	case <-fl.ready:
	case <-r.Context().Done():
		return r.Context().Err()
	}
	size, stored := fl.started()
	if !stored {
		if fl.passedThrough() { // it may not have finished yet
			return p.streamThrough(w, r, fl, rt)
		}
		return fl.failure() // upstream refused before sending anything: the client gets its OCI error
	}
	if size < 0 && (r.Header.Get("Range") != "" || !r.ProtoAtLeast(1, 1)) {
		// No announced size. Range needs it, and so does an HTTP/1.0
		// client, which has no chunked encoding: the end of the connection
		// would end the body, so a cut one would look whole. Such a client
		// waits for the whole blob and is served from the store.
		if err := fl.wait(r.Context(), func(int64) {}); err != nil {
			if errors.Is(err, errPassThrough) {
				return p.streamThrough(w, r, fl, rt)
			}
			return err
		}
		f, err := p.blobs.OpenBlob(r.Context(), fl.digest, firstRead(r.Header))
		if err != nil {
			return err
		}
		defer f.Close()
		serveContent(w, fl.digest, f)
		return nil
	}
	rc := http.NewResponseController(w)
	rd, err := p.reader(r.Context(), fl, func() { rc.Flush() })
	if err != nil {
		return err
	}
	defer rd.Close()
	if size >= 0 {
		serveContent(w, fl.digest, rd)
	} else {
		// No announced size: stream without Content-Length (chunked).
		setBlobHeaders(w.Header(), fl.digest)
		w.WriteHeader(http.StatusOK)
		io.Copy(w, rd)
	}
	if rd.err != nil {
		// Headers went out and the content failed: abort, never a truncated 200.
		return rd.err
	}
	return nil
}

// headBlob answers a HEAD for a blob we do not have: from a running flight,
// or by asking upstream with a HEAD, which downloads nothing.
func (p *Proxy) headBlob(w *response, r *http.Request, up Upstream, rt route) error {
	if fl := p.flight(rt.digest); fl != nil {
		if size, ok := fl.started(); ok && size >= 0 {
			w.setCache(cacheCoalesced)
			writeBlobHead(w, r, rt.digest, size)
			return nil
		}
	}
	w.setCache(cachePass)
	resp, err := up.Blob(r.Context(), http.MethodHead, rt.repo, rt.digest)
	if err != nil {
		return err
	}
	resp.Body.Close()
	writeBlobHead(w, r, rt.digest, resp.ContentLength)
	return nil
}

// writeBlobHead answers a HEAD for a blob of a known size without its
// content, through the same http.ServeContent as a cached blob: conditional
// and Range headers get the same answer (304, 206 with Content-Range, 416)
// whatever the cache holds.
func writeBlobHead(w *response, r *http.Request, h v1.Hash, size int64) {
	if size >= 0 {
		serveContent(w, h, sizeOnly{size: size})
		return
	}
	setBlobHeaders(w.Header(), h)
	w.Header().Set("Accept-Ranges", "bytes")
	w.WriteHeader(http.StatusOK)
}

// sizeOnly is content of a known size with no bytes to give: ServeContent
// seeks it to learn its size and ranges, and reads nothing for a HEAD.
type sizeOnly struct{ size int64 }

var errNoContent = errors.New("HEAD: no content to read")

func (s sizeOnly) Read([]byte) (int, error) { return 0, errNoContent }

func (s sizeOnly) Seek(offset int64, whence int) (int64, error) {
	switch whence {
	case io.SeekStart:
		return offset, nil
	case io.SeekEnd:
		return s.size + offset, nil
	}
	return 0, errNoContent // ServeContent seeks only from the start or the end
}

// firstRead is where http.ServeContent will first read a blob for a request
// with these headers, and how far: its first range, or the blob's start to
// its end. A guess (an If-Range that does not match, overlapping ranges, a
// range past the end are served from elsewhere), for the bucket's first GET
// to ask for just that.
func firstRead(h http.Header) cache.From {
	specs, ok := strings.CutPrefix(h.Get("Range"), "bytes=")
	if !ok {
		return cache.From{}
	}
	spec, _, _ := strings.Cut(specs, ",")
	first, last, ok := strings.Cut(strings.Trim(spec, " \t"), "-")
	if !ok {
		return cache.From{}
	}
	if first = strings.Trim(first, " \t"); first == "" {
		n, err := strconv.ParseInt(strings.Trim(last, " \t"), 10, 64)
		if err != nil || n <= 0 {
			return cache.From{}
		}
		return cache.From{Offset: n, Suffix: true}
	}
	n, err := strconv.ParseInt(first, 10, 64)
	if err != nil || n < 0 {
		return cache.From{}
	}
	from := cache.From{Offset: n}
	if end, err := strconv.ParseInt(strings.Trim(last, " \t"), 10, 64); err == nil && end >= n && end < math.MaxInt64 {
		from.Length = end - n + 1
	}
	return from
}

func setBlobHeaders(h http.Header, d v1.Hash) {
	setContentHeaders(h, "application/octet-stream", d)
}

// serveContent serves blob content with Range, conditional requests and, for
// a file, sendfile. A blob is immutable, so no Last-Modified: the ETag is the digest.
func serveContent(w *response, d v1.Hash, content io.ReadSeeker) {
	setBlobHeaders(w.Header(), d)
	w.serveContent(content)
}
