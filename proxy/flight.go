package proxy

import (
	"errors"
	"sync"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/regmirror/regmirror/cache"
)

// A flight is one upstream download of one blob into the store. The download
// (download.go) runs in its own goroutine under the proxy's context, detached
// from every client; requesters follow the growing temp file, each through
// its own descriptor (reader.go), so a slow or departed client only affects
// itself.
type flight struct {
	digest v1.Hash
	up     Upstream
	repo   string

	ready     chan struct{} // closed once upstream answered (size set, w too if stored) or the flight failed
	readyOnce sync.Once
	size      int64 // announced by upstream, -1 when unknown; set before ready
	w         *cache.Writer

	mu      sync.Mutex
	written int64
	done    bool
	err     error         // why the flight failed; nil while running and after success
	changed chan struct{} // closed and replaced whenever written or done changes
	// Once the store could not keep the blob (errPassThrough), readers carry
	// on from upstream: from streamAt, where the temp file ends, checked by
	// streamHash, which has seen the file's content.
	handed     *handedOver // the flight's own upstream response, at streamAt, for the first reader there
	streamAt   int64
	streamHash *cache.Verifier

	// In a fleet (fleet.go), set and read by the download alone: the
	// digest's lease while this replica leads, or the replica it follows.
	lease  *cache.Lease
	leader *cache.LeaseHolder
}

// errPassThrough fails a flight whose blob the store cannot keep (larger
// than the budget, no room, or the disk filled while it was written): each
// requester streams the rest from upstream.
var errPassThrough = errors.New("blob streamed through without being stored")

func newFlight(h v1.Hash, up Upstream, repo string) *flight {
	return &flight{digest: h, up: up, repo: repo, ready: make(chan struct{}), size: -1, changed: make(chan struct{})}
}

// flightProgress is where a flight stands.
type flightProgress struct {
	written int64
	done    bool
	err     error           // why it failed, once done
	changed <-chan struct{} // closes on the next change
}

func (fl *flight) progress() flightProgress {
	fl.mu.Lock()
	defer fl.mu.Unlock()
	return flightProgress{written: fl.written, done: fl.done, err: fl.err, changed: fl.changed}
}

// failure is why the flight failed: nil while it runs and after success.
func (fl *flight) failure() error { return fl.progress().err }

func (fl *flight) start(size int64, w *cache.Writer) {
	fl.size, fl.w = size, w
	fl.readyOnce.Do(func() { close(fl.ready) })
}

func (fl *flight) advance(n int) {
	if n == 0 {
		return
	}
	fl.mu.Lock()
	fl.written += int64(n)
	close(fl.changed)
	fl.changed = make(chan struct{})
	fl.mu.Unlock()
}

func (fl *flight) finish(err error) {
	fl.mu.Lock()
	fl.done, fl.err = true, err
	close(fl.changed)
	fl.changed = make(chan struct{})
	fl.mu.Unlock()
	fl.readyOnce.Do(func() { close(fl.ready) })
}

// passThrough leaves the blob to be streamed from upstream after the first
// fl.written bytes (those in the temp file, if any), which v has checked; h is
// the flight's upstream response, positioned there. The flight then
// finishes with errPassThrough.
func (fl *flight) passThrough(size int64, h *handedOver, v *cache.Verifier) {
	fl.mu.Lock()
	fl.handed, fl.streamAt, fl.streamHash = h, fl.written, v
	fl.mu.Unlock()
	fl.readyOnce.Do(func() { // without a writer: the store refused the blob at once
		fl.size = size
		close(fl.ready)
	})
}

// passedThrough reports whether the flight has given the blob up to
// streaming (it may not have finished yet).
func (fl *flight) passedThrough() bool {
	fl.mu.Lock()
	defer fl.mu.Unlock()
	return fl.streamHash != nil
}

// resumeStream says where a reader that has the temp file carries on from
// upstream once the flight passed the blob through, and the check of the
// bytes before it.
func (fl *flight) resumeStream() (at int64, v *cache.Verifier) {
	fl.mu.Lock()
	defer fl.mu.Unlock()
	return fl.streamAt, fl.streamHash.Clone()
}

// claim takes the flight's handed-over response if it starts at offset,
// once; later callers get nil and ask upstream themselves.
func (fl *flight) claim(offset int64) *handedOver {
	fl.mu.Lock()
	defer fl.mu.Unlock()
	h := fl.handed
	if h == nil || h.at != offset {
		return nil
	}
	fl.handed = nil
	return h
}

// started reports whether upstream has answered and the store is keeping
// the blob, with the announced size.
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
	fl = newFlight(rt.digest, up, rt.repo)
	p.flights[rt.digest] = fl
	p.wg.Add(1)
	go p.download(fl)
	return fl, true
}

// flight returns the running flight for h, if any.
func (p *Proxy) flight(h v1.Hash) *flight {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.flights[h]
}
