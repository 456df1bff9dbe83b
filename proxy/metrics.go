package proxy

import (
	"maps"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/regmirror/regmirror/upstream"
)

// MetricsPath is where the metrics are served, on the main listener or on
// a listener of their own.
const MetricsPath = "/metrics"

// Metrics are the mirror's Prometheus metrics, on a registry the caller
// owns, never the global one. Build them before the upstream clients and
// give them to each as its upstream.Observer, then to the proxy in
// Options.Metrics: the proxy adds what it reads at scrape time from its own
// counters, its upstreams and its store.
type Metrics struct {
	reg        prometheus.Registerer
	requests   *prometheus.CounterVec
	upDuration *prometheus.HistogramVec
	upErrors   *prometheus.CounterVec
	upBytes    *prometheus.CounterVec
	history    atomic.Pointer[history] // the proxy's series, which count upstream failures too
	fallbacks  *prometheus.CounterVec

	// counters are requests' children by label, read without a lock on every
	// request (WithLabelValues hashes and checks the labels, under a lock);
	// a new combination copies the map under countersMu. The labels are
	// bounded: kinds and methods are fixed sets, codes the few we answer.
	counters   atomic.Pointer[map[requestLabels]prometheus.Counter]
	countersMu sync.Mutex
}

type requestLabels struct {
	kind, method string
	code         int
}

// NewMetrics registers the mirror's request and upstream metrics on reg.
func NewMetrics(reg prometheus.Registerer) (*Metrics, error) {
	m := &Metrics{
		reg: reg,
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "regmirror_requests_total",
			Help: "HTTP requests answered, by route kind (base, manifest, blob, tags, referrers, catalog, admin, peer, other), method and status code.",
		}, []string{"kind", "method", "code"}),
		upDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "regmirror_upstream_request_duration_seconds",
			Help: "Time until an upstream's response headers (token handshake and retries included), by registry and operation (manifest, blob, tags).",
			// Up to the default REGMIRROR_UPSTREAM_TIMEOUT.
			Buckets: []float64{.01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30},
		}, []string{"registry", "op"}),
		upErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "regmirror_upstream_errors_total",
			Help: "Upstream requests that did not get a 200, by registry and reason (down, timeout, network, tls, handshake, not_found, denied, rate_limited, server_error, bad_status, other).",
		}, []string{"registry", "reason"}),
		upBytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "regmirror_upstream_received_bytes_total",
			Help: "Bytes of manifests, blobs and tag lists received from each upstream registry.",
		}, []string{"registry"}),
		fallbacks: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "regmirror_fallback_answers_total",
			Help: "Answers a fallback source gave because a registry's own upstream could not be asked, by registry, fallback and operation (manifest, blob, tags, referrers).",
		}, []string{"registry", "fallback", "op"}),
	}
	for _, c := range []prometheus.Collector{m.requests, m.upDuration, m.upErrors, m.upBytes, m.fallbacks} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}

// Answered implements upstream.Observer.
func (m *Metrics) Answered(registry, op string, took time.Duration, f upstream.Failure) {
	switch f.Kind {
	case upstream.KindCanceled:
		return // our client left: nothing to say about the upstream
	case upstream.KindDown:
		// Refused without asking: no latency to speak of.
	default:
		m.upDuration.WithLabelValues(registry, op).Observe(took.Seconds())
	}
	if reason := f.Reason(); reason != "" {
		m.upErrors.WithLabelValues(registry, reason).Inc()
		if h := m.history.Load(); h != nil {
			h.failed(registry, f)
		}
	}
}

// Received implements upstream.Observer.
func (m *Metrics) Received(registry string, n int) {
	m.upBytes.WithLabelValues(registry).Add(float64(n))
}

// request counts one answered request.
func (m *Metrics) request(kind, method string, code int) {
	l := requestLabels{kind, methodLabel(method), code}
	if cs := m.counters.Load(); cs != nil {
		if c, ok := (*cs)[l]; ok {
			c.Inc()
			return
		}
	}
	m.countersMu.Lock()
	defer m.countersMu.Unlock()
	var cs map[requestLabels]prometheus.Counter
	if old := m.counters.Load(); old != nil {
		cs = maps.Clone(*old)
	} else {
		cs = make(map[requestLabels]prometheus.Counter)
	}
	c, ok := cs[l]
	if !ok {
		c = m.requests.WithLabelValues(l.kind, l.method, strconv.Itoa(code))
		cs[l] = c
		m.counters.Store(&cs)
	}
	c.Inc()
}

// methodLabel keeps the method label to a known set: a client can send any
// token as a method, and every distinct label value is a new series.
func methodLabel(m string) string {
	switch m {
	case http.MethodGet, http.MethodHead, http.MethodPut, http.MethodPost, http.MethodPatch, http.MethodDelete, http.MethodOptions:
		return m
	}
	return "other"
}

// The labels of the cache outcome and served-bytes metrics.
var (
	outcomes = [...]string{cacheHit, cacheMiss, cacheCoalesced, cacheStale, cachePass, cacheStream}
	sources  = [...]string{"cache", "upstream"}
)

const (
	fromCache = iota
	fromUpstream
)

func outcomeIndex(outcome string) int {
	for i, o := range outcomes {
		if o == outcome {
			return i
		}
	}
	return -1
}

// sourceOf is where the bytes of an answer came from: the cache for a hit or
// a stale answer, upstream (directly, through a shared download, or streamed
// through for want of room) otherwise.
func sourceOf(outcome string) int {
	if outcome == cacheHit || outcome == cacheStale {
		return fromCache
	}
	return fromUpstream
}

// collector reads the proxy's counters, its upstreams and its store at
// scrape time, so the numbers have one home and the status page shows the
// same ones.
type collector struct {
	p *Proxy

	outcome, served, stale, flights, queued, up, rateRemaining, rateLimit *prometheus.Desc

	// From the store's Usage, read once per scrape so the numbers agree.
	diskBytes, diskObjects, diskBudget, evictions, evictedBytes, streamed *prometheus.Desc
	// With a bucket: its state and the local copy's use.
	bucketUp, pendingUploads, localBytes, localBudget *prometheus.Desc
}

func newCollector(p *Proxy) *collector {
	return &collector{
		p: p,
		outcome: prometheus.NewDesc("regmirror_cache_requests_total",
			"Manifest, blob and tag-list requests by what the cache did: hit, miss, coalesced (joined a download or lookup under way), stale (upstream unreachable, last answer served), pass (asked upstream, nothing to keep) or stream (sent from upstream without being kept: no room).",
			[]string{"kind", "outcome"}, nil),
		served: prometheus.NewDesc("regmirror_served_bytes_total",
			"Bytes of manifests, blobs and tag lists sent to clients in successful answers, by source: cache (hits and stale answers) or upstream (misses and shared downloads).",
			[]string{"source"}, nil),
		stale: prometheus.NewDesc("regmirror_stale_answers_total",
			"Answers served from the cache past their TTL because the upstream could not be asked, by registry.",
			[]string{"registry"}, nil),
		flights: prometheus.NewDesc("regmirror_downloads_in_flight",
			"Blob downloads from upstream in progress.", nil, nil),
		queued: prometheus.NewDesc("regmirror_downloads_queued",
			"Blob downloads waiting for a slot (REGMIRROR_MAX_DOWNLOADS); their clients wait with them.", nil, nil),
		up: prometheus.NewDesc("regmirror_upstream_up",
			"1 while the upstream registry answers, 0 while it is marked down.", []string{"registry"}, nil),
		rateRemaining: prometheus.NewDesc("regmirror_upstream_ratelimit_remaining",
			"Pulls left in the upstream's rate-limit window, as it last reported (Docker Hub's ratelimit-remaining); absent until it reports one.",
			[]string{"registry"}, nil),
		rateLimit: prometheus.NewDesc("regmirror_upstream_ratelimit_limit",
			"The upstream's pull quota per window, as it last reported (ratelimit-limit); absent until it reports one.",
			[]string{"registry"}, nil),
		diskBytes: prometheus.NewDesc("regmirror_cache_bytes",
			"Bytes of content (blobs and manifests) in the cache.", nil, nil),
		diskObjects: prometheus.NewDesc("regmirror_cache_objects",
			"Content files in the cache.", nil, nil),
		diskBudget: prometheus.NewDesc("regmirror_cache_budget_bytes",
			"The cache's byte budget; 0 means no limit.", nil, nil),
		evictions: prometheus.NewDesc("regmirror_cache_evictions_total",
			"Objects evicted from the cache to stay under its budget.", nil, nil),
		evictedBytes: prometheus.NewDesc("regmirror_cache_evicted_bytes_total",
			"Bytes evicted from the cache to stay under its budget.", nil, nil),
		streamed: prometheus.NewDesc("regmirror_cache_streamed_total",
			"Blobs served without being kept: larger than the budget allows, or no room could be made.", nil, nil),
		bucketUp: prometheus.NewDesc("regmirror_bucket_up",
			"With a bucket: 1 while it answers, 0 while it is marked down (the local copy is served, misses are streamed without being kept).", nil, nil),
		pendingUploads: prometheus.NewDesc("regmirror_bucket_pending_uploads",
			"With a bucket: content files and records committed locally and not yet in the bucket.", nil, nil),
		localBytes: prometheus.NewDesc("regmirror_cache_local_bytes",
			"With a bucket: bytes of the local copy of hot content under the data dir.", nil, nil),
		localBudget: prometheus.NewDesc("regmirror_cache_local_budget_bytes",
			"With a bucket: the local copy's byte budget; 0 means no limit but the free-space floor.", nil, nil),
	}
}

func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.outcome, c.served, c.stale, c.flights, c.queued, c.up, c.rateRemaining, c.rateLimit,
		c.diskBytes, c.diskObjects, c.diskBudget, c.evictions, c.evictedBytes, c.streamed,
		c.bucketUp, c.pendingUploads, c.localBytes, c.localBudget} {
		ch <- d
	}
}

func (c *collector) Collect(ch chan<- prometheus.Metric) {
	stats := &c.p.stats
	for _, k := range []routeKind{routeManifest, routeBlob, routeTags, routeReferrers} {
		for i, o := range outcomes {
			ch <- prometheus.MustNewConstMetric(c.outcome, prometheus.CounterValue, float64(stats.outcomes[k][i].Load()), k.String(), o)
		}
	}
	for i, s := range sources {
		ch <- prometheus.MustNewConstMetric(c.served, prometheus.CounterValue, float64(stats.served[i].Load()), s)
	}
	u := c.p.op.Usage()
	for _, m := range []struct {
		d *prometheus.Desc
		t prometheus.ValueType
		v int64
	}{
		{c.diskBytes, prometheus.GaugeValue, u.Bytes},
		{c.diskObjects, prometheus.GaugeValue, u.Objects},
		{c.diskBudget, prometheus.GaugeValue, u.Budget},
		{c.evictions, prometheus.CounterValue, u.Evictions},
		{c.evictedBytes, prometheus.CounterValue, u.EvictedBytes},
		{c.streamed, prometheus.CounterValue, u.Streamed},
	} {
		ch <- prometheus.MustNewConstMetric(m.d, m.t, float64(m.v))
	}
	if b := c.p.op.Bucket(); b.Configured {
		up := 1.0
		if b.Down {
			up = 0
		}
		ch <- prometheus.MustNewConstMetric(c.bucketUp, prometheus.GaugeValue, up)
		ch <- prometheus.MustNewConstMetric(c.pendingUploads, prometheus.GaugeValue, float64(b.Pending))
		ch <- prometheus.MustNewConstMetric(c.localBytes, prometheus.GaugeValue, float64(u.LocalBytes))
		ch <- prometheus.MustNewConstMetric(c.localBudget, prometheus.GaugeValue, float64(u.LocalBudget))
	}
	c.p.mu.Lock()
	flights := len(c.p.flights)
	c.p.mu.Unlock()
	ch <- prometheus.MustNewConstMetric(c.flights, prometheus.GaugeValue, float64(flights))
	ch <- prometheus.MustNewConstMetric(c.queued, prometheus.GaugeValue, float64(stats.queued.Load()))
	for _, name := range c.p.names {
		ch <- prometheus.MustNewConstMetric(c.stale, prometheus.CounterValue, float64(stats.stale[name].Load()), name)
		u := c.p.ups[name]
		up := 0.0
		if u.Health().Up {
			up = 1
		}
		ch <- prometheus.MustNewConstMetric(c.up, prometheus.GaugeValue, up, name)
		// Reported only once known: a 0 before the first answer would read
		// as an exhausted quota.
		if rl, ok := u.RateLimit(); ok {
			ch <- prometheus.MustNewConstMetric(c.rateRemaining, prometheus.GaugeValue, float64(rl.Remaining), name)
			ch <- prometheus.MustNewConstMetric(c.rateLimit, prometheus.GaugeValue, float64(rl.Limit), name)
		}
	}
}
