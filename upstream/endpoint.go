package upstream

import (
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"regexp"
	"strings"
)

// Endpoint is where one registry is reached: a base URL and, when that URL is
// a mirror serving several registries, how to name the registry there. A
// mirror is addressed in one of two ways: containerd's ?ns=NAME on every
// request (regmirror's own routing, zot, spegel), or a repository prefix
// (Harbor proxy-cache projects, Artifactory and Nexus remotes, regmirror's
// path-prefix routing).
type Endpoint struct {
	Base   *url.URL // scheme://host[:port], nothing more
	NS     string   // sent as ?ns= with every request; empty: none
	Prefix string   // put in front of every repository name; empty: none
}

var (
	// A registry as a reference names it: DNS labels and an optional port.
	registryRE = regexp.MustCompile(`^[a-z0-9](?:[a-z0-9-]*[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]*[a-z0-9])?)*(?::[0-9]{1,5})?$`)
	// One path component of a repository name, per the distribution grammar.
	componentRE = regexp.MustCompile(`^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$`)
)

// ParseEndpoint reads an upstream URL: http or https, a host, and optionally
// either ?ns=NAME or a repository prefix as its path. Anything else (user
// info, fragments, other query keys, encoded characters) is refused. Errors
// never repeat a password put in the URL.
func ParseEndpoint(raw string) (Endpoint, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return Endpoint{}, errors.New("upstream URL is not a valid URL")
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return Endpoint{}, fmt.Errorf("upstream URL %q: scheme must be http or https", redacted(u))
	}
	if u.User != nil {
		return Endpoint{}, fmt.Errorf("upstream URL %q: credentials do not belong in the URL", redacted(u))
	}
	want := func(what string) error {
		return fmt.Errorf("upstream URL %q: %s; want scheme://host[:port], optionally with ?ns=NAME or a /repository/prefix", redacted(u), what)
	}
	switch {
	case u.Host == "" || u.Opaque != "":
		return Endpoint{}, want("no host")
	case u.Fragment != "" || strings.Contains(raw, "#"):
		return Endpoint{}, want("a fragment")
	case u.RawPath != "" || strings.Contains(u.Path, "%"):
		return Endpoint{}, want("encoded characters in the path")
	}
	ep := Endpoint{Base: &url.URL{Scheme: u.Scheme, Host: u.Host}}
	if u.RawQuery != "" || u.ForceQuery {
		q, err := url.ParseQuery(u.RawQuery)
		if err != nil || len(q) != 1 || len(q["ns"]) != 1 {
			return Endpoint{}, want("a query other than one ns=NAME")
		}
		if ep.NS = q.Get("ns"); !registryRE.MatchString(ep.NS) {
			return Endpoint{}, want("ns is not a registry name (host or host:port)")
		}
	}
	if p := strings.Trim(u.Path, "/"); p != "" {
		for i, c := range strings.Split(p, "/") {
			// The first component may name a registry, as regmirror's
			// path-prefix routing does: ghcr.io, build.lan:5000.
			if !componentRE.MatchString(c) && (i > 0 || !registryRE.MatchString(c)) {
				return Endpoint{}, want("a path that is not a repository prefix")
			}
		}
		if strings.HasPrefix(p, "v2") && (len(p) == 2 || p[2] == '/') {
			return Endpoint{}, want("a path starting with /v2 (the API path is added by the mirror)")
		}
		ep.Prefix = p
	}
	if ep.NS != "" && ep.Prefix != "" {
		return Endpoint{}, want("both ?ns= and a path prefix")
	}
	return ep, nil
}

// ParseURL checks an upstream URL as ParseEndpoint does and returns its
// base, scheme://host[:port].
func ParseURL(raw string) (*url.URL, error) {
	ep, err := ParseEndpoint(raw)
	if err != nil {
		return nil, err
	}
	return ep.Base, nil
}

// Repo is repo as the endpoint names it: with the prefix in front.
func (e Endpoint) Repo(repo string) string {
	if e.Prefix == "" {
		return repo
	}
	return e.Prefix + "/" + repo
}

// String is the endpoint as written: base, prefix, ?ns=.
func (e Endpoint) String() string {
	s := e.Base.String()
	if e.Prefix != "" {
		s += "/" + e.Prefix
	}
	if e.NS != "" {
		s += "?ns=" + e.NS
	}
	return s
}

// answersFor is the registry an answer from this endpoint must be about when
// it names one (regmirror says so in Oci-Namespace): the ?ns= asked for, a
// registry named by the prefix, or, with neither, the registry itself. ""
// when the endpoint's prefix is not a registry name (Harbor's project).
func (e Endpoint) answersFor(registry string) string {
	switch {
	case e.NS != "":
		return e.NS
	case e.Prefix == "":
		return registry
	case !strings.Contains(e.Prefix, "/") && strings.ContainsAny(e.Prefix, ".:"):
		return e.Prefix
	}
	return ""
}

// dockerHubHosts are the names Docker Hub's registry goes by: credentials for
// any of them are Docker Hub's.
var dockerHubHosts = map[string]bool{"docker.io": true, "index.docker.io": true, "registry-1.docker.io": true}

// credentialKey is what credentials for the endpoint are looked up by: the
// host they are sent to, never the registry's name, so that Docker Hub's
// password does not go to a mirror that serves docker.io. Docker Hub's hosts
// are all "docker.io", its key in the credentials file.
func (e Endpoint) credentialKey() string {
	if dockerHubHosts[e.Base.Host] {
		return "docker.io"
	}
	return e.Base.Host
}

// ErrWrongRegistry means an upstream answered about another registry than the
// one asked for: a mirror of several registries addressed without ?ns= or a
// prefix, which would serve another registry's image under this name.
var ErrWrongRegistry = errors.New("upstream answered for another registry")

// checkRegistry refuses an answer that says it is about another registry
// than the one asked for (Oci-Namespace, as regmirror sends it): without it,
// a mirror asked for plain /v2/owner/app would answer with its default
// registry's owner/app, and we would serve that image under our name.
func (c *Client) checkRegistry(resp *http.Response) error {
	got, want := resp.Header.Get("Oci-Namespace"), c.ep.answersFor(c.serves)
	if got == "" || want == "" || got == want {
		return nil
	}
	return &Error{Registry: c.name, Err: fmt.Errorf("%w: %s answered for %s where %s was asked for: name the registry in the upstream URL, e.g. %s?ns=%s",
		ErrWrongRegistry, c.base.Host, got, want, c.base, c.serves)}
}

// nsTransport puts the endpoint's ?ns= on every request to its host: ours,
// go-containerregistry's ping of /v2/ and the probe's. Token servers and
// blob storage are other hosts and get none.
type nsTransport struct {
	host, ns string
	next     http.RoundTripper
}

func (t nsTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	if r.URL.Host != t.host || r.URL.Query().Get("ns") == t.ns {
		return t.next.RoundTrip(r)
	}
	r = r.Clone(r.Context())
	q := r.URL.Query()
	q.Set("ns", t.ns)
	r.URL.RawQuery = q.Encode()
	return t.next.RoundTrip(r)
}
