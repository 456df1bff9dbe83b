package cache

import (
	"context"
	"errors"
	"io"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// Objects is the first of the store's three layers (docs/ARCHITECTURE.md,
// Boundaries) on an object store: bytes at rest by digest, put once after
// their digest verified and never overwritten, and small records by key (tag
// answers, pins), which cannot be rebuilt from content and so live beside it.
// The index, the budget and the policy that decide what is put and removed
// sit above it. S3Objects is the bucket's implementation.
type Objects interface {
	// Put stores the first size bytes of content under h, with mediaType as
	// what the store says it is on reads. It reads and hashes them first, so
	// content that does not hash to h (ErrDigestMismatch) or is not size bytes
	// long (ErrSizeMismatch) leaves nothing behind. Content already stored
	// under h is success: it can only be the same bytes.
	Put(ctx context.Context, h v1.Hash, content io.ReaderAt, size int64, mediaType string) error
	// Open returns the content of h for reading, seekable (so Range requests
	// can be served with http.ServeContent), with its size and the media type
	// it was put with. from is where the first read will likely start.
	// ErrNotFound when h is not stored.
	Open(ctx context.Context, h v1.Hash, from From) (ObjectReader, Info, error)
	// Stat returns the size of h's content, ErrNotFound when h is not stored.
	Stat(ctx context.Context, h v1.Hash) (int64, error)
	// Delete removes h's content; content not stored is no error.
	Delete(ctx context.Context, h v1.Hash) error
	// List calls fn for every stored digest with its size, in digest order,
	// for rebuilding the index. It stops at fn's first error and returns it.
	List(ctx context.Context, fn func(h v1.Hash, size int64) error) error

	// PutRecord writes a small record under key (a path of the store's
	// choosing, e.g. tags/docker.io/library/alpine:3.20), replacing it.
	PutRecord(ctx context.Context, key string, body []byte) error
	// GetRecord reads a record whole; ErrNotFound when there is none.
	GetRecord(ctx context.Context, key string) ([]byte, error)
	// DeleteRecord removes a record; a record not there is no error.
	DeleteRecord(ctx context.Context, key string) error
	// ListRecords calls fn with the key of every record under dir (ending in
	// "/"), in key order. It stops at fn's first error and returns it.
	ListRecords(ctx context.Context, dir string, fn func(key string) error) error

	// AbortStaleUploads aborts the multipart uploads under the store's keys
	// that were started longer than age ago: those of a process that died
	// mid-upload. It returns how many it aborted.
	AbortStaleUploads(ctx context.Context, age time.Duration) (int, error)
}

// From is where the first read of opened content will start, so that an
// object store's first request starts there: Offset bytes into the content,
// or, with Suffix, Offset bytes before its end (a Range request's bytes=-n,
// whose start the caller cannot know before the size). Length, when above
// zero (and not Suffix), is how far that first read goes (a closed range
// bytes=a-b), so the first request asks for no more: an object store sends
// what it was asked for until the connection closes. The zero value is the
// start, to the end. It is a guess: reads anywhere are served, a wrong guess
// costs one more request.
type From struct {
	Offset int64
	Suffix bool
	Length int64
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
