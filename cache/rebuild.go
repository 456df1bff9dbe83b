package cache

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"os"
	"slices"
	"time"

	"github.com/dgraph-io/badger/v4"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"go.uber.org/zap"
)

// RebuildReport says what a rebuild of the index from the bucket found.
type RebuildReport struct {
	Objects        int64 // content objects in the bucket
	Bytes          int64
	AddedRecords   int64 // objects the index did not know
	DroppedRecords int64 // records of content neither in the bucket nor waiting for it
	LocalFiles     int64 // files of the local copy
	LocalBytes     int64
	Uploads        int64 // local files not in the bucket: marked for upload
	Records        int64 // tag answers and pins read from the bucket
	Manifests      int64 // manifests read to learn what they refer to
}

// rebuild is reconciliation with a bucket: after a crash, or on a new host
// with an empty data dir. The bucket is the truth: its listing gives the
// content records, its records the tag answers and pins, and the manifests
// those name what they refer to (for image-aware eviction). The local copy
// is walked too: a file the bucket lacks is content committed but not yet
// uploaded (its marker is written before its rename), and is uploaded.
// Serving goes on meanwhile: a local miss asks the bucket. A bucket that is
// down is waited for.
func (s *Store) rebuild(ctx context.Context) error {
	start := time.Now()
	var rep RebuildReport
	for _, phase := range []func(context.Context, *RebuildReport) error{s.rebuildContent, s.rebuildRecords} {
		for {
			err := phase(ctx, &rep)
			if err == nil {
				break
			}
			if !unusable(err) {
				return fmt.Errorf("rebuild: %w", err)
			}
			s.markDown(err)
			if err := s.awaitUp(ctx); err != nil {
				return err
			}
		}
	}
	s.log.Info("rebuilt the index from the bucket", zap.Int64("objects", rep.Objects), zap.Int64("bytes", rep.Bytes),
		zap.Int64("added_records", rep.AddedRecords), zap.Int64("dropped_records", rep.DroppedRecords),
		zap.Int64("local_files", rep.LocalFiles), zap.Int64("local_bytes", rep.LocalBytes), zap.Int64("uploads", rep.Uploads),
		zap.Int64("records", rep.Records), zap.Int64("manifests", rep.Manifests), zap.Duration("took", time.Since(start)))
	return nil
}

// rebuildContent merges the bucket's listing, the content records and the
// local copy, and counts the budgets. A failure leaves the counts untouched,
// so it can be run again.
func (s *Store) rebuildContent(ctx context.Context, report *RebuildReport) error {
	var rep RebuildReport
	local := map[raw]int64{}
	var listed []raw          // counted from the listing, in key order
	counted := map[raw]bool{} // counted as waiting for their upload
	if err := s.walk(ctx, func(f contentFile) error {
		if !f.ok {
			s.log.Warn("remove stray file from the local copy", zap.String("file", f.path()))
			return os.Remove(f.path())
		}
		st, err := os.Stat(f.path())
		if err != nil {
			return err
		}
		local[f.raw] = st.Size()
		rep.LocalFiles++
		rep.LocalBytes += st.Size()
		return nil
	}); err != nil {
		return fmt.Errorf("walk the local copy: %w", err)
	}
	walkedLocal := maps.Clone(local)

	wb, recs, done := s.openMerge()
	defer done()
	var pendingBytes, pendingObjects int64
	var marked []v1.Hash // queued for upload once their records are written
	markUpload := func(h v1.Hash) error {
		marked = append(marked, h)
		return wb.Set(uploadKey(h.String()), nil)
	}
	// A record the listing does not have stays only for content waiting
	// for its upload.
	absent := func(r raw, size int64) error {
		h := r.hash()
		if _, ok := local[r]; ok || s.up.has(h.String()) {
			if ok {
				if err := markUpload(h); err != nil {
					return err
				}
			}
			pendingBytes += max(size, 0)
			pendingObjects++
			counted[r] = true
			delete(local, r)
			return nil
		}
		rep.DroppedRecords++
		for _, k := range append(objectKeys(h), uploadKey(h.String())) {
			if err := wb.Delete(k); err != nil {
				return err
			}
		}
		return nil
	}
	err := s.opt.Bucket.List(ctx, func(h v1.Hash, size int64) error {
		r, _ := rawOf(h)
		for recs.valid && compareRaw(&recs.raw, &r) < 0 {
			if err := absent(recs.raw, recs.size); err != nil {
				return err
			}
			recs.next()
		}
		if recs.valid && recs.raw == r {
			recs.next()
		} else {
			rep.AddedRecords++
			if err := wb.Set(blobKey(h), encodeRecord(Info{Size: size})); err != nil {
				return err
			}
		}
		delete(local, r)
		listed = append(listed, r)
		rep.Objects++
		rep.Bytes += size
		return nil
	})
	for ; err == nil && recs.valid; recs.next() {
		err = absent(recs.raw, recs.size)
	}
	if err != nil {
		return err
	}
	// Local files neither in the bucket nor in the index: verified content
	// (renamed into place only after its check) whose upload was lost.
	for r, size := range local {
		h := r.hash()
		if err := wb.Set(blobKey(h), encodeRecord(Info{Size: size})); err != nil {
			return err
		}
		if err := markUpload(h); err != nil {
			return err
		}
		pendingBytes += size
		pendingObjects++
		counted[r] = true
	}
	if err := wb.Flush(); err != nil {
		return fmt.Errorf("write index: %w", err)
	}
	rep.Uploads = pendingObjects
	s.mu.Lock()
	// Added, not set: commits and fills made meanwhile counted themselves;
	// those the walk or the listing saw too are taken out once.
	s.ledger.used += rep.Bytes + pendingBytes
	s.ledger.objects += rep.Objects + pendingObjects
	s.local.used += rep.LocalBytes
	s.local.objects += rep.LocalFiles
	for h, c := range s.selfCounted {
		r, _ := rawOf(h)
		_, found := slices.BinarySearchFunc(listed, r, func(a, b raw) int { return compareRaw(&a, &b) })
		if c.bucket && (found || counted[r]) {
			s.ledger.removed(c.size)
		}
		if _, walked := walkedLocal[r]; c.local && walked {
			s.local.used -= c.size
			s.local.objects--
		}
	}
	s.selfCounted = nil
	s.mu.Unlock()
	for _, h := range marked {
		s.up.add(h.String())
	}

	*report = rep
	return nil
}

// rebuildRecords reads the tag answers and pins of the bucket into the
// index (one waiting for its upload is newer, and kept), drops those the
// bucket does not have, and reads the manifests they name.
func (s *Store) rebuildRecords(ctx context.Context, rep *RebuildReport) error {
	var roots []v1.Hash
	for _, dir := range []string{"tags/", "pins/"} {
		inBucket := map[string]bool{}
		err := s.opt.Bucket.ListRecords(ctx, dir, func(bkey string) error {
			key, ok := indexRecordKey(bkey)
			if !ok {
				return nil
			}
			inBucket[key] = true
			if s.up.has(key) {
				return nil
			}
			body, err := s.opt.Bucket.GetRecord(ctx, bkey)
			if errors.Is(err, ErrNotFound) {
				return nil // removed since the listing
			}
			if err != nil {
				return err
			}
			rep.Records++
			return s.db.Update(func(txn *badger.Txn) error { return txn.Set([]byte(key), body) })
		})
		if err != nil {
			return err
		}
		prefix := prefixTag
		if dir == "pins/" {
			prefix = prefixPin
		}
		var stale [][]byte
		err = s.db.View(func(txn *badger.Txn) error {
			return scan(txn, prefix, func(k, v []byte) error {
				key := prefix + string(k)
				if !inBucket[key] && !s.up.has(key) {
					stale = append(stale, []byte(key))
					return nil
				}
				var ref struct {
					Digest v1.Hash `json:"digest"`
				}
				if json.Unmarshal(v, &ref) == nil && checkHash(ref.Digest) == nil {
					roots = append(roots, ref.Digest)
				}
				return nil
			})
		})
		if err != nil {
			return err
		}
		for _, key := range stale {
			s.tags.Remove(string(key))
			if err := s.db.Update(func(txn *badger.Txn) error { return txn.Delete(key) }); err != nil {
				return err
			}
		}
	}
	seen := map[v1.Hash]bool{}
	for _, h := range roots {
		if err := s.learnRefs(ctx, h, seen, rep); err != nil {
			return err
		}
	}
	return nil
}

// learnRefs reads the manifest h (and, for an index, its manifests) to
// record what it refers to, unless the index knows already.
func (s *Store) learnRefs(ctx context.Context, h v1.Hash, seen map[v1.Hash]bool, rep *RebuildReport) error {
	if seen[h] || len(seen) > 1<<20 {
		return nil
	}
	seen[h] = true
	var known bool
	err := s.db.View(func(txn *badger.Txn) error {
		for a := range algorithms {
			if _, err := txn.Get(refsKey(uint8(a), h)); err == nil {
				known = true
			}
		}
		return nil
	})
	if err != nil || known {
		return err
	}
	if _, err := s.info(h); err != nil {
		return nil // not stored: nothing to learn
	}
	body, _, err := s.Manifest(ctx, h, 4<<20)
	if errors.Is(err, ErrNotFound) || errors.Is(err, ErrTooLarge) || errors.Is(err, ErrDigestMismatch) {
		return nil
	}
	if err != nil {
		return err
	}
	rep.Manifests++
	refs := manifestRefs(body)
	if info, err := s.info(h); err == nil {
		if err := s.putRecord(h, info, refs); err != nil {
			return err
		}
	}
	var m struct {
		Manifests []json.RawMessage `json:"manifests"`
	}
	if json.Unmarshal(body, &m) == nil && len(m.Manifests) > 0 {
		for _, c := range refs {
			if err := s.learnRefs(ctx, c, seen, rep); err != nil {
				return err
			}
		}
	}
	return nil
}
