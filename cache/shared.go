package cache

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"

	"github.com/minio/minio-go/v7"
)

// SharedObjects is an object store that several replicas can share: records
// read with their version and written only if still at it, and leases
// (cache/lease.go). A fleet (Options.Fleet) needs it; S3Objects is one.
type SharedObjects interface {
	Objects
	// GetRecordVersion reads a record whole with its version (the ETag);
	// ErrNotFound when there is none.
	GetRecordVersion(ctx context.Context, key string) ([]byte, string, error)
	// PutRecordIf writes a record only if it is still at version etag, or,
	// with etag "", only if there is none; ErrRecordChanged when another
	// write came first. It returns the new version.
	PutRecordIf(ctx context.Context, key string, body []byte, etag string) (string, error)
	// GetLargeRecord reads a record of up to max bytes (the evictor's
	// compacted access table); ErrNotFound when there is none.
	GetLargeRecord(ctx context.Context, key string, max int64) ([]byte, string, error)

	AcquireLease(ctx context.Context, name string, me LeaseHolder) (*Lease, LeaseHolder, error)
	ReadLease(ctx context.Context, name string) (LeaseHolder, bool, error)
	RemoveStaleLeases(ctx context.Context, except string) (int, error)
}

var _ SharedObjects = (*S3Objects)(nil)

// ErrRecordChanged means a conditional write of a record lost: another
// replica wrote (or removed) it since it was read.
var ErrRecordChanged = errors.New("record changed since it was read")

// GetRecordVersion reads a record with its ETag.
func (o *S3Objects) GetRecordVersion(ctx context.Context, key string) ([]byte, string, error) {
	return o.GetLargeRecord(ctx, key, maxRecord)
}

// GetLargeRecord reads a record of up to max bytes with its ETag.
func (o *S3Objects) GetLargeRecord(ctx context.Context, key string, max int64) ([]byte, string, error) {
	k, err := o.recordKey(key)
	if err != nil {
		return nil, "", err
	}
	r, info, _, err := o.core.GetObject(ctx, o.bucket, k, minio.GetObjectOptions{})
	if err != nil {
		return nil, "", o.classify("get record", k, err)
	}
	defer r.Close()
	body, err := io.ReadAll(io.LimitReader(r, max+1))
	if err != nil {
		return nil, "", o.classify("get record", k, err)
	}
	if int64(len(body)) > max {
		return nil, "", fmt.Errorf("record s3://%s/%s: %w", o.bucket, k, ErrTooLarge)
	}
	return body, info.ETag, nil
}

// PutRecordIf writes with If-Match on etag, or If-None-Match: * for "".
func (o *S3Objects) PutRecordIf(ctx context.Context, key string, body []byte, etag string) (string, error) {
	k, err := o.recordKey(key)
	if err != nil {
		return "", err
	}
	opts := signedPayload("application/json")
	if etag == "" {
		opts.SetMatchETagExcept("*")
	} else {
		opts.SetMatchETag(etag)
	}
	sum := sha256.Sum256(body)
	var info minio.UploadInfo
	err = o.put(ctx, func() io.Reader { return bytes.NewReader(body) }, func(r io.Reader) error {
		var err error
		info, err = o.core.PutObject(ctx, o.bucket, k, r, int64(len(body)), "", hex.EncodeToString(sum[:]), opts)
		return err
	})
	switch {
	case err == nil:
		return info.ETag, nil
	case isPreconditionFailed(err), etag != "" && isNoSuchKey(err), isConflict(err):
		// 412: written since; 404 on If-Match: removed since; AWS's 409:
		// another conditional write in flight. Each means another writer.
		return "", fmt.Errorf("put record s3://%s/%s: %w", o.bucket, k, ErrRecordChanged)
	}
	return "", o.classify("put record", k, err)
}
