package cache

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"syscall"

	"github.com/dgraph-io/badger/v4"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"go.uber.org/zap"
)

// Writer fills a temp file in the store, hashing as it goes. Nothing it writes
// is visible under the digest until Commit has verified size and digest,
// fsynced the file and renamed it into place.
type Writer struct {
	s         *Store
	h         v1.Hash
	size      int64 // -1 when unknown
	mediaType string

	f        *os.File
	v        *Verifier       // of what is in the file
	refs     []v1.Hash       // what a manifest refers to, for eviction
	reserved int64           // bytes of the budget promised to this writer
	after    <-chan struct{} // set by DeferUpload

	mu       sync.Mutex // guards the state below against OpenReader
	tmp      string
	finished bool
	err      error // why the writer finished, nil after a good Commit
}

// Create starts writing the content of h. size is the announced length, or -1
// when it is unknown; content of another length never commits. Room for size
// bytes is made first; when it cannot be, Create returns ErrNoSpace and the
// caller serves the content without storing it.
func (s *Store) Create(h v1.Hash, size int64, mediaType string) (*Writer, error) {
	if err := checkHash(h); err != nil {
		return nil, err
	}
	// With a bucket, a rebuild of the index does not hold writers up: the
	// budget counts what it has seen, and eviction waits for the rest.
	if s.opt.Bucket == nil {
		if err := s.AwaitCounts(context.Background()); err != nil {
			return nil, fmt.Errorf("store %s: %w", h, err)
		}
	}
	if err := s.reserve(h, size); err != nil {
		return nil, err
	}
	f, err := os.CreateTemp(tmpDir(s.dir), h.Hex[:16]+"-*")
	if err != nil {
		s.unreserve(size)
		if errors.Is(err, syscall.ENOSPC) {
			return nil, s.refuse(fmt.Errorf("%w: create temp file for %s: %w", ErrNoSpace, h, err))
		}
		return nil, fmt.Errorf("create temp file for %s: %w", h, err)
	}
	return &Writer{s: s, h: h, size: size, mediaType: mediaType, f: f, v: NewVerifier(h, size), tmp: f.Name(), reserved: max(size, 0)}, nil
}

// Write appends p to the temp file. It fails early once more bytes arrive than
// were announced. Writes must not be concurrent with each other or with Commit.
func (w *Writer) Write(p []byte) (int, error) {
	if err := w.v.fits(len(p)); err != nil {
		return 0, err
	}
	if max := w.s.opt.MaxSize; w.size < 0 && max > 0 && w.v.Written()+int64(len(p)) > max {
		// Content of unknown size reserved nothing; it may not outgrow the budget.
		return 0, w.s.refuse(fmt.Errorf("%w: %s grew past the whole budget of %d bytes", ErrNoSpace, w.h, max))
	}
	n, err := w.f.Write(p)
	w.v.Write(p[:n]) // fits: checked above
	if errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT) {
		// The caller streams the rest without storing it: counted as streamed.
		return n, w.s.refuse(fmt.Errorf("write blob %s: %w: %w", w.h, ErrNoSpace, err))
	}
	if err != nil {
		return n, fmt.Errorf("write blob %s: %w", w.h, err)
	}
	return n, nil
}

// Commit verifies the content and makes it visible. On any failure the temp
// file is removed and nothing becomes visible.
func (w *Writer) Commit() error {
	err := w.v.Check()
	if err == nil {
		err = w.publish()
	}
	if err != nil {
		w.finish(err)
		return err
	}
	if err := w.s.putRecord(w.h, Info{Size: w.v.Written(), MediaType: w.mediaType}, w.refs); err != nil {
		// The file is verified and in place; a lost record is rebuilt from it.
		w.s.log.Warn("index blob record", zap.Stringer("digest", w.h), zap.Error(err))
	}
	w.s.Touch(w.h)
	if w.s.opt.Bucket != nil {
		if w.after != nil {
			w.s.deferred.set(w.h.String(), w.after)
		}
		w.s.up.add(w.h.String()) // after the commit: never in front of a client
	}
	if w.s.overHigh() || w.s.localOverHigh() {
		w.s.kick()
	}
	return nil
}

// Verifier returns a copy of the writer's verifier, as it stands after the
// bytes written so far: what is in the temp file need not be hashed again
// by whoever carries on with the rest of the content.
func (w *Writer) Verifier() *Verifier { return w.v.Clone() }

// publish fsyncs the temp file, renames it to its digest's path and fsyncs the
// directory, so a crash leaves either no file or the whole verified one.
func (w *Writer) publish() error {
	if err := w.f.Sync(); err != nil {
		return fmt.Errorf("sync blob %s: %w", w.h, err)
	}
	if err := w.f.Close(); err != nil {
		return fmt.Errorf("close blob %s: %w", w.h, err)
	}
	final := w.s.path(w.h)
	dir := filepath.Dir(final)
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return fmt.Errorf("create %s: %w", dir, err)
	}
	s := w.s
	inBucket := false
	if s.opt.Bucket != nil {
		// The marker before the rename: a file in place is always either in
		// the bucket or marked for upload, even after a crash.
		_, err := s.info(w.h)
		inBucket = err == nil
		if err := s.db.Update(func(txn *badger.Txn) error { return txn.Set(uploadKey(w.h.String()), nil) }); err != nil {
			return fmt.Errorf("mark %s for upload: %w", w.h, err)
		}
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	// Under the store's lock, so eviction and accounting see the rename and
	// the new total together. The same digest stored twice counts once.
	s.mu.Lock()
	_, statErr := os.Stat(final)
	if err := os.Rename(w.tmp, final); err != nil {
		s.mu.Unlock()
		return fmt.Errorf("rename blob %s into place: %w", w.h, err)
	}
	added := statErr != nil && !inBucket
	s.ledger.committed(w.reserved, w.v.Written(), added)
	if s.opt.Bucket != nil && statErr != nil {
		s.local.used += w.v.Written()
		s.local.objects++
	}
	s.countedSelf(w.h, w.v.Written(), added, s.opt.Bucket != nil && statErr != nil)
	w.reserved = 0
	s.mu.Unlock()
	w.tmp = final
	w.finished = true
	return syncDir(dir)
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("open %s: %w", dir, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("sync %s: %w", dir, err)
	}
	return nil
}

// Abort discards the temp file. It is safe to call after Commit, and more than once.
func (w *Writer) Abort() {
	w.finish(errors.New("download aborted"))
}

func (w *Writer) finish(err error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.finished {
		return
	}
	w.finished = true
	w.err = err
	w.s.unreserve(w.reserved)
	w.reserved = 0
	w.f.Close()
	if rmErr := os.Remove(w.tmp); rmErr != nil && !errors.Is(rmErr, os.ErrNotExist) {
		w.s.log.Warn("remove temp file", zap.String("file", filepath.Base(w.tmp)), zap.Error(rmErr))
	}
}

// OpenReader opens the content being written for reading by another goroutine:
// the temp file while it is written, the final file after Commit. An open
// descriptor stays valid across the rename, so readers never reopen.
func (w *Writer) OpenReader() (*os.File, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.finished && w.err != nil {
		return nil, w.err
	}
	f, err := os.Open(w.tmp)
	if err != nil {
		return nil, fmt.Errorf("open blob %s for reading: %w", w.h, err)
	}
	return f, nil
}
