package proxy

import (
	"net/http"
	"regexp"
	"strconv"
	"strings"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/regmirror/regmirror/cache"
)

// routeKind is what a /v2/ request asks for.
type routeKind int

const (
	routeBase routeKind = iota
	routeManifest
	routeBlob
	routeTags
	routeReferrers
	routeCatalog
)

func (k routeKind) String() string {
	return [...]string{"base", "manifest", "blob", "tags", "referrers", "catalog"}[k]
}

// route is a /v2/ request parsed once at the edge: every field is validated,
// so nothing downstream handles raw path text.
type route struct {
	kind     routeKind
	registry string  // the configured upstream that owns the repository
	via      via     // how the request named the registry
	repo     string  // repository within that registry, Docker Hub's library/ added
	tag      string  // set for a manifest by tag
	digest   v1.Hash // set for a manifest by digest, a blob, and the subject of referrers
}

// via is how a request chose its registry.
type via int

const (
	viaDefault via = iota // a plain path: the default upstream
	viaNS                 // containerd's ?ns=
	viaPrefix             // a first path component naming the registry
)

// byDigest reports whether the route names content by its digest.
func (r route) byDigest() bool { return r.digest.Hex != "" }

// ref is the tag, or the digest when the route names one.
func (r route) ref() string {
	if r.byDigest() {
		return r.digest.String()
	}
	return r.tag
}

const (
	// maxPath bounds the whole request path: a 255-character name plus the
	// longest suffix fits with room to spare.
	maxPath = 512
	// maxName is distribution's limit on a repository name.
	maxName = 255
)

// The grammar of names and tags is checked by hand on every
// request (a regexp match costs more than the rest of parsing); the fuzzers
// hold them to the spec's regular expressions.

// isComponent reports whether s is one path component of a repository name,
// per the distribution grammar: [a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*.
func isComponent(s string) bool {
	i := 0
	for {
		start := i
		for i < len(s) && (s[i] >= 'a' && s[i] <= 'z' || s[i] >= '0' && s[i] <= '9') {
			i++
		}
		if i == start {
			return false // empty, or a separator not between alphanumerics
		}
		if i == len(s) {
			return true
		}
		switch s[i] {
		case '.':
			i++
		case '_':
			i++
			if i < len(s) && s[i] == '_' {
				i++
			}
		case '-':
			for i < len(s) && s[i] == '-' {
				i++
			}
		default:
			return false
		}
	}
}

// isTag reports whether s is a valid tag: [A-Za-z0-9_][A-Za-z0-9_.-]{0,127}.
func isTag(s string) bool {
	if len(s) == 0 || len(s) > 128 || s[0] == '.' || s[0] == '-' {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '.' || c == '-') {
			return false
		}
	}
	return true
}

var (
	// A registry host as a path prefix: DNS labels and an optional port.
	hostRE = regexp.MustCompile(`^(?:[a-z0-9](?:[a-z0-9-]*[a-z0-9])?)(?:\.[a-z0-9](?:[a-z0-9-]*[a-z0-9])?)*(?::[0-9]{1,5})?$`)
)

// registries answers which upstream registries are configured.
type registries interface {
	has(name string) bool
	defaultName() string
}

// parseRoute turns a /v2/ request into a route. Errors are OCI errors ready
// for the client; nothing has touched a file or an upstream yet.
func parseRoute(r *http.Request, regs registries) (route, error) {
	if strings.Contains(r.URL.RawPath, "%") {
		// Encoded characters (%2F and friends) have no place in a registry path;
		// refusing them keeps one spelling per name. Other odd characters fail
		// the name grammar below.
		return route{}, errNameInvalid("encoded characters are not allowed in the path")
	}
	p := r.URL.Path
	if len(p) > maxPath {
		return route{}, errNameInvalid("path too long")
	}
	if p == "/v2" || p == "/v2/" {
		return route{kind: routeBase}, nil
	}
	if p == "/v2/_catalog" {
		return route{kind: routeCatalog}, nil
	}
	rest, ok := strings.CutPrefix(p, "/v2/")
	if !ok {
		return route{}, errNoSuchEndpoint()
	}
	n := 0
	for c := range strings.SplitSeq(rest, "/") {
		if c == "" || c == "." || c == ".." {
			return route{}, errNameInvalid("empty, . and .. path components are not allowed")
		}
		n++
	}
	if n < 3 {
		return route{}, errNoSuchEndpoint()
	}
	// The last two components say what is asked for; the name comes before
	// them. All three are slices of the path: nothing is copied.
	i := strings.LastIndexByte(rest, '/')
	j := strings.LastIndexByte(rest[:i], '/')
	name, word, last := rest[:j], rest[j+1:i], rest[i+1:]
	var rt route
	var ref string
	switch {
	case word == "tags" && last == "list":
		rt.kind = routeTags
	case word == "manifests":
		rt.kind, ref = routeManifest, last
	case word == "blobs":
		rt.kind, ref = routeBlob, last
	case word == "referrers":
		rt.kind, ref = routeReferrers, last
	default:
		return route{}, errNoSuchEndpoint()
	}

	var ns string
	if r.URL.RawQuery != "" { // Query allocates a map even for no query
		ns = r.URL.Query().Get("ns")
	}
	registry, how, name, err := pickRegistry(ns, name, regs)
	if err != nil {
		return route{}, err
	}
	rt.registry, rt.via = registry, how
	if rt.repo, err = repoName(registry, name); err != nil {
		return route{}, err
	}

	switch {
	case rt.kind == routeBlob || rt.kind == routeReferrers || (rt.kind == routeManifest && strings.Contains(ref, ":")):
		if rt.digest, err = parseDigest(ref); err != nil {
			return route{}, err
		}
	case rt.kind == routeManifest:
		if !isTag(ref) {
			return route{}, errTagInvalid(ref)
		}
		rt.tag = ref
	}
	return rt, nil
}

// pickRegistry decides which upstream a request is for, in this order:
// containerd's ?ns= parameter, a first path component naming a registry
// (podman's "mirror.lan:5000/ghcr.io" prefix), then the default upstream.
// Behind Docker Hub, any other first component that looks like a host is
// refused as an unknown registry; behind another default, it is the start of
// that registry's repository name.
// A registry that is not configured is refused: we are never an open proxy.
// It returns the name without the registry's prefix.
func pickRegistry(ns, name string, regs registries) (string, via, string, error) {
	if ns != "" {
		if !regs.has(ns) {
			return "", 0, "", errRegistryUnknown(ns)
		}
		return ns, viaNS, name, nil
	}
	if first, after, more := strings.Cut(name, "/"); more && looksLikeHost(first) {
		if regs.has(first) {
			return first, viaPrefix, after, nil
		}
		if def := regs.defaultName(); def != dockerHub && isComponent(first) {
			// A private registry's names may start with a dotted component
			// (my.org/app), which Docker Hub's never do: behind such a default,
			// a first component that is no configured registry is part of the name.
			return def, viaDefault, name, nil
		}
		if !hostRE.MatchString(first) {
			return "", 0, "", errNameInvalid("invalid registry host in the path")
		}
		return "", 0, "", errRegistryUnknown(first)
	}
	return regs.defaultName(), viaDefault, name, nil
}

// looksLikeHost applies Docker's rule for the first component of a reference:
// it is a registry host when it has a dot or a port, or is "localhost".
// Docker Hub namespaces never contain either.
func looksLikeHost(s string) bool {
	return strings.ContainsAny(s, ".:") || s == "localhost"
}

// repoName checks a repository name's components (name is as the path
// spells it, components joined by /) and adds Docker Hub's library/.
func repoName(registry, name string) (string, error) {
	for c := range strings.SplitSeq(name, "/") {
		if !isComponent(c) {
			return "", errNameInvalid("invalid repository name")
		}
	}
	repo := name
	if registry == dockerHub && !strings.Contains(name, "/") {
		// Docker Hub's official images live under library/: nginx is library/nginx.
		repo = "library/" + name
	}
	if len(repo) > maxName {
		return "", errNameInvalid("repository name longer than 255 characters")
	}
	return repo, nil
}

// dockerHub is the registry whose single-component names get library/.
const dockerHub = "docker.io"

// parseDigest accepts the digests the store keeps content by (sha256 and
// sha512, in lower-case hex) and refuses anything else as invalid.
func parseDigest(s string) (v1.Hash, error) {
	alg, hex, _ := strings.Cut(s, ":")
	h := v1.Hash{Algorithm: alg, Hex: hex}
	if cache.CheckDigest(h) != nil {
		return v1.Hash{}, errDigestInvalid(s)
	}
	return h, nil
}

// unsatisfiableRange is a first byte past the end of any content.
const unsatisfiableRange = "9223372036854775807-"

// fixZeroSuffixRange rewrites each zero-length suffix range ("bytes=-0")
// of a Range header into one that starts past the end. RFC 9110 says a
// suffix of zero bytes cannot be satisfied; http.ServeContent instead
// answers 206 with no bytes and a Content-Range whose last byte comes before
// its first. Rewritten, ServeContent skips it among other ranges and answers
// 416 when it was the only one. The spec is split as ServeContent splits it.
func fixZeroSuffixRange(h http.Header) {
	v := h.Get("Range")
	specs, ok := strings.CutPrefix(v, "bytes=")
	if !ok || !strings.Contains(specs, "-") {
		return
	}
	parts := strings.Split(specs, ",")
	changed := false
	for i, ra := range parts {
		start, end, ok := strings.Cut(strings.Trim(ra, " \t"), "-")
		if !ok || strings.Trim(start, " \t") != "" {
			continue
		}
		end = strings.Trim(end, " \t")
		if n, err := strconv.ParseInt(end, 10, 64); err == nil && n == 0 && end != "" && end[0] != '-' {
			parts[i], changed = unsatisfiableRange, true
		}
	}
	if changed {
		h.Set("Range", "bytes="+strings.Join(parts, ","))
	}
}
