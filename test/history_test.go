package test

import (
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"testing"

	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/regmirror/regmirror/proxy"
)

// history sums the mirror's 24-hour series: manifest and blob requests,
// bytes from the cache and from upstream.
func (m *mirrorProc) history(t *testing.T) (requests, fromCache, fromUpstream int64) {
	t.Helper()
	resp, body := m.do(http.MethodGet, proxy.HistoryPath+"?range=24h", nil)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %d %s", proxy.HistoryPath, resp.StatusCode, body)
	}
	var h proxy.History
	if err := json.Unmarshal(body, &h); err != nil {
		t.Fatal(err)
	}
	if len(h.Points) != 288 {
		t.Fatalf("the 24-hour series has %d points, want 288", len(h.Points))
	}
	for _, pt := range h.Points {
		requests += pt.Requests
	}
	return requests, h.FromCache, h.FromUpstream
}

// TestHistorySurvivesARestartOfTheBinary pulls through the real binary,
// stops it with SIGTERM, starts it again on the same data dir and reads the
// series back, then pulls again.
func TestHistorySurvivesARestartOfTheBinary(t *testing.T) {
	t.Parallel()
	up := startUpstream(t, nil)
	img, err := random.Image(4096, 2)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(ref(t, up.Host(), "team/app:1"), img, remote.WithContext(t.Context())); err != nil {
		t.Fatal(err)
	}
	m := startMirror(t, up.URL, "")
	n, requests := pullOnce(t, m, "team/app:1")
	m.waitRequests(t, requests)
	if r, c, u := m.history(t); r != 4 || c != 0 || u != n {
		t.Errorf("after a cold pull: %d requests, %d bytes from cache, %d from upstream; want 4, 0, %d", r, c, u, n)
	}
	m.Stop()
	if _, err := os.Stat(filepath.Join(m.DataDir, proxy.HistoryFile)); err != nil {
		t.Fatalf("no history file after SIGTERM: %v", err)
	}

	m2 := startMirror(t, up.URL, m.DataDir)
	if r, c, u := m2.history(t); r != 4 || c != 0 || u != n {
		t.Errorf("after a restart: %d requests, %d bytes from cache, %d from upstream; want 4, 0, %d", r, c, u, n)
	}
	_, requests = pullOnce(t, m2, "team/app:1")
	m2.waitRequests(t, requests)
	if r, c, u := m2.history(t); r != 8 || c != n || u != n {
		t.Errorf("after a warm pull: %d requests, %d bytes from cache, %d from upstream; want 8, %d, %d", r, c, u, n, n)
	}
}
