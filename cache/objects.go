package cache

import (
	"context"
	"errors"
	"io"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// Objects is the first of the store's three layers (docs/ARCHITECTURE.md,
// Boundaries): bytes at rest by digest. Content is put once, after its digest
// verified, and never overwritten; the index, the budget and the policy that
// decide what is put and removed sit above it. S3Objects is the bucket's
// implementation; the disk's layout under blobs/sha256 is not behind it yet.
type Objects interface {
	// Put stores the first size bytes of content under h. It reads and hashes
	// them first, so content that does not hash to h (ErrDigestMismatch) or is
	// not size bytes long (ErrSizeMismatch) leaves nothing behind. Content
	// already stored under h is success: it can only be the same bytes.
	Put(ctx context.Context, h v1.Hash, content io.ReaderAt, size int64) error
	// Open returns the content of h for reading, seekable (so Range requests
	// can be served with http.ServeContent), and its size. ErrNotFound when
	// h is not stored.
	Open(ctx context.Context, h v1.Hash) (ObjectReader, int64, error)
	// Stat returns the size of h's content, ErrNotFound when h is not stored.
	Stat(ctx context.Context, h v1.Hash) (int64, error)
	// Delete removes h's content; content not stored is no error.
	Delete(ctx context.Context, h v1.Hash) error
	// List calls fn for every stored digest with its size, in digest order,
	// for rebuilding the index. It stops at fn's first error and returns it.
	List(ctx context.Context, fn func(h v1.Hash, size int64) error) error
}

// ObjectReader is stored content opened for reading.
type ObjectReader interface {
	io.ReadSeekCloser
}

// The failures of an object store that its caller acts on differently; each
// error Objects returns for one of them wraps the sentinel.
var (
	// ErrBucketMissing means the configured bucket does not exist: a
	// configuration mistake, which start-up reports by the setting's name.
	ErrBucketMissing = errors.New("bucket does not exist")
	// ErrAccessDenied means the store refused the credentials or their rights
	// (wrong key, wrong secret, no permission): a configuration mistake too.
	ErrAccessDenied = errors.New("object store denied access")
	// ErrStoreUnavailable means the store could not be reached or answered
	// 5xx or SlowDown: transient, so the caller serves what it can without it
	// and tries again later.
	ErrStoreUnavailable = errors.New("object store unavailable")
	// ErrConditionalWritesIgnored means the store wrote over an object despite
	// If-None-Match: *, so it cannot arbitrate between concurrent writers.
	ErrConditionalWritesIgnored = errors.New("object store ignores If-None-Match: *")
)
