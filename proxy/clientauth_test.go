package proxy_test

import (
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/regmirror/regmirror/proxy"
	"github.com/regmirror/regmirror/test/regtest"
	"go.uber.org/zap"
	"golang.org/x/crypto/bcrypt"
)

// htpasswdLine is "user:hash" with the hash in the given bcrypt variant
// ($2y$ is what htpasswd -B writes; Go's bcrypt writes $2a$).
func htpasswdLine(t testing.TB, user, password, variant string) string {
	t.Helper()
	h, err := bcrypt.GenerateFromPassword([]byte(password), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	return user + ":" + variant + strings.TrimPrefix(string(h), "$2a$")
}

func writeHtpasswd(t *testing.T, lines ...string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "htpasswd")
	if err := os.WriteFile(path, []byte(strings.Join(lines, "\n")+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func basic(user, password string) http.Header {
	r, _ := http.NewRequest(http.MethodGet, "/", nil)
	r.SetBasicAuth(user, password)
	return r.Header
}

func TestClientAuthAsksForBasicCredentialsOnTheAPIOnly(t *testing.T) {
	path := writeHtpasswd(t, "# the team", htpasswdLine(t, "alice", "wonderland", "$2y$"), "", htpasswdLine(t, "bob", "builder:with:colons", "$2b$"))
	e := newEnv(t, withClientAuth(path))
	img, err := random.Image(512, 2)
	if err != nil {
		t.Fatal(err)
	}
	e.push("library/app:1", img)
	before := e.counts.Total()

	type try struct {
		path string
		hdr  http.Header
	}
	var tries []try
	for _, p := range []string{"/v2/", "/v2/app/manifests/1", "/v2/_catalog", proxy.CheckPath + "?image=app:1", proxy.MetricsPath, "/elsewhere"} {
		tries = append(tries, try{p, nil}, try{p, http.Header{"Authorization": {"Bearer abc"}}})
	}
	// Two failed logins: under the limit of five.
	tries = append(tries, try{"/v2/app/manifests/1", basic("alice", "wrong")}, try{"/v2/", basic("mallory", "wonderland")})
	for _, tr := range tries {
		resp, body := e.do(http.MethodGet, tr.path, tr.hdr)
		if resp.StatusCode != http.StatusUnauthorized {
			t.Fatalf("GET %s with %v: status = %d, want 401; body %s", tr.path, tr.hdr, resp.StatusCode, body)
		}
		if code := regtest.OCICode(t, resp, body); code != "UNAUTHORIZED" {
			t.Errorf("GET %s: code = %s, want UNAUTHORIZED", tr.path, code)
		}
		if got := resp.Header.Get("WWW-Authenticate"); got != `Basic realm="regmirror"` {
			t.Errorf("GET %s: WWW-Authenticate = %q", tr.path, got)
		}
	}
	resp, _ := e.do(http.MethodGet, "/v2/", nil)
	if v := resp.Header.Get("Docker-Distribution-API-Version"); v != "registry/2.0" {
		t.Errorf("401 of GET /v2/: Docker-Distribution-API-Version = %q, want registry/2.0 (docker login looks for it)", v)
	}
	if n := e.counts.Total() - before; n != 0 {
		t.Errorf("upstream requests without credentials = %d, want 0", n)
	}

	// Probes need no credentials.
	for _, p := range []string{proxy.HealthPath, proxy.ReadyPath} {
		if resp, body := e.do(http.MethodGet, p, nil); resp.StatusCode != http.StatusOK {
			t.Errorf("GET %s without credentials: %d %s", p, resp.StatusCode, body)
		}
	}
	// Metrics on the registry listener ask for a user, as the API does.
	if resp, body := e.do(http.MethodGet, proxy.MetricsPath, basic("alice", "wonderland")); resp.StatusCode != http.StatusOK ||
		!strings.Contains(string(body), "regmirror_upstream_up") {
		t.Errorf("GET %s as alice: %d %.200s, want 200 with the metrics", proxy.MetricsPath, resp.StatusCode, body)
	}
	// What docker login does: GET /v2/ with Basic credentials.
	for _, hdr := range []http.Header{basic("alice", "wonderland"), basic("bob", "builder:with:colons")} {
		if resp, body := e.do(http.MethodGet, "/v2/", hdr); resp.StatusCode != http.StatusOK {
			t.Errorf("GET /v2/ as %v: %d %s", hdr, resp.StatusCode, body)
		}
	}
	// A real client pulls after the 401 challenge.
	got, err := remote.Image(e.mirrorRef("app:1"), remote.WithAuth(&authn.Basic{Username: "alice", Password: "wonderland"}))
	if err != nil {
		t.Fatal(err)
	}
	if regtest.Digest(t, got) != regtest.Digest(t, img) {
		t.Error("pulled the wrong image")
	}
	if _, err := remote.Image(e.mirrorRef("app:1")); err == nil {
		t.Error("an anonymous pull succeeded")
	}
	// The access log names the user, never the password.
	for _, entry := range e.logs.All() {
		for _, f := range entry.Context {
			if strings.Contains(f.String, "wonderland") || strings.Contains(f.String, "builder:with") {
				t.Errorf("log %q has a password in %s", entry.Message, f.Key)
			}
		}
	}
	if n := e.logs.FilterMessage("request").FilterField(zap.String("user", "alice")).Len(); n == 0 {
		t.Error("no access-log line names user alice")
	}
}

func TestClientAuthRefusesAnAddressAfterRepeatedFailures(t *testing.T) {
	path := writeHtpasswd(t, htpasswdLine(t, "alice", "wonderland", "$2y$"))
	e := newEnv(t, withClientAuth(path))
	for i := range 5 {
		resp, body := e.do(http.MethodGet, "/v2/", basic("alice", "guess"+string(rune('a'+i))))
		if resp.StatusCode != http.StatusUnauthorized {
			t.Fatalf("failed login %d: status = %d, want 401; body %s", i+1, resp.StatusCode, body)
		}
	}
	// The sixth is refused without its password being checked: even the right one.
	resp, body := e.do(http.MethodGet, "/v2/", basic("alice", "wonderland"))
	if resp.StatusCode != http.StatusTooManyRequests {
		t.Fatalf("after 5 failures: status = %d, want 429; body %s", resp.StatusCode, body)
	}
	if code := regtest.OCICode(t, resp, body); code != "TOOMANYREQUESTS" {
		t.Errorf("code = %s, want TOOMANYREQUESTS", code)
	}
	if ra := resp.Header.Get("Retry-After"); ra != "60" {
		t.Errorf("Retry-After = %q, want 60", ra)
	}
	// Probes are not refused.
	if resp, _ := e.do(http.MethodGet, proxy.HealthPath, nil); resp.StatusCode != http.StatusOK {
		t.Errorf("healthz while refused: %d", resp.StatusCode)
	}
	e.clock.Advance(30 * time.Second)
	if resp, _ := e.do(http.MethodGet, "/v2/", basic("alice", "wonderland")); resp.StatusCode != http.StatusTooManyRequests {
		t.Errorf("30s later: status = %d, want 429", resp.StatusCode)
	} else if ra := resp.Header.Get("Retry-After"); ra != "30" {
		t.Errorf("30s later: Retry-After = %q, want 30", ra)
	}
	e.clock.Advance(31 * time.Second)
	if resp, body := e.do(http.MethodGet, "/v2/", basic("alice", "wonderland")); resp.StatusCode != http.StatusOK {
		t.Errorf("after the window: status = %d, want 200; body %s", resp.StatusCode, body)
	}

	failed := e.logs.FilterMessage("client login failed")
	if failed.Len() != 5 {
		t.Errorf("Warn lines for failed logins = %d, want 5", failed.Len())
	}
	for _, entry := range failed.All() {
		if entry.Level != zap.WarnLevel {
			t.Errorf("failed login logged at %s, want warn", entry.Level)
		}
		fields := entry.ContextMap()
		if fields["user"] != "alice" || fields["remote"] == nil {
			t.Errorf("failed login fields = %v, want user and remote", fields)
		}
		for k, v := range fields {
			if s, ok := v.(string); ok && strings.Contains(s, "guess") {
				t.Errorf("failed login logs the password in %s", k)
			}
		}
	}
	if n := e.logs.FilterMessage("client address refused after repeated failed logins").Len(); n != 1 {
		t.Errorf("Warn lines for the refused address = %d, want 1", n)
	}
}

// TestClientAuthReloadForgetsOldPasswords shows that the memory of verified
// credentials (which spares each request a bcrypt comparison) never
// outlives a change of the file, and that a bad file changes nothing.
func TestClientAuthReloadForgetsOldPasswords(t *testing.T) {
	path := writeHtpasswd(t, htpasswdLine(t, "alice", "old", "$2y$"), htpasswdLine(t, "bob", "bob", "$2a$"))
	e := newEnv(t, withClientAuth(path))
	status := func(user, password string) int {
		t.Helper()
		resp, _ := e.do(http.MethodGet, "/v2/", basic(user, password))
		return resp.StatusCode
	}
	if status("alice", "old") != 200 || status("alice", "old") != 200 || status("bob", "bob") != 200 {
		t.Fatal("the users of the file cannot log in")
	}
	replace := func(lines ...string) {
		t.Helper()
		if err := os.WriteFile(path, []byte(strings.Join(lines, "\n")), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	replace(htpasswdLine(t, "alice", "new", "$2b$"))
	if err := e.auth.Reload(); err != nil {
		t.Fatal(err)
	}
	if got := status("alice", "old"); got != http.StatusUnauthorized {
		t.Errorf("old password after reload: %d, want 401", got)
	}
	if got := status("bob", "bob"); got != http.StatusUnauthorized {
		t.Errorf("removed user after reload: %d, want 401", got)
	}
	if got := status("alice", "new"); got != http.StatusOK {
		t.Errorf("new password after reload: %d, want 200", got)
	}
	replace("alice:{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=")
	err := e.auth.Reload()
	if err == nil || !strings.Contains(err.Error(), "bcrypt") {
		t.Errorf("reload of a SHA1 file: err = %v, want a refusal naming bcrypt", err)
	}
	if got := status("alice", "new"); got != http.StatusOK {
		t.Errorf("after a refused reload: %d, want 200 (the old users stay)", got)
	}
}

func TestParseHtpasswd(t *testing.T) {
	good := htpasswdLine(t, "alice", "pw", "$2y$")
	hash := strings.TrimPrefix(good, "alice:")
	tests := []struct {
		name    string
		file    string
		users   int
		wantErr string
	}{
		{"bcrypt variants, comments and blank lines", "# team\n\n" + good + "\n" + htpasswdLine(t, "b", "x", "$2a$") + "\n  " + htpasswdLine(t, "c", "x", "$2b$") + "  \n", 3, ""},
		{"empty", "", 0, ""},
		{"SHA1", "alice:{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=", 0, "not a bcrypt hash"},
		{"MD5 (apr1)", "alice:$apr1$r31.....$HqJZimcKQFAMYayBlzkrA/", 0, "not a bcrypt hash"},
		{"crypt", "alice:rl0uTa9tgzlnA", 0, "not a bcrypt hash"},
		{"plain text", "alice:secret", 0, "not a bcrypt hash"},
		{"no colon", "alice", 0, "want user:hash"},
		{"no user", ":" + hash, 0, "want user:hash"},
		{"listed twice", good + "\n" + good, 0, "twice"},
		{"truncated hash", good[:40], 0, "malformed"},
		{"cost too high", "alice:$2y$31$" + hash[7:], 0, "cost 31"},
		{"space in the user", "al ice:" + hash, 0, "spaces"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			users, err := proxy.ParseHtpasswd(strings.NewReader(tt.file))
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want one mentioning %q", err, tt.wantErr)
				}
				if _, h, _ := strings.Cut(tt.file, ":"); len(h) > 8 && strings.Contains(err.Error(), h) {
					t.Errorf("error repeats the hash: %v", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if len(users) != tt.users {
				t.Errorf("users = %d, want %d", len(users), tt.users)
			}
		})
	}
	if _, err := proxy.NewClientAuth(writeHtpasswd(t, "# nobody"), proxy.ClientAuthOptions{}, zap.NewNop()); err == nil || !strings.Contains(err.Error(), "no users") {
		t.Errorf("a file with no users: err = %v, want a refusal", err)
	}
}
