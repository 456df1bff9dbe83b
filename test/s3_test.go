//go:build linux

package test

// The cache on a bucket (REGMIRROR_STORAGE=s3), end to end: the real binary
// against versitygw on 127.0.0.1 (regtest.Versity), which the tests start,
// stop and start again. A missing versitygw skips them, or fails them with
// REGMIRROR_REQUIRE_CLIENTS=1 (CI).

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log"
	"maps"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/regmirror/regmirror/proxy"
	"github.com/regmirror/regmirror/test/regtest"
)

// s3Env is the settings of a mirror whose cache is bucket on s3, with the
// root credentials in the standard AWS variables.
func s3Env(s3 *regtest.S3Server, endpoint, bucket string, extra ...string) []string {
	env := append(s3.Env(), "REGMIRROR_STORAGE=s3", "REGMIRROR_S3_ENDPOINT="+endpoint,
		"REGMIRROR_S3_BUCKET="+bucket, "REGMIRROR_S3_REGION="+regtest.S3Region)
	return append(env, extra...)
}

// startS3Mirror is startMirror with its cache in bucket. When the test
// ends, the mirror's logs must not hold the secret key.
func startS3Mirror(t *testing.T, upstreamURL string, s3 *regtest.S3Server, bucket, dataDir string, extra ...string) *mirrorProc {
	t.Helper()
	m := startMirror(t, upstreamURL, dataDir, s3Env(s3, s3.Endpoint, bucket, extra...)...)
	t.Cleanup(func() {
		if strings.Contains(m.Logs(), regtest.S3Secret) {
			t.Errorf("the mirror logged the bucket's secret key:\n%s", m.Logs())
		}
	})
	return m
}

// eventually polls cond until it holds, and fails the test after guard
// with what and cond's last word on it.
func eventually(t *testing.T, what string, cond func() (ok bool, state string)) {
	t.Helper()
	deadline := time.Now().Add(guard)
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		ok, state := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not so within %v; %s", what, guard, state)
		}
		<-tick.C
	}
}

// waitBucket waits until cond holds for the bucket's content objects (each
// checked to hash to its key), and returns them.
func waitBucket(t *testing.T, s3 *regtest.S3Server, bucket, what string, cond func(content map[string]int64) bool) map[string]int64 {
	t.Helper()
	var content map[string]int64
	eventually(t, what, func() (bool, string) {
		content = s3.ContentKeys(t, bucket)
		return cond(content), fmt.Sprintf("the bucket holds %v", content)
	})
	return content
}

// holdsAll is a waitBucket condition: every digest is in the bucket.
func holdsAll(hs ...v1.Hash) func(map[string]int64) bool {
	return func(content map[string]int64) bool {
		for _, h := range hs {
			if _, ok := content["blobs/sha256/"+h.Hex]; !ok {
				return false
			}
		}
		return true
	}
}

// withinBudget fails the test if the bucket's content is over budget bytes.
func withinBudget(t *testing.T, content map[string]int64, budget int64) {
	t.Helper()
	var total int64
	for _, size := range content {
		total += size
	}
	if total > budget {
		t.Errorf("the bucket holds %d bytes of content, over the budget of %d", total, budget)
	}
}

// contentOf is every digest an image is made of: manifest, config, layers.
func contentOf(t *testing.T, img v1.Image) []v1.Hash {
	t.Helper()
	return append(blobsOf(t, img), regtest.Digest(t, img))
}

// runToExit runs the binary with the mirror's usual settings plus extra and
// waits until it exits, for settings that must stop start-up.
func runToExit(t *testing.T, upstreamURL string, extra ...string) (code int, stderr string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), guard)
	defer cancel()
	cmd := exec.CommandContext(ctx, binary)
	cmd.Env = append(os.Environ(), "REGMIRROR_ADDR=127.0.0.1:0", "REGMIRROR_DATA_DIR="+t.TempDir(),
		"REGMIRROR_UPSTREAM="+upstreamURL, "REGMIRROR_ADMIN_ADDR=off", "REGMIRROR_MIN_FREE=0", "GORACE=atexit_sleep_ms=0")
	cmd.Env = append(cmd.Env, extra...)
	var out strings.Builder
	cmd.Stderr = &out
	err := cmd.Run()
	if ctx.Err() != nil {
		t.Fatalf("regmirror did not exit within %v; it logged:\n%s", guard, out.String())
	}
	if err == nil {
		return 0, out.String()
	}
	return cmd.ProcessState.ExitCode(), out.String()
}

// Wrong credentials and a missing bucket are configuration mistakes: the
// mirror does not start, and says which setting to fix, without the secret.
func TestS3StartRefusesWrongCredentialsAndMissingBucket(t *testing.T) {
	t.Parallel()
	s3 := regtest.Versity(t)
	s3.Bucket(t, "there")
	up := startUpstream(t, nil)
	const wrongSecret = "not-the-s3cret-at-all"
	for _, tc := range []struct {
		name  string
		env   []string
		names []string
	}{
		{"wrong secret", append(s3Env(s3, s3.Endpoint, "there"), "AWS_SECRET_ACCESS_KEY="+wrongSecret), []string{"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", `"there"`}},
		{"unknown access key", append(s3Env(s3, s3.Endpoint, "there"), "AWS_ACCESS_KEY_ID=nobody-we-know", "AWS_SECRET_ACCESS_KEY="+wrongSecret), []string{"AWS_ACCESS_KEY_ID"}},
		{"missing bucket", s3Env(s3, s3.Endpoint, "not-there"), []string{"REGMIRROR_S3_BUCKET", `"not-there"`}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, logs := runToExit(t, up.URL, tc.env...)
			if code == 0 {
				t.Fatalf("regmirror started; it logged:\n%s", logs)
			}
			for _, want := range tc.names {
				if !strings.Contains(logs, want) {
					t.Errorf("the message does not name %s:\n%s", want, logs)
				}
			}
			if strings.Contains(logs, wrongSecret) || strings.Contains(logs, regtest.S3Secret) {
				t.Errorf("the secret is in the output:\n%s", logs)
			}
		})
	}
}

// A data dir is the cache of the bucket and prefix it was filled from:
// started on another bucket or prefix, or on disk, the mirror refuses to
// start, names both stores and the ways out, and changes nothing in the data
// dir or the other bucket. On the same settings it starts and serves.
func TestS3StartRefusesAnotherStoreOnTheDataDir(t *testing.T) {
	t.Parallel()
	s3 := regtest.Versity(t)
	first, second := s3.Bucket(t, "first-store"), s3.Bucket(t, "second-store")
	up := startUpstream(t, nil)
	data, _ := regtest.RandomBlob(t, 64<<10)
	h := pushBlob(t, up, "library/app", data)
	dir := t.TempDir()
	m := startS3Mirror(t, up.URL, s3, first, dir, "REGMIRROR_S3_PREFIX=a")
	if resp, body := m.do(http.MethodGet, "/v2/library/app/blobs/"+h.String(), nil); resp.StatusCode != http.StatusOK || regtest.DigestOf(body) != h {
		t.Fatalf("GET the blob: status %d", resp.StatusCode)
	}
	waitBucket(t, s3, first, "the blob reaches the bucket", func(content map[string]int64) bool {
		_, ok := content["a/blobs/sha256/"+h.Hex]
		return ok
	})
	m.Stop()

	for _, tc := range []struct {
		name  string
		env   []string
		names []string
	}{
		{"another bucket", s3Env(s3, s3.Endpoint, second, "REGMIRROR_S3_PREFIX=a"), []string{`bucket "second-store"`}},
		{"another prefix", s3Env(s3, s3.Endpoint, first, "REGMIRROR_S3_PREFIX=b"), []string{`prefix "b"`}},
		{"disk", []string{"REGMIRROR_STORAGE=disk"}, []string{"disk storage"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := regtest.DirState(t, dir)
			code, logs := runToExit(t, up.URL, append(tc.env, "REGMIRROR_DATA_DIR="+dir)...)
			if code != 1 {
				t.Fatalf("exit status %d, want 1; it logged:\n%s", code, logs)
			}
			for _, want := range append(tc.names, "REGMIRROR_DATA_DIR "+dir, `bucket "first-store"`, `prefix "a"`,
				"REGMIRROR_S3_BUCKET", "REGMIRROR_S3_PREFIX", "empty directory") {
				if !strings.Contains(logs, want) {
					t.Errorf("the message does not name %s:\n%s", want, logs)
				}
			}
			if after := regtest.DirState(t, dir); !maps.Equal(before, after) {
				t.Errorf("the refused start changed the data dir:\nbefore %v\nafter  %v", before, after)
			}
			if objs := s3.Objects(t, second); len(objs) != 0 {
				t.Errorf("the refused start wrote to the other bucket: %v", objs)
			}
		})
	}

	up.Close() // served from the data dir and its bucket, asking upstream nothing
	again := startS3Mirror(t, up.URL, s3, first, dir, "REGMIRROR_S3_PREFIX=a")
	if resp, body := again.do(http.MethodGet, "/v2/library/app/blobs/"+h.String(), nil); resp.StatusCode != http.StatusOK || regtest.DigestOf(body) != h {
		t.Fatalf("GET the blob after a restart on the same settings: status %d", resp.StatusCode)
	}
}

// A cold pull fills the bucket with exactly the content pulled, each object
// hashing to its key; a warm pull asks upstream nothing; a fresh host with an
// empty data dir on the same bucket serves the image by tag and by digest
// with the upstream gone, asking it nothing.
func TestS3ColdWarmAndFreshHost(t *testing.T) {
	t.Parallel()
	s3 := regtest.Versity(t)
	bucket := s3.Bucket(t, "cold-warm")
	up := startUpstream(t, nil)
	s := seed(t, up)
	imgDigest, idxDigest := regtest.Digest(t, s.img), regtest.Digest(t, s.idx)
	arm64 := platforms[1]
	want := contentOf(t, s.img)
	want = append(want, idxDigest)
	for _, child := range childrenOf(t, s.idx) {
		want = append(want, contentOf(t, child)...)
	}

	m := startS3Mirror(t, up.URL, s3, bucket, "", "REGMIRROR_TAG_TTL=1h")
	pullImage(t, m, "library/multi:latest", imgDigest)
	pullIndex(t, m, "library/idx:latest", idxDigest)
	content := waitBucket(t, s3, bucket, "the bucket holds every blob and manifest pulled", holdsAll(want...))
	if len(content) != len(want) {
		t.Errorf("the bucket holds %d content objects, want the %d pulled: %v", len(content), len(want), content)
	}
	if ups := s3.Uploads(t, bucket); len(ups) != 0 {
		t.Errorf("multipart uploads left open: %v", ups)
	}

	before := up.Total()
	pullImage(t, m, "library/multi:latest", imgDigest)
	pullIndex(t, m, "library/idx:latest", idxDigest)
	if n := up.Total() - before; n != 0 {
		t.Errorf("the warm pulls made %d upstream requests, want 0", n)
	}
	m.Stop()

	// A new host: empty data dir, same bucket, and the upstream gone.
	up.Close()
	fresh := startS3Mirror(t, up.URL, s3, bucket, "", "REGMIRROR_TAG_TTL=1h")
	for _, tc := range []struct {
		name string
		pull func(t *testing.T)
	}{
		{"image by tag", func(t *testing.T) { pullImage(t, fresh, "library/multi:latest", imgDigest) }},
		{"image by digest", func(t *testing.T) { pullImage(t, fresh, "library/multi@"+imgDigest.String(), imgDigest) }},
		{"index by tag", func(t *testing.T) { pullIndex(t, fresh, "library/idx:latest", idxDigest) }},
		{"index by digest", func(t *testing.T) { pullIndex(t, fresh, "library/idx@"+idxDigest.String(), idxDigest) }},
		{"linux/arm64 out of the index by tag", func(t *testing.T) {
			pullImage(t, fresh, "library/idx:latest", childFor(t, s.idx, arm64), remote.WithPlatform(arm64))
		}},
	} {
		t.Run(tc.name, tc.pull)
	}
}

// skopeo, a real client, pulls through a mirror on a bucket: cold, warm,
// and from a fresh host on the same bucket, which must ask upstream nothing.
func TestS3Skopeo(t *testing.T) {
	s3 := regtest.Versity(t)
	bucket := s3.Bucket(t, "skopeo")
	tc := &clientsTest{up: startUpstream(t, nil)}
	tc.img = seedSmall(t, tc.up)
	pull := skopeoClient(t, tc)
	m := startS3Mirror(t, tc.up.URL, s3, bucket, "", mirrorTagTTL)
	checkPull(t, tc, m, "cold mirror on a bucket", true, pull)
	checkPull(t, tc, m, "same mirror again", false, pull)
	waitBucket(t, s3, bucket, "the bucket holds linux/amd64's content", holdsAll(append(tc.img.amd64.blobs(), tc.img.amd64.manifest, tc.img.index)...))
	m.Stop()
	fresh := startS3Mirror(t, tc.up.URL, s3, bucket, "", mirrorTagTTL)
	checkPull(t, tc, fresh, "a fresh host on the same bucket", false, pull)
}

// s3Gate is a reverse proxy in front of versitygw that can hold the first
// request a test names until the test ends, and says when it arrived: a
// mirror killed then is killed in the middle of that write.
type s3Gate struct {
	*httptest.Server
	mu      sync.Mutex
	match   func(r *http.Request) bool
	arrived chan struct{}
	release chan struct{}
}

func startS3Gate(t *testing.T, s3 *regtest.S3Server) *s3Gate {
	t.Helper()
	target, _ := url.Parse(s3.Endpoint)
	rp := httputil.NewSingleHostReverseProxy(target) // the Host header passes as signed
	rp.ErrorLog = log.New(io.Discard, "", 0)         // a killed mirror's cut requests are expected
	g := &s3Gate{release: make(chan struct{})}
	g.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		g.mu.Lock()
		hold := g.match != nil && g.match(r)
		if hold {
			g.match = nil
			close(g.arrived)
		}
		g.mu.Unlock()
		if hold {
			select {
			case <-g.release:
			case <-r.Context().Done():
			}
			return // never passed on: the write does not happen
		}
		rp.ServeHTTP(w, r)
	}))
	t.Cleanup(g.Close)
	t.Cleanup(func() { close(g.release) }) // runs first: the held handler returns
	return g
}

// hold makes the gate hold the first request match accepts; the channel is
// closed when it arrives.
func (g *s3Gate) hold(match func(r *http.Request) bool) <-chan struct{} {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.match, g.arrived = match, make(chan struct{})
	return g.arrived
}

// kill -9 while a blob is being written to the bucket leaves no object for
// it, and the multipart upload it began is aborted by the restarted mirror.
func TestS3KillDuringUploadLeavesNothingPartial(t *testing.T) {
	t.Parallel()
	s3 := regtest.Versity(t)
	for _, tc := range []struct {
		name string
		size int
		at   func(r *http.Request) bool // the request the mirror is killed in
	}{
		{"single PUT", 1 << 20, func(r *http.Request) bool {
			return r.Method == http.MethodPut && strings.Contains(r.URL.Path, "/blobs/sha256/")
		}},
		// Larger than the 16 MiB parts: a multipart upload, killed as it completes.
		{"multipart", 17<<20 + 123, func(r *http.Request) bool {
			return r.Method == http.MethodPost && r.URL.Query().Has("uploadId")
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			bucket := s3.Bucket(t, "kill-"+strings.ToLower(strings.ReplaceAll(tc.name, " ", "-")))
			gate := startS3Gate(t, s3)
			up := startUpstream(t, nil)
			data, h := regtest.RandomBlob(t, tc.size)
			pushBlob(t, up, "library/killed", data)
			arrived := gate.hold(tc.at)
			m := startMirror(t, up.URL, "", s3Env(s3, gate.URL, bucket)...)
			resp, body := m.do(http.MethodGet, "/v2/library/killed/blobs/"+h.String(), nil)
			if resp.StatusCode != http.StatusOK || regtest.DigestOf(body) != h {
				t.Fatalf("GET the blob: status %d, %d bytes: want it whole (the upload must not stand in the client's way)", resp.StatusCode, len(body))
			}
			select {
			case <-arrived:
			case <-time.After(guard):
				t.Fatalf("the mirror did not write the blob to the bucket within %v; logs:\n%s", guard, m.Logs())
			}
			m.Kill()
			if content := s3.ContentKeys(t, bucket); len(content) != 0 {
				t.Errorf("after kill -9 during the write, the bucket holds %v, want nothing", content)
			}
			dead := s3.Uploads(t, bucket)
			if tc.name == "multipart" && len(dead) == 0 {
				t.Fatal("no multipart upload open after kill -9 as it completed: the test did not kill where it meant to")
			}

			// Restarted (the gate holds nothing now), its sweep at start
			// aborts the dead upload (any upload is stale at once here; one
			// of the mirror's own that the sweep catches is retried), and the
			// blob reaches the bucket whole.
			m = startMirror(t, up.URL, m.DataDir, s3Env(s3, gate.URL, bucket, "REGMIRROR_S3_STALE_UPLOADS=1ms")...)
			if tc.name == "multipart" {
				ctx, cancel := context.WithTimeout(t.Context(), guard)
				defer cancel()
				if err := m.waitLog(ctx, regtest.Msg("aborted stale multipart uploads")); err != nil {
					t.Fatalf("no stale upload aborted: %v; logs:\n%s", err, m.Logs())
				}
			}
			for _, u := range s3.Uploads(t, bucket) {
				if slices.Contains(dead, u) {
					t.Errorf("the killed mirror's multipart upload %s is still open after the sweep", u)
				}
			}
			resp, body = m.do(http.MethodGet, "/v2/library/killed/blobs/"+h.String(), nil)
			if resp.StatusCode != http.StatusOK || regtest.DigestOf(body) != h {
				t.Fatalf("GET the blob after the restart: status %d, %d bytes", resp.StatusCode, len(body))
			}
			waitBucket(t, s3, bucket, "the blob reaches the bucket after the restart", holdsAll(h))
		})
	}
}

// readyz is the mirror's /readyz answer.
type readyz struct {
	Ready  bool `json:"ready"`
	Bucket *struct {
		Up     bool   `json:"up"`
		Reason string `json:"reason"`
	} `json:"bucket"`
	Warnings []string `json:"warnings"`
}

func getReadyz(t *testing.T, m *mirrorProc) (int, readyz, string) {
	t.Helper()
	resp, body := m.do(http.MethodGet, proxy.ReadyPath, nil)
	var r readyz
	if err := json.Unmarshal(body, &r); err != nil {
		t.Fatalf("GET %s: %v; body %s", proxy.ReadyPath, err, body)
	}
	return resp.StatusCode, r, string(body)
}

// A bucket that goes down: what the local copy holds is still served, a
// miss streams from upstream without being stored, /readyz and the status
// page say the bucket is down; once the store is back, the mirror finds out
// by itself and stores again.
func TestS3BucketDownAndBack(t *testing.T) {
	t.Parallel()
	s3 := regtest.Versity(t)
	bucket := s3.Bucket(t, "down-and-back")
	up := startUpstream(t, nil)
	hot, _ := regtest.RandomBlob(t, 256<<10)
	hotH := pushBlob(t, up, "library/app", hot)
	cold, _ := regtest.RandomBlob(t, 256<<10)
	coldH := pushBlob(t, up, "library/app", cold)
	later, _ := regtest.RandomBlob(t, 256<<10)
	laterH := pushBlob(t, up, "library/app", later)
	m := startS3Mirror(t, up.URL, s3, bucket, "")
	get := func(t *testing.T, h v1.Hash) {
		t.Helper()
		resp, body := m.do(http.MethodGet, "/v2/library/app/blobs/"+h.String(), nil)
		if resp.StatusCode != http.StatusOK || regtest.DigestOf(body) != h {
			t.Fatalf("GET %s: status %d, %d bytes hashing to %s; logs:\n%s", h, resp.StatusCode, len(body), regtest.DigestOf(body), m.Logs())
		}
	}
	get(t, hotH)
	waitBucket(t, s3, bucket, "the hot blob is in the bucket", holdsAll(hotH))

	s3.Stop()
	hotPath := "/v2/library/app/blobs/" + hotH.String()
	before := up.Count(http.MethodGet, hotPath)
	get(t, hotH) // from the local copy
	if n := up.Count(http.MethodGet, hotPath) - before; n != 0 {
		t.Errorf("the hot blob, in the local copy, was fetched upstream %d times with the bucket down", n)
	}
	get(t, coldH) // streamed through from upstream
	// The mirror notices the bucket is down, at the latest when it fails to store.
	eventually(t, "/readyz says the bucket is down", func() (bool, string) {
		code, r, body := getReadyz(t, m)
		if r.Bucket == nil || r.Bucket.Up {
			return false, body
		}
		if code != http.StatusOK || !r.Ready {
			t.Errorf("/readyz with the bucket down: status %d, %s; want 200 and ready (the local copy serves, misses stream)", code, body)
		}
		if r.Bucket.Reason == "" {
			t.Errorf("/readyz says the bucket is down without a reason: %s", body)
		}
		return true, body
	})
	resp, page := m.do(http.MethodGet, "/", nil)
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(page), `id="bucket-down"`) {
		t.Errorf("the status page with the bucket down (status %d) does not say so:\n%s", resp.StatusCode, page)
	}
	get(t, coldH) // streamed again: it was not stored anywhere it could be served from
	if n := up.Count(http.MethodGet, "/v2/library/app/blobs/"+coldH.String()); n < 1 {
		t.Errorf("the cold blob was never fetched upstream")
	}

	s3.Start()
	eventually(t, "/readyz says the bucket is back", func() (bool, string) {
		_, r, body := getReadyz(t, m)
		return r.Bucket != nil && r.Bucket.Up, body
	})
	get(t, laterH)
	waitBucket(t, s3, bucket, "a blob pulled once the bucket is back is stored in it", holdsAll(hotH, laterH))
}

// REGMIRROR_MAX_SIZE is the bucket's budget in s3 mode: the least recently
// used image leaves the bucket, the most recent stay.
func TestS3BudgetEvictsFromTheBucket(t *testing.T) {
	t.Parallel()
	s3 := regtest.Versity(t)
	bucket := s3.Bucket(t, "budget")
	up := startUpstream(t, nil)
	imgs := make([]budImage, 3)
	for i := range imgs {
		imgs[i] = budPush(t, up, fmt.Sprintf("app%d:1", i), budRandom(t, mib, 1))
	}
	// Two images of one 1 MiB layer fit in 3 MiB, three do not.
	m := startS3Mirror(t, up.URL, s3, bucket, "", "REGMIRROR_MAX_SIZE=3MiB", "REGMIRROR_LOCAL_MAX_SIZE=10MiB")
	for _, i := range []int{0, 1, 0, 2} { // app0 again: app1 is the least recently used
		pullImage(t, m, imgs[i].name, imgs[i].digest)
		waitBucket(t, s3, bucket, imgs[i].name+" is in the bucket", holdsAll(imgs[i].layers[0]))
	}
	content := waitBucket(t, s3, bucket, "app1's layer is evicted from the bucket", func(c map[string]int64) bool {
		_, ok := c["blobs/sha256/"+imgs[1].layers[0].Hex]
		return !ok
	})
	withinBudget(t, content, 3*mib)
	for _, i := range []int{0, 2} {
		if _, ok := content["blobs/sha256/"+imgs[i].layers[0].Hex]; !ok {
			t.Errorf("%s, among the most recently used, was evicted from the bucket", imgs[i].name)
		}
	}

	// A pin is honoured in the bucket: app0, now the least recently used,
	// is pinned, so app1's return evicts app2 instead.
	if _, stderr, code := budCLI(t, m, "pin", imgs[0].name); code != 0 {
		t.Fatalf("regmirror pin %s: exit %d: %s", imgs[0].name, code, stderr)
	}
	pullImage(t, m, imgs[1].name, imgs[1].digest)
	content = waitBucket(t, s3, bucket, "app2's layer is evicted from the bucket, app1's is back", func(c map[string]int64) bool {
		_, two := c["blobs/sha256/"+imgs[2].layers[0].Hex]
		_, one := c["blobs/sha256/"+imgs[1].layers[0].Hex]
		return !two && one
	})
	if _, ok := content["blobs/sha256/"+imgs[0].layers[0].Hex]; !ok {
		t.Errorf("%s, pinned, was evicted from the bucket", imgs[0].name)
	}
}

// A store that does not answer at start-up is no configuration mistake: the
// mirror starts, streams what it is asked for, says the bucket is down, and
// finds it when it comes.
func TestS3StartsWithTheBucketDown(t *testing.T) {
	t.Parallel()
	s3 := regtest.Versity(t)
	bucket := s3.Bucket(t, "down-at-start")
	up := startUpstream(t, nil)
	data, _ := regtest.RandomBlob(t, 64<<10)
	h := pushBlob(t, up, "library/app", data)
	s3.Stop()
	m := startS3Mirror(t, up.URL, s3, bucket, "")
	eventually(t, "/readyz says the bucket is down", func() (bool, string) {
		code, r, body := getReadyz(t, m)
		return code == http.StatusOK && r.Ready && r.Bucket != nil && !r.Bucket.Up, body
	})
	resp, body := m.do(http.MethodGet, "/v2/library/app/blobs/"+h.String(), nil)
	if resp.StatusCode != http.StatusOK || regtest.DigestOf(body) != h {
		t.Fatalf("GET the blob with the bucket down: status %d, %d bytes; want it streamed from upstream", resp.StatusCode, len(body))
	}
	s3.Start()
	eventually(t, "/readyz says the bucket is up", func() (bool, string) {
		_, r, body := getReadyz(t, m)
		return r.Bucket != nil && r.Bucket.Up, body
	})
	resp, body = m.do(http.MethodGet, "/v2/library/app/blobs/"+h.String(), nil)
	if resp.StatusCode != http.StatusOK || regtest.DigestOf(body) != h {
		t.Fatalf("GET the blob once the bucket is back: status %d, %d bytes", resp.StatusCode, len(body))
	}
	waitBucket(t, s3, bucket, "the blob reaches the bucket once it is back", holdsAll(h))
}
