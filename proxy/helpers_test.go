package proxy_test

import (
	"bytes"
	"encoding/json"
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
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/regmirror/regmirror/cache"
	"github.com/regmirror/regmirror/proxy"
	"github.com/regmirror/regmirror/upstream"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
)

// counting wraps an upstream handler and counts requests by "METHOD /path".
type counting struct {
	next http.Handler
	mu   sync.Mutex
	hits map[string]int
}

func (c *counting) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	c.mu.Lock()
	c.hits[r.Method+" "+r.URL.Path]++
	c.mu.Unlock()
	c.next.ServeHTTP(w, r)
}

func (c *counting) count(method, path string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.hits[method+" "+path]
}

// countPrefix counts requests whose path starts with prefix, ping excluded.
func (c *counting) countPrefix(method, prefix string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := 0
	for k, v := range c.hits {
		if strings.HasPrefix(k, method+" "+prefix) {
			n += v
		}
	}
	return n
}

func (c *counting) total() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := 0
	for k, v := range c.hits {
		if !strings.HasSuffix(k, " /v2/") {
			n += v
		}
	}
	return n
}

// clock is a settable clock for TTL tests.
type clock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *clock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.now }
func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

type env struct {
	t        *testing.T
	upstream *httptest.Server
	counts   *counting
	store    *cache.Store
	proxy    *proxy.Proxy
	mirror   *httptest.Server
	clock    *clock
	logs     *observer.ObservedLogs
	dataDir  string
}

type envOption func(*envConfig)

type envConfig struct {
	wrap       func(http.Handler) http.Handler
	wrapMirror func(http.Handler) http.Handler
	ttl        time.Duration
}

// withMirrorWrap puts a handler in front of the proxy, to observe arrivals.
func withMirrorWrap(wrap func(http.Handler) http.Handler) envOption {
	return func(c *envConfig) { c.wrapMirror = wrap }
}

// withUpstreamFault puts a fault-injecting handler around the real registry.
func withUpstreamFault(wrap func(http.Handler) http.Handler) envOption {
	return func(c *envConfig) { c.wrap = wrap }
}

func withTTL(d time.Duration) envOption { return func(c *envConfig) { c.ttl = d } }

// newEnv starts an in-process upstream registry (counted), the real store on
// a temp dir, and the proxy in an httptest server. Everything stops with t.
func newEnv(t *testing.T, opts ...envOption) *env {
	t.Helper()
	same := func(h http.Handler) http.Handler { return h }
	cfg := envConfig{wrap: same, wrapMirror: same, ttl: time.Minute}
	for _, o := range opts {
		o(&cfg)
	}
	counts := &counting{next: cfg.wrap(registry.New(registry.Logger(log.New(io.Discard, "", 0)))), hits: map[string]int{}}
	up := httptest.NewServer(counts)
	t.Cleanup(up.Close)

	core, logs := observer.New(zap.DebugLevel)
	logger := zap.New(core)
	dir := t.TempDir()
	clk := &clock{now: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	st, err := cache.Open(dir, cache.Options{Now: clk.Now}, logger.Named("cache"))
	if err != nil {
		t.Fatal(err)
	}
	client, err := upstream.New(upstream.Options{Name: "docker.io", URL: up.URL, Timeout: 5 * time.Second}, logger.Named("upstream"))
	if err != nil {
		t.Fatal(err)
	}
	px, err := proxy.New(st, []proxy.Upstream{client}, proxy.Options{TagTTL: cfg.ttl, UpstreamTimeout: 5 * time.Second, Now: clk.Now}, logger.Named("proxy"))
	if err != nil {
		t.Fatal(err)
	}
	mirror := httptest.NewServer(cfg.wrapMirror(px))
	t.Cleanup(func() {
		mirror.Close()
		px.Close()
		if err := st.Close(); err != nil {
			t.Error(err)
		}
	})
	return &env{t: t, upstream: up, counts: counts, store: st, proxy: px, mirror: mirror, clock: clk, logs: logs, dataDir: dir}
}

func host(s *httptest.Server) string { return strings.TrimPrefix(s.URL, "http://") }

// upRef names repo:tag on the upstream; mirrorRef names it through the mirror.
func (e *env) upRef(ref string) name.Reference {
	e.t.Helper()
	r, err := name.ParseReference(host(e.upstream) + "/" + ref)
	if err != nil {
		e.t.Fatal(err)
	}
	return r
}

func (e *env) mirrorRef(ref string) name.Reference {
	e.t.Helper()
	r, err := name.ParseReference(host(e.mirror) + "/" + ref)
	if err != nil {
		e.t.Fatal(err)
	}
	return r
}

func (e *env) push(ref string, img v1.Image) {
	e.t.Helper()
	if err := remote.Write(e.upRef(ref), img); err != nil {
		e.t.Fatal(err)
	}
}

func (e *env) pushIndex(ref string, idx v1.ImageIndex) {
	e.t.Helper()
	if err := remote.WriteIndex(e.upRef(ref), idx); err != nil {
		e.t.Fatal(err)
	}
}

// do sends a request to the mirror and returns the response with its body read.
func (e *env) do(method, path string, header http.Header) (*http.Response, []byte) {
	e.t.Helper()
	req, err := http.NewRequestWithContext(e.t.Context(), method, e.mirror.URL+path, nil)
	if err != nil {
		e.t.Fatal(err)
	}
	for k, v := range header {
		req.Header[k] = v
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		e.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		e.t.Fatalf("%s %s: read body: %v", method, path, err)
	}
	return resp, body
}

// ociCode checks that body is an OCI error and returns its first code.
func ociCode(t *testing.T, resp *http.Response, body []byte) string {
	t.Helper()
	if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("error Content-Type = %q, want application/json", ct)
	}
	var e struct {
		Errors []struct{ Code, Message string }
	}
	if err := json.NewDecoder(bytes.NewReader(body)).Decode(&e); err != nil || len(e.Errors) == 0 {
		t.Fatalf("status %d: body is not an OCI error: %q", resp.StatusCode, body)
	}
	return e.Errors[0].Code
}

func mustDigest(t *testing.T, d interface{ Digest() (v1.Hash, error) }) v1.Hash {
	t.Helper()
	h, err := d.Digest()
	if err != nil {
		t.Fatal(err)
	}
	return h
}
