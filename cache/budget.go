package cache

import (
	"errors"
	"fmt"
	"syscall"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"go.uber.org/zap"
)

// ErrNoSpace means the store cannot keep this content: it is larger than the
// budget, or room could not be made for it (everything else is in use or
// pinned, or the filesystem is full). The caller serves it without storing.
var ErrNoSpace = errors.New("no room in the cache")

// Usage is the store's use against its budget. In bucket mode Bytes, Objects
// and Budget are the bucket's (content committed, uploaded or waiting to be),
// and the Local fields are the local copy's.
type Usage struct {
	Bytes        int64 // bytes of content stored (blobs and manifests)
	Objects      int64 // content objects stored
	Budget       int64 // the byte budget; 0 means no limit
	Evictions    int64 // objects evicted since start
	EvictedBytes int64 // their bytes
	Streamed     int64 // blobs served without being stored (too large, or disk full), since start
	Counting     bool  // reconciliation after a crash is still counting Bytes and Objects
	MinFree      int64 // the free-space floor; 0 means none
	Filesystem   int64 // the size of the filesystem under the store at Open; 0 if unknown

	InBucket     bool  // the store keeps its content in a bucket (Options.Bucket)
	LocalBytes   int64 // bucket mode: bytes of the local copy
	LocalObjects int64 // bucket mode: files of the local copy
	LocalBudget  int64 // bucket mode: the local copy's budget; 0 means no limit
	Pending      int64 // bucket mode: content files and records waiting to be uploaded
}

// FloorAboveFilesystem reports whether the free-space floor is at least the
// whole filesystem: then nothing can ever be stored, and every blob is
// streamed through.
func (u Usage) FloorAboveFilesystem() bool {
	return u.MinFree > 0 && u.Filesystem > 0 && u.MinFree >= u.Filesystem
}

// ledger is the budget's accounting, and its only writer: committed bytes
// and objects, bytes promised to writers in progress, and what eviction and
// refusals did since start. The store's mu guards it, so that a rename into
// place or a removal and its count change together; every method is called
// with mu held.
type ledger struct {
	used         int64 // bytes of committed content
	objects      int64 // committed content files
	reserved     int64 // bytes promised to writers in progress
	evictions    int64
	evictedBytes int64
	streamed     int64 // content refused and served without storing
}

// counted sets the committed totals, as saved at a clean close or recounted.
func (l *ledger) counted(bytes, objects int64) { l.used, l.objects = bytes, objects }

// pending is committed plus promised bytes: what the budget is measured by.
func (l *ledger) pending() int64 { return l.used + l.reserved }

func (l *ledger) reserve(n int64) { l.reserved += n }
func (l *ledger) release(n int64) { l.reserved -= n }

// committed moves a writer's reservation into the committed totals; a
// digest already stored (added false) is counted once.
func (l *ledger) committed(reserved, size int64, added bool) {
	l.reserved -= reserved
	if added {
		l.used += size
		l.objects++
	}
}

// removed uncounts a content file of size bytes; -1 (no record of its size)
// uncounts nothing.
func (l *ledger) removed(size int64) {
	if size >= 0 {
		l.used -= size
		l.objects--
	}
}

// evicted counts a removal by eviction, besides removed.
func (l *ledger) evicted(size int64) {
	l.evictions++
	l.evictedBytes += size
}

func (l *ledger) refused() { l.streamed++ }

// Usage returns the store's disk use. While reconciliation after a crash is
// counting, Bytes and Objects are zero and Counting is true.
func (s *Store) Usage() Usage {
	s.mu.Lock()
	defer s.mu.Unlock()
	return Usage{
		Bytes:        s.ledger.used,
		Objects:      s.ledger.objects,
		Budget:       s.budget(),
		Evictions:    s.ledger.evictions,
		EvictedBytes: s.ledger.evictedBytes,
		Streamed:     s.ledger.streamed,
		Counting:     !isClosed(s.counted),
		MinFree:      s.opt.MinFree,
		Filesystem:   s.filesystem,
		InBucket:     s.opt.Bucket != nil,
		LocalBytes:   s.local.used,
		LocalObjects: s.local.objects,
		LocalBudget:  s.opt.LocalMaxSize,
		Pending:      s.up.len(), // s.mu before s.up.mu, never the other way
	}
}

func isClosed(c chan struct{}) bool {
	select {
	case <-c:
		return true
	default:
		return false
	}
}

// Hold marks h as in use until release is called: eviction leaves it alone.
// A blob being served or downloaded is held for as long as that lasts.
func (s *Store) Hold(h v1.Hash) (release func()) {
	s.mu.Lock()
	s.held[h]++
	s.mu.Unlock()
	return func() {
		s.mu.Lock()
		if s.held[h]--; s.held[h] <= 0 {
			delete(s.held, h)
		}
		s.mu.Unlock()
	}
}

// highWater and lowWater are the byte marks of the budget: past the high one
// the store evicts in the background down to the low one.
func (s *Store) highWater() int64 { return int64(float64(s.opt.MaxSize) * s.opt.HighWater) }
func (s *Store) lowWater() int64  { return int64(float64(s.opt.MaxSize) * s.opt.LowWater) }

// reserve promises size bytes to a writer before it writes any, making room
// first when the budget or the free-space floor would be crossed. So the
// budget is hard: committed plus reserved bytes never exceed it. Room is made
// only when evicting can make it: content that would not fit even with every
// evictable object gone is refused with nothing evicted, so one blob too
// large for the disk cannot empty the cache. A writer of unknown size (-1)
// reserves nothing and is counted when it commits.
func (s *Store) reserve(h v1.Hash, size int64) error {
	if s.opt.Bucket != nil {
		if b := s.Bucket(); b.Down {
			return s.refuse(fmt.Errorf("%w: the bucket is down (%s)", ErrNoSpace, b.Reason))
		}
		if err := s.localRoom(h, max(size, 0)); err != nil {
			return err
		}
	}
	if size < 0 {
		return nil
	}
	if s.opt.MaxSize > 0 && size > s.opt.MaxSize {
		return s.refuse(fmt.Errorf("%w: %s is %d bytes, larger than the whole budget of %d", ErrNoSpace, h, size, s.opt.MaxSize))
	}
	for attempt := 0; ; attempt++ {
		s.mu.Lock()
		over, short := s.shortfall(size)
		if over <= 0 && short <= 0 {
			s.ledger.reserve(size)
			s.mu.Unlock()
			return nil
		}
		s.mu.Unlock()
		if attempt == 1 {
			return s.refuse(fmt.Errorf("%w: %s needs %d bytes: %d over the budget, %d short of the free-space floor after eviction",
				ErrNoSpace, h, size, max(over, 0), max(short, 0)))
		}
		_, err := s.makeRoom(size)
		if errors.Is(err, errNoRoom) {
			return s.refuse(fmt.Errorf("%w: %s: %w", ErrNoSpace, h, err))
		}
		if err != nil {
			s.log.Warn("evict to make room", zap.Error(err))
		}
	}
}

// shortfall says by how many bytes storing size more would cross the budget
// and the free-space floor. s.mu is held.
func (s *Store) shortfall(size int64) (overBudget, belowFloor int64) {
	overBudget = -1
	if s.opt.MaxSize > 0 {
		overBudget = s.ledger.pending() + size - s.opt.MaxSize
	}
	belowFloor = -1
	if s.opt.MinFree > 0 && s.opt.Bucket == nil { // with a bucket, the floor is the local copy's
		if free, err := s.free(); err == nil {
			// Reserved bytes are not all written yet: count them as gone.
			belowFloor = s.opt.MinFree - (free - s.ledger.reserved - size)
		}
	}
	return overBudget, belowFloor
}

// filesystemSize is the size of the filesystem under dir, 0 if statfs fails.
func filesystemSize(dir string) int64 {
	var st syscall.Statfs_t
	if syscall.Statfs(dir, &st) != nil {
		return 0
	}
	return int64(st.Blocks) * int64(st.Bsize)
}

// free is what the filesystem under the store has available to us.
func (s *Store) free() (int64, error) {
	if s.opt.FreeSpace != nil {
		return s.opt.FreeSpace()
	}
	var st syscall.Statfs_t
	if err := syscall.Statfs(s.dir, &st); err != nil {
		return 0, fmt.Errorf("statfs %s: %w", s.dir, err)
	}
	return int64(st.Bavail) * int64(st.Bsize), nil
}

func (s *Store) refuse(err error) error {
	s.mu.Lock()
	s.ledger.refused()
	s.mu.Unlock()
	return err
}

func (s *Store) unreserve(size int64) {
	if size <= 0 {
		return
	}
	s.mu.Lock()
	s.ledger.release(size)
	s.mu.Unlock()
}

// overHigh reports whether the store should evict in the background.
func (s *Store) overHigh() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.opt.MaxSize > 0 && s.ledger.pending() > s.highWater() {
		return true
	}
	if s.opt.MinFree > 0 && s.opt.Bucket == nil {
		if free, err := s.free(); err == nil && free < s.opt.MinFree {
			return true
		}
	}
	return false
}

// kick asks the background evictor for a pass, without waiting.
func (s *Store) kick() {
	select {
	case s.evictNow <- struct{}{}:
	default:
	}
}

// The local copy's budget, in bucket mode: LocalMaxSize and the free-space
// floor, with the same marks as the bucket's. Only content already in the
// bucket may leave it: a file waiting for its upload stays.

func (s *Store) localHigh() int64 { return int64(float64(s.opt.LocalMaxSize) * s.opt.HighWater) }
func (s *Store) localLow() int64  { return int64(float64(s.opt.LocalMaxSize) * s.opt.LowWater) }

// localShortfall says by how many bytes size more in the local copy would
// cross its budget or the floor (<= 0: it fits). s.mu is held.
func (s *Store) localShortfall(size int64) int64 {
	short := int64(-1)
	if s.opt.LocalMaxSize > 0 {
		short = s.local.used + s.ledger.reserved + size - s.opt.LocalMaxSize
	}
	if s.opt.MinFree > 0 {
		if free, err := s.free(); err == nil {
			short = max(short, s.opt.MinFree-(free-s.ledger.reserved-size))
		}
	}
	return short
}

// localRoom makes room in the local copy for size more bytes, or refuses.
func (s *Store) localRoom(h v1.Hash, size int64) error {
	for attempt := 0; ; attempt++ {
		s.mu.Lock()
		short := s.localShortfall(size)
		s.mu.Unlock()
		if short <= 0 {
			return nil
		}
		if attempt == 1 {
			return s.refuse(fmt.Errorf("%w: %s needs %d bytes in the local copy: %d short after evicting what is already in the bucket",
				ErrNoSpace, h, size, short))
		}
		if err := s.evictLocal(size); err != nil {
			s.log.Warn("evict from the local copy to make room", zap.Error(err))
		}
	}
}

// localOverHigh reports whether the local copy should shrink in the background.
func (s *Store) localOverHigh() bool {
	if s.opt.Bucket == nil {
		return false
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.opt.LocalMaxSize > 0 && s.local.used+s.ledger.reserved > s.localHigh() {
		return true
	}
	if s.opt.MinFree > 0 {
		if free, err := s.free(); err == nil && free < s.opt.MinFree {
			return true
		}
	}
	return false
}
