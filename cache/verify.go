package cache

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/dgraph-io/badger/v4"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"go.uber.org/zap"
)

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
	if err := s.AwaitCounts(ctx); err != nil {
		return rep, fmt.Errorf("verify: %w", err)
	}
	buf := make([]byte, 1<<20)
	err := s.walk(ctx, func(f contentFile) error {
		if !f.ok {
			rep.Stray = append(rep.Stray, f.name)
			s.log.Warn("verify: remove stray file", zap.String("file", f.path()))
			return os.RemoveAll(f.path())
		}
		h := f.raw.hash()
		n, sum, err := hashFile(f.path(), f.raw.alg, buf)
		if errors.Is(err, os.ErrNotExist) {
			return nil // evicted while we walked
		}
		if err != nil {
			return err
		}
		rep.Checked++
		rep.Bytes += n
		if sum != f.raw {
			rep.Corrupt = append(rep.Corrupt, h.String())
			s.log.Error("verify: content does not match its digest; removed", zap.Stringer("digest", h),
				zap.Stringer("hashes_to", sum.hash()))
			if s.opt.Bucket != nil && !s.up.has(h.String()) {
				// The bucket has it: only the local copy was damaged.
				s.mu.Lock()
				s.dropLocal(h)
				s.mu.Unlock()
			} else if err := s.remove(h); err != nil {
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

// hashFile hashes the file at path by algorithm alg.
func hashFile(path string, alg uint8, buf []byte) (int64, raw, error) {
	sum := raw{alg: alg}
	f, err := os.Open(path)
	if err != nil {
		return 0, sum, err
	}
	defer f.Close()
	hs := algorithms[alg].new()
	n, err := io.CopyBuffer(hs, f, buf)
	if err != nil {
		return n, sum, fmt.Errorf("read %s: %w", path, err)
	}
	hs.Sum(sum.b[:0])
	return n, sum, nil
}

// remove deletes the content of h and its records, and uncounts it.
func (s *Store) remove(h v1.Hash) error {
	size := int64(-1)
	if info, err := s.info(h); err == nil {
		size = info.Size
	}
	s.mu.Lock()
	err := s.unlink(h, size)
	s.mu.Unlock()
	if err != nil {
		return err
	}
	return s.db.Update(func(txn *badger.Txn) error {
		for _, k := range objectKeys(h) {
			if err := txn.Delete(k); err != nil {
				return err
			}
		}
		return nil
	})
}
