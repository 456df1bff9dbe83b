package proxy

import (
	"context"
	"errors"
	"io"
	"net/http"
	"strconv"
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
)

// logInfo is what a handler tells the access log about its request.
type logInfo struct {
	route  route
	routed bool   // route was parsed: the request is for the registry API
	kind   string // the metrics kind of a request outside the registry API (admin)
	cache  string
	err    error
	told   string // what a client was told of a server-side failure
	user   string // the user a client named, when client authentication is on
}

type logInfoKey struct{}

func logInfoFrom(ctx context.Context) *logInfo {
	if li, ok := ctx.Value(logInfoKey{}).(*logInfo); ok {
		return li
	}
	return &logInfo{}
}

func setCache(ctx context.Context, outcome string) { logInfoFrom(ctx).cache = outcome }

// logged runs h, writes its error as an OCI error, and writes one access-log
// line. The path is logged without its query; no header is logged.
func (p *Proxy) logged(w http.ResponseWriter, r *http.Request, h handlerFunc) {
	start := time.Now()
	info := &logInfo{}
	r = r.WithContext(context.WithValue(r.Context(), logInfoKey{}, info))
	rec := &recorder{ResponseWriter: w}
	defer func() {
		v := recover()
		fields := make([]zap.Field, 0, 12)
		fields = append(fields,
			zap.String(keyMethod, r.Method),
			zap.String(keyPath, r.URL.Path),
			zap.Int(keyStatus, rec.statusCode()),
			zap.Int64(keyBytes, rec.n),
			zap.Duration(keyTook, time.Since(start)),
			zap.String(keyRemote, r.RemoteAddr),
		)
		if info.user != "" {
			fields = append(fields, zap.String(keyUser, info.user))
		}
		if info.cache != "" {
			fields = append(fields, zap.String(keyCache, info.cache))
		}
		if rt := info.route; rt.registry != "" {
			fields = append(fields, zap.String(keyUpstream, rt.registry), zap.String(keyRepo, rt.repo))
			if rt.byDigest() {
				fields = append(fields, zap.Stringer(keyDigest, rt.digest))
			}
		}
		if info.err != nil {
			fields = append(fields, zap.Error(info.err))
		}
		if info.told != "" {
			fields = append(fields, zap.String(keyTold, info.told))
		}
		// Counted before the line is written: a test that saw the line sees the counts.
		p.account(r, info, rec.statusCode(), rec.n)
		if v != nil {
			p.log.Warn("request", append(fields, zap.Bool(keyAborted, true))...)
			panic(v)
		}
		if rec.short(r) {
			// The client left mid-body (http.ServeContent does not report
			// it): not the mirror's failure, but not a whole answer either.
			fields = append(fields, zap.Bool(keyAborted, true))
		}
		p.log.Info("request", fields...)
	}()
	if err := h(rec, r); err != nil {
		oe := toOCI(err, info.route.kind)
		if _, isOCI := errors.AsType[*ociError](err); oe.status >= 500 || !isOCI {
			info.err = err
		}
		if rec.wroteHeader {
			// Headers are out: the only honest failure left is an abort, and
			// the client is told nothing (a client that left is no upstream
			// failure, whatever toOCI would make of its broken pipe).
			info.err = err
			panic(http.ErrAbortHandler)
		}
		if oe.status >= 500 {
			info.told = oe.message // e.g. which setting lets an untrusted certificate through
		}
		writeError(rec, r, oe)
	}
}

// account counts a finished request for the metrics and the status page.
func (p *Proxy) account(r *http.Request, info *logInfo, status int, n int64) {
	kind := "other"
	switch {
	case info.routed:
		kind = info.route.kind.String()
	case info.kind != "":
		kind = info.kind
	}
	if m := p.opt.Metrics; m != nil {
		m.request(kind, r.Method, status)
	}
	o := outcomeIndex(info.cache)
	if !info.routed || o < 0 {
		return
	}
	rt := info.route
	p.stats.outcomes[rt.kind][o].Add(1)
	if c := p.stats.stale[rt.registry]; c != nil && info.cache == cacheStale {
		c.Add(1)
	}
	if status < 300 {
		p.stats.served[sourceOf(info.cache)].Add(n)
	}
	p.hist.served(rt.kind == routeManifest || rt.kind == routeBlob, info.cache, status < 300, n)
	if rt.kind == routeManifest && rt.tag != "" && status < 400 {
		p.pulls.add(rt.registry, rt.repo, rt.tag, clientHost(r.RemoteAddr), info.cache, p.opt.Now())
	}
}

// recorder notes the status and the bytes of a response for the access log.
// It passes ReadFrom through so that files still go out with sendfile.
type recorder struct {
	http.ResponseWriter
	status      int
	wroteHeader bool
	n           int64
}

func (r *recorder) WriteHeader(code int) {
	if !r.wroteHeader && code >= 200 {
		r.status, r.wroteHeader = code, true
	}
	r.ResponseWriter.WriteHeader(code)
}

func (r *recorder) Write(p []byte) (int, error) {
	if !r.wroteHeader {
		r.WriteHeader(http.StatusOK)
	}
	n, err := r.ResponseWriter.Write(p)
	r.n += int64(n)
	return n, err
}

func (r *recorder) ReadFrom(src io.Reader) (n int64, err error) {
	if !r.wroteHeader {
		r.WriteHeader(http.StatusOK)
	}
	rf, ok := r.ResponseWriter.(io.ReaderFrom)
	switch {
	case !ok:
		n, err = io.Copy(writerOnly{r.ResponseWriter}, src)
	case isFlight(src):
		// A blob in flight: send the temp file's sections as they arrive.
		lr := src.(*io.LimitedReader)
		n, err = lr.R.(*flightReader).sendTo(rf, lr)
	default:
		n, err = rf.ReadFrom(src)
	}
	r.n += n
	return n, err
}

// isFlight reports whether src is ServeContent's limit around a flightReader.
func isFlight(src io.Reader) bool {
	lr, ok := src.(*io.LimitedReader)
	if !ok {
		return false
	}
	_, ok = lr.R.(*flightReader)
	return ok
}

// short reports whether a GET's body ended before its Content-Length.
func (r *recorder) short(req *http.Request) bool {
	if req.Method != http.MethodGet || !r.wroteHeader {
		return false
	}
	n, err := strconv.ParseInt(r.Header().Get("Content-Length"), 10, 64)
	return err == nil && r.n < n
}

func (r *recorder) statusCode() int {
	if !r.wroteHeader {
		return http.StatusOK
	}
	return r.status
}

func (r *recorder) Flush() { http.NewResponseController(r.ResponseWriter).Flush() }

func (r *recorder) Unwrap() http.ResponseWriter { return r.ResponseWriter }

// writerOnly hides every method but Write, so io.Copy cannot loop back into ReadFrom.
type writerOnly struct{ io.Writer }
