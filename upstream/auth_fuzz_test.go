package upstream_test

import (
	"slices"
	"strings"
	"testing"

	"github.com/regmirror/regmirror/upstream"
)

// FuzzParseCredentials: any credentials file either loads as registry,
// user and password without spaces, or is refused with an error that
// repeats no password.
func FuzzParseCredentials(f *testing.F) {
	for _, s := range []string{
		"", "# comment\n\nghcr.io me ghp_secrettoken\n", "docker.io user pass\nghcr.io u p\n",
		"ghcr.io user", "ghcr.io user pass extra", "ghcr.io a longpassword1\nghcr.io b longpassword2",
		"\tghcr.io\tuser\tpass\t", "ghcr.io user pass\r\n", strings.Repeat("x", 70000), "# only a comment",
		"build.lan:5000 user p@ss:word#1", "\x00 \x00 \x00",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, file string) {
		creds, err := upstream.ParseCredentials(strings.NewReader(file))
		if err != nil {
			// Registries and users may be named in errors, and the message's
			// own words ("want registry username password") are not a secret.
			public := []string{"want \"registry username password\""}
			for _, line := range strings.Split(file, "\n") {
				fs := strings.Fields(line)
				if len(fs) >= 3 {
					public = append(public, fs[0], fs[1])
				}
			}
			for _, line := range strings.Split(file, "\n") {
				fs := strings.Fields(line)
				if len(fs) < 3 || len(fs[2]) < 6 {
					continue
				}
				pw := fs[2]
				if strings.Contains(err.Error(), pw) && !slices.ContainsFunc(public, func(s string) bool { return strings.Contains(s, pw) }) {
					t.Fatalf("error repeats the password %q: %v", pw, err)
				}
			}
			return
		}
		for reg, c := range creds {
			for _, v := range []string{reg, c.Username, c.Password} {
				if v == "" || strings.ContainsAny(v, " \t\r\n") {
					t.Fatalf("accepted %q: registry %q user %q", v, reg, c.Username)
				}
			}
		}
	})
}
