package cache

import (
	"context"
	"sync"
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

// DeferUpload holds the upload of the writer's content, once committed,
// until after is closed: a replica that streamed the content from the one
// uploading it waits for that upload, whose object its own upload then finds
// in the bucket (a HEAD, instead of a second copy of every part). The hold
// is in memory only: after a restart the upload goes ahead.
func (w *Writer) DeferUpload(after <-chan struct{}) { w.after = after }

// deferredUploads are the items whose upload waits for a channel.
type deferredUploads struct {
	mu    sync.Mutex
	until map[string]<-chan struct{}
}

func (d *deferredUploads) set(item string, after <-chan struct{}) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.until == nil {
		d.until = map[string]<-chan struct{}{}
	}
	d.until[item] = after
}

// waiting reports whether item's upload is still held, forgetting the hold
// once it has ended.
func (d *deferredUploads) waiting(item string) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	ch, ok := d.until[item]
	if !ok {
		return false
	}
	select {
	case <-ch:
		delete(d.until, item)
		return false
	default:
		return true
	}
}
