package cache

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/minio/minio-go/v7"
	"github.com/regmirror/regmirror/test/regtest"
	"go.uber.org/zap/zaptest"
)

// bucketEnv is a versitygw with a bucket, and the stores opened on it.
type bucketEnv struct {
	t      *testing.T
	srv    *regtest.S3Server
	bucket string
}

func newBucketEnv(t *testing.T) *bucketEnv {
	t.Helper()
	srv := regtest.Versity(t)
	setS3Credentials(t, s3Access, s3Secret)
	name := strings.ToLower(strings.NewReplacer("/", "-", "_", "-").Replace(t.Name()))
	if len(name) > 50 {
		name = name[:50]
	}
	return &bucketEnv{t: t, srv: srv, bucket: srv.Bucket(t, strings.Trim(name, "-"))}
}

// open opens a store on dir and the bucket; run starts its background work
// (uploads, probe, sweep). Both stop with the test.
func (e *bucketEnv) open(dir string, opt Options, run bool) *Store {
	e.t.Helper()
	if opt.Bucket == nil {
		opt.Bucket = s3Objects(e.t, e.srv, S3Config{Bucket: e.bucket, Prefix: "mirror", PartSize: minPartSize})
	}
	if opt.UploadRetry == 0 {
		opt.UploadRetry = 10 * time.Millisecond
	}
	s, err := Open(dir, opt, zaptest.NewLogger(e.t))
	if err != nil {
		e.t.Fatal(err)
	}
	if opt.beforeReconcile == nil {
		// A new data dir is rebuilt from the bucket first (empty or not):
		// the tests of what follows start once it is counted.
		if err := s.AwaitCounts(e.t.Context()); err != nil {
			e.t.Fatal(err)
		}
	}
	stop := func() {}
	if run {
		stop = runStore(s)
	}
	e.t.Cleanup(func() {
		stop()
		if !s.db.IsClosed() {
			s.Close()
		}
	})
	return s
}

// holdRebuild gives options whose rebuild of the index waits, once it has
// started, until release: a store opened with them is rebuilding.
func holdRebuild() (opt Options, release func()) {
	hold, held := make(chan struct{}), make(chan struct{})
	opt.beforeReconcile = func(ctx context.Context) {
		close(held)
		select {
		case <-hold:
		case <-ctx.Done():
		}
	}
	return opt, func() { <-held; close(hold) }
}

// runStore runs s's background work until the returned stop is called.
func runStore(s *Store) (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { s.Run(ctx); close(done) }()
	return func() { cancel(); <-done }
}

// contentKeys are the digests whose content is in the bucket (each one's
// bytes checked against its key).
func (e *bucketEnv) contentKeys() []string {
	e.t.Helper()
	var out []string
	for k := range e.srv.ContentKeys(e.t, e.bucket) {
		out = append(out, k[strings.LastIndexByte(k, '/')+1:])
	}
	slices.Sort(out)
	return out
}

// uploaded waits until s has uploaded everything, and fails the test with
// why unless h is in the bucket then.
func (e *bucketEnv) uploaded(s *Store, h v1.Hash, why string) {
	e.t.Helper()
	waitUploaded(e.t, s)
	if !e.inBucket(h) {
		e.t.Fatal(why)
	}
}

func (e *bucketEnv) inBucket(h v1.Hash) bool {
	return slices.Contains(e.contentKeys(), h.Hex)
}

// waitUploaded waits until s has nothing left to upload.
func waitUploaded(t *testing.T, s *Store) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for s.Bucket().Pending > 0 {
		if time.Now().After(deadline) {
			t.Fatalf("uploads still pending: %d; bucket %+v", s.Bucket().Pending, s.Bucket())
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// waitFor polls cond (a condition of a background loop) for up to 20 s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func commit(t *testing.T, s *Store, body []byte, h v1.Hash) {
	t.Helper()
	if err := tryCommit(s, body, h); err != nil {
		t.Fatal(err)
	}
}

func tryCommit(s *Store, body []byte, h v1.Hash) error {
	w, err := s.Create(h, int64(len(body)), "application/octet-stream")
	if err != nil {
		return err
	}
	if _, err := w.Write(body); err != nil {
		w.Abort()
		return err
	}
	return w.Commit()
}

// bucketImage is a manifest and its layers, as a pull stores them.
type bucketImage struct {
	manifest v1.Hash
	body     []byte
	layers   []v1.Hash
	content  [][]byte
}

const ociManifest = "application/vnd.oci.image.manifest.v1+json"

func storeBucketImage(t *testing.T, s *Store, sizes ...int) bucketImage {
	t.Helper()
	var img bucketImage
	type desc struct {
		Digest string `json:"digest"`
	}
	m := struct {
		SchemaVersion int    `json:"schemaVersion"`
		MediaType     string `json:"mediaType"`
		Layers        []desc `json:"layers"`
	}{SchemaVersion: 2, MediaType: ociManifest}
	for _, n := range sizes {
		b, h := randomContent(t, n)
		img.layers, img.content = append(img.layers, h), append(img.content, b)
		m.Layers = append(m.Layers, desc{h.String()})
	}
	img.body, _ = json.Marshal(m)
	_, img.manifest = contentOfBytes(img.body)
	if err := s.PutManifest(img.manifest, img.body, ociManifest); err != nil {
		t.Fatal(err)
	}
	for i, b := range img.content {
		commit(t, s, b, img.layers[i])
	}
	return img
}

func contentOfBytes(b []byte) ([]byte, v1.Hash) {
	h, _, _ := v1.SHA256(bytes.NewReader(b))
	return b, h
}

// readBlob reads h through OpenBlob, and says whether it came from the local copy.
func readBlob(t *testing.T, s *Store, h v1.Hash) (body []byte, local bool) {
	t.Helper()
	r, err := s.OpenBlob(t.Context(), h, From{})
	if err != nil {
		t.Fatalf("open blob %s: %v", h, err)
	}
	defer r.Close()
	_, local = r.(*os.File)
	body, err = io.ReadAll(r)
	if err != nil {
		t.Fatal(err)
	}
	return body, local
}

// A new host with an empty data dir on the bucket knows every tag, pin,
// manifest and blob of it, with no upstream at all; while its index is
// rebuilt, it serves from the bucket already.
func TestBucketEmptyDirRebuildsFromTheBucket(t *testing.T) {
	e := newBucketEnv(t)
	a := e.open(t.TempDir(), Options{}, true)
	img := storeBucketImage(t, a, 3000, 5000)
	answer := TagAnswer{Digest: img.manifest, MediaType: ociManifest, Size: int64(len(img.body)), LearnedAt: time.Unix(1_700_000_000, 0).UTC()}
	if err := a.SetTag("docker.io", "library/app", "1.0", answer); err != nil {
		t.Fatal(err)
	}
	if err := a.Pin(Pin{Registry: "docker.io", Repo: "library/app", Ref: "1.0", Digest: img.manifest}); err != nil {
		t.Fatal(err)
	}
	waitUploaded(t, a)

	opt, release := holdRebuild()
	b := e.open(t.TempDir(), opt, true)
	// While the index is rebuilt: a local miss asks the bucket.
	if got, err := b.Tag("docker.io", "library/app", "1.0"); err != nil || got.Digest != img.manifest {
		t.Fatalf("tag while rebuilding: %+v, %v", got, err)
	}
	if got, local := readBlob(t, b, img.layers[0]); !bytes.Equal(got, img.content[0]) || local {
		t.Fatalf("blob while rebuilding: %d bytes, local %v", len(got), local)
	}
	release()
	if err := b.AwaitCounts(t.Context()); err != nil {
		t.Fatal(err)
	}
	if got, err := b.Tag("docker.io", "library/app", "1.0"); err != nil || got != answer {
		t.Fatalf("tag: %+v, %v; want %+v", got, err, answer)
	}
	body, info, err := b.Manifest(t.Context(), img.manifest, 1<<20)
	if err != nil || !bytes.Equal(body, img.body) || info.MediaType != ociManifest {
		t.Fatalf("manifest: %q %+v %v", body, info, err)
	}
	for i, h := range img.layers {
		if !b.Has(h) {
			t.Errorf("layer %d not known after the rebuild", i)
		}
		if got, _ := readBlob(t, b, h); !bytes.Equal(got, img.content[i]) {
			t.Errorf("layer %d: wrong bytes", i)
		}
	}
	pins, err := b.Pins()
	if err != nil || len(pins) != 1 || pins[0].Digest != img.manifest {
		t.Fatalf("pins: %+v, %v", pins, err)
	}
	u := b.Usage()
	if want := int64(len(img.body) + 3000 + 5000); u.Bytes != want || u.Objects != 3 || !u.InBucket {
		t.Fatalf("usage %+v, want %d bytes in 3 objects", u, want)
	}
	images, err := b.Images()
	if err != nil || len(images) != 1 || images[0].Objects != 3 || images[0].Missing != 0 || !images[0].Pinned {
		t.Fatalf("images (the manifest's layers learned from the bucket): %+v, %v", images, err)
	}
}

// Content enters the bucket only after its commit verified it, and by the
// background uploader, never in front of the writer.
func TestBucketUploadsAfterTheCommit(t *testing.T) {
	e := newBucketEnv(t)
	s := e.open(t.TempDir(), Options{}, false)
	body, h := randomContent(t, 7<<20) // multipart: two parts
	bad := bytes.Clone(body)
	bad[len(bad)-1] ^= 1
	if err := tryCommit(s, bad, h); !errors.Is(err, ErrDigestMismatch) {
		t.Fatalf("commit of wrong content: %v", err)
	}
	commit(t, s, body, h)
	if keys := e.contentKeys(); len(keys) != 0 || s.Bucket().Pending != 1 {
		t.Fatalf("after the commit, before any upload: bucket %q, pending %d", keys, s.Bucket().Pending)
	}
	if got, local := readBlob(t, s, h); !local || !bytes.Equal(got, body) {
		t.Fatal("committed content is not served from the local copy")
	}
	defer runStore(s)()
	waitUploaded(t, s)
	if keys := e.contentKeys(); !slices.Equal(keys, []string{h.Hex}) {
		t.Fatalf("bucket %q, want only %s", keys, h.Hex)
	}
	if ups := e.srv.Uploads(t, e.bucket); len(ups) != 0 {
		t.Fatalf("incomplete uploads: %q", ups)
	}
}

// Local content damaged after its commit is not uploaded: the upload hashes
// it again and it is dropped.
func TestBucketDamagedLocalContentIsNotUploaded(t *testing.T) {
	e := newBucketEnv(t)
	s := e.open(t.TempDir(), Options{}, false)
	body, h := randomContent(t, 4000)
	commit(t, s, body, h)
	damaged := bytes.Clone(body)
	damaged[0] ^= 1
	if err := os.WriteFile(s.path(h), damaged, 0o640); err != nil {
		t.Fatal(err)
	}
	defer runStore(s)()
	waitUploaded(t, s)
	if keys := e.contentKeys(); len(keys) != 0 || s.Has(h) {
		t.Fatalf("bucket %q, has %v: damaged content was kept", keys, s.Has(h))
	}
}

// The local copy has its own budget: its least recently used files go, the
// bucket keeps them, and they are served from the bucket; content not yet
// uploaded never leaves the local copy.
func TestBucketLocalEvictionKeepsTheBucketsContent(t *testing.T) {
	e := newBucketEnv(t)
	s := e.open(t.TempDir(), Options{LocalMaxSize: 25_000}, false)
	var bodies [][]byte
	var hs []v1.Hash
	for range 2 {
		b, h := randomContent(t, 10_000)
		commit(t, s, b, h)
		bodies, hs = append(bodies, b), append(hs, h)
	}
	// Nothing uploaded yet: the local copy cannot make room for a third.
	b3, h3 := randomContent(t, 10_000)
	if err := tryCommit(s, b3, h3); !errors.Is(err, ErrNoSpace) {
		t.Fatalf("a third blob with the first two not uploaded: %v, want ErrNoSpace", err)
	}
	for _, h := range hs {
		if !s.hasLocal(h) {
			t.Fatalf("%s, not uploaded, left the local copy", h)
		}
	}
	stop := runStore(s)
	defer func() { stop() }()
	waitUploaded(t, s)
	commit(t, s, b3, h3) // now the oldest local file can go
	bodies, hs = append(bodies, b3), append(hs, h3)
	u := s.Usage()
	if u.LocalBytes > 25_000 || s.hasLocal(hs[0]) {
		t.Fatalf("local copy %d bytes of a 25000 budget, first blob local %v", u.LocalBytes, s.hasLocal(hs[0]))
	}
	if u.Objects != 3 || u.Bytes != 30_000 {
		t.Fatalf("bucket usage %+v, want all three", u)
	}
	waitUploaded(t, s)
	if keys := e.contentKeys(); len(keys) != 3 {
		t.Fatalf("bucket %q, want all three", keys)
	}
	got, local := readBlob(t, s, hs[0])
	if local || !bytes.Equal(got, bodies[0]) {
		t.Fatalf("evicted-locally blob: local %v, right bytes %v", local, bytes.Equal(got, bodies[0]))
	}
	// The read filled the local copy again, in the background.
	waitFor(t, "the local copy filled from the bucket", func() bool { return s.hasLocal(hs[0]) })
}

// MaxSize is the bucket's budget: eviction is image-aware LRU over the
// bucket, deletes from it, and leaves pinned images alone.
func TestBucketEvictionIsImageAware(t *testing.T) {
	e := newBucketEnv(t)
	c := &testClock{now: time.Unix(1_700_000_000, 0)}
	s := e.open(t.TempDir(), Options{MaxSize: 100_000, Now: c.Now}, true)
	var imgs []bucketImage
	for range 3 {
		c.tick()
		imgs = append(imgs, storeBucketImage(t, s, 1000, 25_000))
	}
	if err := s.Pin(Pin{Registry: "r", Repo: "pinned", Ref: "1", Digest: imgs[0].manifest}); err != nil {
		t.Fatal(err)
	}
	c.tick()
	if _, _, err := s.Manifest(t.Context(), imgs[1].manifest, 1<<20); err != nil { // a pull of the second
		t.Fatal(err)
	}
	waitUploaded(t, s)
	c.tick()
	img4 := storeBucketImage(t, s, 1000, 25_000) // past the 95 000 high mark: the third goes
	waitFor(t, "the evictor", func() bool { return !s.Has(imgs[2].layers[1]) })
	waitUploaded(t, s)
	for i, img := range []bucketImage{imgs[0], imgs[1], img4} {
		for _, h := range append(img.layers, img.manifest) {
			if !s.Has(h) || !e.inBucket(h) {
				t.Errorf("image %d lost %s (index %v, bucket %v)", i, h, s.Has(h), e.inBucket(h))
			}
		}
	}
	if e.inBucket(imgs[2].layers[1]) {
		t.Fatal("the evicted layer is still in the bucket")
	}
	if u := s.Usage(); u.Bytes > 90_000 || u.Evictions == 0 {
		t.Fatalf("usage after eviction: %+v", u)
	}
}

type testClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *testClock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.now }
func (c *testClock) tick()          { c.mu.Lock(); c.now = c.now.Add(time.Minute); c.mu.Unlock() }

// A bucket that stops answering is a degraded state: the local copy is
// served, nothing new is stored (the caller streams it), uploads wait, and
// the store notices by itself when the bucket is back.
func TestBucketDownAndBack(t *testing.T) {
	e := newBucketEnv(t)
	s := e.open(t.TempDir(), Options{}, true)
	body, h := randomContent(t, 5000)
	commit(t, s, body, h)
	waitUploaded(t, s)
	remote, rh := randomContent(t, 5000)
	commit(t, s, remote, rh)
	waitUploaded(t, s)
	s.mu.Lock()
	s.dropLocal(rh) // only in the bucket now
	s.mu.Unlock()

	e.srv.Stop()
	pendingBody, ph := randomContent(t, 5000)
	commit(t, s, pendingBody, ph) // the bucket is not known down yet: its upload waits
	waitFor(t, "the bucket marked down", func() bool { return s.Bucket().Down })
	if err := s.Healthy(); err != nil {
		t.Fatalf("a bucket down made the store unhealthy: %v", err)
	}
	if got, local := readBlob(t, s, h); !local || !bytes.Equal(got, body) {
		t.Fatal("the local copy is not served while the bucket is down")
	}
	if _, err := s.OpenBlob(t.Context(), rh, From{}); !errors.Is(err, ErrNotFound) {
		t.Fatalf("content only in a bucket that is down: %v, want ErrNotFound (a miss, streamed)", err)
	}
	if s.Has(rh) {
		t.Fatal("Has says yes for content only in a bucket that is down")
	}
	nb, nh := randomContent(t, 100)
	if err := tryCommit(s, nb, nh); !errors.Is(err, ErrNoSpace) {
		t.Fatalf("a new blob while the bucket is down: %v, want ErrNoSpace", err)
	}
	if st := s.Bucket(); st.Pending != 1 || st.Reason == "" || st.Since.IsZero() {
		t.Fatalf("state while down: %+v", st)
	}

	e.srv.Start()
	waitFor(t, "the bucket back", func() bool { return !s.Bucket().Down })
	e.uploaded(s, ph, "content committed while the bucket was down was not uploaded once it was back")
	if got, _ := readBlob(t, s, rh); !bytes.Equal(got, remote) {
		t.Fatal("content in the bucket not served once it is back")
	}
}

// Multipart uploads an earlier process left incomplete are aborted by the
// sweep at start.
func TestBucketSweepsStaleMultipartUploads(t *testing.T) {
	e := newBucketEnv(t)
	core := minio.Core{Client: e.srv.Admin}
	id, err := core.NewMultipartUpload(t.Context(), e.bucket, "mirror/blobs/sha256/"+strings.Repeat("ab", 32), minio.PutObjectOptions{})
	if err != nil {
		t.Fatal(err)
	}
	other, err := core.NewMultipartUpload(t.Context(), e.bucket, "someone-else/file", minio.PutObjectOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if ups := e.srv.Uploads(t, e.bucket); len(ups) != 2 {
		t.Fatalf("uploads %q", ups)
	}
	e.open(t.TempDir(), Options{StaleUploads: time.Nanosecond}, true)
	waitFor(t, "the sweep", func() bool {
		ups := e.srv.Uploads(t, e.bucket)
		return !slices.ContainsFunc(ups, func(u string) bool { return strings.HasSuffix(u, " "+id) })
	})
	if ups := e.srv.Uploads(t, e.bucket); !slices.Equal(ups, []string{"someone-else/file " + other}) {
		t.Fatalf("uploads left %q: the sweep must leave keys outside the prefix alone", ups)
	}
}

// A crash after a commit and before its upload loses nothing: the next
// start uploads it (its marker was written before the rename), and counts it.
func TestBucketCrashBeforeUpload(t *testing.T) {
	e := newBucketEnv(t)
	dir := t.TempDir()
	s := e.open(dir, Options{}, false)
	body, h := randomContent(t, 6000)
	commit(t, s, body, h)
	if err := s.SetTag("docker.io", "app", "v1", TagAnswer{Digest: h, LearnedAt: time.Unix(1, 0).UTC()}); err != nil {
		t.Fatal(err)
	}
	crash(t, s)
	if keys := e.contentKeys(); len(keys) != 0 {
		t.Fatalf("bucket %q before the restart", keys)
	}
	s2 := e.open(dir, Options{}, true)
	e.uploaded(s2, h, "content committed before the crash was not uploaded after it")
	if _, err := e.srv.Admin.StatObject(t.Context(), e.bucket, "mirror/tags/docker.io/app:v1", minio.StatObjectOptions{}); err != nil {
		t.Fatalf("tag answer written before the crash is not in the bucket: %v", err)
	}
	if u := s2.Usage(); u.Objects != 1 || u.Bytes != 6000 || u.LocalBytes != 6000 {
		t.Fatalf("usage after the restart: %+v", u)
	}
}

// A data dir that served from disk and is then put on a bucket uploads what
// it holds, even after a clean close (whose totals were the disk's): its
// content, tag answers and pins. From then on it is the bucket's.
func TestBucketDiskStoreMovedOntoABucketUploadsItsContent(t *testing.T) {
	e := newBucketEnv(t)
	dir := t.TempDir()
	disk, err := Open(dir, Options{}, zaptest.NewLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	_, h := fillStore(t, disk)
	if err := disk.Close(); err != nil {
		t.Fatal(err)
	}
	s := e.open(dir, Options{}, true)
	e.uploaded(s, h, "the disk store's content was not uploaded")
	for _, key := range []string{"mirror/tags/r/app:v1", "mirror/pins/r/app:v1"} {
		if _, err := e.srv.Admin.StatObject(t.Context(), e.bucket, key, minio.StatObjectOptions{}); err != nil {
			t.Errorf("%s is not in the bucket: %v", key, err)
		}
	}
	if pins, err := s.Pins(); err != nil || len(pins) != 1 {
		t.Fatalf("pins after the move: %v, %v", pins, err)
	}
	if _, _, err := checkStoreRecord(dir, StoreID{Kind: KindDisk}); err == nil {
		t.Fatal("after the move the data dir is still recorded as a disk store")
	}
}

// Deleting a tag answer or a pin removes its record from the bucket, so a
// new host does not learn it back.
func TestBucketDeletedTagAndPinLeaveTheBucket(t *testing.T) {
	e := newBucketEnv(t)
	s := e.open(t.TempDir(), Options{}, true)
	_, h := randomContent(t, 10)
	if err := s.SetTag("r", "app", "old", TagAnswer{Digest: h}); err != nil {
		t.Fatal(err)
	}
	if err := s.Pin(Pin{Registry: "r", Repo: "app", Ref: "old", Digest: h}); err != nil {
		t.Fatal(err)
	}
	waitUploaded(t, s)
	records := func() []string {
		var out []string
		for k := range e.srv.Objects(t, e.bucket) {
			if !strings.Contains(k, "/blobs/") {
				out = append(out, k)
			}
		}
		slices.Sort(out)
		return out
	}
	if got, want := records(), []string{"mirror/pins/r/app:old", "mirror/tags/r/app:old"}; !slices.Equal(got, want) {
		t.Fatalf("records %q, want %q", got, want)
	}
	if err := s.DeleteTag("r", "app", "old"); err != nil {
		t.Fatal(err)
	}
	if err := s.Unpin("r", "app", "old"); err != nil {
		t.Fatal(err)
	}
	waitUploaded(t, s)
	if got := records(); len(got) != 0 {
		t.Fatalf("records left in the bucket: %q", got)
	}
	fresh := e.open(t.TempDir(), Options{}, true)
	if _, err := fresh.Tag("r", "app", "old"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("a new host knows the deleted tag: %v", err)
	}
}

// The bucket is the truth: content removed from it behind the store's back
// is forgotten by the next rebuild, or at the first read that misses it.
func TestBucketContentGoneFromTheBucketIsForgotten(t *testing.T) {
	e := newBucketEnv(t)
	dir := t.TempDir()
	s := e.open(dir, Options{}, true)
	var hs []v1.Hash
	for range 2 {
		b, h := randomContent(t, 2000)
		commit(t, s, b, h)
		hs = append(hs, h)
	}
	waitUploaded(t, s)
	for _, h := range hs {
		s.mu.Lock()
		s.dropLocal(h)
		s.mu.Unlock()
		if err := e.srv.Admin.RemoveObject(t.Context(), e.bucket, "mirror/blobs/sha256/"+h.Hex, minio.RemoveObjectOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := s.OpenBlob(t.Context(), hs[0], From{}); !errors.Is(err, ErrNotFound) {
		t.Fatalf("open of content gone from the bucket: %v", err)
	}
	if s.Has(hs[0]) || s.Usage().Objects != 1 {
		t.Fatalf("a read that missed did not forget it: has %v, usage %+v", s.Has(hs[0]), s.Usage())
	}
	crash(t, s)
	s2 := e.open(dir, Options{}, true)
	if s2.Has(hs[1]) || s2.Usage().Objects != 0 {
		t.Fatalf("the rebuild kept content the bucket lost: has %v, usage %+v", s2.Has(hs[1]), s2.Usage())
	}
}

// Verify with a bucket drops a damaged local file and keeps the content,
// which the bucket still has.
func TestBucketVerifyDropsOnlyTheLocalCopy(t *testing.T) {
	e := newBucketEnv(t)
	s := e.open(t.TempDir(), Options{}, true)
	body, h := randomContent(t, 3000)
	commit(t, s, body, h)
	waitUploaded(t, s)
	if err := os.WriteFile(s.path(h), make([]byte, 3000), 0o640); err != nil {
		t.Fatal(err)
	}
	rep, err := s.Verify(t.Context(), nil)
	if err != nil || len(rep.Corrupt) != 1 {
		t.Fatalf("verify: %+v, %v", rep, err)
	}
	if !s.Has(h) || !e.inBucket(h) || s.hasLocal(h) {
		t.Fatalf("after verify: has %v, in the bucket %v, local %v", s.Has(h), e.inBucket(h), s.hasLocal(h))
	}
	if got, local := readBlob(t, s, h); local || !bytes.Equal(got, body) {
		t.Fatal("not served from the bucket after its local copy was dropped")
	}
}

// A bucket that goes missing while the store runs (or whose credentials are
// revoked) is down, not a failure: it is served around, and noticed when an
// operator puts it back, without a restart.
func TestBucketMissingAtRunTimeIsDown(t *testing.T) {
	e := newBucketEnv(t)
	s := e.open(t.TempDir(), Options{}, false)
	body, h := randomContent(t, 1000)
	commit(t, s, body, h)
	if err := e.srv.Admin.RemoveBucket(t.Context(), e.bucket); err != nil {
		t.Fatal(err)
	}
	defer runStore(s)() // the upload, or the sweep, finds the bucket gone
	waitFor(t, "the bucket marked down", func() bool { return s.Bucket().Down })
	if st := s.Bucket(); !strings.Contains(st.Reason, "bucket does not exist") {
		t.Fatalf("reason %q", st.Reason)
	}
	if err := s.Healthy(); err != nil {
		t.Fatal(err)
	}
	if got, local := readBlob(t, s, h); !local || !bytes.Equal(got, body) {
		t.Fatal("the local copy is not served")
	}
	e.srv.Bucket(t, e.bucket)
	waitFor(t, "the bucket back", func() bool { return !s.Bucket().Down })
	e.uploaded(s, h, "not uploaded once the bucket was back")
}

// Commits and fills made while the index is rebuilt from the bucket are
// counted once, whether the rebuild's walk and listing saw them or not.
func TestBucketCommitsDuringTheRebuildCountOnce(t *testing.T) {
	e := newBucketEnv(t)
	a := e.open(t.TempDir(), Options{}, true)
	old, oh := randomContent(t, 1000)
	commit(t, a, old, oh)
	waitUploaded(t, a)

	opt, release := holdRebuild()
	s := e.open(t.TempDir(), opt, true)
	readBlob(t, s, oh) // from the bucket; the local copy is filled meanwhile
	waitFor(t, "the fill", func() bool { return s.hasLocal(oh) })
	body, h := randomContent(t, 2000)
	commit(t, s, body, h)
	waitUploaded(t, s) // in the bucket before the rebuild lists it
	release()
	if err := s.AwaitCounts(t.Context()); err != nil {
		t.Fatal(err)
	}
	if u := s.Usage(); u.Objects != 2 || u.Bytes != 3000 || u.LocalObjects != 2 || u.LocalBytes != 3000 {
		t.Fatalf("usage %+v: want 2 objects of 3000 bytes, in the bucket and locally", u)
	}
}

// Content named by sha512 goes to the bucket under blobs/sha512/ and is
// rebuilt from it like sha256 content, in one merge of both listings.
func TestBucketSha512ContentRoundTrips(t *testing.T) {
	e := newBucketEnv(t)
	a := e.open(t.TempDir(), Options{}, true)
	b256, h256 := randomContentBy(t, "sha256", 3000)
	b512, h512 := randomContentBy(t, "sha512", 4000)
	commit(t, a, b256, h256)
	commit(t, a, b512, h512)
	waitUploaded(t, a)
	if _, ok := e.srv.Objects(t, e.bucket)["mirror/blobs/sha512/"+h512.Hex]; !ok {
		t.Fatalf("no sha512 object in %v", e.srv.Objects(t, e.bucket))
	}
	fresh := e.open(t.TempDir(), Options{}, true)
	if u := fresh.Usage(); u.Objects != 2 || u.Bytes != 7000 {
		t.Fatalf("usage after the rebuild: %+v", u)
	}
	for _, c := range []struct {
		body []byte
		h    v1.Hash
	}{{b256, h256}, {b512, h512}} {
		if got, _ := readBlob(t, fresh, c.h); !fresh.Has(c.h) || !bytes.Equal(got, c.body) {
			t.Errorf("%s after the rebuild: has %v, right bytes %v", c.h, fresh.Has(c.h), bytes.Equal(got, c.body))
		}
	}
}
