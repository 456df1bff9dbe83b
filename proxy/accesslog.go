package proxy

import (
	"errors"
	"net/http"
	"sync"
	"time"

	"go.uber.org/zap"
)

// Log field keys.
const (
	keyMethod   = "method"
	keyPath     = "path"
	keyStatus   = "status"
	keyBytes    = "bytes"
	keyTook     = "took"
	keyCache    = "cache"
	keyUpstream = "upstream"
	keyDigest   = "digest"
	keyRepo     = "repo"
	keyRemote   = "remote"
	keyError    = "error"
	keyAborted  = "aborted"
	keyTold     = "told_client"
	keyUser     = "user"
)

// Cache outcomes, as the access log reports them.
const (
	cacheHit       = "hit"
	cacheMiss      = "miss"
	cacheCoalesced = "coalesced"
	cacheStale     = "stale"
	cachePass      = "pass"   // asked upstream, nothing to cache (HEAD of a blob, tags/list)
	cacheStream    = "stream" // streamed from upstream without being stored (no room)
	cachePeer      = "peer"   // served to another replica (PeerPath)
)

// accessFields pools the access line's fields: at most 14 of them.
var accessFields = sync.Pool{New: func() any { s := make([]zap.Field, 0, 14); return &s }}

// logged runs h, writes its error as an OCI error, and writes one access-log
// line. The path is logged without its query; no header is logged.
func (p *Proxy) logged(w http.ResponseWriter, r *http.Request, h handlerFunc) {
	start := time.Now()
	resp := &response{ResponseWriter: w, req: r}
	attrs := &resp.attrs
	var failed error // what the handler returned, for the log
	var told string  // what a client was told of a server-side failure
	defer func() {
		v := recover()
		status := resp.statusCode()
		// Counted before the line is written: a test that saw the line sees the counts.
		p.account(r, attrs, status, resp.n)
		level := zap.InfoLevel
		if v != nil {
			level = zap.WarnLevel
		}
		// The fields are built only for a line that is written (REGMIRROR_LOG_LEVEL=warn
		// writes none), into a pooled slice: zap's cores encode or copy them in Write.
		if ce := p.access.Check(level, "request"); ce != nil {
			fp := accessFields.Get().(*[]zap.Field)
			fields := append((*fp)[:0],
				zap.String(keyMethod, r.Method),
				zap.String(keyPath, r.URL.Path),
				zap.Int(keyStatus, status),
				zap.Int64(keyBytes, resp.n),
				zap.Duration(keyTook, time.Since(start)),
				zap.String(keyRemote, r.RemoteAddr),
			)
			if attrs.user != "" {
				fields = append(fields, zap.String(keyUser, attrs.user))
			}
			if attrs.cache != "" {
				fields = append(fields, zap.String(keyCache, attrs.cache))
			}
			if rt := attrs.route; rt.registry != "" {
				fields = append(fields, zap.String(keyUpstream, rt.registry), zap.String(keyRepo, rt.repo))
				if rt.byDigest() {
					fields = append(fields, zap.Stringer(keyDigest, rt.digest))
				}
			}
			if failed != nil {
				fields = append(fields, zap.Error(failed))
			}
			if told != "" {
				fields = append(fields, zap.String(keyTold, told))
			}
			if v != nil || resp.short() {
				// A short GET: the client left mid-body (http.ServeContent does
				// not report it): not the mirror's failure, but not a whole answer either.
				fields = append(fields, zap.Bool(keyAborted, true))
			}
			ce.Write(fields...)
			clear(fields) // no pooled slice keeps a request's values alive
			*fp = fields[:0]
			accessFields.Put(fp)
		}
		if v != nil {
			panic(v)
		}
	}()
	if err := h(resp, r); err != nil {
		oe := toOCI(err, attrs.route.kind)
		if _, isOCI := errors.AsType[*ociError](err); oe.status >= 500 || !isOCI {
			failed = err
		}
		if resp.wroteHeader {
			// Headers are out: the only honest failure left is an abort, and
			// the client is told nothing (a client that left is no upstream
			// failure, whatever toOCI would make of its broken pipe).
			failed = err
			panic(http.ErrAbortHandler)
		}
		if oe.status >= 500 {
			told = oe.message // e.g. which setting lets an untrusted certificate through
		}
		writeError(resp, r, oe)
	}
}

// account counts a finished request for the metrics and the status page.
func (p *Proxy) account(r *http.Request, attrs *logAttrs, status int, n int64) {
	kind := "other"
	switch {
	case attrs.routed:
		kind = attrs.route.kind.String()
	case attrs.kind != "":
		kind = attrs.kind
	}
	if m := p.opt.Metrics; m != nil {
		m.request(kind, r.Method, status)
	}
	if attrs.cache == cachePeer && status < 300 {
		p.stats.peerSent.Add(n)
	}
	o := outcomeIndex(attrs.cache)
	if !attrs.routed || o < 0 {
		return
	}
	rt := attrs.route
	p.stats.outcomes[rt.kind][o].Add(1)
	if c := p.stats.stale[rt.registry]; c != nil && attrs.cache == cacheStale {
		c.Add(1)
	}
	if status < 300 {
		p.stats.served[sourceOf(attrs.cache)].Add(n)
	}
	p.hist.served(rt.kind == routeManifest || rt.kind == routeBlob, attrs.cache, status < 300, n)
	if rt.kind == routeManifest && rt.tag != "" && status < 400 {
		p.pulls.add(rt.registry, rt.repo, rt.tag, clientHost(r.RemoteAddr), attrs.cache, p.opt.Now())
	}
}
