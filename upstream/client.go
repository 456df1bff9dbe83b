// Package upstream talks to one upstream registry through go-containerregistry's
// transport: the ping, the bearer-token dance, retries and plain-HTTP registries.
package upstream

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
	lru "github.com/hashicorp/golang-lru/v2"
	"go.uber.org/zap"
	"golang.org/x/sync/singleflight"
)

// ManifestTypes is what we accept from upstream for a manifest: every manifest
// and index type a client of ours may ask for. We always ask for all of them,
// so one cached answer serves every client; the proxy negotiates per client.
var ManifestTypes = []string{
	"application/vnd.oci.image.index.v1+json",
	"application/vnd.docker.distribution.manifest.list.v2+json",
	"application/vnd.oci.image.manifest.v1+json",
	"application/vnd.docker.distribution.manifest.v2+json",
}

// Options configure a Client.
type Options struct {
	// Name is the registry's name as clients know it, e.g. "docker.io"; for
	// a fallback source, the source's own name (its host), used in logs,
	// errors and metrics.
	Name string
	// Serves is the registry whose content the client fetches, when Name is
	// a fallback's own; empty means Name.
	Serves string
	// URL is where the registry is reached; "http://" means plain HTTP. At
	// a mirror of several registries it says how to name this one there:
	// ?ns=NAME, or a repository prefix (see ParseEndpoint).
	URL string
	// Timeout bounds connecting and waiting for response headers. It does
	// not bound a body: long blob downloads are the caller's to watch.
	Timeout time.Duration
	// Keychain finds our credentials at each token handshake, by the host
	// of URL they are sent to (never by Name); nil means anonymous.
	Keychain authn.Keychain
	// Insecure skips TLS certificate verification (self-signed registries).
	Insecure bool
	// RootCAs, if set, is the CA pool that verifies the registry's certificate.
	RootCAs *x509.CertPool
	// UserAgent is sent with every request.
	UserAgent string
	// Transport, if set, replaces the base HTTP transport (tests use it to
	// count connections); retries and auth are still added on top.
	Transport http.RoundTripper
	// Observer, if set, hears of every request and every body byte, for metrics.
	Observer Observer
	// ProbeMin and ProbeMax bound the back-off of the probe that watches a
	// down upstream (defaults 1s and 30s).
	ProbeMin, ProbeMax time.Duration
}

// Client is a pull-only client for one upstream registry. It is safe for concurrent use.
type Client struct {
	name     string
	serves   string // the registry asked for at the endpoint
	base     *url.URL
	ep       Endpoint
	timeout  time.Duration
	reg      name.Registry
	keychain authn.Keychain
	rt       http.RoundTripper
	limits   rateLimits
	obs      Observer // nil: nobody listens

	withCredentials bool // the keychain had credentials for us at start

	health             health
	probeMin, probeMax time.Duration
	probes             sync.WaitGroup
	// life ends when the client is closed; only the probe uses it.
	life context.Context
	stop context.CancelFunc

	// One authenticated transport per repository: its bearer token carries
	// that repository's pull scope and is refreshed by ggcr on a 401.
	transports *lru.Cache[string, http.RoundTripper]
	handshakes singleflight.Group
	log        *zap.Logger
}

// New returns a client for the registry at opt.URL.
func New(opt Options, log *zap.Logger) (*Client, error) {
	ep, err := ParseEndpoint(opt.URL)
	if err != nil {
		return nil, err
	}
	base := ep.Base
	var regOpts []name.Option
	if base.Scheme == "http" {
		regOpts = append(regOpts, name.Insecure)
	}
	reg, err := name.NewRegistry(base.Host, regOpts...)
	if err != nil {
		return nil, fmt.Errorf("upstream %s: %w", opt.URL, err)
	}
	if opt.Timeout <= 0 {
		opt.Timeout = 30 * time.Second
	}
	if opt.Keychain == nil {
		opt.Keychain = anonymous{}
	}
	if opt.Name == "" {
		opt.Name = base.Host
	}
	if opt.Serves == "" {
		opt.Serves = opt.Name
	}
	rt := opt.Transport
	if rt == nil {
		rt = baseTransport(opt.Timeout, opt.Insecure, opt.RootCAs)
	}
	// ggcr tries https and http on loopback and private addresses; we speak
	// only the scheme the operator wrote, so https is never downgraded.
	rt = schemeGuard{host: base.Host, scheme: base.Scheme, next: rt}
	if ep.NS != "" {
		rt = nsTransport{host: base.Host, ns: ep.NS, next: rt}
	}
	// Retry what a second try may fix (a reset connection, a 502/503/504)
	// briefly, but never a timeout: an upstream that hangs is marked down
	// rather than waited on three times.
	rt = transport.NewRetry(rt,
		transport.WithRetryStatusCodes(http.StatusBadGateway, http.StatusServiceUnavailable, http.StatusGatewayTimeout),
		transport.WithRetryPredicate(func(err error) bool {
			if ne, ok := errors.AsType[net.Error](err); ok && ne.Timeout() {
				return false
			}
			t, ok := errors.AsType[interface {
				error
				Temporary() bool
			}](err)
			return ok && t.Temporary() && !errors.Is(err, context.DeadlineExceeded)
		}),
		transport.WithRetryBackoff(transport.Backoff{Duration: 100 * time.Millisecond, Factor: 2, Steps: 2}))
	if opt.UserAgent != "" {
		rt = transport.NewUserAgent(rt, opt.UserAgent)
	}
	cache, _ := lru.New[string, http.RoundTripper](1024)
	if opt.ProbeMin <= 0 {
		opt.ProbeMin = time.Second
	}
	if opt.ProbeMax < opt.ProbeMin {
		opt.ProbeMax = max(30*time.Second, opt.ProbeMin)
	}
	auth, err := opt.Keychain.Resolve(registryName(ep.credentialKey()))
	life, stop := context.WithCancel(context.Background())
	return &Client{name: opt.Name, serves: opt.Serves, base: base, ep: ep, timeout: opt.Timeout, reg: reg, keychain: opt.Keychain, rt: rt, transports: cache, log: log, obs: opt.Observer,
		probeMin: opt.ProbeMin, probeMax: opt.ProbeMax, life: life, stop: stop,
		withCredentials: err == nil && auth != authn.Anonymous}, nil
}

// redacted is u with all of its user info as ***: url.URL.Redacted hides
// only a password, and a user name alone can be a token.
func redacted(u *url.URL) string {
	if u.User == nil {
		return u.String()
	}
	c := *u
	c.User = nil
	return strings.Replace(c.String(), "://", "://***@", 1)
}

func baseTransport(timeout time.Duration, insecure bool, roots *x509.CertPool) *http.Transport {
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.TLSClientConfig = &tls.Config{MinVersion: tls.VersionTLS12, InsecureSkipVerify: insecure, RootCAs: roots}
	t.DialContext = (&net.Dialer{Timeout: timeout, KeepAlive: 30 * time.Second}).DialContext
	t.TLSHandshakeTimeout = timeout
	t.ResponseHeaderTimeout = timeout
	t.MaxIdleConnsPerHost = 32
	// Blobs are already compressed; asking for gzip only costs CPU and hides Content-Length.
	t.DisableCompression = true
	return t
}

// HasCredentials reports whether the keychain had credentials for this
// registry when the client was made (for start-up logs).
func (c *Client) HasCredentials() bool { return c.withCredentials }

// Name is the registry's name as clients know it.
func (c *Client) Name() string { return c.name }

// Endpoint is where the client finds its registry.
func (c *Client) Endpoint() Endpoint { return c.ep }

// Manifest asks for repo's manifest by tag or digest (GET or HEAD), accepting
// every manifest type. A non-200 answer is returned as *transport.Error.
func (c *Client) Manifest(ctx context.Context, method, repo, ref string) (*http.Response, error) {
	h := http.Header{"Accept": {strings.Join(ManifestTypes, ", ")}}
	return c.do(ctx, method, repo, h, "manifests", ref)
}

// Blob asks for a blob (GET or HEAD). Redirects to blob storage are followed;
// the registry's token is not sent to the other host.
func (c *Client) Blob(ctx context.Context, method, repo string, h v1.Hash) (*http.Response, error) {
	return c.do(ctx, method, repo, nil, "blobs", h.String())
}

// BlobFrom GETs a blob from offset on, to resume a broken download. The
// answer is 206 with the rest, or 200 with the whole blob from a registry
// that ignores Range.
// size is the blob's length, or -1: with it the range is closed
// (bytes=a-b), which every registry takes; some refuse the open form.
// A download in progress uses its resumes whatever the health mark says for
// new requests: BlobFrom asks even while the upstream is marked down.
func (c *Client) BlobFrom(ctx context.Context, repo string, h v1.Hash, offset, size int64) (*http.Response, error) {
	rng := "bytes=" + strconv.FormatInt(offset, 10) + "-"
	if size > offset {
		rng += strconv.FormatInt(size-1, 10)
	}
	return c.ask(ctx, http.MethodGet, repo, http.Header{"Range": {rng}}, nil, "blobs", h.String())
}

// Tags asks for repo's tag list, passing n and last through.
func (c *Client) Tags(ctx context.Context, repo string, n, last string) (*http.Response, error) {
	q := url.Values{}
	if n != "" {
		q.Set("n", n)
	}
	if last != "" {
		q.Set("last", last)
	}
	return c.doQuery(ctx, http.MethodGet, repo, nil, q, "tags", "list")
}

func (c *Client) do(ctx context.Context, method, repo string, h http.Header, path ...string) (*http.Response, error) {
	return c.doQuery(ctx, method, repo, h, nil, path...)
}

func (c *Client) doQuery(ctx context.Context, method, repo string, h http.Header, q url.Values, path ...string) (*http.Response, error) {
	if c.isDown() {
		err := &Error{Registry: c.name, Failure: Failure{Kind: KindDown}, Err: ErrDown}
		c.observe(path[0], 0, err.Failure)
		return nil, err
	}
	return c.ask(ctx, method, repo, h, q, path...)
}

// ask sends a request, whatever the health mark says, noting its outcome.
func (c *Client) ask(ctx context.Context, method, repo string, h http.Header, q url.Values, path ...string) (*http.Response, error) {
	start := time.Now()
	resp, err := c.send(ctx, method, repo, h, q, path...)
	f := FailureOf(err)
	c.observe(path[0], time.Since(start), f)
	if err != nil {
		c.noteFailure(f)
		return nil, err
	}
	if c.obs != nil {
		resp.Body = &countingBody{ReadCloser: resp.Body, registry: c.name, obs: c.obs}
	}
	return resp, nil
}

// ops names the API endpoints for the Observer: "manifests" is "manifest".
var ops = map[string]string{"manifests": "manifest", "blobs": "blob", "tags": "tags", "referrers": "referrers"}

func (c *Client) observe(endpoint string, took time.Duration, f Failure) {
	if c.obs != nil {
		c.obs.Answered(c.name, ops[endpoint], took, f)
	}
}

func (c *Client) send(ctx context.Context, method, repo string, h http.Header, q url.Values, path ...string) (*http.Response, error) {
	rt, err := c.transport(ctx, repo)
	if err != nil {
		// Anything but an answer, an outage, a certificate or our caller leaving
		// is about the registry's token setup.
		if classify(err).Kind == KindOther {
			err = fmt.Errorf("%w: %v", ErrHandshake, err)
		}
		return nil, c.wrap(err)
	}
	u := c.base.JoinPath(append([]string{"v2", c.ep.Repo(repo)}, path...)...)
	u.RawQuery = q.Encode()
	req, err := http.NewRequestWithContext(ctx, method, u.String(), nil)
	if err != nil {
		return nil, c.wrap(err)
	}
	for k, v := range h {
		req.Header[k] = v
	}
	resp, err := (&http.Client{Transport: rt}).Do(req)
	if err != nil {
		return nil, c.wrap(err)
	}
	c.limits.observe(resp.Header, c.name, c.log)
	if err := c.checkRegistry(resp); err != nil {
		resp.Body.Close()
		return nil, err
	}
	if err := transport.CheckError(resp, http.StatusOK, http.StatusPartialContent); err != nil {
		f := Failure{Kind: KindStatus, Status: resp.StatusCode}
		if te, ok := errors.AsType[*transport.Error](err); ok && answeredUnavailable(resp, te) {
			f.Answered = true
		}
		return nil, &Error{Registry: c.name, Failure: f, Err: err,
			RetryAfter: resp.Header.Get("Retry-After"), WithCredentials: c.withCredentials}
	}
	return resp, nil
}

// transport returns the authenticated transport for repo, doing the ping and
// token handshake once per repository (and again only after a failure).
func (c *Client) transport(ctx context.Context, repo string) (http.RoundTripper, error) {
	if rt, ok := c.transports.Get(repo); ok {
		return rt, nil
	}
	ch := c.handshakes.DoChan(repo, func() (any, error) {
		// The handshake is shared, so it must not die with the first caller.
		hctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*c.timeout)
		defer cancel()
		// The scope is built from repo as the upstream names it: parsing it
		// as a reference would take a dotted first component for a registry.
		scope := "repository:" + c.ep.Repo(repo) + ":" + transport.PullScope
		auth, err := authn.Resolve(hctx, c.keychain, registryName(c.ep.credentialKey()))
		if err != nil {
			return nil, fmt.Errorf("credentials for %s: %w", c.ep.credentialKey(), err)
		}
		rt, err := transport.NewWithContext(hctx, c.reg, auth, c.rt, []string{scope})
		if err != nil {
			return nil, err
		}
		c.transports.Add(repo, rt)
		return rt, nil
	})
	select {
	case res := <-ch:
		if res.Err != nil {
			return nil, res.Err
		}
		return res.Val.(http.RoundTripper), nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// wrap makes err an *Error, classified: the one place a request's failure
// gets its Kind. A certificate that does not verify is marked
// ErrUntrustedCertificate, its details kept as text only.
func (c *Client) wrap(err error) error {
	if _, ok := errors.AsType[*Error](err); ok {
		return err
	}
	f := classify(err)
	if f.Kind == KindTLS && !errors.Is(err, ErrUntrustedCertificate) {
		err = fmt.Errorf("%w: %v", ErrUntrustedCertificate, err)
	}
	return &Error{Registry: c.name, Failure: f, Err: err, WithCredentials: c.withCredentials}
}

// schemeGuard refuses requests to the registry's own host in any scheme but
// the configured one. Token servers and blob storage are other hosts.
type schemeGuard struct {
	host, scheme string
	next         http.RoundTripper
}

func (g schemeGuard) RoundTrip(r *http.Request) (*http.Response, error) {
	if r.URL.Host == g.host && r.URL.Scheme != g.scheme {
		return nil, fmt.Errorf("not trying %s://%s: the upstream is configured as %s", r.URL.Scheme, g.host, g.scheme)
	}
	return g.next.RoundTrip(r)
}
