package proxy_test

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/regmirror/regmirror/cache"
	"github.com/regmirror/regmirror/proxy"
	"github.com/regmirror/regmirror/test/regtest"
)

// section returns the HTML from the element with id up to the next element
// with an id: the page's cards and sections each have one, and nothing else.
func section(t *testing.T, page, id string) string {
	t.Helper()
	start := strings.Index(page, ` id="`+id+`"`)
	if start < 0 {
		t.Fatalf("the page has no element with id %q", id)
	}
	rest := page[start+1:]
	if end := strings.Index(rest, ` id="`); end >= 0 {
		rest = rest[:end]
	}
	return rest
}

func TestStatusPage(t *testing.T) {
	rateLimited := func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Ratelimit-Limit", "100;w=21600")
			w.Header().Set("Ratelimit-Remaining", "76;w=21600")
			next.ServeHTTP(w, r)
		})
	}
	const budget = 64 << 10
	e := newEnv(t, withUpstreamFault(rateLimited), withBudget(budget))
	app, tool := randomImage(t), randomImage(t)
	e.push("library/app:1.0", app)
	e.push("team/tool:2", tool)
	pullAll(t, e, "app:1.0")
	pullAll(t, e, "app:1.0")
	e.clock.Advance(time.Second)
	pullAll(t, e, "team/tool:2")
	// A pin whose repository name would be markup, were it not escaped.
	if err := e.store.Pin(cache.Pin{Registry: "docker.io", Repo: "<script>alert(1)</script>", Ref: "1.0", Digest: regtest.Digest(t, app)}); err != nil {
		t.Fatal(err)
	}
	e.settle()

	resp, body := e.do(http.MethodGet, "/", nil)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /: status = %d, want 200; body %s", resp.StatusCode, body)
	}
	if ct := resp.Header.Get("Content-Type"); ct != "text/html; charset=utf-8" {
		t.Errorf("Content-Type = %q", ct)
	}
	if csp := resp.Header.Get("Content-Security-Policy"); !strings.Contains(csp, "default-src 'none'") {
		t.Errorf("Content-Security-Policy = %q, want nothing loaded or run", csp)
	}
	page := string(body)
	for _, forbidden := range []string{"<script", "<link", "src=", "http://", "https://"} {
		if strings.Contains(page, forbidden) {
			t.Errorf("the page contains %q: it must be self-contained and run nothing", forbidden)
		}
	}

	s := e.proxy.Stats()
	u := e.store.Usage()
	ratio, _ := s.HitRatio()
	checks := []struct{ id, want string }{
		// Two pulls of app (the second all hits), one of tool; each is a
		// manifest, a config and a layer: 3 hits of 9.
		{"hit-ratio", fmt.Sprintf(">%.1f%%<", 100*ratio)},
		{"hit-ratio", "3 of 9 manifest and blob requests"},
		{"saved", `value="` + strconv.FormatInt(s.FromCache, 10) + `"`},
		{"fetched", `value="` + strconv.FormatInt(s.FromUpstream, 10) + `"`},
		{"disk", `value="` + strconv.FormatInt(u.Bytes, 10) + `"`},
		{"disk", `value="` + strconv.Itoa(budget) + `"`},
		{"disk", fmt.Sprintf(`class="pct">%.1f%%<`, 100*float64(u.Bytes)/budget)},
		{"disk", "6 objects"},
		{"upstreams", "docker.io"},
		{"upstreams", `<span class="up">up</span>`},
		{"upstreams", "76 of 100 pulls left"},
		{"top", "docker.io/library/app</td><td class=\"num\">2<"},
		{"top", "docker.io/team/tool</td><td class=\"num\">1<"},
		{"pins", "docker.io/&lt;script&gt;alert(1)&lt;/script&gt;:1.0"},
		{"pins", regtest.Digest(t, app).String()},
	}
	for _, c := range checks {
		if sec := section(t, page, c.id); !strings.Contains(sec, c.want) {
			t.Errorf("section %s does not contain %q:\n%s", c.id, c.want, sec)
		}
	}
	if s.FromCache == 0 || s.FromUpstream == 0 || u.Bytes == 0 {
		t.Errorf("nothing counted: %+v, %+v", s, u)
	}
	if top := section(t, page, "top"); strings.Index(top, "library/app") > strings.Index(top, "team/tool") {
		t.Error("the most pulled repository is not listed first")
	}
	recent := section(t, page, "recent")
	rows := strings.Split(recent, "<tr>")[2:] // the header row first
	want := []string{"docker.io/team/tool:2", "docker.io/library/app:1.0", "docker.io/library/app:1.0"}
	wantCache := []string{"miss", "hit", "miss"}
	if len(rows) != len(want) {
		t.Fatalf("recent pulls have %d rows, want %d:\n%s", len(rows), len(want), recent)
	}
	for i, row := range rows {
		if !strings.Contains(row, want[i]) || !strings.Contains(row, "127.0.0.1") || !strings.Contains(row, `tag `+wantCache[i]) {
			t.Errorf("recent pull %d = %s, want %s from 127.0.0.1, cache %s", i, row, want[i], wantCache[i])
		}
	}

	resp, head := e.do(http.MethodHead, "/", nil)
	if resp.StatusCode != http.StatusOK || len(head) != 0 || resp.Header.Get("Content-Length") == "" {
		t.Errorf("HEAD /: status %d, %d body bytes, Content-Length %q", resp.StatusCode, len(head), resp.Header.Get("Content-Length"))
	}
	resp, _ = e.do(http.MethodPost, "/", nil)
	if resp.StatusCode != http.StatusMethodNotAllowed {
		t.Errorf("POST /: status %d, want 405", resp.StatusCode)
	}
}

func TestStatusPageKeepsTheLastTwentyPulls(t *testing.T) {
	e := newEnv(t)
	img := randomImage(t)
	for i := range 25 {
		e.push(fmt.Sprintf("library/app:%d", i), img)
		if resp, body := e.do(http.MethodHead, fmt.Sprintf("/v2/app/manifests/%d", i), nil); resp.StatusCode != 200 {
			t.Fatalf("HEAD tag %d: %d %s", i, resp.StatusCode, body)
		}
	}
	// Not pulls: by digest, and a tag that does not exist.
	e.do(http.MethodGet, "/v2/app/manifests/"+regtest.Digest(t, img).String(), nil)
	e.do(http.MethodGet, "/v2/app/manifests/missing", nil)
	e.settle()

	_, body := e.do(http.MethodGet, "/", nil)
	recent := section(t, string(body), "recent")
	rows := strings.Split(recent, "<tr>")[2:]
	if len(rows) != 20 {
		t.Fatalf("recent pulls have %d rows, want 20", len(rows))
	}
	if !strings.Contains(rows[0], "docker.io/library/app:24<") || !strings.Contains(rows[19], "docker.io/library/app:5<") {
		t.Errorf("recent pulls run from %s to %s, want app:24 down to app:5", rows[0], rows[19])
	}
	if top := section(t, string(body), "top"); !strings.Contains(top, "docker.io/library/app</td><td class=\"num\">25<") {
		t.Errorf("top pulls = %s, want library/app with 25", top)
	}
}

// A free-space floor larger than the filesystem keeps anything from being
// stored (issue 15): the status page and /readyz say so, naming the
// setting, and the mirror stays ready, since it serves.
func TestFloorAboveTheFilesystemIsToldOnStatusAndReadyz(t *testing.T) {
	for _, tt := range []struct {
		name  string
		floor int64
		warn  bool
	}{{"floor above the filesystem", 1 << 62, true}, {"no floor", 0, false}} {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t, withMinFree(tt.floor))
			resp, body := e.do(http.MethodGet, proxy.ReadyPath, nil)
			var ready struct {
				Ready    bool
				Warnings []string
			}
			if resp.StatusCode != http.StatusOK || json.Unmarshal(body, &ready) != nil || !ready.Ready {
				t.Fatalf("readyz: %d %s, want 200 and ready", resp.StatusCode, body)
			}
			told := len(ready.Warnings) == 1 && strings.Contains(ready.Warnings[0], "REGMIRROR_MIN_FREE (4.0 EiB)") &&
				strings.Contains(ready.Warnings[0], "filesystem")
			if told != tt.warn || (!tt.warn && len(ready.Warnings) != 0) {
				t.Errorf("readyz warnings %q, want a warning naming REGMIRROR_MIN_FREE and the filesystem: %v", ready.Warnings, tt.warn)
			}

			resp, body = e.do(http.MethodGet, proxy.StatusPath, nil)
			if resp.StatusCode != http.StatusOK {
				t.Fatalf("GET /: status = %d", resp.StatusCode)
			}
			page := string(body)
			if has := strings.Contains(page, `id="disk-warning"`); has != tt.warn {
				t.Fatalf("status page has a disk warning: %v, want %v", has, tt.warn)
			}
			if tt.warn {
				if w := section(t, page, "disk-warning"); !strings.Contains(w, "REGMIRROR_MIN_FREE (4.0 EiB) is not less than the cache&#39;s filesystem") {
					t.Errorf("status page disk warning %q, want it to name REGMIRROR_MIN_FREE and the filesystem", w)
				}
			}
		})
	}
}

// TestDownUpstreamIsNamedInOneWord checks that the status page, /readyz and
// the metrics give the same reason for an upstream that went down.
func TestDownUpstreamIsNamedInOneWord(t *testing.T) {
	e := newEnv(t)
	e.upstream.Close() // connections are refused from now on
	if resp, body := e.do(http.MethodGet, "/v2/library/app/manifests/1.0", nil); resp.StatusCode != http.StatusServiceUnavailable {
		t.Fatalf("GET a manifest of a refusing upstream: status = %d, want 503; body %s", resp.StatusCode, body)
	}
	if got := e.scrape().Value("regmirror_upstream_errors_total", "registry", "docker.io", "reason", "network"); got < 1 {
		t.Errorf("regmirror_upstream_errors_total{reason=network} = %v, want at least 1", got)
	}
	_, body := e.do(http.MethodGet, "/", nil)
	if up := section(t, string(body), "upstreams"); !strings.Contains(up, "down") || !strings.Contains(up, ": network") {
		t.Errorf("the status page's upstreams say %s, want docker.io down: network", up)
	}
	if _, body := e.do(http.MethodGet, "/readyz", nil); !strings.Contains(string(body), `"reason":"network"`) {
		t.Errorf("/readyz = %s, want docker.io's reason network", body)
	}
}
