package cache

import (
	"context"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// uploadPoll is how often AwaitUpload looks at the uploader's queue.
const uploadPoll = 50 * time.Millisecond

// AwaitUpload returns once h, committed locally, is no longer waiting for
// its upload to the bucket (it is there, or was evicted first), or when ctx
// ends. Without a bucket there is nothing to wait for. A replica that led a
// download holds the digest's lease until then, so that others find the
// object in the bucket rather than no lease and no object.
func (s *Store) AwaitUpload(ctx context.Context, h v1.Hash) error {
	if s.opt.Bucket == nil {
		return nil
	}
	t := time.NewTicker(uploadPoll)
	defer t.Stop()
	for s.up.has(h.String()) {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
	}
	return nil
}
