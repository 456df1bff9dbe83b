package cache

import (
	"errors"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"
)

// fleetEnv is a bucket with replicas on it, sharing one clock.
type fleetEnv struct {
	*bucketEnv
	clock *testClock
}

func newFleetEnv(t *testing.T) *fleetEnv {
	return &fleetEnv{bucketEnv: newBucketEnv(t), clock: &testClock{now: time.Unix(1_700_000_000, 0)}}
}

// replica opens a replica named name. With run, its background work runs
// (uploads and, at once and then every interval, its fleet round); without,
// the test drives its rounds with tick.
func (e *fleetEnv) replica(name string, budget int64, grace, interval time.Duration, run bool) *Store {
	e.t.Helper()
	s := e.open(e.t.TempDir(), Options{MaxSize: budget, Now: e.clock.Now,
		Fleet: &FleetOptions{Replica: name, Interval: interval, Grace: grace}}, run)
	if err := s.AwaitCounts(e.t.Context()); err != nil {
		e.t.Fatal(err)
	}
	return s
}

func (e *fleetEnv) advance(d time.Duration) {
	e.clock.mu.Lock()
	e.clock.now = e.clock.now.Add(d)
	e.clock.mu.Unlock()
}

// pull reads an image on s as a client's pull does: the manifest, then
// every layer whole.
func pull(t *testing.T, s *Store, img bucketImage) {
	t.Helper()
	if _, _, err := s.Manifest(t.Context(), img.manifest, 1<<20); err != nil {
		t.Fatalf("pull manifest %s: %v", img.manifest, err)
	}
	for _, h := range img.layers {
		r, err := s.OpenBlob(t.Context(), h, From{})
		if err != nil {
			t.Fatalf("pull layer %s: %v", h, err)
		}
		io.Copy(io.Discard, r)
		r.Close()
	}
}

func tick(t *testing.T, stores ...*Store) {
	t.Helper()
	for _, s := range stores {
		s.fleet.tick(t.Context())
	}
}

func (e *fleetEnv) imageInBucket(img bucketImage) bool {
	for _, h := range append(img.layers, img.manifest) {
		if !e.inBucket(h) {
			return false
		}
	}
	return true
}

// The evictor orders the bucket's content by the uses of every replica
// combined: an image that only the evictor's replica stored but others
// pulled since outlives one nobody pulled, though the evictor itself used it
// last long ago.
func TestFleetEvictionOrderByCombinedAccess(t *testing.T) {
	e := newFleetEnv(t)
	const grace = 3 * time.Hour
	a := e.replica("a", 100_000, grace, time.Hour, true) // a runs the evictor: its first round is at start
	waitFor(t, "a to hold the evictor's lease", func() bool { return a.fleet.leading() })
	b := e.replica("b", 100_000, grace, time.Hour, false)
	c := e.replica("c", 100_000, grace, time.Hour, false)
	var imgs []bucketImage
	for range 3 {
		e.advance(time.Minute)
		imgs = append(imgs, storeBucketImage(t, a, 1000, 25_000))
	}
	waitUploaded(t, a)
	pull(t, b, imgs[2]) // as it is stored: b keeps a local copy of it
	waitFor(t, "b's local copy", func() bool { return b.hasLocal(imgs[2].layers[1]) })
	e.advance(time.Minute)
	pull(t, b, imgs[0])
	e.advance(time.Minute)
	pull(t, c, imgs[1])
	e.advance(time.Minute)
	img4 := storeBucketImage(t, a, 1000, 25_000) // past the high mark of 95 000
	waitUploaded(t, a)
	e.advance(grace + time.Hour) // every use is past the grace period: LRU alone decides
	tick(t, b, c, a)

	if e.inBucket(imgs[2].layers[1]) { // its big layer goes first, and is enough
		t.Error("the image nobody pulled since it was stored is still whole in the bucket")
	}
	for i, img := range []bucketImage{imgs[0], imgs[1], img4} {
		if !e.imageInBucket(img) {
			t.Errorf("image %d, pulled by a replica since, was evicted", i)
		}
	}
	st, _ := a.Fleet()
	if st.Evicted == 0 || !st.EvictorHere || st.BucketBytes > 90_000 || st.Budget != 100_000 {
		t.Errorf("evictor's view: %+v", st)
	}
	// The others learn it from the evictor's notice: b drops its local copy.
	tick(t, b, c)
	for _, s := range []*Store{a, b, c} {
		if s.Has(imgs[2].layers[1]) || s.hasLocal(imgs[2].layers[1]) {
			t.Errorf("%s still has the evicted layer", s.fleet.opt.Replica)
		}
		if st, _ := s.Fleet(); st.Evictor != "a" || st.BucketObjects != int64(len(e.contentKeys())) || len(st.Replicas) != 3 {
			t.Errorf("%s's view of the fleet: %+v", s.fleet.opt.Replica, st)
		}
	}
}

// Nothing any replica used within the grace period is evicted, even when
// the bucket stays over its budget for it.
func TestFleetGracePeriod(t *testing.T) {
	e := newFleetEnv(t)
	const grace = 3 * time.Hour
	a := e.replica("a", 50_000, grace, time.Hour, true)
	waitFor(t, "a to hold the evictor's lease", func() bool { return a.fleet.leading() })
	b := e.replica("b", 50_000, grace, time.Hour, false)
	var imgs []bucketImage
	for range 3 {
		e.advance(time.Minute)
		imgs = append(imgs, storeBucketImage(t, a, 1000, 25_000))
	}
	waitUploaded(t, a)
	e.advance(grace + time.Hour)
	img4 := storeBucketImage(t, a, 1000, 25_000) // stored within the grace period
	waitUploaded(t, a)
	e.advance(time.Minute)
	pull(t, b, imgs[0]) // used by another replica within the grace period
	e.advance(time.Minute)
	tick(t, b, a)

	for i, img := range []bucketImage{imgs[1], imgs[2]} {
		if e.imageInBucket(img) {
			t.Errorf("image %d, unused for longer than the grace period, is still in the bucket", i+1)
		}
	}
	if !e.imageInBucket(imgs[0]) || !e.imageInBucket(img4) {
		t.Fatalf("evicted within the grace period: image 0 %v, image 4 %v", e.imageInBucket(imgs[0]), e.imageInBucket(img4))
	}
	if st, _ := a.Fleet(); st.BucketBytes <= 45_000 {
		t.Fatalf("the bucket went under its low mark: %+v", st)
	}
}

// The pins in the bucket are honoured by the evictor, whichever replica
// pinned the image.
func TestFleetPinsHonoured(t *testing.T) {
	e := newFleetEnv(t)
	a := e.replica("a", 30_000, 3*time.Hour, time.Hour, true)
	waitFor(t, "a to hold the evictor's lease", func() bool { return a.fleet.leading() })
	b := e.replica("b", 30_000, 3*time.Hour, time.Hour, true)
	var imgs []bucketImage
	for range 2 {
		e.advance(time.Minute)
		imgs = append(imgs, storeBucketImage(t, a, 1000, 25_000))
	}
	if err := b.Pin(Pin{Registry: "docker.io", Repo: "library/app", Ref: "1", Digest: imgs[0].manifest}); err != nil {
		t.Fatal(err)
	}
	waitUploaded(t, a)
	waitUploaded(t, b)
	e.advance(4 * time.Hour)
	tick(t, a)
	if !e.imageInBucket(imgs[0]) {
		t.Fatal("the image pinned on another replica was evicted")
	}
	if e.imageInBucket(imgs[1]) {
		t.Fatal("the unpinned image was kept over the budget")
	}
}

// One evictor at a time: of replicas all running their rounds, only the
// lease's holder runs passes; when it stops, another takes over.
func TestFleetOneEvictorAtATime(t *testing.T) {
	e := newFleetEnv(t)
	const interval = 20 * time.Millisecond
	var stores []*Store
	var stops []func()
	for _, name := range []string{"a", "b", "c"} {
		s := e.open(t.TempDir(), Options{MaxSize: 1 << 30, Now: e.clock.Now, Fleet: &FleetOptions{Replica: name, Interval: interval}}, false)
		stores = append(stores, s)
	}
	for _, s := range stores {
		stops = append(stops, runStore(s))
	}
	defer func() {
		for _, stop := range stops {
			stop()
		}
	}()
	passes := func() (total int64, runners []string) {
		for _, s := range stores {
			s.fleet.mu.Lock()
			n := s.fleet.passes
			s.fleet.mu.Unlock()
			if n > 0 {
				runners = append(runners, s.fleet.opt.Replica)
			}
			total += n
		}
		return total, runners
	}
	waitFor(t, "ten passes", func() bool { n, _ := passes(); return n >= 10 })
	if _, runners := passes(); len(runners) != 1 {
		t.Fatalf("passes ran on %v, want one replica", runners)
	}
	_, runners := passes()
	first := runners[0]
	for i, s := range stores {
		if st, _ := s.Fleet(); st.Evictor != "" && st.Evictor != first {
			t.Errorf("%s sees %q as the evictor, want %q", s.fleet.opt.Replica, st.Evictor, first)
		}
		if s.fleet.opt.Replica == first {
			stops[i]() // the evictor stops: it gives up its lease
			stops[i] = func() {}
		}
	}
	waitFor(t, "another replica to take over", func() bool {
		_, runners := passes()
		return len(runners) == 2
	})
}

// s3Counter counts the requests a store sends its bucket, by method and
// kind of key, for the README's table of what a replica costs.
type s3Counter struct {
	next http.RoundTripper
	mu   sync.Mutex
	n    map[string]int
}

func (c *s3Counter) RoundTrip(r *http.Request) (*http.Response, error) {
	kind := "other"
	q := r.URL.Query()
	switch {
	case q.Has("list-type") || q.Has("prefix"):
		kind = "LIST " + q.Get("prefix")
	default:
		parts := strings.SplitN(strings.TrimPrefix(r.URL.Path, "/"), "/", 4) // bucket/mirror/dir/...
		if len(parts) >= 3 {
			kind = r.Method + " " + parts[2]
		}
	}
	c.mu.Lock()
	c.n[kind]++
	c.mu.Unlock()
	return c.next.RoundTrip(r)
}

func (c *s3Counter) take() (map[string]int, int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	n, total := c.n, 0
	for _, v := range n {
		total += v
	}
	c.n = map[string]int{}
	return n, total
}

// What one round costs in S3 requests, for a replica and for the evictor,
// and what a tag costs the fleet per TTL: the figures of README, Replicas.
func TestFleetS3RequestsPerRound(t *testing.T) {
	e := newFleetEnv(t)
	counted := func(name string) (*Store, *s3Counter) {
		c := &s3Counter{next: testTransport(t), n: map[string]int{}}
		objs, err := NewS3Objects(S3Config{Endpoint: e.srv.Endpoint, Region: s3Region, Bucket: e.bucket, Prefix: "mirror", PartSize: minPartSize, Transport: c},
			zaptest.NewLogger(t))
		if err != nil {
			t.Fatal(err)
		}
		s := e.open(t.TempDir(), Options{MaxSize: 1 << 30, Now: e.clock.Now, Bucket: objs,
			Fleet: &FleetOptions{Replica: name, Interval: time.Hour}}, false)
		if err := s.AwaitCounts(t.Context()); err != nil {
			t.Fatal(err)
		}
		return s, c
	}
	a, ca := counted("a")
	b, cb := counted("b")
	tick(t, a) // a takes the evictor's lease
	tick(t, b)
	ca.take()
	cb.take()
	tick(t, a, b)
	evictor, ne := ca.take()
	replica, nr := cb.take()
	t.Logf("a round of the evictor (no journals but its own and b's, no pins): %d requests %v", ne, evictor)
	t.Logf("a round of another replica: %d requests %v", nr, replica)
	if nr > 6 || ne > 16 {
		t.Errorf("a round costs the evictor %d requests and another replica %d; README says at most 16 and 6", ne, nr)
	}

	// A tag: learned by a, answered by b from the bucket; past the TTL,
	// revalidated by b for both.
	_, some := contentOfBytes([]byte("a manifest"))
	share := func(s *Store, want TagTurn, what string) {
		t.Helper()
		if _, turn := s.ShareTag(t.Context(), "docker.io", "library/app", "1", time.Minute); turn != want {
			t.Fatalf("%s: turn %v, want %v", what, turn, want)
		}
	}
	learn := func(s *Store) { // what the proxy does after asking upstream
		t.Helper()
		answer := TagAnswer{Digest: some, MediaType: ociManifest, Size: 1, LearnedAt: e.clock.Now()}
		if err := s.SetTag("docker.io", "library/app", "1", answer); err != nil {
			t.Fatal(err)
		}
		uploadNow(t, s)
	}
	share(a, AskUpstream, "a cold tag")
	learn(a)
	cold, nc := ca.take()
	share(b, UseShared, "b, after a learned it")
	shared, ns := cb.take()
	e.advance(2 * time.Minute)
	share(b, AskUpstream, "b past the TTL")
	learn(b)
	revalidated, nv := cb.take()
	share(a, UseShared, "a after b revalidated")
	reused, nu := ca.take()
	t.Logf("a cold tag learned: %d requests %v; another replica's first answer: %d %v", nc, cold, ns, shared)
	t.Logf("a revalidation, for the fleet: %d requests %v; each other replica: %d %v", nv, revalidated, nu, reused)
	if nc > 3 || ns > 1 || nv > 3 || nu > 1 {
		t.Errorf("tag costs: cold %d, shared %d, revalidation %d, reuse %d; README says at most 3, 1, 3, 1", nc, ns, nv, nu)
	}
}

// uploadNow uploads what s has waiting, without its other background work.
func uploadNow(t *testing.T, s *Store) {
	for item, gen := range s.up.snapshot() {
		s.uploadOne(t.Context(), item, gen)
	}
	if n := s.up.len(); n > 0 {
		t.Fatalf("%d uploads still waiting", n)
	}
}

// A pin protects every part of its image even when no replica's journal
// says what the image holds (it was stored before the fleet, or the
// evictor's table was lost): the evictor reads the pinned manifest.
func TestFleetPinProtectsAnImageNoJournalNamed(t *testing.T) {
	e := newFleetEnv(t)
	before := e.open(t.TempDir(), Options{Now: e.clock.Now}, true) // one mirror, before the fleet
	var imgs []bucketImage
	for range 2 {
		e.advance(time.Minute)
		imgs = append(imgs, storeBucketImage(t, before, 1000, 25_000))
	}
	waitUploaded(t, before)
	a := e.replica("a", 30_000, 3*time.Hour, time.Hour, false)
	b := e.replica("b", 30_000, 3*time.Hour, time.Hour, false)
	tick(t, a) // a runs the evictor, and sees the content for the first time
	if !a.fleet.leading() {
		t.Fatal("a does not run the evictor")
	}
	e.advance(4 * time.Hour)
	if err := b.Pin(Pin{Registry: "docker.io", Repo: "library/app", Ref: "1", Digest: imgs[0].manifest}); err != nil {
		t.Fatal(err)
	}
	uploadNow(t, b)
	tick(t, a)
	if !e.imageInBucket(imgs[0]) {
		t.Fatal("a part of the pinned image was evicted")
	}
	if e.inBucket(imgs[1].layers[1]) {
		t.Fatal("the unpinned image was kept over the budget")
	}
}

// A lease its holder left when it died, with no one asking for its work
// again, is removed by the evictor's pass once it is stale by the store's
// clock; a lease still renewed stays.
func TestFleetPassRemovesStaleLeases(t *testing.T) {
	e := newFleetEnv(t)
	a := e.replica("a", 100_000, 3*time.Hour, time.Hour, false)
	tick(t, a)
	if !a.fleet.leading() {
		t.Fatal("a does not hold the evictor's lease")
	}
	objs := a.fleet.objs
	ctx := t.Context()
	const dead, alive = "sha256:" + "dead0000000000000000000000000000000000000000000000000000000000dd", "sha256:" + "a11e0000000000000000000000000000000000000000000000000000000000aa"
	killed, _, err := objs.AcquireLease(ctx, dead, LeaseHolder{ID: "b/1", URL: "http://b", TTL: MinLeaseTTL})
	if err != nil {
		t.Fatal(err)
	}
	killed.stopRenewing() // as when its process is killed
	held, _, err := objs.AcquireLease(ctx, alive, LeaseHolder{ID: "c/1", URL: "http://c", TTL: MinLeaseTTL})
	if err != nil {
		t.Fatal(err)
	}
	defer held.Release(ctx)
	waitFor(t, "the dead holder's lease to go stale", func() bool {
		_, stale, err := objs.ReadLease(ctx, dead)
		return err == nil && stale
	})
	tick(t, a)
	if _, _, err := objs.ReadLease(ctx, dead); !errors.Is(err, ErrNotFound) {
		t.Errorf("the stale lease after a pass: %v, want it gone", err)
	}
	if h, stale, err := objs.ReadLease(ctx, alive); err != nil || stale || h.ID != "c/1" {
		t.Errorf("the renewed lease after a pass: %+v stale %v, %v; want c's, fresh", h, stale, err)
	}
	if h, _, err := objs.ReadLease(ctx, evictorLease); err != nil || h.ID != a.fleet.id {
		t.Errorf("the evictor's lease after a pass: %+v, %v; want a's", h, err)
	}
}
