package cache

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// BucketState is the object store as the store last found it. A bucket that
// is down is a degraded state, not a failure (Healthy stays nil): the local
// copy is served, misses stream through without being stored, uploads wait,
// and a probe with backoff notices when it answers again.
type BucketState struct {
	Configured bool      // the store keeps its content in a bucket
	Down       bool      // the bucket does not answer (unreachable, 5xx, SlowDown)
	Reason     string    // why, while Down
	Since      time.Time // when it went down, or last came back; zero if it never went down
	Pending    int64     // content files and records waiting to be uploaded
	Rebuilding bool      // the index is being rebuilt from the bucket's listing
}

// bucketHealth is the store's view of its bucket, guarded by its own lock:
// a network call's outcome is noted without Store.mu.
type bucketHealth struct {
	mu     sync.Mutex
	down   bool
	reason string
	since  time.Time
	wake   chan struct{} // closed and replaced when the bucket comes back
}

// localLedger is the local copy's accounting in bucket mode; Store.mu guards it.
type localLedger struct {
	used    int64 // bytes of content files under blobs/
	objects int64
	pending int64 // content files and records not yet in the bucket
}

// Bucket says whether the store has a bucket and how it stands.
func (s *Store) Bucket() BucketState {
	if s.opt.Bucket == nil {
		return BucketState{}
	}
	b := &s.health
	b.mu.Lock()
	st := BucketState{Configured: true, Down: b.down, Reason: b.reason, Since: b.since}
	b.mu.Unlock()
	s.mu.Lock()
	st.Pending = s.local.pending
	s.mu.Unlock()
	st.Rebuilding = !isClosed(s.counted)
	return st
}

// bucketDown reports whether the bucket is marked down.
func (s *Store) bucketDown() bool {
	s.health.mu.Lock()
	defer s.health.mu.Unlock()
	return s.health.down
}

// OpenBlob returns stored content for serving: the local file when there is
// one (an *os.File, so sendfile carries it), else, in bucket mode, the
// bucket's object, each read after a seek a ranged GET. ctx bounds the
// bucket's reads. ErrNotFound when the content is in neither, or the bucket
// is down.
func (s *Store) OpenBlob(ctx context.Context, h v1.Hash) (io.ReadSeekCloser, error) {
	f, err := s.OpenFile(h)
	if err == nil || !errors.Is(err, ErrNotFound) || s.opt.Bucket == nil {
		if err != nil {
			return nil, err
		}
		return f, nil
	}
	r, _, err := s.openBucket(ctx, h)
	if err != nil {
		return nil, err
	}
	return r, nil
}

// openBucket opens h in the bucket after a local miss.
func (s *Store) openBucket(ctx context.Context, h v1.Hash) (ObjectReader, Info, error) {
	if s.bucketDown() {
		return nil, Info{}, ErrNotFound
	}
	r, info, err := s.opt.Bucket.Open(ctx, h)
	if err != nil {
		if errors.Is(err, ErrNotFound) {
			return nil, Info{}, ErrNotFound
		}
		return nil, Info{}, fmt.Errorf("open %s in the bucket: %w", h, err)
	}
	s.Touch(h)
	return r, info, nil
}
