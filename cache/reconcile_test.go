package cache

import (
	"bytes"
	"context"
	"crypto/rand"
	"os"
	"path/filepath"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"go.uber.org/zap"
)

func randomContent(t *testing.T, n int) ([]byte, v1.Hash) {
	t.Helper()
	return randomContentBy(t, "sha256", n)
}

// randomContentBy is n random bytes and their digest by algorithm alg.
func randomContentBy(t *testing.T, alg string, n int) ([]byte, v1.Hash) {
	t.Helper()
	b := make([]byte, n)
	rand.Read(b)
	return b, Sum(alg, b)
}

// algorithmOfIndex alternates the algorithms, so a test's content is of both.
func algorithmOfIndex(i int) string { return algorithms[i%len(algorithms)].name }

// crash closes the index as a killed process leaves it: no usage totals.
func crash(t *testing.T, s *Store) {
	t.Helper()
	s.stopBg()
	s.bgWork.Wait()
	s.flushAccess()
	if err := s.db.Close(); err != nil {
		t.Fatal(err)
	}
}

func TestReconcileAfterACrash(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(dir, Options{}, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	var kept, lost []v1.Hash
	var keptBytes int64
	for i := range 4 {
		b, h := randomContentBy(t, algorithmOfIndex(i), 1000*(i+1))
		if err := s.PutManifest(h, b, "application/octet-stream"); err != nil {
			t.Fatal(err)
		}
		if i < 2 { // one of each algorithm
			lost = append(lost, h)
		} else {
			kept = append(kept, h)
			keptBytes += int64(len(b))
		}
	}
	crash(t, s)

	// A file the index never heard of (a crash between rename and record),
	// a record whose file is gone (a crash during eviction), a stray file
	// and a leftover temp file.
	// Content of both algorithms: the orphan and a lost one by sha512.
	orphan, oh := randomContentBy(t, "sha512", 5000)
	os.MkdirAll(filepath.Join(blobRoot(dir, "sha512"), oh.Hex[:2]), 0o750)
	if err := os.WriteFile(filepath.Join(blobRoot(dir, "sha512"), oh.Hex[:2], oh.Hex), orphan, 0o640); err != nil {
		t.Fatal(err)
	}
	for _, h := range lost {
		if err := os.Remove(filepath.Join(blobRoot(dir, h.Algorithm), h.Hex[:2], h.Hex)); err != nil {
			t.Fatal(err)
		}
	}
	stray := filepath.Join(blobRoot(dir, kept[0].Algorithm), kept[0].Hex[:2], "not-a-digest")
	os.WriteFile(stray, []byte("x"), 0o640)
	os.WriteFile(filepath.Join(tmpDir(dir), "half-written"), []byte("partial"), 0o640)

	s = openCounted(t, dir)
	u := s.Usage()
	if u.Objects != int64(len(kept))+1 || u.Bytes != keptBytes+5000 {
		t.Fatalf("usage after reconcile %+v, want %d objects, %d bytes", u, len(kept)+1, keptBytes+5000)
	}
	if info, err := s.info(oh); err != nil || info.Size != 5000 {
		t.Fatalf("orphan file's record: %+v %v", info, err)
	}
	for _, h := range lost {
		if _, err := s.info(h); err == nil {
			t.Fatalf("the record of a missing file %s survived", h)
		}
	}
	if _, err := os.Stat(stray); !os.IsNotExist(err) {
		t.Fatal("stray file survived")
	}
	if entries, _ := os.ReadDir(tmpDir(dir)); len(entries) != 0 {
		t.Fatal("temp file survived")
	}
	// A clean close now makes the next start skip the walk and keep the totals.
	s.Close()
	s, err = Open(dir, Options{}, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if got := s.Usage(); got.Bytes != u.Bytes || got.Objects != u.Objects {
		t.Fatalf("after a clean restart %+v, want %+v", got, u)
	}
	if _, err := s.db.NewTransaction(false).Get(keyClean); err == nil {
		t.Fatal("the clean-close mark is still there while the store is open")
	}
}

func TestVerifyRemovesCorruptContent(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(dir, Options{}, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	good, gh := randomContent(t, 3000)
	good512, gh512 := randomContentBy(t, "sha512", 2000)
	bad, bh := randomContentBy(t, "sha512", 4000)
	for h, b := range map[v1.Hash][]byte{gh: good, gh512: good512, bh: bad} {
		if err := s.PutManifest(h, b, "application/octet-stream"); err != nil {
			t.Fatal(err)
		}
	}
	// Bit rot: same length, other bytes.
	bad[10] ^= 0xff
	if err := os.WriteFile(s.path(bh), bad, 0o640); err != nil {
		t.Fatal(err)
	}
	rep, err := s.Verify(t.Context(), nil)
	if err != nil {
		t.Fatal(err)
	}
	if rep.Checked != 3 || len(rep.Corrupt) != 1 || rep.Corrupt[0] != bh.String() {
		t.Fatalf("report %+v, want 3 checked, %s corrupt", rep, bh)
	}
	if s.Has(bh) || !s.Has(gh) || !s.Has(gh512) {
		t.Fatal("verify kept the corrupt blob or removed a good one")
	}
	if u := s.Usage(); u.Objects != 2 || u.Bytes != 5000 {
		t.Fatalf("usage after verify %+v", u)
	}
	if _, err := s.info(bh); err == nil {
		t.Fatal("the corrupt blob's record survived")
	}
}

// openCounted opens the store under dir and waits for its counts (after a
// crash, for reconciliation). It is closed when the test ends.
func openCounted(t *testing.T, dir string) *Store {
	t.Helper()
	s, err := Open(dir, Options{}, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	if err := s.AwaitCounts(t.Context()); err != nil {
		t.Fatal(err)
	}
	return s
}

// crashedWithOne is a store directory that crashed holding one 3000-byte
// object.
func crashedWithOne(t *testing.T) (dir string, body []byte, h v1.Hash) {
	t.Helper()
	dir = t.TempDir()
	s, err := Open(dir, Options{}, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	body, h = randomContent(t, 3000)
	if err := s.PutManifest(h, body, "application/octet-stream"); err != nil {
		t.Fatal(err)
	}
	crash(t, s)
	return dir, body, h
}

// After a crash, Open returns before reconciliation has counted: stored
// content is served at once, while a write waits for the count.
func TestCrashStartServesWhileCounting(t *testing.T) {
	dir, b, h := crashedWithOne(t)

	gate := make(chan struct{})
	hold := func(ctx context.Context) {
		select {
		case <-gate:
		case <-ctx.Done():
		}
	}
	s, err := Open(dir, Options{beforeReconcile: hold}, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if u := s.Usage(); !u.Counting || u.Objects != 0 {
		t.Fatalf("usage while counting: %+v", u)
	}
	got, _, err := s.Manifest(t.Context(), h, 1<<20)
	if err != nil || !bytes.Equal(got, b) {
		t.Fatalf("stored content while counting: %d bytes, %v", len(got), err)
	}
	b2, h2 := randomContent(t, 2000)
	stored := make(chan error, 1)
	go func() { stored <- s.PutManifest(h2, b2, "application/octet-stream") }()
	select {
	case err := <-stored:
		t.Fatalf("a write went ahead of the count (%v)", err)
	case <-time.After(50 * time.Millisecond):
	}
	close(gate)
	if err := <-stored; err != nil {
		t.Fatal(err)
	}
	if err := s.AwaitCounts(t.Context()); err != nil {
		t.Fatal(err)
	}
	if u := s.Usage(); u.Counting || u.Objects != 2 || u.Bytes != 5000 {
		t.Fatalf("usage after counting and a write: %+v, want 2 objects, 5000 bytes", u)
	}
}

// Closing while reconciliation counts stops it and leaves no clean-close
// mark, so the next start counts again.
func TestCloseWhileCountingCountsAgainNextTime(t *testing.T) {
	dir, _, _ := crashedWithOne(t)
	never := func(ctx context.Context) { <-ctx.Done() }
	s, err := Open(dir, Options{beforeReconcile: never}, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.AwaitCounts(t.Context()); err == nil {
		t.Fatal("a stopped reconciliation reported no error")
	}
	s = openCounted(t, dir)
	if u := s.Usage(); u.Objects != 1 || u.Bytes != 3000 {
		t.Fatalf("usage after counting again: %+v, want 1 object of 3000 bytes", u)
	}
}
