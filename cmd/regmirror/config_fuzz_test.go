package main

import (
	"net/url"
	"slices"
	"strings"
	"testing"

	"github.com/regmirror/regmirror/upstream"
)

// FuzzUpstreamsConfig feeds arbitrary REGMIRROR_UPSTREAMS, REGMIRROR_UPSTREAM,
// REGMIRROR_INSECURE_REGISTRIES and REGMIRROR_TAG_TTL values through
// loadConfig. It never panics; every line of an error names a setting and
// repeats no password put in a URL; an accepted configuration has the
// default first, unique valid names and valid URLs.
func FuzzUpstreamsConfig(f *testing.F) {
	f.Add("", "https://registry-1.docker.io", "", "5m")
	f.Add("ghcr.io=https://ghcr.io, quay.io=https://quay.io", "https://registry-1.docker.io", "", "1h")
	f.Add("docker.io=http://127.0.0.1:5001,ghcr.io=http://127.0.0.1:5002", "docker.io", "ghcr.io", "0")
	f.Add("build.lan:5000=https://10.0.0.5:5000,tls.lan=https://tls.lan", "https://registry-1.docker.io", "build.lan:5000, tls.lan", "5m")
	f.Add("docker.io=http://a", "http://b", "", "5m")
	f.Add("ghcr.io", "ghcr.io", "", "-1s")
	f.Add("GHCR.io=https://ghcr.io", "", "", "soon")
	f.Add("ghcr.io=https://user:hunter2secret@ghcr.io", "https://me:topsecretpw@registry.example", "", "5m")
	f.Add("ghcr.io=https://a,ghcr.io=https://b", "ghcr.io", "elsewhere:5000", "5m")
	f.Add("=,=,", "::", ",,,", "\n")
	f.Add("a.b=https://a.b/path?q=1#f", "a.b", "a.b", "1ns")
	f.Add("x=ftp://x", "%zz", "", "5m")
	f.Fuzz(func(t *testing.T, upstreams, def, insecure, ttl string) {
		environ := map[string]string{
			"REGMIRROR_DATA_DIR":            "/data",
			"REGMIRROR_UPSTREAMS":           upstreams,
			"REGMIRROR_UPSTREAM":            def,
			"REGMIRROR_INSECURE_REGISTRIES": insecure,
			"REGMIRROR_TAG_TTL":             ttl,
		}
		cfg, err := loadConfig(nil, environ)
		if err != nil {
			for _, line := range strings.Split(err.Error(), "\n") {
				if !strings.HasPrefix(line, envPrefix) {
					t.Fatalf("error line does not name a setting: %q (in %v)", line, err)
				}
			}
			for _, pw := range passwords(upstreams, def) {
				if strings.Contains(err.Error(), pw) && !strings.Contains(names(upstreams)+insecure+ttl, pw) {
					t.Fatalf("error repeats the password %q: %v", pw, err)
				}
			}
			return
		}
		specs, name, err := cfg.resolveUpstreams()
		if err != nil {
			t.Fatalf("loadConfig accepted what resolveUpstreams refuses: %v", err)
		}
		if len(specs) == 0 || specs[0].Name != name {
			t.Fatalf("default %q is not first: %+v", name, specs)
		}
		seen := map[string]bool{}
		for _, sp := range specs {
			if seen[sp.Name] || !registryNameRE.MatchString(sp.Name) {
				t.Fatalf("upstream name %q duplicated or invalid: %+v", sp.Name, specs)
			}
			seen[sp.Name] = true
			u, err := upstream.ParseURL(sp.URL)
			if err != nil || u.User != nil {
				t.Fatalf("upstream %s: URL %q accepted: %v", sp.Name, sp.URL, err)
			}
		}
		for _, h := range strings.Split(insecure, ",") {
			if h = strings.TrimSpace(h); h != "" && !slices.ContainsFunc(specs, func(sp upstreamSpec) bool {
				u, _ := upstream.ParseURL(sp.URL)
				return sp.Insecure && (sp.Name == h || u.Host == h)
			}) {
				t.Fatalf("insecure registry %q matches no upstream: %+v", h, specs)
			}
		}
	})
}

// passwords are the passwords (of six bytes or more) in the URLs of the
// settings, as url.Parse reads them.
func passwords(upstreams, def string) []string {
	var out []string
	raws := []string{def}
	for _, e := range strings.Split(upstreams, ",") {
		if _, raw, ok := strings.Cut(e, "="); ok {
			raws = append(raws, raw)
		}
	}
	for _, raw := range raws {
		u, err := url.Parse(strings.TrimSpace(raw))
		if err != nil || u.User == nil {
			continue
		}
		if pw, ok := u.User.Password(); ok && len(pw) >= 6 {
			out = append(out, pw)
		}
	}
	return out
}

// names are the registry names of REGMIRROR_UPSTREAMS, which errors may quote.
func names(upstreams string) string {
	var b strings.Builder
	for _, e := range strings.Split(upstreams, ",") {
		n, _, _ := strings.Cut(e, "=")
		b.WriteString(n + " ")
	}
	return b.String()
}
