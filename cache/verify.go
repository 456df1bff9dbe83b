package cache

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
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
		h := rawHash(f.raw)
		n, sum, err := hashFile(f.path(), buf)
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
