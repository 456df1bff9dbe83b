package main

import (
	"fmt"
	"maps"
	"slices"
	"strings"
	"testing"
)

// TestPairLists pins what REGMIRROR_UPSTREAMS and REGMIRROR_FALLBACKS accept
// as lists, both from their pairList and through loadConfig, so that neither
// the shared parser nor a caller can change what a setting accepts unnoticed.
func TestPairLists(t *testing.T) {
	type want struct {
		err   string // in the error; "" means accepted
		pairs string // the entries read, as n:name=value
	}
	tests := []struct {
		name, list string
		upstreams  want
		fallbacks  want
	}{
		{name: "unset", list: "", upstreams: want{}, fallbacks: want{}},
		{name: "spaces only", list: "  ",
			upstreams: want{err: "REGMIRROR_UPSTREAMS: entry 1 is empty: want name=URL entries separated by commas"},
			fallbacks: want{}},
		{name: "one", list: "docker.io=https://m.lan",
			upstreams: want{pairs: "1:docker.io=https://m.lan"}, fallbacks: want{pairs: "1:docker.io=https://m.lan"}},
		{name: "spaces around entries", list: " docker.io=https://m.lan ,\tghcr.io=https://g.lan ",
			upstreams: want{pairs: "1:docker.io=https://m.lan 2:ghcr.io=https://g.lan"},
			fallbacks: want{pairs: "1:docker.io=https://m.lan 2:ghcr.io=https://g.lan"}},
		{name: "a value with '='", list: "docker.io=https://m.lan/?ns=docker.io",
			upstreams: want{pairs: "1:docker.io=https://m.lan/?ns=docker.io"}, fallbacks: want{pairs: "1:docker.io=https://m.lan/?ns=docker.io"}},
		{name: "trailing comma", list: "docker.io=https://m.lan,",
			upstreams: want{err: "REGMIRROR_UPSTREAMS: entry 2 is empty: want name=URL entries separated by commas"},
			fallbacks: want{err: "REGMIRROR_FALLBACKS: entry 2 is empty: want registry=URL entries separated by commas"}},
		{name: "empty entry between", list: "docker.io=https://m.lan, ,ghcr.io=https://g.lan",
			upstreams: want{err: "REGMIRROR_UPSTREAMS: entry 2 is empty"},
			fallbacks: want{err: "REGMIRROR_FALLBACKS: entry 2 is empty"}},
		{name: "no '='", list: "docker.io=https://m.lan,ghcr.io",
			upstreams: want{err: `REGMIRROR_UPSTREAMS: entry 2 "ghcr.io": want name=URL`},
			fallbacks: want{err: `REGMIRROR_FALLBACKS: entry 2 "ghcr.io": want registry=URL`}},
		{name: "no name", list: "=https://m.lan",
			upstreams: want{err: `REGMIRROR_UPSTREAMS: entry 1 "=https://m.lan": want name=URL`},
			fallbacks: want{err: `REGMIRROR_FALLBACKS: entry 1 "=https://m.lan": want registry=URL`}},
		{name: "credentials in a bad entry are not repeated", list: "https://u:hunter2pw@m.lan",
			upstreams: want{err: `REGMIRROR_UPSTREAMS: entry 1 "https://***@m.lan": want name=URL`},
			fallbacks: want{err: `REGMIRROR_FALLBACKS: entry 1 "https://***@m.lan": want registry=URL`}},
		{name: "a name twice", list: "docker.io=https://a.lan,ghcr.io=https://g.lan,docker.io=https://b.lan",
			upstreams: want{err: "REGMIRROR_UPSTREAMS: entry 3: docker.io listed twice (entries 1 and 3)"},
			fallbacks: want{pairs: "1:docker.io=https://a.lan 2:ghcr.io=https://g.lan 3:docker.io=https://b.lan"}},
	}
	lists := []struct {
		list   pairList
		want   func(int) want
		config func(string) map[string]string
	}{
		{upstreamsList, func(i int) want { return tests[i].upstreams },
			func(v string) map[string]string { return map[string]string{"REGMIRROR_UPSTREAMS": v} }},
		{fallbacksList, func(i int) want { return tests[i].fallbacks },
			func(v string) map[string]string {
				return map[string]string{"REGMIRROR_UPSTREAMS": "ghcr.io=https://ghcr.io", "REGMIRROR_FALLBACKS": v}
			}},
	}
	for _, l := range lists {
		for i, tt := range tests {
			w := l.want(i)
			t.Run(l.list.setting+"/"+tt.name, func(t *testing.T) {
				pairs, err := l.list.parse(tt.list)
				checkErr(t, "parse", err, w.err)
				if w.err == "" {
					var got []string
					for _, p := range pairs {
						got = append(got, fmt.Sprintf("%d:%s=%s", p.n, p.name, p.value))
					}
					if s := strings.Join(got, " "); s != w.pairs {
						t.Errorf("parse(%q) = %s, want %s", tt.list, s, w.pairs)
					}
				}
				environ := l.config(tt.list)
				environ["REGMIRROR_DATA_DIR"] = "/d"
				_, err = loadConfig(nil, environ)
				checkErr(t, "loadConfig", err, w.err)
			})
		}
	}
}

func checkErr(t *testing.T, what string, err error, want string) {
	t.Helper()
	switch {
	case want == "" && err != nil:
		t.Errorf("%s: %v, want it accepted", what, err)
	case want != "" && (err == nil || !strings.Contains(err.Error(), want)):
		t.Errorf("%s: err = %v, want one saying %q", what, err, want)
	case err != nil && strings.Contains(err.Error(), "hunter2pw"):
		t.Errorf("%s: err repeats a password: %v", what, err)
	}
}

// A malformed REGMIRROR_FALLBACKS is refused as such even when
// REGMIRROR_INSECURE_REGISTRIES names one of its hosts: fallbackHosts reads
// the entries it can, and resolveUpstreams accepts the insecure host.
func TestMalformedFallbacksAreNotInsecureRegistryErrors(t *testing.T) {
	for _, fallbacks := range []string{"docker.io,docker.io=http://m.lan:5000", "=http://m.lan:5000", "docker.io=http://m.lan:5000,"} {
		_, err := loadConfig(nil, map[string]string{"REGMIRROR_DATA_DIR": "/d", "REGMIRROR_FALLBACKS": fallbacks,
			"REGMIRROR_INSECURE_REGISTRIES": "m.lan:5000"})
		if err == nil || !strings.Contains(err.Error(), "REGMIRROR_FALLBACKS: entry") || strings.Contains(err.Error(), "INSECURE") {
			t.Errorf("FALLBACKS=%s: err = %v, want only the FALLBACKS entry refused", fallbacks, err)
		}
	}
	cfg := Config{Fallbacks: "docker.io,=http://a.lan:5000, docker.io=https://b.lan/p,x"}
	hosts := cfg.fallbackHosts()
	if got := slices.Sorted(maps.Keys(hosts)); !slices.Equal(got, []string{"a.lan:5000", "b.lan"}) {
		t.Errorf("fallbackHosts = %v, want a.lan:5000 and b.lan", got)
	}
}
