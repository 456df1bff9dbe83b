package upstream_test

import (
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"

	"github.com/regmirror/regmirror/upstream"
	"go.uber.org/zap"
)

// A prefix endpoint asks for the repository under its prefix, and its token
// scope names the repository as the upstream knows it.
func TestPrefixEndpointAsksForTheTranslatedNameAndScope(t *testing.T) {
	h, srv := startHub(t)
	img := seed(t, h, "ghcr-proxy/owner/app:1")
	c := newClient(t, srv.URL+"/ghcr-proxy")
	resp, err := c.Manifest(t.Context(), http.MethodGet, "owner/app", "1")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if raw, _ := img.RawManifest(); string(body) != string(raw) {
		t.Fatal("manifest differs")
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if n := h.tokens["repository:ghcr-proxy/owner/app:pull"]; n != 1 {
		t.Errorf("tokens for ghcr-proxy/owner/app = %d, want 1; all: %v", n, h.tokens)
	}
}

// An ns endpoint sends ?ns= with every request, the probe of /v2/ included,
// and refuses an answer about another registry.
func TestNSEndpointSendsNSAndRefusesAnotherRegistrysAnswer(t *testing.T) {
	var mu sync.Mutex
	var queries []string
	answerFor := "ghcr.io"
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		queries = append(queries, r.URL.Path+"?"+r.URL.RawQuery)
		w.Header().Set("Oci-Namespace", answerFor)
		mu.Unlock()
		w.Header().Set("Docker-Content-Digest", "sha256:0000000000000000000000000000000000000000000000000000000000000000")
		w.Write([]byte("{}"))
	}))
	t.Cleanup(srv.Close)
	c, err := upstream.New(upstream.Options{Name: "ghcr.io", URL: srv.URL + "?ns=ghcr.io"}, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	resp, err := c.Manifest(t.Context(), http.MethodGet, "owner/app", "1")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	mu.Lock()
	for _, q := range queries {
		if q != "/v2/?ns=ghcr.io" && q != "/v2/owner/app/manifests/1?ns=ghcr.io" {
			t.Errorf("request %s, want every request with ?ns=ghcr.io", q)
		}
	}
	answerFor = "docker.io" // a mirror that took the request for its default registry
	mu.Unlock()
	_, err = c.Manifest(t.Context(), http.MethodGet, "owner/app", "1")
	if !errors.Is(err, upstream.ErrWrongRegistry) {
		t.Fatalf("answer for docker.io: err = %v, want ErrWrongRegistry", err)
	}
	if !c.Health().Up {
		t.Error("an answer about another registry marked the upstream down")
	}
}
