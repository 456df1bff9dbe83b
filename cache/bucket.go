package cache

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/dgraph-io/badger/v4"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"go.uber.org/zap"
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
	fell   chan struct{} // closed (and cleared) when it goes down
}

// localLedger is the local copy's accounting in bucket mode; Store.mu guards it.
type localLedger struct {
	used    int64 // bytes of content files under blobs/
	objects int64
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
	st.Pending = s.up.len()
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
// bucket's object, its first GET starting at from and each read after a seek
// elsewhere a ranged GET bounded by ctx, while the local copy is filled in
// the background. ErrNotFound when the content is in neither, or the bucket
// is down.
func (s *Store) OpenBlob(ctx context.Context, h v1.Hash, from From) (io.ReadSeekCloser, error) {
	f, err := s.OpenFile(h)
	if err == nil {
		return f, nil
	}
	if !errors.Is(err, ErrNotFound) || s.opt.Bucket == nil {
		return nil, err
	}
	r, info, err := s.openBucket(ctx, h, from)
	if err != nil {
		return nil, err
	}
	if !s.localCanHold(info.Size) || !s.claimFill(h) {
		return r, nil // too large for the local copy, or filled already
	}
	if !s.aboveFloor(info.Size) {
		// A staging file would cross the free-space floor: the background
		// fill evicts first, then reads the object again.
		s.runFill(h, func(ctx context.Context) error { return s.fill(ctx, h) }, nil)
		return r, nil
	}
	return &fillingReader{ObjectReader: r, s: s, h: h, size: info.Size, v: NewVerifier(h, info.Size)}, nil
}

// StatBlob returns the size of stored content, for a HEAD: the local file's,
// else the bucket's object's from one HEAD, with no read of the content and
// no fill of the local copy. ErrNotFound where OpenBlob would miss, so a
// HEAD and a GET agree: the bucket down, content the bucket no longer has
// (its record is forgotten, as OpenBlob does), or not stored at all.
func (s *Store) StatBlob(ctx context.Context, h v1.Hash) (int64, error) {
	if err := checkHash(h); err != nil {
		return 0, err
	}
	st, err := os.Stat(s.path(h))
	if err == nil {
		s.Touch(h)
		return st.Size(), nil
	}
	if !errors.Is(err, os.ErrNotExist) {
		return 0, fmt.Errorf("stat blob %s: %w", h, err)
	}
	if s.opt.Bucket == nil {
		return 0, ErrNotFound
	}
	var size int64
	err = s.fromBucket(ctx, h, "stat", func() (err error) {
		size, err = s.opt.Bucket.Stat(ctx, h)
		return err
	})
	return size, err
}

// Stored reports whether h is in the store now, asking the bucket with a
// HEAD when neither the local copy nor the index knows it (content another
// replica stored): a check, with no read of the content and no fill of the
// local copy, for callers that only decide where the bytes come from.
func (s *Store) Stored(ctx context.Context, h v1.Hash) bool {
	if s.Has(h) {
		return true
	}
	if s.opt.Bucket == nil || s.bucketDown() || checkHash(h) != nil {
		return false
	}
	_, err := s.opt.Bucket.Stat(ctx, h)
	return s.noted(err) == nil
}

// aboveFloor reports whether size more bytes on the disk leave the free
// space above REGMIRROR_MIN_FREE.
func (s *Store) aboveFloor(size int64) bool {
	if s.opt.MinFree <= 0 {
		return true
	}
	free, err := s.free()
	return err == nil && free-size >= s.opt.MinFree
}

// fillingReader serves an object of the bucket and, while its reads follow
// each other from the start, writes what they read to a staging file too:
// read whole and checked against its digest, that file becomes the local
// copy, with no second GET. Anything else (a range, a HEAD, a client gone, a
// staging write that failed) leaves the fill to the background, which reads
// the object again.
type fillingReader struct {
	ObjectReader
	s       *Store
	h       v1.Hash
	size    int64
	pos     int64    // where the next read starts
	staged  *os.File // the staging file, nil until the first read
	v       *Verifier
	skipped bool // the reads did not follow each other from the start
	closed  bool
}

func (r *fillingReader) Read(p []byte) (int, error) {
	start := r.pos
	n, err := r.ObjectReader.Read(p)
	r.pos += int64(n)
	if n > 0 && !r.skipped {
		r.stage(start, p[:n])
	}
	return n, err
}

// stage writes b, read at off, to the staging file, or gives the staging
// up when b does not follow what it has (or the write fails: the client's
// read goes on regardless).
func (r *fillingReader) stage(off int64, b []byte) {
	if off != r.v.Written() {
		r.skipped = true
		return
	}
	if r.staged == nil {
		f, err := r.s.stagingFile(r.h)
		if err != nil {
			r.skipped = true
			return
		}
		r.staged = f
	}
	if _, err := r.staged.Write(b); err != nil {
		r.skipped = true
		return
	}
	r.v.Write(b)
}

func (r *fillingReader) Seek(off int64, whence int) (int64, error) {
	pos, err := r.ObjectReader.Seek(off, whence)
	if err == nil {
		r.pos = pos
	}
	return pos, err
}

// Close ends the read; the staging file, if whole and right, is put in
// place in the background, else the background fill takes over.
func (r *fillingReader) Close() error {
	if r.closed {
		return nil
	}
	r.closed = true
	err := r.ObjectReader.Close()
	whole := !r.skipped && r.staged != nil && r.v.Check() == nil
	if !whole {
		r.drop()
		r.s.runFill(r.h, func(ctx context.Context) error { return r.s.fill(ctx, r.h) }, nil)
		return err
	}
	r.s.runFill(r.h, func(context.Context) error {
		if err := r.s.fillRoom(r.h, r.size); err != nil {
			r.drop()
			return err
		}
		return r.s.placeLocal(r.h, r.staged, r.size)
	}, r.drop)
	return err
}

// drop removes the staging file.
func (r *fillingReader) drop() {
	if r.staged != nil {
		r.staged.Close()
		os.Remove(r.staged.Name())
	}
}

// openBucket opens h in the bucket after a local miss (see fromBucket).
func (s *Store) openBucket(ctx context.Context, h v1.Hash, from From) (ObjectReader, Info, error) {
	var r ObjectReader
	var info Info
	err := s.fromBucket(ctx, h, "open", func() (err error) {
		r, info, err = s.opt.Bucket.Open(ctx, h, from)
		return err
	})
	return r, info, err
}

// fromBucket runs ask, a request to the bucket for h after a local miss,
// and says ErrNotFound for any answer but content. Once the index is
// complete, content it does not know is not asked for: a cold blob costs
// no request to learn it is cold; unless the bucket is Shared with other
// replicas, which store content this index has never seen. A record of
// content the bucket no longer has (removed behind the store's back) is
// forgotten. what names the request in the log.
func (s *Store) fromBucket(ctx context.Context, h v1.Hash, what string, ask func() error) error {
	if s.bucketDown() {
		return ErrNotFound
	}
	_, recErr := s.info(h)
	if recErr != nil && isClosed(s.counted) && !s.opt.Shared {
		return ErrNotFound
	}
	err := ask()
	if s.noted(err) != nil {
		if errors.Is(err, ErrNotFound) {
			if recErr == nil && !s.up.has(h.String()) {
				s.log.Warn("content in the index is not in the bucket; forgotten", zap.Stringer("digest", h))
				if err := s.remove(h); err != nil {
					s.log.Warn("forget content missing from the bucket", zap.Stringer("digest", h), zap.Error(err))
				}
			}
			return ErrNotFound
		}
		if !unusable(err) && ctx.Err() == nil {
			s.log.Warn(what+" in the bucket; served as a miss", zap.Stringer("digest", h), zap.Error(err))
		}
		// A miss, streamed through from upstream: better than an error.
		return ErrNotFound
	}
	s.Touch(h)
	return nil
}

// manifestFromBucket reads a manifest the local copy does not have, checks
// it against its digest, and keeps it in memory, in the local copy and, with
// what it refers to, in the index.
func (s *Store) manifestFromBucket(ctx context.Context, h v1.Hash, max int64) ([]byte, Info, error) {
	r, info, err := s.openBucket(ctx, h, From{})
	if err != nil {
		return nil, Info{}, err
	}
	defer r.Close()
	if info.Size > max {
		return nil, Info{}, fmt.Errorf("manifest %s: %w (%d > %d bytes)", h, ErrTooLarge, info.Size, max)
	}
	body, err := io.ReadAll(io.LimitReader(r, max+1))
	if err != nil {
		return nil, Info{}, s.noted(fmt.Errorf("read manifest %s from the bucket: %w", h, err))
	}
	if err := checkBody(h, body); err != nil {
		return nil, Info{}, err
	}
	if rec, err := s.info(h); err == nil && rec.MediaType != "" {
		info.MediaType = rec.MediaType
	}
	info.Size = int64(len(body))
	if err := s.putRecord(h, info, manifestRefs(body)); err != nil {
		s.log.Warn("index manifest read from the bucket", zap.Stringer("digest", h), zap.Error(err))
	}
	s.remember(h, body, info)
	if err := s.keepLocal(h, bytes.NewReader(body), info.Size); err != nil && !errors.Is(err, ErrNoSpace) {
		s.log.Warn("keep manifest in the local copy", zap.Stringer("digest", h), zap.Error(err))
	}
	return body, info, nil
}

// checkBody checks content held in memory against its digest.
func checkBody(h v1.Hash, body []byte) error {
	v := NewVerifier(h, int64(len(body)))
	v.Write(body)
	return v.Check()
}

// claimFill marks h as being copied into the local copy; false when it
// already is, or the store is closing.
func (s *Store) claimFill(h v1.Hash) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.filling[h] || s.bg.Err() != nil {
		return false
	}
	s.filling[h] = true
	return true
}

// runFill runs fill for h, claimed, in the background, a few digests at a
// time, and then releases the claim. drop, if not nil, is called instead
// when the store stops first.
func (s *Store) runFill(h v1.Hash, fill func(ctx context.Context) error, drop func()) {
	stop := func() {
		if drop != nil {
			drop()
		}
	}
	release := func() {
		s.mu.Lock()
		delete(s.filling, h)
		s.mu.Unlock()
	}
	s.mu.Lock()
	if s.bg.Err() != nil {
		delete(s.filling, h)
		s.mu.Unlock()
		stop()
		return
	}
	s.bgWork.Add(1)
	s.mu.Unlock()
	go func() {
		defer s.bgWork.Done()
		defer release()
		select {
		case s.fillers <- struct{}{}:
		case <-s.bg.Done():
			stop()
			return
		}
		defer func() { <-s.fillers }()
		if err := fill(s.bg); err != nil && !errors.Is(err, ErrNoSpace) && s.bg.Err() == nil {
			s.log.Warn("fill the local copy from the bucket", zap.Stringer("digest", h), zap.Error(err))
		}
	}()
}

func (s *Store) fill(ctx context.Context, h v1.Hash) error {
	if s.hasLocal(h) {
		return nil
	}
	r, info, err := s.openBucket(ctx, h, From{})
	if err != nil {
		return err
	}
	defer r.Close()
	return s.keepLocal(h, r, info.Size)
}

func (s *Store) hasLocal(h v1.Hash) bool {
	_, err := os.Stat(s.path(h))
	return err == nil
}

// keepLocal writes content of the bucket into the local copy: a staging
// file, checked against its digest, then put in place as a download is.
// It counts against the local copy's budget only (the bucket has it).
func (s *Store) keepLocal(h v1.Hash, content io.Reader, size int64) error {
	if s.hasLocal(h) {
		return nil
	}
	if err := s.fillRoom(h, size); err != nil {
		return err
	}
	f, err := s.stagingFile(h)
	if err != nil {
		return err
	}
	v := NewVerifier(h, size)
	_, err = io.Copy(io.MultiWriter(f, v), content)
	if err == nil {
		err = v.Check()
	}
	if err != nil {
		f.Close()
		os.Remove(f.Name())
		return s.noted(fmt.Errorf("copy %s from the bucket: %w", h, err))
	}
	return s.placeLocal(h, f, size)
}

// fillRoom makes room in the local copy for a copy of h, evicting what the
// bucket has; ErrNoSpace (no refusal: no client asked) when there is none.
func (s *Store) fillRoom(h v1.Hash, size int64) error {
	s.mu.Lock()
	short := s.localShortfall(size)
	s.mu.Unlock()
	if short <= 0 {
		return nil
	}
	if err := s.evictLocal(size); err != nil {
		return err
	}
	s.mu.Lock()
	short = s.localShortfall(size)
	s.mu.Unlock()
	if short > 0 {
		return fmt.Errorf("%w: the local copy has no room for %s", ErrNoSpace, h)
	}
	return nil
}

// localCanHold reports whether the local copy could hold size bytes once it
// evicted all it may: content larger is served from the bucket, never
// copied (which would cost a read of it for nothing).
func (s *Store) localCanHold(size int64) bool {
	if s.opt.LocalMaxSize > 0 && size > s.opt.LocalMaxSize {
		return false
	}
	if s.opt.MinFree > 0 {
		free, err := s.free()
		s.mu.Lock()
		used := s.local.used
		s.mu.Unlock()
		if err == nil && free+used-s.opt.MinFree < size {
			return false
		}
	}
	return true
}

// stagingFile is a temp file for content of h on its way into the local copy.
func (s *Store) stagingFile(h v1.Hash) (*os.File, error) {
	f, err := os.CreateTemp(tmpDir(s.dir), h.Hex[:16]+"-*")
	if err != nil {
		return nil, fmt.Errorf("create temp file for %s: %w", h, err)
	}
	return f, nil
}

// placeLocal fsyncs a staging file of h's content, already checked against
// its digest, and renames it into the local copy, where it counts.
func (s *Store) placeLocal(h v1.Hash, f *os.File, size int64) error {
	tmp := f.Name()
	defer os.Remove(tmp) // gone after the rename; removes it on failure
	err := f.Sync()
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("write %s to the local copy: %w", h, err)
	}
	final := s.path(h)
	if err := os.MkdirAll(filepath.Dir(final), 0o750); err != nil {
		return err
	}
	s.mu.Lock()
	if _, err := os.Stat(final); err == nil {
		s.mu.Unlock()
		return nil
	}
	if err := os.Rename(tmp, final); err != nil {
		s.mu.Unlock()
		return fmt.Errorf("rename %s into the local copy: %w", h, err)
	}
	s.local.used += size
	s.local.objects++
	s.countedSelf(h, size, false, true)
	s.mu.Unlock()
	return syncDir(filepath.Dir(final))
}

// tagFromBucket reads a tag answer the index does not have yet while it is
// rebuilt from the bucket, and keeps it.
func (s *Store) tagFromBucket(key []byte) (TagAnswer, error) {
	if s.opt.Bucket == nil || isClosed(s.counted) || s.bucketDown() {
		return TagAnswer{}, ErrNotFound
	}
	bkey, _ := bucketRecordKey(string(key))
	ctx, cancel := context.WithTimeout(s.bg, 30*time.Second)
	defer cancel()
	body, err := s.opt.Bucket.GetRecord(ctx, bkey)
	if s.noted(err) != nil {
		return TagAnswer{}, ErrNotFound
	}
	var a TagAnswer
	if err := json.Unmarshal(body, &a); err != nil || checkHash(a.Digest) != nil {
		return TagAnswer{}, ErrNotFound
	}
	if err := s.db.Update(func(txn *badger.Txn) error { return txn.Set(key, body) }); err != nil {
		return TagAnswer{}, err
	}
	return a, nil
}

// uploads is the set of items waiting for the bucket: digests' strings for
// content committed locally, tag and pin keys for records. Each has a marker
// in the index (uploadKey), so a crash loses none. A generation per item
// tells an upload that finished from one overtaken by a newer write.
type uploads struct {
	mu    sync.Mutex
	items map[string]uint64
	gen   uint64
	kick  chan struct{}
}

func (u *uploads) add(item string) {
	u.mu.Lock()
	u.gen++
	u.items[item] = u.gen
	u.mu.Unlock()
	select {
	case u.kick <- struct{}{}:
	default:
	}
}

func (u *uploads) has(item string) bool {
	u.mu.Lock()
	defer u.mu.Unlock()
	_, ok := u.items[item]
	return ok
}

func (u *uploads) len() int64 {
	u.mu.Lock()
	defer u.mu.Unlock()
	return int64(len(u.items))
}

// snapshot lists the items with their generations.
func (u *uploads) snapshot() map[string]uint64 {
	u.mu.Lock()
	defer u.mu.Unlock()
	return maps.Clone(u.items)
}

// done removes item if it was not written again since gen; it reports
// whether it did.
func (u *uploads) done(item string, gen uint64) bool {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.items[item] != gen {
		return false
	}
	delete(u.items, item)
	return true
}

// forget removes item whatever its generation (its content was evicted).
func (u *uploads) forget(item string) {
	u.mu.Lock()
	delete(u.items, item)
	u.mu.Unlock()
}

// loadUploads reads the markers an earlier process left: what it had
// committed but not yet uploaded.
func (s *Store) loadUploads() error {
	return s.db.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: []byte(prefixUpload)})
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			s.up.add(string(it.Item().Key()[len(prefixUpload):]))
		}
		return nil
	})
}

// markDown notes that the bucket did not answer; err wraps ErrStoreUnavailable.
func (s *Store) markDown(err error) {
	b := &s.health
	b.mu.Lock()
	defer b.mu.Unlock()
	b.reason = err.Error()
	if b.down {
		return
	}
	b.down, b.since = true, s.opt.Now()
	if b.fell != nil {
		close(b.fell)
		b.fell = nil
	}
	s.log.Warn("bucket down: serving the local copy, streaming misses without storing them, uploads wait", zap.Error(err))
}

// markUp notes that the bucket answered.
func (s *Store) markUp() {
	b := &s.health
	b.mu.Lock()
	defer b.mu.Unlock()
	if !b.down {
		return
	}
	s.log.Info("bucket back", zap.Duration("down_for", s.opt.Now().Sub(b.since)))
	b.down, b.reason, b.since = false, "", s.opt.Now()
	close(b.wake)
	b.wake = make(chan struct{})
}

// noted passes err through after noting what it says of the bucket: down
// when it cannot be used (unreachable, 5xx or SlowDown, and credentials
// refused or the bucket gone since start-up, which an operator fixes
// without a restart), up when it answered.
func (s *Store) noted(err error) error {
	switch {
	case err == nil, errors.Is(err, ErrNotFound):
		s.markUp()
	case unusable(err):
		s.markDown(err)
	}
	return err
}

func unusable(err error) bool {
	return errors.Is(err, ErrStoreUnavailable) || errors.Is(err, ErrAccessDenied) || errors.Is(err, ErrBucketMissing)
}

// awaitUp waits until the bucket is up or ctx ends.
func (s *Store) awaitUp(ctx context.Context) error {
	s.health.mu.Lock()
	down, wake := s.health.down, s.health.wake
	s.health.mu.Unlock()
	if !down {
		return nil
	}
	select {
	case <-wake:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// errProbed ends the probe's listing at its first key.
var errProbed = errors.New("probed")

// probe asks the bucket, with a backoff from UploadRetry to a minute, until
// it answers again, whenever it is down.
func (s *Store) probe(ctx context.Context) {
	wait := s.opt.UploadRetry
	for {
		s.health.mu.Lock()
		down, wake := s.health.down, s.health.wake
		s.health.mu.Unlock()
		if !down {
			wait = s.opt.UploadRetry
			select {
			case <-ctx.Done():
				return
			case <-s.health.downed():
				continue
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-wake:
			continue
		case <-time.After(wait):
		}
		// A listing of one key, not a HEAD: a HEAD's 404 cannot tell a
		// missing object from refused credentials.
		pctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		err := s.opt.Bucket.ListRecords(pctx, "tags/", func(string) error { return errProbed })
		cancel()
		if errors.Is(err, errProbed) {
			err = nil
		}
		if ctx.Err() != nil {
			return
		}
		if unusable(s.noted(err)) {
			wait = min(2*wait, time.Minute)
		}
	}
}

// downed returns a channel closed the next time the bucket goes down.
func (b *bucketHealth) downed() <-chan struct{} {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.down {
		c := make(chan struct{})
		close(c)
		return c
	}
	if b.fell == nil {
		b.fell = make(chan struct{})
	}
	return b.fell
}

// uploaders is how many uploads run at once.
const uploaders = 4

// upload runs the uploads until ctx ends: content after its commit, records
// after their write, a few at a time. While the bucket is down it waits for
// the probe; items that fail for a reason of their own are tried again after
// a pause that doubles, from UploadRetry up to a minute.
func (s *Store) upload(ctx context.Context) {
	pause := s.opt.UploadRetry
	for {
		batch := s.up.snapshot()
		var failed sync.Map
		var work sync.WaitGroup
		slots := make(chan struct{}, uploaders)
		for item, gen := range batch {
			if s.awaitUp(ctx) != nil {
				break
			}
			slots <- struct{}{}
			work.Go(func() {
				defer func() { <-slots }()
				if !s.uploadOne(ctx, item, gen) {
					failed.Store(item, true)
				}
			})
		}
		work.Wait()
		if ctx.Err() != nil {
			return
		}
		retry := false
		failed.Range(func(any, any) bool { retry = true; return false })
		if retry {
			select {
			case <-ctx.Done():
				return
			case <-time.After(pause):
			}
			pause = min(2*pause, time.Minute)
			continue
		}
		pause = s.opt.UploadRetry
		if s.up.len() > 0 && len(batch) > 0 {
			continue // more came in meanwhile
		}
		select {
		case <-ctx.Done():
			return
		case <-s.up.kick:
		}
	}
}

// uploadOne uploads one item, and forgets its marker once it is in the
// bucket; it reports whether the item is done.
func (s *Store) uploadOne(ctx context.Context, item string, gen uint64) bool {
	if s.deferred.waiting(item) {
		return false // tried again after a pause, as a failed upload is
	}
	var err error
	if h, herr := v1.NewHash(item); herr == nil && checkHash(h) == nil {
		err = s.uploadContent(ctx, h)
	} else {
		err = s.uploadRecord(ctx, item)
	}
	if s.noted(err) != nil {
		if !unusable(err) && ctx.Err() == nil {
			s.log.Warn("upload to the bucket", zap.String("item", item), zap.Error(err))
		}
		return false
	}
	if s.up.done(item, gen) {
		if err := s.db.Update(func(txn *badger.Txn) error { return txn.Delete(uploadKey(item)) }); err != nil {
			s.log.Warn("forget upload marker", zap.String("item", item), zap.Error(err))
		}
	}
	return true
}

// errGone means an item to upload no longer exists: nothing to do.
var errGone = errors.New("gone before its upload")

// uploadContent puts a locally committed file in the bucket. It is held
// meanwhile, so eviction cannot take it from under the upload. A local file
// that does not hash to its digest (damaged on disk since its commit) is
// removed with its records: the next request fetches it again.
func (s *Store) uploadContent(ctx context.Context, h v1.Hash) error {
	defer s.Hold(h)()
	info, err := s.info(h)
	f, ferr := os.Open(s.path(h))
	if ferr != nil || err != nil {
		if ferr == nil {
			f.Close()
		}
		if errors.Is(ferr, os.ErrNotExist) || errors.Is(err, ErrNotFound) {
			return nil // evicted, or a crash before its rename: nothing to upload
		}
		return errors.Join(ferr, err)
	}
	defer f.Close()
	if s.opt.Shared {
		// Another replica may have put it (the one this replica streamed it
		// from, usually): a HEAD instead of sending it again.
		if _, err := s.opt.Bucket.Stat(ctx, h); err == nil {
			return nil
		}
	}
	err = s.opt.Bucket.Put(ctx, h, f, info.Size, info.MediaType)
	if errors.Is(err, ErrDigestMismatch) || errors.Is(err, ErrSizeMismatch) {
		s.log.Error("local content does not match its digest; removed, not uploaded", zap.Stringer("digest", h), zap.Error(err))
		return s.remove(h)
	}
	return err
}

// bucketRecordKey is where the index's tag or pin key lives in the bucket.
func bucketRecordKey(key string) (string, bool) {
	if rest, ok := strings.CutPrefix(key, prefixTag); ok {
		return "tags/" + rest, true
	}
	if rest, ok := strings.CutPrefix(key, prefixPin); ok {
		return "pins/" + rest, true
	}
	return "", false
}

// indexRecordKey is bucketRecordKey's inverse.
func indexRecordKey(key string) (string, bool) {
	if rest, ok := strings.CutPrefix(key, "tags/"); ok {
		return prefixTag + rest, true
	}
	if rest, ok := strings.CutPrefix(key, "pins/"); ok {
		return prefixPin + rest, true
	}
	return "", false
}

// uploadRecord writes a tag answer or pin as the index has it now, or
// removes it from the bucket when the index no longer has it.
func (s *Store) uploadRecord(ctx context.Context, key string) error {
	bkey, ok := bucketRecordKey(key)
	if !ok {
		return nil // no item of ours
	}
	var body []byte
	err := s.db.View(func(txn *badger.Txn) error {
		item, err := txn.Get([]byte(key))
		if err != nil {
			return err
		}
		body, err = item.ValueCopy(nil)
		return err
	})
	if errors.Is(err, badger.ErrKeyNotFound) {
		return s.opt.Bucket.DeleteRecord(ctx, bkey)
	}
	if err != nil {
		return err
	}
	if s.fleet != nil && strings.HasPrefix(key, prefixTag) {
		return s.putSharedTag(ctx, key, bkey, body)
	}
	return s.opt.Bucket.PutRecord(ctx, bkey, body)
}

// sweep aborts stale multipart uploads (of a process killed mid-upload) at
// start and then every StaleUploads (at least a minute).
func (s *Store) sweep(ctx context.Context) {
	for {
		if err := s.awaitUp(ctx); err != nil {
			return
		}
		n, err := s.opt.Bucket.AbortStaleUploads(ctx, s.opt.StaleUploads)
		if s.noted(err) != nil && !unusable(err) && ctx.Err() == nil {
			s.log.Warn("abort stale multipart uploads", zap.Error(err))
		}
		if n > 0 {
			s.log.Info("aborted stale multipart uploads", zap.Int("count", n), zap.Duration("older_than", s.opt.StaleUploads))
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(max(s.opt.StaleUploads, time.Minute)):
		}
	}
}
