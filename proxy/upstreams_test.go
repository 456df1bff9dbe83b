package proxy_test

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/http"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/regmirror/regmirror/test/regtest"
)

func (e *env) pushTo(x *extraUpstream, ref string, img v1.Image) {
	e.t.Helper()
	r, err := name.ParseReference(host(x.server) + "/" + ref)
	if err != nil {
		e.t.Fatal(err)
	}
	if err := remote.Write(r, img); err != nil {
		e.t.Fatal(err)
	}
}

func TestRoutingByNamespaceByPrefixAndByDefault(t *testing.T) {
	e := newEnv(t, withUpstreams("ghcr.io", "build.lan:5000"))
	hub, ghcr, build := randomImage(t), randomImage(t), randomImage(t)
	e.push("owner/app:1", hub)
	e.pushTo(e.extra["ghcr.io"], "owner/app:1", ghcr)
	e.pushTo(e.extra["build.lan:5000"], "owner/app:1", build)

	tests := []struct {
		name      string
		path      string
		want      v1.Image
		namespace string
	}{
		{"plain path goes to the default", "/v2/owner/app/manifests/1", hub, "docker.io"},
		{"ns=docker.io", "/v2/owner/app/manifests/1?ns=docker.io", hub, "docker.io"},
		{"ns names another registry", "/v2/owner/app/manifests/1?ns=ghcr.io", ghcr, "ghcr.io"},
		{"prefix names another registry", "/v2/ghcr.io/owner/app/manifests/1", ghcr, "ghcr.io"},
		{"prefix with a port", "/v2/build.lan:5000/owner/app/manifests/1", build, "build.lan:5000"},
		{"ns wins over a prefix", "/v2/ghcr.io/owner/app/manifests/1?ns=build.lan:5000", nil, "build.lan:5000"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp, body := e.do(http.MethodGet, tt.path, nil)
			if got := resp.Header.Get("OCI-Namespace"); got != tt.namespace {
				t.Errorf("OCI-Namespace = %q, want %q", got, tt.namespace)
			}
			if tt.want == nil {
				// build.lan:5000 has no ghcr.io/owner/app: ns chose the registry.
				if resp.StatusCode != http.StatusNotFound {
					t.Errorf("GET %s: status = %d, want 404; body %s", tt.path, resp.StatusCode, body)
				}
				return
			}
			if resp.StatusCode != http.StatusOK {
				t.Fatalf("GET %s: status = %d, want 200; body %s", tt.path, resp.StatusCode, body)
			}
			if got := resp.Header.Get("Docker-Content-Digest"); got != regtest.Digest(t, tt.want).String() {
				t.Errorf("GET %s: digest %s, want %s", tt.path, got, regtest.Digest(t, tt.want))
			}
		})
	}
	// Each registry's tag answer is its own.
	for reg, img := range map[string]v1.Image{"docker.io": hub, "ghcr.io": ghcr} {
		a, err := e.store.Tag(reg, "owner/app", "1")
		if err != nil || a.Digest != regtest.Digest(t, img) {
			t.Errorf("tag answer for %s = %v, %v", reg, a.Digest, err)
		}
	}
}

func TestOneBlobFromTwoRegistriesIsDownloadedOnce(t *testing.T) {
	e := newEnv(t, withUpstreams("ghcr.io"))
	body, h := regtest.RandomBlob(t, 50_000)
	e.pushBlob("owner/app", body)
	x := e.extra["ghcr.io"]
	r, _ := name.ParseReference(host(x.server) + "/owner/app:unused")
	if err := remote.WriteLayer(r.Context(), staticLayer(body)); err != nil {
		t.Fatal(err)
	}
	for _, path := range []string{"/v2/owner/app/blobs/" + h.String(), "/v2/ghcr.io/owner/app/blobs/" + h.String()} {
		if resp, got := e.do(http.MethodGet, path, nil); resp.StatusCode != 200 || len(got) != len(body) {
			t.Fatalf("GET %s: status %d, %d bytes", path, resp.StatusCode, len(got))
		}
	}
	if n := x.counts.CountPrefix(http.MethodGet, "/v2/owner/app/blobs/"); n != 0 {
		t.Errorf("ghcr.io was asked for a blob the store had from docker.io: %d GETs", n)
	}
}

func TestTagListLinkKeepsTheRegistry(t *testing.T) {
	// Like Docker Hub, the upstream links the next page relative to itself.
	linking := func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if strings.HasSuffix(r.URL.Path, "/tags/list") && r.URL.Query().Get("last") == "" {
				w.Header().Set("Link", `<`+r.URL.Path+`?last=a&n=1>; rel="next"`)
			}
			next.ServeHTTP(w, r)
		})
	}
	e := newEnv(t, withUpstreamFault(linking))
	for _, tag := range []string{"a", "b", "c"} {
		e.push("owner/app:"+tag, randomImage(t))
	}
	tests := []struct{ path, wantLink string }{
		{"/v2/owner/app/tags/list?n=1", "/v2/owner/app/tags/list?last=a&n=1"},
		{"/v2/owner/app/tags/list?n=1&ns=docker.io", "/v2/owner/app/tags/list?last=a&n=1&ns=docker.io"},
		{"/v2/docker.io/owner/app/tags/list?n=1", "/v2/docker.io/owner/app/tags/list?last=a&n=1"},
	}
	for _, tt := range tests {
		resp, body := e.do(http.MethodGet, tt.path, nil)
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("GET %s: status %d; body %s", tt.path, resp.StatusCode, body)
		}
		link := resp.Header.Get("Link")
		if link != "<"+tt.wantLink+`>; rel="next"` {
			t.Errorf("GET %s: Link = %q, want it to point at %s", tt.path, link, tt.wantLink)
			continue
		}
		resp, body = e.do(http.MethodGet, tt.wantLink, nil)
		if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), `"tags":["b"]`) {
			t.Errorf("GET %s: status %d, body %s; want tag b", tt.wantLink, resp.StatusCode, body)
		}
	}
}

func TestRateLimitedUpstreamPassesRetryAfter(t *testing.T) {
	limited := func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if strings.Contains(r.URL.Path, "/manifests/") {
				w.Header().Set("Retry-After", "60")
				w.WriteHeader(http.StatusTooManyRequests)
				return
			}
			next.ServeHTTP(w, r)
		})
	}
	e := newEnv(t, withUpstreamFault(limited))
	resp, body := e.do(http.MethodGet, "/v2/app/manifests/1", nil)
	if resp.StatusCode != http.StatusTooManyRequests || regtest.OCICode(t, resp, body) != "TOOMANYREQUESTS" {
		t.Fatalf("status %d, body %s; want 429 TOOMANYREQUESTS", resp.StatusCode, body)
	}
	if got := resp.Header.Get("Retry-After"); got != "60" {
		t.Errorf("Retry-After = %q, want 60", got)
	}
}

// tagPager answers tags/list itself with tags, as upstreams that page their
// own way do: per lists the tags it sends per page after last (0: all,
// ignoring last, as distribution 2.8 does behind some proxies), with a Link
// to the next page when more follow. The order is the slice's.
func tagPager(tags []string, per int) func(http.Handler) http.Handler {
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if !strings.HasSuffix(r.URL.Path, "/tags/list") {
				next.ServeHTTP(w, r)
				return
			}
			out := tags
			if per > 0 {
				start := 0
				if last := r.URL.Query().Get("last"); last != "" {
					start = slices.Index(tags, last) + 1
				}
				out = tags[start:min(start+per, len(tags))]
				if start+per < len(tags) {
					w.Header().Set("Link", fmt.Sprintf(`<%s?last=%s&n=%d>; rel="next"`, r.URL.Path, out[len(out)-1], per))
				}
			}
			w.Header().Set("Content-Type", "application/json")
			json.NewEncoder(w).Encode(map[string]any{"name": "library/app", "tags": out})
		})
	}
}

func TestTagListIsPagedHereWhateverTheUpstreamDoes(t *testing.T) {
	var sorted []string
	for i := range 30 {
		sorted = append(sorted, fmt.Sprintf("t%02d", i))
	}
	shuffled := slices.Clone(sorted)
	rand.New(rand.NewPCG(1, 2)).Shuffle(len(shuffled), func(i, j int) { shuffled[i], shuffled[j] = shuffled[j], shuffled[i] })
	for _, up := range []struct {
		name string
		wrap func(http.Handler) http.Handler
	}{
		{"all at once, unsorted, no paging", tagPager(shuffled, 0)},
		{"pages of 7 of its own", tagPager(sorted, 7)},
	} {
		t.Run(up.name, func(t *testing.T) {
			e := newEnv(t, withUpstreamFault(up.wrap))
			var got []string
			path := "/v2/app/tags/list?n=5"
			for range 10 {
				resp, body := e.do(http.MethodGet, path, nil)
				var list struct{ Tags []string }
				if resp.StatusCode != http.StatusOK || json.Unmarshal(body, &list) != nil {
					t.Fatalf("GET %s: status %d, body %s", path, resp.StatusCode, body)
				}
				if len(list.Tags) > 5 || !slices.IsSorted(list.Tags) {
					t.Fatalf("GET %s: tags %v, want at most 5, sorted", path, list.Tags)
				}
				got = append(got, list.Tags...)
				link := resp.Header.Get("Link")
				if link == "" {
					break
				}
				want := fmt.Sprintf(`</v2/app/tags/list?last=%s&n=5>; rel="next"`, list.Tags[len(list.Tags)-1])
				if link != want {
					t.Fatalf("GET %s: Link %q, want %q", path, link, want)
				}
				path = strings.TrimSuffix(strings.TrimPrefix(link, "<"), `>; rel="next"`)
			}
			if !slices.Equal(got, sorted) {
				t.Errorf("paged through: %v, want %v", got, sorted)
			}
			_, body := e.do(http.MethodGet, "/v2/app/tags/list?last=t27", nil)
			if string(body) != `{"name":"library/app","tags":["t28","t29"]}` {
				t.Errorf("after t27, no n: %s", body)
			}
			resp, body := e.do(http.MethodGet, "/v2/app/tags/list", nil)
			var list struct{ Tags []string }
			if json.Unmarshal(body, &list) != nil || !slices.Equal(list.Tags, sorted) || resp.Header.Get("Link") != "" {
				t.Errorf("no n: tags %s, Link %q; want all 30 sorted, no Link", body, resp.Header.Get("Link"))
			}
		})
	}
}

// TestDottedFirstComponentBelongsToAPrivateDefault: behind a default that is
// not Docker Hub, /v2/my.org/app is that registry's my.org/app; a configured
// registry's name still routes to it, and behind Docker Hub an unknown
// host-like component is still refused.
func TestDottedFirstComponentBelongsToAPrivateDefault(t *testing.T) {
	e := newEnv(t, withUpstreams("registry.corp.lan", "ghcr.io"), withDefault("registry.corp.lan"))
	corp, ghcr := randomImage(t), randomImage(t)
	e.pushTo(e.extra["registry.corp.lan"], "my.org/app:1", corp)
	e.pushTo(e.extra["registry.corp.lan"], "localhost/tool:1", corp)
	e.pushTo(e.extra["ghcr.io"], "owner/app:1", ghcr)
	for _, tt := range []struct {
		path, namespace string
		want            v1.Image
	}{
		{"/v2/my.org/app/manifests/1", "registry.corp.lan", corp},
		{"/v2/localhost/tool/manifests/1", "registry.corp.lan", corp},
		{"/v2/registry.corp.lan/my.org/app/manifests/1", "registry.corp.lan", corp},
		{"/v2/ghcr.io/owner/app/manifests/1", "ghcr.io", ghcr},
	} {
		resp, body := e.do(http.MethodGet, tt.path, nil)
		if resp.StatusCode != http.StatusOK || resp.Header.Get("OCI-Namespace") != tt.namespace ||
			resp.Header.Get("Docker-Content-Digest") != regtest.Digest(t, tt.want).String() {
			t.Errorf("GET %s: status %d, OCI-Namespace %q, digest %s; want 200 from %s; body %s", tt.path, resp.StatusCode,
				resp.Header.Get("OCI-Namespace"), resp.Header.Get("Docker-Content-Digest"), tt.namespace, body)
		}
	}
	if a, err := e.store.Tag("registry.corp.lan", "my.org/app", "1"); err != nil || a.Digest != regtest.Digest(t, corp) {
		t.Errorf("tag answer for registry.corp.lan my.org/app:1 = %v, %v", a.Digest, err)
	}
	// A port cannot be part of a repository name: still an unknown registry.
	resp, body := e.do(http.MethodGet, "/v2/other.lan:5000/app/manifests/1", nil)
	if resp.StatusCode != http.StatusNotFound || regtest.OCICode(t, resp, body) != "NAME_UNKNOWN" {
		t.Errorf("unknown registry with a port: status %d, body %s", resp.StatusCode, body)
	}

	hub := newEnv(t)
	resp, body = hub.do(http.MethodGet, "/v2/my.org/app/manifests/1", nil)
	if resp.StatusCode != http.StatusNotFound || !strings.Contains(string(body), "REGMIRROR_UPSTREAMS") {
		t.Errorf("behind Docker Hub: status %d, body %s; want 404 naming an unconfigured registry", resp.StatusCode, body)
	}
	if n := hub.counts.Total(); n != 0 {
		t.Errorf("behind Docker Hub: %d upstream requests, want none", n)
	}
}
