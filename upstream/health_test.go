package upstream_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/registry"
	"github.com/regmirror/regmirror/test/regtest"
	"github.com/regmirror/regmirror/upstream"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
)

// flaky is a registry that can be switched to answering 503 to everything.
type flaky struct {
	failing atomic.Bool
	hits    atomic.Int32
	reg     http.Handler
}

func (f *flaky) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	f.hits.Add(1)
	if f.failing.Load() {
		w.WriteHeader(http.StatusServiceUnavailable)
		return
	}
	f.reg.ServeHTTP(w, r)
}

func TestDownUpstreamIsNotAskedUntilTheProbeSeesItBack(t *testing.T) {
	f := &flaky{reg: registry.New(registry.Logger(log.New(io.Discard, "", 0)))}
	srv := httptest.NewServer(f)
	defer srv.Close()
	core, logs := observer.New(zap.InfoLevel)
	lines := regtest.NewLog()
	c, err := upstream.New(upstream.Options{Name: "docker.io", URL: srv.URL, Timeout: 5 * time.Second,
		ProbeMin: 10 * time.Millisecond, ProbeMax: 20 * time.Millisecond}, zap.New(zapcore.NewTee(core, lines.Core(zap.InfoLevel))))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()

	f.failing.Store(true)
	if _, err := c.Tags(t.Context(), "app", "", ""); err == nil {
		t.Fatal("a failing upstream answered")
	}
	if h := c.Health(); h.Up || h.Reason != "server_error" {
		t.Fatalf("Health after a 503 = %+v, want down", h)
	}
	// While down, requests fail at once with ErrDown. The probe alone asks.
	failingHits := f.hits.Load()
	for range 5 {
		if _, err := c.Tags(t.Context(), "app", "", ""); !errors.Is(err, upstream.ErrDown) {
			t.Fatalf("err = %v, want ErrDown", err)
		}
	}
	if logs.FilterMessage("upstream down: serving from cache until it answers again").Len() != 1 {
		t.Error("want exactly one Warn about the upstream going down")
	}

	f.failing.Store(false)
	// The probe runs on its own clock; it logs once it has marked it up.
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	if _, err := lines.Wait(ctx, 0, regtest.Msg("upstream up again")); err != nil || !c.Health().Up {
		t.Fatalf("the probe did not see the upstream come back (hits %d): %v", f.hits.Load(), err)
	}
	if f.hits.Load() <= failingHits {
		t.Error("the upstream came back without being probed")
	}
	if _, err := c.Tags(t.Context(), "app", "", ""); errors.Is(err, upstream.ErrDown) {
		t.Fatalf("still down after the probe: %v", err)
	}
	if logs.FilterMessage("upstream up again").Len() != 1 {
		t.Error("want one Info line when the upstream is back")
	}
}

func TestAnswersThatAreNotOutagesDoNotMarkDown(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/v2/":
			w.WriteHeader(http.StatusOK)
		case "/v2/limited/tags/list":
			w.WriteHeader(http.StatusTooManyRequests)
		default:
			w.WriteHeader(http.StatusNotFound)
		}
	}))
	defer srv.Close()
	c, err := upstream.New(upstream.Options{Name: "docker.io", URL: srv.URL, Timeout: 5 * time.Second}, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Tags(t.Context(), "missing", "", "")
	c.Tags(t.Context(), "limited", "", "")
	if h := c.Health(); !h.Up {
		t.Errorf("404 and 429 marked the upstream down: %+v", h)
	}
}

// TestLocalFileErrorsAreNotOutages keeps a failure of this machine's disk
// from passing for the network's: syscall.Errno has net.Error's methods, so a
// *fs.PathError wrapping EIO or ENOTDIR once counted as an unreachable
// upstream. The errors are real ones: a refused connection from the client,
// and files opened under a regular file.
func TestLocalFileErrorsAreNotOutages(t *testing.T) {
	srv := httptest.NewServer(http.NotFoundHandler())
	srv.Close() // nothing listens there any more: connections are refused
	c, err := upstream.New(upstream.Options{Name: "docker.io", URL: srv.URL, Timeout: 5 * time.Second}, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_, refused := c.Tags(t.Context(), "app", "", "")
	if !errors.Is(refused, syscall.ECONNREFUSED) {
		t.Fatalf("Tags against a closed port: %v, want connection refused", refused)
	}

	notDir := filepath.Join(t.TempDir(), "tmp")
	if err := os.WriteFile(notDir, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	_, open := os.OpenFile(filepath.Join(notDir, "blob"), os.O_RDWR|os.O_CREATE, 0o600)
	mkdir := os.Mkdir(filepath.Join(notDir, "ab"), 0o750)
	rename := os.Rename(filepath.Join(notDir, "a"), filepath.Join(notDir, "b"))
	tests := []struct {
		name    string
		err     error
		network bool
	}{
		{"connection refused", refused, true},
		{"open under a file", fmt.Errorf("create temp file: %w", open), false},
		{"mkdir under a file", mkdir, false},
		{"rename under a file", rename, false},
		{"EIO", &fs.PathError{Op: "write", Path: "/data/tmp/x", Err: syscall.EIO}, false},
		{"bare errno", syscall.EROFS, false},
	}
	for _, tt := range tests {
		if tt.err == nil {
			t.Fatalf("%s: no error", tt.name)
		}
		if got := upstream.IsNetworkError(tt.err); got != tt.network {
			t.Errorf("%s: IsNetworkError(%v) = %v, want %v", tt.name, tt.err, got, tt.network)
		}
		f := upstream.FailureOf(tt.err)
		if f.Unavailable() != tt.network || f.Outage() != tt.network {
			t.Errorf("%s: FailureOf(%v) = %+v: unavailable %v, outage %v, want both %v", tt.name, tt.err, f, f.Unavailable(), f.Outage(), tt.network)
		}
		want := upstream.KindOther
		if tt.network {
			want = upstream.KindNetwork
		}
		if f.Kind != want {
			t.Errorf("%s: FailureOf(%v).Kind = %v, want %v", tt.name, tt.err, f.Kind, want)
		}
	}
}

func TestHangingUpstreamCostsOneTimeout(t *testing.T) {
	release := make(chan struct{})
	var hits atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}))
	defer srv.Close()
	defer close(release)
	c, err := upstream.New(upstream.Options{Name: "docker.io", URL: srv.URL, Timeout: 200 * time.Millisecond, ProbeMin: time.Hour}, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Tags(t.Context(), "app", "", ""); err == nil {
		t.Fatal("a hanging upstream answered")
	}
	if n := hits.Load(); n != 1 {
		t.Errorf("requests to the hanging upstream = %d, want 1 (a timeout is not retried)", n)
	}
	if h := c.Health(); h.Reason != "timeout" {
		t.Errorf("Health().Reason = %q, want timeout", h.Reason)
	}
	for range 3 {
		if _, err := c.Tags(t.Context(), "app", "", ""); !errors.Is(err, upstream.ErrDown) {
			t.Fatalf("err = %v, want ErrDown", err)
		}
	}
	if n := hits.Load(); n != 1 {
		t.Errorf("requests after the timeout = %d, want still 1", n)
	}
}
