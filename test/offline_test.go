package test

// Offline behaviour, end to end: the upstream goes away (its port closed, or
// it accepts connections and never answers) and the mirror keeps serving what
// it has, asks the dead upstream nothing more until its probe finds it back,
// and says clearly what it cannot serve.

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"regexp"
	"slices"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/regmirror/regmirror/proxy"
	"github.com/regmirror/regmirror/test/regtest"
)

// offlineEnv makes every tag request ask upstream (REGMIRROR_TAG_TTL=0s), so
// that while upstream is down each one must fall back to the last answer:
// no test waits for a TTL to run out. (GORACE: a mirror built with -race
// otherwise sleeps 1s on its way out.)
var offlineEnv = []string{"REGMIRROR_TAG_TTL=0s", "GORACE=atexit_sleep_ms=0"}

// offlineAccept is the Accept header of a client that takes every manifest type.
var offlineAccept = http.Header{"Accept": {strings.Join([]string{
	string(types.OCIImageIndex), string(types.DockerManifestList),
	string(types.OCIManifestSchema1), string(types.DockerManifestSchema2),
}, ", ")}}

// offlineWarning is the stale marker RFC 7234 defines: code 299, agent "-",
// a quoted text.
var offlineWarning = regexp.MustCompile(`^299 - ".*unreachable.*"$`)

const (
	offlineMsgDown  = "upstream down: serving from cache until it answers again"
	offlineMsgUp    = "upstream up again"
	offlineMsgStale = "serving stale tag answer"
	offlinePing     = "GET /v2/" // the probe's request, as regtest.Counter keys it
)

// offlineWait waits until the mirror logs msg, for at most guard.
func offlineWait(t *testing.T, m *mirrorProc, msg string) map[string]any {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), guard)
	defer cancel()
	if err := m.waitLog(ctx, regtest.Msg(msg)); err != nil {
		t.Fatalf("waiting for the mirror to log %q: %v; logs:\n%s", msg, err, m.Logs())
	}
	return m.log.Records(0, regtest.Msg(msg))[0]
}

// offlineGetManifest GETs a manifest through the mirror and checks the
// status, the digest and whether the answer is marked stale.
func offlineGetManifest(t *testing.T, m *mirrorProc, path string, want v1.Hash, stale bool) {
	t.Helper()
	resp, body := regtest.Do(t, http.MethodGet, m.URL+path, offlineAccept)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: status = %d, want %d; body %s", path, resp.StatusCode, http.StatusOK, body)
	}
	if got := resp.Header.Get("Docker-Content-Digest"); got != want.String() {
		t.Errorf("GET %s: Docker-Content-Digest = %s, want %s", path, got, want)
	}
	if got := regtest.DigestOf(body); got != want {
		t.Errorf("GET %s: body hashes to %s, want %s", path, got, want)
	}
	warning := resp.Header.Values("Warning")
	switch {
	case stale && (len(warning) != 1 || !offlineWarning.MatchString(warning[0])):
		t.Errorf("GET %s: Warning = %q, want one `299 - \"…unreachable…\"`", path, warning)
	case !stale && len(warning) != 0:
		t.Errorf("GET %s: Warning = %q, want none", path, warning)
	}
}

// offlinePull is one pull through the mirror.
type offlinePull struct {
	name     string
	ref      string
	index    bool         // pull as an index, children included
	platform *v1.Platform // pull this platform's image out of an index
	want     v1.Hash
}

func (p offlinePull) run(t *testing.T, m *mirrorProc) {
	t.Helper()
	switch {
	case p.index:
		pullIndex(t, m, p.ref, p.want)
	case p.platform != nil:
		pullImage(t, m, p.ref, p.want, remote.WithPlatform(*p.platform))
	default:
		pullImage(t, m, p.ref, p.want)
	}
}

// offlineSeededPulls are the pulls of what seed pushed: by tag and by digest.
func offlineSeededPulls(t *testing.T, s seeded) []offlinePull {
	imgDigest, idxDigest := regtest.Digest(t, s.img), regtest.Digest(t, s.idx)
	arm64 := platforms[1]
	return []offlinePull{
		{name: "image by tag", ref: "library/multi:latest", want: imgDigest},
		{name: "image by digest", ref: "library/multi@" + imgDigest.String(), want: imgDigest},
		{name: "index by tag", ref: "library/idx:latest", index: true, want: idxDigest},
		{name: "index by digest", ref: "library/idx@" + idxDigest.String(), index: true, want: idxDigest},
		{name: "linux/arm64 out of the index by tag", ref: "library/idx:latest", platform: &arm64, want: childFor(t, s.idx, arm64)},
	}
}

func TestOfflineServesCachedContent(t *testing.T) {
	t.Parallel()
	up := startUpstream(t, nil)
	s := seed(t, up)
	m := startMirror(t, up.URL, "", offlineEnv...)
	pulls := offlineSeededPulls(t, s)
	for _, p := range pulls {
		p.run(t, m)
	}

	up.Close()
	for _, p := range pulls {
		t.Run(p.name, func(t *testing.T) { p.run(t, m) })
	}

	imgDigest, idxDigest := regtest.Digest(t, s.img), regtest.Digest(t, s.idx)
	answers := []struct {
		name  string
		path  string
		want  v1.Hash
		stale bool
	}{
		{name: "image by tag", path: "/v2/library/multi/manifests/latest", want: imgDigest, stale: true},
		{name: "index by tag", path: "/v2/library/idx/manifests/latest", want: idxDigest, stale: true},
		{name: "image by digest", path: "/v2/library/multi/manifests/" + imgDigest.String(), want: imgDigest},
		{name: "index by digest", path: "/v2/library/idx/manifests/" + idxDigest.String(), want: idxDigest},
	}
	for _, tt := range answers {
		t.Run("raw GET, "+tt.name, func(t *testing.T) { offlineGetManifest(t, m, tt.path, tt.want, tt.stale) })
	}

	// Each tag was served stale several times; each is logged at Warn once.
	for _, repo := range []string{"library/multi", "library/idx"} {
		lines := m.log.Records(0, func(rec map[string]any) bool {
			return rec["msg"] == offlineMsgStale && rec["repo"] == repo && rec["tag"] == "latest"
		})
		if len(lines) != 1 {
			t.Errorf("%s:latest: logged %q %d times, want 1; logs:\n%s", repo, offlineMsgStale, len(lines), m.Logs())
		}
		for _, rec := range lines {
			if rec["level"] != "warn" {
				t.Errorf("%s:latest: %q logged at %v, want warn", repo, offlineMsgStale, rec["level"])
			}
		}
	}
}

func TestOfflineRestartWhileUpstreamDown(t *testing.T) {
	t.Parallel()
	up := startUpstream(t, nil)
	s := seed(t, up)
	dir := t.TempDir()
	m := startMirror(t, up.URL, dir, offlineEnv...)
	pulls := offlineSeededPulls(t, s)
	for _, p := range pulls {
		p.run(t, m)
	}
	m.Stop()
	if code := m.ExitCode(); code != 0 {
		t.Fatalf("regmirror exit code after SIGTERM = %d, want 0; logs:\n%s", code, m.Logs())
	}

	up.Close() // up.URL is now a closed port
	m = startMirror(t, up.URL, dir, offlineEnv...)
	// The first request of the new process finds out (no token handshake
	// of a past run to reuse): not cached, so 503, and the upstream is down.
	resp, body := m.send(t, http.MethodGet, "/v2/library/never/manifests/latest", nil)
	if code, msg := regtest.OCIError(t, resp, body); resp.StatusCode != http.StatusServiceUnavailable || code != "UNAVAILABLE" || !strings.Contains(msg, "unreachable") {
		t.Errorf("GET an uncached manifest: %d %s %q, want 503 UNAVAILABLE saying the upstream is unreachable", resp.StatusCode, code, msg)
	}
	// The word of the metrics' reason label, as on the status page.
	if rec := offlineWait(t, m, offlineMsgDown); rec["reason"] != "network" {
		t.Errorf("%q: reason %v, want network", offlineMsgDown, rec["reason"])
	}
	for _, p := range pulls {
		t.Run(p.name, func(t *testing.T) { p.run(t, m) })
	}
	offlineGetManifest(t, m, "/v2/library/multi/manifests/latest", regtest.Digest(t, s.img), true)
}

// Modes of the switch in front of an offlineUpstream.
const (
	offlineForward int32 = iota // pass every request to the registry
	offlineHang                 // read the request and never answer it
	offlineFail                 // answer 500 Internal Server Error
)

// offlineUpstream is a real registry behind a switch the test flips between
// forwarding, hanging and failing: the mirror talks to URL, the test pushes to
// PushHost, which is the same registry without the switch.
type offlineUpstream struct {
	*regtest.Counter // requests that reached the switch, hung ones included
	URL              string
	PushHost         string
	accepts          atomic.Int64 // TCP connections the switch accepted
	mode             atomic.Int32
	hung             chan string // "METHOD /path" of each request held in hang mode, if there is room
}

func startOfflineUpstream(t *testing.T) *offlineUpstream {
	t.Helper()
	reg := registry.New(registry.Logger(log.New(io.Discard, "", 0)))
	u := &offlineUpstream{hung: make(chan string, 64)}
	release := make(chan struct{})
	u.Counter = regtest.Count(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch u.mode.Load() {
		case offlineFail:
			http.Error(w, "failing on purpose", http.StatusInternalServerError)
			return
		case offlineHang:
			select {
			case u.hung <- r.Method + " " + r.URL.Path:
			default:
			}
			select {
			case <-r.Context().Done():
			case <-release:
			}
			panic(http.ErrAbortHandler) // cut the connection, answer nothing
		}
		reg.ServeHTTP(w, r)
	}))
	front := httptest.NewUnstartedServer(u.Counter)
	front.Listener = offlineCountingListener{Listener: front.Listener, n: &u.accepts}
	front.Start()
	push := httptest.NewServer(reg)
	t.Cleanup(push.Close)
	t.Cleanup(front.Close)
	t.Cleanup(func() { close(release) }) // runs first: hung handlers return, so Close does not wait
	u.URL, u.PushHost = front.URL, strings.TrimPrefix(push.URL, "http://")
	return u
}

// offlineCountingListener counts the connections it accepts.
type offlineCountingListener struct {
	net.Listener
	n *atomic.Int64
}

func (l offlineCountingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		l.n.Add(1)
	}
	return c, err
}

// offlineContact is what reached the upstream since a mark.
type offlineContact struct {
	requests map[string]int // by "METHOD /path", the probe's GET /v2/ excluded
	probes   int
	accepts  int64
}

type offlineMark struct {
	counts  map[string]int
	accepts int64
}

func (u *offlineUpstream) mark() offlineMark {
	return offlineMark{counts: u.Snapshot(), accepts: u.accepts.Load()}
}

func (u *offlineUpstream) since(m offlineMark) offlineContact {
	c := offlineContact{requests: map[string]int{}, accepts: u.accepts.Load() - m.accepts}
	for k, v := range u.Snapshot() {
		switch d := v - m.counts[k]; {
		case d == 0:
		case k == offlinePing:
			c.probes = d
		default:
			c.requests[k] = d
		}
	}
	return c
}

// assertOnlyProbes fails unless nothing but the mirror's probe reached the
// upstream. The probe is one goroutine asking GET /v2/ over a fresh
// connection each time (the last one hung), so every accepted connection is a
// probe's, and at most one of them may not have had its request read yet.
func (c offlineContact) assertOnlyProbes(t *testing.T, what string) {
	t.Helper()
	if len(c.requests) != 0 {
		t.Errorf("%s: the upstream got %v while marked down, want only the probe's %s", what, c.requests, offlinePing)
	}
	if c.accepts > int64(c.probes)+1 {
		t.Errorf("%s: the upstream accepted %d connections but saw %d probes: something else connected", what, c.accepts, c.probes)
	}
	t.Logf("%s: while down, the upstream saw %d probes and accepted %d connections", what, c.probes, c.accepts)
}

// offlineHungMirror starts an upstream behind a switch holding
// library/hang:latest, a mirror (REGMIRROR_UPSTREAM_TIMEOUT=2s) that pulls it
// while the upstream answers, then flips the switch to hang and pulls once
// more by tag: that pull waits out the timeout, the mirror marks the upstream
// down and serves its last answer.
func offlineHungMirror(t *testing.T) (*offlineUpstream, *mirrorProc, v1.Hash) {
	t.Helper()
	u := startOfflineUpstream(t)
	img, err := random.Image(1024, 3)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(ref(t, u.PushHost, "library/hang:latest"), img, remote.WithContext(t.Context())); err != nil {
		t.Fatal(err)
	}
	d := regtest.Digest(t, img)
	m := startMirror(t, u.URL, "", append(offlineEnv, "REGMIRROR_UPSTREAM_TIMEOUT=2s", "REGMIRROR_SHUTDOWN_TIMEOUT=1s")...)
	pullImage(t, m, "library/hang:latest", d)

	u.mode.Store(offlineHang)
	before := u.mark()
	pullImage(t, m, "library/hang:latest", d)
	if got := u.since(before).requests["HEAD /v2/library/hang/manifests/latest"]; got != 1 {
		t.Errorf("first pull after the upstream hung: it got %d HEADs of the tag, want 1 (the revalidation that timed out)", got)
	}
	if rec := offlineWait(t, m, offlineMsgDown); rec["level"] != "warn" || rec["reason"] != "timeout" {
		t.Errorf("%q logged at %v with reason %v, want warn and timeout", offlineMsgDown, rec["level"], rec["reason"])
	}
	return u, m, d
}

func TestOfflineHungUpstreamIsWaitedOnOnce(t *testing.T) {
	t.Parallel()
	u, m, d := offlineHungMirror(t)
	before := u.mark()
	for i := range 3 {
		t.Run(fmt.Sprintf("pull %d by tag", i+1), func(t *testing.T) { pullImage(t, m, "library/hang:latest", d) })
		t.Run(fmt.Sprintf("pull %d by digest", i+1), func(t *testing.T) { pullImage(t, m, "library/hang@"+d.String(), d) })
	}
	offlineGetManifest(t, m, "/v2/library/hang/manifests/latest", d, true)
	u.since(before).assertOnlyProbes(t, "cached pulls")
}

func TestOfflineUncachedIsUnavailableAtOnce(t *testing.T) {
	t.Parallel()
	u, m, d := offlineHungMirror(t)
	_, unknown := regtest.RandomBlob(t, 64) // content nobody has
	before := u.mark()
	tests := []struct {
		name   string
		method string
		path   string
	}{
		{name: "manifest of an unknown repository", method: http.MethodGet, path: "/v2/library/never/manifests/latest"},
		{name: "unknown tag of a cached repository", method: http.MethodGet, path: "/v2/library/hang/manifests/other"},
		{name: "manifest by digest", method: http.MethodGet, path: "/v2/library/hang/manifests/" + unknown.String()},
		{name: "blob", method: http.MethodGet, path: "/v2/library/hang/blobs/" + unknown.String()},
		{name: "blob, HEAD", method: http.MethodHead, path: "/v2/library/hang/blobs/" + unknown.String()},
		{name: "tags of an unknown repository", method: http.MethodGet, path: "/v2/library/never/tags/list"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp, body := m.send(t, tt.method, tt.path, nil)
			if resp.StatusCode != http.StatusServiceUnavailable {
				t.Fatalf("%s %s: status = %d, want %d; body %s", tt.method, tt.path, resp.StatusCode, http.StatusServiceUnavailable, body)
			}
			if tt.method == http.MethodHead {
				return
			}
			code, msg := regtest.OCIError(t, resp, body)
			if code != "UNAVAILABLE" || !strings.Contains(msg, "unreachable") {
				t.Errorf("%s %s: error %s %q, want UNAVAILABLE saying the upstream is unreachable", tt.method, tt.path, code, msg)
			}
		})
	}
	u.since(before).assertOnlyProbes(t, "uncached requests")
	// The cached image still pulls.
	pullImage(t, m, "library/hang:latest", d)
}

func TestOfflineUpstreamBackSeesMovedTag(t *testing.T) {
	t.Parallel()
	u, m, old := offlineHungMirror(t)
	moved, err := random.Image(1024, 2)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(ref(t, u.PushHost, "library/hang:latest"), moved, remote.WithContext(t.Context())); err != nil {
		t.Fatal(err)
	}
	movedDigest := regtest.Digest(t, moved)
	// Down: the last answer, marked stale, though upstream has moved on.
	offlineGetManifest(t, m, "/v2/library/hang/manifests/latest", old, true)

	u.mode.Store(offlineForward)
	// The probe runs on its own clock (1s, then doubling): wait for it to
	// say the upstream is back, then the very next tag request must ask
	// upstream and see the move.
	rec := offlineWait(t, m, offlineMsgUp)
	if rec["level"] != "info" {
		t.Errorf("%q logged at %v, want info", offlineMsgUp, rec["level"])
	}
	offlineGetManifest(t, m, "/v2/library/hang/manifests/latest", movedDigest, false)
	pullImage(t, m, "library/hang:latest", movedDigest)
	pullImage(t, m, "library/hang@"+old.String(), old) // the old one stays cached
}

func TestOfflineShutdownDoesNotWaitForTheProbe(t *testing.T) {
	t.Parallel()
	u := startOfflineUpstream(t)
	img, err := random.Image(512, 1)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(ref(t, u.PushHost, "library/probe:latest"), img, remote.WithContext(t.Context())); err != nil {
		t.Fatal(err)
	}
	d := regtest.Digest(t, img)
	// A long upstream timeout, so a probe held by a hanging upstream would
	// outlast the test, and a short grace period for shutdown.
	m := startMirror(t, u.URL, "", append(offlineEnv, "REGMIRROR_UPSTREAM_TIMEOUT=2m", "REGMIRROR_SHUTDOWN_TIMEOUT=1s")...)
	pullImage(t, m, "library/probe:latest", d)

	// A 5xx marks the upstream down at once (no timeout to wait out).
	u.mode.Store(offlineFail)
	pullImage(t, m, "library/probe:latest", d)
	if rec := offlineWait(t, m, offlineMsgDown); rec["reason"] != "server_error" || rec["http_status"] != float64(http.StatusInternalServerError) {
		t.Errorf("%q: reason %v, http_status %v, want server_error and 500", offlineMsgDown, rec["reason"], rec["http_status"])
	}

	// Now the upstream hangs, and the probe's GET /v2/ is held there.
	u.mode.Store(offlineHang)
	probing := time.NewTimer(guard)
	defer probing.Stop()
	select {
	case <-probing.C:
		t.Fatalf("no probe reached the hanging upstream within %s; logs:\n%s", guard, m.Logs())
	case got := <-u.hung:
		if got != offlinePing {
			t.Fatalf("the first request held by the hanging upstream was %s, want the probe's %s", got, offlinePing)
		}
	case <-m.exited:
		t.Fatalf("regmirror exited; logs:\n%s", m.Logs())
	}

	if err := m.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	stopped := time.NewTimer(guard)
	defer stopped.Stop()
	select {
	case <-m.exited:
		if code := m.ExitCode(); code != 0 {
			t.Errorf("regmirror exit code after SIGTERM = %d, want 0; logs:\n%s", code, m.Logs())
		}
	case <-stopped.C:
		t.Errorf("regmirror did not exit within %s of SIGTERM (REGMIRROR_SHUTDOWN_TIMEOUT=1s) while its probe waited on a hanging upstream; logs:\n%s", guard, m.Logs())
		m.Kill()
	}
}

// offlineNextLink is a Link header to the next page, relative to the mirror.
var offlineNextLink = regexp.MustCompile(`^<(/v2/[^>]*)>; rel="next"$`)

// offlinePage is one page of a paginated list.
type offlinePage struct {
	items []string
	link  string
}

// offlineList GETs path and follows its Link headers to the end, checking
// each page's status and, if stale, its Warning.
func offlineList(t *testing.T, m *mirrorProc, path, field string, stale bool) []offlinePage {
	t.Helper()
	var pages []offlinePage
	for path != "" && len(pages) < 20 {
		resp, body := m.send(t, http.MethodGet, path, nil)
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("GET %s: status = %d, want %d; body %s", path, resp.StatusCode, http.StatusOK, body)
		}
		warning := resp.Header.Values("Warning")
		if stale && (len(warning) != 1 || !offlineWarning.MatchString(warning[0])) {
			t.Errorf("GET %s: Warning = %q, want one `299 - \"…unreachable…\"`", path, warning)
		}
		var list map[string]json.RawMessage
		var items []string
		if err := json.Unmarshal(body, &list); err != nil || json.Unmarshal(list[field], &items) != nil {
			t.Fatalf("GET %s: body %s: want a JSON object with a %q list", path, body, field)
		}
		p := offlinePage{items: items, link: resp.Header.Get("Link")}
		pages = append(pages, p)
		next := ""
		if p.link != "" {
			mm := offlineNextLink.FindStringSubmatch(p.link)
			if mm == nil {
				t.Fatalf("GET %s: Link = %q, want <%s?…>; rel=\"next\"", path, p.link, resp.Request.URL.Path)
			}
			next = mm[1]
		}
		path = next
	}
	return pages
}

func TestOfflineListsAndCheck(t *testing.T) {
	t.Parallel()
	up := startUpstream(t, nil)
	s := seed(t, up)
	imgDigest := regtest.Digest(t, s.img)
	if err := remote.Write(ref(t, up.Host(), "library/multi:v1"), s.img, remote.WithContext(t.Context())); err != nil {
		t.Fatal(err)
	}
	part, err := random.Image(1024, 3)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(ref(t, up.Host(), "library/part:latest"), part, remote.WithContext(t.Context())); err != nil {
		t.Fatal(err)
	}

	arch := offlineIndex(t)
	if err := remote.WriteIndex(ref(t, up.Host(), "library/arch:latest"), arch, remote.WithContext(t.Context())); err != nil {
		t.Fatal(err)
	}

	m := startMirror(t, up.URL, "", offlineEnv...)
	// library/arch: only linux/amd64 out of the index, as a docker pull on amd64 does.
	pullImage(t, m, "library/arch:latest", childFor(t, arch, platforms[0]), remote.WithPlatform(platforms[0]))
	pullImage(t, m, "library/multi:latest", imgDigest)
	pullImage(t, m, "library/multi:v1", imgDigest)
	pullIndex(t, m, "library/idx:latest", regtest.Digest(t, s.idx))
	// library/part: the manifest by tag, the config and the first layer only.
	partBlobs := blobsOf(t, part) // config, then layers
	offlineGetManifest(t, m, "/v2/library/part/manifests/latest", regtest.Digest(t, part), false)
	for _, h := range partBlobs[:2] {
		if resp, body := m.send(t, http.MethodGet, "/v2/library/part/blobs/"+h.String(), nil); resp.StatusCode != http.StatusOK {
			t.Fatalf("GET blob %s: status = %d, want 200; body %s", h, resp.StatusCode, body)
		}
	}
	missing := partBlobs[2:]

	up.Close()

	t.Run("tags/list", func(t *testing.T) {
		tests := []struct {
			name  string
			path  string
			pages [][]string
		}{
			{name: "one page", path: "/v2/library/multi/tags/list", pages: [][]string{{"latest", "v1"}}},
			{name: "n=1", path: "/v2/library/multi/tags/list?n=1", pages: [][]string{{"latest"}, {"v1"}}},
			{name: "short name", path: "/v2/multi/tags/list", pages: [][]string{{"latest", "v1"}}},
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				offlineAssertPages(t, offlineList(t, m, tt.path, "tags", true), tt.pages)
			})
		}
	})

	t.Run("catalog", func(t *testing.T) {
		tests := []struct {
			name  string
			path  string
			pages [][]string
		}{
			{name: "one page", path: "/v2/_catalog", pages: [][]string{{"library/arch", "library/idx", "library/multi", "library/part"}}},
			{name: "n=1", path: "/v2/_catalog?n=1", pages: [][]string{{"library/arch"}, {"library/idx"}, {"library/multi"}, {"library/part"}}},
			{name: "n=3", path: "/v2/_catalog?n=3", pages: [][]string{{"library/arch", "library/idx", "library/multi"}, {"library/part"}}},
			{name: "n=1 from last", path: "/v2/_catalog?n=1&last=library/idx", pages: [][]string{{"library/multi"}, {"library/part"}}},
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				offlineAssertPages(t, offlineList(t, m, tt.path, "repositories", false), tt.pages)
			})
		}
	})

	t.Run("check endpoint", func(t *testing.T) {
		var partMissing []string
		for _, h := range missing {
			partMissing = append(partMissing, "layer "+h.String())
		}
		tests := []struct {
			name     string
			image    string
			complete bool
			present  int
			missing  []string // "kind digest platform"
		}{
			{name: "image", image: "library/multi:latest", complete: true, present: 5},     // manifest, config, 3 layers
			{name: "index", image: "library/idx:latest", complete: true, present: 1 + 3*4}, // index; per platform manifest, config, 2 layers
			{name: "layers missing", image: "library/part:latest", present: 3, missing: partMissing},
			{name: "one platform of an index", image: "library/arch:latest", present: 1 + 4, missing: []string{
				"manifest " + childFor(t, arch, platforms[1]).String() + " linux/arm64",
				"manifest " + childFor(t, arch, platforms[2]).String() + " linux/arm/v7",
			}},
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				path := proxy.CheckPath + "?image=" + tt.image
				resp, body := m.send(t, http.MethodGet, path, nil)
				if resp.StatusCode != http.StatusOK {
					t.Fatalf("GET %s: status = %d, want 200; body %s", path, resp.StatusCode, body)
				}
				var results []proxy.CheckResult
				if err := json.Unmarshal(body, &results); err != nil || len(results) != 1 {
					t.Fatalf("GET %s: body %s: want a list of one result", path, body)
				}
				r := results[0]
				var got []string
				for _, p := range r.Missing {
					got = append(got, strings.TrimSpace(p.Kind+" "+p.Digest+" "+p.Platform))
				}
				slices.Sort(got)
				want := slices.Sorted(slices.Values(tt.missing))
				if r.Complete != tt.complete || r.Present != tt.present || !slices.Equal(got, want) || r.Problem != "" {
					t.Errorf("GET %s: complete %v, present %d, missing %q, problem %q; want %v, %d, %q, none",
						path, r.Complete, r.Present, got, r.Problem, tt.complete, tt.present, want)
				}
			})
		}
	})

	t.Run("regmirror check", func(t *testing.T) {
		var missingLines []string
		for _, h := range missing {
			missingLines = append(missingLines, "missing layer "+h.String())
		}
		tests := []struct {
			name     string
			images   []string
			mirror   string // -mirror, if not m.URL
			wantExit int
			want     []string // lines of stdout, in any order, each as a prefix
		}{
			{name: "pulled image", images: []string{"library/multi:latest"}, want: []string{"library/multi:latest: ready offline"}},
			{name: "short name, latest implied", images: []string{"multi"}, want: []string{"multi: ready offline"}},
			{name: "by digest", images: []string{"multi@" + imgDigest.String()}, want: []string{"multi@" + imgDigest.String() + ": ready offline"}},
			{name: "index, every platform", images: []string{"library/idx:latest"}, want: []string{"library/idx:latest: ready offline"}},
			{name: "layers missing", images: []string{"library/part:latest"}, wantExit: 1,
				want: append([]string{"library/part:latest: NOT READY: 3 parts cached, 2 missing"}, missingLines...)},
			{name: "never pulled", images: []string{"library/never:latest"}, wantExit: 1,
				want: []string{"library/never:latest: NOT READY: this tag was never pulled"}},
			{name: "one of two not ready", images: []string{"multi:v1", "part"}, wantExit: 1,
				want: append([]string{"multi:v1: ready offline", "part: NOT READY"}, missingLines...)},
			{name: "mirror URL with a trailing slash", mirror: m.URL + "/", images: []string{"multi"}, want: []string{"multi: ready offline"}},
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				mirror := cmp.Or(tt.mirror, m.URL)
				cmd := exec.CommandContext(t.Context(), binary, append([]string{"check", "-mirror", mirror}, tt.images...)...)
				// A -race binary sleeps 1s before a normal exit unless told not to.
				cmd.Env = append(os.Environ(), "GORACE=atexit_sleep_ms=0")
				var stderr strings.Builder
				cmd.Stderr = &stderr
				out, err := cmd.Output()
				code := 0
				if ee, ok := errors.AsType[*exec.ExitError](err); ok {
					code = ee.ExitCode()
				} else if err != nil {
					t.Fatal(err)
				}
				if code != tt.wantExit {
					t.Errorf("regmirror check %s: exit status %d, want %d; stdout:\n%sstderr:\n%s", tt.images, code, tt.wantExit, out, stderr.String())
				}
				lines := strings.Split(strings.TrimSpace(string(out)), "\n")
				for _, w := range tt.want {
					if !slices.ContainsFunc(lines, func(l string) bool { return strings.HasPrefix(strings.TrimSpace(l), w) }) {
						t.Errorf("regmirror check %s: no line starting %q; stdout:\n%s", tt.images, w, out)
					}
				}
				if len(lines) != len(tt.want) {
					t.Errorf("regmirror check %s: %d lines, want %d; stdout:\n%s", tt.images, len(lines), len(tt.want), out)
				}
			})
		}
	})
}

// offlineIndex is an index of random images, one for each of platforms.
func offlineIndex(t *testing.T) v1.ImageIndex {
	t.Helper()
	var adds []mutate.IndexAddendum
	for _, p := range platforms {
		img, err := random.Image(1024, 2)
		if err != nil {
			t.Fatal(err)
		}
		cf, err := img.ConfigFile()
		if err != nil {
			t.Fatal(err)
		}
		cf = cf.DeepCopy()
		cf.OS, cf.Architecture, cf.Variant = p.OS, p.Architecture, p.Variant
		if img, err = mutate.ConfigFile(img, cf); err != nil {
			t.Fatal(err)
		}
		adds = append(adds, mutate.IndexAddendum{Add: img, Descriptor: v1.Descriptor{Platform: &p}})
	}
	return mutate.AppendManifests(empty.Index, adds...)
}

func offlineAssertPages(t *testing.T, got []offlinePage, want [][]string) {
	t.Helper()
	items := make([][]string, len(got))
	for i, p := range got {
		items[i] = p.items
		if last := i == len(got)-1; last != (p.link == "") {
			t.Errorf("page %d of %d: Link = %q; want one on every page but the last", i+1, len(got), p.link)
		}
	}
	if !slices.EqualFunc(items, want, slices.Equal) {
		t.Errorf("pages = %q, want %q", items, want)
	}
}
