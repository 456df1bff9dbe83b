package proxy

import (
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/regmirror/regmirror/cache"
)

// Operator is what the operator's views and commands need of the cache:
// usage against the budget, pins, the image list, eviction on demand,
// re-verification, and health. The admin API, the status page, the metrics
// and the readiness check use it.
type Operator interface {
	Usage() cache.Usage
	Pins() ([]cache.Pin, error)
	Pin(p cache.Pin) error
	Unpin(registry, repo, ref string) error
	Images() ([]cache.Image, error)
	GC() (cache.Evicted, error)
	Verify(ctx context.Context, progress func(cache.VerifyReport)) (cache.VerifyReport, error)
	// Healthy says why the store cannot serve, or nil.
	Healthy() error
	// Bucket is the state of the store's bucket, if it has one: down is
	// degraded, not unready.
	Bucket() cache.BucketState
	// Fleet is this replica's view of the replicas on its bucket; ok false
	// when it is not one of several.
	Fleet() (cache.FleetState, bool)
}

// Admin API paths. Every one but images changes the cache, so they take POST.
const (
	AdminImages = "/admin/images" // GET: usage and every cached image
	AdminWarm   = "/admin/warm"   // POST ?image=…&image=…[&referrers=1]: NDJSON of WarmProgress
	AdminPin    = "/admin/pin"    // POST ?image=…[&referrers=1]: pin, then warm every platform (NDJSON)
	AdminUnpin  = "/admin/unpin"  // POST ?image=…
	AdminGC     = "/admin/gc"     // POST: evict down to the budget now
	AdminVerify = "/admin/verify" // POST: re-hash everything (NDJSON of cache.VerifyReport)
)

// ImagesAnswer is the answer of AdminImages.
type ImagesAnswer struct {
	Usage  cache.Usage   `json:"usage"`
	Images []cache.Image `json:"images"`
}

// GCAnswer is the answer of AdminGC.
type GCAnswer struct {
	Evicted cache.Evicted `json:"evicted"`
	Usage   cache.Usage   `json:"usage"`
}

// VerifyProgress is one line of AdminVerify's answer.
type VerifyProgress struct {
	cache.VerifyReport
	Done  bool   `json:"done,omitempty"`
	Error string `json:"error,omitempty"`
}

// Admin returns the admin API handler, for its own listener (loopback by
// default). With a token, every request must carry it as a bearer token.
func (p *Proxy) Admin(token string) http.Handler {
	a := &admin{p: p, op: p.op, token: token}
	serve := func(w *response, r *http.Request) error {
		w.setKind("admin")
		return a.serve(w, r)
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { p.logged(w, r, serve) })
}

type admin struct {
	p     *Proxy
	op    Operator
	token string
}

func (a *admin) serve(w http.ResponseWriter, r *http.Request) error {
	if err := a.fromBrowser(r); err != nil {
		return err
	}
	if a.token != "" {
		got := []byte(r.Header.Get("Authorization"))
		if subtle.ConstantTimeCompare(got, []byte("Bearer "+a.token)) != 1 {
			w.Header().Set("WWW-Authenticate", `Bearer realm="regmirror-admin"`)
			return &ociError{status: http.StatusUnauthorized, code: "UNAUTHORIZED", message: "the admin API needs its token (REGMIRROR_ADMIN_TOKEN)"}
		}
	}
	want := http.MethodPost
	if r.URL.Path == AdminImages {
		want = http.MethodGet
	}
	if r.Method != want {
		return &ociError{status: http.StatusMethodNotAllowed, code: "UNSUPPORTED", message: r.URL.Path + " takes " + want}
	}
	switch r.URL.Path {
	case AdminImages:
		imgs, err := a.op.Images()
		if err != nil {
			return err
		}
		if imgs == nil {
			imgs = []cache.Image{}
		}
		return writeJSON(w, r, http.StatusOK, ImagesAnswer{Usage: a.op.Usage(), Images: imgs})
	case AdminWarm:
		return a.warm(w, r, nil)
	case AdminPin:
		return a.warm(w, r, func(rt route, h v1.Hash, also []v1.Hash) error {
			return a.op.Pin(cache.Pin{Registry: rt.registry, Repo: rt.repo, Ref: rt.ref(), Digest: h, Also: also})
		})
	case AdminUnpin:
		return a.unpin(w, r)
	case AdminGC:
		ev, err := a.op.GC()
		if err != nil {
			return err
		}
		return writeJSON(w, r, http.StatusOK, GCAnswer{Evicted: ev, Usage: a.op.Usage()})
	case AdminVerify:
		return a.verify(w, r)
	}
	return errNoSuchEndpoint()
}

// images reads the image= parameters: at least one, at most 100.
func images(r *http.Request) ([]string, error) {
	imgs := r.URL.Query()["image"]
	if len(imgs) == 0 || len(imgs) > 100 {
		return nil, &ociError{status: http.StatusBadRequest, code: "NAME_INVALID", message: "want 1 to 100 image= parameters"}
	}
	return imgs, nil
}

// withReferrers reads the referrers= parameter: whether an image's
// referrers come with it.
func withReferrers(r *http.Request) (bool, error) {
	v := r.URL.Query().Get("referrers")
	if v == "" {
		return false, nil
	}
	b, err := strconv.ParseBool(v)
	if err != nil {
		return false, &ociError{status: http.StatusBadRequest, code: "UNSUPPORTED", message: fmt.Sprintf("referrers=%q: want 1 or 0", v)}
	}
	return b, nil
}

// warm warms each image in turn, streaming progress as JSON lines.
func (a *admin) warm(w http.ResponseWriter, r *http.Request, onResolved func(route, v1.Hash, []v1.Hash) error) error {
	imgs, err := images(r)
	if err != nil {
		return err
	}
	referrers, err := withReferrers(r)
	if err != nil {
		return err
	}
	for _, img := range imgs { // refuse a bad name before the stream starts
		if _, err := a.p.parseImage(img); err != nil {
			return err
		}
	}
	lines := newLines(w)
	for _, img := range imgs {
		// A failed image is reported in its last line; the others go on.
		a.p.warm(r.Context(), img, warmOptions{referrers: referrers, onResolved: onResolved}, func(p WarmProgress) { lines.send(p) })
	}
	return nil
}

func (a *admin) unpin(w http.ResponseWriter, r *http.Request) error {
	imgs, err := images(r)
	if err != nil {
		return err
	}
	for _, img := range imgs {
		rt, err := a.p.parseImage(img)
		if err != nil {
			return err
		}
		if err := a.op.Unpin(rt.registry, rt.repo, rt.ref()); err != nil {
			if errors.Is(err, cache.ErrNotFound) {
				return &ociError{status: http.StatusNotFound, code: "NAME_UNKNOWN", message: img + " is not pinned"}
			}
			return err
		}
	}
	return writeJSON(w, r, http.StatusOK, map[string]any{"unpinned": imgs})
}

func (a *admin) verify(w http.ResponseWriter, r *http.Request) error {
	lines := newLines(w)
	var last time.Time
	rep, err := a.op.Verify(r.Context(), func(rep cache.VerifyReport) {
		if time.Since(last) >= warmEvery {
			last = time.Now()
			lines.send(VerifyProgress{VerifyReport: rep})
		}
	})
	final := VerifyProgress{VerifyReport: rep, Done: true}
	if err != nil {
		final.Error = err.Error()
	}
	lines.send(final)
	return nil
}

// lines streams JSON lines, flushing each.
type lines struct {
	w   http.ResponseWriter
	enc *json.Encoder
	rc  *http.ResponseController
}

func newLines(w http.ResponseWriter) *lines {
	w.Header().Set("Content-Type", "application/x-ndjson")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(http.StatusOK)
	return &lines{w: w, enc: json.NewEncoder(w), rc: http.NewResponseController(w)}
}

func (l *lines) send(v any) {
	l.enc.Encode(v)
	l.rc.Flush()
}

// fromBrowser refuses what a web page open on the mirror's host could send.
// A loopback listener is no defence against the browser on that host: a
// page can POST to it without a preflight (CSRF), and a name of the
// attacker's that resolves to 127.0.0.1 (DNS rebinding) lets a page read
// the answers too. The CLI sends neither Origin nor Sec-Fetch-Site, and
// names the listener by its address or as localhost.
func (a *admin) fromBrowser(r *http.Request) error {
	if site := r.Header.Get("Sec-Fetch-Site"); site != "" && site != "same-origin" && site != "none" {
		return errAdminDenied("the admin API refuses requests a web page makes from another site (Sec-Fetch-Site: " + site + ")")
	}
	if origin := r.Header.Get("Origin"); origin != "" && !sameOrigin(origin, r.Host) {
		return errAdminDenied(fmt.Sprintf("the admin API refuses requests from web pages of another origin (Origin: %q)", origin))
	}
	if a.token == "" && !ownHost(r) {
		return errAdminDenied(fmt.Sprintf("the admin API answers only to localhost and its own loopback address, not to Host %q"+
			" (set REGMIRROR_ADMIN_TOKEN to reach it under another name)", r.Host))
	}
	return nil
}

func errAdminDenied(msg string) error {
	return &ociError{status: http.StatusForbidden, code: "DENIED", message: msg}
}

// sameOrigin reports whether origin is the admin API's own: plain http (it
// never serves TLS) on the host and port the request was sent to.
func sameOrigin(origin, host string) bool {
	u, err := url.Parse(origin)
	if err != nil || u.Scheme != "http" || u.Host == "" || u.Path != "" || u.User != nil {
		return false // "null" (a sandboxed or file: page) too
	}
	oh, op := splitHostPort(u.Host)
	hh, hp := splitHostPort(host)
	return strings.EqualFold(oh, hh) && op == hp
}

// ownHost reports whether the request names the listener as localhost or
// by the loopback address it was accepted on.
func ownHost(r *http.Request) bool {
	host, _ := splitHostPort(r.Host)
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip, err := netip.ParseAddr(host)
	if err != nil || !ip.IsLoopback() {
		return false
	}
	local, ok := r.Context().Value(http.LocalAddrContextKey).(net.Addr)
	if !ok {
		return false
	}
	lap, err := netip.ParseAddrPort(local.String())
	return err == nil && lap.Addr().Unmap() == ip.Unmap()
}

// splitHostPort splits host[:port], with port 80 when none is given.
func splitHostPort(hostport string) (host, port string) {
	host, port, err := net.SplitHostPort(hostport)
	if err != nil {
		host, port = strings.TrimSuffix(strings.TrimPrefix(hostport, "["), "]"), ""
	}
	if port == "" {
		port = "80"
	}
	return host, port
}
