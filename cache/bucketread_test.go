package cache

import (
	"bytes"
	"context"
	"errors"
	"io"
	"slices"
	"testing"

	"github.com/minio/minio-go/v7"
	"github.com/regmirror/regmirror/test/regtest"
	"go.uber.org/zap/zaptest"
)

// warmInBucket stores a blob of n bytes through one store, and opens
// another on an empty data dir of the same bucket (so the blob is in the
// bucket only), whose requests for content are counted.
func warmInBucket(t *testing.T, n int, opt Options) (*Store, *regtest.ContentRequests, []byte, func() bool) {
	t.Helper()
	e := newBucketEnv(t)
	a := e.open(t.TempDir(), Options{}, true)
	body, h := randomContent(t, n)
	commit(t, a, body, h)
	e.uploaded(a, h, "blob not uploaded")
	ct := &regtest.ContentRequests{Next: testTransport(t)}
	o, err := NewS3Objects(S3Config{Endpoint: e.srv.Endpoint, Region: s3Region, Bucket: e.bucket, Prefix: "mirror", Transport: ct}, zaptest.NewLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	opt.Bucket = o
	b := e.open(t.TempDir(), opt, false)
	ct.Take()
	return b, ct, body, func() bool { return b.hasLocal(h) }
}

// A whole read of a blob in the bucket costs one GET, no HEAD first, and
// fills the local copy from the same bytes: no second read of the bucket.
func TestBucketWarmReadIsOneGet(t *testing.T) {
	s, ct, body, local := warmInBucket(t, 300_000, Options{})
	_, h := contentOfBytes(body)
	got, fromLocal := readBlob(t, s, h)
	if !bytes.Equal(got, body) || fromLocal {
		t.Fatalf("read %d bytes, local %v; want %d from the bucket", len(got), fromLocal, len(body))
	}
	waitFor(t, "the local copy filled", local)
	if seen := ct.Take(); !slices.Equal(seen, []string{"GET"}) {
		t.Fatalf("requests for the blob: %q; want one GET", seen)
	}
	if got, fromLocal := readBlob(t, s, h); !bytes.Equal(got, body) || !fromLocal {
		t.Fatalf("second read: %d bytes, local %v; want the local copy", len(got), fromLocal)
	}
	if seen := ct.Take(); len(seen) != 0 {
		t.Fatalf("requests for a blob in the local copy: %q", seen)
	}
}

// A range read opened where it starts costs one ranged GET; it does not
// fill the local copy from a part, and the background fill that follows
// (a GET of the whole) checks what it reads.
func TestBucketRangeReadThenFill(t *testing.T) {
	s, ct, body, local := warmInBucket(t, 300_000, Options{})
	_, h := contentOfBytes(body)
	r, err := s.OpenBlob(t.Context(), h, From{Offset: 1000})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.Seek(1000, io.SeekStart); err != nil {
		t.Fatal(err)
	}
	part := make([]byte, 500)
	if _, err := io.ReadFull(r, part); err != nil || !bytes.Equal(part, body[1000:1500]) {
		t.Fatalf("range: %v, right bytes %v", err, bytes.Equal(part, body[1000:1500]))
	}
	r.Close()
	waitFor(t, "the local copy filled in the background", local)
	want := []string{"GET bytes=1000-", "GET"}
	if seen := ct.Take(); !slices.Equal(seen, want) {
		t.Fatalf("requests: %q; want %q", seen, want)
	}
	if got, fromLocal := readBlob(t, s, h); !bytes.Equal(got, body) || !fromLocal {
		t.Fatalf("after the fill: %d bytes, local %v", len(got), fromLocal)
	}
}

// A blob larger than the local copy's budget is served from the bucket and
// not read again for a fill that could not keep it.
func TestBucketReadTooLargeForTheLocalCopyIsNotFilled(t *testing.T) {
	s, ct, body, local := warmInBucket(t, 300_000, Options{LocalMaxSize: 100_000})
	_, h := contentOfBytes(body)
	for i := range 2 {
		if got, fromLocal := readBlob(t, s, h); !bytes.Equal(got, body) || fromLocal {
			t.Fatalf("read %d: %d bytes, local %v", i, len(got), fromLocal)
		}
	}
	waitFor(t, "no fill running", func() bool { return !fillRunning(s) })
	if seen := ct.Take(); !slices.Equal(seen, []string{"GET", "GET"}) || local() {
		t.Fatalf("requests for two reads: %q (local copy %v); want a GET each, no fill", seen, local())
	}
}

// A staging file that is not the content (the bucket's bytes damaged) never
// becomes the local copy.
func TestBucketDamagedObjectIsNotKeptLocally(t *testing.T) {
	e := newBucketEnv(t)
	a := e.open(t.TempDir(), Options{}, true)
	body, h := randomContent(t, 50_000)
	commit(t, a, body, h)
	e.uploaded(a, h, "blob not uploaded")
	bad := bytes.Clone(body)
	bad[len(bad)/2] ^= 0xff
	key := "mirror/blobs/sha256/" + h.Hex
	if _, err := e.srv.Admin.PutObject(t.Context(), e.bucket, key, bytes.NewReader(bad), int64(len(bad)), minio.PutObjectOptions{}); err != nil {
		t.Fatal(err)
	}
	b := e.open(t.TempDir(), Options{}, false)
	got, _ := readBlob(t, b, h)
	if !bytes.Equal(got, bad) {
		t.Fatal("the bucket's bytes not served as they are")
	}
	waitFor(t, "no fill running", func() bool { return !fillRunning(b) })
	if b.hasLocal(h) {
		t.Fatal("damaged content became the local copy")
	}
}

// fillRunning reports whether a copy into s's local copy is claimed.
func fillRunning(s *Store) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.filling) > 0
}

// StatBlob, a HEAD's look, learns the size of a blob in the bucket only
// with one HEAD: no GET of the content and no fill of the local copy; of a
// blob in the local copy, with no request.
func TestBucketStatIsOneHead(t *testing.T) {
	s, ct, body, local := warmInBucket(t, 300_000, Options{})
	_, h := contentOfBytes(body)
	if size, err := s.StatBlob(t.Context(), h); err != nil || size != int64(len(body)) {
		t.Fatalf("StatBlob: %d, %v; want %d", size, err, len(body))
	}
	if fillRunning(s) || local() {
		t.Fatal("StatBlob started a fill of the local copy")
	}
	if seen := ct.Take(); !slices.Equal(seen, []string{"HEAD"}) {
		t.Fatalf("requests for the blob: %q; want one HEAD", seen)
	}
	readBlob(t, s, h)
	waitFor(t, "the local copy filled", local)
	ct.Take()
	if size, err := s.StatBlob(t.Context(), h); err != nil || size != int64(len(body)) {
		t.Fatalf("StatBlob of the local copy: %d, %v", size, err)
	}
	if seen := ct.Take(); len(seen) != 0 {
		t.Fatalf("requests for a blob in the local copy: %q", seen)
	}
}

// Content removed from the bucket behind the index's back: StatBlob misses
// as OpenBlob does, for one HEAD, and forgets the record, so that neither
// asks the bucket again.
func TestBucketStatOfContentGoneFromTheBucket(t *testing.T) {
	s, ct, body, _ := warmInBucket(t, 300_000, Options{})
	_, h := contentOfBytes(body)
	if err := s.opt.Bucket.Delete(t.Context(), h); err != nil {
		t.Fatal(err)
	}
	ct.Take()
	if _, err := s.StatBlob(t.Context(), h); !errors.Is(err, ErrNotFound) {
		t.Fatalf("StatBlob of content gone from the bucket: %v, want ErrNotFound", err)
	}
	if seen := ct.Take(); !slices.Equal(seen, []string{"HEAD"}) {
		t.Fatalf("requests: %q; want one HEAD", seen)
	}
	if s.Has(h) {
		t.Fatal("the record of content gone from the bucket is kept")
	}
	if _, err := s.OpenBlob(t.Context(), h, From{}); !errors.Is(err, ErrNotFound) {
		t.Fatalf("OpenBlob after StatBlob missed: %v", err)
	}
	if seen := ct.Take(); len(seen) != 0 {
		t.Fatalf("requests for forgotten content: %q", seen)
	}
}

// Stored learns that another replica stored a blob with one HEAD, and
// neither reads the blob nor fills the local copy: it only decides where a
// download's bytes come from.
func TestBucketStoredIsOneHead(t *testing.T) {
	e := newBucketEnv(t)
	ct := &regtest.ContentRequests{Next: testTransport(t)}
	o, err := NewS3Objects(S3Config{Endpoint: e.srv.Endpoint, Region: s3Region, Bucket: e.bucket, Prefix: "mirror", Transport: ct}, zaptest.NewLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	b := e.open(t.TempDir(), Options{Bucket: o, Shared: true}, false)
	if err := b.AwaitCounts(context.Background()); err != nil { // the empty bucket's rebuild, before a's blob
		t.Fatal(err)
	}
	a := e.open(t.TempDir(), Options{Shared: true}, true)
	body, h := randomContent(t, 300_000)
	ct.Take()
	if b.Stored(context.Background(), h) {
		t.Fatal("Stored before any replica stored the blob")
	}
	commit(t, a, body, h)
	e.uploaded(a, h, "blob not uploaded")
	if !b.Stored(context.Background(), h) {
		t.Fatal("Stored: false for a blob another replica stored")
	}
	if seen := ct.Take(); !slices.Equal(seen, []string{"HEAD", "HEAD"}) {
		t.Fatalf("requests for the blob: %q; want a HEAD per check, no GET", seen)
	}
	if b.hasLocal(h) {
		t.Fatal("Stored filled the local copy")
	}
}
