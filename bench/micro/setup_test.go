package micro_test

import (
	"net/http"
	"strings"
	"testing"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
)

// TestMirrorAnswers checks, quickly and without -bench, that every request
// the benchmarks time gets the answer they expect, from the cache alone.
func TestMirrorAnswers(t *testing.T) {
	m := newMirror(t)
	core, logs := observer.New(zap.InfoLevel)
	px := m.proxy(t, zap.New(core))
	before := m.counts.Snapshot()
	tests := []struct {
		name, method, path string
		status, bodyLen    int
		cache              string // the access log's cache outcome; "" for none
	}{
		{"PUT", http.MethodPut, m.tagPath, http.StatusMethodNotAllowed, -1, ""},
		{"bad digest", http.MethodGet, "/v2/bench/blobs/sha256:" + strings.Repeat("z", 64), http.StatusBadRequest, -1, ""},
		{"base", http.MethodGet, "/v2/", http.StatusOK, 2, ""},
		{"HEAD by tag", http.MethodHead, m.tagPath, http.StatusOK, 0, "hit"},
		{"GET by digest", http.MethodGet, m.manifestPath, http.StatusOK, m.manifestSize, "hit"},
		{"GET blob", http.MethodGet, m.blobPath, http.StatusOK, blobSize, "hit"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			logs.TakeAll()
			rec := m.expect(t, px, tt.method, tt.path, tt.status, tt.bodyLen)
			lines := logs.FilterMessage("request").AllUntimed()
			if len(lines) != 1 {
				t.Fatalf("%s %s: %d access-log lines, want 1", tt.method, tt.path, len(lines))
			}
			if got, _ := lines[0].ContextMap()["cache"].(string); got != tt.cache {
				t.Errorf("%s %s: cache = %q, want %q", tt.method, tt.path, got, tt.cache)
			}
			if tt.status == http.StatusOK && tt.path != "/v2/" {
				if got := rec.Header().Get("Docker-Content-Digest"); got == "" {
					t.Errorf("%s %s: no Docker-Content-Digest", tt.method, tt.path)
				}
			}
		})
	}
	after := m.counts.Snapshot()
	for k, n := range after {
		if n != before[k] {
			t.Errorf("upstream saw %s %d times, want 0", k, n-before[k])
		}
	}
}
