package test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/minio/minio-go/v7"
	"github.com/regmirror/regmirror/proxy"
	"github.com/regmirror/regmirror/test/regtest"
)

// fleet is replicas of the mirror on one versitygw bucket, each with its own
// data dir and port, behind an in-test round-robin front.
type fleet struct {
	s3       *regtest.S3Server
	bucket   string
	replicas []*mirrorProc
	front    *httptest.Server
	s3Count  *regtest.Counter // the replicas' requests to the bucket
	env      []string         // the settings every replica shares
	upstream string
}

// freeAddr is a 127.0.0.1 address nothing listens on just now: a replica's
// peer URL must name its port before it starts.
func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// startFleet starts n replicas against upstreamURL on a fresh bucket.
// peerURL, when not nil, gives replica i's REGMIRROR_PEER_URL (a wrong one,
// for replicas that cannot reach each other); by default it is derived
// from its address.
func startFleet(t *testing.T, upstreamURL string, n int, peerURL func(i int) string, extra ...string) *fleet {
	t.Helper()
	s3 := regtest.Versity(t)
	bucket := s3.Bucket(t, "fleet")
	token := filepath.Join(t.TempDir(), "peer-token")
	if err := os.WriteFile(token, []byte("s3cr3t-shared-by-the-replicas\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	target, _ := url.Parse(s3.Endpoint)
	rp := httputil.NewSingleHostReverseProxy(target) // the Host header passes as signed
	rp.ErrorLog = log.New(io.Discard, "", 0)         // a killed replica's cut requests are expected
	counted := regtest.Count(rp)
	front := httptest.NewServer(counted)
	t.Cleanup(front.Close)
	f := &fleet{s3: s3, bucket: bucket, upstream: upstreamURL, s3Count: counted,
		env: append([]string{"REGMIRROR_PEER_TOKEN_FILE=" + token, "REGMIRROR_S3_ENDPOINT=" + front.URL}, extra...)}
	for i := range n {
		var env []string
		if peerURL != nil {
			env = append(env, "REGMIRROR_PEER_URL="+peerURL(i))
		}
		f.add(t, env...)
	}
	var next atomic.Int64
	proxies := make([]*httputil.ReverseProxy, n)
	for i, m := range f.replicas {
		target, _ := url.Parse(m.URL)
		proxies[i] = httputil.NewSingleHostReverseProxy(target)
		proxies[i].FlushInterval = -1                    // stream as the replica sends
		proxies[i].ErrorLog = log.New(io.Discard, "", 0) // a killed replica's cut responses are expected
	}
	f.front = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		i := int(next.Add(1)-1) % n
		w.Header().Set("X-Replica", strconv.Itoa(i))
		proxies[i].ServeHTTP(w, r)
	}))
	t.Cleanup(f.front.Close)
	return f
}

// add starts one more replica, with an empty data dir, on the fleet's bucket.
func (f *fleet) add(t *testing.T, extra ...string) *mirrorProc {
	t.Helper()
	env := append([]string{"REGMIRROR_ADDR=" + freeAddr(t), fmt.Sprintf("REGMIRROR_REPLICA_NAME=replica%d", len(f.replicas))}, f.env...)
	m := startS3Mirror(t, f.upstream, f.s3, f.bucket, "", append(env, extra...)...)
	f.replicas = append(f.replicas, m)
	return m
}

// leader is the index of the replica named by the digest's lease, or -1.
func (f *fleet) leader(t *testing.T, h v1.Hash) int {
	t.Helper()
	obj, err := f.s3.Admin.GetObject(context.Background(), f.bucket, "leases/"+h.String(), minio.GetObjectOptions{})
	if err != nil {
		return -1
	}
	defer obj.Close()
	var lease struct{ URL string }
	if json.NewDecoder(obj).Decode(&lease) != nil {
		return -1
	}
	for i, m := range f.replicas {
		if lease.URL == m.URL {
			return i
		}
	}
	return -1
}

// evictor is the index of the replica that took the evictor's lease first.
func (f *fleet) evictor(t *testing.T) int {
	t.Helper()
	ev := -1
	eventually(t, "a replica runs the evictor", func() (bool, string) {
		for i, m := range f.replicas {
			if len(m.log.Records(0, regtest.Msg("this replica runs the fleet's evictor"))) > 0 {
				ev = i
				return true, ""
			}
		}
		return false, "none said so"
	})
	return ev
}

// merged waits until the evictor's summary says it merged a journal that
// replica i wrote after since (so its uses until then count in the next pass).
func (f *fleet) merged(t *testing.T, i int, since time.Time) {
	t.Helper()
	name := fmt.Sprintf("replica%d", i)
	eventually(t, "the evictor merged a journal of "+name, func() (bool, string) {
		obj, err := f.s3.Admin.GetObject(context.Background(), f.bucket, "fleet/state", minio.GetObjectOptions{})
		if err != nil {
			return false, err.Error()
		}
		defer obj.Close()
		var sum struct{ Replicas map[string]time.Time }
		if err := json.NewDecoder(obj).Decode(&sum); err != nil {
			return false, err.Error()
		}
		return sum.Replicas[name].After(since), fmt.Sprintf("fleet/state: %v", sum.Replicas)
	})
}

// waitLogs waits until the replicas together logged want lines that match.
func (f *fleet) waitLogs(t *testing.T, what string, want int, match func(rec map[string]any) bool) {
	t.Helper()
	eventually(t, what, func() (bool, string) {
		n := 0
		for _, m := range f.replicas {
			n += len(m.log.Records(0, match))
		}
		return n >= want, fmt.Sprintf("%d of %d lines", n, want)
	})
}

// noLeftovers waits until the bucket holds h whole, no lease and no
// multipart upload.
func (f *fleet) noLeftovers(t *testing.T, h v1.Hash) {
	t.Helper()
	waitBucket(t, f.s3, f.bucket, "the blob reaches the bucket", holdsAll(h))
	eventually(t, "no lease or upload left in the bucket", func() (bool, string) {
		var left []string
		for key := range f.s3.Objects(t, f.bucket) {
			if strings.HasPrefix(key, "leases/") && key != "leases/evictor" { // the evictor's stands while replicas run
				left = append(left, key)
			}
		}
		left = append(left, f.s3.Uploads(t, f.bucket)...)
		return len(left) == 0, fmt.Sprintf("left: %v", left)
	})
}

// uploadsDone waits until no replica has an upload pending.
func (f *fleet) uploadsDone(t *testing.T) {
	t.Helper()
	eventually(t, "every replica's uploads done", func() (bool, string) {
		for i, m := range f.replicas {
			_, body := m.do(http.MethodGet, proxy.ReadyPath, nil)
			var r struct {
				Bucket struct {
					Pending int `json:"pending_uploads"`
				} `json:"bucket"`
			}
			if json.Unmarshal(body, &r) != nil || r.Bucket.Pending != 0 {
				return false, fmt.Sprintf("replica %d: %s", i, body)
			}
		}
		return true, ""
	})
}

// herdResult is what one client of a herd got.
type herdResult struct {
	replica int
	status  int
	body    []byte
	err     error // the request or its body failed: a cut, never a short 200
}

// herd sends n concurrent GETs of path through the front; from(i), when not
// nil, makes client i a Range client from that offset.
func (f *fleet) herd(t *testing.T, path string, n int, from func(i int) int64) []herdResult {
	t.Helper()
	out := make([]herdResult, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(context.Background(), guard)
			defer cancel()
			req, _ := http.NewRequestWithContext(ctx, http.MethodGet, f.front.URL+path, nil)
			if from != nil {
				req.Header.Set("Range", fmt.Sprintf("bytes=%d-", from(i)))
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				out[i] = herdResult{replica: -1, err: err}
				return
			}
			defer resp.Body.Close()
			r, _ := strconv.Atoi(resp.Header.Get("X-Replica"))
			body, err := io.ReadAll(resp.Body)
			out[i] = herdResult{replica: r, status: resp.StatusCode, body: body, err: err}
		}()
	}
	wg.Wait()
	return out
}

// checkWhole fails the test unless every client got want (from its offset).
func checkWhole(t *testing.T, results []herdResult, want []byte, from func(i int) int64) {
	t.Helper()
	for i, res := range results {
		status, part := http.StatusOK, want
		if from != nil {
			status, part = http.StatusPartialContent, want[from(i):]
		}
		if res.err != nil || res.status != status || string(res.body) != string(part) {
			t.Errorf("client %d (replica %d): status %d, %d bytes, %v; want %d with %d bytes", i, res.replica, res.status, len(res.body), res.err, status, len(part))
		}
	}
}

const herdSize = 12

// A cold herd spread over three replicas costs one upstream GET, and every
// client (whole or Range) gets the right bytes as they arrive: the followers
// stream from the leader while its download is held at half.
func TestReplicasColdHerdOneUpstreamGet(t *testing.T) {
	for _, tc := range []struct {
		name string
		from func(i int) int64
	}{
		{"whole", nil},
		{"range", func(i int) int64 { return int64(i) * 150_001 }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			up, g := startGated(t, "herd", 2<<20)
			f := startFleet(t, up.URL, 3, nil)
			path := "/v2/" + g.repo + "/blobs/" + g.digest.String()
			done := make(chan []herdResult)
			go func() { done <- f.herd(t, path, herdSize, tc.from) }()
			// Both followers stream from the leader, which is held at half.
			f.waitLogs(t, "two replicas follow the leader", 2, regtest.Msg("following a replica's download"))
			g.Open()
			results := <-done
			checkWhole(t, results, g.data, tc.from)
			if n := up.Count(http.MethodGet, g.path); n != 1 {
				t.Errorf("%d upstream GETs of the blob for a herd of %d over 3 replicas, want 1", n, herdSize)
			}
			// Both followers downloaded it whole from the leader's peer
			// endpoint: counted as sent there and as received by each.
			want := 2 * float64(len(g.data))
			var leader *mirrorProc
			eventually(t, "the peer bytes counted on both sides", func() (bool, string) {
				var sent, received float64
				for _, m := range f.replicas {
					ms := regtest.Scrape(t, m.URL+"/metrics")
					if n := ms.Value("regmirror_fleet_peer_bytes_total", "direction", "sent"); n > 0 {
						sent, leader = sent+n, m
					}
					received += ms.Value("regmirror_fleet_peer_bytes_total", "direction", "received")
				}
				return sent == want && received == want, fmt.Sprintf("sent %v, received %v, want %v each", sent, received, want)
			})
			if _, page := leader.do(http.MethodGet, "/", nil); !strings.Contains(string(page), proxy.FormatBytes(int64(want))+" sent to other replicas") {
				t.Errorf("the leader's Replicas card does not say what it sent to the others")
			}
			f.noLeftovers(t, g.digest)
			// One copy went up: the followers waited for the leader's upload
			// and found the object instead of sending theirs.
			f.uploadsDone(t)
			if n := f.s3Count.Count(http.MethodPut, "/"+f.bucket+"/blobs/sha256/"+g.digest.Hex); n != 1 {
				t.Errorf("%d PUTs of the blob to the bucket, want 1", n)
			}

			// A replica added with an empty disk serves it at once, from the
			// bucket, though its own index has never seen it.
			late := f.add(t)
			if resp, body := late.do(http.MethodGet, path, nil); resp.StatusCode != http.StatusOK || string(body) != string(g.data) {
				t.Fatalf("a new replica: status %d, %d bytes", resp.StatusCode, len(body))
			}
			if n := up.Count(http.MethodGet, g.path); n != 1 {
				t.Errorf("a new replica fetched the blob from upstream again (%d GETs), though it is in the bucket", n)
			}
		})
	}
}

// kill -9 of the leading replica mid-download: the followers' clients
// still get the right bytes (one follower takes the lease over and resumes
// from upstream by Range, the other follows it); the leader's own clients
// are cut, never given a short 200; no lease or upload stays behind.
func TestReplicasLeaderKilledAtHalf(t *testing.T) {
	up, g := startGated(t, "killed", 2<<20)
	f := startFleet(t, up.URL, 3, nil)
	path := "/v2/" + g.repo + "/blobs/" + g.digest.String()
	done := make(chan []herdResult)
	go func() { done <- f.herd(t, path, herdSize, nil) }()
	f.waitLogs(t, "two replicas follow the leader", 2, regtest.Msg("following a replica's download"))
	lead := f.leader(t, g.digest)
	if lead < 0 {
		t.Fatal("no replica named in the digest's lease")
	}
	f.replicas[lead].Kill()
	results := <-done
	for i, res := range results {
		if res.replica == lead {
			if res.err == nil && res.status == http.StatusOK && string(res.body) != string(g.data) {
				t.Errorf("client %d of the killed leader: a 200 with %d wrong or short bytes and no error", i, len(res.body))
			}
			continue
		}
		if res.err != nil || res.status != http.StatusOK || string(res.body) != string(g.data) {
			t.Errorf("client %d (replica %d, a follower): status %d, %d bytes, %v; want the blob whole", i, res.replica, res.status, len(res.body), res.err)
		}
	}
	// The dead leader's GET and one resume by Range.
	if n := up.Count(http.MethodGet, g.path); n != 2 {
		t.Errorf("%d upstream GETs of the blob, want 2 (the leader's, then one follower's resume)", n)
		for i, r := range f.replicas {
			t.Logf("replica %d (lead %v):\n%s", i, i == lead, r.Logs())
		}
	}
	f.noLeftovers(t, g.digest)
}

// Replicas that cannot reach each other (wrong peer URLs) do not each go
// upstream: the followers wait for the object in the bucket, then serve it.
func TestReplicasThatCannotReachEachOther(t *testing.T) {
	up, g := startGated(t, "apart", 1<<20)
	nowhere := "http://" + freeAddr(t) // nothing listens there
	f := startFleet(t, up.URL, 3, func(int) string { return nowhere }, "REGMIRROR_PEER_WAIT=2m")
	path := "/v2/" + g.repo + "/blobs/" + g.digest.String()
	done := make(chan []herdResult)
	go func() { done <- f.herd(t, path, herdSize, nil) }()
	f.waitLogs(t, "two replicas wait for the bucket", 2, regtest.Msg("cannot reach the leading replica; waiting for the blob in the bucket"))
	g.Open()
	checkWhole(t, <-done, g.data, nil)
	if n := up.Count(http.MethodGet, g.path); n != 1 {
		t.Errorf("%d upstream GETs of the blob, want 1", n)
	}
	f.noLeftovers(t, g.digest)
}

// A store that ignores If-None-Match cannot arbitrate leases: multi-replica
// mode refuses to start on it, saying why and what to do.
func TestReplicasRefuseAStoreWithoutConditionalWrites(t *testing.T) {
	s3 := regtest.Versity(t)
	bucket := s3.Bucket(t, "no-conditions")
	target, _ := url.Parse(s3.Endpoint)
	rp := httputil.NewSingleHostReverseProxy(target)
	// The store says yes to a second conditional write, as one that
	// overwrites would.
	rp.ModifyResponse = func(resp *http.Response) error {
		if resp.Request.Method == http.MethodPut && resp.StatusCode == http.StatusPreconditionFailed {
			resp.Body.Close()
			resp.StatusCode, resp.Status = http.StatusOK, "200 OK"
			resp.Body, resp.ContentLength = http.NoBody, 0
			resp.Header = http.Header{"Etag": {`"overwritten"`}}
		}
		return nil
	}
	lying := httptest.NewServer(rp)
	defer lying.Close()
	token := filepath.Join(t.TempDir(), "peer-token")
	os.WriteFile(token, []byte("s3cr3t-shared-by-the-replicas"), 0o600)
	up := startUpstream(t, nil)
	code, stderr := runToExit(t, up.URL, append(s3Env(s3, lying.URL, bucket),
		"REGMIRROR_ADDR="+freeAddr(t), "REGMIRROR_PEER_TOKEN_FILE="+token)...)
	if code == 0 || !strings.Contains(stderr, "REGMIRROR_PEER_TOKEN_FILE") || !strings.Contains(stderr, "If-None-Match") {
		t.Fatalf("exit %d; stderr:\n%s\nwant a refusal naming REGMIRROR_PEER_TOKEN_FILE and If-None-Match", code, stderr)
	}
	// One mirror on such a store still starts (with a warning).
	m := startMirror(t, up.URL, "", s3Env(s3, lying.URL, bucket)...)
	if !strings.Contains(m.Logs(), "ignores If-None-Match") {
		t.Errorf("no warning about the store; logs:\n%s", m.Logs())
	}
}

// kill -9 of a leader nobody follows, for a blob nobody asks for again: its
// lease does not stay in the bucket; the evictor's pass removes it once it
// is stale by the store's clock, without a download of the blob.
func TestReplicasLoneKilledLeaderLeavesNoLease(t *testing.T) {
	up, g := startGated(t, "alone", 1<<20)
	f := startFleet(t, up.URL, 3, nil, "REGMIRROR_PEER_LEASE_TTL=2s", "REGMIRROR_FLEET_INTERVAL=200ms", "REGMIRROR_FLEET_GRACE=1s")
	lead := f.replicas[1]
	cut := make(chan struct{})
	go func() {
		defer close(cut)
		if resp, err := http.Get(lead.URL + "/v2/" + g.repo + "/blobs/" + g.digest.String()); err == nil {
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}
	}()
	eventually(t, "replica 1 holds the digest's lease", func() (bool, string) {
		return f.leader(t, g.digest) == 1, fmt.Sprintf("the lease names replica %d", f.leader(t, g.digest))
	})
	lead.Kill()
	<-cut
	key := "leases/" + g.digest.String()
	eventually(t, "the dead leader's lease is removed", func() (bool, string) {
		_, left := f.s3.Objects(t, f.bucket)[key]
		return !left, key + " is still in the bucket"
	})
	if n := up.Count(http.MethodGet, g.path); n > 1 { // 0 when killed before it asked
		t.Errorf("%d upstream GETs of the blob, want at most the dead leader's: the lease was taken over, not removed", n)
	}
	if f.s3.Objects(t, f.bucket)["leases/evictor"] == 0 {
		t.Error("the evictor's own lease was removed")
	}
}

// The bucket's budget is the fleet's, kept by one evictor over every
// replica's uses: with images pulled through different replicas, the one
// least recently used across the fleet leaves the bucket, though the
// evictor's replica never used the one that stays; a pin made on another
// replica is honoured.
func TestReplicasEvictTheFleetsLeastRecentlyUsed(t *testing.T) {
	up := startUpstream(t, nil)
	imgs := make([]budImage, 3)
	for i := range imgs {
		imgs[i] = budPush(t, up, fmt.Sprintf("app%d:1", i), budRandom(t, mib, 1))
	}
	const interval = 200 * time.Millisecond
	// Two images of one 1 MiB layer fit in 3 MiB, three do not.
	f := startFleet(t, up.URL, 3, nil, "REGMIRROR_MAX_SIZE=3MiB", "REGMIRROR_LOCAL_MAX_SIZE=10MiB",
		"REGMIRROR_FLEET_INTERVAL="+interval.String(), "REGMIRROR_FLEET_GRACE="+(3*interval).String())
	ev := f.evictor(t)
	a, b := f.replicas[(ev+1)%3], f.replicas[(ev+2)%3]
	bi := (ev + 2) % 3
	layer := func(i int) string { return "blobs/sha256/" + imgs[i].layers[0].Hex }
	// The bucket's listing alone: the evictor may delete an object while a
	// check that reads it runs.
	waitContent := func(what string, cond func(c map[string]int64) bool) map[string]int64 {
		t.Helper()
		var content map[string]int64
		eventually(t, what, func() (bool, string) {
			content = map[string]int64{}
			for key, size := range f.s3.Objects(t, f.bucket) {
				if strings.HasPrefix(key, "blobs/") {
					content[key] = size
				}
			}
			return cond(content), fmt.Sprintf("the bucket holds %v", content)
		})
		return content
	}
	has := func(c map[string]int64, i int) bool { _, ok := c[layer(i)]; return ok }
	pull := func(m *mirrorProc, i int) {
		t.Helper()
		pullImage(t, m, imgs[i].name, imgs[i].digest)
		waitContent(imgs[i].name+" is in the bucket", func(c map[string]int64) bool { return has(c, i) })
	}
	pull(a, 0)
	pull(b, 1)
	pull(b, 0) // app0 again, on a replica that is not the evictor: app1 is now the fleet's least recently used
	f.merged(t, bi, time.Now().Add(interval))
	pull(f.replicas[ev], 2)
	content := waitContent("an image's layer is evicted from the bucket", func(c map[string]int64) bool {
		return !has(c, 0) || !has(c, 1) || !has(c, 2)
	})
	if has(content, 1) {
		t.Errorf("%s, the fleet's least recently used, is still in the bucket", imgs[1].name)
	}
	withinBudget(t, content, 3*mib)
	for _, i := range []int{0, 2} {
		if !has(content, i) {
			t.Errorf("%s, among the fleet's most recently used, was evicted from the bucket", imgs[i].name)
		}
	}

	// A pin made on a replica that is not the evictor: app0, made the least
	// recently used (pinning reads it) by a use of app2, is pinned, so
	// app1's return evicts app2 instead.
	if _, stderr, code := budCLI(t, a, "pin", imgs[0].name); code != 0 {
		t.Fatalf("regmirror pin %s: exit %d: %s", imgs[0].name, code, stderr)
	}
	pullImage(t, b, imgs[2].name, imgs[2].digest)
	f.merged(t, bi, time.Now().Add(interval))
	pullImage(t, a, imgs[1].name, imgs[1].digest)
	content = waitContent("app1's layer is back and another image's evicted", func(c map[string]int64) bool {
		return has(c, 1) && (!has(c, 0) || !has(c, 2))
	})
	if has(content, 2) {
		t.Errorf("%s, the least recently used but for the pinned, is still in the bucket", imgs[2].name)
	}
	if !has(content, 0) {
		t.Errorf("%s, pinned, was evicted from the bucket", imgs[0].name)
	}
}
