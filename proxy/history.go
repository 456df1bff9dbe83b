package proxy

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/regmirror/regmirror/cache"
	"github.com/regmirror/regmirror/upstream"
	"go.uber.org/zap"
)

// The series the status page charts and /_regmirror/history returns: a
// ring of fixed steps per range, so memory and the file stay bounded
// (288 + 168 buckets, times the upstreams).
//
// Traffic (requests, bytes by source) and upstream failures are counted
// where the metrics count them, into the bucket of that instant: a counter
// sampled later could not say in which step it moved. What is a state (cache
// bytes, budget, upstream health, rate-limit budget) or is counted by the
// store (evictions) is sampled: every sampleEvery, at each read of the page
// or the JSON, and at Close.
var historyRanges = []historyRange{
	{Name: "24h", Step: 5 * time.Minute, Points: 288},
	{Name: "7d", Step: time.Hour, Points: 168},
}

type historyRange struct {
	Name   string
	Step   time.Duration
	Points int
}

const (
	// HistoryPath returns the series as JSON: GET HistoryPath?range=24h (or 7d).
	HistoryPath = "/_regmirror/history"
	// HistoryFile is the file, in Options.DataDir, that keeps the series
	// across restarts. The cache owns the rest of the data dir (blobs/,
	// tmp/, index/) and never looks at other names.
	HistoryFile = "history.json"
	// historyVersion changes with the file's format or steps; a file of
	// another version is dropped.
	historyVersion = 1
	sampleEvery    = 10 * time.Second
	// maxHistoryFile bounds what is read back: a few dozen upstreams' worth.
	maxHistoryFile = 16 << 20
)

// bucket is one step of one range. Counters add up within the step; the
// sampled states keep the last value seen (Remaining: the lowest).
type bucket struct {
	Start        int64 `json:"start"` // unix seconds; 0: empty
	Requests     int64 `json:"requests,omitempty"`
	Cached       int64 `json:"cached,omitempty"` // of the requests, answered from the cache
	FromCache    int64 `json:"fromCache,omitempty"`
	FromUpstream int64 `json:"fromUpstream,omitempty"`
	Evictions    int64 `json:"evictions,omitempty"`
	EvictedBytes int64 `json:"evictedBytes,omitempty"`
	Sampled      bool  `json:"sampled,omitempty"` // the states below were seen in this step
	CacheBytes   int64 `json:"cacheBytes,omitempty"`
	Budget       int64 `json:"budget,omitempty"`
	// Ups is per upstream, in the proxy's order of names.
	Ups []upBucket `json:"ups"`
}

type upBucket struct {
	Errors      int64   `json:"errors,omitempty"`      // failed requests, not found answers aside
	RateLimited int64   `json:"rateLimited,omitempty"` // of them, 429s
	DownSeconds float64 `json:"downSeconds,omitempty"`
	// RateRemaining is the lowest pull budget the upstream reported in the
	// step, and RateLimit its quota; RateKnown says whether it reported one.
	RateKnown     bool `json:"rateKnown,omitempty"`
	RateRemaining int  `json:"rateRemaining,omitempty"`
	RateLimit     int  `json:"rateLimit,omitempty"`
}

// ring is one range's buckets, indexed by step number modulo their count.
type ring struct {
	step time.Duration
	b    []bucket
	live liveStep // the traffic of the current step, not yet in b
}

// liveStep counts the traffic of one step with atomics, so that a request
// takes no lock: the history's lock is taken only when the step ends (or
// the clock moves back to another one) and when the buckets are read, which
// fold the counts into the step's bucket. A request that counts while
// another moves the step on may land in the new step: never lost.
type liveStep struct {
	start                                     atomic.Int64 // unix seconds of the step counted; 0: none yet
	requests, cached, fromCache, fromUpstream atomic.Int64
}

func (r *ring) slotStart(t time.Time) int64 {
	s := int64(r.step / time.Second)
	return t.Unix() / s * s
}

// at is the bucket of instant t, emptied first if it held another step (an
// older one, or a newer one after the clock stepped back a whole ring).
func (r *ring) at(t time.Time, ups int) *bucket {
	start := r.slotStart(t)
	b := &r.b[start/int64(r.step/time.Second)%int64(len(r.b))]
	if b.Start != start {
		*b = bucket{Start: start, Ups: make([]upBucket, ups)}
	}
	return b
}

// history is the proxy's series, safe for concurrent use.
type history struct {
	file  string // "" keeps them in memory only
	names []string
	now   func() time.Time
	log   *zap.Logger

	mu    sync.Mutex
	rings []ring // as historyRanges
	// The last sample: when, and the store's counters then.
	sampledAt               time.Time
	evictions, evictedBytes int64
	savedSlot               int64 // the first range's step last written to the file

	saveMu  sync.Mutex    // one write of the file at a time
	saveNow chan struct{} // asks the sampling goroutine to write the file
	stop    chan struct{}
	done    chan struct{}
	once    sync.Once
}

func newHistory(file string, names []string, now func() time.Time, log *zap.Logger) *history {
	h := &history{file: file, names: names, now: now, log: log}
	for _, hr := range historyRanges {
		h.rings = append(h.rings, ring{step: hr.Step, b: make([]bucket, hr.Points)})
	}
	h.sampledAt = now()
	if file != "" {
		h.load(h.sampledAt)
	}
	h.savedSlot = h.rings[0].slotStart(h.sampledAt)
	return h
}

// startHistory keeps the proxy's series, loaded from Options.DataDir, and
// samples them every sampleEvery until closeHistory.
func (p *Proxy) startHistory() {
	file := ""
	if p.opt.DataDir != "" {
		file = filepath.Join(p.opt.DataDir, HistoryFile)
	}
	h := newHistory(file, p.names, p.opt.Now, p.log.Named("history"))
	h.stop, h.done, h.saveNow = make(chan struct{}), make(chan struct{}), make(chan struct{}, 1)
	p.hist = h
	if m := p.opt.Metrics; m != nil {
		m.history.Store(h)
	}
	go func() {
		defer close(h.done)
		t := time.NewTicker(sampleEvery)
		defer t.Stop()
		for {
			select {
			case <-h.stop:
				return
			case <-t.C:
				p.sampleHistory()
			case <-h.saveNow:
				h.save()
			}
		}
	}()
}

// closeHistory stops the sampling and writes the series a last time.
func (p *Proxy) closeHistory() {
	p.hist.once.Do(func() {
		close(p.hist.stop)
		<-p.hist.done
		p.sampleHistory()
		p.hist.save()
	})
}

// sampleHistory records the store's use and each upstream's state.
func (p *Proxy) sampleHistory() {
	var u *cache.Usage
	if x := p.op.Usage(); !x.Counting { // while counting, Bytes reads 0
		u = &x
	}
	ups := make([]upstreamState, len(p.names))
	for i, n := range p.names {
		up := p.ups[n]
		ups[i].up = up.Health().Up
		ups[i].rate, ups[i].rateKnown = up.RateLimit()
	}
	p.hist.sample(u, ups)
}

// each runs fn on the bucket of t in every range. Call with mu held.
func (h *history) each(t time.Time, fn func(b *bucket)) {
	for i := range h.rings {
		fn(h.rings[i].at(t, len(h.names)))
	}
}

// served counts one manifest, blob or tag-list answer as the metrics do:
// manifests and blobs toward the hit ratio (pass aside, as in
// Stats.HitRatio), the bytes of a successful answer by their source. It
// runs on every request, so it counts into the live step without a lock.
func (h *history) served(hitRatio bool, outcome string, ok bool, n int64) {
	now := h.now()
	cached := sourceOf(outcome) == fromCache
	for i := range h.rings {
		rg := &h.rings[i]
		l := &rg.live
		if start := rg.slotStart(now); l.start.Load() != start {
			h.mu.Lock()
			if l.start.Load() != start { // not moved on by another request meanwhile
				h.foldLive(rg)
				l.start.Store(start)
			}
			h.mu.Unlock()
		}
		if hitRatio && outcome != cachePass {
			l.requests.Add(1)
			if cached {
				l.cached.Add(1)
			}
		}
		switch {
		case !ok:
		case cached:
			l.fromCache.Add(n)
		default:
			l.fromUpstream.Add(n)
		}
	}
}

// foldLive moves the live step's counts into its bucket. Call with mu held.
// With nothing counted it leaves the buckets alone: a live step that ended
// long ago must not empty the newer step that took its slot since.
func (h *history) foldLive(rg *ring) {
	l := &rg.live
	req, cached, fromCache, fromUp := l.requests.Swap(0), l.cached.Swap(0), l.fromCache.Swap(0), l.fromUpstream.Swap(0)
	if req == 0 && cached == 0 && fromCache == 0 && fromUp == 0 {
		return
	}
	b := rg.at(time.Unix(l.start.Load(), 0), len(h.names))
	b.Requests += req
	b.Cached += cached
	b.FromCache += fromCache
	b.FromUpstream += fromUp
}

// foldAll brings every range's buckets up to date, before they are read.
// Call with mu held.
func (h *history) foldAll() {
	for i := range h.rings {
		h.foldLive(&h.rings[i])
	}
}

// failed counts one upstream request that did not get a 200.
func (h *history) failed(registry string, f upstream.Failure) {
	if f.Kind == upstream.KindNone || f.Kind == upstream.KindCanceled || f == failureNotFound {
		return // a 404 is an answer; a client that left says nothing of the upstream
	}
	i := h.index(registry)
	if i < 0 {
		return
	}
	now := h.now()
	h.mu.Lock()
	defer h.mu.Unlock()
	h.each(now, func(b *bucket) {
		b.Ups[i].Errors++
		if f == failureRateLimited {
			b.Ups[i].RateLimited++
		}
	})
}

var (
	failureNotFound    = upstream.Failure{Kind: upstream.KindStatus, Status: http.StatusNotFound}
	failureRateLimited = upstream.Failure{Kind: upstream.KindStatus, Status: http.StatusTooManyRequests}
)

func (h *history) index(registry string) int {
	for i, n := range h.names {
		if n == registry {
			return i
		}
	}
	return -1
}

// upstreamState is what a sample reads of one upstream.
type upstreamState struct {
	up        bool
	rate      upstream.RateLimit
	rateKnown bool
}

// sample records the states and the store's counters as of now. Time since
// the last sample counts as down for an upstream found down. It has the file
// written when a step of the first range has ended since the last write.
func (h *history) sample(u *cache.Usage, ups []upstreamState) {
	now := h.now()
	h.mu.Lock()
	h.foldAll() // every sampleEvery: live counts never outlive their slot
	from := h.sampledAt
	if now.Before(from) {
		from = now
	}
	for i, s := range ups {
		if !s.up {
			h.addDown(i, from, now)
		}
	}
	var dEv, dEvBytes int64
	if u != nil {
		// The store counts from its own start, which may be before ours.
		dEv, dEvBytes = max(u.Evictions-h.evictions, 0), max(u.EvictedBytes-h.evictedBytes, 0)
		h.evictions, h.evictedBytes = u.Evictions, u.EvictedBytes
	}
	h.each(now, func(b *bucket) {
		b.Evictions += dEv
		b.EvictedBytes += dEvBytes
		if u != nil {
			b.Sampled, b.CacheBytes, b.Budget = true, u.Bytes, u.Budget
		}
		for i, s := range ups {
			if !s.rateKnown {
				continue
			}
			ub := &b.Ups[i]
			if !ub.RateKnown || s.rate.Remaining < ub.RateRemaining {
				ub.RateRemaining = s.rate.Remaining
			}
			ub.RateKnown, ub.RateLimit = true, s.rate.Limit
		}
	})
	h.sampledAt = now
	slot := h.rings[0].slotStart(now)
	save := slot != h.savedSlot
	h.savedSlot = slot
	h.mu.Unlock()
	if save {
		// Written off the request path: a page view waits on no fsync.
		select {
		case h.saveNow <- struct{}{}:
		default: // a write is due already
		}
	}
}

// addDown spreads the down time from..to over the steps it spans. Call
// with mu held.
func (h *history) addDown(i int, from, to time.Time) {
	for r := range h.rings {
		rg := &h.rings[r]
		// At most one ring's worth of steps: older ones are gone anyway.
		if oldest := to.Add(-rg.step * time.Duration(len(rg.b))); from.Before(oldest) {
			from = oldest
		}
		for t := from; t.Before(to); {
			b := rg.at(t, len(h.names))
			end := time.Unix(b.Start, 0).Add(rg.step)
			if end.After(to) {
				end = to
			}
			b.Ups[i].DownSeconds += end.Sub(t).Seconds()
			t = end
		}
	}
}

// series is a copy of one range's buckets, oldest first, ending with the
// step of now; a step without data has only its Start.
func (h *history) series(r int) []bucket {
	now := h.now()
	h.mu.Lock()
	defer h.mu.Unlock()
	h.foldAll()
	rg := &h.rings[r]
	n := len(rg.b)
	step := int64(rg.step / time.Second)
	last := rg.slotStart(now)
	out := make([]bucket, n)
	for k := range n {
		start := last - int64(n-1-k)*step
		b := rg.b[start/step%int64(n)]
		if b.Start != start {
			b = bucket{Start: start, Ups: make([]upBucket, len(h.names))}
		} else {
			b.Ups = append([]upBucket(nil), b.Ups...)
		}
		out[k] = b
	}
	return out
}

// historyFile is the file's content.
type historyFile struct {
	Version   int        `json:"version"`
	Steps     []int64    `json:"steps"` // seconds, per range
	Upstreams []string   `json:"upstreams"`
	Rings     [][]bucket `json:"rings"` // per range, buckets with data only
}

// load reads the file, if there is one, as of now. One of another version or
// that does not parse is dropped with one log line: the charts start afresh.
func (h *history) load(now time.Time) {
	f, err := os.Open(h.file)
	if errors.Is(err, os.ErrNotExist) {
		return
	}
	if err != nil {
		h.log.Warn("history: cannot read; the charts start afresh", zap.String("file", h.file), zap.Error(err))
		return
	}
	defer f.Close()
	var hf historyFile
	if err := json.NewDecoder(io.LimitReader(f, maxHistoryFile)).Decode(&hf); err != nil {
		h.log.Warn("history: does not parse; the charts start afresh", zap.String("file", h.file), zap.Error(err))
		return
	}
	if hf.Version != historyVersion || len(hf.Steps) != len(h.rings) || len(hf.Rings) != len(h.rings) {
		h.log.Info("history: of another format version; the charts start afresh", zap.String("file", h.file),
			zap.Int("version", hf.Version), zap.Int("want", historyVersion))
		return
	}
	for r := range h.rings {
		if hf.Steps[r] != int64(h.rings[r].step/time.Second) {
			h.log.Info("history: of other steps; the charts start afresh", zap.String("file", h.file))
			return
		}
	}
	// Upstreams by name: one no longer configured is dropped, a new one starts empty.
	where := make([]int, len(hf.Upstreams))
	for j, n := range hf.Upstreams {
		where[j] = h.index(n)
	}
	for r := range h.rings {
		rg := &h.rings[r]
		step := int64(rg.step / time.Second)
		for _, b := range hf.Rings[r] {
			if b.Start <= 0 || b.Start%step != 0 || b.Start > now.Unix() {
				continue // not a step, or one ahead of the clock, which would hide steps to come
			}
			ups := make([]upBucket, len(h.names))
			for j, ub := range b.Ups {
				if j < len(where) && where[j] >= 0 {
					ups[where[j]] = ub
				}
			}
			b.Ups = ups
			slot := &rg.b[b.Start/step%int64(len(rg.b))]
			if b.Start > slot.Start {
				*slot = b
			}
		}
	}
}

// save writes the series crash-safely: a temp file beside the file, fsync,
// rename over it, fsync of the directory. A failure is logged; the series
// live on in memory.
func (h *history) save() {
	if h.file == "" {
		return
	}
	h.mu.Lock()
	h.foldAll()
	hf := historyFile{Version: historyVersion, Upstreams: h.names}
	for r := range h.rings {
		hf.Steps = append(hf.Steps, int64(h.rings[r].step/time.Second))
		var kept []bucket
		for _, b := range h.rings[r].b {
			if b.Start != 0 {
				kept = append(kept, b)
			}
		}
		hf.Rings = append(hf.Rings, kept)
	}
	body, err := json.Marshal(hf)
	h.mu.Unlock()
	if err == nil {
		h.saveMu.Lock()
		err = writeFileAtomic(h.file, body)
		h.saveMu.Unlock()
	}
	if err != nil {
		h.log.Warn("history: cannot write; the charts are kept in memory", zap.String("file", h.file), zap.Error(err))
	}
}

func writeFileAtomic(file string, body []byte) error {
	tmp := file + ".tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o640)
	if err != nil {
		return err
	}
	_, err = f.Write(body)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, file)
	}
	if err != nil {
		os.Remove(tmp)
		return err
	}
	d, err := os.Open(filepath.Dir(file))
	if err != nil {
		return err
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("sync %s: %w", filepath.Dir(file), err)
	}
	return nil
}
