package test

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/regmirror/regmirror/proxy"
	"github.com/regmirror/regmirror/test/regtest"
	"golang.org/x/crypto/bcrypt"
)

// testCert is a self-signed certificate for 127.0.0.1 and localhost.
type testCert struct {
	leaf            *x509.Certificate
	certPEM, keyPEM []byte
}

func newTestCert(t *testing.T, name string) testCert {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	serial, _ := rand.Int(rand.Reader, big.NewInt(1<<62))
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: name},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
		IPAddresses:           []net.IP{net.IPv4(127, 0, 0, 1)},
		DNSNames:              []string{"localhost"},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return testCert{
		leaf:    leaf,
		certPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		keyPEM:  pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}),
	}
}

// install writes the certificate and key where the mirror reads them. The
// files are replaced by rename, as a certificate renewal tool would.
func (c testCert) install(t *testing.T, certFile, keyFile string) {
	t.Helper()
	for file, b := range map[string][]byte{certFile: c.certPEM, keyFile: c.keyPEM} {
		tmp := file + ".new"
		if err := os.WriteFile(tmp, b, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, file); err != nil {
			t.Fatal(err)
		}
	}
}

func (c testCert) pool() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(c.leaf)
	return p
}

// trusting is an HTTP transport that trusts only c.
func trusting(c testCert) *http.Transport {
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.TLSClientConfig = &tls.Config{RootCAs: c.pool()}
	return t
}

// sighup sends SIGHUP to the mirror and waits until it logs msg.
func (m *mirrorProc) sighup(t *testing.T, msg string) {
	t.Helper()
	if err := m.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), guard)
	defer cancel()
	if err := m.waitLog(ctx, func(rec map[string]any) bool { return rec["msg"] == msg }); err != nil {
		t.Fatalf("no %q after SIGHUP: %v; logs:\n%s", msg, err, m.Logs())
	}
}

// tlsGet sends GET path over an open TLS connection (HTTP/1.1, kept alive)
// and returns the status.
func tlsGet(t *testing.T, conn *tls.Conn, br *bufio.Reader, path string) int {
	t.Helper()
	conn.SetDeadline(time.Now().Add(guard))
	resp, _, err := regtest.Exchange(conn, br, http.MethodGet, []byte("GET "+path+" HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"))
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	return resp.StatusCode
}

// TestTLSCertificateReloadsOnSIGHUP serves HTTPS with certificate A, then
// replaces the files with B and sends SIGHUP: new connections get B, a
// connection opened under A keeps working, and a broken file on a later
// SIGHUP leaves B in place.
func TestTLSCertificateReloadsOnSIGHUP(t *testing.T) {
	t.Parallel()
	up := startUpstream(t, nil)
	s := seed(t, up)
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	a, b := newTestCert(t, "cert A"), newTestCert(t, "cert B")
	a.install(t, certFile, keyFile)
	m := startMirror(t, up.URL, "", "REGMIRROR_TLS_CERT="+certFile, "REGMIRROR_TLS_KEY="+keyFile)

	pullImage(t, m, "multi:latest", regtest.Digest(t, s.img), remote.WithTransport(trusting(a)))
	if resp, err := http.Get("http://" + m.Addr + "/v2/"); err == nil {
		resp.Body.Close()
		if resp.StatusCode < 400 {
			t.Errorf("plain HTTP to the TLS listener: status %d, want a refusal", resp.StatusCode)
		}
	}

	old, err := tls.Dial("tcp", m.Addr, &tls.Config{RootCAs: a.pool(), NextProtos: []string{"http/1.1"}})
	if err != nil {
		t.Fatal(err)
	}
	defer old.Close()
	oldReader := bufio.NewReader(old)
	if st := tlsGet(t, old, oldReader, "/v2/"); st != http.StatusOK {
		t.Fatalf("GET /v2/ on the first connection: %d", st)
	}
	if st := old.ConnectionState(); st.Version < tls.VersionTLS12 {
		t.Errorf("TLS version %x, want 1.2 or later", st.Version)
	}
	if c, err := tls.Dial("tcp", m.Addr, &tls.Config{RootCAs: a.pool(), MinVersion: tls.VersionTLS10, MaxVersion: tls.VersionTLS11}); err == nil {
		c.Close()
		t.Error("a TLS 1.1 client was served, want 1.2 or later only")
	}

	b.install(t, certFile, keyFile)
	m.sighup(t, "SIGHUP: certificate reloaded")
	peer := func() *x509.Certificate {
		t.Helper()
		c, err := tls.Dial("tcp", m.Addr, &tls.Config{RootCAs: b.pool()})
		if err != nil {
			t.Fatalf("new connection after the reload: %v", err)
		}
		defer c.Close()
		return c.ConnectionState().PeerCertificates[0]
	}
	if got := peer(); !got.Equal(b.leaf) {
		t.Errorf("new connection sees %q, want cert B", got.Subject.CommonName)
	}
	if st := tlsGet(t, old, oldReader, "/v2/library/multi/manifests/latest"); st != http.StatusOK {
		t.Errorf("the connection opened under cert A after the reload: status %d, want 200", st)
	}
	pullImage(t, m, "multi:latest", regtest.Digest(t, s.img), remote.WithTransport(trusting(b)))

	// A broken certificate file: logged, and B stays.
	if err := os.WriteFile(certFile, []byte("not a certificate"), 0o600); err != nil {
		t.Fatal(err)
	}
	m.sighup(t, "SIGHUP: the new certificate does not load; still serving the old one")
	if got := peer(); !got.Equal(b.leaf) {
		t.Errorf("after a broken reload the server presents %q, want cert B", got.Subject.CommonName)
	}

	// The container health check finds the TLS mirror on its own.
	hc := exec.Command(binary, "healthcheck")
	hc.Env = append(os.Environ(), "REGMIRROR_ADDR="+m.Addr, "REGMIRROR_TLS_CERT="+certFile)
	if out, err := hc.CombinedOutput(); err != nil {
		t.Errorf("healthcheck of the TLS mirror: %v: %s", err, out)
	}
}

// TestClientLoginWithHtpasswd is what docker login and a pull with
// credentials do against a mirror with REGMIRROR_HTPASSWD, over TLS; a
// SIGHUP picks up a changed file.
func TestClientLoginWithHtpasswd(t *testing.T) {
	t.Parallel()
	up := startUpstream(t, nil)
	s := seed(t, up)
	dir := t.TempDir()
	certFile, keyFile, htpasswd := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem"), filepath.Join(dir, "htpasswd")
	cert := newTestCert(t, "mirror")
	cert.install(t, certFile, keyFile)
	writeFile(t, htpasswd, htpasswdEntry(t, "ci", "s3cret-pass"))
	m := startMirror(t, up.URL, "", "REGMIRROR_TLS_CERT="+certFile, "REGMIRROR_TLS_KEY="+keyFile, "REGMIRROR_HTPASSWD="+htpasswd)
	client := &http.Client{Transport: trusting(cert)}
	base := "https://" + m.Addr
	get := func(path, user, password string) *http.Response {
		t.Helper()
		req, _ := http.NewRequestWithContext(t.Context(), http.MethodGet, base+path, nil)
		if user != "" {
			req.SetBasicAuth(user, password)
		}
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp
	}

	// docker login: GET /v2/, a Basic challenge, GET /v2/ with credentials.
	resp := get("/v2/", "", "")
	if resp.StatusCode != http.StatusUnauthorized || resp.Header.Get("WWW-Authenticate") != `Basic realm="regmirror"` {
		t.Fatalf("GET /v2/ without credentials: %d, WWW-Authenticate %q", resp.StatusCode, resp.Header.Get("WWW-Authenticate"))
	}
	if st := get("/v2/", "ci", "s3cret-pass").StatusCode; st != http.StatusOK {
		t.Fatalf("GET /v2/ as ci: %d", st)
	}
	if st := get("/healthz", "", "").StatusCode; st != http.StatusOK {
		t.Errorf("healthz without credentials: %d", st)
	}
	login := remote.WithAuth(&authn.Basic{Username: "ci", Password: "s3cret-pass"})
	pullImage(t, m, "multi:latest", regtest.Digest(t, s.img), remote.WithTransport(trusting(cert)), login)
	if _, err := remote.Image(ref(t, m.Host(), "multi:latest"), remote.WithTransport(trusting(cert)), remote.WithContext(t.Context())); err == nil {
		t.Error("an anonymous pull succeeded")
	}
	if st := get("/v2/", "ci", "wrong-pass").StatusCode; st != http.StatusUnauthorized {
		t.Errorf("GET /v2/ with a wrong password: %d, want 401", st)
	}

	writeFile(t, htpasswd, htpasswdEntry(t, "ci", "rotated-pass"))
	m.sighup(t, "SIGHUP: htpasswd file reloaded")
	if st := get("/v2/", "ci", "s3cret-pass").StatusCode; st != http.StatusUnauthorized {
		t.Errorf("the old password after the reload: %d, want 401", st)
	}
	if st := get("/v2/", "ci", "rotated-pass").StatusCode; st != http.StatusOK {
		t.Errorf("the new password after the reload: %d, want 200", st)
	}
	m.Stop()
	for _, secret := range []string{"s3cret-pass", "rotated-pass", "wrong-pass"} {
		if strings.Contains(m.Logs(), secret) {
			t.Errorf("the logs hold the password %q", secret)
		}
	}
	if !strings.Contains(m.Logs(), `"msg":"client login failed"`) {
		t.Error("no Warn line for the failed logins")
	}
}

// TestStartUpRefusesBadSecuritySettings: a setting that cannot be used stops
// start-up with an error naming it.
func TestStartUpRefusesBadSecuritySettings(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	md5 := filepath.Join(dir, "htpasswd-md5")
	writeFile(t, md5, "alice:$apr1$r31.....$HqJZimcKQFAMYayBlzkrA/\n")
	garbage := filepath.Join(dir, "garbage.pem")
	writeFile(t, garbage, "not a certificate\n")
	tests := []struct {
		name string
		env  []string
		want []string
	}{
		{"MD5 htpasswd entry", []string{"REGMIRROR_HTPASSWD=" + md5}, []string{"REGMIRROR_HTPASSWD", "bcrypt"}},
		{"missing htpasswd file", []string{"REGMIRROR_HTPASSWD=" + filepath.Join(dir, "nope")}, []string{"REGMIRROR_HTPASSWD"}},
		{"certificate without key", []string{"REGMIRROR_TLS_CERT=" + garbage}, []string{"REGMIRROR_TLS_CERT", "REGMIRROR_TLS_KEY"}},
		{"unreadable certificate", []string{"REGMIRROR_TLS_CERT=" + garbage, "REGMIRROR_TLS_KEY=" + garbage}, []string{"REGMIRROR_TLS_CERT"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cmd := exec.CommandContext(t.Context(), binary)
			cmd.Env = append(os.Environ(), "REGMIRROR_ADDR=127.0.0.1:0", "REGMIRROR_DATA_DIR="+t.TempDir(), "GORACE=atexit_sleep_ms=0")
			cmd.Env = append(cmd.Env, tt.env...)
			out, err := cmd.CombinedOutput()
			if err == nil {
				t.Fatalf("regmirror started with %v", tt.env)
			}
			for _, w := range tt.want {
				if !strings.Contains(string(out), w) {
					t.Errorf("error does not name %s: %s", w, out)
				}
			}
		})
	}
}

// TestOversizedHeaderIs431 sends a request whose headers pass
// MaxHeaderBytes (64 KiB): net/http answers 431 itself, and the mirror goes
// on serving.
func TestOversizedHeaderIs431(t *testing.T) {
	t.Parallel()
	up := startUpstream(t, nil)
	m := startMirror(t, up.URL, "")
	send := func(headerBytes int) (*http.Response, error) {
		conn, err := net.Dial("tcp", m.Addr)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		conn.SetDeadline(time.Now().Add(guard))
		req := "GET /v2/ HTTP/1.1\r\nHost: " + m.Addr + "\r\nX-Filler: " + strings.Repeat("a", headerBytes) + "\r\nConnection: close\r\n\r\n"
		resp, _, err := regtest.Exchange(conn, bufio.NewReader(conn), http.MethodGet, []byte(req))
		return resp, err
	}
	resp, err := send(100 << 10)
	if err != nil {
		t.Fatalf("100 KiB header: %v", err)
	}
	if resp.StatusCode != http.StatusRequestHeaderFieldsTooLarge {
		t.Errorf("100 KiB header: status = %d, want 431", resp.StatusCode)
	}
	if resp, err := send(32 << 10); err != nil || resp.StatusCode != http.StatusOK {
		t.Errorf("32 KiB header (under the limit): %v, %v; want 200", resp, err)
	}
	if resp, _ := m.do(http.MethodGet, "/v2/", nil); resp.StatusCode != http.StatusOK {
		t.Errorf("GET /v2/ after the oversized header: %d", resp.StatusCode)
	}
	select {
	case <-m.exited:
		t.Fatalf("the mirror exited; logs:\n%s", m.Logs())
	default:
	}
}

func htpasswdEntry(t *testing.T, user, password string) string {
	t.Helper()
	h, err := bcrypt.GenerateFromPassword([]byte(password), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	return user + ":$2y$" + strings.TrimPrefix(string(h), "$2a$") + "\n"
}

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
}

// A web page open on the mirror's host cannot drive or read the admin API
// (issue 15): a cross-site POST (CSRF) and a request under another name
// that resolves to 127.0.0.1 (DNS rebinding) get 403; the CLI still works,
// by address and as localhost. With a token, any name may be used.
func TestAdminAPIRefusesWebPages(t *testing.T) {
	t.Parallel()
	up := startUpstream(t, nil)
	img := budPush(t, up, "app:1", budRandom(t, 1024, 1))
	denied := func(t *testing.T, m *mirrorProc, method, path string, header http.Header) {
		t.Helper()
		resp, body := regtest.Do(t, method, m.AdminURL+path, header)
		if resp.StatusCode != http.StatusForbidden || regtest.OCICode(t, resp, body) != "DENIED" {
			t.Errorf("%s %s with %v: status = %d, body %s; want 403 DENIED", method, path, header, resp.StatusCode, body)
		}
	}
	port := func(m *mirrorProc) string { return m.AdminURL[strings.LastIndexByte(m.AdminURL, ':')+1:] }

	t.Run("no token", func(t *testing.T) {
		t.Parallel()
		m := startMirror(t, up.URL, "")
		denied(t, m, http.MethodPost, proxy.AdminPin+"?image=app:1",
			http.Header{"Origin": {"http://evil.example"}, "Content-Type": {"text/plain"}})
		denied(t, m, http.MethodPost, proxy.AdminGC, http.Header{"Sec-Fetch-Site": {"cross-site"}})
		denied(t, m, http.MethodGet, proxy.AdminImages, http.Header{"Host": {"evil.example:" + port(m)}})
		if a := budImages(t, m); len(a.Images) != 0 {
			t.Errorf("refused requests left images %+v", a.Images)
		}

		stdout, stderr, code := budCLI(t, m, "pin", img.name)
		if code != 0 || !strings.Contains(stdout, "app:1: pinned") {
			t.Errorf("regmirror pin: exit %d, stdout %q; stderr %s", code, stdout, stderr)
		}
		stdout, stderr, code = budCLI(t, m, "ls", "-admin", "http://localhost:"+port(m))
		if code != 0 || !strings.Contains(stdout, "docker.io/library/app:1") || !strings.Contains(stdout, "pinned") {
			t.Errorf("regmirror ls -admin http://localhost:%s: exit %d, stdout %q; stderr %s", port(m), code, stdout, stderr)
		}
		if stdout, stderr, code = budCLI(t, m, "gc"); code != 0 {
			t.Errorf("regmirror gc: exit %d, stdout %q; stderr %s", code, stdout, stderr)
		}
	})

	t.Run("token", func(t *testing.T) {
		t.Parallel()
		m := startMirror(t, up.URL, "", "REGMIRROR_ADMIN_TOKEN=s3cret")
		bearer := "Bearer s3cret"
		resp, body := regtest.Do(t, http.MethodGet, m.AdminURL+proxy.AdminImages,
			http.Header{"Host": {"mirror.lan:" + port(m)}, "Authorization": {bearer}})
		if resp.StatusCode != http.StatusOK {
			t.Errorf("GET %s as mirror.lan with the token: status = %d, body %s; want 200", proxy.AdminImages, resp.StatusCode, body)
		}
		denied(t, m, http.MethodPost, proxy.AdminGC, http.Header{"Origin": {"http://evil.example"}, "Authorization": {bearer}})
		denied(t, m, http.MethodGet, proxy.AdminImages, http.Header{"Sec-Fetch-Site": {"cross-site"}, "Authorization": {bearer}})
	})
}
