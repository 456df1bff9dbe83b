package proxy_test

import (
	"slices"
	"strings"
	"testing"

	"github.com/regmirror/regmirror/proxy"
	"golang.org/x/crypto/bcrypt"
)

// FuzzParseHtpasswd: any file either loads as users with bcrypt hashes of a
// bounded cost, or is refused with an error that does not repeat a hash.
func FuzzParseHtpasswd(f *testing.F) {
	good := htpasswdLine(f, "alice", "pw", "$2y$")
	hash := strings.TrimPrefix(good, "alice:")
	for _, s := range []string{
		good, "# comment\n\n" + good + "\n", good + "\n" + good, "alice:{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=",
		"alice:$apr1$r31.....$HqJZimcKQFAMYayBlzkrA/", "alice:rl0uTa9tgzlnA", "alice", ":" + hash, "al ice:" + hash,
		"alice:$2y$31$" + hash[7:], "alice:$2y$04$", "alice:$2x$04$" + hash[7:], "a:b:c", "\x00:" + hash, strings.Repeat("a", 70000),
		"bob:" + hash + "\r\n" + good, "alice:" + hash + " trailing",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, file string) {
		users, err := proxy.ParseHtpasswd(strings.NewReader(file))
		if err != nil {
			msg := err.Error()
			var users, hashes []string
			for _, line := range strings.Split(file, "\n") {
				if u, h, ok := strings.Cut(strings.TrimSpace(line), ":"); ok {
					users, hashes = append(users, u), append(hashes, h)
				}
			}
			for _, h := range hashes {
				// A hash long enough to mean something, that is not also part
				// of a user name (which errors do name).
				if len(h) >= 16 && strings.Contains(msg, h) && !slices.ContainsFunc(users, func(u string) bool { return strings.Contains(u, h) }) {
					t.Fatalf("error repeats a hash: %v", err)
				}
			}
			return
		}
		for u, h := range users {
			if u == "" || strings.ContainsAny(u, ": \t\n") {
				t.Fatalf("accepted user %q", u)
			}
			s := string(h)
			if !strings.HasPrefix(s, "$2y$") && !strings.HasPrefix(s, "$2a$") && !strings.HasPrefix(s, "$2b$") {
				t.Fatalf("user %q: accepted hash %q", u, s)
			}
			if cost, err := bcrypt.Cost(h); err != nil || cost > 17 {
				t.Fatalf("user %q: accepted hash of cost %d (%v)", u, cost, err)
			}
		}
	})
}
