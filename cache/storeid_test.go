package cache

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/minio/minio-go/v7"
	"go.uber.org/zap/zaptest"
)

// filledBucketDir is a data dir on e's bucket (prefix "mirror") holding one
// uploaded blob with a tag answer and a pin, closed cleanly.
func filledBucketDir(t *testing.T, e *bucketEnv) (dir string, body []byte) {
	t.Helper()
	dir = t.TempDir()
	s := e.open(dir, Options{}, false)
	stop := runStore(s)
	body, h := randomContent(t, 3000)
	commit(t, s, body, h)
	if err := s.SetTag("r", "app", "v1", TagAnswer{Digest: h}); err != nil {
		t.Fatal(err)
	}
	if err := s.Pin(Pin{Registry: "r", Repo: "app", Ref: "v1", Digest: h}); err != nil {
		t.Fatal(err)
	}
	e.uploaded(s, h, "not uploaded")
	stop()
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	return dir, body
}

// in is e for the subtest t, so that the stores it opens close before t's
// temp dirs are removed.
func (e *bucketEnv) in(t *testing.T) *bucketEnv {
	return &bucketEnv{t: t, srv: e.srv, bucket: e.bucket}
}

// snapshot is every file under dir with its mode and the hash of its bytes.
func snapshot(t *testing.T, dir string) map[string]string {
	t.Helper()
	out := map[string]string{}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		sum := ""
		if !d.IsDir() {
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			sum = fmt.Sprintf("%x", sha256.Sum256(b))
		}
		out[p] = info.Mode().String() + " " + info.ModTime().String() + " " + sum
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
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
			before := snapshot(t, dir)
			s, err := Open(dir, Options{Bucket: s3Objects(t, e.srv, tc.cfg)}, zaptest.NewLogger(t))
			if err == nil {
				s.Close()
				t.Fatal("opened on another store")
			}
			var mismatch *StoreMismatchError
			if !errors.As(err, &mismatch) {
				t.Fatalf("error %v, want a StoreMismatchError", err)
			}
			for _, want := range append(tc.naming, `"`+e.bucket+`"`, `prefix "mirror"`) {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error %q does not name %s", err, want)
				}
			}
			if after := snapshot(t, dir); !maps.Equal(before, after) {
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
	before := snapshot(t, dir)
	s, err := Open(dir, Options{}, zaptest.NewLogger(t))
	var mismatch *StoreMismatchError
	if !errors.As(err, &mismatch) {
		if s != nil {
			s.Close()
		}
		t.Fatalf("error %v, want a StoreMismatchError", err)
	}
	if mismatch.Configured.Kind != KindDisk || mismatch.Recorded.Bucket != e.bucket {
		t.Fatalf("mismatch %+v", mismatch)
	}
	if after := snapshot(t, dir); !maps.Equal(before, after) {
		t.Fatal("the refused open changed the data dir")
	}
}

// A disk data dir put on a bucket is the supported move: its content, tag
// answers and pins are uploaded, and from then on it is the bucket's.
func TestStoreRecordDiskDataDirMovesOntoABucket(t *testing.T) {
	e := newBucketEnv(t)
	dir := t.TempDir()
	disk, err := Open(dir, Options{}, zaptest.NewLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	body, h := randomContent(t, 3000)
	commit(t, disk, body, h)
	if err := disk.SetTag("r", "app", "v1", TagAnswer{Digest: h}); err != nil {
		t.Fatal(err)
	}
	if err := disk.Pin(Pin{Registry: "r", Repo: "app", Ref: "v1", Digest: h}); err != nil {
		t.Fatal(err)
	}
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
		s, err := Open(dir, Options{}, zaptest.NewLogger(t))
		var mismatch *StoreMismatchError
		if !errors.As(err, &mismatch) {
			if s != nil {
				s.Close()
			}
			t.Fatalf("error %v, want a StoreMismatchError", err)
		}
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
		body, h := randomContent(t, 100)
		commit(t, disk, body, h)
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
