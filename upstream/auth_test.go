package upstream_test

import (
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/registry"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
	"github.com/regmirror/regmirror/upstream"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
)

const secret = "s3cret-pa55word"

func TestCredentialsFile(t *testing.T) {
	creds, err := upstream.ParseCredentials(strings.NewReader("# comment\n\nghcr.io  me  " + secret + "\nbuild.lan:5000 ci tok\n"))
	if err != nil {
		t.Fatal(err)
	}
	if c := creds["ghcr.io"]; c.Username != "me" || c.Password != secret {
		t.Errorf("ghcr.io = %+v", c)
	}
	if c := creds["build.lan:5000"]; c.Username != "ci" || c.Password != "tok" {
		t.Errorf("build.lan:5000 = %+v", c)
	}
	for _, bad := range []string{"ghcr.io me " + secret + " extra", "ghcr.io " + secret, "a u p\na u " + secret} {
		_, err := upstream.ParseCredentials(strings.NewReader(bad))
		if err == nil {
			t.Errorf("ParseCredentials(%q) accepted it", bad)
			continue
		}
		if strings.Contains(err.Error(), secret) {
			t.Errorf("error repeats the secret: %v", err)
		}
	}
}

func TestKeychainFromFileAndDockerConfig(t *testing.T) {
	dir := t.TempDir()
	credFile := filepath.Join(dir, "credentials")
	os.WriteFile(credFile, []byte("ghcr.io fileuser "+secret+"\n"), 0o600)
	dockerConfig := filepath.Join(dir, "config.json")
	auth := func(u, p string) string { return base64.StdEncoding.EncodeToString([]byte(u + ":" + p)) }
	os.WriteFile(dockerConfig, []byte(`{"auths":{
		"https://index.docker.io/v1/":{"auth":"`+auth("hubuser", "hubpw")+`"},
		"ghcr.io":{"auth":"`+auth("dockeruser", "dockerpw")+`"},
		"quay.io":{"auth":"`+auth("quayuser", "quaypw")+`"}}}`), 0o600)

	k, err := upstream.LoadKeychain(credFile, dockerConfig)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct{ registry, user string }{
		{"docker.io", "hubuser"}, // docker login's key for Docker Hub
		{"ghcr.io", "fileuser"},  // the credentials file wins
		{"quay.io", "quayuser"},  // from config.json
		{"registry.k8s.io", ""},  // anonymous
	}
	for _, tt := range tests {
		a, err := authn.Resolve(t.Context(), k, resource(tt.registry))
		if err != nil {
			t.Fatal(err)
		}
		cfg, err := a.Authorization()
		if err != nil {
			t.Fatal(err)
		}
		if cfg.Username != tt.user {
			t.Errorf("%s: user = %q, want %q", tt.registry, cfg.Username, tt.user)
		}
		c, err := upstream.New(upstream.Options{Name: tt.registry, URL: "https://" + tt.registry, Keychain: k}, zap.NewNop())
		if err != nil {
			t.Fatal(err)
		}
		if got := c.HasCredentials(); got != (tt.user != "") {
			t.Errorf("%s: HasCredentials = %v", tt.registry, got)
		}
		c.Close()
	}
	if _, err := upstream.LoadKeychain("", filepath.Join(dir, "missing.json")); err == nil {
		t.Error("a missing Docker config was accepted")
	}
}

type resource string

func (r resource) String() string      { return string(r) }
func (r resource) RegistryStr() string { return string(r) }

func TestRateLimitIsKeptAndLowQuotaWarns(t *testing.T) {
	remaining := atomic.Int32{}
	remaining.Store(50)
	reg := registry.New(registry.Logger(log.New(io.Discard, "", 0)))
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Ratelimit-Limit", "100;w=21600")
		w.Header().Set("Ratelimit-Remaining", strconv.Itoa(int(remaining.Load()))+";w=21600")
		w.Header().Set("Docker-Ratelimit-Source", "192.0.2.1")
		if strings.Contains(r.URL.Path, "/busy/") {
			w.Header().Set("Retry-After", "120")
			w.WriteHeader(http.StatusTooManyRequests)
			return
		}
		reg.ServeHTTP(w, r)
	}))
	defer srv.Close()
	core, logs := observer.New(zap.WarnLevel)
	c, err := upstream.New(upstream.Options{Name: "docker.io", URL: srv.URL, Timeout: 5 * time.Second}, zap.New(core))
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := c.RateLimit(); ok {
		t.Error("a rate limit is known before any request")
	}
	c.Tags(t.Context(), "library/app", "", "")
	rl, ok := c.RateLimit()
	if !ok || rl.Limit != 100 || rl.Remaining != 50 || rl.Source != "192.0.2.1" {
		t.Errorf("RateLimit = %+v, %v", rl, ok)
	}
	if logs.Len() != 0 {
		t.Errorf("warned with half the quota left")
	}
	remaining.Store(9)
	c.Tags(t.Context(), "library/app", "", "")
	c.Tags(t.Context(), "library/app", "", "")
	if n := logs.FilterMessage("upstream pull quota running low").Len(); n != 1 {
		t.Errorf("low-quota warnings = %d, want 1 (not one per request)", n)
	}

	_, err = c.Manifest(t.Context(), http.MethodGet, "busy/app", "1")
	ue, ok := errors.AsType[*upstream.Error](err)
	if !ok || ue.RetryAfter != "120" {
		t.Errorf("429: err = %v, want an upstream.Error with Retry-After 120", err)
	}
}

func isStatus(err error, status int) bool {
	te, ok := errors.AsType[*transport.Error](err)
	return ok && te.StatusCode == status
}

func TestTLSVerification(t *testing.T) {
	var hits atomic.Int32
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		registry.New(registry.Logger(log.New(io.Discard, "", 0))).ServeHTTP(w, r)
	}))
	defer srv.Close()
	pool := x509.NewCertPool()
	pool.AddCert(srv.Certificate())
	pemFile := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw})
	if !x509.NewCertPool().AppendCertsFromPEM(pemFile) {
		t.Fatal("test certificate does not round-trip through PEM")
	}

	tests := []struct {
		name     string
		insecure bool
		roots    *x509.CertPool
		wantErr  error
	}{
		{"self-signed is refused", false, nil, upstream.ErrUntrustedCertificate},
		{"insecure skips verification", true, nil, nil},
		{"its CA makes it trusted", false, pool, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := upstream.New(upstream.Options{Name: "tls.test", URL: srv.URL, Timeout: 5 * time.Second, Insecure: tt.insecure, RootCAs: tt.roots}, zap.NewNop())
			if err != nil {
				t.Fatal(err)
			}
			_, err = c.Tags(t.Context(), "app", "", "")
			if tt.wantErr == nil {
				// The registry is empty: a 404 proves the exchange worked.
				if !isStatus(err, http.StatusNotFound) {
					t.Fatalf("err = %v, want the registry's 404", err)
				}
				return
			}
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("err = %v, want %v", err, tt.wantErr)
			}
		})
	}
}

func TestHTTPSIsNeverDowngradedToHTTP(t *testing.T) {
	// A plain-HTTP registry configured as https:// on a loopback address: ggcr
	// alone would fall back to http; we must not.
	var hits atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		registry.New(registry.Logger(log.New(io.Discard, "", 0))).ServeHTTP(w, r)
	}))
	defer srv.Close()
	c, err := upstream.New(upstream.Options{Name: "plain.test", URL: strings.Replace(srv.URL, "http://", "https://", 1), Timeout: 5 * time.Second}, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close() // its failure starts a health probe
	if _, err := c.Tags(t.Context(), "app", "", ""); err == nil {
		t.Fatal("an https upstream answered over plain http")
	}
	if n := hits.Load(); n != 0 {
		t.Errorf("plain-HTTP requests reached the server: %d, want 0", n)
	}
}
