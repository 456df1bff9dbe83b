package cache

import (
	"cmp"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
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
// directly or through an index. Pinned images and their children are never
// candidates. Candidates go in order of effective last use, blobs before the
// manifests that name them, until the goal is met. So a layer shared by a hot
// image and a cold one lives as long as the hot one, and an image's manifest
// outlives its layers only as long as nothing better could be evicted.

// object is one stored object as an eviction pass sees it.
type object struct {
	hex      [32]byte
	size     int64
	last     int64 // effective last use, unix nanoseconds
	manifest bool  // it refers to other objects
	pinned   bool
	absent   int32 // objects it refers to that are not stored
}

// table is the eviction pass's view of the index.
type table struct {
	objs  []object   // sorted by hex
	edges [][2]int32 // parent, child indexes into objs
}

func (t *table) find(raw [32]byte) int {
	i, ok := slices.BinarySearchFunc(t.objs, raw, func(o object, raw [32]byte) int {
		return slices.Compare(o.hex[:], raw[:])
	})
	if !ok {
		return -1
	}
	return i
}

// hashHex turns "sha256:<hex>" (a key suffix) into raw bytes.
func hashHex(s string) ([32]byte, bool) {
	var raw [32]byte
	const p = "sha256:"
	if len(s) != len(p)+64 || s[:len(p)] != p {
		return raw, false
	}
	_, err := hex.Decode(raw[:], []byte(s[len(p):]))
	return raw, err == nil
}

func rawHash(raw [32]byte) v1.Hash {
	return v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(raw[:])}
}

// loadTable reads every blob record, access time, reference list and pin.
// Key order is digest order, so the table is built sorted and the access
// times are merged in one walk.
func (s *Store) loadTable() (*table, error) {
	s.flushAccess()
	t := &table{}
	err := s.db.View(func(txn *badger.Txn) error {
		if err := scan(txn, prefixBlob, func(k string, v []byte) error {
			raw, ok := hashHex(k)
			if !ok {
				return nil
			}
			var rec record
			if err := json.Unmarshal(v, &rec); err != nil {
				return fmt.Errorf("blob record %s: %w", k, err)
			}
			t.objs = append(t.objs, object{hex: raw, size: rec.Size})
			return nil
		}); err != nil {
			return err
		}
		i := 0
		if err := scan(txn, prefixAccess, func(k string, v []byte) error {
			raw, ok := hashHex(k)
			if !ok || len(v) != 8 {
				return nil
			}
			for i < len(t.objs) && slices.Compare(t.objs[i].hex[:], raw[:]) < 0 {
				i++
			}
			if i < len(t.objs) && t.objs[i].hex == raw {
				t.objs[i].last = int64(binary.BigEndian.Uint64(v))
			}
			return nil
		}); err != nil {
			return err
		}
		if err := scan(txn, prefixRefs, func(k string, v []byte) error {
			raw, ok := hashHex(k)
			if !ok {
				return nil
			}
			p := t.find(raw)
			if p < 0 {
				return nil
			}
			t.objs[p].manifest = true
			for _, child := range decodeRefs(v) {
				if c := t.find(child); c >= 0 {
					t.edges = append(t.edges, [2]int32{int32(p), int32(c)})
				} else {
					t.objs[p].absent++
				}
			}
			return nil
		}); err != nil {
			return err
		}
		return scan(txn, prefixPin, func(k string, v []byte) error {
			var pin Pin
			if json.Unmarshal(v, &pin) != nil {
				return nil
			}
			if raw, ok := hashHex(pin.Digest.String()); ok {
				if i := t.find(raw); i >= 0 {
					t.objs[i].pinned = true
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

// propagate hands each manifest's last use and pin down to its children,
// until nothing changes: an index → its manifests → their blobs.
func (t *table) propagate() {
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
			return
		}
	}
}

// victims lists the objects eviction may take, in the order it takes them.
func (t *table) victims() []object {
	var out []object
	for _, o := range t.objs {
		if !o.pinned {
			out = append(out, o)
		}
	}
	slices.SortFunc(out, func(a, b object) int {
		if c := cmp.Compare(a.last, b.last); c != 0 {
			return c
		}
		if a.manifest != b.manifest {
			if a.manifest {
				return 1
			}
			return -1
		}
		return slices.Compare(a.hex[:], b.hex[:])
	})
	return out
}

// Evicted is what an eviction pass removed.
type Evicted struct {
	Objects int64
	Bytes   int64
}

// evictGoal says, with s.mu held, whether a pass has done enough.
type evictGoal func() bool

// evictFor makes room for size more bytes: down to the low mark of the
// budget, and back above the free-space floor. When size is more than the low
// mark allows, the pass takes everything it may; the caller checks the fit.
func (s *Store) evictFor(size int64) (Evicted, error) {
	return s.evict(func() bool {
		if s.opt.MaxSize > 0 && s.used+s.reserved+size > s.lowWater() {
			return false
		}
		return s.opt.MinFree <= 0 || s.freeAbove(size)
	})
}

// freeAbove reports whether the filesystem keeps the floor after size more
// bytes. s.mu is held.
func (s *Store) freeAbove(size int64) bool {
	free, err := s.free()
	return err != nil || free-s.reserved-size >= s.opt.MinFree
}

// evict removes least recently used objects until goal holds or nothing more
// may go. Passes run one at a time; held and pinned objects are skipped.
func (s *Store) evict(goal evictGoal) (Evicted, error) {
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
	wb := s.db.NewWriteBatch()
	defer wb.Cancel()
	for _, o := range t.victims() {
		h := rawHash(o.hex)
		s.mu.Lock()
		if goal() {
			s.mu.Unlock()
			break
		}
		if s.held[h] > 0 {
			s.mu.Unlock()
			continue
		}
		err := os.Remove(s.path(h))
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			s.mu.Unlock()
			s.log.Warn("evict", zap.Stringer("digest", h), zap.Error(err))
			continue
		}
		s.used -= o.size
		s.objects--
		s.evictions++
		s.evictedBytes += o.size
		s.mu.Unlock()
		s.manifests.Remove(h)
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

// GC evicts down to the low mark of the budget and back above the
// free-space floor now, as the background evictor would.
func (s *Store) GC() (Evicted, error) {
	return s.evictFor(0)
}
