package proxy

import (
	"bufio"
	"net/http"
	"regexp"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
)

// The grammar of the OCI distribution spec, written out again here rather
// than taken from routes.go, so that the fuzzers check the parser against
// the spec and not against itself.
var (
	ociRepoRE   = regexp.MustCompile(`^[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*(/[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*)*$`)
	ociTagRE    = regexp.MustCompile(`^[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}$`)
	ociDigestRE = regexp.MustCompile(`^(?:sha256:[a-f0-9]{64}|sha512:[a-f0-9]{128})$`) // the digests a registry must know
	// One component of a repository name: ociRepoRE without its slashes.
	ociComponentRE = regexp.MustCompile(`^[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*$`)
)

// FuzzNameGrammar holds the hand-written checks of a name's component and a
// tag to the spec's regular expressions, on any input.
func FuzzNameGrammar(f *testing.F) {
	for _, s := range []string{
		"", "a", "nginx", "a.b", "a..b", "a_b", "a__b", "a___b", "a-b", "a---b", "-a", "a-", "_a", "a_", ".a", "a.",
		"a._b", "a-_b", "A", "aB", "a/b", "a b", "1.27-alpine", "latest", "-latest", ".tag", "_tag", "v1.0_rc-2",
		strings.Repeat("t", 128), strings.Repeat("t", 129), strings.Repeat("a", 64), strings.Repeat("A", 64),
		"0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef", "é", "a\n", "a\x00",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if got, want := isComponent(s), ociComponentRE.MatchString(s); got != want {
			t.Errorf("isComponent(%q) = %v, the grammar says %v", s, got, want)
		}
		if got, want := isTag(s), ociTagRE.MatchString(s); got != want {
			t.Errorf("isTag(%q) = %v, the grammar says %v", s, got, want)
		}
	})
}

// fuzzRegs is a mirror configured for docker.io (the default), ghcr.io and
// build.lan:5000.
type fuzzRegs struct{}

func (fuzzRegs) has(n string) bool {
	return n == "docker.io" || n == "ghcr.io" || n == "build.lan:5000"
}
func (fuzzRegs) defaultName() string { return "docker.io" }

const fuzzDigest = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"

// readRequest parses target as net/http's server would parse the request
// line; ok is false when the server would refuse it before any handler.
func readRequest(method, target string) (*http.Request, bool) {
	r, err := http.ReadRequest(bufio.NewReader(strings.NewReader(method + " " + target + " HTTP/1.1\r\nHost: mirror\r\n\r\n")))
	if err != nil {
		return nil, false
	}
	return r, true
}

// FuzzParseRoute drives parseRoute with arbitrary request targets, parsed by
// net/http as the server parses them. Whatever it accepts names a
// configured registry, a repository valid by the OCI grammar, a valid tag or
// sha256 digest, and came from a path without empty, . or .. components.
func FuzzParseRoute(f *testing.F) {
	for _, s := range []string{
		"/v2/", "/v2", "/v2/_catalog", "/v2/_catalog?n=10&last=a",
		"/v2/nginx/manifests/latest", "/v2/library/nginx/manifests/1.27-alpine",
		"/v2/nginx/manifests/" + fuzzDigest, "/v2/nginx/blobs/" + fuzzDigest,
		"/v2/owner/app/tags/list?n=10&last=v1", "/v2/ghcr.io/owner/app/manifests/1.0",
		"/v2/build.lan:5000/team/app/blobs/" + fuzzDigest, "/v2/app/manifests/latest?ns=ghcr.io",
		"/v2/app/manifests/latest?ns=evil.example", "/v2/evil.example/app/manifests/latest",
		"/v2/../../etc/passwd/manifests/latest", "/v2/a/./b/manifests/x", "/v2/a//b/manifests/x",
		"/v2/a%2Fb/manifests/latest", "/v2/app/blobs/sha256:..%2F..%2Fx", "/v2/a%00b/manifests/x",
		"/v2/app/manifests/sha256:../../x", "/v2/Library/App/manifests/latest", "/v2/app/blobs/latest",
		"/v2/app/manifests/-tag", "/v2/" + strings.Repeat("a/", 300) + "manifests/x",
		"/v2/app/manifests/a?ns=", "/v2/app/manifests/a?ns=ghcr.io&ns=docker.io", "/v2/app/manifests/a?ns=%00",
		"/v2/app/manifests/a?;ns=ghcr.io", "/v2/a__b/c-d/e.f/manifests/t", "/v2/a---b/manifests/t",
		"/v2/localhost/app/manifests/t", "/v2/tags/list", "/v2/manifests/manifests/manifests",
		"http://mirror/v2/app/manifests/t", "*", "/v2/app/manifests/t#frag",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, target string) {
		r, ok := readRequest(http.MethodGet, target)
		if !ok {
			return // net/http answers 400 itself
		}
		rt, err := parseRoute(r, fuzzRegs{})
		if err != nil {
			if _, ok := err.(*ociError); !ok {
				t.Fatalf("%q: error %T is not an OCI error: %v", target, err, err)
			}
			return
		}
		switch rt.kind {
		case routeBase, routeCatalog:
			if rt.repo != "" || rt.registry != "" || rt.tag != "" || rt.byDigest() {
				t.Fatalf("%q: %s route with fields: %+v", target, rt.kind, rt)
			}
			return
		case routeManifest, routeBlob, routeTags:
		default:
			t.Fatalf("%q: unknown route kind %d", target, rt.kind)
		}
		for _, c := range strings.Split(strings.TrimPrefix(r.URL.Path, "/v2/"), "/") {
			if c == "" || c == "." || c == ".." {
				t.Fatalf("%q: accepted with path component %q", target, c)
			}
		}
		if !(fuzzRegs{}).has(rt.registry) {
			t.Fatalf("%q: registry %q is not configured", target, rt.registry)
		}
		if !ociRepoRE.MatchString(rt.repo) || len(rt.repo) > 255 {
			t.Fatalf("%q: repository %q is not a valid OCI name", target, rt.repo)
		}
		if _, err := name.NewRepository(rt.registry+"/"+rt.repo, name.StrictValidation); err != nil {
			t.Fatalf("%q: go-containerregistry refuses %s/%s: %v", target, rt.registry, rt.repo, err)
		}
		if ns := r.URL.Query().Get("ns"); ns != "" && rt.registry != ns {
			t.Fatalf("%q: ns=%s but registry %s", target, ns, rt.registry)
		}
		switch {
		case rt.kind == routeBlob && (!rt.byDigest() || rt.tag != ""):
			t.Fatalf("%q: blob route without a digest alone: %+v", target, rt)
		case rt.kind == routeManifest && rt.byDigest() == (rt.tag != ""):
			t.Fatalf("%q: manifest route wants a tag or a digest: %+v", target, rt)
		case rt.kind == routeTags && (rt.byDigest() || rt.tag != ""):
			t.Fatalf("%q: tags route with a reference: %+v", target, rt)
		}
		if rt.byDigest() && !ociDigestRE.MatchString(rt.digest.String()) {
			t.Fatalf("%q: digest %q is not a sha256 or sha512 digest", target, rt.digest)
		}
		if rt.tag != "" && !ociTagRE.MatchString(rt.tag) {
			t.Fatalf("%q: tag %q is not a valid tag", target, rt.tag)
		}
	})
}

// FuzzNameAndDigest checks the name, tag and digest parsers on their own,
// against the OCI grammar and go-containerregistry's parser (which the
// upstream client is given these values in).
func FuzzNameAndDigest(f *testing.F) {
	for _, s := range []string{
		"nginx", "library/nginx", "a/b/c", "a__b", "a-b", "a---b", "a.b", "a..b", "a_b_", "_a", "A", "a/",
		"/a", "a//b", "..", "a/../b", strings.Repeat("a", 256), strings.Repeat("ab/", 90) + "c",
		fuzzDigest, "sha256:" + strings.Repeat("A", 64), "sha256:abc", "sha512:" + strings.Repeat("a", 128),
		"md5:d41d8cd98f00b204e9800998ecf8427e", "sha256:", ":", "latest", "-latest", "v1.0_rc-2", strings.Repeat("t", 129),
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if h, err := parseDigest(s); err == nil {
			if h.String() != s || !ociDigestRE.MatchString(s) {
				t.Fatalf("parseDigest(%q) = %+v", s, h)
			}
			if _, err := name.NewDigest("ghcr.io/a@"+s, name.StrictValidation); err != nil {
				t.Fatalf("parseDigest accepted %q, go-containerregistry does not: %v", s, err)
			}
		} else if _, ok := err.(*ociError); !ok {
			t.Fatalf("parseDigest(%q): error %T is not an OCI error", s, err)
		}
		for _, reg := range []string{"docker.io", "ghcr.io"} {
			repo, err := repoName(reg, s)
			if err != nil {
				continue
			}
			if !ociRepoRE.MatchString(repo) || len(repo) > 255 {
				t.Fatalf("repoName(%s, %q) = %q: not a valid OCI name", reg, s, repo)
			}
			if want := s; reg == "ghcr.io" && repo != want {
				t.Fatalf("repoName(ghcr.io, %q) = %q, want it unchanged", s, repo)
			}
			if reg == "docker.io" && repo != s && repo != "library/"+s {
				t.Fatalf("repoName(docker.io, %q) = %q", s, repo)
			}
			if _, err := name.NewRepository(reg+"/"+repo, name.StrictValidation); err != nil {
				t.Fatalf("repoName accepted %q, go-containerregistry does not: %v", repo, err)
			}
		}
		if isTag(s) {
			if !ociTagRE.MatchString(s) {
				t.Fatalf("tag %q accepted against the OCI grammar", s)
			}
			if _, err := name.NewTag("ghcr.io/a:"+s, name.StrictValidation); err != nil {
				t.Fatalf("tag %q accepted, go-containerregistry does not: %v", s, err)
			}
		}
	})
}
