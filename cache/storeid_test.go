package cache

import (
	"errors"
	"maps"
	"os"
	"path/filepath"
	"strings"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/regmirror/regmirror/test/regtest"
	"go.uber.org/zap/zaptest"
)

// filledBucketDir is a data dir on e's bucket (prefix "mirror") holding one
// uploaded blob with a tag answer and a pin, closed cleanly.
func filledBucketDir(t *testing.T, e *bucketEnv) (dir string, body []byte) {
	t.Helper()
	dir = t.TempDir()
	s := e.open(dir, Options{}, false)
	stop := runStore(s)
	body, h := fillStore(t, s)
	e.uploaded(s, h, "not uploaded")
	stop()
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	return dir, body
}

// fillStore commits a blob to s, with a tag answer (r/app:v1) and a pin of it.
func fillStore(t *testing.T, s *Store) (body []byte, h v1.Hash) {
	t.Helper()
	body, h = randomContent(t, 3000)
	commit(t, s, body, h)
	if err := s.SetTag("r", "app", "v1", TagAnswer{Digest: h}); err != nil {
		t.Fatal(err)
	}
	if err := s.Pin(Pin{Registry: "r", Repo: "app", Ref: "v1", Digest: h}); err != nil {
		t.Fatal(err)
	}
	return body, h
}

// openRefused opens dir with opt, and fails the test unless Open refuses
// it as the data dir of another store.
func openRefused(t *testing.T, dir string, opt Options) *StoreMismatchError {
	t.Helper()
	s, err := Open(dir, opt, zaptest.NewLogger(t))
	var mismatch *StoreMismatchError
	if !errors.As(err, &mismatch) {
		if s != nil {
			s.Close()
		}
		t.Fatalf("error %v, want a StoreMismatchError", err)
	}
	return mismatch
}

// in is e for the subtest t, so that the stores it opens close before t's
// temp dirs are removed.
func (e *bucketEnv) in(t *testing.T) *bucketEnv {
	return &bucketEnv{t: t, srv: e.srv, bucket: e.bucket}
}

// A data dir is the cache of the store it was filled from: opened on
// another bucket or prefix it is refused, naming both, and left exactly as
// it was; on the same settings (however the prefix is spelled) it opens.
func TestStoreRecordRefusesAnotherBucketOrPrefix(t *testing.T) {
	e := newBucketEnv(t)
	dir, body := filledBucketDir(t, e)
	other := e.srv.Bucket(t, "storeid-other")
	for _, tc := range []struct {
		name   string
		cfg    S3Config
		naming []string
	}{
		{"another bucket", S3Config{Bucket: other, Prefix: "mirror"}, []string{`"storeid-other"`}},
		{"another prefix", S3Config{Bucket: e.bucket, Prefix: "mirror2"}, []string{`prefix "mirror2"`}},
		{"no prefix", S3Config{Bucket: e.bucket}, []string{"no prefix"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := regtest.DirState(t, dir)
			err := openRefused(t, dir, Options{Bucket: s3Objects(t, e.srv, tc.cfg)})
			for _, want := range append(tc.naming, `"`+e.bucket+`"`, `prefix "mirror"`) {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error %q does not name %s", err, want)
				}
			}
			if after := regtest.DirState(t, dir); !maps.Equal(before, after) {
				t.Fatalf("the refused open changed the data dir:\nbefore %v\nafter  %v", before, after)
			}
		})
	}
	t.Run("same settings", func(t *testing.T) {
		s := e.open(dir, Options{Bucket: s3Objects(t, e.srv, S3Config{Bucket: e.bucket, Prefix: "/mirror/", PartSize: minPartSize})}, false)
		_, h := contentOfBytes(body)
		if got, local := readBlob(t, s, h); string(got) != string(body) || !local {
			t.Fatalf("read back %d bytes (local %v), want the %d stored", len(got), local, len(body))
		}
		if _, err := s.Tag("r", "app", "v1"); err != nil {
			t.Fatalf("tag answer: %v", err)
		}
	})
}

// A bucket's data dir is not a disk store: the content it claims is in the
// bucket, and disk mode would drop it from the index.
func TestStoreRecordRefusesDiskOnABucketsDataDir(t *testing.T) {
	e := newBucketEnv(t)
	dir, _ := filledBucketDir(t, e)
	before := regtest.DirState(t, dir)
	mismatch := openRefused(t, dir, Options{})
	if mismatch.Configured.Kind != KindDisk || mismatch.Recorded.Bucket != e.bucket {
		t.Fatalf("mismatch %+v", mismatch)
	}
	if after := regtest.DirState(t, dir); !maps.Equal(before, after) {
		t.Fatal("the refused open changed the data dir")
	}
}

// A data dir from before the record (none) is decided by its index: on a
// bucket it is rebuilt from that bucket, so that it claims nothing another
// store held; a bucket's index on disk is refused; a disk index on disk
// opens as it is. Each is recorded from then on.
func TestStoreRecordDataDirWithoutRecord(t *testing.T) {
	e := newBucketEnv(t)
	t.Run("bucket's index on another bucket", func(t *testing.T) {
		e := e.in(t)
		dir, body := filledBucketDir(t, e)
		_, h := contentOfBytes(body)
		if err := os.Remove(storeFile(dir)); err != nil {
			t.Fatal(err)
		}
		// The local copy no longer holds the blob: only the old bucket does.
		if err := os.Remove(filepath.Join(dir, "blobs", "sha256", h.Hex[:2], h.Hex)); err != nil {
			t.Fatal(err)
		}
		other := e.srv.Bucket(t, "storeid-legacy")
		s := e.open(dir, Options{Bucket: s3Objects(t, e.srv, S3Config{Bucket: other, PartSize: minPartSize})}, false)
		if _, err := s.Tag("r", "app", "v1"); !errors.Is(err, ErrNotFound) {
			t.Errorf("the old bucket's tag answer is still claimed: %v", err)
		}
		if pins, _ := s.Pins(); len(pins) != 0 {
			t.Errorf("the old bucket's pins are still claimed: %v", pins)
		}
		if _, err := s.info(h); !errors.Is(err, ErrNotFound) {
			t.Errorf("the old bucket's content is still claimed: %v", err)
		}
		if u := s.Usage(); u.Objects != 0 || u.Bytes != 0 {
			t.Errorf("usage counts the old bucket's content: %+v", u)
		}
		if _, _, err := checkStoreRecord(dir, s3Objects(t, e.srv, S3Config{Bucket: other}).StoreID()); err != nil {
			t.Errorf("not recorded as the new bucket's: %v", err)
		}
	})
	t.Run("bucket's index on disk", func(t *testing.T) {
		dir, _ := filledBucketDir(t, e.in(t))
		if err := os.Remove(storeFile(dir)); err != nil {
			t.Fatal(err)
		}
		openRefused(t, dir, Options{})
		if _, err := os.Stat(storeFile(dir)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("the refused data dir got a record: %v", err)
		}
	})
	t.Run("disk index on disk", func(t *testing.T) {
		dir := t.TempDir()
		disk, err := Open(dir, Options{}, zaptest.NewLogger(t))
		if err != nil {
			t.Fatal(err)
		}
		fillStore(t, disk)
		disk.Close()
		if err := os.Remove(storeFile(dir)); err != nil {
			t.Fatal(err)
		}
		disk, err = Open(dir, Options{}, zaptest.NewLogger(t))
		if err != nil {
			t.Fatal(err)
		}
		defer disk.Close()
		if u := disk.Usage(); u.Objects != 1 {
			t.Errorf("usage %+v, want the one blob", u)
		}
		if _, _, err := checkStoreRecord(dir, StoreID{Kind: KindDisk}); err != nil {
			t.Errorf("not recorded as a disk store: %v", err)
		}
	})
}
