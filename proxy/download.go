package proxy

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/regmirror/regmirror/cache"
	"go.uber.org/zap"
)

// download runs a flight: it fills the store from upstream, then leaves the
// proxy's map of flights and tells the flight's readers how it ended.
func (p *Proxy) download(fl *flight) {
	defer p.wg.Done()
	defer p.blobs.Hold(fl.digest)() // eviction leaves a blob alone while it downloads
	start := time.Now()
	err := p.fill(fl)
	p.releaseLease(fl, err)
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
	written := fl.progress().written
	if errors.Is(err, errStoredMeanwhile) {
		return // its requesters serve it from the store
	}
	if errors.Is(err, errPassThrough) {
		// Nobody claimed the response in time: the requesters left.
		time.AfterFunc(p.opt.UpstreamTimeout, func() {
			if h := fl.claim(written); h != nil {
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
		logAt("download failed", zap.String(keyUpstream, fl.up.Name()), zap.String(keyRepo, fl.repo),
			zap.Stringer(keyDigest, fl.digest), zap.Int64(keyBytes, written), zap.Error(err))
		return
	}
	p.log.Debug("download done", zap.String(keyUpstream, fl.up.Name()), zap.Stringer(keyDigest, fl.digest),
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

// handedOver is an upstream response a flight could not store, left for a
// reader to stream straight through, with the download slot it holds.
type handedOver struct {
	*attempt
	at      int64  // the blob's offset of its next byte
	release func() // gives back the download slot
}

// streamInstead turns the flight into a stream-through for its readers,
// because the store cannot keep the blob (err): there was no room for it
// (h.at 0), or the disk filled after h.at bytes, which are in the temp file.
func (p *Proxy) streamInstead(fl *flight, size int64, h *handedOver, v *cache.Verifier, err error) {
	p.log.Warn("cannot store blob; streaming it through", zap.String(keyUpstream, fl.up.Name()),
		zap.Stringer(keyDigest, fl.digest), zap.Int64("size", size), zap.Int64(keyBytes, h.at), zap.Error(err))
	fl.passThrough(size, h, v)
}

// end closes the response and gives back its slot.
func (h *handedOver) end() {
	h.attempt.end()
	h.release()
}

// unstorable reports whether a write into the temp file failed because the
// disk cannot take the blob (full, over quota, or failing): the content from
// upstream is good, so it is streamed instead.
func unstorable(err error) bool {
	return errors.Is(err, cache.ErrNoSpace) || errors.Is(err, syscall.ENOSPC) ||
		errors.Is(err, syscall.EDQUOT) || errors.Is(err, syscall.EIO)
}

// fill downloads the blob into a store writer, publishing progress as it
// goes. The content is committed only if it hashes to the digest. When the
// store cannot keep it, before or while it is written, fill hands the
// upstream response over to the flight's readers and returns errPassThrough.
func (p *Proxy) fill(fl *flight) error {
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
	a, err := p.open(fl)
	if err != nil {
		return err
	}
	size := a.size
	var w *cache.Writer
	if p.noRoom.Contains(fl.digest) {
		err = fmt.Errorf("%w: %s did not fit before", cache.ErrNoSpace, fl.digest)
	} else {
		w, err = p.blobs.Create(fl.digest, size, "application/octet-stream")
	}
	if errors.Is(err, cache.ErrNoSpace) {
		p.streamInstead(fl, size, &handedOver{attempt: a, release: release}, cache.NewVerifier(fl.digest, size), err)
		handed = true
		return errPassThrough
	}
	if err != nil {
		a.end()
		return err
	}
	defer w.Abort() // a no-op after a good Commit
	fl.start(size, w)
	defer func() {
		if !handed {
			a.end()
		}
	}()

	buf := make([]byte, pieceSize)
	held := 0     // read into buf's start but not written yet
	var off int64 // the temp file's length
	for resumes := 0; ; {
		n, rerr := a.Read(buf[held:])
		held += n
		if out := toWrite(off, held, rerr != nil); out > 0 {
			k, werr := w.Write(buf[:out])
			fl.advance(k) // what a failed write did write is in the file and its hash
			off += int64(k)
			if werr != nil && unstorable(werr) {
				// The disk filled: what the readers have read is in the
				// temp file, and the rest comes on from upstream.
				a.unread(buf[k:held])
				p.streamInstead(fl, size, &handedOver{attempt: a, at: fl.progress().written, release: release}, w.Verifier(), werr)
				handed = true
				return fmt.Errorf("%w: %w", errPassThrough, werr)
			}
			if werr != nil {
				return werr
			}
			held = copy(buf, buf[out:held])
		}
		if rerr == io.EOF {
			break
		}
		if rerr == nil {
			continue
		}
		rerr = fmt.Errorf("download %s: %w", fl.digest, rerr)
		written := fl.progress().written
		if p.ctx.Err() != nil || (size >= 0 && written >= size) {
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
			next, err := p.resume(fl, written, resumes)
			if err == nil {
				p.log.Info("download resumed", zap.String(keyUpstream, fl.up.Name()), zap.Stringer(keyDigest, fl.digest),
					zap.Int64("offset", written), zap.Int("attempt", resumes), zap.NamedError("cause", rerr))
				a = next
				break
			}
			rerr = fmt.Errorf("%w; resuming at byte %d: %w", rerr, written, err)
			if p.ctx.Err() != nil {
				return rerr
			}
			p.log.Info("download resume failed", zap.String(keyUpstream, fl.up.Name()), zap.Stringer(keyDigest, fl.digest),
				zap.Int64("offset", written), zap.Int("attempt", resumes), zap.Error(err))
		}
	}
	if fl.leader != nil {
		w.DeferUpload(p.leaderDone(fl, *fl.leader))
	}
	return w.Commit()
}

// pieceSize is how much fill reads and writes at a time.
const pieceSize = 256 << 10

// toWrite is how many of the held bytes at the start of fill's buffer to
// write now, the temp file being off bytes long. A read that filled the
// buffer means upstream is sending faster than the mirror writes: the file
// then grows to the next multiple of pieceSize, and the rest (less than a
// piece) starts the next one, held until the next read returns. Pieces at
// aligned offsets let the page cache keep the blob in large folios (about
// 240 KiB each, against 36 KiB when each read is written as it came:
// bench/RESULTS.md), which are cheaper to write, and to send to every follower
// and every later hit. A short read, or the end of the response, writes all
// that is held: upstream has nothing more for now, and holding bytes back
// would delay the followers.
func toWrite(off int64, held int, ended bool) int {
	if held < pieceSize || ended {
		return held
	}
	return pieceSize - int(off%pieceSize)
}

// minProgress is how many bytes a download must receive within
// UpstreamTimeout to count as moving (32 KiB: about 1 KB/s with the default).
const minProgress = 32 << 10

// maxResumes bounds how often one download resumes after a broken connection.
const maxResumes = 3

var errIdle = errors.New("upstream stopped sending")

// attempt is one upstream request of a download, read through its idle
// watchdog. It has its own context, so an idle timeout ends the request
// without ending the download.
type attempt struct {
	body    io.ReadCloser
	size    int64  // the blob's, as the response announced it; -1 when unknown
	pending []byte // read from body but not used yet: read again first
	ctx     context.Context
	cancel  context.CancelCauseFunc
	idle    *time.Timer // a body that sends nothing for UpstreamTimeout is cut
	timeout time.Duration
	since   int // bytes received since the idle timer was last reset
}

func (p *Proxy) newAttempt(resp *http.Response, ctx context.Context, cancel context.CancelCauseFunc) *attempt {
	return &attempt{body: resp.Body, size: resp.ContentLength, ctx: ctx, cancel: cancel, timeout: p.opt.UpstreamTimeout,
		idle: time.AfterFunc(p.opt.UpstreamTimeout, func() { cancel(errIdle) })}
}

// Read reads the body. Only real progress postpones the idle timeout: an
// upstream that trickles a byte every few seconds is as stuck as a silent
// one. A body cut by its context says why (errIdle).
func (a *attempt) Read(p []byte) (int, error) {
	if len(a.pending) > 0 {
		n := copy(p, a.pending)
		a.pending = a.pending[n:]
		return n, nil
	}
	n, err := a.body.Read(p)
	if a.since += n; a.since >= minProgress {
		a.idle.Reset(a.timeout)
		a.since = 0
	}
	if err != nil && err != io.EOF {
		if cause := context.Cause(a.ctx); cause != nil {
			err = cause
		}
	}
	return n, err
}

// unread puts b back in front of what is still to be read.
func (a *attempt) unread(b []byte) { a.pending = bytes.Clone(b) }

// skip reads and drops the first n bytes of the body, as progress: a
// registry that ignores Range resends what was written, and skipping a
// large part of a blob may take longer than the idle timeout.
func (a *attempt) skip(n int64) error {
	_, err := io.CopyN(io.Discard, a, n)
	if err == io.EOF {
		err = io.ErrUnexpectedEOF
	}
	return err
}

func (a *attempt) end() {
	a.idle.Stop()
	a.body.Close()
	a.cancel(nil)
}

// fetch asks upstream for the blob from offset on (size is the blob's
// length, or -1). A registry that ignores Range sends the whole blob again;
// the part before offset is skipped. ctx bounds the request.
func (p *Proxy) fetch(ctx context.Context, up Upstream, repo string, h v1.Hash, offset, size int64) (*attempt, error) {
	ctx, cancel := context.WithCancelCause(ctx)
	var resp *http.Response
	var err error
	if offset == 0 {
		resp, err = up.Blob(ctx, http.MethodGet, repo, h)
	} else {
		resp, err = up.BlobFrom(ctx, repo, h, offset, size)
	}
	if err != nil {
		cancel(nil)
		return nil, err
	}
	a := p.newAttempt(resp, ctx, cancel)
	if offset == 0 {
		return a, nil
	}
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

// resume asks upstream for the rest of the flight's blob from offset on,
// after a back-off that doubles with each attempt n. A flight that followed
// another replica carries on at once from whoever leads now, or upstream.
func (p *Proxy) resume(fl *flight, offset int64, n int) (*attempt, error) {
	if fl.leader != nil {
		return p.resumeFleet(fl, offset)
	}
	select {
	case <-time.After(time.Duration(1<<(n-1)) * 250 * time.Millisecond):
	case <-p.ctx.Done():
		return nil, p.ctx.Err()
	}
	return p.fetch(p.ctx, fl.up, fl.repo, fl.digest, offset, fl.size)
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
