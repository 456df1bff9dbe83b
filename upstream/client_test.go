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
		name, url string
		ok        bool
	}{
		{"https", "https://registry-1.docker.io", true},
		{"http with port and slash", "http://127.0.0.1:5001/", true},
		{"no scheme", "registry-1.docker.io", false},
		{"ftp", "ftp://x", false},
		{"credentials in URL", "https://user:pw@x", false},
		{"a token as the user name", "https://pwtoken@x", false},
		{"unparsable with credentials", "https://user:pw@x:port:bad", false},
		{"path", "https://x/v2", false},
		{"query", "https://x?a=b", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := upstream.ParseURL(tt.url)
			if (err == nil) != tt.ok {
				t.Errorf("ParseURL(%q) err = %v, want ok %v", tt.url, err, tt.ok)
			}
			if err != nil && strings.Contains(err.Error(), "pw") {
				t.Errorf("ParseURL(%q) error repeats the password: %v", tt.url, err)
			}
		})
	}
}
