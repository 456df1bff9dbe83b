package test

import (
	"bytes"
	"context"
	"encoding/base64"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/regmirror/regmirror/test/regtest"
)

// pushRandom pushes a random image of n layers to repoTag at up.
func pushRandom(t *testing.T, up *upstreamServer, repoTag string, n int64) v1.Image {
	t.Helper()
	img, err := random.Image(2048, n)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(ref(t, up.Host(), repoTag), img, remote.WithContext(t.Context())); err != nil {
		t.Fatal(err)
	}
	return img
}

// twoOrigins is a docker.io and a ghcr.io origin holding different images
// under the same repository name, and a regional regmirror in front of both.
type twoOrigins struct {
	hub, ghcr       *upstreamServer
	hubImg, ghcrImg v1.Image
	regional        *mirrorProc
}

func startTwoOrigins(t *testing.T, regionalEnv ...string) twoOrigins {
	t.Helper()
	o := twoOrigins{hub: startUpstream(t, nil), ghcr: startUpstream(t, nil)}
	o.hubImg = pushRandom(t, o.hub, "other/tool:1.0", 2)
	o.ghcrImg = pushRandom(t, o.ghcr, "other/tool:1.0", 3)
	o.regional = startMirror(t, o.hub.URL, "", append([]string{"REGMIRROR_UPSTREAMS=ghcr.io=" + o.ghcr.URL}, regionalEnv...)...)
	return o
}

// The wrong-image bug of mirrors of mirrors: a site whose ghcr.io upstream is
// a regional mirror must get ghcr.io's image for every ghcr.io name, with
// either way of naming the registry at the regional, and docker.io's for
// docker.io names.
func TestSiteThroughRegionalKeepsRegistriesApart(t *testing.T) {
	t.Parallel()
	o := startTwoOrigins(t)
	hubDigest, ghcrDigest := regtest.Digest(t, o.hubImg), regtest.Digest(t, o.ghcrImg)
	if hubDigest == ghcrDigest {
		t.Fatal("the two origins hold the same image")
	}
	sites := map[string]*mirrorProc{
		"ns": startMirror(t, o.regional.URL+"?ns=docker.io", "",
			"REGMIRROR_UPSTREAMS=ghcr.io="+o.regional.URL+"?ns=ghcr.io"),
		"prefix": startMirror(t, o.regional.URL+"/docker.io", "",
			"REGMIRROR_UPSTREAMS=ghcr.io="+o.regional.URL+"/ghcr.io"),
	}
	for form, site := range sites {
		t.Run(form, func(t *testing.T) {
			pullImage(t, site, "ghcr.io/other/tool:1.0", ghcrDigest)
			pullImage(t, site, "ghcr.io/other/tool@"+ghcrDigest.String(), ghcrDigest)
			pullImage(t, site, "other/tool:1.0", hubDigest)
			pullImage(t, site, "other/tool@"+hubDigest.String(), hubDigest)
			// containerd's way of naming the registry at the site.
			resp, _ := site.do(http.MethodHead, "/v2/other/tool/manifests/1.0?ns=ghcr.io", nil)
			if got := resp.Header.Get("Docker-Content-Digest"); got != ghcrDigest.String() {
				t.Errorf("HEAD ?ns=ghcr.io: digest %q, want ghcr.io's %s", got, ghcrDigest)
			}
		})
	}
	// Every ghcr.io request reached the ghcr.io origin through the regional,
	// and the regional logged them as ghcr.io's.
	for _, line := range strings.Split(o.regional.Logs(), "\n") {
		if strings.Contains(line, `"msg":"request"`) && strings.Contains(line, ghcrDigest.Hex) && !strings.Contains(line, `"upstream":"ghcr.io"`) {
			t.Errorf("regional served ghcr.io's manifest as another registry's: %s", line)
		}
	}
}

// A site configured the old way (ghcr.io=http://regional:5000, no ?ns= or
// prefix) would get docker.io's image under the ghcr.io name; the regional's
// Oci-Namespace gives it away, and the site refuses it instead.
func TestSiteRefusesARegionalAnsweringForAnotherRegistry(t *testing.T) {
	t.Parallel()
	o := startTwoOrigins(t)
	site := startMirror(t, o.regional.URL, "", "REGMIRROR_UPSTREAMS=ghcr.io="+o.regional.URL)
	hubDigest := regtest.Digest(t, o.hubImg)
	resp, body := site.do(http.MethodGet, "/v2/ghcr.io/other/tool/manifests/1.0", nil)
	if resp.StatusCode != http.StatusBadGateway || strings.Contains(resp.Header.Get("Docker-Content-Digest"), hubDigest.Hex) {
		t.Fatalf("GET ghcr.io/other/tool:1.0 through a plain regional URL: %d %s, want 502 and never docker.io's image", resp.StatusCode, body)
	}
	if !strings.Contains(string(body), "?ns=ghcr.io") {
		t.Errorf("the error does not say how to fix the setting: %s", body)
	}
	// The default upstream is docker.io at the regional too: that works.
	pullImage(t, site, "other/tool:1.0", hubDigest)
}

// authRecorder stands in front of a regional mirror that asks for HTTP Basic
// credentials, and records every Authorization header it and the blob
// storage it redirects to are sent.
type authRecorder struct {
	mu      sync.Mutex
	seen    []string // at the regional
	storage []string // at the blob storage, another host
}

func (a *authRecorder) record(to *[]string, v string) {
	a.mu.Lock()
	*to = append(*to, v)
	a.mu.Unlock()
}

func startAuthRecorder(t *testing.T, regional *mirrorProc) (*authRecorder, *httptest.Server) {
	t.Helper()
	target, _ := url.Parse(regional.URL)
	rp := httputil.NewSingleHostReverseProxy(target)
	a := &authRecorder{}
	storage := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		a.record(&a.storage, r.Header.Get("Authorization"))
		rp.ServeHTTP(w, r)
	}))
	t.Cleanup(storage.Close)
	// Another host name for the same loopback address.
	storageURL := strings.Replace(storage.URL, "127.0.0.1", "localhost", 1)
	front := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		auth := r.Header.Get("Authorization")
		a.record(&a.seen, auth)
		if auth == "" {
			w.Header().Set("WWW-Authenticate", `Basic realm="regional"`)
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		if r.Method == http.MethodGet && strings.Contains(r.URL.Path, "/blobs/") {
			http.Redirect(w, r, storageURL+r.URL.RequestURI(), http.StatusTemporaryRedirect)
			return
		}
		r.Header.Del("Authorization")
		rp.ServeHTTP(w, r)
	}))
	t.Cleanup(front.Close)
	return a, front
}

// Upstream credentials are chosen by the host they are sent to: a site whose
// docker.io upstream is a regional mirror sends the regional's password
// there, never Docker Hub's, and a redirect to another host carries none.
func TestCredentialsGoByHostNotRegistryName(t *testing.T) {
	t.Parallel()
	hub := startUpstream(t, nil)
	img := pushRandom(t, hub, "library/app:1", 2)
	regional := startMirror(t, hub.URL, "")
	rec, front := startAuthRecorder(t, regional)
	creds := filepath.Join(t.TempDir(), "credentials")
	frontHost := strings.TrimPrefix(front.URL, "http://")
	writeFile(t, creds, "docker.io hubuser hubsecret\n"+frontHost+" regionaluser regionalsecret\n")
	site := startMirror(t, front.URL, "", "REGMIRROR_CREDENTIALS_FILE="+creds)
	want := regtest.Digest(t, img)
	pullImage(t, site, "app:1", want)

	regionalAuth := "Basic " + base64.StdEncoding.EncodeToString([]byte("regionaluser:regionalsecret"))
	rec.mu.Lock()
	defer rec.mu.Unlock()
	used := false
	for _, a := range rec.seen {
		if a != "" && a != regionalAuth {
			t.Errorf("the regional was sent %q, want only its own credentials", a)
		}
		used = used || a == regionalAuth
	}
	if !used {
		t.Errorf("the regional's own credentials were never sent; saw %q", rec.seen)
	}
	if len(rec.storage) == 0 {
		t.Fatal("no blob was redirected to the storage host")
	}
	for _, a := range rec.storage {
		if a != "" {
			t.Errorf("a redirect to another host carried Authorization %q", a)
		}
	}
	if logs := site.Logs() + regional.Logs(); strings.Contains(logs, "hubsecret") || strings.Contains(logs, "regionalsecret") {
		t.Error("a password is in the logs")
	}
}

// site is a site regmirror whose docker.io upstream is the regional, both
// asking upstream on every tag request (TTL 0).
func startTier(t *testing.T, originWrap func(http.Handler) http.Handler) (origin *upstreamServer, regional, site *mirrorProc) {
	t.Helper()
	origin = startUpstream(t, originWrap)
	regional = startMirror(t, origin.URL, "", "REGMIRROR_TAG_TTL=0")
	site = startMirror(t, regional.URL+"?ns=docker.io", "", "REGMIRROR_TAG_TTL=0")
	return origin, regional, site
}

// A regional's stale answer (its origin is down: Warning 299) reaches the
// site's clients with its Warning, and the site counts it as stale.
func TestRegionalStaleAnswerIsStaleAtTheSite(t *testing.T) {
	t.Parallel()
	origin, regional, site := startTier(t, nil)
	one := regtest.Digest(t, pushRandom(t, origin, "team/app:1", 1))
	two := regtest.Digest(t, pushRandom(t, origin, "team/app:2", 1))
	pullImage(t, site, "team/app:1", one)     // both tiers know tag 1
	pullImage(t, regional, "team/app:2", two) // only the regional knows tag 2
	origin.Close()

	for _, tc := range []struct {
		tag    string
		method string
		want   v1.Hash
	}{{"1", http.MethodHead, one}, {"1", http.MethodGet, one}, {"2", http.MethodGet, two}, {"2", http.MethodHead, two}} {
		path := "/v2/team/app/manifests/" + tc.tag
		resp, body := site.do(tc.method, path, manifestAccept)
		if resp.StatusCode != http.StatusOK || resp.Header.Get("Docker-Content-Digest") != tc.want.String() {
			t.Fatalf("%s %s at the site: %d %s, want 200 with %s", tc.method, path, resp.StatusCode, body, tc.want)
		}
		if w := resp.Header.Get("Warning"); !strings.HasPrefix(w, "299 ") || !strings.Contains(w, "docker.io unreachable") {
			t.Errorf("%s %s at the site: Warning %q, want the regional's 299", tc.method, path, w)
		}
	}
	// The regional lists the tags its cache knows, and says so: the site's
	// client is told too.
	resp, body := site.do(http.MethodGet, "/v2/team/app/tags/list", nil)
	if w := resp.Header.Get("Warning"); resp.StatusCode != http.StatusOK || !strings.HasPrefix(w, "299 ") || !strings.Contains(w, "docker.io unreachable") {
		t.Errorf("GET tags/list at the site: %d, Warning %q, body %s; want 200 with the regional's 299", resp.StatusCode, w, body)
	}
	if n := regtest.Scrape(t, site.URL+"/metrics").Value("regmirror_stale_answers_total", "registry", "docker.io"); n < 4 {
		t.Errorf("site regmirror_stale_answers_total = %v, want at least 4", n)
	}
}

// A regional's 503 for an image it lacks (its origin is down) is an answer
// about that image: the site goes on serving all the regional has.
func TestRegionalUnavailableForOneImageIsNotAnOutage(t *testing.T) {
	t.Parallel()
	origin, regional, site := startTier(t, nil)
	have := regtest.Digest(t, pushRandom(t, origin, "team/have:1", 2))
	lack := regtest.Digest(t, pushRandom(t, origin, "team/lack:1", 2))
	pullImage(t, regional, "team/have:1", have)
	origin.Close()

	for _, path := range []string{"/v2/team/lack/manifests/1", "/v2/team/lack/manifests/" + lack.String()} {
		for _, method := range []string{http.MethodGet, http.MethodHead} {
			if resp, body := site.do(method, path, manifestAccept); resp.StatusCode != http.StatusServiceUnavailable {
				t.Fatalf("%s %s at the site: %d %s, want 503", method, path, resp.StatusCode, body)
			}
		}
	}
	pullImage(t, site, "team/have:1", have)
	pullImage(t, site, "team/have@"+have.String(), have)
	if n := regtest.Scrape(t, site.URL+"/metrics").Value("regmirror_upstream_up", "registry", "docker.io"); n != 1 {
		t.Errorf("site regmirror_upstream_up = %v, want 1: the regional answered", n)
	}
	if strings.Contains(site.Logs(), "upstream down") {
		t.Errorf("the site marked the regional down for one image's 503; logs:\n%s", site.Logs())
	}
}

// The origin's pull quota headers reach the site's clients through the regional.
func TestRateLimitHeadersPassThroughTiers(t *testing.T) {
	t.Parallel()
	quota := func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if strings.Contains(r.URL.Path, "/team/limited/manifests/") {
				w.Header().Set("Ratelimit-Limit", "100;w=21600")
				w.Header().Set("Ratelimit-Remaining", "0;w=21600")
				w.Header().Set("Retry-After", "60")
				w.Header().Set("Content-Type", "application/json")
				w.WriteHeader(http.StatusTooManyRequests)
				w.Write([]byte(`{"errors":[{"code":"TOOMANYREQUESTS","message":"pull rate limit"}]}`))
				return
			}
			if strings.Contains(r.URL.Path, "/manifests/") {
				w.Header().Set("Ratelimit-Limit", "100;w=21600")
				w.Header().Set("Ratelimit-Remaining", "76;w=21600")
				w.Header().Set("Docker-Ratelimit-Source", "203.0.113.7")
			}
			next.ServeHTTP(w, r)
		})
	}
	origin, _, site := startTier(t, quota)
	want := regtest.Digest(t, pushRandom(t, origin, "team/app:1", 1))
	for _, method := range []string{http.MethodGet, http.MethodHead} {
		resp, body := site.do(method, "/v2/team/app/manifests/1", manifestAccept)
		if resp.StatusCode != http.StatusOK || resp.Header.Get("Docker-Content-Digest") != want.String() {
			t.Fatalf("%s at the site: %d %s", method, resp.StatusCode, body)
		}
		if got := resp.Header.Get("Ratelimit-Remaining"); got != "76;w=21600" {
			t.Errorf("%s at the site: Ratelimit-Remaining %q, want the origin's 76;w=21600", method, got)
		}
		if got := resp.Header.Get("Ratelimit-Limit"); got != "100;w=21600" {
			t.Errorf("%s at the site: Ratelimit-Limit %q, want the origin's", method, got)
		}
	}
	if n := regtest.Scrape(t, site.URL+"/metrics").Value("regmirror_upstream_ratelimit_remaining", "registry", "docker.io"); n != 76 {
		t.Errorf("site regmirror_upstream_ratelimit_remaining = %v, want 76", n)
	}
	// Out of quota at the origin: the 429 reaches the site's client with the
	// origin's quota and Retry-After.
	resp, body := site.do(http.MethodGet, "/v2/team/limited/manifests/1", manifestAccept)
	if resp.StatusCode != http.StatusTooManyRequests {
		t.Fatalf("GET an image over quota at the site: %d %s, want 429", resp.StatusCode, body)
	}
	for k, want := range map[string]string{"Ratelimit-Remaining": "0;w=21600", "Ratelimit-Limit": "100;w=21600", "Retry-After": "60"} {
		if got := resp.Header.Get(k); got != want {
			t.Errorf("429 at the site: %s %q, want the origin's %q", k, got, want)
		}
	}
}

// switchable is an upstream fault: while down, every request gets a bare 503
// (a load balancer in front of a dead registry).
type switchable struct{ down atomic.Bool }

func (s *switchable) wrap(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if s.down.Load() {
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		next.ServeHTTP(w, r)
	})
}

// With the primary down from the start, an image nobody cached pulls whole
// from the fallback, with the same digests; the tag carries a Warning naming
// the fallback, is counted per fallback, and the primary's own answer
// replaces it as soon as the primary is back.
func TestFallbackAnswersWhilePrimaryIsDown(t *testing.T) {
	t.Parallel()
	var sw switchable
	sw.down.Store(true)
	primary := startUpstream(t, sw.wrap)
	fallback := startUpstream(t, nil)
	onFallback := regtest.Digest(t, pushRandom(t, fallback, "team/app:1", 3))
	sw.down.Store(false)
	onPrimary := regtest.Digest(t, pushRandom(t, primary, "team/app:1", 2)) // the tag moved; the fallback lags
	sw.down.Store(true)

	dead := startUpstream(t, nil) // a first fallback that is gone too
	dead.Close()
	m := startMirror(t, primary.URL, "", "REGMIRROR_FALLBACKS=docker.io="+dead.URL+",docker.io="+fallback.URL+"?ns=docker.io")

	pullImage(t, m, "team/app:1", onFallback)
	pullImage(t, m, "team/app@"+onFallback.String(), onFallback)
	resp, body := m.do(http.MethodGet, "/v2/team/app/manifests/1", manifestAccept)
	want := `299 - "answered by ` + fallback.Host() + `"`
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Warning") != want {
		t.Fatalf("GET tag while the primary is down: %d, Warning %q, want 200 with %q; body %s", resp.StatusCode, resp.Header.Get("Warning"), want, body)
	}
	mt := regtest.Scrape(t, m.URL+"/metrics")
	if n := mt.Value("regmirror_fallback_answers_total", "registry", "docker.io", "fallback", fallback.Host(), "op", "manifest"); n < 1 {
		t.Errorf("regmirror_fallback_answers_total for manifests = %v, want at least 1", n)
	}
	if n := mt.Value("regmirror_fallback_answers_total", "fallback", fallback.Host(), "op", "blob"); n < 3 {
		t.Errorf("regmirror_fallback_answers_total for blobs = %v, want at least 3", n)
	}
	if !strings.Contains(m.Logs(), `"msg":"answered by fallback"`) {
		t.Error("no log line says a fallback answered")
	}

	sw.down.Store(false)
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	if err := m.waitLog(ctx, func(rec map[string]any) bool { return rec["msg"] == "upstream up again" }); err != nil {
		t.Fatalf("the primary was not seen up again: %v", err)
	}
	resp, body = m.do(http.MethodGet, "/v2/team/app/manifests/1", manifestAccept)
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Docker-Content-Digest") != onPrimary.String() || resp.Header.Get("Warning") != "" {
		t.Fatalf("GET tag with the primary back: %d %s, Warning %q; want the primary's %s without a Warning; body %s",
			resp.StatusCode, resp.Header.Get("Docker-Content-Digest"), resp.Header.Get("Warning"), onPrimary, body)
	}
	pullImage(t, m, "team/app:1", onPrimary)
}

// A fallback that serves a tampered blob is caught: the client's download is
// aborted and nothing is stored.
func TestFallbackTamperedBlobIsCaught(t *testing.T) {
	t.Parallel()
	primary := startUpstream(t, nil)
	primary.Close()
	data, _ := regtest.RandomBlob(t, 256<<10)
	var path string
	fallback := startUpstream(t, func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.Method == http.MethodGet && r.URL.Path == path {
				next.ServeHTTP(&tamperWriter{ResponseWriter: w, at: int64(len(data) - 10)}, r)
				return
			}
			next.ServeHTTP(w, r)
		})
	})
	h := pushBlob(t, fallback, "library/app", data)
	path = "/v2/library/app/blobs/" + h.String()
	m := startMirror(t, primary.URL, "", "REGMIRROR_FALLBACKS=docker.io="+fallback.URL)

	got, err := readBlob(t.Context(), m.URL+"/v2/library/app/blobs/"+h.String(), func() {})
	if err == nil {
		t.Fatalf("a tampered blob from the fallback was served whole (%d bytes, digest %s)", len(got), regtest.DigestOf(got))
	}
	if files := blobFiles(t, m.DataDir, h); len(files) != 0 {
		t.Errorf("tampered blob stored: %v", files)
	}
	if n := fallback.Count(http.MethodGet, path); n == 0 {
		t.Fatal("the fallback was never asked for the blob")
	}
	// The download logs its failure as it ends, which may be after the client saw the abort.
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	if err := m.waitLog(ctx, func(rec map[string]any) bool {
		e, _ := rec["error"].(string)
		return rec["msg"] == "download failed" && (strings.Contains(e, "does not match") || strings.Contains(e, "mismatch"))
	}); err != nil {
		t.Errorf("no log line says the content did not match its digest (%v); logs:\n%s", err, m.Logs())
	}
	// Every try is caught again: the fallback keeps tampering.
	if got, err := readBlob(t.Context(), m.URL+"/v2/library/app/blobs/"+h.String(), func() {}); err == nil {
		t.Fatalf("a second GET served the tampered blob whole (%d bytes)", len(got))
	}
	if files := blobFiles(t, m.DataDir, h); len(files) != 0 {
		t.Errorf("tampered blob stored after a second GET: %v", files)
	}
}

// A tier with distribution's proxy (Debian's docker-registry, `proxy:
// remoteurl:`) as the regional: a site regmirror in front of it pulls whole
// images by tag and digest, and serves them again with the regional gone.
func TestSiteThroughDistributionProxy(t *testing.T) {
	t.Parallel()
	bin := lookClient(t, "docker-registry")[0]
	origin := startUpstream(t, nil)
	img := pushRandom(t, origin, "team/app:1", 3)
	want := regtest.Digest(t, img)

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close() // docker-registry takes an address, not a listener
	dir := t.TempDir()
	conf := filepath.Join(dir, "config.yml")
	writeFile(t, conf, fmt.Sprintf(`version: 0.1
log:
  level: warn
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: %s
http:
  addr: %s
  secret: regmirror-test
proxy:
  remoteurl: %s
`, filepath.Join(dir, "data"), addr, origin.URL))
	reg := exec.Command(bin, "serve", conf)
	var out bytes.Buffer
	reg.Stdout, reg.Stderr = &out, &out
	if err := reg.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { reg.Wait(); close(exited) }()
	stop := func() {
		reg.Process.Kill()
		<-exited
	}
	t.Cleanup(stop)
	regionalURL := "http://" + addr
	for {
		if resp, err := http.Get(regionalURL + "/v2/"); err == nil {
			resp.Body.Close()
			break
		}
		select {
		case <-exited:
			t.Fatalf("docker-registry exited: %s", out.String())
		case <-t.Context().Done():
			t.Fatal("docker-registry did not start")
		case <-time.After(20 * time.Millisecond): // polling a port that is not open yet
		}
	}

	site := startMirror(t, regionalURL, "")
	pullImage(t, site, "team/app:1", want)
	pullImage(t, site, "team/app@"+want.String(), want)
	if n := origin.CountPrefix(http.MethodGet, "/v2/team/app/blobs/"); n == 0 {
		t.Errorf("the origin was never asked for a blob: did the site bypass the regional?")
	}
	stop()
	pullImage(t, site, "team/app@"+want.String(), want)
	resp, _ := site.do(http.MethodGet, "/v2/team/app/manifests/1", manifestAccept)
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Docker-Content-Digest") != want.String() {
		t.Errorf("tag with the regional gone: %d %s, want 200 %s", resp.StatusCode, resp.Header.Get("Docker-Content-Digest"), want)
	}
}
