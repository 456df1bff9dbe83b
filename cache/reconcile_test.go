package cache

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"os"
	"path/filepath"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"go.uber.org/zap"
)

func randomContent(t *testing.T, n int) ([]byte, v1.Hash) {
	t.Helper()
	b := make([]byte, n)
	rand.Read(b)
	sum := sha256.Sum256(b)
	return b, v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(sum[:])}
}

// crash closes the index as a killed process leaves it: no usage totals.
func crash(t *testing.T, s *Store) {
	t.Helper()
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
		b, h := randomContent(t, 1000*(i+1))
		if err := s.PutManifest(h, b, "application/octet-stream"); err != nil {
			t.Fatal(err)
		}
		if i == 0 {
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
	orphan, oh := randomContent(t, 5000)
	os.MkdirAll(filepath.Join(blobRoot(dir), oh.Hex[:2]), 0o750)
	if err := os.WriteFile(filepath.Join(blobRoot(dir), oh.Hex[:2], oh.Hex), orphan, 0o640); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(filepath.Join(blobRoot(dir), lost[0].Hex[:2], lost[0].Hex)); err != nil {
		t.Fatal(err)
	}
	stray := filepath.Join(blobRoot(dir), kept[0].Hex[:2], "not-a-digest")
	os.WriteFile(stray, []byte("x"), 0o640)
	os.WriteFile(filepath.Join(tmpDir(dir), "half-written"), []byte("partial"), 0o640)

	s, err = Open(dir, Options{}, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	u := s.Usage()
	if u.Objects != int64(len(kept))+1 || u.Bytes != keptBytes+5000 {
		t.Fatalf("usage after reconcile %+v, want %d objects, %d bytes", u, len(kept)+1, keptBytes+5000)
	}
	if info, err := s.info(oh); err != nil || info.Size != 5000 {
		t.Fatalf("orphan file's record: %+v %v", info, err)
	}
	if _, err := s.info(lost[0]); err == nil {
		t.Fatal("the record of a missing file survived")
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
	bad, bh := randomContent(t, 4000)
	for h, b := range map[v1.Hash][]byte{gh: good, bh: bad} {
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
	if rep.Checked != 2 || len(rep.Corrupt) != 1 || rep.Corrupt[0] != bh.String() {
		t.Fatalf("report %+v, want 2 checked, %s corrupt", rep, bh)
	}
	if s.Has(bh) || !s.Has(gh) {
		t.Fatal("verify kept the corrupt blob or removed the good one")
	}
	if u := s.Usage(); u.Objects != 1 || u.Bytes != 3000 {
		t.Fatalf("usage after verify %+v", u)
	}
	if _, err := s.info(bh); err == nil {
		t.Fatal("the corrupt blob's record survived")
	}
}
