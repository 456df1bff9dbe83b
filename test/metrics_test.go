package test

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"net/http"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/regmirror/regmirror/test/regtest"
)

// pullOnce pulls repoRef through the mirror with ggcr's remote, reading the
// manifest, the config and every layer exactly once, and returns their bytes
// and the number of requests it sent (the ping included).
func pullOnce(t *testing.T, m *mirrorProc, repoRef string) (bytes int64, requests int) {
	t.Helper()
	img, err := remote.Image(ref(t, m.Host(), repoRef), remote.WithContext(t.Context()))
	if err != nil {
		t.Fatalf("pull %s: %v; logs:\n%s", repoRef, err, m.Logs())
	}
	bytes, layers := regtest.ReadImage(t, img)
	return bytes, 3 + layers // ping, manifest, config, a GET per layer
}

// waitRequests waits until the mirror has written n access-log lines for
// registry requests (/v2/...). The mirror counts a request before it logs
// it, so its metrics then include all of them.
func (m *mirrorProc) waitRequests(t *testing.T, n int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), guard)
	defer cancel()
	seen := 0
	err := m.waitLog(ctx, func(rec map[string]any) bool {
		if p, _ := rec["path"].(string); rec["msg"] == "request" && strings.HasPrefix(p, "/v2/") {
			seen++
		}
		return seen >= n
	})
	if err != nil {
		t.Fatalf("waiting for %d access-log lines (saw %d): %v; logs:\n%s", n, seen, err, m.Logs())
	}
}

// metricsAddr is where the mirror said it serves its metrics.
func (m *mirrorProc) metricsAddr(t *testing.T) string {
	t.Helper()
	for line := range strings.SplitSeq(m.Logs(), "\n") {
		var rec struct{ Msg, Addr string }
		if json.Unmarshal([]byte(line), &rec) == nil && rec.Msg == "serving metrics" {
			return rec.Addr
		}
	}
	t.Fatalf("the mirror did not log where it serves metrics; logs:\n%s", m.Logs())
	return ""
}

func TestMetricsOnTheirOwnListener(t *testing.T) {
	t.Parallel()
	up := startUpstream(t, nil)
	img, err := random.Image(2048, 2)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(ref(t, up.Host(), "library/app:1"), img, remote.WithContext(t.Context())); err != nil {
		t.Fatal(err)
	}
	m := startMirror(t, up.URL, "", "REGMIRROR_METRICS_ADDR=127.0.0.1:0")
	metricsURL := "http://" + m.metricsAddr(t) + "/metrics"

	if resp, _ := m.do(http.MethodGet, "/metrics", nil); resp.StatusCode != http.StatusNotFound {
		t.Errorf("GET /metrics on the registry listener: status %d, want 404 when REGMIRROR_METRICS_ADDR is set", resp.StatusCode)
	}
	before := regtest.Scrape(t, metricsURL)
	n, requests := pullOnce(t, m, "app:1")
	m.waitRequests(t, requests)
	cold := regtest.Scrape(t, metricsURL)
	n2, requests2 := pullOnce(t, m, "app:1")
	m.waitRequests(t, requests+requests2)
	warm := regtest.Scrape(t, metricsURL)
	if n2 != n {
		t.Fatalf("the warm pull got %d bytes, the cold one %d", n2, n)
	}

	for _, c := range []struct {
		what     string
		from, to regtest.Metrics
		name     string
		labels   []string
		want     float64
	}{
		{"cold pull", before, cold, "regmirror_cache_requests_total", []string{"outcome", "miss"}, 4},
		{"cold pull", before, cold, "regmirror_cache_requests_total", []string{"outcome", "hit"}, 0},
		{"cold pull", before, cold, "regmirror_upstream_received_bytes_total", []string{"registry", "docker.io"}, float64(n)},
		{"cold pull", before, cold, "regmirror_served_bytes_total", []string{"source", "upstream"}, float64(n)},
		{"warm pull", cold, warm, "regmirror_cache_requests_total", []string{"outcome", "hit"}, 4},
		{"warm pull", cold, warm, "regmirror_cache_requests_total", []string{"outcome", "miss"}, 0},
		{"warm pull", cold, warm, "regmirror_upstream_received_bytes_total", nil, 0},
		{"warm pull", cold, warm, "regmirror_served_bytes_total", []string{"source", "cache"}, float64(n)},
		{"warm pull", cold, warm, "regmirror_requests_total", []string{"code", "200"}, float64(requests2)},
	} {
		if got := c.to.Value(c.name, c.labels...) - c.from.Value(c.name, c.labels...); got != c.want {
			t.Errorf("%s: %s%q moved by %v, want %v", c.what, c.name, c.labels, got, c.want)
		}
	}
	// main's registry has the Go and process collectors.
	for _, name := range []string{"go_goroutines", "process_resident_memory_bytes"} {
		if !warm.Has(name) {
			t.Errorf("no %s in the scrape", name)
		}
	}
}

// TestMetricsFollowTheirListenerForClientAuth: with REGMIRROR_HTPASSWD,
// metrics on a listener of their own need no password (a management address
// is their protection), while on the registry listener they ask for one, as
// the API does.
func TestMetricsFollowTheirListenerForClientAuth(t *testing.T) {
	t.Parallel()
	up := startUpstream(t, nil)
	htpasswd := filepath.Join(t.TempDir(), "htpasswd")
	writeFile(t, htpasswd, htpasswdEntry(t, "ci", "s3cret-pass"))
	own := startMirror(t, up.URL, "", "REGMIRROR_HTPASSWD="+htpasswd, "REGMIRROR_METRICS_ADDR=127.0.0.1:0")
	if resp, body := regtest.Do(t, http.MethodGet, "http://"+own.metricsAddr(t)+"/metrics", nil); resp.StatusCode != http.StatusOK ||
		!strings.Contains(string(body), "regmirror_upstream_up") {
		t.Errorf("GET /metrics on REGMIRROR_METRICS_ADDR without credentials: %d %.200s, want 200 with the metrics", resp.StatusCode, body)
	}

	shared := startMirror(t, up.URL, "", "REGMIRROR_HTPASSWD="+htpasswd)
	resp, _ := shared.do(http.MethodGet, "/metrics", nil)
	if resp.StatusCode != http.StatusUnauthorized || resp.Header.Get("WWW-Authenticate") != `Basic realm="regmirror"` {
		t.Errorf("GET /metrics on the registry listener without credentials: %d, WWW-Authenticate %q; want 401 with a Basic challenge",
			resp.StatusCode, resp.Header.Get("WWW-Authenticate"))
	}
	ci := http.Header{"Authorization": {"Basic " + base64.StdEncoding.EncodeToString([]byte("ci:s3cret-pass"))}}
	if resp, body := shared.do(http.MethodGet, "/metrics", ci); resp.StatusCode != http.StatusOK || !strings.Contains(string(body), "regmirror_upstream_up") {
		t.Errorf("GET /metrics on the registry listener as ci: %d %.200s, want 200 with the metrics", resp.StatusCode, body)
	}
}

func TestMetricsOnTheRegistryListenerByDefault(t *testing.T) {
	t.Parallel()
	up := startUpstream(t, nil)
	m := startMirror(t, up.URL, "")
	if resp, _ := m.do(http.MethodGet, "/v2/", nil); resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /v2/: status %d", resp.StatusCode)
	}
	m.waitRequests(t, 1)
	s := regtest.Scrape(t, m.URL+"/metrics")
	if v := s.Value("regmirror_requests_total", "kind", "base", "code", "200"); v != 1 {
		t.Errorf(`regmirror_requests_total{kind="base",code="200"} = %v, want 1`, v)
	}
	if v := s.Value("regmirror_upstream_up", "registry", "docker.io"); v != 1 {
		t.Errorf(`regmirror_upstream_up{registry="docker.io"} = %v, want 1`, v)
	}
	if resp, _ := m.do(http.MethodPost, "/metrics", nil); resp.StatusCode != http.StatusMethodNotAllowed {
		t.Errorf("POST /metrics: status %d, want 405", resp.StatusCode)
	}
}
