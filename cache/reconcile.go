package cache

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/dgraph-io/badger/v4"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"go.uber.org/zap"
)

// totals are the usage counts saved at a clean close.
type totals struct {
	Bytes   int64 `json:"bytes"`
	Objects int64 `json:"objects"`
}

// loadTotals takes the usage counts a clean close left, and removes them, so
// that a crash from now on is noticed at the next start. Without them (a
// crash, or a store from before they existed) it reconciles the index with
// the files, which also counts.
func (s *Store) loadTotals() error {
	var t totals
	err := s.getJSON(keyClean, &t)
	if errors.Is(err, ErrNotFound) {
		return s.Reconcile(context.Background())
	}
	if err != nil {
		s.log.Warn("read usage totals; reconciling", zap.Error(err))
		return s.Reconcile(context.Background())
	}
	if err := s.db.Update(func(txn *badger.Txn) error { return txn.Delete(keyClean) }); err != nil {
		return fmt.Errorf("clear clean-close mark: %w", err)
	}
	if err := s.db.Sync(); err != nil {
		return fmt.Errorf("clear clean-close mark: %w", err)
	}
	s.mu.Lock()
	s.used, s.objects = t.Bytes, t.Objects
	s.mu.Unlock()
	return nil
}

func (s *Store) saveTotals() error {
	s.mu.Lock()
	v, err := json.Marshal(totals{Bytes: s.used, Objects: s.objects})
	s.mu.Unlock()
	if err != nil {
		return err
	}
	return s.db.Update(func(txn *badger.Txn) error { return txn.Set(keyClean, v) })
}

// ReconcileReport says what start-up reconciliation repaired.
type ReconcileReport struct {
	Files          int64 // content files found
	Bytes          int64 // their bytes, as recorded
	AddedRecords   int64 // files without a record (a crash between rename and record)
	DroppedRecords int64 // records without a file (a crash during eviction)
	StrayFiles     int64 // files in the content tree not named by a digest, removed
}

// Reconcile makes the index agree with the content files and recounts the
// usage totals: a file without a record gets one from its size (a file in
// place was verified before its rename), a record without a file is dropped,
// a stray file is removed. It runs at Open when the last close was not clean,
// before anything is served, so nothing races with it.
func (s *Store) Reconcile(ctx context.Context) error {
	start := time.Now()
	type rec struct {
		raw  [32]byte
		size int64
	}
	var recs []rec
	err := s.db.View(func(txn *badger.Txn) error {
		return scan(txn, prefixBlob, func(k string, v []byte) error {
			raw, ok := hashHex(k)
			if !ok {
				return nil
			}
			var r record
			if err := json.Unmarshal(v, &r); err != nil {
				r.Size = -1 // unreadable: rebuilt from the file
			}
			recs = append(recs, rec{raw, r.Size})
			return nil
		})
	})
	if err != nil {
		return fmt.Errorf("read blob records: %w", err)
	}
	var rep ReconcileReport
	wb := s.db.NewWriteBatch()
	defer wb.Cancel()
	drop := func(raw [32]byte) error {
		h := rawHash(raw)
		rep.DroppedRecords++
		for _, k := range objectKeys(h) {
			if err := wb.Delete(k); err != nil {
				return err
			}
		}
		return nil
	}
	i := 0
	err = s.walk(ctx, func(raw [32]byte, path string, ok bool) error {
		if !ok {
			rep.StrayFiles++
			s.log.Warn("remove stray file from the content tree", zap.String("file", path))
			return os.Remove(path)
		}
		for i < len(recs) && slices.Compare(recs[i].raw[:], raw[:]) < 0 {
			if err := drop(recs[i].raw); err != nil {
				return err
			}
			i++
		}
		size := int64(-1)
		if i < len(recs) && recs[i].raw == raw {
			size = recs[i].size
			i++
		}
		if size < 0 {
			st, err := os.Stat(path)
			if err != nil {
				return err
			}
			size = st.Size()
			rep.AddedRecords++
			v, _ := json.Marshal(record{Size: size})
			if err := wb.Set(blobKey(rawHash(raw)), v); err != nil {
				return err
			}
		}
		rep.Files++
		rep.Bytes += size
		return nil
	})
	if err != nil {
		return fmt.Errorf("reconcile: %w", err)
	}
	for ; i < len(recs); i++ {
		if err := drop(recs[i].raw); err != nil {
			return fmt.Errorf("reconcile: %w", err)
		}
	}
	if err := wb.Flush(); err != nil {
		return fmt.Errorf("reconcile: write index: %w", err)
	}
	s.mu.Lock()
	s.used, s.objects = rep.Bytes, rep.Files
	s.mu.Unlock()
	s.log.Info("reconciled index with content files", zap.Int64("files", rep.Files), zap.Int64("bytes", rep.Bytes),
		zap.Int64("added_records", rep.AddedRecords), zap.Int64("dropped_records", rep.DroppedRecords),
		zap.Int64("stray_files", rep.StrayFiles), zap.Duration("took", time.Since(start)))
	return nil
}

// walk calls fn for every file of the content tree in digest order, with
// ok false for a file whose place does not name a digest.
func (s *Store) walk(ctx context.Context, fn func(raw [32]byte, path string, ok bool) error) error {
	root := blobRoot(s.dir)
	dirs, err := os.ReadDir(root)
	if err != nil {
		return fmt.Errorf("read %s: %w", root, err)
	}
	for _, d := range dirs {
		if err := ctx.Err(); err != nil {
			return err
		}
		dir := filepath.Join(root, d.Name())
		if !d.IsDir() || len(d.Name()) != 2 {
			if err := fn([32]byte{}, dir, false); err != nil {
				return err
			}
			continue
		}
		files, err := os.ReadDir(dir)
		if err != nil {
			return fmt.Errorf("read %s: %w", dir, err)
		}
		for _, f := range files {
			path := filepath.Join(dir, f.Name())
			raw, ok := hashHex("sha256:" + f.Name())
			ok = ok && f.Type().IsRegular() && f.Name()[:2] == d.Name()
			if err := fn(raw, path, ok); err != nil {
				return err
			}
		}
	}
	return nil
}

// VerifyReport is what Verify found.
type VerifyReport struct {
	Checked int64    `json:"checked"`
	Bytes   int64    `json:"bytes"`
	Corrupt []string `json:"corrupt"` // digests whose content did not match, removed
	Stray   []string `json:"stray"`   // files not named by a digest, removed
}

// Verify re-hashes every stored object and removes any whose content does
// not match its digest, with its index records, so the next request fetches
// it again. progress, when not nil, is called after each object.
func (s *Store) Verify(ctx context.Context, progress func(VerifyReport)) (VerifyReport, error) {
	rep := VerifyReport{Corrupt: []string{}, Stray: []string{}}
	buf := make([]byte, 1<<20)
	err := s.walk(ctx, func(raw [32]byte, path string, ok bool) error {
		if !ok {
			rep.Stray = append(rep.Stray, filepath.Base(path))
			s.log.Warn("verify: remove stray file", zap.String("file", path))
			return os.RemoveAll(path)
		}
		h := rawHash(raw)
		n, sum, err := hashFile(path, buf)
		if errors.Is(err, os.ErrNotExist) {
			return nil // evicted while we walked
		}
		if err != nil {
			return err
		}
		rep.Checked++
		rep.Bytes += n
		if sum != raw {
			rep.Corrupt = append(rep.Corrupt, h.String())
			s.log.Error("verify: content does not match its digest; removed", zap.Stringer("digest", h),
				zap.String("hashes_to", "sha256:"+hex.EncodeToString(sum[:])))
			if err := s.remove(h); err != nil {
				return err
			}
		}
		if progress != nil {
			progress(rep)
		}
		return nil
	})
	if err != nil {
		return rep, fmt.Errorf("verify: %w", err)
	}
	return rep, nil
}

func hashFile(path string, buf []byte) (int64, [32]byte, error) {
	var sum [32]byte
	f, err := os.Open(path)
	if err != nil {
		return 0, sum, err
	}
	defer f.Close()
	hs := sha256.New()
	n, err := io.CopyBuffer(hs, f, buf)
	if err != nil {
		return n, sum, fmt.Errorf("read %s: %w", path, err)
	}
	copy(sum[:], hs.Sum(nil))
	return n, sum, nil
}

// remove deletes the content of h and its records, and uncounts it.
func (s *Store) remove(h v1.Hash) error {
	info, ierr := s.info(h)
	s.mu.Lock()
	err := os.Remove(s.path(h))
	if err == nil && ierr == nil {
		s.used -= info.Size
		s.objects--
	}
	s.mu.Unlock()
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove %s: %w", h, err)
	}
	s.manifests.Remove(h)
	return s.db.Update(func(txn *badger.Txn) error {
		for _, k := range objectKeys(h) {
			if err := txn.Delete(k); err != nil {
				return err
			}
		}
		return nil
	})
}
