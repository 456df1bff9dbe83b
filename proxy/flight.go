package proxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/regmirror/regmirror/cache"
	"go.uber.org/zap"
)

// A flight is one upstream download of one blob into the store. The download
// runs in its own goroutine under the proxy's context, detached from every
// client; requesters follow the growing temp file, each through its own
// descriptor, so a slow or departed client only affects itself.
type flight struct {
	digest v1.Hash

	ready     chan struct{} // closed once upstream answered (size, w set) or the flight failed
	readyOnce sync.Once
	size      int64 // announced by upstream, -1 when unknown; set before ready
	w         *cache.Writer

	mu       sync.Mutex
	written  int64
	done     bool
	err      error         // why the flight failed; nil while running and after success
	progress chan struct{} // closed and replaced whenever written or done changes
	handed   *handedOver   // the upstream response, when the store could not keep the blob
}

// handedOver is an upstream response the flight could not store, left for
// the first requester to stream straight through. cancel ends its request.
type handedOver struct {
	resp    *http.Response
	ctx     context.Context
	cancel  context.CancelCauseFunc
	release func() // gives back the download slot it holds
}

// end closes the response and gives back its slot.
func (h *handedOver) end() {
	h.resp.Body.Close()
	h.cancel(nil)
	h.release()
}

// errPassThrough fails a flight whose blob the store cannot keep (larger
// than the budget, or no room): each requester streams it from upstream.
var errPassThrough = errors.New("blob streamed through without being stored")

// claim takes the handed-over response, once; later callers get nil and
// ask upstream themselves.
func (fl *flight) claim() *handedOver {
	fl.mu.Lock()
	defer fl.mu.Unlock()
	h := fl.handed
	fl.handed = nil
	return h
}

func newFlight(h v1.Hash) *flight {
	return &flight{digest: h, ready: make(chan struct{}), size: -1, progress: make(chan struct{})}
}

// state returns the progress so far and a channel that closes on the next change.
func (fl *flight) state() (written int64, done bool, err error, next <-chan struct{}) {
	fl.mu.Lock()
	defer fl.mu.Unlock()
	return fl.written, fl.done, fl.err, fl.progress
}

func (fl *flight) start(size int64, w *cache.Writer) {
	fl.size, fl.w = size, w
	fl.readyOnce.Do(func() { close(fl.ready) })
}

func (fl *flight) advance(n int) {
	fl.mu.Lock()
	fl.written += int64(n)
	close(fl.progress)
	fl.progress = make(chan struct{})
	fl.mu.Unlock()
}

func (fl *flight) finish(err error) {
	fl.mu.Lock()
	fl.done, fl.err = true, err
	close(fl.progress)
	fl.progress = make(chan struct{})
	fl.mu.Unlock()
	fl.readyOnce.Do(func() { close(fl.ready) })
}

// started reports whether upstream has answered, with the announced size.
func (fl *flight) started() (size int64, ok bool) {
	select {
	case <-fl.ready:
		if fl.w == nil {
			return -1, false
		}
		return fl.size, true
	default:
		return -1, false
	}
}

// join returns the flight for rt's digest, starting one if none runs. It
// returns nil when the blob is already in the store (a flight finished between
// the caller's miss and now), so the caller serves it from there.
func (p *Proxy) join(up Upstream, rt route) (fl *flight, leader bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if fl := p.flights[rt.digest]; fl != nil {
		return fl, false
	}
	if p.blobs.Has(rt.digest) {
		return nil, false
	}
	fl = newFlight(rt.digest)
	p.flights[rt.digest] = fl
	p.wg.Add(1)
	go p.download(fl, up, rt.repo)
	return fl, true
}

// flight returns the running flight for h, if any.
func (p *Proxy) flight(h v1.Hash) *flight {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.flights[h]
}

func (p *Proxy) download(fl *flight, up Upstream, repo string) {
	defer p.wg.Done()
	defer p.blobs.Hold(fl.digest)() // eviction leaves a blob alone while it downloads
	start := time.Now()
	err := p.fill(fl, up, repo)
	if errors.Is(err, cache.ErrNoSpace) {
		// It ran out of room while writing (a full disk, or a blob of
		// unknown size that outgrew the budget): the next requests stream
		// it. Noted before the flight ends, so a retry already knows.
		p.noRoom.Add(fl.digest, struct{}{})
	}
	// Leave the map before finishing: a requester that then finds no flight
	// finds the committed blob, or starts a fresh attempt after a failure.
	p.mu.Lock()
	delete(p.flights, fl.digest)
	p.mu.Unlock()
	fl.finish(err)
	written, _, _, _ := fl.state()
	if errors.Is(err, errPassThrough) {
		// Nobody claimed the response in time: the requesters left.
		time.AfterFunc(p.opt.UpstreamTimeout, func() {
			if h := fl.claim(); h != nil {
				h.end()
			}
		})
		return
	}
	if err != nil {
		logAt := p.log.Warn
		if isStoreError(err) {
			logAt = p.log.Error // the mirror's own disk failed, not an upstream
		}
		logAt("download failed", zap.String(keyUpstream, up.Name()), zap.String(keyRepo, repo),
			zap.Stringer(keyDigest, fl.digest), zap.Int64(keyBytes, written), zap.Error(err))
		return
	}
	p.log.Debug("download done", zap.String(keyUpstream, up.Name()), zap.Stringer(keyDigest, fl.digest),
		zap.Int64(keyBytes, written), zap.Duration(keyTook, time.Since(start)))
}

// slot waits for one of the MaxDownloads upstream downloads that may run at
// once, counted as queued while it waits. release gives it back; it may be
// called more than once. Without a limit a slot is free.
func (p *Proxy) slot(ctx context.Context, h v1.Hash) (release func(), err error) {
	if p.slots == nil {
		return func() {}, nil
	}
	select {
	case p.slots <- struct{}{}:
	default:
		p.stats.queued.Add(1)
		defer p.stats.queued.Add(-1)
		p.log.Debug("download queued", zap.Stringer(keyDigest, h), zap.Int("max_downloads", cap(p.slots)))
		select {
		case p.slots <- struct{}{}:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	var once sync.Once
	return func() { once.Do(func() { <-p.slots }) }, nil
}

// fill downloads the blob into a store writer, publishing progress as it
// goes. The content is committed only if it hashes to the digest.
func (p *Proxy) fill(fl *flight, up Upstream, repo string) error {
	release, err := p.slot(p.ctx, fl.digest)
	if err != nil {
		return err
	}
	handed := false // a handed-over response takes the slot with it
	defer func() {
		if !handed {
			release()
		}
	}()
	ctx, cancel := context.WithCancelCause(p.ctx)
	resp, err := up.Blob(ctx, http.MethodGet, repo, fl.digest)
	if err != nil {
		cancel(nil)
		return err
	}
	var w *cache.Writer
	if p.noRoom.Contains(fl.digest) {
		err = fmt.Errorf("%w: %s did not fit before", cache.ErrNoSpace, fl.digest)
	} else {
		w, err = p.blobs.Create(fl.digest, resp.ContentLength, "application/octet-stream")
	}
	if errors.Is(err, cache.ErrNoSpace) {
		p.log.Warn("cannot store blob; streaming it through", zap.String(keyUpstream, up.Name()),
			zap.Stringer(keyDigest, fl.digest), zap.Int64("size", resp.ContentLength), zap.Error(err))
		fl.mu.Lock()
		fl.handed = &handedOver{resp: resp, ctx: ctx, cancel: cancel, release: release}
		fl.mu.Unlock()
		handed = true
		return errPassThrough
	}
	if err != nil {
		resp.Body.Close()
		cancel(nil)
		return err
	}
	defer w.Abort() // a no-op after a good Commit
	fl.start(resp.ContentLength, w)

	a := p.newAttempt(resp, ctx, cancel)
	defer func() { a.end() }()
	buf := make([]byte, 256<<10)
	for resumes := 0; ; {
		n, rerr := a.body.Read(buf)
		if n > 0 {
			a.progress(n)
			if _, werr := w.Write(buf[:n]); werr != nil {
				return werr
			}
			fl.advance(n)
		}
		if rerr == io.EOF {
			break
		}
		if rerr == nil {
			continue
		}
		if cause := context.Cause(a.ctx); cause != nil {
			rerr = cause
		}
		rerr = fmt.Errorf("download %s: %w", fl.digest, rerr)
		written, _, _, _ := fl.state()
		if p.ctx.Err() != nil || (fl.size >= 0 && written >= fl.size) {
			return rerr
		}
		// The connection broke mid-blob: ask for the rest, and carry on
		// writing (and hashing) where it stopped. Followers see no gap. A
		// download in progress uses all its resumes, whatever the upstream's
		// health mark says for new requests.
		a.end()
		for {
			if resumes == maxResumes {
				return rerr
			}
			resumes++
			next, err := p.resume(up, repo, fl.digest, written, fl.size, resumes)
			if err == nil {
				p.log.Info("download resumed", zap.String(keyUpstream, up.Name()), zap.Stringer(keyDigest, fl.digest),
					zap.Int64("offset", written), zap.Int("attempt", resumes), zap.NamedError("cause", rerr))
				a = next
				break
			}
			rerr = fmt.Errorf("%w; resuming at byte %d: %w", rerr, written, err)
			if p.ctx.Err() != nil {
				return rerr
			}
			p.log.Info("download resume failed", zap.String(keyUpstream, up.Name()), zap.Stringer(keyDigest, fl.digest),
				zap.Int64("offset", written), zap.Int("attempt", resumes), zap.Error(err))
		}
	}
	return w.Commit()
}

// minProgress is how many bytes a download must receive within
// UpstreamTimeout to count as moving (32 KiB: about 1 KB/s with the default).
const minProgress = 32 << 10

// maxResumes bounds how often one download resumes after a broken connection.
const maxResumes = 3

// attempt is one upstream request of a download. It has its own context, so
// an idle timeout ends the request without ending the download.
type attempt struct {
	body    io.ReadCloser
	ctx     context.Context
	cancel  context.CancelCauseFunc
	idle    *time.Timer // a body that sends nothing for UpstreamTimeout is cut
	timeout time.Duration
	since   int // bytes received since the idle timer was last reset
}

func (p *Proxy) newAttempt(resp *http.Response, ctx context.Context, cancel context.CancelCauseFunc) *attempt {
	return &attempt{body: resp.Body, ctx: ctx, cancel: cancel, timeout: p.opt.UpstreamTimeout,
		idle: time.AfterFunc(p.opt.UpstreamTimeout, func() { cancel(errIdle) })}
}

// progress notes n bytes received. Only real progress postpones the idle
// timeout: an upstream that trickles a byte every few seconds is as stuck
// as a silent one.
func (a *attempt) progress(n int) {
	if a.since += n; a.since >= minProgress {
		a.idle.Reset(a.timeout)
		a.since = 0
	}
}

// skip reads and drops the first n bytes of the body, as progress: a
// registry that ignores Range resends what was written, and skipping a
// large part of a blob may take longer than the idle timeout.
func (a *attempt) skip(n int64) error {
	buf := make([]byte, 64<<10)
	for n > 0 {
		m, err := a.body.Read(buf[:min(int64(len(buf)), n)])
		n -= int64(m)
		a.progress(m)
		if err == io.EOF && n > 0 {
			err = io.ErrUnexpectedEOF
		}
		if err != nil && n > 0 {
			if cause := context.Cause(a.ctx); cause != nil {
				err = cause
			}
			return err
		}
	}
	return nil
}

func (a *attempt) end() {
	a.idle.Stop()
	a.body.Close()
	a.cancel(nil)
}

// resume asks upstream for the blob from offset on, after a back-off that
// doubles with each attempt. A registry that ignores Range sends the whole
// blob again; the part already written is skipped.
func (p *Proxy) resume(up Upstream, repo string, h v1.Hash, offset, size int64, n int) (*attempt, error) {
	select {
	case <-time.After(time.Duration(1<<(n-1)) * 250 * time.Millisecond):
	case <-p.ctx.Done():
		return nil, p.ctx.Err()
	}
	ctx, cancel := context.WithCancelCause(p.ctx)
	resp, err := up.BlobFrom(ctx, repo, h, offset, size)
	if err != nil {
		cancel(nil)
		return nil, err
	}
	a := p.newAttempt(resp, ctx, cancel)
	switch resp.StatusCode {
	case http.StatusPartialContent:
		if start, ok := rangeStart(resp.Header.Get("Content-Range")); !ok || start != offset {
			a.end()
			return nil, fmt.Errorf("%w: asked for bytes from %d, got Content-Range %q", errUpstreamInvalid, offset, resp.Header.Get("Content-Range"))
		}
	default: // 200: the whole blob again
		if err := a.skip(offset); err != nil {
			a.end()
			return nil, fmt.Errorf("skip the %d bytes already written: %w", offset, err)
		}
	}
	return a, nil
}

// rangeStart reads the first byte position of a Content-Range: bytes a-b/n.
func rangeStart(cr string) (int64, bool) {
	rest, ok := strings.CutPrefix(cr, "bytes ")
	if !ok {
		return 0, false
	}
	first, _, ok := strings.Cut(rest, "-")
	if !ok {
		return 0, false
	}
	n, err := strconv.ParseInt(first, 10, 64)
	return n, err == nil && n >= 0
}

var errIdle = errors.New("upstream stopped sending")

// flightReader reads a blob while its flight writes it. It blocks for bytes
// not yet written, and holds back the last byte until the content has been
// verified, so no client ever receives a complete wrong blob. It implements
// io.ReadSeeker over the announced size, so http.ServeContent serves Range
// requests on a blob in flight as it does on a file.
type flightReader struct {
	fl    *flight
	f     *os.File
	ctx   context.Context // the request's: a departed client stops waiting
	off   int64
	err   error  // a failure of the flight, as seen by this reader
	flush func() // pushes what was written to the client before waiting
}

func (fl *flight) reader(ctx context.Context, flush func()) (*flightReader, error) {
	f, err := fl.w.OpenReader()
	if err != nil {
		return nil, err
	}
	return &flightReader{fl: fl, f: f, ctx: ctx, flush: flush}, nil
}

// available blocks until bytes past r.off may be read and returns how many:
// what the flight has written, less the last byte while it is unverified.
// It returns io.EOF after a verified end, and the flight's error after a failure.
func (r *flightReader) available() (int64, error) {
	for {
		written, done, err, next := r.fl.state()
		if err != nil {
			r.err = err
			return 0, err
		}
		limit := written
		if !done && r.fl.size > 0 {
			limit = min(written, r.fl.size-1)
		}
		if r.off < limit {
			return limit - r.off, nil
		}
		if done {
			return 0, io.EOF
		}
		if r.flush != nil {
			r.flush()
		}
		select {
		case <-next:
		case <-r.ctx.Done():
			return 0, r.ctx.Err()
		}
	}
}

func (r *flightReader) Read(p []byte) (int, error) {
	avail, err := r.available()
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
func (r *flightReader) sendTo(dst io.ReaderFrom, lr *io.LimitedReader) (int64, error) {
	var total int64
	for lr.N > 0 {
		avail, err := r.available()
		if err == io.EOF {
			return total, nil
		}
		if err != nil {
			return total, err
		}
		if _, err := r.f.Seek(r.off, io.SeekStart); err != nil {
			r.err = err
			return total, err
		}
		n, err := dst.ReadFrom(&io.LimitedReader{R: r.f, N: min(avail, lr.N)})
		r.off += n
		lr.N -= n
		total += n
		if err != nil {
			return total, err
		}
		if n == 0 {
			return total, io.ErrNoProgress
		}
	}
	return total, nil
}

func (r *flightReader) Seek(offset int64, whence int) (int64, error) {
	abs := offset
	switch whence {
	case io.SeekStart:
	case io.SeekCurrent:
		abs += r.off
	case io.SeekEnd:
		if r.fl.size < 0 {
			return 0, errors.New("seek from end: size unknown")
		}
		abs += r.fl.size
	default:
		return 0, errors.New("seek: invalid whence")
	}
	if abs < 0 {
		return 0, errors.New("seek: negative position")
	}
	r.off = abs
	return abs, nil
}

func (r *flightReader) Close() error { return r.f.Close() }
