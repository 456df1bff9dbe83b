package proxy_test

import (
	"net/http"
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
