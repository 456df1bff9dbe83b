package upstream_test

import (
	"errors"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
	"github.com/regmirror/regmirror/upstream"
	"go.uber.org/zap"
)

// hub imitates Docker Hub's anonymous pull flow: every /v2/ request needs a
// bearer token, which a token endpoint hands out per repository scope.
type hub struct {
	registry http.Handler
	tokenURL string
	mu       sync.Mutex
	tokens   map[string]int // scope → tokens issued
	blobHost string         // if set, blob GETs redirect there
}

func (h *hub) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path == "/token" {
		scope := r.URL.Query().Get("scope")
		h.mu.Lock()
		h.tokens[scope]++
		h.mu.Unlock()
		fmt.Fprintf(w, `{"token":"tok-%s"}`, scope)
		return
	}
	if !strings.HasPrefix(r.Header.Get("Authorization"), "Bearer tok-") {
		w.Header().Set("WWW-Authenticate", fmt.Sprintf(`Bearer realm=%q,service="hub"`, h.tokenURL))
		w.WriteHeader(http.StatusUnauthorized)
		return
	}
	if h.blobHost != "" && r.Method == http.MethodGet && strings.Contains(r.URL.Path, "/blobs/") {
		http.Redirect(w, r, h.blobHost+r.URL.Path, http.StatusTemporaryRedirect)
		return
	}
	r.Header.Del("Authorization")
	h.registry.ServeHTTP(w, r)
}

func startHub(t *testing.T) (*hub, *httptest.Server) {
	t.Helper()
	h := &hub{registry: registry.New(registry.Logger(log.New(io.Discard, "", 0))), tokens: map[string]int{}}
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	h.tokenURL = srv.URL + "/token"
	return h, srv
}

// seed writes an image straight into the hub's registry, behind its auth.
func seed(t *testing.T, h *hub, repo string) v1.Image {
	t.Helper()
	plain := httptest.NewServer(h.registry)
	defer plain.Close()
	img, err := random.Image(1000, 2)
	if err != nil {
		t.Fatal(err)
	}
	ref, _ := name.ParseReference(strings.TrimPrefix(plain.URL, "http://") + "/" + repo)
	if err := remote.Write(ref, img); err != nil {
		t.Fatal(err)
	}
	return img
}

func newClient(t *testing.T, url string) *upstream.Client {
	t.Helper()
	c, err := upstream.New(upstream.Options{Name: "docker.io", URL: url, Timeout: 5 * time.Second}, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestAnonymousBearerTokenOncePerRepository(t *testing.T) {
	h, srv := startHub(t)
	img := seed(t, h, "library/app:1")
	c := newClient(t, srv.URL)

	for range 3 {
		resp, err := c.Manifest(t.Context(), http.MethodGet, "library/app", "1")
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		raw, _ := img.RawManifest()
		if string(body) != string(raw) {
			t.Fatal("manifest differs")
		}
	}
	layers, _ := img.Layers()
	d, _ := layers[0].Digest()
	resp, err := c.Blob(t.Context(), http.MethodGet, "library/app", d)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()

	h.mu.Lock()
	defer h.mu.Unlock()
	if n := h.tokens["repository:library/app:pull"]; n != 1 {
		t.Errorf("tokens issued for library/app = %d, want 1 (reused across requests); all: %v", n, h.tokens)
	}
}

func TestRedirectToBlobStorageDoesNotCarryTheToken(t *testing.T) {
	var sawAuth []string
	var mu sync.Mutex
	storage := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		sawAuth = append(sawAuth, r.Header.Get("Authorization"))
		mu.Unlock()
		w.Write([]byte("blob bytes"))
	}))
	defer storage.Close()
	h, srv := startHub(t)
	h.blobHost = storage.URL
	seed(t, h, "library/app:1")
	c := newClient(t, srv.URL)

	resp, err := c.Blob(t.Context(), http.MethodGet, "library/app", v1.Hash{Algorithm: "sha256", Hex: strings.Repeat("c", 64)})
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(body) != "blob bytes" {
		t.Fatalf("body = %q, want the storage's", body)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(sawAuth) != 1 || sawAuth[0] != "" {
		t.Errorf("blob storage saw Authorization %q, want none", sawAuth)
	}
}

func TestErrorsKeepTheUpstreamStatus(t *testing.T) {
	_, srv := startHub(t)
	c := newClient(t, srv.URL)
	_, err := c.Manifest(t.Context(), http.MethodGet, "library/missing", "1")
	te, ok := errors.AsType[*transport.Error](err)
	if !ok || te.StatusCode != http.StatusNotFound {
		t.Fatalf("err = %v, want a *transport.Error with 404", err)
	}
	ue, ok := errors.AsType[*upstream.Error](err)
	if !ok || ue.Registry != "docker.io" {
		t.Errorf("err = %v, want an *upstream.Error naming docker.io", err)
	}
}

func TestTagsPassesPagination(t *testing.T) {
	h, srv := startHub(t)
	for _, tag := range []string{"a", "b", "c"} {
		seed(t, h, "library/app:"+tag)
	}
	c := newClient(t, srv.URL)
	resp, err := c.Tags(t.Context(), "library/app", "1", "a")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(body), `"tags":["b"]`) {
		t.Errorf("tags = %s, want only b", body)
	}
}

func TestParseURL(t *testing.T) {
	tests := []struct {
		name, url      string
		ok             bool
		prefix, ns     string
		repo, wantRepo string
	}{
		{name: "https", url: "https://registry-1.docker.io", ok: true},
		{name: "http with port and slash", url: "http://127.0.0.1:5001/", ok: true},
		{name: "ns", url: "http://regional:5000?ns=ghcr.io", ok: true, ns: "ghcr.io"},
		{name: "ns with a port", url: "http://regional:5000/?ns=build.lan:5000", ok: true, ns: "build.lan:5000"},
		{name: "prefix", url: "https://harbor.lan/ghcr-proxy/", ok: true, prefix: "ghcr-proxy", repo: "owner/app", wantRepo: "ghcr-proxy/owner/app"},
		{name: "registry as prefix", url: "http://regional:5000/ghcr.io", ok: true, prefix: "ghcr.io", repo: "a/b", wantRepo: "ghcr.io/a/b"},
		{name: "deep prefix", url: "https://art.lan/api/docker/remote", ok: true, prefix: "api/docker/remote"},
		{name: "no scheme", url: "registry-1.docker.io"},
		{name: "ftp", url: "ftp://x"},
		{name: "credentials in URL", url: "https://user:pw@x"},
		{name: "a token as the user name", url: "https://pwtoken@x"},
		{name: "unparsable with credentials", url: "https://user:pw@x:port:bad"},
		{name: "the API path", url: "https://x/v2"},
		{name: "the API path deeper", url: "https://x/v2/ghcr.io"},
		{name: "other query key", url: "https://x?a=b"},
		{name: "ns and another key", url: "https://x?ns=ghcr.io&a=b"},
		{name: "ns twice", url: "https://x?ns=ghcr.io&ns=quay.io"},
		{name: "ns not a registry", url: "https://x?ns=GHCR.io"},
		{name: "empty ns", url: "https://x?ns="},
		{name: "empty query", url: "https://x?"},
		{name: "fragment", url: "https://x#frag"},
		{name: "empty fragment", url: "https://x/#"},
		{name: "ns and prefix", url: "https://x/p?ns=ghcr.io"},
		{name: "encoded prefix", url: "https://x/a%2Fb"},
		{name: "dot-dot prefix", url: "https://x/a/../b"},
		{name: "upper-case prefix", url: "https://x/Proj"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ep, err := upstream.ParseEndpoint(tt.url)
			if (err == nil) != tt.ok {
				t.Fatalf("ParseEndpoint(%q) err = %v, want ok %v", tt.url, err, tt.ok)
			}
			if err != nil {
				if strings.Contains(err.Error(), "pw") {
					t.Errorf("ParseEndpoint(%q) error repeats the password: %v", tt.url, err)
				}
				if _, uerr := upstream.ParseURL(tt.url); uerr == nil {
					t.Errorf("ParseURL(%q) accepts what ParseEndpoint refuses", tt.url)
				}
				return
			}
			if ep.Prefix != tt.prefix || ep.NS != tt.ns || ep.Base.Path != "" || ep.Base.RawQuery != "" {
				t.Errorf("ParseEndpoint(%q) = base %s prefix %q ns %q, want prefix %q ns %q", tt.url, ep.Base, ep.Prefix, ep.NS, tt.prefix, tt.ns)
			}
			if tt.repo != "" && ep.Repo(tt.repo) != tt.wantRepo {
				t.Errorf("Repo(%q) = %q, want %q", tt.repo, ep.Repo(tt.repo), tt.wantRepo)
			}
			if again, err := upstream.ParseEndpoint(ep.String()); err != nil || again.String() != ep.String() {
				t.Errorf("ParseEndpoint(%q.String() = %q) = %v, %v", tt.url, ep.String(), again, err)
			}
		})
	}
}
