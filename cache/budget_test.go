package cache_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/regmirror/regmirror/cache"
	"github.com/regmirror/regmirror/test/regtest"
	"go.uber.org/zap"
)

// clock is a test clock that moves only when told.
type clock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *clock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.now }
func (c *clock) tick()          { c.mu.Lock(); c.now = c.now.Add(time.Minute); c.mu.Unlock() }

func openBudget(t *testing.T, dir string, opt cache.Options) (*cache.Store, *clock) {
	t.Helper()
	c := &clock{now: time.Unix(1_700_000_000, 0)}
	opt.Now = c.Now
	s, err := cache.Open(dir, opt, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s, c
}

func putBlob(t *testing.T, s *cache.Store, b []byte, h v1.Hash) error {
	t.Helper()
	w, err := s.Create(h, int64(len(b)), "application/octet-stream")
	if err != nil {
		return err
	}
	if _, err := w.Write(b); err != nil {
		w.Abort()
		return err
	}
	return w.Commit()
}

// testImage is a manifest and its blobs, stored as a pull stores them.
type testImage struct {
	manifest v1.Hash
	blobs    []v1.Hash
}

// pullImage stores an image manifest referring to layers of the given sizes
// (plus shared, already stored layers), then the new layers, all at one time.
func pullImage(t *testing.T, s *cache.Store, c *clock, sizes []int, shared ...v1.Hash) testImage {
	t.Helper()
	return storeImageBy(t, s, c, "sha256", false, sizes, shared...)
}

// pullImageBy is pullImage with the manifest and new layers named by digests
// of algorithm alg.
func pullImageBy(t *testing.T, s *cache.Store, c *clock, alg string, sizes []int, shared ...v1.Hash) testImage {
	t.Helper()
	return storeImageBy(t, s, c, alg, false, sizes, shared...)
}

// forEachAlgorithm runs test for content named by sha256 and by sha512.
func forEachAlgorithm(t *testing.T, test func(t *testing.T, alg string)) {
	for _, alg := range []string{"sha256", "sha512"} {
		t.Run(alg, func(t *testing.T) { test(t, alg) })
	}
}

// storeImage is pullImage; with ticking, the clock moves before each blob,
// as it does in a real pull, which reads the manifest first.
func storeImage(t *testing.T, s *cache.Store, c *clock, ticking bool, sizes []int, shared ...v1.Hash) testImage {
	t.Helper()
	return storeImageBy(t, s, c, "sha256", ticking, sizes, shared...)
}

func storeImageBy(t *testing.T, s *cache.Store, c *clock, alg string, ticking bool, sizes []int, shared ...v1.Hash) testImage {
	t.Helper()
	var img testImage
	type desc struct {
		Digest string `json:"digest"`
	}
	m := struct {
		SchemaVersion int    `json:"schemaVersion"`
		MediaType     string `json:"mediaType"`
		Config        desc   `json:"config"`
		Layers        []desc `json:"layers"`
	}{SchemaVersion: 2, MediaType: "application/vnd.oci.image.manifest.v1+json"}
	var bodies [][]byte
	for i, n := range sizes {
		b, h := contentBy(t, alg, n)
		bodies = append(bodies, b)
		img.blobs = append(img.blobs, h)
		if i == 0 {
			m.Config = desc{h.String()}
		} else {
			m.Layers = append(m.Layers, desc{h.String()})
		}
	}
	for _, h := range shared {
		m.Layers = append(m.Layers, desc{h.String()})
		img.blobs = append(img.blobs, h)
	}
	body, _ := json.Marshal(m)
	img.manifest = cache.Sum(alg, body)
	c.tick()
	if err := s.PutManifest(img.manifest, body, m.MediaType); err != nil {
		t.Fatal(err)
	}
	for i, b := range bodies {
		if ticking {
			c.tick()
		}
		if err := putBlob(t, s, b, img.blobs[i]); err != nil {
			t.Fatal(err)
		}
	}
	// A shared layer is not read: the client already has it, so only the
	// manifest says it is still in use.
	return img
}

func contentOf(b []byte) ([]byte, v1.Hash) {
	h, _, _ := v1.SHA256(bytes.NewReader(b))
	return b, h
}

// use reads an image's manifest, as a pull by tag does.
func use(t *testing.T, s *cache.Store, c *clock, img testImage) {
	t.Helper()
	c.tick()
	if _, _, err := s.Manifest(t.Context(), img.manifest, 1<<20); err != nil {
		t.Fatal(err)
	}
}

func stored(s *cache.Store, img testImage) (n int) {
	if s.Has(img.manifest) {
		n++
	}
	for _, h := range img.blobs {
		if s.Has(h) {
			n++
		}
	}
	return n
}

// whole reports whether every object of img is stored.
func whole(s *cache.Store, img testImage) bool { return stored(s, img) == len(img.blobs)+1 }

// evicted reports whether img lost its big layer (blobs[1]): blobs of one
// image are equally recent, so which of the small ones also go depends on
// their digests, but no pass can make its room without the big one.
func evicted(s *cache.Store, img testImage) bool { return !s.Has(img.blobs[1]) }

func TestBudgetEvictsTheLeastRecentlyUsedImage(t *testing.T) {
	forEachAlgorithm(t, func(t *testing.T, alg string) {
		s, c := openBudget(t, t.TempDir(), cache.Options{MaxSize: 100_000})
		a := pullImageBy(t, s, c, alg, []int{1000, 20_000})
		b := pullImageBy(t, s, c, alg, []int{1000, 20_000})
		use(t, s, c, a) // a is now more recent than b
		cc := pullImageBy(t, s, c, alg, []int{1000, 20_000})
		d := pullImageBy(t, s, c, alg, []int{1000, 20_000})
		e := pullImageBy(t, s, c, alg, []int{1000, 20_000}) // over the budget: b goes

		if u := s.Usage(); u.Bytes > 100_000 || u.Evictions == 0 {
			t.Fatalf("usage %+v: want under the budget after evictions", u)
		}
		if !evicted(s, b) {
			t.Errorf("the least recently used image keeps %d objects", stored(s, b))
		}
		for name, img := range map[string]testImage{"a": a, "c": cc, "d": d, "e": e} {
			if !whole(s, img) {
				t.Errorf("image %s keeps %d of %d objects", name, stored(s, img), len(img.blobs)+1)
			}
		}
	})
}

// A pull reads the manifest before the layers, so the manifest is the
// oldest object of its image; it must still be the last of it to go, and
// never leave its layers behind without it.
func TestManifestIsTheLastOfItsImageToGo(t *testing.T) {
	forEachAlgorithm(t, func(t *testing.T, alg string) {
		s, c := openBudget(t, t.TempDir(), cache.Options{MaxSize: 100_000, HighWater: 1, LowWater: 1})
		x := storeImageBy(t, s, c, alg, true, []int{1000, 40_000})
		storeImageBy(t, s, c, alg, true, []int{1000, 40_000})
		storeImageBy(t, s, c, alg, true, []int{1000, 20_000}) // pressure: x's layer must go

		if s.Has(x.blobs[1]) {
			t.Fatal("no pressure: x's layer survived")
		}
		if !s.Has(x.manifest) {
			t.Fatal("x's manifest went before its layers")
		}
	})
}

func TestBlobSharedWithARecentImageSurvives(t *testing.T) {
	forEachAlgorithm(t, func(t *testing.T, alg string) {
		s, c := openBudget(t, t.TempDir(), cache.Options{MaxSize: 100_000})
		old := pullImageBy(t, s, c, alg, []int{1000, 20_000, 20_000})
		shared := old.blobs[2]
		recent := pullImageBy(t, s, c, alg, []int{1000, 20_000}, shared)
		pullImageBy(t, s, c, alg, []int{1000, 40_000}) // pressure

		if !s.Has(shared) {
			t.Fatal("a layer shared with the recent image was evicted")
		}
		if s.Has(old.blobs[1]) {
			t.Error("the old image's own layer survived")
		}
		if !whole(s, recent) {
			t.Errorf("recent image keeps %d of %d objects", stored(s, recent), len(recent.blobs)+1)
		}
	})
}

func TestPinnedImageSurvivesPressure(t *testing.T) {
	forEachAlgorithm(t, func(t *testing.T, alg string) {
		s, c := openBudget(t, t.TempDir(), cache.Options{MaxSize: 100_000})
		pinned := pullImageBy(t, s, c, alg, []int{1000, 20_000})
		if err := s.Pin(cache.Pin{Registry: "docker.io", Repo: "library/pinned", Ref: "1", Digest: pinned.manifest}); err != nil {
			t.Fatal(err)
		}
		for range 5 {
			pullImageBy(t, s, c, alg, []int{1000, 20_000})
		}
		if !whole(s, pinned) {
			t.Fatalf("pinned image keeps %d of %d objects", stored(s, pinned), len(pinned.blobs)+1)
		}
		if u := s.Usage(); u.Bytes > 100_000 || u.Evictions == 0 {
			t.Fatalf("usage %+v: want evictions, under the budget", u)
		}
		if err := s.Unpin("docker.io", "library/pinned", "1"); err != nil {
			t.Fatal(err)
		}
		pullImageBy(t, s, c, alg, []int{1000, 60_000})
		if !evicted(s, pinned) {
			t.Fatal("unpinned image was not evicted under pressure")
		}
		if err := s.Unpin("docker.io", "library/pinned", "1"); !errors.Is(err, cache.ErrNotFound) {
			t.Fatalf("second unpin: %v, want ErrNotFound", err)
		}
	})
}

func TestHeldBlobIsNotEvicted(t *testing.T) {
	s, c := openBudget(t, t.TempDir(), cache.Options{MaxSize: 100_000})
	a := pullImage(t, s, c, []int{1000, 40_000})
	release := s.Hold(a.blobs[1])
	pullImage(t, s, c, []int{1000, 40_000})
	pullImage(t, s, c, []int{1000, 30_000}) // a is the oldest; only its held layer stays
	if !s.Has(a.blobs[1]) {
		t.Fatal("a blob being served was evicted")
	}
	if s.Has(a.manifest) {
		t.Error("the rest of the image should have been evicted")
	}
	release()
	if _, err := s.GC(); err != nil {
		t.Fatal(err)
	}
	pullImage(t, s, c, []int{1000, 40_000})
	if s.Has(a.blobs[1]) {
		t.Fatal("a released blob was kept under pressure")
	}
}

func TestContentLargerThanTheBudgetIsRefused(t *testing.T) {
	s, _ := openBudget(t, t.TempDir(), cache.Options{MaxSize: 10_000})
	b, h := content(t, 20_000)
	err := putBlob(t, s, b, h)
	if !errors.Is(err, cache.ErrNoSpace) {
		t.Fatalf("Create of a blob twice the budget: %v, want ErrNoSpace", err)
	}
	if u := s.Usage(); u.Streamed != 1 || u.Bytes != 0 {
		t.Fatalf("usage %+v: want one streamed, nothing stored", u)
	}
	entries, _ := os.ReadDir(s.Dir() + "/tmp")
	if len(entries) != 0 {
		t.Fatalf("refused content left %d temp files", len(entries))
	}
}

func TestEverythingHeldMeansNoSpace(t *testing.T) {
	s, c := openBudget(t, t.TempDir(), cache.Options{MaxSize: 100_000})
	a := pullImage(t, s, c, []int{1000, 60_000})
	for _, h := range append(a.blobs, a.manifest) {
		defer s.Hold(h)()
	}
	b, h := content(t, 60_000)
	if err := putBlob(t, s, b, h); !errors.Is(err, cache.ErrNoSpace) {
		t.Fatalf("want ErrNoSpace when all else is in use, got %v", err)
	}
	if n := stored(s, a); n != len(a.blobs)+1 {
		t.Fatal("held content was evicted")
	}
}

func TestFreeSpaceFloorEvicts(t *testing.T) {
	var mu sync.Mutex
	free := int64(1_000_000)
	dir := t.TempDir()
	// The filesystem's free space shrinks by what the store's files hold.
	s, c := openBudget(t, dir, cache.Options{MinFree: 950_000, FreeSpace: func() (int64, error) {
		mu.Lock()
		defer mu.Unlock()
		return free - duBytes(t, dir), nil
	}})
	a := pullImage(t, s, c, []int{1000, 20_000})
	b := pullImage(t, s, c, []int{1000, 20_000})
	pullImage(t, s, c, []int{1000, 20_000}) // would leave under 950,000 free: a goes
	if !evicted(s, a) {
		t.Fatalf("oldest image keeps %d objects below the free-space floor", stored(s, a))
	}
	if !whole(s, b) {
		t.Fatalf("image b keeps %d of %d objects", stored(s, b), len(b.blobs)+1)
	}
	mu.Lock()
	free = 10_000 // something else filled the disk
	mu.Unlock()
	bb, h := content(t, 5000)
	if err := putBlob(t, s, bb, h); !errors.Is(err, cache.ErrNoSpace) {
		t.Fatalf("with the disk full: %v, want ErrNoSpace", err)
	}
}

func duBytes(t *testing.T, dir string) int64 {
	var n int64
	entries, _ := os.ReadDir(dir + "/blobs/sha256")
	for _, d := range entries {
		files, _ := os.ReadDir(dir + "/blobs/sha256/" + d.Name())
		for _, f := range files {
			if info, err := f.Info(); err == nil {
				n += info.Size()
			}
		}
	}
	return n
}

func TestUsageSurvivesACleanRestart(t *testing.T) {
	dir := t.TempDir()
	s, c := openBudget(t, dir, cache.Options{})
	pullImage(t, s, c, []int{1000, 2000, 3000})
	want := s.Usage()
	s.Close()
	s2, _ := openBudget(t, dir, cache.Options{})
	if got := s2.Usage(); got.Bytes != want.Bytes || got.Objects != want.Objects || got.Objects != 4 {
		t.Fatalf("after restart usage %+v, before %+v", got, want)
	}
}

func TestImagesListsWhatIsStored(t *testing.T) {
	s, c := openBudget(t, t.TempDir(), cache.Options{})
	a := pullImage(t, s, c, []int{100, 200})
	if err := s.SetTag("docker.io", "library/a", "1", cache.TagAnswer{Digest: a.manifest}); err != nil {
		t.Fatal(err)
	}
	if err := s.Pin(cache.Pin{Registry: "docker.io", Repo: "library/a", Ref: "1", Digest: a.manifest}); err != nil {
		t.Fatal(err)
	}
	imgs, err := s.Images()
	if err != nil {
		t.Fatal(err)
	}
	if len(imgs) != 1 {
		t.Fatalf("images %+v", imgs)
	}
	got := imgs[0]
	mf, _, _ := s.Manifest(t.Context(), a.manifest, 1<<20)
	if got.Repo != "library/a" || got.Ref != "1" || !got.Pinned || got.Objects != 3 || got.Missing != 0 ||
		got.Bytes != int64(300+len(mf)) || got.LastUsed.IsZero() {
		t.Fatalf("image %+v", got)
	}
}

// fakeDisk is a filesystem of size bytes for Options.FreeSpace: what the
// store's content files hold is not free.
func fakeDisk(t *testing.T, dir string, size int64) func() (int64, error) {
	return func() (int64, error) { return size - duBytes(t, dir), nil }
}

// cacheBlobs stores n blobs of size bytes each, one minute apart.
func cacheBlobs(t *testing.T, s *cache.Store, c *clock, n, size int) []v1.Hash {
	t.Helper()
	var hs []v1.Hash
	for range n {
		c.tick()
		b, h := content(t, size)
		if err := putBlob(t, s, b, h); err != nil {
			t.Fatal(err)
		}
		hs = append(hs, h)
	}
	return hs
}

// A blob that cannot fit even with everything evictable gone must not cost
// the cache anything (issue 15): the store refuses it and evicts nothing.
func TestBlobThatCannotFitEvictsNothing(t *testing.T) {
	for _, tc := range []struct {
		name    string
		maxSize int64
	}{{"no budget", 0}, {"budget larger than the disk", 1 << 30}} {
		t.Run(tc.name, func(t *testing.T) {
			// The numbers, in KB: a 64 KB disk, a 1 KB floor,
			// 12 objects of 3 KB cached, 28 KB free, a 100 KB blob.
			dir := t.TempDir()
			s, c := openBudget(t, dir, cache.Options{MaxSize: tc.maxSize, MinFree: 1000, FreeSpace: fakeDisk(t, dir, 64_000)})
			cached := cacheBlobs(t, s, c, 12, 3000)

			b, h := content(t, 100_000)
			if err := putBlob(t, s, b, h); !errors.Is(err, cache.ErrNoSpace) {
				t.Fatalf("storing a 100 KB blob on a 64 KB disk: %v, want ErrNoSpace", err)
			}
			if u := s.Usage(); u.Evictions != 0 || u.Objects != 12 || u.Streamed != 1 {
				t.Errorf("usage %+v: want nothing evicted, 12 objects, one streamed", u)
			}
			for i, h := range cached {
				if !s.Has(h) {
					t.Errorf("cached object %d was evicted for a blob that could never fit", i)
				}
			}

			// A blob that fits once old objects go still makes room.
			b, h = content(t, 40_000)
			if err := putBlob(t, s, b, h); err != nil {
				t.Fatalf("storing a 40 KB blob that fits after eviction: %v", err)
			}
			if u := s.Usage(); u.Evictions == 0 {
				t.Errorf("usage %+v: want evictions to make room for a blob that fits", u)
			}
		})
	}
}

// Pinned and held objects cannot be evicted, so they do not count as room.
func TestBlobThatCannotFitBesidePinnedAndHeldEvictsNothing(t *testing.T) {
	s, c := openBudget(t, t.TempDir(), cache.Options{MaxSize: 50_000, HighWater: 1, LowWater: 1})
	pinned := pullImage(t, s, c, []int{1000, 20_000})
	if err := s.Pin(cache.Pin{Registry: "docker.io", Repo: "library/pinned", Ref: "1", Digest: pinned.manifest}); err != nil {
		t.Fatal(err)
	}
	held := cacheBlobs(t, s, c, 1, 4000)[0]
	defer s.Hold(held)()
	free := cacheBlobs(t, s, c, 4, 3000)

	// 21 KB pinned, 4 KB held, 12 KB evictable, a 50 KB budget: a 30 KB
	// blob would need 17 KB evicted.
	b, h := content(t, 30_000)
	if err := putBlob(t, s, b, h); !errors.Is(err, cache.ErrNoSpace) {
		t.Fatalf("storing 30 KB beside 25 KB that may not go: %v, want ErrNoSpace", err)
	}
	if u := s.Usage(); u.Evictions != 0 {
		t.Errorf("usage %+v: want nothing evicted", u)
	}
	for _, h := range append(free, held) {
		if !s.Has(h) {
			t.Errorf("%s was evicted for a blob that could never fit", h)
		}
	}
	if !whole(s, pinned) {
		t.Error("the pinned image lost objects")
	}
}

// A free-space floor at least as large as the filesystem means nothing can
// ever be stored (issue 15): Usage says so, for the start-up log, the
// status page and /readyz.
func TestUsageTellsAFloorAboveTheFilesystem(t *testing.T) {
	dir := regtest.Tmpfs(t, "4m")
	for _, tt := range []struct {
		floor int64
		above bool
	}{{1 << 30, true}, {4 << 20, true}, {1 << 20, false}, {0, false}} {
		s, _ := openBudget(t, filepath.Join(dir, strconv.FormatInt(tt.floor, 10)), cache.Options{MinFree: tt.floor})
		u := s.Usage()
		if u.Filesystem != 4<<20 || u.MinFree != tt.floor || u.FloorAboveFilesystem() != tt.above {
			t.Errorf("usage %+v with a floor of %d on a 4 MiB filesystem: want Filesystem %d and FloorAboveFilesystem %v",
				u, tt.floor, 4<<20, tt.above)
		}
	}
}

// A pin keeps the manifests of its Also (an image's referrers answers) and
// all they refer to, as it keeps its own.
func TestPinKeepsItsAlsoManifests(t *testing.T) {
	s, c := openBudget(t, t.TempDir(), cache.Options{MaxSize: 100_000})
	img := pullImage(t, s, c, []int{1000, 10_000})
	referrer := pullImageBy(t, s, c, "sha512", []int{1000, 10_000})
	if err := s.Pin(cache.Pin{Registry: "docker.io", Repo: "library/app", Ref: "1", Digest: img.manifest, Also: []v1.Hash{referrer.manifest}}); err != nil {
		t.Fatal(err)
	}
	for range 5 {
		pullImage(t, s, c, []int{1000, 20_000})
	}
	if u := s.Usage(); u.Evictions == 0 {
		t.Fatalf("no pressure: %+v", u)
	}
	if !whole(s, img) || !whole(s, referrer) {
		t.Fatalf("pinned image keeps %d of %d objects, its Also %d of %d", stored(s, img), len(img.blobs)+1, stored(s, referrer), len(referrer.blobs)+1)
	}
	bad := v1.Hash{Algorithm: "sha256", Hex: "0"}
	if err := s.Pin(cache.Pin{Registry: "docker.io", Repo: "library/app", Ref: "2", Digest: img.manifest, Also: []v1.Hash{bad}}); !errors.Is(err, cache.ErrUnsupportedDigest) {
		t.Errorf("Pin with a bad Also: %v, want ErrUnsupportedDigest", err)
	}
}
