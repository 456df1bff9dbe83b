package test

// End-to-end tests of a mirror in front of several upstream registries:
// routing by ?ns=, by path prefix and by default; one blob store for all of
// them; unconfigured registries refused; TLS upstreams with self-signed
// certificates; credentials; and bearer tokens reused and refreshed.

import (
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"log"
	"maps"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/regmirror/regmirror/test/regtest"
)

const (
	// The upstream credentials of the tests. The passwords are distinctive so
	// that finding them in a log or an error body is unambiguous.
	testUser      = "puller"
	testPassword  = "s3cret-pa55word"
	wrongPassword = "wr0ng-pa55word"

	// Registry names of the TLS and the token-protected upstreams, as clients
	// know them. They look like hosts, so they work as a path prefix.
	tlsName  = "tls.local"
	authName = "c.local"

	// The repository and tag every upstream of the routing test holds, each
	// with a different image.
	appRepo = "team/app"
	appTag  = "1.0"
)

// backend is an in-memory registry with an uncounted plain-HTTP side door
// for seeding, so that what the counted front door sees is the mirror's
// traffic only.
type backend struct {
	reg  http.Handler
	seed string // host:port of the side door
}

func newBackend(t *testing.T) backend {
	t.Helper()
	reg := registry.New(registry.Logger(log.New(io.Discard, "", 0)))
	side := httptest.NewServer(reg)
	t.Cleanup(side.Close)
	return backend{reg: reg, seed: strings.TrimPrefix(side.URL, "http://")}
}

// push writes img to the backend as repoTag and returns its digest.
func (b backend) push(t *testing.T, repoTag string, img v1.Image) v1.Hash {
	t.Helper()
	if err := remote.Write(ref(t, b.seed, repoTag), img, remote.WithContext(t.Context())); err != nil {
		t.Fatalf("seed %s: %v", repoTag, err)
	}
	return regtest.Digest(t, img)
}

// tlsUpstream is a registry served over TLS with httptest's self-signed
// certificate. Its server's error log is kept: Go's TLS server logs every
// failed handshake there, including a plain-HTTP request sent to it.
type tlsUpstream struct {
	*httptest.Server
	*regtest.Counter
	backend
	errLog *lineLog
}

func startTLSUpstream(t *testing.T) *tlsUpstream {
	t.Helper()
	b := newBackend(t)
	counter := regtest.Count(b.reg)
	srv := httptest.NewUnstartedServer(counter)
	errLog := &lineLog{}
	srv.Config.ErrorLog = log.New(errLog, "", 0)
	srv.StartTLS()
	t.Cleanup(srv.Close)
	return &tlsUpstream{Server: srv, Counter: counter, backend: b, errLog: errLog}
}

// host is host:port of the TLS server, as its certificate names it (127.0.0.1).
func (u *tlsUpstream) host() string { return strings.TrimPrefix(u.URL, "https://") }

// caFile writes the server's certificate as a PEM file and returns its path.
func (u *tlsUpstream) caFile(t *testing.T) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "ca.pem")
	pemBytes := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: u.Certificate().Raw})
	if err := os.WriteFile(p, pemBytes, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// closedLog closes the server, which waits for its connections to end, so
// that every handshake it saw has been logged, and returns its error log.
func (u *tlsUpstream) closedLog() string {
	u.Close()
	return u.errLog.String()
}

// lineLog collects what a log.Logger writes, safely for concurrent use.
type lineLog struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *lineLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lineLog) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// tokenAuth is a bearer-token challenge in front of a registry, with its own
// token server. The token server checks a username and password by Basic
// auth and issues tokens only for the right pair. It is served at /token on
// the registry's own host:port: ggcr refuses a realm on another loopback or
// private address (an SSRF guard), and allows the registry's own host. Tokens belong to a
// generation: expire starts a new one, and the registry refuses tokens of
// older generations from then on.
type tokenAuth struct {
	user, pass string
	realm      string // the token server's URL

	mu         sync.Mutex
	gen        int
	tokens     map[string]int // token → its generation
	issued     int            // tokens issued
	badCreds   int            // token requests refused for wrong or no credentials
	stale      int            // registry requests refused for a token of an old generation
	authorized int            // registry requests let through
}

func (a *tokenAuth) serveToken(w http.ResponseWriter, r *http.Request) {
	u, p, ok := r.BasicAuth()
	a.mu.Lock()
	defer a.mu.Unlock()
	if !ok || u != a.user || p != a.pass {
		a.badCreds++
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusUnauthorized)
		io.WriteString(w, `{"details":"incorrect username or password"}`)
		return
	}
	buf := make([]byte, 16)
	rand.Read(buf)
	tok := fmt.Sprintf("gen%d-%s", a.gen, hex.EncodeToString(buf))
	a.tokens[tok] = a.gen
	a.issued++
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(map[string]any{"token": tok, "access_token": tok, "expires_in": 300})
}

// wrap puts the challenge in front of next: without a valid token of the
// current generation, the answer is 401 with a Bearer challenge naming the
// token server.
func (a *tokenAuth) wrap(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		tok, bearer := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		a.mu.Lock()
		gen, known := a.tokens[tok]
		valid := bearer && known && gen == a.gen
		switch {
		case valid:
			a.authorized++
		case bearer && known:
			a.stale++
		}
		a.mu.Unlock()
		if !valid {
			w.Header().Set("WWW-Authenticate", fmt.Sprintf(`Bearer realm="%s",service="test"`, a.realm))
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusUnauthorized)
			io.WriteString(w, `{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}`)
			return
		}
		next.ServeHTTP(w, r)
	})
}

// expire makes every token issued so far invalid.
func (a *tokenAuth) expire() {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.gen++
}

// tokenStats is a snapshot of a tokenAuth's counters.
type tokenStats struct{ issued, badCreds, stale, authorized int }

func (a *tokenAuth) stats() tokenStats {
	a.mu.Lock()
	defer a.mu.Unlock()
	return tokenStats{a.issued, a.badCreds, a.stale, a.authorized}
}

// authUpstream is a plain-HTTP registry behind a tokenAuth, counted in front
// of the challenge (so refused requests count too), with the token server at
// /token (not counted).
type authUpstream struct {
	*httptest.Server
	*regtest.Counter
	backend
	auth *tokenAuth
}

func startAuthUpstream(t *testing.T) *authUpstream {
	t.Helper()
	b := newBackend(t)
	a := &tokenAuth{user: testUser, pass: testPassword, tokens: map[string]int{}}
	counter := regtest.Count(a.wrap(b.reg))
	mux := http.NewServeMux()
	mux.HandleFunc("/token", a.serveToken)
	mux.Handle("/", counter)
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	a.realm = srv.URL + "/token"
	return &authUpstream{Server: srv, Counter: counter, backend: b, auth: a}
}

// upstreamsEnv is REGMIRROR_UPSTREAMS for name=URL pairs.
func upstreamsEnv(pairs ...string) string {
	var entries []string
	for i := 0; i+1 < len(pairs); i += 2 {
		entries = append(entries, pairs[i]+"="+pairs[i+1])
	}
	return "REGMIRROR_UPSTREAMS=" + strings.Join(entries, ",")
}

// credentialsFile writes a REGMIRROR_CREDENTIALS_FILE with one line and
// returns the setting.
func credentialsFile(t *testing.T, registry, user, pass string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "credentials")
	if err := os.WriteFile(p, []byte(fmt.Sprintf("# test credentials\n%s %s %s\n", registry, user, pass)), 0o600); err != nil {
		t.Fatal(err)
	}
	return "REGMIRROR_CREDENTIALS_FILE=" + p
}

// dockerAuth is the "auth" value of a Docker config.json: base64(user:pass).
func dockerAuth(user, pass string) string {
	return base64.StdEncoding.EncodeToString([]byte(user + ":" + pass))
}

// dockerConfig writes a Docker config.json holding base64 credentials for
// registry and returns the REGMIRROR_DOCKER_CONFIG setting.
func dockerConfig(t *testing.T, registry, user, pass string) string {
	t.Helper()
	b, err := json.Marshal(map[string]any{"auths": map[string]any{registry: map[string]string{"auth": dockerAuth(user, pass)}}})
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(t.TempDir(), "config.json")
	if err := os.WriteFile(p, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return "REGMIRROR_DOCKER_CONFIG=" + p
}

// manifestAccept accepts every image manifest type.
var manifestAccept = http.Header{"Accept": {
	"application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json",
}}

// nsRecorder is a client transport that records the OCI-Namespace header of
// every answer to a /v2/<repository>/... request.
type nsRecorder struct {
	next http.RoundTripper
	mu   sync.Mutex
	seen map[string]int // header value ("" when missing) → answers
}

func newNSRecorder() *nsRecorder {
	return &nsRecorder{next: http.DefaultTransport, seen: map[string]int{}}
}

func (r *nsRecorder) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, err := r.next.RoundTrip(req)
	if err == nil && req.URL.Path != "/v2/" {
		r.mu.Lock()
		r.seen[resp.Header.Get("OCI-Namespace")]++
		r.mu.Unlock()
	}
	return resp, err
}

// only reports whether every recorded answer carried want, and what was seen.
func (r *nsRecorder) only(want string) (bool, map[string]int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	seen := maps.Clone(r.seen)
	return len(seen) == 1 && seen[want] > 0, seen
}

// pullByNS pulls repo:tag from the mirror with plain requests naming the
// registry by ?ns=: the manifest, then each blob by digest. Every answer must
// be 200 with OCI-Namespace: ns, and every blob must match its digest. It
// returns the manifest's digest.
func pullByNS(t *testing.T, m *mirrorProc, repo, tag, ns string) v1.Hash {
	t.Helper()
	get := func(path string, h http.Header) []byte {
		t.Helper()
		resp, body := m.do(http.MethodGet, path, h)
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("GET %s: status = %d, want %d; body %s", path, resp.StatusCode, http.StatusOK, body)
		}
		if got := resp.Header.Get("OCI-Namespace"); got != ns {
			t.Errorf("GET %s: OCI-Namespace = %q, want %q", path, got, ns)
		}
		return body
	}
	q := "?ns=" + ns
	body := get("/v2/"+repo+"/manifests/"+tag+q, manifestAccept)
	mf, err := v1.ParseManifest(strings.NewReader(string(body)))
	if err != nil {
		t.Fatalf("GET manifest %s:%s?ns=%s: %v", repo, tag, ns, err)
	}
	for _, d := range append([]v1.Descriptor{mf.Config}, mf.Layers...) {
		path := "/v2/" + repo + "/blobs/" + d.Digest.String() + q
		if got := regtest.DigestOf(get(path, nil)); got != d.Digest {
			t.Errorf("GET %s: content digest = %s", path, got)
		}
	}
	return regtest.DigestOf(body)
}

// assertNoSecrets fails if the mirror's logs or any of the given texts
// (error bodies, client errors) hold a password or a base64 Docker auth.
func assertNoSecrets(t *testing.T, m *mirrorProc, texts ...string) {
	t.Helper()
	secrets := []string{testPassword, wrongPassword, dockerAuth(testUser, testPassword), dockerAuth(testUser, wrongPassword)}
	logs := m.Logs()
	for _, s := range secrets {
		if strings.Contains(logs, s) {
			t.Errorf("the mirror's logs hold the secret %q:\n%s", s, logs)
		}
		for _, txt := range texts {
			if strings.Contains(txt, s) {
				t.Errorf("an answer holds the secret %q: %s", s, txt)
			}
		}
	}
}

// threeUpstreams is A (plain HTTP, the default), B (TLS, self-signed) and C
// (behind a bearer-token challenge), each holding a different image as
// team/app:1.0.
type threeUpstreams struct {
	a          *upstreamServer
	b          *tlsUpstream
	c          *authUpstream
	imgA, imgB v1.Hash
	imgC       v1.Hash
}

func startThreeUpstreams(t *testing.T) threeUpstreams {
	t.Helper()
	u := threeUpstreams{a: startUpstream(t, nil), b: startTLSUpstream(t), c: startAuthUpstream(t)}
	randomImage := func() v1.Image {
		img, err := random.Image(1024, 2)
		if err != nil {
			t.Fatal(err)
		}
		return img
	}
	a := randomImage()
	if err := remote.Write(ref(t, u.a.Host(), appRepo+":"+appTag), a, remote.WithContext(t.Context())); err != nil {
		t.Fatal(err)
	}
	u.imgA = regtest.Digest(t, a)
	u.imgB = u.b.push(t, appRepo+":"+appTag, randomImage())
	u.imgC = u.c.push(t, appRepo+":"+appTag, randomImage())
	return u
}

// env configures a mirror with all three upstreams, docker.io (A) the
// default, B trusted as insecure by name and C's credentials in a file.
func (u threeUpstreams) env(t *testing.T) []string {
	return []string{
		upstreamsEnv("docker.io", u.a.URL, tlsName, u.b.URL, authName, u.c.URL),
		"REGMIRROR_INSECURE_REGISTRIES=" + tlsName,
		credentialsFile(t, strings.TrimPrefix(u.c.URL, "http://"), testUser, testPassword),
	}
}

func TestUpstreamsRouteByNSPrefixAndDefault(t *testing.T) {
	t.Parallel()
	u := startThreeUpstreams(t)
	m := startMirror(t, "docker.io", "", u.env(t)...)

	// Every upstream holds team/app:1.0, each a different image: a request
	// routed to the wrong upstream, or a tag answer cached under the wrong
	// registry, gets the wrong digest. The rows run in order, so the ?ns=
	// rows also meet tag answers the earlier rows cached.
	tests := []struct {
		name     string
		ref      string // for ggcr, under the mirror's host; empty for ?ns=
		ns       string // ?ns= value
		registry string // OCI-Namespace of every answer
		want     v1.Hash
	}{
		{name: "plain path goes to the default", ref: appRepo + ":" + appTag, registry: "docker.io", want: u.imgA},
		{name: "prefix tls.local", ref: tlsName + "/" + appRepo + ":" + appTag, registry: tlsName, want: u.imgB},
		{name: "prefix c.local", ref: authName + "/" + appRepo + ":" + appTag, registry: authName, want: u.imgC},
		{name: "prefix docker.io", ref: "docker.io/" + appRepo + ":" + appTag, registry: "docker.io", want: u.imgA},
		{name: "ns tls.local", ns: tlsName, registry: tlsName, want: u.imgB},
		{name: "ns c.local", ns: authName, registry: authName, want: u.imgC},
		{name: "ns docker.io", ns: "docker.io", registry: "docker.io", want: u.imgA},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.ns != "" {
				if got := pullByNS(t, m, appRepo, appTag, tt.ns); got != tt.want {
					t.Errorf("pull %s:%s?ns=%s: digest = %s, want %s", appRepo, appTag, tt.ns, got, tt.want)
				}
				return
			}
			rec := newNSRecorder()
			pullImage(t, m, tt.ref, tt.want, remote.WithTransport(rec))
			if ok, seen := rec.only(tt.registry); !ok {
				t.Errorf("pull %s: OCI-Namespace headers = %v, want only %q", tt.ref, seen, tt.registry)
			}
		})
	}

	// Each upstream was asked for its own tag exactly once: the later rows
	// were answered from the tag cache (TTL 5m), under the right registry.
	tagPath := "/v2/" + appRepo + "/manifests/" + appTag
	for _, c := range []struct {
		name string
		n    int
	}{
		{"A", u.a.Count(http.MethodGet, tagPath)},
		{"B", u.b.Count(http.MethodGet, tagPath)},
		{"C", u.c.Count(http.MethodGet, tagPath)},
	} {
		if c.n != 1 {
			t.Errorf("upstream %s: GET %s: %d times, want 1", c.name, tagPath, c.n)
		}
	}
	m.Stop()
	assertNoSecrets(t, m)
}

func TestUpstreamsShareOneBlobStore(t *testing.T) {
	t.Parallel()
	a := startUpstream(t, nil)
	c := startAuthUpstream(t)

	// The same layer, byte for byte, in an image on A and in another on C.
	shared, err := random.Layer(64<<10, types.DockerLayer)
	if err != nil {
		t.Fatal(err)
	}
	sharedDigest := regtest.Digest(t, shared)
	withShared := func() v1.Image {
		base, err := random.Image(1024, 1)
		if err != nil {
			t.Fatal(err)
		}
		img, err := mutate.AppendLayers(base, shared)
		if err != nil {
			t.Fatal(err)
		}
		return img
	}
	imgA, imgC := withShared(), withShared()
	if err := remote.Write(ref(t, a.Host(), "team/shared:1"), imgA, remote.WithContext(t.Context())); err != nil {
		t.Fatal(err)
	}
	c.push(t, "team/shared:1", imgC)

	m := startMirror(t, a.URL, "", upstreamsEnv(authName, c.URL), credentialsFile(t, strings.TrimPrefix(c.URL, "http://"), testUser, testPassword))
	pullImage(t, m, "team/shared:1", regtest.Digest(t, imgA))
	pullImage(t, m, authName+"/team/shared:1", regtest.Digest(t, imgC))

	files := blobFiles(t, m.DataDir, sharedDigest)
	wantFile := filepath.Join(m.DataDir, "blobs", "sha256", sharedDigest.Hex[:2], sharedDigest.Hex)
	if len(files) != 1 || files[0] != wantFile {
		t.Errorf("cached copies of the shared layer = %v, want just %s", files, wantFile)
	}
	sharedPath := "/v2/team/shared/blobs/" + sharedDigest.String()
	if n := a.Count(http.MethodGet, sharedPath); n != 1 {
		t.Errorf("A: GET %s: %d times, want 1", sharedPath, n)
	}
	if n := c.Count(http.MethodGet, sharedPath); n != 0 {
		t.Errorf("C: GET %s: %d times, want 0 (the mirror had it from A)", sharedPath, n)
	}
	// C was asked for what only it has: the pull of its image went there.
	for _, h := range blobsOf(t, imgC) {
		if h == sharedDigest {
			continue
		}
		if p := "/v2/team/shared/blobs/" + h.String(); c.Count(http.MethodGet, p) != 1 {
			t.Errorf("C: GET %s: %d times, want 1", p, c.Count(http.MethodGet, p))
		}
	}
}

// connCounter is a bare TCP listener that accepts connections and closes
// them, for "nothing connected here" assertions.
type connCounter struct {
	ln       net.Listener
	accepted chan string // remote address of each accepted connection
}

func listenCounting(t *testing.T) *connCounter {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	c := &connCounter{ln: ln, accepted: make(chan string, 64)}
	go func() {
		defer close(c.accepted)
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			c.accepted <- conn.RemoteAddr().String()
			conn.Close()
		}
	}()
	t.Cleanup(func() { ln.Close() })
	return c
}

// count returns how many connections reached the listener before now, and
// closes it. It dials a sentinel connection of its own: the kernel's accept
// queue is first in, first out, so everything accepted before the sentinel
// connected earlier.
func (c *connCounter) count(t *testing.T) int {
	t.Helper()
	defer c.ln.Close()
	s, err := net.Dial("tcp", c.ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	sentinel := s.LocalAddr().String()
	n := 0
	timeout := time.After(guard)
	for {
		select {
		case addr, ok := <-c.accepted:
			if !ok {
				t.Fatal("listener closed before the sentinel connection arrived")
			}
			if addr == sentinel {
				return n
			}
			n++
		case <-timeout:
			t.Fatalf("the sentinel connection was not accepted within %s", guard)
		}
	}
}

func TestUpstreamsUnconfiguredRegistryRefused(t *testing.T) {
	t.Parallel()
	a := startUpstream(t, nil)
	stranger := listenCounting(t)
	host := stranger.ln.Addr().String() // 127.0.0.1:port: a registry name, but not configured
	m := startMirror(t, a.URL, "", upstreamsEnv(tlsName, "https://127.0.0.1:1"))

	digest := "sha256:" + strings.Repeat("ab", 32)
	tests := []struct {
		name string
		path string
	}{
		{name: "manifest by prefix", path: "/v2/" + host + "/x/manifests/1"},
		{name: "manifest by ns", path: "/v2/x/manifests/1?ns=" + host},
		{name: "blob by prefix", path: "/v2/" + host + "/x/y/blobs/" + digest},
		{name: "blob by ns", path: "/v2/x/blobs/" + digest + "?ns=" + host},
		{name: "tags by prefix", path: "/v2/" + host + "/x/tags/list"},
		{name: "tags by ns", path: "/v2/x/tags/list?ns=" + host},
		{name: "manifest by ns, a host without a port", path: "/v2/x/manifests/1?ns=registry.example"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp, body := m.do(http.MethodGet, tt.path, nil)
			if resp.StatusCode != http.StatusNotFound {
				t.Fatalf("GET %s: status = %d, want %d; body %s", tt.path, resp.StatusCode, http.StatusNotFound, body)
			}
			code, msg := regtest.OCIError(t, resp, body)
			if code != "NAME_UNKNOWN" || !strings.Contains(msg, "REGMIRROR_UPSTREAMS") {
				t.Errorf("GET %s: error %s %q, want NAME_UNKNOWN naming REGMIRROR_UPSTREAMS", tt.path, code, msg)
			}
		})
	}
	m.Stop() // anything the mirror was going to dial, it has dialled
	if n := stranger.count(t); n != 0 {
		t.Errorf("connections to the unconfigured registry %s = %d, want 0", host, n)
	}
	if n := a.Total(); n != 0 {
		t.Errorf("requests to the default upstream = %d, want 0 (no fallback for an unknown registry): %v", n, a.Snapshot())
	}
}

func TestUpstreamsSelfSignedTLS(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		env  func(t *testing.T, b *tlsUpstream) []string
		ok   bool // the pull works; otherwise the mirror answers 502
	}{
		{name: "not trusted", env: func(*testing.T, *tlsUpstream) []string { return nil }},
		{name: "insecure by name", ok: true, env: func(*testing.T, *tlsUpstream) []string {
			return []string{"REGMIRROR_INSECURE_REGISTRIES=" + tlsName}
		}},
		{name: "insecure by URL host", ok: true, env: func(_ *testing.T, b *tlsUpstream) []string {
			return []string{"REGMIRROR_INSECURE_REGISTRIES=" + b.host()}
		}},
		{name: "certificate in REGMIRROR_CA_FILE", ok: true, env: func(t *testing.T, b *tlsUpstream) []string {
			return []string{"REGMIRROR_CA_FILE=" + b.caFile(t)}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			b := startTLSUpstream(t)
			img, err := random.Image(1024, 2)
			if err != nil {
				t.Fatal(err)
			}
			want := b.push(t, appRepo+":"+appTag, img)
			env := append([]string{upstreamsEnv(tlsName, b.URL)}, tt.env(t, b)...)
			m := startMirror(t, tlsName, "", env...)

			if tt.ok {
				pullImage(t, m, appRepo+":"+appTag, want)
				if got := pullByNS(t, m, appRepo, appTag, tlsName); got != want {
					t.Errorf("pull by ns: digest = %s, want %s", got, want)
				}
			} else {
				for _, path := range []string{
					"/v2/" + appRepo + "/manifests/" + appTag,
					"/v2/" + appRepo + "/blobs/" + regtest.Digest(t, img).String() + "?ns=" + tlsName,
				} {
					resp, body := m.do(http.MethodGet, path, nil)
					if resp.StatusCode != http.StatusBadGateway {
						t.Fatalf("GET %s: status = %d, want %d; body %s", path, resp.StatusCode, http.StatusBadGateway, body)
					}
					_, msg := regtest.OCIError(t, resp, body)
					if !strings.Contains(msg, "REGMIRROR_INSECURE_REGISTRIES") || !strings.Contains(msg, "REGMIRROR_CA_FILE") {
						t.Errorf("GET %s: message %q names neither REGMIRROR_INSECURE_REGISTRIES nor REGMIRROR_CA_FILE", path, msg)
					}
				}
				if n := b.Total(); n != 0 {
					t.Errorf("requests that reached the untrusted upstream = %d, want 0: %v", n, b.Snapshot())
				}
			}
			m.Stop()
			errs := b.closedLog()
			if strings.Contains(errs, "client sent an HTTP request") {
				t.Errorf("the mirror tried the https upstream over plain HTTP; its TLS server logged:\n%s", errs)
			}
			if !tt.ok && !strings.Contains(errs, "TLS handshake error") {
				t.Errorf("the upstream logged no failed TLS handshake: did the mirror reach it at all? log:\n%s", errs)
			}
		})
	}
}

func TestUpstreamsCredentials(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name       string
		env        func(t *testing.T, host string) []string // host: where the credentials go
		wantStatus int                                      // for the manifest; 200 means the whole pull works
		wantCode   string
		wantText   string // in the error message
	}{
		{name: "credentials file", wantStatus: http.StatusOK, env: func(t *testing.T, host string) []string {
			return []string{credentialsFile(t, host, testUser, testPassword)}
		}},
		{name: "docker config", wantStatus: http.StatusOK, env: func(t *testing.T, host string) []string {
			return []string{dockerConfig(t, host, testUser, testPassword)}
		}},
		// The token server refuses the wrong password with 401, so the token
		// handshake fails with 401 and the mirror passes that on: 401 UNAUTHORIZED.
		{name: "wrong password in credentials file", wantStatus: http.StatusUnauthorized, wantCode: "UNAUTHORIZED", wantText: "REGMIRROR_CREDENTIALS_FILE", env: func(t *testing.T, host string) []string {
			return []string{credentialsFile(t, host, testUser, wrongPassword)}
		}},
		{name: "wrong password in docker config", wantStatus: http.StatusUnauthorized, wantCode: "UNAUTHORIZED", wantText: "REGMIRROR_DOCKER_CONFIG", env: func(t *testing.T, host string) []string {
			return []string{dockerConfig(t, host, testUser, wrongPassword)}
		}},
		{name: "no credentials", wantStatus: http.StatusUnauthorized, wantCode: "UNAUTHORIZED", wantText: "private or does not exist", env: func(*testing.T, string) []string { return nil }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			c := startAuthUpstream(t)
			img, err := random.Image(1024, 2)
			if err != nil {
				t.Fatal(err)
			}
			want := c.push(t, appRepo+":"+appTag, img)
			// Credentials are keyed by the host they are sent to, not by the
			// registry's name (c.local).
			env := append([]string{upstreamsEnv(authName, c.URL)}, tt.env(t, strings.TrimPrefix(c.URL, "http://"))...)
			m := startMirror(t, authName, "", env...)

			path := "/v2/" + appRepo + "/manifests/" + appTag
			resp, body := m.do(http.MethodGet, path, manifestAccept)
			if resp.StatusCode != tt.wantStatus {
				t.Fatalf("GET %s: status = %d, want %d; body %s", path, resp.StatusCode, tt.wantStatus, body)
			}
			st := c.auth.stats()
			if tt.wantStatus == http.StatusOK {
				pullImage(t, m, authName+"/"+appRepo+":"+appTag, want)
				if st.issued != 1 || st.badCreds != 0 {
					t.Errorf("token server: issued %d, refused %d; want 1 issued, none refused", st.issued, st.badCreds)
				}
			} else {
				if code := regtest.OCICode(t, resp, body); code != tt.wantCode {
					t.Errorf("GET %s: code = %s, want %s; body %s", path, code, tt.wantCode, body)
				}
				if !strings.Contains(string(body), tt.wantText) {
					t.Errorf("GET %s: body %s, want it to say %q", path, body, tt.wantText)
				}
				if st.issued != 0 || st.badCreds == 0 || st.authorized != 0 {
					t.Errorf("token server: issued %d, refused %d; registry let through %d; want 0, at least 1, 0", st.issued, st.badCreds, st.authorized)
				}
			}
			m.Stop()
			assertNoSecrets(t, m, string(body))
		})
	}
}

func TestUpstreamsTokenReuseAndRefresh(t *testing.T) {
	t.Parallel()
	c := startAuthUpstream(t)
	want := map[string]v1.Hash{}
	for _, tag := range []string{"v1", "v2", "v3", "v4"} {
		img, err := random.Image(512, 1)
		if err != nil {
			t.Fatal(err)
		}
		want[tag] = c.push(t, appRepo+":"+tag, img)
	}
	// With a tag TTL of 0 every pull by tag asks upstream, so every pull
	// below really talks to C.
	m := startMirror(t, authName, "", upstreamsEnv(authName, c.URL),
		credentialsFile(t, strings.TrimPrefix(c.URL, "http://"), testUser, testPassword), "REGMIRROR_TAG_TTL=0")
	pull := func(tag string) {
		t.Helper()
		pullImage(t, m, authName+"/"+appRepo+":"+tag, want[tag])
	}

	for _, tag := range []string{"v1", "v2", "v3", "v1", "v2"} {
		pull(tag)
	}
	st := c.auth.stats()
	if st.issued != 1 {
		t.Errorf("tokens issued for five pulls of one repository = %d, want 1", st.issued)
	}
	// v1, v2, v3 by GET, the repeats by HEAD, and the blobs: well above 5.
	if st.authorized < 5 {
		t.Errorf("authorized requests to C = %d, want at least 5 (did the pulls reach it?)", st.authorized)
	}

	c.auth.expire()
	// One request alone, so that exactly one request meets the stale token.
	path := "/v2/" + appRepo + "/manifests/v4?ns=" + authName
	resp, body := m.do(http.MethodGet, path, manifestAccept)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s after the token expired: status = %d, want %d; body %s", path, resp.StatusCode, http.StatusOK, body)
	}
	if got := regtest.DigestOf(body); got != want["v4"] {
		t.Errorf("GET %s: digest = %s, want %s", path, got, want["v4"])
	}
	after := c.auth.stats()
	if n := after.issued - st.issued; n != 1 {
		t.Errorf("tokens issued after the expiry = %d, want 1", n)
	}
	if after.stale != 1 {
		t.Errorf("requests refused for the expired token = %d, want 1", after.stale)
	}

	for _, tag := range []string{"v4", "v1", "v3"} {
		pull(tag)
	}
	if got := c.auth.stats().issued; got != 2 {
		t.Errorf("tokens issued in all = %d, want 2 (one, then one refresh)", got)
	}
	m.Stop()
	assertNoSecrets(t, m)
}
