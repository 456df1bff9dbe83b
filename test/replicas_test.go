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
	env := append([]string{"REGMIRROR_ADDR=" + freeAddr(t)}, f.env...)
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
