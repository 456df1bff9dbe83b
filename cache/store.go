// Package cache is regmirror's content-addressed store: verified files named by
// digest under dir/blobs, temp files under dir/tmp that become visible only by
// rename, and a badger index beside them (blob records, last access, tag answers).
package cache

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/dgraph-io/badger/v4"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	lru "github.com/hashicorp/golang-lru/v2"
	"go.uber.org/zap"
)

var (
	// ErrNotFound means the store holds no such blob or tag answer.
	ErrNotFound = errors.New("not in cache")
	// ErrDigestMismatch means content did not hash to the digest it was stored under.
	ErrDigestMismatch = errors.New("content does not match its digest")
	// ErrSizeMismatch means content was longer or shorter than announced.
	ErrSizeMismatch = errors.New("content does not match its announced size")
	// ErrTooLarge means content is larger than the caller's limit.
	ErrTooLarge = errors.New("content larger than allowed")
	// ErrUnsupportedDigest means the digest is not sha256 or sha512 in lower-case hex.
	ErrUnsupportedDigest = errors.New("only sha256 and sha512 digests are supported")
)

// Options tune a Store. The zero value picks sensible defaults.
type Options struct {
	// AccessFlushInterval is how often batched last-access times are written
	// to the index, so a request never waits on a disk write for bookkeeping.
	AccessFlushInterval time.Duration
	// GCInterval is how often badger's value log is garbage-collected.
	GCInterval time.Duration
	// MemoryTags and MemoryManifests bound the in-memory LRUs (entries).
	MemoryTags      int
	MemoryManifests int
	// MemoryManifestMax is the largest manifest kept in memory (bytes).
	MemoryManifestMax int
	// MaxSize is the byte budget for stored content; 0 means no limit.
	MaxSize int64
	// HighWater and LowWater are fractions of MaxSize: past the high mark the
	// store evicts in the background down to the low mark. Defaults 0.95, 0.90.
	HighWater, LowWater float64
	// MinFree is a floor of free bytes kept on the filesystem; 0 means none.
	MinFree int64
	// CheckInterval is how often the background evictor checks the free-space
	// floor, which other programs on the disk can cross at any time.
	CheckInterval time.Duration
	// Bucket, when set, is where content, tag answers and pins live (the
	// truth); dir then holds downloads in progress, the index and a local
	// copy of hot content, all caches of the bucket. nil is disk mode: the
	// content files under dir are the truth, and nothing below applies.
	Bucket Objects
	// LocalMaxSize is the byte budget of the local copy in bucket mode;
	// 0 means no limit but the free-space floor (MinFree). With a bucket,
	// MaxSize is the bucket's budget.
	LocalMaxSize int64
	// Shared says other mirrors (replicas) write to the bucket too, so
	// content this index does not know may be there: a local miss always
	// asks the bucket, instead of only while the index is being rebuilt.
	Shared bool
	// Fleet, with Bucket, makes the store one replica of several on the
	// bucket (cache/fleet.go): MaxSize is then the fleet's budget, kept by
	// whichever replica runs the evictor, never by this store alone.
	Fleet *FleetOptions
	// UploadRetry is the first wait before a failed upload to the bucket is
	// tried again, and before the bucket is probed once it is down; it
	// doubles up to a minute. 0 means one second.
	UploadRetry time.Duration
	// StaleUploads is how old an incomplete multipart upload in the bucket
	// must be for the sweep to abort it; the sweep runs at start, then every
	// StaleUploads (at least a minute). 0 means an hour.
	StaleUploads time.Duration
	// Now is the clock; tests set it, production leaves it nil.
	Now func() time.Time
	// FreeSpace reports the filesystem's free bytes; tests set it,
	// production leaves it nil for statfs.
	FreeSpace func() (int64, error)

	// beforeReconcile, when set, runs at the start of a reconciliation
	// after a crash: tests hold it there.
	beforeReconcile func(context.Context)
}

func (o *Options) defaults() {
	if o.AccessFlushInterval <= 0 {
		o.AccessFlushInterval = 10 * time.Second
	}
	if o.GCInterval <= 0 {
		o.GCInterval = 10 * time.Minute
	}
	if o.MemoryTags <= 0 {
		o.MemoryTags = 4096
	}
	if o.MemoryManifests <= 0 {
		o.MemoryManifests = 1024
	}
	if o.MemoryManifestMax <= 0 {
		o.MemoryManifestMax = 256 << 10
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.HighWater <= 0 || o.HighWater > 1 {
		o.HighWater = 0.95
	}
	if o.LowWater <= 0 || o.LowWater > o.HighWater {
		o.LowWater = min(0.90, o.HighWater)
	}
	if o.CheckInterval <= 0 {
		o.CheckInterval = time.Minute
	}
	if o.UploadRetry <= 0 {
		o.UploadRetry = time.Second
	}
	if o.StaleUploads <= 0 {
		o.StaleUploads = time.Hour
	}
}

// Info is what the index knows of a stored blob or manifest.
type Info struct {
	Size      int64
	MediaType string // empty when the record was lost (e.g. a crash right after rename)
}

type memManifest struct {
	body []byte
	info Info
}

// Store is the on-disk cache. It is safe for concurrent use.
type Store struct {
	deferred deferredUploads // uploads another replica is making (uploaded.go)
	dir      string
	opt      Options
	log      *zap.Logger
	db       *badger.DB

	tags      *lru.Cache[string, TagAnswer]
	manifests *lru.Cache[v1.Hash, memManifest]

	accessMu sync.Mutex
	access   map[v1.Hash]time.Time // touched since the last flush

	// mu guards the accounting of the budget and the set of held objects.
	// Renames into place and removals by eviction happen under it too.
	mu         sync.Mutex
	ledger     ledger
	held       map[v1.Hash]int
	filesystem int64 // size of the filesystem under dir, at Open
	local      localLedger

	health bucketHealth
	up     uploads
	fleet  *fleet // nil unless Options.Fleet

	evictMu  sync.Mutex    // one eviction pass at a time
	evictNow chan struct{} // asks the background evictor for a pass

	// counted is closed once the usage totals are known: at Open after a
	// clean close, or when reconciliation after a crash ends. Writes,
	// eviction and verify wait for it; reads of stored content do not.
	counted      chan struct{}
	countErr     error              // why reconciliation failed; set before counted is closed
	stopCounting context.CancelFunc // cancels a reconciliation still running

	// Bucket mode: fills of the local copy from the bucket run in the
	// background under bg, one per digest (filling), a few at a time.
	bg      context.Context
	stopBg  context.CancelFunc
	bgWork  sync.WaitGroup
	filling map[v1.Hash]bool // guarded by mu
	fillers chan struct{}
	// While a rebuild counts (bucket mode), what commits and fills counted
	// themselves meanwhile, so that its totals do not count them twice;
	// nil otherwise. Guarded by mu.
	selfCounted map[v1.Hash]selfCount
}

// selfCount is what one commit or fill during a rebuild added to the counts.
type selfCount struct {
	size          int64
	bucket, local bool
}

// countedSelf notes, during a rebuild, that h was just counted by its
// commit or fill. s.mu is held.
func (s *Store) countedSelf(h v1.Hash, size int64, bucket, local bool) {
	if s.selfCounted == nil || (!bucket && !local) {
		return
	}
	c := s.selfCounted[h]
	c.size, c.bucket, c.local = size, c.bucket || bucket, c.local || local
	s.selfCounted[h] = c
}

// Open opens (creating if needed) the store under dir. Leftover temp files of
// an earlier process are removed: they were never visible, so nothing is lost.
func Open(dir string, opt Options, log *zap.Logger) (*Store, error) {
	opt.defaults()
	var fleetBudget int64
	if opt.Fleet != nil {
		if opt.Bucket == nil {
			return nil, errors.New("a fleet replica needs a bucket")
		}
		fleetBudget, opt.MaxSize = opt.MaxSize, 0 // the evictor's budget, not this store's
		opt.Shared = true
	}
	// Before anything is created: a data dir of another store is left as it is.
	rec, recorded, err := checkStoreRecord(dir, storeIDOf(opt))
	if err != nil {
		return nil, err
	}
	for _, d := range append(blobRoots(dir), tmpDir(dir), indexDir(dir)) {
		if err := os.MkdirAll(d, 0o750); err != nil {
			return nil, fmt.Errorf("create %s: %w", d, err)
		}
	}
	// badger locks its directory, so once it is open no other regmirror uses
	// this store and its temp files are ours to clean.
	db, err := openIndex(indexDir(dir), log.Named("badger"))
	if err != nil {
		return nil, err
	}
	s := &Store{
		dir: dir, opt: opt, log: log, db: db,
		access:     make(map[v1.Hash]time.Time),
		held:       make(map[v1.Hash]int),
		evictNow:   make(chan struct{}, 1),
		counted:    make(chan struct{}),
		filesystem: filesystemSize(dir),
	}
	if err := s.adoptStore(rec, recorded); err != nil {
		db.Close()
		return nil, err
	}
	s.tags, _ = lru.New[string, TagAnswer](opt.MemoryTags)
	s.manifests, _ = lru.New[v1.Hash, memManifest](opt.MemoryManifests)
	s.health.wake = make(chan struct{})
	s.up.items, s.up.kick = make(map[string]uint64), make(chan struct{}, 1)
	s.bg, s.stopBg = context.WithCancel(context.Background())
	s.filling, s.fillers = make(map[v1.Hash]bool), make(chan struct{}, 4)
	if opt.Fleet != nil {
		if s.fleet, err = newFleet(s, *opt.Fleet, fleetBudget); err != nil {
			db.Close()
			return nil, err
		}
	}
	if err := s.removeTemps(); err != nil {
		db.Close()
		return nil, err
	}
	if err := s.loadUploads(); err != nil {
		db.Close()
		return nil, fmt.Errorf("read upload markers: %w", err)
	}
	if err := s.loadTotals(); err != nil {
		db.Close()
		return nil, err
	}
	return s, nil
}

// blobRoot is where the content of digests of algorithm alg lives.
func blobRoot(dir, alg string) string { return filepath.Join(dir, "blobs", alg) }
func tmpDir(dir string) string        { return filepath.Join(dir, "tmp") }
func indexDir(dir string) string      { return filepath.Join(dir, "index") }

// blobRoots are the content trees of every algorithm, in key order.
func blobRoots(dir string) []string {
	roots := make([]string, len(algorithms))
	for i, a := range algorithms {
		roots[i] = blobRoot(dir, a.name)
	}
	return roots
}

// Dir is the store's root directory.
func (s *Store) Dir() string { return s.dir }

// path is where the verified content of h lives. Hex was validated by the
// caller's parse or by checkHash, so it cannot name anything outside the store.
func (s *Store) path(h v1.Hash) string {
	return filepath.Join(blobRoot(s.dir, h.Algorithm), h.Hex[:2], h.Hex)
}

func (s *Store) removeTemps() error {
	entries, err := os.ReadDir(tmpDir(s.dir))
	if err != nil {
		return fmt.Errorf("read temp dir: %w", err)
	}
	for _, e := range entries {
		if err := os.RemoveAll(filepath.Join(tmpDir(s.dir), e.Name())); err != nil {
			return fmt.Errorf("remove leftover temp file: %w", err)
		}
	}
	if len(entries) > 0 {
		s.log.Info("removed leftover temp files", zap.Int("count", len(entries)))
	}
	return nil
}

// Open returns the verified content of h, opened for reading, and what the
// index knows of it. The size is the file's own: a record lost in a crash
// after the rename, or damaged, costs only the media type. It returns
// ErrNotFound when h is not cached.
func (s *Store) Open(ctx context.Context, h v1.Hash) (*os.File, Info, error) {
	f, err := s.OpenFile(h)
	if err != nil {
		return nil, Info{}, err
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, Info{}, fmt.Errorf("stat blob %s: %w", h, err)
	}
	info, err := s.info(h)
	if err != nil {
		info = Info{}
	}
	info.Size = st.Size()
	return f, info, nil
}

// OpenFile returns the verified content of h without its index record: a
// blob hit needs the file alone, and skips a read transaction. It returns
// ErrNotFound when h is not cached.
func (s *Store) OpenFile(h v1.Hash) (*os.File, error) {
	if err := checkHash(h); err != nil {
		return nil, err
	}
	f, err := os.Open(s.path(h))
	if errors.Is(err, os.ErrNotExist) {
		return nil, ErrNotFound
	}
	if err != nil {
		return nil, fmt.Errorf("open blob %s: %w", h, err)
	}
	s.Touch(h)
	return f, nil
}

// unlink removes the content file of h and uncounts size (-1 when not known).
// A record means a counted object, so a file already gone (removed by hand)
// is uncounted too. The records are the caller's to forget. s.mu is held.
func (s *Store) unlink(h v1.Hash, size int64) error {
	if s.opt.Bucket != nil {
		s.dropLocal(h)
	} else if err := os.Remove(s.path(h)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove %s: %w", h, err)
	}
	s.ledger.removed(size)
	s.manifests.Remove(h)
	return nil
}

// dropLocal removes the local copy of h, in bucket mode, and uncounts it
// from the local copy's use; it reports whether there was one. s.mu is held.
func (s *Store) dropLocal(h v1.Hash) bool {
	p := s.path(h)
	st, err := os.Stat(p)
	if err != nil {
		return false
	}
	if err := os.Remove(p); err != nil {
		s.log.Warn("remove from the local copy", zap.Stringer("digest", h), zap.Error(err))
		return false
	}
	s.local.used -= st.Size()
	s.local.objects--
	return true
}

// Has reports whether h is cached, without touching its access time. It
// asks no network: with a bucket, content the index knows is there, unless
// the bucket is down (then only the local copy counts).
func (s *Store) Has(h v1.Hash) bool {
	if checkHash(h) != nil {
		return false
	}
	if _, err := os.Stat(s.path(h)); err == nil {
		return true
	}
	if s.opt.Bucket == nil || s.bucketDown() {
		return false
	}
	_, err := s.info(h)
	return err == nil
}

// Manifest returns a small stored object (a manifest) whole, from memory when
// it is hot. It refuses objects larger than max with ErrTooLarge.
func (s *Store) Manifest(ctx context.Context, h v1.Hash, max int64) ([]byte, Info, error) {
	if m, ok := s.manifests.Get(h); ok {
		if int64(len(m.body)) > max {
			return nil, Info{}, fmt.Errorf("manifest %s: %w (%d > %d bytes)", h, ErrTooLarge, len(m.body), max)
		}
		s.Touch(h)
		return m.body, m.info, nil
	}
	f, info, err := s.Open(ctx, h)
	if errors.Is(err, ErrNotFound) && s.opt.Bucket != nil {
		return s.manifestFromBucket(ctx, h, max)
	}
	if err != nil {
		return nil, Info{}, err
	}
	defer f.Close()
	if info.Size > max {
		return nil, Info{}, fmt.Errorf("manifest %s: %w (%d > %d bytes)", h, ErrTooLarge, info.Size, max)
	}
	body, err := io.ReadAll(io.LimitReader(f, max+1))
	if err != nil {
		return nil, Info{}, fmt.Errorf("read manifest %s: %w", h, err)
	}
	if int64(len(body)) > max {
		return nil, Info{}, fmt.Errorf("manifest %s: %w", h, ErrTooLarge)
	}
	info.Size = int64(len(body))
	s.remember(h, body, info)
	return body, info, nil
}

// PutManifest stores a small object that the caller holds in memory. Like
// every write it is verified against h before it becomes visible.
func (s *Store) PutManifest(h v1.Hash, body []byte, mediaType string) error {
	w, err := s.Create(h, int64(len(body)), mediaType)
	if err != nil {
		return err
	}
	w.refs = manifestRefs(body)
	if _, err := w.Write(body); err != nil {
		w.Abort()
		return err
	}
	if err := w.Commit(); err != nil {
		return err
	}
	s.remember(h, body, Info{Size: int64(len(body)), MediaType: mediaType})
	return nil
}

func (s *Store) remember(h v1.Hash, body []byte, info Info) {
	if len(body) <= s.opt.MemoryManifestMax {
		s.manifests.Add(h, memManifest{body: body, info: info})
	}
}

// Healthy reports whether the store can serve: the index is open, the
// content and temp directories are there, and reconciliation did not fail.
func (s *Store) Healthy() error {
	if s.db.IsClosed() {
		return errors.New("index closed")
	}
	select {
	case <-s.counted:
		if s.countErr != nil {
			return s.countErr
		}
	default:
	}
	// Both must be directories: every download writes in tmp/ and renames
	// into the content tree.
	for _, d := range append(blobRoots(s.dir), tmpDir(s.dir)) {
		st, err := os.Stat(d)
		if err == nil && !st.IsDir() {
			err = errors.New("not a directory")
		}
		if err != nil {
			return fmt.Errorf("store directory %s: %w", d, err)
		}
	}
	return nil
}

// Run does the store's background work until ctx ends: flushing batched
// access times, evicting past the high mark or below the free-space floor,
// and collecting badger's value log. It flushes once more on exit.
func (s *Store) Run(ctx context.Context) {
	flush := time.NewTicker(s.opt.AccessFlushInterval)
	defer flush.Stop()
	gc := time.NewTicker(s.opt.GCInterval)
	defer gc.Stop()
	check := time.NewTicker(s.opt.CheckInterval)
	defer check.Stop()
	s.kick() // the budget may have shrunk since the last run
	if s.opt.Bucket != nil {
		var work sync.WaitGroup
		defer work.Wait()
		work.Go(func() { s.upload(ctx) })
		work.Go(func() { s.probe(ctx) })
		work.Go(func() { s.sweep(ctx) })
		if s.fleet != nil {
			work.Go(func() { s.fleet.run(ctx) })
		}
	}
	for {
		select {
		case <-ctx.Done():
			s.flushAccess()
			return
		case <-flush.C:
			s.flushAccess()
		case <-gc.C:
			s.valueLogGC()
		case <-check.C:
			s.background()
		case <-s.evictNow:
			s.background()
		}
	}
}

// background is an eviction pass of the background evictor, when one is due.
func (s *Store) background() {
	if s.overHigh() {
		if _, err := s.evictFor(0); err != nil {
			s.log.Warn("evict", zap.Error(err))
		}
	}
	if s.localOverHigh() {
		if err := s.evictLocal(0); err != nil {
			s.log.Warn("evict from the local copy", zap.Error(err))
		}
	}
}

func (s *Store) valueLogGC() {
	for {
		// RunValueLogGC rewrites at most one file a call; stop when nothing is left.
		if err := s.db.RunValueLogGC(0.5); err != nil {
			if !errors.Is(err, badger.ErrNoRewrite) && !errors.Is(err, badger.ErrRejected) {
				s.log.Warn("index value-log gc", zap.Error(err))
			}
			return
		}
	}
}

// Close flushes pending access times, records the usage totals so the next
// start need not count them, and closes the index. A reconciliation still
// running is stopped, and the next start reconciles again.
func (s *Store) Close() error {
	if s.stopCounting != nil {
		s.stopCounting()
	}
	<-s.counted
	s.mu.Lock()
	s.stopBg() // under mu: fillLater adds no work once it is stopped
	s.mu.Unlock()
	s.bgWork.Wait()
	if s.fleet != nil {
		s.fleet.close() // the evictor's lease, if held without Run
	}
	s.flushAccess()
	if s.countErr == nil {
		if err := s.saveTotals(); err != nil {
			s.log.Warn("record usage totals", zap.Error(err))
		}
	}
	if err := s.db.Close(); err != nil {
		return fmt.Errorf("close index: %w", err)
	}
	return nil
}
