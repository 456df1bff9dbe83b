package proxy_test

import (
	"context"
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/regmirror/regmirror/proxy"
	"github.com/regmirror/regmirror/test/regtest"
)

// history GETs the series of a range, which also samples the states.
func (e *env) history(rng string) proxy.History {
	e.t.Helper()
	e.settle()
	resp, body := e.do(http.MethodGet, proxy.HistoryPath+"?range="+rng, nil)
	if resp.StatusCode != http.StatusOK {
		e.t.Fatalf("GET history %s: %d %s", rng, resp.StatusCode, body)
	}
	var h proxy.History
	if err := json.Unmarshal(body, &h); err != nil {
		e.t.Fatalf("history %s: %v\n%s", rng, err, body)
	}
	return h
}

// point is the step of h that starts at t.
func point(t *testing.T, h proxy.History, at time.Time) proxy.HistoryPoint {
	t.Helper()
	for _, pt := range h.Points {
		if pt.Time.Equal(at) {
			return pt
		}
	}
	t.Fatalf("the %s series has no step at %s (from %s to %s)", h.Range, at, h.Points[0].Time, h.Points[len(h.Points)-1].Time)
	return proxy.HistoryPoint{}
}

// checkShape checks a series has its steps, evenly spaced, ending with now's.
func checkShape(t *testing.T, h proxy.History, now time.Time) {
	t.Helper()
	want := map[string]struct {
		n    int
		step time.Duration
	}{"24h": {288, 5 * time.Minute}, "7d": {168, time.Hour}}[h.Range]
	if len(h.Points) != want.n || h.StepSeconds != int64(want.step/time.Second) {
		t.Fatalf("%s: %d points of %ds, want %d of %s", h.Range, len(h.Points), h.StepSeconds, want.n, want.step)
	}
	if last := h.Points[want.n-1].Time; !last.Equal(now.Truncate(want.step)) {
		t.Errorf("%s: the last step starts at %s, want %s", h.Range, last, now.Truncate(want.step))
	}
	for k := 1; k < want.n; k++ {
		if d := h.Points[k].Time.Sub(h.Points[k-1].Time); d != want.step {
			t.Fatalf("%s: step %d is %s after the one before, want %s", h.Range, k, d, want.step)
		}
	}
}

type counts struct{ requests, cached, fromCache, fromUpstream int64 }

func countsOf(pt proxy.HistoryPoint) counts {
	return counts{pt.Requests, pt.Cached, pt.FromCache, pt.FromUpstream}
}

var day0 = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

func TestHistoryRollsOverAtStepBoundaries(t *testing.T) {
	e := newEnv(t, withTTL(time.Hour))
	e.push("library/app:1", randomImage(t))
	// A request is counted when it ends: let each end before the clock moves.
	at := func(d time.Duration) { e.settle(); e.clock.Advance(day0.Add(d).Sub(e.clock.Now())) }

	at(time.Minute)
	n := int64(pullAll(t, e, "app:1")) // manifest, config, layer: 3 misses
	at(5*time.Minute - time.Second)
	pullAll(t, e, "app:1") // 3 hits, in the same step
	at(5 * time.Minute)
	pullAll(t, e, "app:1") // the next step

	day := e.history("24h")
	checkShape(t, day, e.clock.Now())
	if got, want := countsOf(point(t, day, day0)), (counts{6, 3, n, n}); got != want {
		t.Errorf("step 00:00 = %+v, want %+v", got, want)
	}
	if got, want := countsOf(point(t, day, day0.Add(5*time.Minute))), (counts{3, 3, n, 0}); got != want {
		t.Errorf("step 00:05 = %+v, want %+v", got, want)
	}
	if r := point(t, day, day0).HitRatio; r == nil || *r != 0.5 {
		t.Errorf("step 00:00 hit ratio = %v, want 0.5", r)
	}
	before := point(t, day, day0.Add(-5*time.Minute))
	if countsOf(before) != (counts{}) || before.CacheBytes != nil || before.HitRatio != nil {
		t.Errorf("the step before the start = %+v, want nothing", before)
	}
	if cb := point(t, day, day0.Add(5*time.Minute)).CacheBytes; cb == nil || *cb != e.store.Usage().Bytes {
		t.Errorf("cache bytes of the last step = %v, want %d", cb, e.store.Usage().Bytes)
	}
	week := e.history("7d")
	checkShape(t, week, e.clock.Now())
	if got, want := countsOf(point(t, week, day0)), (counts{9, 6, 2 * n, n}); got != want {
		t.Errorf("7d hour 00:00 = %+v, want %+v", got, want)
	}

	// A day later the 5-minute ring reuses the slot of 00:00: the old step
	// must be gone from it, and still be in the hourly ring.
	at(24*time.Hour + 30*time.Second)
	pullAll(t, e, "app:1")
	day = e.history("24h")
	checkShape(t, day, e.clock.Now())
	if got, want := countsOf(point(t, day, day0.Add(24*time.Hour))), (counts{3, 3, n, 0}); got != want {
		t.Errorf("step 00:00 of the next day = %+v, want %+v (the day before's counts left in its slot?)", got, want)
	}
	// The day from 00:05 to 00:00 the next day: the step of 00:05, and now's.
	if day.FromCache != 2*n || day.FromUpstream != 0 {
		t.Errorf("24h totals = %d from cache, %d from upstream; want %d, 0", day.FromCache, day.FromUpstream, 2*n)
	}
	week = e.history("7d")
	if got, want := countsOf(point(t, week, day0)), (counts{9, 6, 2 * n, n}); got != want {
		t.Errorf("7d hour 00:00 a day later = %+v, want %+v", got, want)
	}
	if got, want := countsOf(point(t, week, day0.Add(24*time.Hour))), (counts{3, 3, n, 0}); got != want {
		t.Errorf("7d hour 24:00 = %+v, want %+v", got, want)
	}
}

func TestHistorySurvivesARestart(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, proxy.HistoryFile)
	e := newEnv(t, withDataDir(dir), withTTL(time.Hour), withClockAt(day0.Add(time.Minute)))
	e.push("library/app:1", randomImage(t))
	n := int64(pullAll(t, e, "app:1"))
	e.history("24h") // a sample in the same step: nothing written yet
	if _, err := os.Stat(file); !os.IsNotExist(err) {
		t.Fatalf("history file written before a step ended: %v", err)
	}
	e.settle()
	e.clock.Advance(5 * time.Minute)
	pullAll(t, e, "app:1")
	e.history("24h") // the first sample of a new step has the file written
	waitFile(t, file, func(b []byte) bool { return strings.Contains(string(b), `"requests":3,`) })
	e.stop() // writes the step in progress too

	e2 := newEnv(t, withDataDir(dir), withTTL(time.Hour), withClockAt(day0.Add(8*time.Minute)))
	// The cache must leave the file alone, even when it reconciles.
	if err := e2.store.Reconcile(t.Context()); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(file); err != nil {
		t.Fatalf("reconciliation removed the history file: %v", err)
	}
	pullAll(t, e2, "app:1") // hits: the cache survived too
	day := e2.history("24h")
	checkShape(t, day, e2.clock.Now())
	if got, want := countsOf(point(t, day, day0)), (counts{3, 0, 0, n}); got != want {
		t.Errorf("step 00:00 after a restart = %+v, want %+v", got, want)
	}
	if got, want := countsOf(point(t, day, day0.Add(5*time.Minute))), (counts{6, 6, 2 * n, 0}); got != want {
		t.Errorf("step 00:05, across the restart = %+v, want %+v", got, want)
	}
	if got, want := countsOf(point(t, e2.history("7d"), day0)), (counts{9, 6, 2 * n, n}); got != want {
		t.Errorf("7d hour 00:00 after a restart = %+v, want %+v", got, want)
	}
	if len(e2.logs.FilterMessageSnippet("history").All()) != 0 {
		t.Errorf("a good history file was logged about: %v", e2.logs.FilterMessageSnippet("history").All())
	}
}

func TestHistoryOfAnotherFormatIsDropped(t *testing.T) {
	for _, tt := range []struct{ name, content, log string }{
		{"version", `{"version":99,"steps":[300,3600],"upstreams":["docker.io"],"rings":[[{"start":1767225600,"requests":7,"ups":[{}]}],[]]}`,
			"history: of another format version"},
		{"steps", `{"version":1,"steps":[60,3600],"upstreams":["docker.io"],"rings":[[{"start":1767225600,"requests":7,"ups":[{}]}],[]]}`,
			"history: of other steps"},
		{"garbage", `{"version":1,"rings":[[{"start":`, "history: does not parse"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			file := filepath.Join(dir, proxy.HistoryFile)
			if err := os.WriteFile(file, []byte(tt.content), 0o600); err != nil {
				t.Fatal(err)
			}
			e := newEnv(t, withDataDir(dir), withClockAt(day0.Add(time.Minute)))
			if c := len(e.logs.FilterMessageSnippet(tt.log).All()); c != 1 {
				t.Errorf("%d log lines %q, want 1; logs: %v", c, tt.log, e.logs.All())
			}
			day := e.history("24h")
			if pt := point(t, day, day0); pt.Requests != 0 {
				t.Errorf("the dropped file's step was loaded: %+v", pt)
			}
			e.clock.Advance(5 * time.Minute)
			e.history("24h")
			waitFile(t, file, func(b []byte) bool { return strings.HasPrefix(string(b), `{"version":1,`) })
		})
	}
}

// waitFile waits until file exists with content that ok accepts: the
// history is written off the request path.
func waitFile(t *testing.T, file string, ok func([]byte) bool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second) // a guard, not a measure
	defer cancel()
	for {
		b, err := os.ReadFile(file)
		if err == nil && ok(b) {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("%s never got the content wanted: %v\n%.500s", file, err, b)
		case <-time.After(time.Millisecond):
		}
	}
}

// upstreamSwitch answers normally, as a down registry (503), or as one
// refusing pulls for quota (429 with no pull left).
type upstreamSwitch struct {
	mode atomic.Int32
}

const (
	upOK = iota
	upDown
	upLimited
)

func (s *upstreamSwitch) wrap(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch s.mode.Load() {
		case upDown:
			http.Error(w, "down", http.StatusServiceUnavailable)
			return
		case upLimited:
			w.Header().Set("Ratelimit-Limit", "100;w=21600")
			w.Header().Set("Ratelimit-Remaining", "0;w=21600")
			if strings.Contains(r.URL.Path, "/manifests/") {
				http.Error(w, "toomanyrequests", http.StatusTooManyRequests)
				return
			}
		default:
			w.Header().Set("Ratelimit-Limit", "100;w=21600")
			w.Header().Set("Ratelimit-Remaining", "60;w=21600")
		}
		next.ServeHTTP(w, r)
	})
}

// waitUp waits until the mirror's /readyz says its default upstream is up.
func (e *env) waitUp() {
	e.t.Helper()
	for {
		_, body := e.do(http.MethodGet, proxy.ReadyPath, nil)
		if strings.Contains(string(body), `"up":true`) {
			return
		}
		select {
		case <-e.t.Context().Done():
			e.t.Fatal("the upstream did not come up")
		case <-time.After(time.Millisecond):
		}
	}
}

func TestHistoryCountsDownTimeAndRateLimits(t *testing.T) {
	var sw upstreamSwitch
	e := newEnv(t, withUpstreamFault(sw.wrap), withProbe(time.Millisecond), withClockAt(day0.Add(2*time.Minute)))
	e.history("24h") // up at 00:02
	sw.mode.Store(upDown)
	if resp, _ := e.do(http.MethodGet, "/v2/app/manifests/1", nil); resp.StatusCode < 500 {
		t.Fatalf("a manifest with the upstream down: %d", resp.StatusCode)
	}
	e.clock.Advance(2 * time.Minute)
	e.history("24h") // found down at 00:04: 2 minutes down
	e.clock.Advance(3 * time.Minute)
	day := e.history("24h") // and at 00:07: one more minute in 00:00, two in 00:05
	sw.mode.Store(upOK)
	e.waitUp()
	first, second := point(t, day, day0).Upstreams["docker.io"], point(t, day, day0.Add(5*time.Minute)).Upstreams["docker.io"]
	if first.DownSeconds != 180 || second.DownSeconds != 120 {
		t.Errorf("down seconds = %v in 00:00 and %v in 00:05, want 180 and 120", first.DownSeconds, second.DownSeconds)
	}
	if first.Errors == 0 {
		t.Errorf("no upstream error counted in 00:00: %+v", first)
	}
	e.clock.Advance(time.Minute)
	day = e.history("24h") // up again at 00:08
	if d := point(t, day, day0.Add(5*time.Minute)).Upstreams["docker.io"].DownSeconds; d != 120 {
		t.Errorf("down seconds of 00:05 after it came up = %v, want still 120", d)
	}
	if d := point(t, e.history("7d"), day0).Upstreams["docker.io"].DownSeconds; d != 300 {
		t.Errorf("down seconds of hour 00:00 = %v, want 300", d)
	}

	e.clock.Advance(5 * time.Minute) // 00:13
	e.push("library/app:2", randomImage(t))
	pullAll(t, e, "app:2")
	e.history("24h") // settles first
	sw.mode.Store(upLimited)
	e.clock.Advance(2 * time.Minute) // 00:15
	if resp, _ := e.do(http.MethodGet, "/v2/app/manifests/3", nil); resp.StatusCode != http.StatusTooManyRequests {
		t.Errorf("a manifest with no pull left: %d, want 429", resp.StatusCode)
	}
	day = e.history("24h")
	ok, limited := point(t, day, day0.Add(10*time.Minute)).Upstreams["docker.io"], point(t, day, day0.Add(15*time.Minute)).Upstreams["docker.io"]
	if ok.RateRemaining == nil || *ok.RateRemaining != 60 || *ok.RateLimit != 100 || ok.RateLimited != 0 {
		t.Errorf("00:10 = %+v, want 60 of 100 pulls left", ok)
	}
	if limited.RateRemaining == nil || *limited.RateRemaining != 0 || limited.RateLimited == 0 || limited.Errors != limited.RateLimited {
		t.Errorf("00:15 = %+v, want 0 pulls left and the 429s counted as errors", limited)
	}
}

func TestHistoryRanges(t *testing.T) {
	e := newEnv(t)
	for _, bad := range []string{"1h", "24H", "7d&range=24h", "x"} {
		resp, body := e.do(http.MethodGet, proxy.HistoryPath+"?range="+bad, nil)
		if resp.StatusCode != http.StatusBadRequest || regtest.OCICode(t, resp, body) != "UNSUPPORTED" ||
			!strings.Contains(string(body), "range=24h or range=7d") {
			t.Errorf("range=%s: %d %.200s, want 400 UNSUPPORTED naming the ranges", bad, resp.StatusCode, body)
		}
	}
	resp, body := e.do(http.MethodGet, proxy.HistoryPath, nil)
	var h proxy.History
	if err := json.Unmarshal(body, &h); resp.StatusCode != http.StatusOK || err != nil || h.Range != "24h" {
		t.Errorf("no range: %d, range %q (%v), want 200 and 24h", resp.StatusCode, h.Range, err)
	}
	resp, _ = e.do(http.MethodPost, proxy.HistoryPath, nil)
	if resp.StatusCode != http.StatusMethodNotAllowed {
		t.Errorf("POST history: %d, want 405", resp.StatusCode)
	}
}

func TestHistoryNeedsCredentialsLikeTheStatusPage(t *testing.T) {
	e := newEnv(t, withClientAuth(writeHtpasswd(t, htpasswdLine(t, "alice", "wonderland", "$2y$"))))
	for _, path := range []string{proxy.HistoryPath + "?range=24h", proxy.StatusPath} {
		if resp, _ := e.do(http.MethodGet, path, nil); resp.StatusCode != http.StatusUnauthorized {
			t.Errorf("GET %s without credentials: %d, want 401", path, resp.StatusCode)
		}
		h := http.Header{}
		h.Set("Authorization", "Basic YWxpY2U6d29uZGVybGFuZA==") // alice:wonderland
		if resp, body := e.do(http.MethodGet, path, h); resp.StatusCode != http.StatusOK {
			t.Errorf("GET %s as alice: %d %s", path, resp.StatusCode, body)
		}
	}
}

// TestHistoryAfterTheClockSteppedBackADay counts the steps of the clock as
// it now reads: the slot the later step held is taken back.
func TestHistoryAfterTheClockSteppedBackADay(t *testing.T) {
	e := newEnv(t, withTTL(48*time.Hour), withClockAt(day0.Add(24*time.Hour+time.Minute)))
	e.push("library/app:1", randomImage(t))
	pullAll(t, e, "app:1")
	e.settle()
	e.clock.Advance(-24 * time.Hour)
	pullAll(t, e, "app:1")
	day := e.history("24h")
	checkShape(t, day, e.clock.Now())
	if got := point(t, day, day0); got.Requests != 3 || got.Cached != 3 {
		t.Errorf("step 00:00 after the clock stepped back a day = %+v, want the 3 hits counted there", countsOf(got))
	}
}
