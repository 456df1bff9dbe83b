package cache

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/dgraph-io/badger/v4"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"go.uber.org/zap"
)

// totals are the usage counts saved at a clean close.
type totals struct {
	Bytes   int64 `json:"bytes"`
	Objects int64 `json:"objects"`
	// The local copy's, in bucket mode.
	LocalBytes   int64 `json:"local_bytes,omitempty"`
	LocalObjects int64 `json:"local_objects,omitempty"`
	// InBucket says the totals are a bucket's: a data dir that changes
	// between disk and bucket mode is reconciled afresh.
	InBucket bool `json:"in_bucket,omitempty"`
}

// loadTotals takes the usage counts a clean close left, and removes them, so
// that a crash from now on is noticed at the next start. Without them (a
// crash, or a store from before they existed) it starts reconciling the
// index with the files, which also counts.
func (s *Store) loadTotals() error {
	var t totals
	err := s.getJSON(keyClean, &t)
	if errors.Is(err, ErrNotFound) {
		s.reconcileInBackground()
		return nil
	}
	if err != nil {
		s.log.Warn("read usage totals; reconciling", zap.Error(err))
		s.reconcileInBackground()
		return nil
	}
	if t.InBucket != (s.opt.Bucket != nil) {
		s.log.Info("the store changed between disk and bucket since its last run; reconciling")
		if err := s.db.Update(func(txn *badger.Txn) error { return txn.Delete(keyClean) }); err != nil {
			return fmt.Errorf("clear clean-close mark: %w", err)
		}
		s.reconcileInBackground()
		return nil
	}
	if err := s.db.Update(func(txn *badger.Txn) error { return txn.Delete(keyClean) }); err != nil {
		return fmt.Errorf("clear clean-close mark: %w", err)
	}
	if err := s.db.Sync(); err != nil {
		return fmt.Errorf("clear clean-close mark: %w", err)
	}
	s.mu.Lock()
	s.ledger.counted(t.Bytes, t.Objects)
	s.local = localLedger{used: t.LocalBytes, objects: t.LocalObjects}
	s.mu.Unlock()
	close(s.counted)
	return nil
}

// reconcileInBackground reconciles after a crash without holding up the
// start: content in place is served at once (a file is verified before its
// rename, and a missing one is a miss), while writes, eviction and verify
// wait for the counts, so nothing it walks changes under it.
func (s *Store) reconcileInBackground() {
	ctx, cancel := context.WithCancel(context.Background())
	s.stopCounting = cancel
	if s.opt.Bucket != nil {
		s.mu.Lock()
		s.selfCounted = make(map[v1.Hash]selfCount)
		s.mu.Unlock()
	}
	go func() {
		defer close(s.counted)
		if s.opt.beforeReconcile != nil {
			s.opt.beforeReconcile(ctx)
		}
		var err error
		if s.opt.Bucket != nil {
			err = s.rebuild(ctx)
		} else {
			err = s.reconcile(ctx)
		}
		switch {
		case err == nil:
			s.kick() // the store may be over a budget that shrank
		case ctx.Err() != nil:
			s.countErr = fmt.Errorf("reconciliation stopped: %w", ctx.Err())
		default:
			s.log.Error("reconcile index with content files", zap.Error(err))
			s.countErr = err
		}
	}()
}

// AwaitCounts waits until the store knows its usage totals: at once after a
// clean close, otherwise when reconciliation has ended. It returns why
// reconciliation failed, if it did.
func (s *Store) AwaitCounts(ctx context.Context) error {
	select {
	case <-s.counted:
		return s.countErr
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (s *Store) saveTotals() error {
	s.mu.Lock()
	v, err := json.Marshal(totals{Bytes: s.ledger.used, Objects: s.ledger.objects,
		LocalBytes: s.local.used, LocalObjects: s.local.objects, InBucket: s.opt.Bucket != nil})
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
// a stray file is removed. It runs in the background from Open when the last
// close was not clean; called again, it first waits for that one. Nothing
// may write to the store while it runs.
func (s *Store) Reconcile(ctx context.Context) error {
	<-s.counted
	if s.opt.Bucket != nil {
		return s.rebuild(ctx)
	}
	return s.reconcile(ctx)
}

// reconcile is Reconcile. Both sides are in digest order, so it is one merge
// of the content tree with an iterator over the blob records: nothing is
// loaded whole, and a record is read only for its size.
func (s *Store) reconcile(ctx context.Context) error {
	start := time.Now()
	var rep ReconcileReport
	wb, recs, done := s.openMerge()
	defer done()
	drop := func(r *raw) error {
		rep.DroppedRecords++
		for _, k := range objectKeys(r.hash()) {
			if err := wb.Delete(k); err != nil {
				return err
			}
		}
		return nil
	}
	err := s.walk(ctx, func(f contentFile) error {
		if !f.ok {
			rep.StrayFiles++
			s.log.Warn("remove stray file from the content tree", zap.String("file", f.path()))
			return os.Remove(f.path())
		}
		for recs.valid && compareRaw(&recs.raw, &f.raw) < 0 {
			if err := drop(&recs.raw); err != nil {
				return err
			}
			recs.next()
		}
		size := int64(-1) // no record, or an unreadable one: rebuilt from the file
		if recs.valid && recs.raw == f.raw {
			size = recs.size
			recs.next()
		}
		if size < 0 {
			st, err := os.Stat(f.path())
			if err != nil {
				return err
			}
			size = st.Size()
			rep.AddedRecords++
			if err := wb.Set(blobKey(f.raw.hash()), encodeRecord(Info{Size: size})); err != nil {
				return err
			}
		}
		rep.Files++
		rep.Bytes += size
		return nil
	})
	for ; err == nil && recs.valid; recs.next() {
		err = drop(&recs.raw)
	}
	if err != nil {
		return fmt.Errorf("reconcile: %w", err)
	}
	if err := wb.Flush(); err != nil {
		return fmt.Errorf("reconcile: write index: %w", err)
	}
	s.mu.Lock()
	s.ledger.counted(rep.Bytes, rep.Files)
	s.mu.Unlock()
	s.log.Info("reconciled index with content files", zap.Int64("files", rep.Files), zap.Int64("bytes", rep.Bytes),
		zap.Int64("added_records", rep.AddedRecords), zap.Int64("dropped_records", rep.DroppedRecords),
		zap.Int64("stray_files", rep.StrayFiles), zap.Duration("took", time.Since(start)))
	return nil
}

// openMerge opens what a pass that merges the content records with a walk
// in digest order needs: a write batch for its repairs and a cursor over the
// records as they stood when it began. done releases both.
func (s *Store) openMerge() (wb *badger.WriteBatch, recs *recordCursor, done func()) {
	wb = s.db.NewWriteBatch()
	txn := s.db.NewTransaction(false)
	recs = newRecordCursor(txn)
	return wb, recs, func() {
		recs.close()
		txn.Discard()
		wb.Cancel()
	}
}

// recordCursor walks the blob records in digest order, one at a time.
type recordCursor struct {
	it    *badger.Iterator
	valid bool
	raw   raw
	size  int64 // -1 when the record does not decode
}

func newRecordCursor(txn *badger.Txn) *recordCursor {
	c := &recordCursor{it: txn.NewIterator(badger.IteratorOptions{Prefix: []byte(prefixBlob)})}
	c.it.Rewind()
	c.load()
	return c
}

// load reads the record under the iterator, skipping keys that name no
// digest (nothing the store writes).
func (c *recordCursor) load() {
	for ; c.it.Valid(); c.it.Next() {
		item := c.it.Item()
		r, ok := keyRaw(item.Key()[len(prefixBlob):])
		if !ok {
			continue
		}
		c.valid, c.raw, c.size = true, r, -1
		_ = item.Value(func(v []byte) error {
			if size, err := recordSize(v); err == nil {
				c.size = size
			}
			return nil
		})
		return
	}
	c.valid = false
}

func (c *recordCursor) next() {
	c.it.Next()
	c.load()
}

func (c *recordCursor) close() { c.it.Close() }

// contentFile is a file of the content tree.
type contentFile struct {
	dir, name string
	raw       raw
	ok        bool // its place names a digest
}

func (f contentFile) path() string { return filepath.Join(f.dir, f.name) }

// walk calls fn for every file of the content trees in key order (by
// algorithm, then digest), with ok false for a file whose place does not
// name a digest.
func (s *Store) walk(ctx context.Context, fn func(contentFile) error) error {
	for a := range algorithms {
		if err := s.walkTree(ctx, uint8(a), fn); err != nil {
			return err
		}
	}
	return nil
}

// walkTree is walk over the content tree of algorithm alg.
func (s *Store) walkTree(ctx context.Context, alg uint8, fn func(contentFile) error) error {
	root := blobRoot(s.dir, algorithms[alg].name)
	dirs, err := os.ReadDir(root)
	if errors.Is(err, os.ErrNotExist) {
		return nil // no content of alg yet (Open creates the trees; this one was removed)
	}
	if err != nil {
		return fmt.Errorf("read %s: %w", root, err)
	}
	for _, d := range dirs {
		if err := ctx.Err(); err != nil {
			return err
		}
		if !d.IsDir() || len(d.Name()) != 2 {
			if err := fn(contentFile{dir: root, name: d.Name()}); err != nil {
				return err
			}
			continue
		}
		dir := filepath.Join(root, d.Name())
		files, err := os.ReadDir(dir)
		if err != nil {
			return fmt.Errorf("read %s: %w", dir, err)
		}
		for _, e := range files {
			r, ok := hexRaw(alg, e.Name())
			ok = ok && e.Type().IsRegular() && e.Name()[:2] == d.Name()
			if err := fn(contentFile{dir: dir, name: e.Name(), raw: r, ok: ok}); err != nil {
				return err
			}
		}
	}
	return nil
}
