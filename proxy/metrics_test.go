package proxy_test

import (
	"fmt"
	"io"
	"net/http"
	"slices"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/regmirror/regmirror/test/regtest"
)

// families are the metrics a pull moves.
var families = []string{
	"regmirror_requests_total",
	"regmirror_cache_requests_total",
	"regmirror_served_bytes_total",
	"regmirror_stale_answers_total",
	"regmirror_downloads_in_flight",
	"regmirror_downloads_queued",
	"regmirror_upstream_received_bytes_total",
	"regmirror_upstream_request_duration_seconds",
	"regmirror_upstream_errors_total",
	"regmirror_upstream_up",
	"regmirror_cache_bytes",
	"regmirror_cache_objects",
	"regmirror_cache_budget_bytes",
	"regmirror_cache_evictions_total",
	"regmirror_cache_evicted_bytes_total",
	"regmirror_cache_streamed_total",
}

// pullAll pulls ref through the mirror, reading its config and every layer
// once, and returns the bytes of the manifest, the config and the layers.
func pullAll(t *testing.T, e *env, ref string) int {
	t.Helper()
	img, err := remote.Image(e.mirrorRef(ref))
	if err != nil {
		t.Fatalf("pull %s: %v", ref, err)
	}
	n, _ := regtest.ReadImage(t, img)
	return int(n)
}

func TestMetricsMoveByExactlyAPullsWorth(t *testing.T) {
	e := newEnv(t)
	img, err := random.Image(1024, 2)
	if err != nil {
		t.Fatal(err)
	}
	e.push("library/app:1.0", img)

	start := e.scrape()
	n := pullAll(t, e, "app:1.0")
	cold := e.scrape()
	// One ping, the manifest by tag and three blobs (config and two layers),
	// each downloaded once; and the scrape before, as kind "other".
	want := []string{
		fmt.Sprintf(`regmirror_cache_bytes{}: 0 → %d`, n),
		`regmirror_cache_objects{}: 0 → 4`,
		`regmirror_cache_requests_total{kind="blob",outcome="miss"}: 0 → 3`,
		`regmirror_cache_requests_total{kind="manifest",outcome="miss"}: 0 → 1`,
		`regmirror_requests_total{code="200",kind="base",method="GET"}: 0 → 1`,
		`regmirror_requests_total{code="200",kind="blob",method="GET"}: 0 → 3`,
		`regmirror_requests_total{code="200",kind="manifest",method="GET"}: 0 → 1`,
		`regmirror_requests_total{code="200",kind="other",method="GET"}: 0 → 1`,
		fmt.Sprintf(`regmirror_served_bytes_total{source="upstream"}: 0 → %d`, n),
		fmt.Sprintf(`regmirror_upstream_received_bytes_total{registry="docker.io"}: 0 → %d`, n),
		`regmirror_upstream_request_duration_seconds{op="blob",registry="docker.io"}: 0 → 3`,
		`regmirror_upstream_request_duration_seconds{op="manifest",registry="docker.io"}: 0 → 1`,
	}
	slices.Sort(want)
	if got := cold.Diff(start, families...); !slices.Equal(got, want) {
		t.Errorf("a cold pull moved\n%q\nwant\n%q", got, want)
	}

	if pullAll(t, e, "app:1.0") != n {
		t.Fatal("the warm pull got other bytes")
	}
	warm := e.scrape()
	// The same requests, all answered from the cache: upstream untouched.
	want = []string{
		`regmirror_cache_requests_total{kind="blob",outcome="hit"}: 0 → 3`,
		`regmirror_cache_requests_total{kind="manifest",outcome="hit"}: 0 → 1`,
		`regmirror_requests_total{code="200",kind="base",method="GET"}: 1 → 2`,
		`regmirror_requests_total{code="200",kind="blob",method="GET"}: 3 → 6`,
		`regmirror_requests_total{code="200",kind="manifest",method="GET"}: 1 → 2`,
		`regmirror_requests_total{code="200",kind="other",method="GET"}: 1 → 2`,
		fmt.Sprintf(`regmirror_served_bytes_total{source="cache"}: 0 → %d`, n),
	}
	slices.Sort(want)
	if got := warm.Diff(cold, families...); !slices.Equal(got, want) {
		t.Errorf("a warm pull moved\n%q\nwant\n%q", got, want)
	}
	if v := warm.Value("regmirror_upstream_up", "registry", "docker.io"); v != 1 {
		t.Errorf("regmirror_upstream_up = %v, want 1", v)
	}
	// The Go and process collectors belong to main's registry, not the proxy's.
	if warm.Has("go_goroutines") {
		t.Error("the proxy registered the Go collector itself")
	}

	s := e.proxy.Stats()
	if s.Hits != 4 || s.Misses != 4 || s.FromCache != int64(n) || s.FromUpstream != int64(n) {
		t.Errorf("Stats = %+v, want 4 hits, 4 misses and %d bytes from each source", s, n)
	}
	if r, ok := s.HitRatio(); !ok || r != 0.5 {
		t.Errorf("HitRatio = %v, %v; want 0.5", r, ok)
	}
}

func TestMetricsOfRateLimitsFailuresAndStaleAnswers(t *testing.T) {
	down := make(chan struct{})
	hub := func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			select {
			case <-down:
				http.Error(w, "down", http.StatusServiceUnavailable)
				return
			default:
			}
			w.Header().Set("Ratelimit-Limit", "100;w=21600")
			w.Header().Set("Ratelimit-Remaining", "76;w=21600")
			next.ServeHTTP(w, r)
		})
	}
	e := newEnv(t, withUpstreamFault(hub), withTTL(time.Minute))
	img := randomImage(t)
	e.push("library/app:latest", img)

	m := e.scrape()
	if m.Has("regmirror_upstream_ratelimit_remaining") {
		t.Error("a rate limit is reported before upstream reported one")
	}
	e.do(http.MethodGet, "/v2/app/manifests/latest", nil)
	e.do(http.MethodGet, "/v2/app/manifests/missing", nil)
	e.do("BREW", "/v2/", nil)
	m = e.scrape()
	for _, c := range []struct {
		name   string
		labels []string
		want   float64
	}{
		{"regmirror_upstream_ratelimit_remaining", []string{"registry", "docker.io"}, 76},
		{"regmirror_upstream_ratelimit_limit", []string{"registry", "docker.io"}, 100},
		{"regmirror_upstream_errors_total", []string{"registry", "docker.io", "reason", "not_found"}, 1},
		{"regmirror_requests_total", []string{"kind", "manifest", "code", "404"}, 1},
		// Any method is counted, under a label from a fixed set.
		{"regmirror_requests_total", []string{"kind", "other", "method", "other", "code", "405"}, 1},
	} {
		if got := m.Value(c.name, c.labels...); got != c.want {
			t.Errorf("%s%q = %v, want %v", c.name, c.labels, got, c.want)
		}
	}

	close(down)
	e.clock.Advance(time.Hour)
	resp, body := e.do(http.MethodGet, "/v2/app/manifests/latest", nil)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("stale answer: status %d; body %s", resp.StatusCode, body)
	}
	stale := e.scrape()
	want := []string{
		`regmirror_cache_requests_total{kind="manifest",outcome="stale"}: 0 → 1`,
		`regmirror_requests_total{code="200",kind="manifest",method="GET"}: 1 → 2`,
		`regmirror_requests_total{code="200",kind="other",method="GET"}: 1 → 2`,
		fmt.Sprintf(`regmirror_served_bytes_total{source="cache"}: 0 → %d`, manifestSize(t, img)),
		`regmirror_stale_answers_total{registry="docker.io"}: 0 → 1`,
		`regmirror_upstream_errors_total{reason="server_error",registry="docker.io"}: 0 → 1`,
		`regmirror_upstream_request_duration_seconds{op="manifest",registry="docker.io"}: 2 → 3`,
		`regmirror_upstream_up{registry="docker.io"}: 1 → 0`,
	}
	slices.Sort(want)
	if got := stale.Diff(m, families...); !slices.Equal(got, want) {
		t.Errorf("a stale answer moved\n%q\nwant\n%q", got, want)
	}
}

func TestDownloadsInFlight(t *testing.T) {
	body, h := regtest.RandomBlob(t, 1<<20)
	g := newGate(h, body)
	e := newEnv(t, withUpstreamFault(g.wrap))
	e.pushBlob("library/big", body)

	done := make(chan error, 1)
	go func() {
		resp, err := http.Get(e.mirror.URL + "/v2/big/blobs/" + h.String())
		if err == nil {
			_, err = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}
		done <- err
	}()
	<-g.sent
	m := regtest.Scrape(t, e.mirror.URL+"/metrics")
	if v := m.Value("regmirror_downloads_in_flight"); v != 1 {
		t.Errorf("regmirror_downloads_in_flight during a download = %v, want 1", v)
	}
	close(g.open)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if v := e.scrape().Value("regmirror_downloads_in_flight"); v != 0 {
		t.Errorf("regmirror_downloads_in_flight after it = %v, want 0", v)
	}
}

func manifestSize(t *testing.T, img v1.Image) int {
	t.Helper()
	raw, err := img.RawManifest()
	if err != nil {
		t.Fatal(err)
	}
	return len(raw)
}

func TestMetricsOfABlobStreamedThroughForWantOfRoom(t *testing.T) {
	e := newEnv(t, withBudget(64<<10))
	body, h := regtest.RandomBlob(t, 256<<10)
	e.pushBlob("big", body)

	start := e.scrape()
	resp, got := e.do(http.MethodGet, "/v2/big/blobs/"+h.String(), nil)
	if resp.StatusCode != http.StatusOK || len(got) != len(body) {
		t.Fatalf("GET blob: status %d, %d bytes", resp.StatusCode, len(got))
	}
	m := e.scrape()
	want := []string{
		`regmirror_cache_requests_total{kind="blob",outcome="stream"}: 0 → 1`,
		`regmirror_cache_streamed_total{}: 0 → 1`,
		`regmirror_requests_total{code="200",kind="blob",method="GET"}: 0 → 1`,
		`regmirror_requests_total{code="200",kind="other",method="GET"}: 0 → 1`,
		fmt.Sprintf(`regmirror_served_bytes_total{source="upstream"}: 0 → %d`, len(body)),
		fmt.Sprintf(`regmirror_upstream_received_bytes_total{registry="docker.io"}: 0 → %d`, len(body)),
		`regmirror_upstream_request_duration_seconds{op="blob",registry="docker.io"}: 0 → 1`,
	}
	if got := m.Diff(start, families...); !slices.Equal(got, want) {
		t.Errorf("a blob streamed through moved\n%q\nwant\n%q", got, want)
	}
	if v := m.Value("regmirror_cache_budget_bytes"); v != 64<<10 {
		t.Errorf("regmirror_cache_budget_bytes = %v, want %d", v, 64<<10)
	}
	if s := e.proxy.Stats(); s.Streamed != 1 {
		t.Errorf("Stats.Streamed = %d, want 1", s.Streamed)
	}
}
