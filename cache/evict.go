package cache

import (
	"bytes"
	"cmp"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/dgraph-io/badger/v4"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"go.uber.org/zap"
)

// Eviction is image-aware LRU. A pass reads the index into a compact table
// of every stored object (size, last access, whether it is a manifest) and
// the manifest → child edges, then gives each object an effective last use:
// the latest of its own use and the uses of every manifest that refers to it,
// directly or through an index. A manifest also takes the latest use of
// anything under it, since a pull reads the manifest before its layers; so
// an image's manifest is the last of it to go, and never leaves its layers
// behind without it. Pinned images and their children are never candidates.
// Candidates go in order of effective last use, blobs before manifests on a
// tie, until the goal is met. So a layer shared by a hot image and a cold one
// lives as long as the hot one.

// object is one stored object as an eviction pass sees it.
type object struct {
	hex      [32]byte // the digest's first 32 bytes: all of a sha256 one (see table)
	size     int64
	last     int64 // effective last use, unix nanoseconds
	manifest bool  // it refers to other objects
	pinned   bool
	alg      uint8 // id of its digest's algorithm
	absent   int32 // objects it refers to that are not stored
}

// table is the eviction pass's view of the index. The objects are in key
// order: by algorithm, then digest. An object holds 32 bytes of its digest,
// all of a sha256 one, so the common table costs what a sha256-only one did
// (56 bytes an object); the second halves of sha512 digests, the only longer
// ones and the last algorithm, are in tails, for the sha512 objects alone.
type table struct {
	objs  []object                   // sorted by algorithm, then digest
	heads []uint64                   // the first 8 bytes of each object's digest: a dense index for find
	tails [][32]byte                 // the second halves of the sha512 digests: objs[len(objs)-len(tails):]'s
	first [len(algorithms) + 1]int32 // where each algorithm's objects start in objs
	edges [][2]int32                 // parent, child indexes into objs
}

func (t *table) add(r *raw, size int64) {
	t.objs = append(t.objs, object{hex: r.head(), size: size, alg: r.alg})
	t.heads = append(t.heads, binary.BigEndian.Uint64(r.b[:8]))
	if algorithms[r.alg].size > 32 {
		t.tails = append(t.tails, r.tail())
	}
	for a := int(r.alg) + 1; a < len(t.first); a++ {
		t.first[a] = int32(len(t.objs))
	}
}

// tail is the second half of object i's digest; only sha512 objects have one.
func (t *table) tail(i int) *[32]byte { return &t.tails[i-(len(t.objs)-len(t.tails))] }

// hash is object i's digest.
func (t *table) hash(i int) v1.Hash {
	o := &t.objs[i]
	r := raw{alg: o.alg}
	copy(r.b[:32], o.hex[:])
	if algorithms[o.alg].size > 32 {
		copy(r.b[32:], t.tail(i)[:])
	}
	return r.hash()
}

// compare orders object i against digest r as their keys are ordered.
func (t *table) compare(i int, r *raw) int {
	o := &t.objs[i]
	if o.alg != r.alg {
		return int(o.alg) - int(r.alg)
	}
	if c := bytes.Compare(o.hex[:], r.b[:32]); c != 0 || algorithms[o.alg].size <= 32 {
		return c
	}
	return bytes.Compare(t.tail(i)[:], r.b[32:])
}

// find returns the index of r in objs, or -1. It searches the heads of r's
// algorithm, which fit in a CPU cache far better than the objects.
func (t *table) find(r *raw) int {
	lo, hi := int(t.first[r.alg]), int(t.first[r.alg+1])
	head := binary.BigEndian.Uint64(r.b[:8])
	i, _ := slices.BinarySearch(t.heads[lo:hi], head)
	for i += lo; i < hi && t.heads[i] == head; i++ {
		if t.compare(i, r) == 0 {
			return i
		}
	}
	return -1
}

// loadTable reads every blob record, access time, reference list and pin.
// Key order is table order, so the table is built sorted and the access
// times are merged in one walk.
func (s *Store) loadTable() (*table, error) {
	s.flushAccess()
	s.mu.Lock()
	n := s.ledger.objects + s.ledger.objects/16 + 16 // room for what lands during the scan
	s.mu.Unlock()
	t := &table{objs: make([]object, 0, n), heads: make([]uint64, 0, n)}
	err := s.db.View(func(txn *badger.Txn) error {
		if err := scan(txn, prefixBlob, func(k, v []byte) error {
			r, ok := keyRaw(k)
			if !ok {
				return nil
			}
			size, err := recordSize(v)
			if err != nil {
				return fmt.Errorf("blob record %s: %w", k, err)
			}
			t.add(&r, size)
			return nil
		}); err != nil {
			return err
		}
		i := 0
		if err := scan(txn, prefixAccess, func(k, v []byte) error {
			r, ok := keyRaw(k)
			if !ok || len(v) != 8 {
				return nil
			}
			for i < len(t.objs) && t.compare(i, &r) < 0 {
				i++
			}
			if i < len(t.objs) && t.compare(i, &r) == 0 {
				t.objs[i].last = int64(binary.BigEndian.Uint64(v))
			}
			return nil
		}); err != nil {
			return err
		}
		for a := range algorithms {
			if err := t.loadRefs(txn, uint8(a)); err != nil {
				return err
			}
		}
		return scan(txn, prefixPin, func(_, v []byte) error {
			var pin Pin
			if json.Unmarshal(v, &pin) != nil {
				return nil
			}
			for _, h := range append(pin.Also, pin.Digest) {
				if r, ok := rawOf(h); ok {
					if i := t.find(&r); i >= 0 {
						t.objs[i].pinned = true
					}
				}
			}
			return nil
		})
	})
	if err != nil {
		return nil, fmt.Errorf("read index for eviction: %w", err)
	}
	t.propagate()
	return t, nil
}

// loadRefs adds the edges from every manifest to its children by digests of
// algorithm child.
func (t *table) loadRefs(txn *badger.Txn, child uint8) error {
	size := algorithms[child].size
	c := raw{alg: child}
	return scan(txn, algorithms[child].refs, func(k, v []byte) error {
		parent, ok := keyRaw(k)
		if !ok {
			return nil
		}
		p := t.find(&parent)
		if p < 0 {
			return nil
		}
		t.objs[p].manifest = true
		for ; len(v) >= size; v = v[size:] {
			copy(c.b[:], v[:size])
			if i := t.find(&c); i >= 0 {
				t.edges = append(t.edges, [2]int32{int32(p), int32(i)})
			} else {
				t.objs[p].absent++
			}
		}
		return nil
	})
}

// propagate gives every object its effective last use and pin. Up first,
// from each object's own use: a manifest takes the latest use of anything
// under it. Then down: each object takes the latest use and the pin of every
// manifest above it, an index → its manifests → their blobs. Only the own
// uses go up, so a layer that a hot image shares does not make a cold
// image's other layers hot through their manifest.
func (t *table) propagate() {
	if len(t.edges) == 0 {
		return
	}
	up := make([]int64, len(t.objs))
	for i := range t.objs {
		up[i] = t.objs[i].last
	}
	for range 8 {
		changed := false
		for _, e := range t.edges {
			if up[e[1]] > up[e[0]] {
				up[e[0]], changed = up[e[1]], true
			}
		}
		if !changed {
			break
		}
	}
	for range 8 {
		changed := false
		for _, e := range t.edges {
			p, c := &t.objs[e[0]], &t.objs[e[1]]
			if p.last > c.last {
				c.last, changed = p.last, true
			}
			if p.pinned && !c.pinned {
				c.pinned, changed = true, true
			}
		}
		if !changed {
			break
		}
	}
	for i := range t.objs {
		if o := &t.objs[i]; o.manifest && up[i] > o.last {
			o.last = up[i]
		}
	}
}

// victims lists the objects eviction may take, as indexes into objs, in the
// order it takes them.
func (t *table) victims() []int32 {
	out := make([]int32, 0, len(t.objs))
	for i, o := range t.objs {
		if !o.pinned {
			out = append(out, int32(i))
		}
	}
	slices.SortFunc(out, func(i, j int32) int {
		a, b := &t.objs[i], &t.objs[j]
		if c := cmp.Compare(a.last, b.last); c != 0 {
			return c
		}
		if a.manifest != b.manifest {
			if a.manifest {
				return 1
			}
			return -1
		}
		return cmp.Compare(i, j) // digest order
	})
	return out
}

// evictable is the bytes of victims not held: what a pass could evict.
func (t *table) evictable(victims []int32, held map[v1.Hash]int) int64 {
	var n int64
	for _, v := range victims {
		n += t.objs[v].size
	}
	for h := range held { // few: the blobs being served or downloaded
		if r, ok := rawOf(h); ok {
			if i := t.find(&r); i >= 0 && !t.objs[i].pinned {
				n -= t.objs[i].size
			}
		}
	}
	return n
}

// Evicted is what an eviction pass removed.
type Evicted struct {
	Objects int64
	Bytes   int64
}

// evictGoal says, with s.mu held, whether a pass has done enough.
type evictGoal func() bool

// errNoRoom means evicting everything that may go would still not make
// room for a writer: the pass evicted nothing.
var errNoRoom = errors.New("not even evicting every unpinned object not in use would make room; nothing evicted")

// evictFor makes room for size more bytes: down to the low mark of the
// budget, and back above the free-space floor. When size is more than the low
// mark allows, the pass takes everything it may; the caller checks the fit.
func (s *Store) evictFor(size int64) (Evicted, error) {
	return s.evict(s.roomGoal(size), nil)
}

// makeRoom is evictFor for a writer of size bytes, which gains nothing from
// a pass that cannot make it fit: then it evicts nothing and returns
// errNoRoom.
func (s *Store) makeRoom(size int64) (Evicted, error) {
	return s.evict(s.roomGoal(size), func(evictable int64) error {
		// Removing a file frees at least its size on the filesystems we
		// know (blocks round up), so free space grows by evictable too.
		over, short := s.shortfall(size)
		if need := max(over, short); need > evictable {
			return fmt.Errorf("%w: %d bytes short, %d evictable", errNoRoom, need, evictable)
		}
		return nil
	})
}

func (s *Store) roomGoal(size int64) evictGoal {
	return func() bool {
		if s.opt.MaxSize > 0 && s.ledger.pending()+size > s.lowWater() {
			return false
		}
		// With a bucket the floor is the local copy's (evictLocal).
		return s.opt.MinFree <= 0 || s.opt.Bucket != nil || s.freeAbove(size)
	}
}

// freeAbove reports whether the filesystem keeps the floor after size more
// bytes. s.mu is held.
func (s *Store) freeAbove(size int64) bool {
	free, err := s.free()
	return err != nil || free-s.ledger.reserved-size >= s.opt.MinFree
}

// evict removes least recently used objects until goal holds or nothing more
// may go. Passes run one at a time; held and pinned objects are skipped.
// feasible, when not nil, is told (with s.mu held) how many bytes the pass
// could evict at most, before it evicts any; an error from it ends the pass.
func (s *Store) evict(goal evictGoal, feasible func(evictable int64) error) (Evicted, error) {
	if s.opt.Bucket != nil && !isClosed(s.counted) {
		// Rebuilding from the bucket: a writer is not kept waiting for the
		// listing, and nothing is evicted by a count still being made.
		return Evicted{}, errCounting
	}
	if err := s.AwaitCounts(context.Background()); err != nil {
		return Evicted{}, fmt.Errorf("evict: %w", err)
	}
	s.evictMu.Lock()
	defer s.evictMu.Unlock()
	var done Evicted
	s.mu.Lock()
	met := goal()
	s.mu.Unlock()
	if met {
		return done, nil
	}
	start := time.Now()
	t, err := s.loadTable()
	if err != nil {
		return done, err
	}
	victims := t.victims()
	if feasible != nil {
		s.mu.Lock()
		err := feasible(t.evictable(victims, s.held))
		s.mu.Unlock()
		if err != nil {
			return done, err
		}
	}
	wb := s.db.NewWriteBatch()
	defer wb.Cancel()
	for _, v := range victims {
		o := &t.objs[v]
		h := t.hash(int(v))
		s.mu.Lock()
		if goal() {
			s.mu.Unlock()
			break
		}
		if s.held[h] > 0 {
			s.mu.Unlock()
			continue
		}
		if s.opt.Bucket != nil {
			// The bucket first, without the lock: a network call. The
			// object is marked held meanwhile, so nothing else removes it.
			s.held[h]++
			s.mu.Unlock()
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			err := s.noted(s.opt.Bucket.Delete(ctx, h))
			cancel()
			s.mu.Lock()
			if s.held[h]--; s.held[h] <= 0 {
				delete(s.held, h)
			}
			if err != nil {
				s.mu.Unlock()
				if unusable(err) {
					break // the pass ends; the next one tries again
				}
				s.log.Warn("evict from the bucket", zap.Stringer("digest", h), zap.Error(err))
				continue
			}
			s.up.forget(h.String()) // evicted before its upload: nothing to upload
			if err := wb.Delete(uploadKey(h.String())); err != nil {
				s.mu.Unlock()
				return done, fmt.Errorf("forget evicted %s: %w", h, err)
			}
		}
		err := s.unlink(h, o.size)
		if err == nil {
			s.ledger.evicted(o.size)
		}
		s.mu.Unlock()
		if err != nil {
			s.log.Warn("evict", zap.Stringer("digest", h), zap.Error(err))
			continue
		}
		done.Objects++
		done.Bytes += o.size
		for _, k := range objectKeys(h) {
			if err := wb.Delete(k); err != nil {
				return done, fmt.Errorf("forget evicted %s: %w", h, err)
			}
		}
	}
	if err := wb.Flush(); err != nil {
		return done, fmt.Errorf("forget evicted objects: %w", err)
	}
	if done.Objects > 0 {
		u := s.Usage()
		s.log.Info("evicted", zap.Int64("objects", done.Objects), zap.Int64("bytes", done.Bytes),
			zap.Int64("used", u.Bytes), zap.Int64("budget", u.Budget), zap.Int("considered", len(t.objs)),
			zap.Duration("took", time.Since(start)))
	}
	return done, nil
}

// errCounting means an eviction pass was asked for while the index is
// being rebuilt from the bucket.
var errCounting = errors.New("the index is being rebuilt from the bucket; nothing evicted yet")

// GC evicts down to the low mark of the budget and back above the
// free-space floor now, as the background evictor would; with a bucket, the
// local copy down to the low mark of its own budget too.
func (s *Store) GC() (Evicted, error) {
	ev, err := s.evictFor(0)
	if err == nil && s.opt.Bucket != nil {
		err = s.evictLocal(0)
	}
	return ev, err
}

// evictLocal removes files of the local copy, least recently used first in
// the same image-aware order, until it is back under the low mark of its
// budget and above the free-space floor with size bytes more. Only content
// already in the bucket goes (never a file waiting for its upload), and
// pinned and held content stays; nothing leaves the bucket or the index.
func (s *Store) evictLocal(size int64) error {
	goal := func() bool {
		if s.opt.LocalMaxSize > 0 && s.local.used+s.ledger.reserved+size > s.localLow() {
			return false
		}
		return s.opt.MinFree <= 0 || s.freeAbove(size)
	}
	if !isClosed(s.counted) {
		return errCounting // the rebuild's walk counts the local copy: nothing leaves it meanwhile
	}
	s.evictMu.Lock()
	defer s.evictMu.Unlock()
	s.mu.Lock()
	met := goal()
	s.mu.Unlock()
	if met {
		return nil
	}
	t, err := s.loadTable()
	if err != nil {
		return err
	}
	var n, bytes int64
	for _, v := range t.victims() {
		o := &t.objs[v]
		h := t.hash(int(v))
		if s.up.has(h.String()) {
			continue
		}
		s.mu.Lock()
		if goal() {
			s.mu.Unlock()
			break
		}
		removed := false
		if s.held[h] == 0 {
			removed = s.dropLocal(h)
		}
		s.mu.Unlock()
		if removed {
			n++
			bytes += o.size
		}
	}
	if n > 0 {
		s.mu.Lock()
		used := s.local.used
		s.mu.Unlock()
		s.log.Info("evicted from the local copy", zap.Int64("files", n), zap.Int64("bytes", bytes),
			zap.Int64("local_used", used), zap.Int64("local_budget", s.opt.LocalMaxSize))
	}
	return nil
}
