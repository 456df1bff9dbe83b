package proxy_test

import (
	"encoding/json"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/regmirror/regmirror/proxy"
	"github.com/regmirror/regmirror/test/regtest"
)

func TestTagListFallsBackToCachedTagsWhenUpstreamIsDown(t *testing.T) {
	e := newEnv(t, withTTL(time.Minute))
	for _, tag := range []string{"1.0", "1.1", "2.0"} {
		e.push("library/app:"+tag, randomImage(t))
		e.do(http.MethodGet, "/v2/app/manifests/"+tag, nil)
	}
	e.upstream.Close()

	resp, body := e.do(http.MethodGet, "/v2/app/tags/list?n=2", nil)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("status = %d; body %s", resp.StatusCode, body)
	}
	if string(body) != `{"name":"library/app","tags":["1.0","1.1"]}` {
		t.Errorf("body = %s", body)
	}
	if !strings.HasPrefix(resp.Header.Get("Warning"), "299 ") {
		t.Errorf("Warning = %q, want a 299 warning", resp.Header.Get("Warning"))
	}
	if link := resp.Header.Get("Link"); link != `</v2/app/tags/list?last=1.1&n=2>; rel="next"` {
		t.Errorf("Link = %q", link)
	}
	_, body = e.do(http.MethodGet, "/v2/app/tags/list?n=2&last=1.1", nil)
	if string(body) != `{"name":"library/app","tags":["2.0"]}` {
		t.Errorf("second page = %s", body)
	}
	resp, body = e.do(http.MethodGet, "/v2/never/tags/list", nil)
	if resp.StatusCode != http.StatusServiceUnavailable || regtest.OCICode(t, resp, body) != "UNAVAILABLE" {
		t.Errorf("unknown repository while down: status %d, body %s", resp.StatusCode, body)
	}
}

func TestCatalogListsCachedRepositories(t *testing.T) {
	e := newEnv(t, withUpstreams("ghcr.io"))
	e.push("library/app:1", randomImage(t))
	e.push("team/tool:1", randomImage(t))
	e.pushTo(e.extra["ghcr.io"], "owner/cli:1", randomImage(t))
	for _, path := range []string{"/v2/app/manifests/1", "/v2/team/tool/manifests/1", "/v2/ghcr.io/owner/cli/manifests/1"} {
		if resp, body := e.do(http.MethodGet, path, nil); resp.StatusCode != 200 {
			t.Fatalf("GET %s: %d %s", path, resp.StatusCode, body)
		}
	}
	resp, body := e.do(http.MethodGet, "/v2/_catalog", nil)
	if resp.StatusCode != http.StatusOK || string(body) != `{"repositories":["ghcr.io/owner/cli","library/app","team/tool"]}` {
		t.Errorf("catalog: status %d, body %s", resp.StatusCode, body)
	}
	resp, body = e.do(http.MethodGet, "/v2/_catalog?n=1&last=ghcr.io/owner/cli", nil)
	if string(body) != `{"repositories":["library/app"]}` {
		t.Errorf("page = %s", body)
	}
	if link := resp.Header.Get("Link"); !strings.Contains(link, "last=library%2Fapp") {
		t.Errorf("Link = %q, want the next page after library/app", link)
	}
	if n := e.counts.CountPrefix(http.MethodGet, "/v2/_catalog"); n != 0 {
		t.Errorf("the catalog asked upstream %d times", n)
	}
}

func TestCheckSaysWhatAnOfflinePullWouldMiss(t *testing.T) {
	e := newEnv(t)
	idx, imgs := platformIndex(t, ociIndex)
	e.pushIndex("library/multi:1", idx)
	e.push("library/single:1", randomImage(t))

	// multi: the index and amd64 whole; arm64's manifest but not its layers.
	e.do(http.MethodGet, "/v2/multi/manifests/1", nil)
	for arch, img := range imgs {
		d := regtest.Digest(t, img)
		e.do(http.MethodGet, "/v2/multi/manifests/"+d.String(), nil)
		if arch != "amd64" {
			continue
		}
		cfg, _ := img.ConfigName()
		e.do(http.MethodGet, "/v2/multi/blobs/"+cfg.String(), nil)
		layers, _ := img.Layers()
		for _, l := range layers {
			ld, _ := l.Digest()
			e.do(http.MethodGet, "/v2/multi/blobs/"+ld.String(), nil)
		}
	}
	e.do(http.MethodGet, "/v2/single/manifests/1", nil) // its manifest, none of its blobs

	before := e.counts.Total()
	q := url.Values{"image": {"multi:1", "docker.io/library/multi:1", "single:1", "ghcr.io/x/y:1", "never:seen"}}
	resp, body := e.do(http.MethodGet, proxy.CheckPath+"?"+q.Encode(), nil)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("status %d: %s", resp.StatusCode, body)
	}
	var got []proxy.CheckResult
	if err := json.Unmarshal(body, &got); err != nil || len(got) != 5 {
		t.Fatalf("answer %s: %v", body, err)
	}
	multi := got[0]
	if multi.Complete || multi.Digest != regtest.Digest(t, idx).String() {
		t.Errorf("multi: %+v, want incomplete at the index digest", multi)
	}
	for _, m := range multi.Missing {
		if m.Platform != "linux/arm64" || (m.Kind != "config" && m.Kind != "layer") {
			t.Errorf("multi: missing %+v, want only arm64's config and layers", m)
		}
	}
	if len(multi.Missing) != 2 || multi.Present != 5 { // index, 2 manifests, amd64 config and layer
		t.Errorf("multi: %d present, %d missing; want 5, 2", multi.Present, len(multi.Missing))
	}
	if got[1].Repository != "library/multi" || got[1].Registry != "docker.io" || got[1].Digest != multi.Digest {
		t.Errorf("fully qualified name: %+v", got[1])
	}
	if single := got[2]; single.Complete || len(single.Missing) != 2 {
		t.Errorf("single (manifest never pulled): %+v", single)
	}
	if !strings.Contains(got[3].Problem, "REGMIRROR_UPSTREAMS") || !strings.Contains(got[4].Problem, "never pulled") {
		t.Errorf("problems: %q, %q", got[3].Problem, got[4].Problem)
	}
	if n := e.counts.Total() - before; n != 0 {
		t.Errorf("check asked upstream %d times, want 0", n)
	}
}

func TestHealthAndReadiness(t *testing.T) {
	e := newEnv(t, withUpstreams("ghcr.io"))
	resp, body := e.do(http.MethodGet, proxy.HealthPath, nil)
	if resp.StatusCode != http.StatusOK || string(body) != `{"status":"ok"}` {
		t.Errorf("healthz: %d %s", resp.StatusCode, body)
	}
	// An upstream that is down leaves the mirror ready: it serves its cache.
	e.upstream.Close()
	e.do(http.MethodGet, "/v2/app/manifests/1", nil)
	resp, body = e.do(http.MethodGet, proxy.ReadyPath, nil)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("readyz with docker.io down: %d %s", resp.StatusCode, body)
	}
	var ready struct {
		Ready     bool
		Upstreams []struct {
			Name string
			Up   bool
		}
	}
	if err := json.Unmarshal(body, &ready); err != nil {
		t.Fatal(err)
	}
	if !ready.Ready || len(ready.Upstreams) != 2 || ready.Upstreams[0].Name != "docker.io" || ready.Upstreams[0].Up || !ready.Upstreams[1].Up {
		t.Errorf("readyz = %s, want ready with docker.io down and ghcr.io up", body)
	}
	// A store that cannot serve makes it unready.
	e.store.Close()
	resp, body = e.do(http.MethodGet, proxy.ReadyPath, nil)
	if resp.StatusCode != http.StatusServiceUnavailable || !strings.Contains(string(body), `"ready":false`) {
		t.Errorf("readyz with the store closed: %d %s", resp.StatusCode, body)
	}
}
