// Package proxy serves the OCI distribution pull API from the cache, filling
// it from upstream registries on a miss. It joins package cache and package
// upstream; neither of them knows it exists.
package proxy

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	lru "github.com/hashicorp/golang-lru/v2"
	"github.com/regmirror/regmirror/cache"
	"github.com/regmirror/regmirror/upstream"
	"go.uber.org/zap"
	"golang.org/x/sync/singleflight"
)

// Store is what the proxy needs of the cache.
type Store interface {
	OpenFile(h v1.Hash) (*os.File, error)
	Has(h v1.Hash) bool
	Create(h v1.Hash, size int64, mediaType string) (*cache.Writer, error)
	Manifest(ctx context.Context, h v1.Hash, max int64) ([]byte, cache.Info, error)
	PutManifest(h v1.Hash, body []byte, mediaType string) error
	Tag(registry, repo, tag string) (cache.TagAnswer, error)
	SetTag(registry, repo, tag string, a cache.TagAnswer) error
	DeleteTag(registry, repo, tag string) error
	Tags(registry, repo string) ([]string, error)
	Repositories() ([]cache.Repository, error)
	Healthy() error
}

// Upstream is one upstream registry.
type Upstream interface {
	Name() string
	Manifest(ctx context.Context, method, repo, ref string) (*http.Response, error)
	Blob(ctx context.Context, method, repo string, h v1.Hash) (*http.Response, error)
	Tags(ctx context.Context, repo, n, last string) (*http.Response, error)
	Health() upstream.Health
}

// Options tune a Proxy.
type Options struct {
	// Default names the upstream that answers plain paths; empty means the first.
	Default string
	// TagTTL is how long a tag's answer is served without asking upstream.
	TagTTL time.Duration
	// UpstreamTimeout bounds a manifest or tag exchange with an upstream, and
	// how long a blob download may go without receiving a byte.
	UpstreamTimeout time.Duration
	// Now is the clock; tests set it, production leaves it nil.
	Now func() time.Time
	// Auth, when set, requires HTTP Basic credentials on every request but
	// the health endpoints, which probes must reach without them.
	Auth *ClientAuth
}

// Proxy is the registry API handler. Close it to stop its downloads.
type Proxy struct {
	st    Store
	ups   map[string]Upstream
	names []string // the upstreams in configured order, the default first
	opt   Options
	log   *zap.Logger

	// ctx bounds the shared work that outlives any one request (downloads,
	// resolutions); Close cancels it.
	ctx    context.Context
	cancel context.CancelFunc

	mu      sync.Mutex
	flights map[v1.Hash]*flight
	wg      sync.WaitGroup // one per running download

	resolve singleflight.Group // tag and manifest resolutions

	staleWarned *lru.Cache[string, time.Time] // tag → when we last warned it was stale
	stats       stats
}

// stats are counters for the operator (the metrics issue exports them).
type stats struct {
	stale atomic.Int64
}

// Stats is a snapshot of the proxy's counters.
type Stats struct {
	// Stale counts tag answers served past their TTL because upstream could not be asked.
	Stale int64
}

// Stats returns the proxy's counters.
func (p *Proxy) Stats() Stats { return Stats{Stale: p.stats.stale.Load()} }

// staleWarnEvery bounds the Warn lines about one stale tag.
const staleWarnEvery = 10 * time.Minute

// New returns a Proxy serving from st and filling it from ups.
func New(st Store, ups []Upstream, opt Options, log *zap.Logger) (*Proxy, error) {
	if len(ups) == 0 {
		return nil, errors.New("no upstream registry configured")
	}
	byName := make(map[string]Upstream, len(ups))
	var names []string
	for _, u := range ups {
		names = append(names, u.Name())
		if _, dup := byName[u.Name()]; dup {
			return nil, fmt.Errorf("upstream %q configured twice", u.Name())
		}
		byName[u.Name()] = u
	}
	if opt.Default == "" {
		opt.Default = ups[0].Name()
	}
	if _, ok := byName[opt.Default]; !ok {
		return nil, fmt.Errorf("default upstream %q is not configured", opt.Default)
	}
	if opt.UpstreamTimeout <= 0 {
		opt.UpstreamTimeout = 30 * time.Second
	}
	if opt.Now == nil {
		opt.Now = time.Now
	}
	ctx, cancel := context.WithCancel(context.Background())
	warned, _ := lru.New[string, time.Time](4096)
	return &Proxy{st: st, ups: byName, names: names, opt: opt, log: log, ctx: ctx, cancel: cancel, flights: make(map[v1.Hash]*flight), staleWarned: warned}, nil
}

// Close stops every download in progress and waits for them to clean up.
// Call it after the HTTP server has drained its requests.
func (p *Proxy) Close() {
	p.cancel()
	p.wg.Wait()
}

func (p *Proxy) has(name string) bool { _, ok := p.ups[name]; return ok }
func (p *Proxy) defaultName() string  { return p.opt.Default }

// ServeHTTP serves the registry API, with one access-log line per request.
func (p *Proxy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	p.logged(w, r, p.serve)
}

type handlerFunc func(w http.ResponseWriter, r *http.Request) error

// serve routes a request and writes any error it returns as an OCI error.
func (p *Proxy) serve(w http.ResponseWriter, r *http.Request) error {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		return errUnsupported()
	}
	switch r.URL.Path {
	case HealthPath:
		return writeJSON(w, r, http.StatusOK, map[string]string{"status": "ok"})
	case ReadyPath:
		return p.serveReady(w, r)
	}
	isAPI := strings.HasPrefix(r.URL.Path, "/v2")
	if isAPI {
		// Before the credentials check: Docker looks for it on the 401 of its ping.
		w.Header().Set("Docker-Distribution-API-Version", "registry/2.0")
	}
	if p.opt.Auth != nil {
		user, err := p.opt.Auth.authenticate(w, r)
		logInfoFrom(r.Context()).user = user
		if err != nil {
			return err
		}
	}
	if r.URL.Path == CheckPath {
		return p.serveCheck(w, r)
	}
	if !isAPI {
		return errNotFound()
	}
	rt, err := parseRoute(r, p)
	if err != nil {
		return err
	}
	info := logInfoFrom(r.Context())
	info.route = rt
	if rt.registry != "" {
		w.Header().Set("Oci-Namespace", rt.registry) // canonical form: no rewrite per request
	}
	switch rt.kind {
	case routeManifest:
		fixZeroSuffixRange(r.Header)
		return p.serveManifest(w, r, rt)
	case routeBlob:
		fixZeroSuffixRange(r.Header)
		return p.serveBlob(w, r, rt)
	case routeTags:
		return p.serveTags(w, r, rt)
	case routeCatalog:
		return p.serveCatalog(w, r)
	default:
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Content-Length", "2")
		w.WriteHeader(http.StatusOK)
		if r.Method == http.MethodGet {
			w.Write([]byte("{}"))
		}
		return nil
	}
}

// shared runs fn once for every concurrent caller with the same key. fn runs
// under the proxy's own context with a timeout, so the first caller leaving
// does not fail the others. It reports whether the result was shared.
func (p *Proxy) shared(ctx context.Context, key string, fn func(ctx context.Context) (any, error)) (any, bool, error) {
	ch := p.resolve.DoChan(key, func() (any, error) {
		ctx, cancel := context.WithTimeout(p.ctx, 2*p.opt.UpstreamTimeout)
		defer cancel()
		return fn(ctx)
	})
	select {
	case res := <-ch:
		return res.Val, res.Shared, res.Err
	case <-ctx.Done():
		return nil, false, ctx.Err()
	}
}
