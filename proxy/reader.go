package proxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/regmirror/regmirror/cache"
)

// flightReader reads a blob while its flight writes it. It blocks for bytes
// not yet written, and holds back the last byte until the content has been
// verified, so no client ever receives a complete wrong blob. It implements
// io.ReadSeeker over the announced size, so http.ServeContent serves Range
// requests on a blob in flight as it does on a file.
//
// When the store gives up on the blob (errPassThrough), the reader carries
// on from upstream where the temp file ends (or from the start, without a
// temp file), checking the rest against the digest as it goes.
type flightReader struct {
	p     *Proxy
	fl    *flight
	f     *os.File        // the temp file; nil when there is none to follow
	size  int64           // the blob's, -1 when unknown
	ctx   context.Context // the request's: a departed client stops waiting
	off   int64
	err   error  // a failure of the flight, as seen by this reader
	flush func() // pushes what was written to the client before waiting

	stream *blobStream // set once the reader has followed the blob to upstream
}

// reader opens the flight's temp file for a requester. When the flight has
// no temp file (any more), the reader streams the blob from upstream.
func (p *Proxy) reader(ctx context.Context, fl *flight, flush func()) (*flightReader, error) {
	r := &flightReader{p: p, fl: fl, size: fl.size, ctx: ctx, flush: flush}
	if _, stored := fl.started(); !stored {
		return r, nil
	}
	f, err := fl.w.OpenReader()
	if err != nil && !fl.passedThrough() {
		return nil, err
	}
	r.f = f // nil if the flight gave up and removed the file meanwhile
	return r, nil
}

// errFromUpstream says the reader's next bytes come from its upstream
// stream, not from the temp file.
var errFromUpstream = errors.New("read on from upstream")

// available blocks until bytes past r.off may be read from the temp file and
// returns how many: what the flight has written, less the last byte while it
// is unverified. It returns io.EOF after a verified end, errFromUpstream once
// the rest is to be streamed, and the flight's error after a failure.
func (r *flightReader) available() (int64, error) {
	if r.f == nil {
		return 0, errFromUpstream
	}
	for {
		pr := r.fl.progress()
		if errors.Is(pr.err, errPassThrough) {
			// The file holds the bytes before the stream, which verifies
			// them with the rest: none of them is the last.
			if r.off < pr.written {
				return pr.written - r.off, nil
			}
			return 0, errFromUpstream
		}
		if pr.err != nil {
			r.err = pr.err
			return 0, pr.err
		}
		limit := pr.written
		if !pr.done && r.size > 0 && pr.written == r.size {
			limit-- // the last byte
		}
		if r.off < limit {
			return limit - r.off, nil
		}
		if pr.done {
			return 0, io.EOF
		}
		if r.flush != nil {
			r.flush()
		}
		select {
		case <-pr.changed:
		case <-r.ctx.Done():
			return 0, r.ctx.Err()
		}
	}
}

func (r *flightReader) Read(p []byte) (int, error) {
	avail, err := r.available()
	if err == errFromUpstream {
		return r.readUpstream(p)
	}
	if err != nil {
		return 0, err
	}
	n, rerr := r.f.ReadAt(p[:min(int64(len(p)), avail)], r.off)
	r.off += int64(n)
	if rerr != nil && rerr != io.EOF {
		r.err = rerr
		return n, rerr
	}
	return n, nil
}

// sendTo copies up to lr.N bytes to dst as sections of the temp file, as
// each becomes available, so a socket sends them with sendfile instead of
// copying them through user space. lr is the limit ServeContent put around r.
// Bytes streamed from upstream are copied.
func (r *flightReader) sendTo(dst io.ReaderFrom, lr *io.LimitedReader) (int64, error) {
	var total int64
	for lr.N > 0 {
		avail, err := r.available()
		if err == io.EOF {
			return total, nil
		}
		src := io.Reader(r.f)
		switch {
		case err == errFromUpstream:
			src, avail = readerOnly{r}, lr.N
		case err != nil:
			return total, err
		default:
			if _, err := r.f.Seek(r.off, io.SeekStart); err != nil {
				r.err = err
				return total, err
			}
		}
		n, err := dst.ReadFrom(&io.LimitedReader{R: src, N: min(avail, lr.N)})
		if src == r.f {
			r.off += n
		}
		lr.N -= n
		total += n
		if err != nil {
			return total, err
		}
		if n == 0 {
			if src != r.f {
				return total, nil // the stream's end
			}
			return total, io.ErrNoProgress
		}
	}
	return total, nil
}

// readerOnly hides everything but Read, so ReadFrom cannot call back into sendTo.
type readerOnly struct{ io.Reader }

func (r *flightReader) Seek(offset int64, whence int) (int64, error) {
	abs := offset
	switch whence {
	case io.SeekStart:
	case io.SeekCurrent:
		abs += r.off
	case io.SeekEnd:
		if r.size < 0 {
			return 0, errors.New("seek from end: size unknown")
		}
		abs += r.size
	default:
		return 0, errors.New("seek: invalid whence")
	}
	if abs < 0 {
		return 0, errors.New("seek: negative position")
	}
	r.off = abs
	return abs, nil
}

func (r *flightReader) Close() error {
	if r.stream != nil {
		r.stream.h.end()
	}
	if r.f == nil {
		return nil
	}
	return r.f.Close()
}

// blobStream is a reader's own upstream stream of the rest of a blob.
type blobStream struct {
	h   *handedOver
	off int64 // the blob's offset of the next byte out of r
	r   *holdLast
}

// readUpstream reads at r.off from the reader's upstream stream, opening
// it, or opening it again after a seek back, as needed.
func (r *flightReader) readUpstream(p []byte) (int, error) {
	if r.stream == nil || r.stream.off > r.off {
		if err := r.openStream(); err != nil {
			r.err = err
			return 0, err
		}
	}
	s := r.stream
	if s.off < r.off { // a seek forward: the bytes between are checked too
		n, err := io.CopyN(io.Discard, s.r, r.off-s.off)
		s.off += n
		if err != nil {
			return 0, r.streamFailed(err)
		}
	}
	n, err := s.r.Read(p)
	s.off += int64(n)
	r.off += int64(n)
	if err != nil && err != io.EOF {
		return n, r.streamFailed(err)
	}
	return n, err
}

func (r *flightReader) streamFailed(err error) error {
	if err == io.EOF {
		err = io.ErrUnexpectedEOF
	}
	r.err = fmt.Errorf("stream %s from upstream: %w", r.fl.digest, err)
	return r.err
}

// openStream starts the reader's stream where the temp file ends (from the
// start without one): with the flight's handed-over response if it is
// there and still unclaimed, else with a request of its own, which takes a
// download slot like any other.
func (r *flightReader) openStream() error {
	if r.stream != nil {
		r.stream.h.end()
		r.stream = nil
	}
	from, v := int64(0), cache.NewVerifier(r.fl.digest, r.size)
	if r.f != nil {
		from, v = r.fl.resumeStream()
	}
	h := r.fl.claim(from)
	if h == nil {
		release, err := r.p.slot(r.ctx, r.fl.digest)
		if err != nil {
			return err
		}
		a, err := r.p.fetch(r.ctx, r.fl.up, r.fl.repo, r.fl.digest, from, r.size)
		if err != nil {
			release()
			return err
		}
		h = &handedOver{attempt: a, at: from, release: release}
	}
	r.stream = &blobStream{h: h, off: from, r: &holdLast{r: &verifying{r: h, v: v}}}
	return nil
}

// verifying checks what it reads with v; at the end of r it returns io.EOF
// only if the content matched.
type verifying struct {
	r io.Reader
	v *cache.Verifier
}

func (c *verifying) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	if _, verr := c.v.Write(p[:n]); verr != nil {
		return 0, verr
	}
	if err == io.EOF {
		if verr := c.v.Check(); verr != nil {
			return n, verr
		}
	}
	return n, err
}

// holdLast passes r on but keeps the last byte read back until r ends
// cleanly (for a verifying reader: until the content matched). A reader
// downstream never sees all of a blob that did not verify.
type holdLast struct {
	r    io.Reader
	b    byte
	held bool
	err  error // r's end: io.EOF, or its failure
}

func (h *holdLast) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	for {
		if h.err != nil {
			if h.err == io.EOF && h.held {
				p[0], h.held = h.b, false
				return 1, nil
			}
			return 0, h.err
		}
		n, err := h.r.Read(p)
		h.err = err
		if n == 0 {
			continue
		}
		if err == io.EOF && !h.held {
			return n, nil // all verified, nothing held
		}
		// Out go the byte held and all but the last read; the last is held
		// (until the next call, when r has ended well).
		last := p[n-1]
		if h.held {
			copy(p[1:n], p[:n-1])
			p[0] = h.b
			h.b = last
			return n, nil
		}
		h.b, h.held = last, true
		if n > 1 {
			return n - 1, nil
		}
	}
}
