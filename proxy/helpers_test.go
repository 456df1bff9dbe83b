package proxy_test

import (
	"context"
	"io"
	"log"
	"net"
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
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/regmirror/regmirror/cache"
	"github.com/regmirror/regmirror/proxy"
	"github.com/regmirror/regmirror/test/regtest"
	"github.com/regmirror/regmirror/upstream"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
)

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
	counts   *regtest.Counter
	extra    map[string]*extraUpstream // by registry name
	store    *cache.Store
	proxy    *proxy.Proxy
	mirror   *httptest.Server
	clock    *clock
	logs     *observer.ObservedLogs
	waitLog  *regtest.Log // the same lines, to wait on
	dataDir  string
	settled  *sync.WaitGroup   // one per request the mirror is handling
	auth     *proxy.ClientAuth // set by withClientAuth
	stop     func()            // stops the mirror, the proxy and the store, once; cleanup calls it too
}

// extraUpstream is one more in-process registry behind the proxy.
type extraUpstream struct {
	server *httptest.Server
	counts *regtest.Counter
}

type envOption func(*envConfig)

type envConfig struct {
	wrap       func(http.Handler) http.Handler
	wrapMirror func(http.Handler) http.Handler
	ttl        time.Duration
	extra      []string // names of more upstreams, beside docker.io
	store      cache.Options
	proxy      proxy.Options
	htpasswd   string        // client authentication against this file, on the env's clock
	dataDir    string        // the store's and the history's; a new temp dir if empty
	probe      time.Duration // the upstreams' probe back-off while down, if set
	start      time.Time
	listener   net.Listener
	referrers  bool // the default upstream has the referrers API
	callers    bool // log lines carry their caller, as regmirror's logger's do
}

// withUpstreamListener serves the upstream registry on l instead of a fresh
// listener, so a test can take the upstream down and bring it back.
func withUpstreamListener(l net.Listener) envOption { return func(c *envConfig) { c.listener = l } }

// withDataDir opens the store (and the history) in dir: a second env on the
// dir of a stopped one is a restart.
func withDataDir(dir string) envOption { return func(c *envConfig) { c.dataDir = dir } }

// withProbe makes a down upstream's probe ask every d, so a test that took
// it down sees it up soon after it answers again.
func withProbe(d time.Duration) envOption { return func(c *envConfig) { c.probe = d } }

// withClockAt starts the env's clock at t.
func withClockAt(t time.Time) envOption { return func(c *envConfig) { c.start = t } }

// withClientAuth requires clients to log in with the users of an htpasswd file.
func withClientAuth(path string) envOption { return func(c *envConfig) { c.htpasswd = path } }

// withUpstreams adds upstream registries by name, each its own in-process registry.
func withUpstreams(names ...string) envOption {
	return func(c *envConfig) { c.extra = append(c.extra, names...) }
}

// withMirrorWrap puts a handler in front of the proxy, to observe arrivals.
func withMirrorWrap(wrap func(http.Handler) http.Handler) envOption {
	return func(c *envConfig) { c.wrapMirror = wrap }
}

// withUpstreamFault puts a fault-injecting handler around the real registry.
func withUpstreamFault(wrap func(http.Handler) http.Handler) envOption {
	return func(c *envConfig) { c.wrap = wrap }
}

// withCallers annotates log lines with their caller (zap.AddCaller), as
// regmirror's own logger does.
func withCallers() envOption { return func(c *envConfig) { c.callers = true } }

// withReferrersAPI gives the default upstream the OCI 1.1 referrers API.
func withReferrersAPI() envOption { return func(c *envConfig) { c.referrers = true } }

// withDefault makes the upstream of that name (one of withUpstreams) the default.
func withDefault(name string) envOption { return func(c *envConfig) { c.proxy.Default = name } }

func withTTL(d time.Duration) envOption { return func(c *envConfig) { c.ttl = d } }

// withUpstreamTimeout sets the proxy's upstream (and idle download) timeout.
func withUpstreamTimeout(d time.Duration) envOption {
	return func(c *envConfig) { c.proxy.UpstreamTimeout = d }
}

// withMaxDownloads bounds the proxy's concurrent upstream downloads.
func withMaxDownloads(n int) envOption { return func(c *envConfig) { c.proxy.MaxDownloads = n } }

// withBudget gives the store a byte budget.
func withBudget(n int64) envOption { return func(c *envConfig) { c.store.MaxSize = n } }

// withBucket keeps the store's content in a bucket, and runs the store's
// background work (uploads, the bucket's probe) while the env lives.
func withBucket(objs cache.Objects, localMax int64) envOption {
	return func(c *envConfig) {
		c.store.Bucket, c.store.LocalMaxSize, c.store.UploadRetry = objs, localMax, 10*time.Millisecond
	}
}

// withMinFree gives the store a free-space floor.
func withMinFree(n int64) envOption { return func(c *envConfig) { c.store.MinFree = n } }

// newEnv starts an in-process upstream registry (counted), the real store on
// a temp dir, and the proxy in an httptest server. Everything stops with t.
func newEnv(t *testing.T, opts ...envOption) *env {
	t.Helper()
	same := func(h http.Handler) http.Handler { return h }
	cfg := envConfig{wrap: same, wrapMirror: same, ttl: time.Minute, start: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	for _, o := range opts {
		o(&cfg)
	}
	counts := regtest.Count(cfg.wrap(registry.New(registry.Logger(log.New(io.Discard, "", 0)), registry.WithReferrersSupport(cfg.referrers))))
	up := httptest.NewUnstartedServer(counts)
	if cfg.listener != nil {
		up.Listener.Close()
		up.Listener = cfg.listener
	}
	up.Start()
	t.Cleanup(up.Close)

	core, logs := observer.New(zap.DebugLevel)
	waitLog := regtest.NewLog()
	logger := zap.New(zapcore.NewTee(core, waitLog.Core(zap.DebugLevel)), zap.WithCaller(cfg.callers))
	reg := prometheus.NewRegistry()
	metrics, err := proxy.NewMetrics(reg)
	if err != nil {
		t.Fatal(err)
	}
	dir := cfg.dataDir
	if dir == "" {
		dir = t.TempDir()
	}
	clk := &clock{now: cfg.start}
	cfg.store.Now = clk.Now
	st, err := cache.Open(dir, cfg.store, logger.Named("cache"))
	if err != nil {
		t.Fatal(err)
	}
	newClient := func(name, url string) proxy.Upstream {
		c, err := upstream.New(upstream.Options{Name: name, URL: url, Timeout: 5 * time.Second, Observer: metrics,
			ProbeMin: cfg.probe, ProbeMax: cfg.probe}, logger.Named("upstream"))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(c.Close) // stops its probe if a test took the upstream down
		return c
	}
	clients := []proxy.Upstream{newClient("docker.io", up.URL)}
	extra := map[string]*extraUpstream{}
	for _, name := range cfg.extra {
		x := &extraUpstream{counts: regtest.Count(registry.New(registry.Logger(log.New(io.Discard, "", 0))))}
		x.server = httptest.NewServer(x.counts)
		t.Cleanup(x.server.Close)
		extra[name] = x
		clients = append(clients, newClient(name, x.server.URL))
	}
	popt := cfg.proxy
	popt.TagTTL, popt.Now, popt.DataDir = cfg.ttl, clk.Now, dir
	if popt.UpstreamTimeout == 0 {
		popt.UpstreamTimeout = 5 * time.Second
	}
	popt.Metrics, popt.MetricsHandler = metrics, promhttp.HandlerFor(reg, promhttp.HandlerOpts{})
	if cfg.htpasswd != "" {
		if popt.Auth, err = proxy.NewClientAuth(cfg.htpasswd, proxy.ClientAuthOptions{Now: clk.Now}, logger.Named("auth")); err != nil {
			t.Fatal(err)
		}
	}
	px, err := proxy.New(st, clients, popt, logger.Named("proxy"))
	if err != nil {
		t.Fatal(err)
	}
	var settled sync.WaitGroup
	tracked := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		settled.Add(1)
		defer settled.Done()
		px.ServeHTTP(w, r)
	})
	mirror := httptest.NewServer(cfg.wrapMirror(tracked))
	stopRun := func() {}
	if cfg.store.Bucket != nil {
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { st.Run(ctx); close(done) }()
		stopRun = func() { cancel(); <-done }
	}
	var once sync.Once
	stop := func() {
		once.Do(func() {
			mirror.Close()
			px.Close()
			stopRun()
			if err := st.Close(); err != nil {
				t.Error(err)
			}
		})
	}
	t.Cleanup(stop)
	return &env{t: t, upstream: up, counts: counts, extra: extra, store: st, proxy: px, mirror: mirror, clock: clk, logs: logs, waitLog: waitLog, dataDir: dir, settled: &settled, auth: popt.Auth, stop: stop}
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

// settle waits until the mirror has finished every request it received: a
// client can hold a whole response before the handler has returned and
// counted it.
func (e *env) settle() { e.settled.Wait() }

// scrape settles the mirror and reads its /metrics.
func (e *env) scrape() regtest.Metrics {
	e.t.Helper()
	e.settle()
	return regtest.Scrape(e.t, e.mirror.URL+proxy.MetricsPath)
}

// do sends a request to the mirror and returns the response with its body read.
func (e *env) do(method, path string, header http.Header) (*http.Response, []byte) {
	e.t.Helper()
	return regtest.Do(e.t, method, e.mirror.URL+path, header)
}

// waitFor waits until the proxy logs a line for which match is true, and
// returns it (numbers in it are float64).
func (e *env) waitFor(what string, match func(rec map[string]any) bool) map[string]any {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(e.t.Context(), 10*time.Second)
	defer cancel()
	rec, err := e.waitLog.Wait(ctx, 0, match)
	if err != nil {
		e.t.Fatalf("waiting for %s: %v", what, err)
	}
	return rec
}

// getCut GETs path from a mirror whose upstream misbehaves (why says how)
// and fails the test if the client got a complete 200: the body must be cut
// or refused. It returns what arrived.
func (e *env) getCut(path, why string) []byte {
	e.t.Helper()
	resp, err := http.Get(e.mirror.URL + path)
	if err != nil {
		return nil
	}
	defer resp.Body.Close()
	got, err := io.ReadAll(resp.Body)
	if err == nil && resp.StatusCode == http.StatusOK {
		e.t.Fatalf("client got a complete 200 (%d bytes) %s", len(got), why)
	}
	return got
}
