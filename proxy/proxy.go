// Package proxy serves the OCI distribution pull API from the cache, filling
// it from upstream registries on a miss. It joins package cache and package
// upstream; neither of them knows it exists.
package proxy

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	lru "github.com/hashicorp/golang-lru/v2"
	"github.com/regmirror/regmirror/upstream"
	"go.uber.org/zap"
	"golang.org/x/sync/singleflight"
)

// Store is the cache as the proxy's parts use it, one role each (Blobs,
// Manifests, TagIndex, Operator, declared beside their users). New takes the
// whole, so main passes the store once; every other part sees only its role.
type Store interface {
	Blobs
	Manifests
	TagIndex
	Operator
}

// Upstream is one upstream registry.
type Upstream interface {
	Name() string
	Manifest(ctx context.Context, method, repo, ref string) (*http.Response, error)
	Blob(ctx context.Context, method, repo string, h v1.Hash) (*http.Response, error)
	// BlobFrom GETs the blob from offset on: 206 with the rest, or 200 with
	// the whole blob from a registry that ignores Range.
	BlobFrom(ctx context.Context, repo string, h v1.Hash, offset, size int64) (*http.Response, error)
	Tags(ctx context.Context, repo, n, last string) (*http.Response, error)
	// Referrers GETs the referrers index of subject, or with page (the query
	// of the Link to a next page) that page; a 404 from a registry without
	// the referrers API.
	Referrers(ctx context.Context, repo string, subject v1.Hash, page url.Values) (*http.Response, error)
	Health() upstream.Health
	// RateLimit is the pull quota the registry last reported; false before
	// any report.
	RateLimit() (upstream.RateLimit, bool)
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
	// MaxDownloads bounds the blob downloads from upstreams running at once;
	// more wait their turn (their clients wait with them). 0 means no bound.
	MaxDownloads int
	// Now is the clock; tests set it, production leaves it nil.
	Now func() time.Time
	// Metrics, if set, get the proxy's counters and what it reads from its
	// upstreams and store, on the registry they were made with.
	Metrics *Metrics
	// MetricsHandler, if set, is served at MetricsPath (GET and HEAD).
	MetricsHandler http.Handler
	// DataDir, if set, is where the status page's series are kept across
	// restarts (HistoryFile); empty keeps them in memory only.
	DataDir string
	// Auth, when set, requires HTTP Basic credentials on every request but
	// the health endpoints, which probes must reach without them; metrics
	// served here (MetricsHandler) need them too.
	Auth *ClientAuth
	// Fleet, when set, makes this proxy one of several replicas on one
	// bucket that download each blob from upstream once between them, and
	// serves PeerPath to the others.
	Fleet *Fleet
}

// Proxy is the registry API handler. Close it to stop its downloads.
type Proxy struct {
	blobs     Blobs
	manifests Manifests
	tags      TagIndex
	op        Operator
	ups       map[string]Upstream
	names     []string // the upstreams in configured order, the default first
	opt       Options
	log       *zap.Logger
	// access writes the access lines: log without the caller annotation,
	// which would name the same line of logged on every one of them (and
	// costs two allocations a request).
	access *zap.Logger

	// ctx bounds the shared work that outlives any one request (downloads,
	// resolutions); Close cancels it.
	ctx    context.Context
	cancel context.CancelFunc

	mu      sync.Mutex
	flights map[v1.Hash]*flight
	wg      sync.WaitGroup // one per running download
	slots   chan struct{}  // one per download running upstream; nil: no bound

	resolve singleflight.Group // tag and manifest resolutions

	staleWarned *lru.Cache[string, time.Time] // tag → when we last warned it was stale
	fellBack    *lru.Cache[string, string]    // tag → the fallback whose answer we hold
	noRoom      *lru.Cache[v1.Hash, struct{}] // blobs that ran out of room while stored: streamed from now on
	stats       stats
	pulls       *pullLog
	hist        *history
	started     time.Time
	namespaces  map[string][]string // registry → its Oci-Namespace header value, shared by every answer
}

// stats are the proxy's counters since start, for the metrics and the
// status page.
type stats struct {
	outcomes [routeCatalog + 1][len(outcomes)]atomic.Int64 // requests by route kind and cache outcome
	served   [len(sources)]atomic.Int64                    // bytes sent to clients, by source
	stale    map[string]*atomic.Int64                      // stale answers by registry; the map is fixed at New
	queued   atomic.Int64                                  // downloads waiting for a slot
	peerSent atomic.Int64                                  // blob bytes sent to other replicas (PeerPath)
	peerRecv atomic.Int64                                  // blob bytes received from other replicas' PeerPath
}

// Stats is a snapshot of the proxy's counters since start.
type Stats struct {
	// Manifest and blob requests by cache outcome: Stale ones were answered
	// from the cache past their TTL because upstream could not be asked.
	// Streamed ones were sent from upstream without being kept, for want of room.
	Hits, Misses, Coalesced, Stale, Streamed int64
	// Bytes of manifests, blobs and tag lists sent to clients, from the
	// cache (hits, stale answers) and from upstream (misses, shared downloads).
	FromCache, FromUpstream int64
	// Queued is how many downloads wait for a slot (Options.MaxDownloads) now.
	Queued int64
}

// HitRatio is the share of manifest and blob requests answered from the
// cache (hits and stale answers) among those that could have been; false
// before there was any.
func (s Stats) HitRatio() (float64, bool) {
	cached := s.Hits + s.Stale
	all := cached + s.Misses + s.Coalesced + s.Streamed
	if all == 0 {
		return 0, false
	}
	return float64(cached) / float64(all), true
}

// Stats returns the proxy's counters.
func (p *Proxy) Stats() Stats {
	var s Stats
	for _, k := range []routeKind{routeManifest, routeBlob} {
		o := &p.stats.outcomes[k]
		s.Hits += o[outcomeIndex(cacheHit)].Load()
		s.Misses += o[outcomeIndex(cacheMiss)].Load()
		s.Coalesced += o[outcomeIndex(cacheCoalesced)].Load()
		s.Stale += o[outcomeIndex(cacheStale)].Load()
		s.Streamed += o[outcomeIndex(cacheStream)].Load()
	}
	s.FromCache = p.stats.served[fromCache].Load()
	s.FromUpstream = p.stats.served[fromUpstream].Load()
	s.Queued = p.stats.queued.Load()
	return s
}

// staleWarnEvery bounds the Warn lines about one stale tag.
const staleWarnEvery = 10 * time.Minute

// New returns a Proxy serving from store and filling it from ups.
func New(store Store, ups []Upstream, opt Options, log *zap.Logger) (*Proxy, error) {
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
	noRoom, _ := lru.New[v1.Hash, struct{}](1024)
	fellBack, _ := lru.New[string, string](4096)
	p := &Proxy{blobs: store, manifests: store, tags: store, op: store, ups: byName, names: names, opt: opt, log: log, access: log.WithOptions(zap.WithCaller(false)), ctx: ctx, cancel: cancel,
		flights: make(map[v1.Hash]*flight), staleWarned: warned, noRoom: noRoom, fellBack: fellBack,
		pulls: newPullLog(), started: opt.Now()}
	if opt.MaxDownloads > 0 {
		p.slots = make(chan struct{}, opt.MaxDownloads)
	}
	p.stats.stale = make(map[string]*atomic.Int64, len(names))
	p.namespaces = make(map[string][]string, len(names))
	for _, n := range names {
		p.stats.stale[n] = new(atomic.Int64)
		p.namespaces[n] = []string{n}
	}
	if opt.Metrics != nil {
		if err := opt.Metrics.reg.Register(newFleetCollector(p)); err != nil {
			return nil, err
		}
		if err := opt.Metrics.reg.Register(newCollector(p)); err != nil {
			cancel()
			return nil, fmt.Errorf("register metrics: %w", err)
		}
	}
	p.startHistory()
	return p, nil
}

// Close stops every download in progress and waits for them to clean up,
// then writes the status page's series. Call it after the HTTP server has
// drained its requests.
func (p *Proxy) Close() {
	p.cancel()
	p.wg.Wait()
	p.closeHistory()
}

func (p *Proxy) has(name string) bool { _, ok := p.ups[name]; return ok }
func (p *Proxy) defaultName() string  { return p.opt.Default }

// ServeHTTP serves the registry API, with one access-log line per request.
func (p *Proxy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	p.logged(w, r, p.serve)
}

// handlerFunc is a handler of the proxy: it answers through the one response
// type, tells the access log what it did there, and returns its error for
// logged to write as an OCI error.
type handlerFunc func(w *response, r *http.Request) error

// serve routes a request and writes any error it returns as an OCI error.
func (p *Proxy) serve(w *response, r *http.Request) error {
	isAPI := strings.HasPrefix(r.URL.Path, "/v2")
	if isAPI {
		// On every /v2 answer, refusals included: before the method check (its
		// 405) and the credentials check (Docker looks for it on its ping's 401).
		w.Header()["Docker-Distribution-Api-Version"] = apiVersionValue
	}
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		return errUnsupported()
	}
	if strings.HasPrefix(r.URL.Path, PeerPath) {
		// Before client authentication: replicas have the fleet's secret,
		// not a client's password.
		return p.servePeer(w, r)
	}
	switch r.URL.Path {
	case HealthPath:
		return writeJSON(w, r, http.StatusOK, map[string]string{"status": "ok"})
	case ReadyPath:
		return p.serveReady(w, r)
	}
	if p.opt.Auth != nil {
		user, err := p.opt.Auth.authenticate(w, r)
		w.setUser(user)
		if err != nil {
			return err
		}
	}
	switch r.URL.Path {
	case MetricsPath:
		// Behind the credentials, like the API: the metrics name upstreams
		// and repositories' traffic. A listener of their own
		// (REGMIRROR_METRICS_ADDR) is the way to scrape without a password.
		if p.opt.MetricsHandler != nil {
			p.opt.MetricsHandler.ServeHTTP(w, r)
			return nil
		}
	case CheckPath: // names what is cached: behind the credentials, like the API
		return p.serveCheck(w, r)
	case StatusPath: // names repositories and clients
		return p.serveStatus(w, r)
	case HistoryPath: // the status page's charts, as numbers
		return p.serveHistory(w, r)
	}
	if !isAPI {
		return errNoSuchEndpoint()
	}
	rt, err := parseRoute(r, p)
	if err != nil {
		return err
	}
	w.setRoute(rt)
	if ns := p.namespaces[rt.registry]; ns != nil {
		w.Header()["Oci-Namespace"] = ns
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
	case routeReferrers:
		return p.serveReferrers(w, r, rt)
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
