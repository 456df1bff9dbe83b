package cache

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"syscall"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
	"github.com/minio/minio-go/v7/pkg/s3utils"
	"go.uber.org/zap"
)

// S3Config names a bucket of an S3-compatible store and where in it the
// objects live. Credentials are not part of it: they come from the standard
// chain (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, the shared credentials
// file, instance and IRSA roles), never from a URL.
type S3Config struct {
	// Endpoint is the store's URL, "http://host:port" for plain HTTP or
	// "https://host"; empty means AWS for Region.
	Endpoint string
	Bucket   string
	// Prefix, optional, puts every key under "<Prefix>/", so one bucket can
	// hold several caches.
	Prefix string
	Region string
	// PartSize is the size of a multipart upload's parts; content up to it
	// goes in a single PUT. 0 means 16 MiB; S3 refuses parts under 5 MiB.
	PartSize int64
	// Transport carries the requests; nil means minio-go's default.
	Transport http.RoundTripper
}

const (
	defaultPartSize = 16 << 20
	minPartSize     = 5 << 20
	maxParts        = 10000 // S3's limit per multipart upload
)

// S3Objects keeps content in a bucket, one object per digest under
// <prefix>/blobs/<algorithm>/<hex>, written with If-None-Match: * so content once
// in the bucket is never overwritten.
type S3Objects struct {
	core     *minio.Core
	bucket   string
	prefix   string // "" or ending in "/"
	partSize int64
	log      *zap.Logger
	leases   leaseSweep // what the lease sweep learned of leases' contents
}

var _ Objects = (*S3Objects)(nil)

// NewS3Objects makes the client; it opens no connection. Check and
// CheckConditionalWrites are the start-up tests of the bucket.
func NewS3Objects(cfg S3Config, log *zap.Logger) (*S3Objects, error) {
	host, secure, err := s3Endpoint(cfg.Endpoint)
	if err != nil {
		return nil, err
	}
	if err := s3utils.CheckValidBucketName(cfg.Bucket); err != nil {
		return nil, fmt.Errorf("bucket %q: %w", cfg.Bucket, err)
	}
	part := cfg.PartSize
	if part == 0 {
		part = defaultPartSize
	}
	if part < minPartSize {
		return nil, fmt.Errorf("part size %d below S3's minimum of %d bytes", part, minPartSize)
	}
	transport := cfg.Transport
	if transport == nil {
		if transport, err = minio.DefaultTransport(secure); err != nil {
			return nil, fmt.Errorf("object store client: %w", err)
		}
	}
	creds := credentials.NewChainCredentials([]credentials.Provider{
		&credentials.EnvAWS{},
		&credentials.FileAWSCredentials{},
		&credentials.IAM{},
	})
	core, err := minio.NewCore(host, &minio.Options{
		Creds:     creds,
		Secure:    secure,
		Region:    cfg.Region,
		Transport: clockTransport{transport},
		// A few quick retries ride out a blip; a store that stays down is
		// the caller's to handle (serve without it), not minio-go's to wait on.
		MaxRetries: requestAttempts,
	})
	if err != nil {
		return nil, fmt.Errorf("object store client: %w", err)
	}
	prefix := strings.Trim(cfg.Prefix, "/")
	if prefix != "" {
		prefix += "/"
	}
	return &S3Objects{core: core, bucket: cfg.Bucket, prefix: prefix, partSize: part, log: log}, nil
}

// s3Endpoint splits an endpoint URL into minio-go's host and TLS flag.
func s3Endpoint(endpoint string) (host string, secure bool, err error) {
	if endpoint == "" {
		return "s3.amazonaws.com", true, nil
	}
	u, err := url.Parse(endpoint)
	if err != nil {
		return "", false, fmt.Errorf("endpoint: %w", err)
	}
	if u.User != nil {
		// Credentials come from the standard chain only, never from a URL
		// (which ends up in logs). The message leaves the URL out for that reason.
		return "", false, errors.New("endpoint: credentials in the URL are not accepted; use the standard AWS chain")
	}
	if u.Scheme != "http" && u.Scheme != "https" || u.Host == "" || (u.Path != "" && u.Path != "/") || u.RawQuery != "" {
		return "", false, fmt.Errorf("endpoint %q: want http://host[:port] or https://host[:port]", endpoint)
	}
	return u.Host, u.Scheme == "https", nil
}

func (o *S3Objects) key(h v1.Hash) string { return o.dir(h.Algorithm) + h.Hex }

// dir is the key prefix of the content of digests of algorithm alg.
func (o *S3Objects) dir(alg string) string { return o.prefix + "blobs/" + alg + "/" }

// Check reports whether the bucket is there and the credentials may use it:
// ErrBucketMissing, ErrAccessDenied or ErrStoreUnavailable when not.
func (o *S3Objects) Check(ctx context.Context) error {
	// A listing of one key, not a HEAD of the bucket: a HEAD's answer has no
	// body to tell a missing bucket from unknown credentials (versitygw
	// answers 404 to both), and reconciliation will need to list anyway.
	_, err := o.core.ListObjectsV2(o.bucket, o.prefix, "", "", "", 1)
	return o.classify("list bucket", "", err)
}

// CheckConditionalWrites writes a probe object twice with If-None-Match: *
// and expects the second write refused (412), then deletes the probe. A
// store that overwrites gives ErrConditionalWritesIgnored.
func (o *S3Objects) CheckConditionalWrites(ctx context.Context) error {
	var nonce [8]byte
	rand.Read(nonce[:])
	key := o.prefix + "probes/if-none-match-" + hex.EncodeToString(nonce[:])
	defer func() {
		ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
		defer cancel()
		if err := o.core.RemoveObject(ctx, o.bucket, key, minio.RemoveObjectOptions{}); err != nil {
			o.log.Warn("remove the If-None-Match probe", zap.String("key", key), zap.Error(err))
		}
	}()
	write := func() error {
		return o.put(ctx, func() io.Reader { return strings.NewReader(key) }, func(r io.Reader) error {
			_, err := o.core.PutObject(ctx, o.bucket, key, r, int64(len(key)), "", "", onlyIfAbsent(""))
			return err
		})
	}
	if err := write(); err != nil {
		return o.classify("write probe", key, err)
	}
	err := write()
	if err == nil {
		return fmt.Errorf("probe %s written twice: %w", key, ErrConditionalWritesIgnored)
	}
	if isPreconditionFailed(err) {
		return nil
	}
	return o.classify("write probe again", key, err)
}

// onlyIfAbsent is how content is written: with If-None-Match: *, so an
// object already in the bucket is never overwritten, and with its media type
// (a manifest's), which a read returns as Content-Type.
func onlyIfAbsent(mediaType string) minio.PutObjectOptions {
	opts := signedPayload(mediaType)
	opts.SetMatchETagExcept("*")
	return opts
}

// signedPayload are the options of a write whose body's SHA-256, hashed
// here, is signed into the request: DisableContentSha256 stops minio-go's
// own streaming signature.
func signedPayload(mediaType string) minio.PutObjectOptions {
	if mediaType == "" {
		mediaType = "application/octet-stream"
	}
	return minio.PutObjectOptions{ContentType: mediaType, DisableContentSha256: true}
}

func isPreconditionFailed(err error) bool {
	var resp minio.ErrorResponse
	return errors.As(err, &resp) && (resp.StatusCode == http.StatusPreconditionFailed || resp.Code == minio.PreconditionFailed)
}

// requestAttempts is how many times a request is tried before its failure is
// the caller's: a few quick tries ride out a blip.
const requestAttempts = 3

// bodyOnly hides a request body's Seek. minio-go retries a request by
// rewinding its body, while net/http may still be reading that body for
// the failed attempt (it may, after RoundTrip returned): two goroutines on
// one reader. A body without Seek is sent once, and put retries with a new
// reader of the same bytes instead.
type bodyOnly struct{ io.Reader }

// put sends a write with a fresh body per attempt, retrying while the
// store is unavailable (a blip) and ctx lasts.
func (o *S3Objects) put(ctx context.Context, body func() io.Reader, send func(io.Reader) error) error {
	var err error
	for attempt := 1; ; attempt++ {
		err = send(bodyOnly{body()})
		if err == nil || attempt == requestAttempts || !errors.Is(o.classify("", "", err), ErrStoreUnavailable) {
			return err
		}
		select {
		case <-time.After(time.Duration(attempt*attempt) * 100 * time.Millisecond):
		case <-ctx.Done():
			return err
		}
	}
}

// Put hashes the content first and writes it only if it hashes to h: a
// single PUT up to the part size, else a multipart upload completed only
// after the whole content hashed right (and aborted otherwise). Each request
// is signed with the SHA-256 of its body as hashed here (x-amz-content-sha256),
// which S3 checks against the bytes it receives: it keeps the bytes hashed.
func (o *S3Objects) Put(ctx context.Context, h v1.Hash, content io.ReaderAt, size int64, mediaType string) error {
	if err := checkHash(h); err != nil {
		return err
	}
	if size < 0 {
		return fmt.Errorf("put %s: %w: size %d", h, ErrSizeMismatch, size)
	}
	if size <= o.partSize {
		return o.putSingle(ctx, h, content, size, mediaType)
	}
	return o.putMultipart(ctx, h, content, size, mediaType)
}

// hashSection hashes size bytes of content from off into sum (when not nil)
// and returns their own SHA-256. Fewer bytes than size is ErrSizeMismatch.
func hashSection(h v1.Hash, content io.ReaderAt, off, size int64, sum io.Writer) (string, error) {
	part := sha256.New()
	w := io.Writer(part)
	if sum != nil {
		w = io.MultiWriter(part, sum)
	}
	n, err := io.Copy(w, io.NewSectionReader(content, off, size))
	if err != nil {
		return "", fmt.Errorf("read %s: %w", h, err)
	}
	if n != size {
		return "", fmt.Errorf("blob %s: %w: got %d bytes, want %d", h, ErrSizeMismatch, off+n, off+size)
	}
	return hex.EncodeToString(part.Sum(nil)), nil
}

func digestMismatch(h v1.Hash, got string) error {
	return fmt.Errorf("blob %s: %w: content hashes to %s:%s", h, ErrDigestMismatch, h.Algorithm, got)
}

// hasherOf hashes content as its digest h does (checked by the caller).
func hasherOf(h v1.Hash) hash.Hash {
	alg, _ := algorithmOf(h.Algorithm)
	return algorithms[alg].new()
}

func (o *S3Objects) putSingle(ctx context.Context, h v1.Hash, content io.ReaderAt, size int64, mediaType string) error {
	// The body's SHA-256 signs the request; it is the digest too, unless the
	// digest is by another algorithm.
	var whole hash.Hash
	if h.Algorithm != "sha256" {
		whole = hasherOf(h)
	}
	body, err := hashSection(h, content, 0, size, whole)
	if err != nil {
		return err
	}
	got := body
	if whole != nil {
		got = hex.EncodeToString(whole.Sum(nil))
	}
	if got != h.Hex {
		return digestMismatch(h, got)
	}
	key := o.key(h)
	err = o.put(ctx, func() io.Reader { return io.NewSectionReader(content, 0, size) }, func(r io.Reader) error {
		_, err := o.core.PutObject(ctx, o.bucket, key, r, size, "", body, onlyIfAbsent(mediaType))
		return err
	})
	if err != nil && !isPreconditionFailed(err) { // 412: already stored, the same bytes
		return o.classify("put", key, err)
	}
	return nil
}

func (o *S3Objects) putMultipart(ctx context.Context, h v1.Hash, content io.ReaderAt, size int64, mediaType string) error {
	// Content already there costs one HEAD instead of the whole upload.
	if _, err := o.Stat(ctx, h); err == nil {
		return nil
	} else if !errors.Is(err, ErrNotFound) {
		return err
	}
	return o.uploadParts(ctx, h, content, size, mediaType)
}

// uploadParts is a multipart upload of the content, completed with
// If-None-Match: * only once the whole content hashed to h.
func (o *S3Objects) uploadParts(ctx context.Context, h v1.Hash, content io.ReaderAt, size int64, mediaType string) error {
	key := o.key(h)
	part := max(o.partSize, (size+maxParts-1)/maxParts)
	id, err := o.core.NewMultipartUpload(ctx, o.bucket, key, signedPayload(mediaType))
	if err != nil {
		return o.classify("start multipart upload", key, err)
	}
	completed := false
	defer func() {
		if !completed {
			o.abort(ctx, key, id)
		}
	}()
	whole := hasherOf(h)
	var parts []minio.CompletePart
	for off, n := int64(0), 1; off < size; off, n = off+part, n+1 {
		length := min(part, size-off)
		sum, err := hashSection(h, content, off, length, whole)
		if err != nil {
			return err
		}
		var p minio.ObjectPart
		err = o.put(ctx, func() io.Reader { return io.NewSectionReader(content, off, length) }, func(r io.Reader) error {
			var err error
			p, err = o.core.PutObjectPart(ctx, o.bucket, key, id, n, r, length,
				minio.PutObjectPartOptions{Sha256Hex: sum, DisableContentSha256: true})
			return err
		})
		if err != nil {
			return o.classify(fmt.Sprintf("upload part %d of", n), key, err)
		}
		parts = append(parts, minio.CompletePart{PartNumber: n, ETag: p.ETag})
	}
	if got := hex.EncodeToString(whole.Sum(nil)); got != h.Hex {
		return digestMismatch(h, got)
	}
	_, err = o.core.CompleteMultipartUpload(ctx, o.bucket, key, id, parts, onlyIfAbsent(mediaType))
	if err == nil {
		completed = true
		return nil
	}
	if isPreconditionFailed(err) {
		return nil // stored meanwhile by another writer; this upload is aborted
	}
	return o.classify("complete multipart upload", key, err)
}

// abort ends a multipart upload that will not complete, even when ctx ended
// (the client left): its parts would otherwise be billed until a lifecycle
// rule (AbortIncompleteMultipartUpload) removes them.
func (o *S3Objects) abort(ctx context.Context, key, id string) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	defer cancel()
	if err := o.core.AbortMultipartUpload(ctx, o.bucket, key, id); err != nil {
		o.log.Warn("abort multipart upload; the bucket's AbortIncompleteMultipartUpload rule will remove it",
			zap.String("key", key), zap.String("upload_id", id), zap.Error(err))
	}
}

// Open reads the object with one GET, whose answer gives its size and media
// type, and returns it as a ReadSeeker: reads go on with that GET's body
// while they follow each other; a read after a seek elsewhere is a ranged
// GET from there on, so http.ServeContent serves Range requests from the
// bucket. The GET starts at from, where the first read will (a Range
// request's), so a whole read and a single range each cost one request, no
// HEAD first. The reader lives on ctx until Close.
func (o *S3Objects) Open(ctx context.Context, h v1.Hash, from From) (ObjectReader, Info, error) {
	if err := checkHash(h); err != nil {
		return nil, Info{}, err
	}
	key := o.key(h)
	body, at, end, st, err := o.get(ctx, key, from)
	if err != nil {
		if from != (From{}) && minio.ToErrorResponse(err).Code == minio.InvalidRange {
			// A start past the end, which the client's answer (416) needs
			// the size for: the whole object's answer gives it.
			return o.Open(ctx, h, From{})
		}
		return nil, Info{}, o.classify("open", key, err)
	}
	info := Info{Size: st.Size}
	if st.ContentType != "application/octet-stream" {
		info.MediaType = st.ContentType
	}
	return &s3Reader{o: o, ctx: ctx, key: key, size: st.Size, body: body, at: at, end: end}, info, nil
}

// get GETs the object key from from on, and returns the body with where it
// starts and ends (exclusive) in the object and the object's size (in
// st.Size), as the answer says: a 206's Content-Range, or a 200's whole
// object.
func (o *S3Objects) get(ctx context.Context, key string, from From) (io.ReadCloser, int64, int64, minio.ObjectInfo, error) {
	var opts minio.GetObjectOptions
	switch {
	case from.Suffix && from.Offset > 0:
		opts.SetRange(0, -from.Offset) // bytes=-n
	case !from.Suffix && from.Length > 0:
		opts.SetRange(from.Offset, from.Offset+from.Length-1) // bytes=a-b
	case !from.Suffix && from.Offset > 0:
		opts.SetRange(from.Offset, 0) // bytes=n-
	}
	body, st, header, err := o.core.GetObject(ctx, o.bucket, key, opts)
	if err != nil {
		return nil, 0, 0, st, err
	}
	cr := header.Get("Content-Range")
	if cr == "" {
		return body, 0, st.Size, st, nil
	}
	at, last, size, ok := contentRange(cr)
	if !ok {
		body.Close()
		return nil, 0, 0, st, fmt.Errorf("get s3://%s/%s: unreadable Content-Range %q", o.bucket, key, cr)
	}
	st.Size = size
	return body, at, last + 1, st, nil
}

// contentRange reads the first and last byte positions and the whole size
// from a Content-Range: bytes a-b/n.
func contentRange(cr string) (start, end, size int64, ok bool) {
	rest, ok := strings.CutPrefix(cr, "bytes ")
	first, rest, ok2 := strings.Cut(rest, "-")
	last, whole, ok3 := strings.Cut(rest, "/")
	if !ok || !ok2 || !ok3 {
		return 0, 0, 0, false
	}
	start, err1 := strconv.ParseInt(first, 10, 64)
	end, err2 := strconv.ParseInt(last, 10, 64)
	size, err3 := strconv.ParseInt(whole, 10, 64)
	return start, end, size, err1 == nil && err2 == nil && err3 == nil && 0 <= start && start <= end && end < size
}

// s3Reader is an object of the bucket opened by Open.
type s3Reader struct {
	o    *S3Objects
	ctx  context.Context
	key  string
	size int64
	pos  int64         // where the next read starts
	body io.ReadCloser // the current GET's body, nil once closed
	at   int64         // where body's next byte is in the object
	end  int64         // where body's range ends (exclusive)
}

func (r *s3Reader) Read(p []byte) (int, error) {
	if r.pos >= r.size {
		return 0, io.EOF
	}
	if r.body == nil || r.at != r.pos || r.at >= r.end {
		if r.body != nil {
			r.body.Close()
			r.body = nil
		}
		body, at, end, _, err := r.o.get(r.ctx, r.key, From{Offset: r.pos})
		if err != nil {
			return 0, r.o.classify("read", r.key, err)
		}
		if at != r.pos { // a store that ignored the Range: never bytes from elsewhere
			body.Close()
			return 0, fmt.Errorf("read s3://%s/%s: asked for bytes from %d, the answer starts at %d", r.o.bucket, r.key, r.pos, at)
		}
		r.body, r.at, r.end = body, at, end
	}
	n, err := r.body.Read(p[:min(int64(len(p)), r.end-r.at)])
	r.pos += int64(n)
	r.at += int64(n)
	if errors.Is(err, io.EOF) && r.pos < r.size {
		if r.at < r.end {
			err = io.ErrUnexpectedEOF // cut short: the store did not answer in full
		} else {
			err = nil // the end of a closed range: the next read GETs the rest
			if n == 0 {
				return r.Read(p)
			}
		}
	}
	if err != nil && !errors.Is(err, io.EOF) {
		err = r.o.classify("read", r.key, err)
	}
	return n, err
}

func (r *s3Reader) Seek(off int64, whence int) (int64, error) {
	switch whence {
	case io.SeekStart:
	case io.SeekCurrent:
		off += r.pos
	case io.SeekEnd:
		off += r.size
	default:
		return 0, fmt.Errorf("seek s3://%s/%s: whence %d", r.o.bucket, r.key, whence)
	}
	if off < 0 {
		return 0, fmt.Errorf("seek s3://%s/%s: negative position %d", r.o.bucket, r.key, off)
	}
	r.pos = off
	return off, nil
}

func (r *s3Reader) Close() error {
	if r.body == nil {
		return nil
	}
	err := r.body.Close()
	r.body = nil
	return err
}

// Stat returns the object's size from a HEAD.
func (o *S3Objects) Stat(ctx context.Context, h v1.Hash) (int64, error) {
	if err := checkHash(h); err != nil {
		return 0, err
	}
	key := o.key(h)
	st, err := o.core.StatObject(ctx, o.bucket, key, minio.StatObjectOptions{})
	if err != nil {
		return 0, o.classify("stat", key, err)
	}
	return st.Size, nil
}

// Delete removes the object; S3 answers a delete of a missing key with success.
func (o *S3Objects) Delete(ctx context.Context, h v1.Hash) error {
	if err := checkHash(h); err != nil {
		return err
	}
	key := o.key(h)
	err := o.core.RemoveObject(ctx, o.bucket, key, minio.RemoveObjectOptions{})
	if err = o.classify("delete", key, err); errors.Is(err, ErrNotFound) {
		return nil
	}
	return err
}

// List walks the keys under <prefix>/blobs/<algorithm>/, algorithm after
// algorithm; S3 lists in key order, so it is digest order. Keys that are not
// a digest are skipped.
func (o *S3Objects) List(ctx context.Context, fn func(h v1.Hash, size int64) error) error {
	for a := range algorithms {
		if err := o.list(ctx, uint8(a), fn); err != nil {
			return err
		}
	}
	return nil
}

// list is List for the digests of algorithm alg.
func (o *S3Objects) list(ctx context.Context, alg uint8, fn func(h v1.Hash, size int64) error) error {
	dir := o.dir(algorithms[alg].name)
	return o.walkKeys(ctx, dir, func(obj minio.ObjectInfo) error {
		r, ok := hexRaw(alg, strings.TrimPrefix(obj.Key, dir))
		if !ok {
			return nil
		}
		return fn(r.hash(), obj.Size)
	})
}

// maxRecord bounds a record read back: tag answers and pins are a few
// hundred bytes.
const maxRecord = 1 << 20

// recordKey is where a record lives. Keys are the store's own (tags/…,
// pins/…), never content's.
func (o *S3Objects) recordKey(key string) (string, error) {
	if key == "" || strings.HasPrefix(key, "/") || strings.HasPrefix(key, "blobs/") || len(key) > 900 {
		return "", fmt.Errorf("record key %q: not a record's", key)
	}
	return o.prefix + key, nil
}

// PutRecord writes a record, replacing what was there.
func (o *S3Objects) PutRecord(ctx context.Context, key string, body []byte) error {
	k, err := o.recordKey(key)
	if err != nil {
		return err
	}
	sum := sha256.Sum256(body)
	err = o.put(ctx, func() io.Reader { return bytes.NewReader(body) }, func(r io.Reader) error {
		_, err := o.core.PutObject(ctx, o.bucket, k, r, int64(len(body)), "", hex.EncodeToString(sum[:]), signedPayload("application/json"))
		return err
	})
	return o.classify("put record", k, err)
}

// GetRecord reads a record whole, up to maxRecord bytes.
func (o *S3Objects) GetRecord(ctx context.Context, key string) ([]byte, error) {
	k, err := o.recordKey(key)
	if err != nil {
		return nil, err
	}
	obj, err := o.core.Client.GetObject(ctx, o.bucket, k, minio.GetObjectOptions{})
	if err != nil {
		return nil, o.classify("get record", k, err)
	}
	defer obj.Close()
	body, err := io.ReadAll(io.LimitReader(obj, maxRecord+1))
	if err != nil {
		return nil, o.classify("get record", k, err)
	}
	if len(body) > maxRecord {
		return nil, fmt.Errorf("record s3://%s/%s: %w", o.bucket, k, ErrTooLarge)
	}
	return body, nil
}

// DeleteRecord removes a record.
func (o *S3Objects) DeleteRecord(ctx context.Context, key string) error {
	k, err := o.recordKey(key)
	if err != nil {
		return err
	}
	err = o.classify("delete record", k, o.core.RemoveObject(ctx, o.bucket, k, minio.RemoveObjectOptions{}))
	if errors.Is(err, ErrNotFound) {
		return nil
	}
	return err
}

// ListRecords walks the record keys under dir, in key order.
func (o *S3Objects) ListRecords(ctx context.Context, dir string, fn func(key string) error) error {
	if _, err := o.recordKey(dir); err != nil || !strings.HasSuffix(dir, "/") {
		return fmt.Errorf("record directory %q: not a record's", dir)
	}
	return o.walkKeys(ctx, o.prefix+dir, func(obj minio.ObjectInfo) error {
		return fn(strings.TrimPrefix(obj.Key, o.prefix))
	})
}

// AbortStaleUploads lists the incomplete multipart uploads under the prefix
// and aborts those started more than age ago. A store's clock and ours may
// differ; age is meant to be hours, far above any skew that matters.
func (o *S3Objects) AbortStaleUploads(ctx context.Context, age time.Duration) (int, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var stale []minio.ObjectMultipartInfo
	for u := range o.core.Client.ListIncompleteUploads(ctx, o.bucket, o.prefix+"blobs/", true) {
		if u.Err != nil {
			return 0, o.classify("list incomplete uploads", o.prefix+"blobs/", u.Err)
		}
		if time.Since(u.Initiated) > age {
			stale = append(stale, u)
		}
	}
	n := 0
	for _, u := range stale {
		if err := o.core.AbortMultipartUpload(ctx, o.bucket, u.Key, u.UploadID); err != nil {
			if err = o.classify("abort multipart upload", u.Key, err); !errors.Is(err, ErrNotFound) {
				return n, err
			}
			continue // completed or aborted meanwhile
		}
		n++
	}
	return n, nil
}

// walkKeys walks the objects under dir in key order, calling fn for each.
func (o *S3Objects) walkKeys(ctx context.Context, dir string, fn func(minio.ObjectInfo) error) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	objects := o.core.Client.ListObjects(ctx, o.bucket, minio.ListObjectsOptions{Prefix: dir, Recursive: true})
	var err error
	for obj := range objects {
		if err != nil {
			continue // drain: the listing ends once ctx is cancelled
		}
		if obj.Err != nil {
			err = o.classify("list", dir, obj.Err)
			cancel()
			continue
		}
		if err = fn(obj); err != nil {
			cancel()
		}
	}
	return err
}

// classify wraps an error of the store in the sentinel that says what the
// caller can do about it; nil stays nil.
func (o *S3Objects) classify(op, key string, err error) error {
	if err == nil {
		return nil
	}
	where := fmt.Sprintf("%s s3://%s/%s", op, o.bucket, key)
	var resp minio.ErrorResponse
	if !errors.As(err, &resp) {
		// No answer at all: refused, reset, timed out, cut short, a TLS
		// failure. Anything else (a caller's cancel, a refused argument) is
		// no state of the store.
		var netErr net.Error
		if !errors.Is(err, context.Canceled) && (errors.As(err, &netErr) || errors.Is(err, io.ErrUnexpectedEOF) ||
			errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET) || errors.Is(err, context.DeadlineExceeded)) {
			return fmt.Errorf("%s: %w: %w", where, ErrStoreUnavailable, err)
		}
		return fmt.Errorf("%s: %w", where, err)
	}
	var kind error
	switch {
	case resp.Code == minio.NoSuchKey:
		kind = ErrNotFound
	case resp.Code == minio.NoSuchBucket:
		kind = ErrBucketMissing
	case resp.StatusCode == http.StatusForbidden, resp.Code == minio.AccessDenied,
		resp.Code == "InvalidAccessKeyId", resp.Code == "SignatureDoesNotMatch",
		resp.Code == "InvalidToken", resp.Code == "ExpiredToken",
		resp.Code == "XAdminUserNotFound": // versitygw's 404 for an unknown access key
		kind = ErrAccessDenied
	case resp.StatusCode >= 500, resp.Code == "SlowDown", resp.Code == "RequestTimeout",
		resp.StatusCode == http.StatusTooManyRequests,
		resp.Code == "ConditionalRequestConflict": // AWS, under concurrent conditional writes: retry later

		kind = ErrStoreUnavailable
	default:
		return fmt.Errorf("%s: %w", where, err)
	}
	return fmt.Errorf("%s: %w: %w", where, kind, err)
}
