package cache

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/dgraph-io/badger/v4"
	"go.uber.org/zap"
)

// StoreID names the store a data dir is the cache of (or, on disk, is):
// never credentials, only what tells one store from another.
type StoreID struct {
	Kind     string `json:"kind"`               // KindDisk or KindS3
	Endpoint string `json:"endpoint,omitempty"` // the store's host[:port]
	Bucket   string `json:"bucket,omitempty"`
	Prefix   string `json:"prefix,omitempty"` // without slashes at either end
}

// The kinds of store a data dir can be the cache of.
const (
	KindDisk = "disk"
	KindS3   = "s3"
)

func (id StoreID) String() string {
	switch {
	case id.Kind == KindDisk:
		return "disk storage"
	case id.Bucket == "":
		return "a bucket (which one is not recorded: the data dir predates records)"
	case id.Prefix == "":
		return fmt.Sprintf("bucket %q at %s, no prefix", id.Bucket, id.Endpoint)
	}
	return fmt.Sprintf("bucket %q at %s, prefix %q", id.Bucket, id.Endpoint, id.Prefix)
}

// StoreID is the bucket's name for the data dir's record.
func (o *S3Objects) StoreID() StoreID {
	return StoreID{Kind: KindS3, Endpoint: o.core.EndpointURL().Host, Bucket: o.bucket, Prefix: strings.TrimSuffix(o.prefix, "/")}
}

// storeIDOf is the store opt names: the disk, or the bucket if it can
// name itself.
func storeIDOf(opt Options) StoreID {
	if opt.Bucket == nil {
		return StoreID{Kind: KindDisk}
	}
	if b, ok := opt.Bucket.(interface{ StoreID() StoreID }); ok {
		return b.StoreID()
	}
	return StoreID{Kind: KindS3}
}

// StoreMismatchError means the data dir is the cache of another store than
// the one configured. Nothing in either was changed.
type StoreMismatchError struct {
	Dir                  string
	Recorded, Configured StoreID
}

func (e *StoreMismatchError) Error() string {
	return fmt.Sprintf("data dir %s belongs to %s, not to %s", e.Dir, e.Recorded, e.Configured)
}

// storeFile is the data dir's record of its store, written when the data
// dir is first used.
func storeFile(dir string) string { return filepath.Join(dir, "store.json") }

// CheckDataDir returns a *StoreMismatchError when dir's record names a
// store other than bucket's (nil: the disk), and changes nothing. A data
// dir without a record passes: Open decides for it, from its index. A disk
// data dir put on a bucket passes too: its content is uploaded (rebuild).
func CheckDataDir(dir string, bucket Objects) error {
	_, _, err := checkStoreRecord(dir, storeIDOf(Options{Bucket: bucket}))
	return err
}

// checkStoreRecord reads dir's record (ok false: there is none) and checks
// it against want.
func checkStoreRecord(dir string, want StoreID) (rec StoreID, ok bool, err error) {
	b, err := os.ReadFile(storeFile(dir))
	if errors.Is(err, os.ErrNotExist) {
		return StoreID{}, false, nil
	}
	if err != nil {
		return StoreID{}, false, fmt.Errorf("read the data dir's store record: %w", err)
	}
	if err := json.Unmarshal(b, &rec); err != nil || (rec.Kind != KindDisk && rec.Kind != KindS3) {
		return StoreID{}, false, fmt.Errorf("%s is not a record of the store this data dir caches (want JSON with a kind of %s or %s): restore it, or start on an empty data dir", storeFile(dir), KindDisk, KindS3)
	}
	if rec != want && !(rec.Kind == KindDisk && want.Kind == KindS3) {
		return rec, true, &StoreMismatchError{Dir: dir, Recorded: rec, Configured: want}
	}
	return rec, true, nil
}

// writeStoreRecord records id as dir's store: a temp file, fsynced and
// renamed into place, so the record is whole or absent.
func writeStoreRecord(dir string, id StoreID) error {
	b, err := json.Marshal(id)
	if err != nil {
		return err
	}
	tmp := storeFile(dir) + ".tmp"
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o640)
	if err != nil {
		return fmt.Errorf("write the data dir's store record: %w", err)
	}
	_, err = f.Write(append(b, '\n'))
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, storeFile(dir))
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("write the data dir's store record: %w", err)
	}
	return syncDir(dir)
}

// adoptStore runs in Open once the index is open: it records the store
// the data dir now caches, after deciding for a data dir without a record
// (one from before records) from what its index tells:
//
//   - an empty index is a new data dir;
//   - a bucket's index (its clean-close totals say so, or it holds upload
//     markers) on disk is refused: the bucket, not the data dir, held
//     the content, and which bucket it was is not known;
//   - any index on a bucket is rebuilt from that bucket (as after a
//     crash), so that it claims nothing the bucket does not hold, whichever
//     store it was filled from.
//
// A disk data dir put on a bucket keeps its tag answers and pins: they are
// marked for upload, as its content is by the rebuild.
func (s *Store) adoptStore(rec StoreID, recorded bool) error {
	id := storeIDOf(s.opt)
	if recorded && rec == id {
		return nil
	}
	var clean totals
	cleanErr := s.getJSON(keyClean, &clean)
	fromDisk := recorded && rec.Kind == KindDisk
	if !recorded {
		empty, markers, err := s.indexHolds()
		if err != nil {
			return err
		}
		wasBucket := markers || (cleanErr == nil && clean.InBucket)
		if !empty && wasBucket && id.Kind == KindDisk {
			return &StoreMismatchError{Dir: s.dir, Recorded: StoreID{Kind: KindS3}, Configured: id}
		}
		fromDisk = !empty && !wasBucket && cleanErr == nil
		if !empty {
			s.log.Info("the data dir predates records of its store: recording it as the configured one's",
				zap.Stringer("store", id), zap.Bool("rebuild_from_bucket", id.Kind == KindS3))
		}
		if !empty && id.Kind == KindS3 {
			if err := s.db.Update(func(txn *badger.Txn) error { return txn.Delete(keyClean) }); err != nil {
				return fmt.Errorf("clear clean-close mark: %w", err)
			}
		}
	}
	if fromDisk && id.Kind == KindS3 {
		if err := s.markRecordsForUpload(); err != nil {
			return err
		}
	}
	return writeStoreRecord(s.dir, id)
}

// indexHolds reports whether the index is empty, and whether it holds
// upload markers (written in bucket mode only).
func (s *Store) indexHolds() (empty, markers bool, err error) {
	err = s.db.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{})
		defer it.Close()
		it.Rewind()
		empty = !it.Valid()
		it.Seek([]byte(prefixUpload))
		markers = it.ValidForPrefix([]byte(prefixUpload))
		return nil
	})
	return empty, markers, err
}

// markRecordsForUpload marks every tag answer and pin for upload, so that
// the rebuild keeps them and the uploader writes them to the bucket.
func (s *Store) markRecordsForUpload() error {
	var keys [][]byte
	err := s.db.View(func(txn *badger.Txn) error {
		for _, prefix := range []string{prefixTag, prefixPin} {
			if err := scan(txn, prefix, func(k, _ []byte) error {
				keys = append(keys, uploadKey(prefix+string(k)))
				return nil
			}); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	wb := s.db.NewWriteBatch()
	defer wb.Cancel()
	for _, k := range keys {
		if err := wb.Set(k, nil); err != nil {
			return err
		}
	}
	if err := wb.Flush(); err != nil {
		return fmt.Errorf("mark tag answers and pins for upload: %w", err)
	}
	return nil
}
