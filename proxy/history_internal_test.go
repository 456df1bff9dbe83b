package proxy

import (
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/zap"
)

// TestHistoryServedCountsEveryRequestAcrossSteps counts requests from many
// goroutines while the clock crosses step boundaries: every request and
// byte shows in the series of both ranges, whichever goroutine moved the
// live step on, and whether the read came before or after the last fold.
func TestHistoryServedCountsEveryRequestAcrossSteps(t *testing.T) {
	var clock atomic.Int64 // unix seconds
	start := time.Date(2026, 12, 2, 10, 58, 0, 0, time.UTC)
	clock.Store(start.Unix())
	now := func() time.Time { return time.Unix(clock.Load(), 0) }
	h := newHistory("", []string{"docker.io"}, now, zap.NewNop())

	const workers, each = 4, 500
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			for i := range each {
				if w == 0 && i%50 == 0 {
					clock.Add(60) // ten 5-minute steps and an hour boundary in all
				}
				h.served(true, cacheHit, true, 10)
			}
		})
	}
	wg.Wait()
	if got := clock.Load() - start.Unix(); got < 5*60 {
		t.Fatalf("the clock moved %d s, want steps crossed", got)
	}
	for r, hr := range historyRanges {
		var req, cached, bytes int64
		for _, b := range h.series(r) {
			req, cached, bytes = req+b.Requests, cached+b.Cached, bytes+b.FromCache
		}
		if want := int64(workers * each); req != want || cached != want || bytes != 10*want {
			t.Errorf("range %s: requests %d, cached %d, bytes from cache %d; want %d, %d, %d", hr.Name, req, cached, bytes, want, want, 10*want)
		}
	}
	// Counted after the read: the next read shows them.
	h.served(true, cacheMiss, true, 7)
	var req, fromUp int64
	for _, b := range h.series(0) {
		req, fromUp = req+b.Requests, fromUp+b.FromUpstream
	}
	if req != workers*each+1 || fromUp != 7 {
		t.Errorf("after one more miss: requests %d, bytes from upstream %d; want %d, 7", req, fromUp, workers*each+1)
	}
}
