package upstream_test

import (
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/registry"
	"github.com/regmirror/regmirror/upstream"
	"go.uber.org/zap"
)

// recorder is an Observer that keeps what it hears.
type recorder struct {
	mu       sync.Mutex
	answers  []string // "registry op failure"
	received map[string]int
}

func (r *recorder) Answered(registry, op string, took time.Duration, f upstream.Failure) {
	r.mu.Lock()
	defer r.mu.Unlock()
	failure := f.Reason()
	if took < 0 {
		failure += " (negative duration)"
	}
	r.answers = append(r.answers, registry+" "+op+" "+failure)
}

func (r *recorder) Received(registry string, n int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.received[registry] += n
}

func TestObserverHearsEveryRequestAndEveryBodyByte(t *testing.T) {
	h, srv := startHub(t)
	img := seed(t, h, "library/app:1")
	rec := &recorder{received: map[string]int{}}
	c, err := upstream.New(upstream.Options{Name: "docker.io", URL: srv.URL, Timeout: 5 * time.Second, Observer: rec}, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()

	resp, err := c.Manifest(t.Context(), http.MethodGet, "library/app", "1")
	if err != nil {
		t.Fatal(err)
	}
	manifest, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	cfg, _ := img.ConfigName()
	resp, err = c.Blob(t.Context(), http.MethodGet, "library/app", cfg)
	if err != nil {
		t.Fatal(err)
	}
	config, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if _, err := c.Manifest(t.Context(), http.MethodHead, "library/app", "missing"); err == nil {
		t.Fatal("HEAD of a missing tag succeeded")
	}

	want := []string{"docker.io manifest ", "docker.io blob ", "docker.io manifest not_found"}
	rec.mu.Lock()
	defer rec.mu.Unlock()
	if !slices.Equal(rec.answers, want) {
		t.Errorf("answers = %q, want %q", rec.answers, want)
	}
	// Bodies only: the token and the ping are the transport's business.
	if got, want := rec.received["docker.io"], len(manifest)+len(config); got != want {
		t.Errorf("received %d bytes, want %d (the manifest and the config)", got, want)
	}
}

func TestObserverHearsOfADownUpstream(t *testing.T) {
	f := &flaky{reg: registry.New(registry.Logger(log.New(io.Discard, "", 0)))}
	f.failing.Store(true)
	srv := httptest.NewServer(f)
	defer srv.Close()
	rec := &recorder{received: map[string]int{}}
	c, err := upstream.New(upstream.Options{Name: "ghcr.io", URL: srv.URL, Timeout: 5 * time.Second, Observer: rec,
		ProbeMin: time.Hour}, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for range 2 {
		c.Tags(t.Context(), "app", "", "")
	}
	want := []string{"ghcr.io tags server_error", "ghcr.io tags down"}
	rec.mu.Lock()
	defer rec.mu.Unlock()
	if !slices.Equal(rec.answers, want) {
		t.Errorf("answers = %q, want %q", rec.answers, want)
	}
}
