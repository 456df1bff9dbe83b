package proxy_test

import (
	"bytes"
	"encoding/json"
	"maps"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/minio/minio-go/v7"
	"github.com/regmirror/regmirror/cache"
	"github.com/regmirror/regmirror/test/regtest"
	"go.uber.org/zap"
)

// bucketOf opens a fresh bucket of srv as the cache's object store, with
// credentials from the environment as in production.
func bucketOf(t *testing.T, srv *regtest.S3Server, bucket string) cache.Objects {
	t.Helper()
	tr := http.DefaultTransport.(*http.Transport).Clone()
	t.Cleanup(tr.CloseIdleConnections)
	return bucketVia(t, srv, bucket, tr)
}

// bucketVia is bucketOf whose requests go through tr.
func bucketVia(t *testing.T, srv *regtest.S3Server, bucket string, tr http.RoundTripper) cache.Objects {
	t.Helper()
	for _, kv := range srv.Env() {
		k, v, _ := strings.Cut(kv, "=")
		t.Setenv(k, v)
	}
	o, err := cache.NewS3Objects(cache.S3Config{Endpoint: srv.Endpoint, Bucket: bucket, Region: regtest.S3Region, Transport: tr}, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	return o
}

// waitUploaded waits until the env's store has uploaded everything it committed.
func (e *env) waitUploaded() {
	e.t.Helper()
	e.settle()
	deadline := time.Now().Add(20 * time.Second)
	for e.store.Bucket().Pending > 0 {
		if time.Now().After(deadline) {
			e.t.Fatalf("uploads pending: %+v", e.store.Bucket())
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// A new mirror host with an empty data dir, on the bucket of one that pulled
// an image, serves it by tag and by digest with its upstream down.
func TestBucketFreshHostServesWithTheUpstreamDown(t *testing.T) {
	srv := regtest.Versity(t)
	bucket := bucketOf(t, srv, srv.Bucket(t, "fresh-host"))
	a := newEnv(t, withBucket(bucket, 0))
	img, err := random.Image(64<<10, 3)
	if err != nil {
		t.Fatal(err)
	}
	a.push("library/app:1.0", img)
	pullAll(t, a, "library/app:1.0")
	a.waitUploaded()
	a.stop()
	digest, _ := img.Digest()

	b := newEnv(t, withBucket(bucket, 0))
	b.upstream.Close() // no upstream at all
	if n := pullAll(t, b, "library/app:1.0"); n == 0 {
		t.Fatal("by tag: nothing pulled")
	}
	if n := pullAll(t, b, "library/app@"+digest.String()); n == 0 {
		t.Fatal("by digest: nothing pulled")
	}
	if n := b.counts.Total(); n != 0 {
		t.Fatalf("the new host asked its upstream %d times", n)
	}
}

// blobInBucket starts a mirror on a new bucket of srv, which pulls a blob of
// 100 KB through it and uploads it.
func blobInBucket(t *testing.T, srv *regtest.S3Server, bucket string) (e *env, name string, body []byte, h v1.Hash) {
	t.Helper()
	name = srv.Bucket(t, bucket)
	e = newEnv(t, withBucket(bucketOf(t, srv, name), 0))
	body, h = regtest.RandomBlob(t, 100_000)
	e.pushBlob("app", body)
	if _, got := e.do(http.MethodGet, "/v2/app/blobs/"+h.String(), nil); !bytes.Equal(got, body) {
		t.Fatal("first pull: wrong bytes")
	}
	e.waitUploaded()
	return e, name, body, h
}

// countedOnBucket starts a mirror on an empty data dir and the bucket name
// (a local copy of localMax bytes), whose requests for content are counted
// from the moment its index is rebuilt from the bucket's listing.
func countedOnBucket(t *testing.T, srv *regtest.S3Server, name string, localMax int64) (*env, *regtest.ContentRequests) {
	t.Helper()
	tr := http.DefaultTransport.(*http.Transport).Clone()
	t.Cleanup(tr.CloseIdleConnections)
	seen := &regtest.ContentRequests{Next: tr}
	e := newEnv(t, withBucket(bucketVia(t, srv, name, seen), localMax))
	if err := e.store.AwaitCounts(t.Context()); err != nil {
		t.Fatal(err)
	}
	seen.Take()
	return e, seen
}

// A blob only in the bucket is served with Range, multi-range and
// conditional requests exactly as a file, a single range and a whole blob
// for one GET of the bucket each.
func TestBucketRangeAndConditionalFromTheBucket(t *testing.T) {
	srv := regtest.Versity(t)
	a, name, body, h := blobInBucket(t, srv, "ranges")
	a.stop()

	// A local copy with no room: every request is served from the bucket.
	b, seen := countedOnBucket(t, srv, name, 1)
	b.upstream.Close()
	path := "/v2/app/blobs/" + h.String()
	asked := func(what string, want ...string) {
		t.Helper()
		if got := seen.Take(); !slices.Equal(got, want) {
			t.Fatalf("%s: requests for the blob %q, want %q", what, got, want)
		}
	}
	resp, got := b.do(http.MethodGet, path, http.Header{"Range": {"bytes=1000-1999"}})
	if resp.StatusCode != http.StatusPartialContent || !bytes.Equal(got, body[1000:2000]) || resp.Header.Get("Content-Range") != "bytes 1000-1999/100000" {
		t.Fatalf("Range: %d %q, %d bytes", resp.StatusCode, resp.Header.Get("Content-Range"), len(got))
	}
	asked("Range", "GET bytes=1000-1999")
	resp, got = b.do(http.MethodGet, path, http.Header{"Range": {"bytes=-10"}})
	if resp.StatusCode != http.StatusPartialContent || !bytes.Equal(got, body[len(body)-10:]) {
		t.Fatalf("suffix Range: %d, %d bytes", resp.StatusCode, len(got))
	}
	asked("suffix Range", "GET bytes=-10")
	resp, got = b.do(http.MethodGet, path, http.Header{"Range": {"bytes=0-9,50000-50009"}})
	if resp.StatusCode != http.StatusPartialContent || !strings.HasPrefix(resp.Header.Get("Content-Type"), "multipart/byteranges") ||
		!bytes.Contains(got, body[:10]) || !bytes.Contains(got, body[50000:50010]) {
		t.Fatalf("multi-range: %d %q", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	asked("multi-range", "GET bytes=0-9", "GET bytes=50000-")
	etag := `"` + h.String() + `"`
	if resp, _ := b.do(http.MethodGet, path, http.Header{"If-None-Match": {etag}}); resp.StatusCode != http.StatusNotModified {
		t.Fatalf("If-None-Match: %d, want 304", resp.StatusCode)
	}
	seen.Take()
	resp, got = b.do(http.MethodGet, path, http.Header{"Range": {"bytes=200000-"}})
	if resp.StatusCode != http.StatusRequestedRangeNotSatisfiable || !strings.Contains(string(got), "RANGE_INVALID") {
		t.Fatalf("range past the end: %d %s", resp.StatusCode, got)
	}
	seen.Take()
	resp, got = b.do(http.MethodGet, path, nil)
	if resp.StatusCode != http.StatusOK || !bytes.Equal(got, body) {
		t.Fatalf("whole: %d, %d bytes", resp.StatusCode, len(got))
	}
	asked("whole", "GET")
	if u := b.store.Usage(); u.LocalObjects != 0 {
		t.Fatalf("the local copy was filled: %+v", u)
	}
}

// A HEAD of a blob in the bucket only costs one HEAD of its object: no GET,
// no fill of the local copy, and the headers a GET of the local copy gets,
// Range and conditional HEADs included. Once the object left the bucket
// behind the index's back, a HEAD answers as a GET does.
func TestBucketHeadIsOneHead(t *testing.T) {
	srv := regtest.Versity(t)
	a, name, body, h := blobInBucket(t, srv, "head")
	path := "/v2/app/blobs/" + h.String()
	asked := []http.Header{nil, {"Range": {"bytes=1000-1999"}}, {"Range": {"bytes=-10"}}, {"If-None-Match": {`"` + h.String() + `"`}}}
	var local []*http.Response
	for _, hdr := range asked {
		resp, _ := a.do(http.MethodGet, path, hdr) // http.ServeContent on the file
		local = append(local, resp)
	}
	a.stop()

	b, seen := countedOnBucket(t, srv, name, 0)
	for i, hdr := range asked {
		resp, _ := b.do(http.MethodHead, path, hdr)
		resp.Header.Del("Date")
		local[i].Header.Del("Date")
		if resp.StatusCode != local[i].StatusCode || !maps.EqualFunc(resp.Header, local[i].Header, slices.Equal) {
			t.Fatalf("HEAD %v from the bucket: %d %v; GET from the local copy: %d %v", hdr, resp.StatusCode, resp.Header, local[i].StatusCode, local[i].Header)
		}
		if got := seen.Take(); !slices.Equal(got, []string{"HEAD"}) {
			t.Fatalf("HEAD %v: requests for the blob %q; want one HEAD", hdr, got)
		}
	}
	b.settle()
	if u := b.store.Usage(); u.LocalObjects != 0 || b.counts.Total() != 0 {
		t.Fatalf("HEADs filled the local copy (%+v) or asked upstream (%d)", u, b.counts.Total())
	}

	if err := srv.Admin.RemoveObject(t.Context(), name, "blobs/sha256/"+h.Hex, minio.RemoveObjectOptions{}); err != nil {
		t.Fatal(err)
	}
	if resp, _ := b.do(http.MethodHead, path, nil); resp.StatusCode != http.StatusNotFound {
		t.Fatalf("HEAD of a blob gone from the bucket and unknown upstream: %d, want 404", resp.StatusCode)
	}
	if got := seen.Take(); !slices.Equal(got, []string{"HEAD"}) {
		t.Fatalf("HEAD of a blob gone from the bucket: requests %q; want one HEAD", got)
	}
	if resp, got := b.do(http.MethodGet, path, nil); resp.StatusCode != http.StatusNotFound || !bytes.Contains(got, []byte("BLOB_UNKNOWN")) {
		t.Fatalf("GET after the HEAD: %d %s, want 404 BLOB_UNKNOWN", resp.StatusCode, got)
	}
	if got := seen.Take(); len(got) != 0 {
		t.Fatalf("the HEAD did not forget the blob gone from the bucket: the GET asked %q", got)
	}
	b.pushBlob("app", body)
	if resp, _ := b.do(http.MethodHead, path, nil); resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Length") != "100000" {
		t.Fatalf("HEAD of a blob gone from the bucket, upstream has it: %d %v", resp.StatusCode, resp.Header)
	}
	if resp, got := b.do(http.MethodGet, path, nil); resp.StatusCode != http.StatusOK || !bytes.Equal(got, body) {
		t.Fatalf("GET of a blob gone from the bucket, upstream has it: %d, %d bytes", resp.StatusCode, len(got))
	}
}

// A bucket that stops answering: the local copy is served, a miss streams
// through from upstream without being stored, /readyz stays ready and says
// the bucket is down, and once it answers again new content is stored.
func TestBucketDownServesLocalAndStreamsMisses(t *testing.T) {
	srv := regtest.Versity(t)
	bucket := bucketOf(t, srv, srv.Bucket(t, "down"))
	e := newEnv(t, withBucket(bucket, 0), withTTL(time.Hour))
	warm, wh := regtest.RandomBlob(t, 50_000)
	e.pushBlob("app", warm)
	e.do(http.MethodGet, "/v2/app/blobs/"+wh.String(), nil)
	e.waitUploaded()

	srv.Stop()
	cold, ch := regtest.RandomBlob(t, 50_000)
	e.pushBlob("app", cold)
	// The first request that needs the bucket finds it down.
	if resp, got := e.do(http.MethodGet, "/v2/app/blobs/"+ch.String(), nil); resp.StatusCode != http.StatusOK || !bytes.Equal(got, cold) {
		t.Fatalf("a miss with the bucket down: %d, %d bytes", resp.StatusCode, len(got))
	}
	deadline := time.Now().Add(20 * time.Second)
	for !e.store.Bucket().Down && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	cold2, ch2 := regtest.RandomBlob(t, 50_000)
	e.pushBlob("app", cold2)
	if resp, got := e.do(http.MethodGet, "/v2/app/blobs/"+ch2.String(), nil); resp.StatusCode != http.StatusOK || !bytes.Equal(got, cold2) {
		t.Fatalf("a miss with the bucket down: %d, %d bytes", resp.StatusCode, len(got))
	}
	e.settle()
	if e.store.Has(ch2) {
		t.Fatal("a miss was stored while the bucket was down")
	}
	if resp, got := e.do(http.MethodGet, "/v2/app/blobs/"+wh.String(), nil); resp.StatusCode != http.StatusOK || !bytes.Equal(got, warm) {
		t.Fatalf("the local copy with the bucket down: %d, %d bytes", resp.StatusCode, len(got))
	}
	resp, body := e.do(http.MethodGet, "/readyz", nil)
	var ready struct {
		Ready  bool
		Bucket struct {
			Up     bool
			Reason string
		}
		Warnings []string
	}
	if err := json.Unmarshal(body, &ready); err != nil || resp.StatusCode != http.StatusOK || !ready.Ready || ready.Bucket.Up ||
		ready.Bucket.Reason == "" || len(ready.Warnings) == 0 {
		t.Fatalf("/readyz with the bucket down: %d %s", resp.StatusCode, body)
	}
	if _, page := e.do(http.MethodGet, "/", nil); !bytes.Contains(page, []byte(`id="bucket-down"`)) {
		t.Fatal("the status page does not say the bucket is down")
	}
	if m := regtest.Scrape(t, e.mirror.URL+"/metrics"); m.Value("regmirror_bucket_up") != 0 || m["regmirror_bucket_up"] == nil {
		t.Fatal("regmirror_bucket_up is not 0 while the bucket is down")
	}

	srv.Start()
	for e.store.Bucket().Down && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if resp, got := e.do(http.MethodGet, "/v2/app/blobs/"+ch2.String(), nil); resp.StatusCode != http.StatusOK || !bytes.Equal(got, cold2) {
		t.Fatalf("after the bucket came back: %d, %d bytes", resp.StatusCode, len(got))
	}
	e.waitUploaded()
	if !e.store.Has(ch2) || e.store.Bucket().Down {
		t.Fatalf("not stored once the bucket was back: %+v", e.store.Bucket())
	}
	if _, body := e.do(http.MethodGet, "/readyz", nil); bytes.Contains(body, []byte("warnings")) {
		t.Fatalf("/readyz still warns: %s", body)
	}
	if m := regtest.Scrape(t, e.mirror.URL+"/metrics"); m.Value("regmirror_bucket_up") != 1 {
		t.Fatal("regmirror_bucket_up is not 1 once the bucket is back")
	}
}

// Bytes that do not match their digest never reach the bucket: the client's
// response is cut, and neither the bucket nor an upload holds anything.
func TestBucketWrongBytesNeverEnterTheBucket(t *testing.T) {
	srv := regtest.Versity(t)
	name := srv.Bucket(t, "wrong-bytes")
	body, h := regtest.RandomBlob(t, 200_000)
	e := newEnv(t, withBucket(bucketOf(t, srv, name), 0), withUpstreamFault(corrupt(h, func(w http.ResponseWriter) {
		bad := bytes.Clone(body)
		bad[len(bad)/2] ^= 0xff
		w.Header().Set("Content-Length", strconv.Itoa(len(bad)))
		w.Write(bad)
	})))
	e.getCut("/v2/app/blobs/"+h.String(), "for wrong bytes")
	e.waitUploaded()
	if objs := srv.Objects(t, name); len(objs) != 0 {
		t.Fatalf("the bucket holds %v", objs)
	}
	if ups := srv.Uploads(t, name); len(ups) != 0 {
		t.Fatalf("incomplete uploads %q", ups)
	}
	if e.store.Has(h) {
		t.Fatal("wrong bytes were stored")
	}
}
