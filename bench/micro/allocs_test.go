package micro_test

import (
	"net/http"
	"net/http/httptest"
	"testing"
)

// TestManifestHitAllocs holds the hot manifest path to its allocations per
// request (counts, not times: exact on any machine). They include the
// recorder's own 7 (NewRecorder and its header snapshot); a server's
// connection has its own instead. When a change adds one on purpose, raise
// the bound here and say why in bench/RESULTS.md.
func TestManifestHitAllocs(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector changes allocation counts (sync.Pool drops items on purpose)")
	}
	m := newMirror(t)
	bounds := map[string]map[string]float64{ // logger → request → most allocations
		"log=nop":  {"HEAD-tag": 14, "GET-digest": 14},
		"log=json": {"HEAD-tag": 14, "GET-digest": 18}, // the access line: no caller (proxy.New)
	}
	for _, lg := range loggers(t) {
		px := m.proxy(t, lg.log)
		for _, c := range []struct{ name, method, path string }{
			{"HEAD-tag", http.MethodHead, m.tagPath},
			{"GET-digest", http.MethodGet, m.manifestPath},
		} {
			req := httptest.NewRequest(c.method, c.path, nil)
			got := testing.AllocsPerRun(500, func() {
				rec := httptest.NewRecorder()
				px.ServeHTTP(rec, req)
				if rec.Code != http.StatusOK {
					t.Fatalf("%s %s: status = %d, want 200", c.method, c.path, rec.Code)
				}
			})
			if want := bounds[lg.name][c.name]; got > want {
				t.Errorf("%s %s: %.0f allocations per request, want at most %.0f", lg.name, c.name, got, want)
			}
		}
	}
}
