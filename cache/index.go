package cache

import (
	"cmp"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"slices"
	"strings"
	"time"

	"github.com/dgraph-io/badger/v4"
	"github.com/dgraph-io/badger/v4/options"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"go.uber.org/zap"
)

// Index keys. Every key is built here, with a typed prefix:
//
//	b/<alg>:<hex>                      blob record (size, media type)
//	a/<alg>:<hex>                      last access, unix nanoseconds
//	r/<alg>:<hex>                      what a manifest refers to by sha256: raw 32-byte digests
//	r512/<alg>:<hex>                   what a manifest refers to by sha512: raw 64-byte digests
//	t/<registry>/<repository>:<tag>    tag answer
//	p/<registry>/<repository>:<ref>    pin (the ref is a tag or a digest)
//	u/<alg>:<hex>                      bucket mode: content committed locally, not yet in the bucket
//	u/t/…, u/p/…                       bucket mode: a tag answer or pin not yet written to (or removed from) the bucket
//	m/clean                            usage totals, present only after a clean close
//
// <alg> is sha256 or sha512 (algorithms). A manifest's children by either
// algorithm have a key of their own, so the sha256 list keeps its format.
// A tag cannot contain ':' or '/', so the last ':' ends the repository.
const (
	prefixBlob    = "b/"
	prefixAccess  = "a/"
	prefixRefs    = "r/"
	prefixRefs512 = "r512/"
	prefixTag     = "t/"
	prefixPin     = "p/"
	prefixUpload  = "u/"
)

var keyClean = []byte("m/clean")

func blobKey(h v1.Hash) []byte   { return []byte(prefixBlob + h.String()) }
func accessKey(h v1.Hash) []byte { return []byte(prefixAccess + h.String()) }

// refsKey is where the children of manifest h by digests of algorithm child are.
func refsKey(child uint8, h v1.Hash) []byte { return []byte(algorithms[child].refs + h.String()) }

// objectKeys are every key an object has, so forgetting it forgets them all.
func objectKeys(h v1.Hash) [][]byte {
	keys := [][]byte{blobKey(h), accessKey(h)}
	for a := range algorithms {
		keys = append(keys, refsKey(uint8(a), h))
	}
	return keys
}

// uploadKey marks item (a digest's string, or a tag or pin key) as waiting
// for the bucket.
func uploadKey(item string) []byte { return []byte(prefixUpload + item) }

func tagKey(registry, repo, tag string) []byte {
	return []byte(prefixTag + registry + "/" + repo + ":" + tag)
}
func tagPrefix(registry, repo string) []byte { return []byte(prefixTag + registry + "/" + repo + ":") }
func pinKey(registry, repo, ref string) []byte {
	return []byte(prefixPin + registry + "/" + repo + ":" + ref)
}

// scan calls fn with the key (without prefix) and value of every item under
// prefix, in key order. Both are only valid during the call. Every value of
// this index is small and lives in badger's LSM tree, so values are not
// prefetched: badger would start a goroutine per item to fetch them.
func scan(txn *badger.Txn, prefix string, fn func(key, val []byte) error) error {
	it := txn.NewIterator(badger.IteratorOptions{Prefix: []byte(prefix)})
	defer it.Close()
	for it.Rewind(); it.Valid(); it.Next() {
		item := it.Item()
		k := item.Key()[len(prefix):]
		if err := item.Value(func(v []byte) error { return fn(k, v) }); err != nil {
			return err
		}
	}
	return nil
}

// encodeRefs stores a manifest's children compactly, by algorithm: their raw
// digests, concatenated.
func encodeRefs(refs []v1.Hash) (out [len(algorithms)][]byte) {
	for _, h := range refs {
		if r, ok := rawOf(h); ok {
			out[r.alg] = append(out[r.alg], r.bytes()...)
		}
	}
	return out
}

// A blob record is read for every stored object by each eviction pass and
// reconciliation, so it is a few bytes, not JSON: a format byte, the size as
// a uvarint, then the media type. Stores written before it hold JSON
// ({"size":…,"media_type":…}), which still decodes.
const recordBinary = 1

func encodeRecord(info Info) []byte {
	v := binary.AppendUvarint([]byte{recordBinary}, uint64(max(info.Size, 0)))
	return append(v, info.MediaType...)
}

// decodeRecord reads a blob record in either format.
func decodeRecord(v []byte) (Info, error) {
	if len(v) > 0 && v[0] == recordBinary {
		size, n := binary.Uvarint(v[1:])
		if n <= 0 || size > math.MaxInt64 {
			return Info{}, errors.New("blob record: bad size")
		}
		return Info{Size: int64(size), MediaType: string(v[1+n:])}, nil
	}
	var rec struct {
		Size      int64  `json:"size"`
		MediaType string `json:"media_type"`
	}
	if err := json.Unmarshal(v, &rec); err != nil {
		return Info{}, fmt.Errorf("blob record: %w", err)
	}
	if rec.Size < 0 {
		return Info{}, errors.New("blob record: negative size")
	}
	return Info(rec), nil
}

// recordSize is decodeRecord's size alone, without allocating for the
// binary format.
func recordSize(v []byte) (int64, error) {
	if len(v) > 0 && v[0] == recordBinary {
		size, n := binary.Uvarint(v[1:])
		if n <= 0 || size > math.MaxInt64 {
			return 0, errors.New("blob record: bad size")
		}
		return int64(size), nil
	}
	info, err := decodeRecord(v)
	return info.Size, err
}

// TagAnswer is what the upstream said a tag pointed to, and when.
type TagAnswer struct {
	Digest    v1.Hash   `json:"digest"`
	MediaType string    `json:"media_type"`
	Size      int64     `json:"size"`
	LearnedAt time.Time `json:"learned_at"`
}

// IndexOptions are the badger options of the store's index under dir, for
// tools that build an index the store will open (bench/scale).
func IndexOptions(dir string) badger.Options {
	// Small tables and caches: the index holds short records, and a mirror's
	// memory should go to serving, not to a database sized for a server farm.
	return badger.DefaultOptions(dir).
		WithMemTableSize(8 << 20).
		WithNumMemtables(2).
		WithNumLevelZeroTables(2).
		WithNumLevelZeroTablesStall(8).
		WithValueLogFileSize(32 << 20).
		WithCompression(options.None).
		WithBlockCacheSize(0).
		WithIndexCacheSize(8 << 20).
		WithNumCompactors(2).
		WithDetectConflicts(false)
}

func openIndex(dir string, log *zap.Logger) (*badger.DB, error) {
	db, err := badger.Open(IndexOptions(dir).WithLogger(badgerLogger{log.Sugar()}))
	if err != nil {
		return nil, fmt.Errorf("open index %s: %w", dir, err)
	}
	return db, nil
}

func (s *Store) info(h v1.Hash) (Info, error) {
	var info Info
	err := s.db.View(func(txn *badger.Txn) error {
		item, err := txn.Get(blobKey(h))
		if err != nil {
			return err
		}
		return item.Value(func(v []byte) (err error) {
			info, err = decodeRecord(v)
			return err
		})
	})
	if errors.Is(err, badger.ErrKeyNotFound) {
		err = ErrNotFound
	}
	if err != nil {
		return Info{}, fmt.Errorf("read record of %s: %w", h, err)
	}
	return info, nil
}

// getJSON decodes the value at key into v; a missing key is ErrNotFound.
func (s *Store) getJSON(key []byte, v any) error {
	err := s.db.View(func(txn *badger.Txn) error {
		item, err := txn.Get(key)
		if err != nil {
			return err
		}
		return item.Value(func(b []byte) error { return json.Unmarshal(b, v) })
	})
	if errors.Is(err, badger.ErrKeyNotFound) {
		return ErrNotFound
	}
	return err
}

// putRecord writes a blob record and, for a manifest, what it refers to.
func (s *Store) putRecord(h v1.Hash, info Info, refs []v1.Hash) error {
	return s.db.Update(func(txn *badger.Txn) error {
		for a, children := range encodeRefs(refs) {
			if len(children) > 0 {
				if err := txn.Set(refsKey(uint8(a), h), children); err != nil {
					return err
				}
			}
		}
		return txn.Set(blobKey(h), encodeRecord(info))
	})
}

// Touch records that h was used now. The time is kept in memory and written
// to the index in batches by Run, so a hit costs no disk write.
func (s *Store) Touch(h v1.Hash) {
	now := s.opt.Now()
	s.accessMu.Lock()
	s.access[h] = now
	s.accessMu.Unlock()
}

func (s *Store) flushAccess() {
	s.accessMu.Lock()
	pending := s.access
	s.access = make(map[v1.Hash]time.Time, len(pending))
	s.accessMu.Unlock()
	if len(pending) == 0 {
		return
	}
	if s.fleet != nil {
		s.fleet.noteUses(pending)
	}
	wb := s.db.NewWriteBatch()
	defer wb.Cancel()
	for h, t := range pending {
		if err := wb.Set(accessKey(h), binary.BigEndian.AppendUint64(nil, uint64(t.UnixNano()))); err != nil {
			s.log.Warn("record access times", zap.Error(err))
			return
		}
	}
	if err := wb.Flush(); err != nil {
		s.log.Warn("record access times", zap.Error(err))
	}
}

// LastAccess is when h was last used, including uses not yet flushed.
func (s *Store) LastAccess(h v1.Hash) (time.Time, error) {
	s.accessMu.Lock()
	t, ok := s.access[h]
	s.accessMu.Unlock()
	if ok {
		return t, nil
	}
	var nanos uint64
	err := s.db.View(func(txn *badger.Txn) error {
		item, err := txn.Get(accessKey(h))
		if err != nil {
			return err
		}
		return item.Value(func(v []byte) error {
			if len(v) != 8 {
				return fmt.Errorf("access record of %s has %d bytes", h, len(v))
			}
			nanos = binary.BigEndian.Uint64(v)
			return nil
		})
	})
	if errors.Is(err, badger.ErrKeyNotFound) {
		return time.Time{}, ErrNotFound
	}
	if err != nil {
		return time.Time{}, fmt.Errorf("read access time of %s: %w", h, err)
	}
	return time.Unix(0, int64(nanos)), nil
}

// Tag returns the last answer the upstream registry gave for repo:tag, from
// memory when it is hot. It returns ErrNotFound when no answer is known.
func (s *Store) Tag(registry, repo, tag string) (TagAnswer, error) {
	key := tagKey(registry, repo, tag)
	if a, ok := s.tags.Get(string(key)); ok {
		return a, nil
	}
	var a TagAnswer
	err := s.getJSON(key, &a)
	if (err != nil && !errors.Is(err, ErrNotFound) && !s.db.IsClosed()) || (err == nil && checkHash(a.Digest) != nil) {
		// A damaged record is no answer: upstream is asked again, and its
		// answer replaces the record, instead of failing this tag forever.
		s.log.Warn("damaged tag record ignored", zap.String("tag", registry+"/"+repo+":"+tag), zap.NamedError("decode", err))
		err = ErrNotFound
	}
	if errors.Is(err, ErrNotFound) {
		a, err = s.tagFromBucket(key)
	}
	if err != nil {
		return TagAnswer{}, fmt.Errorf("read tag %s/%s:%s: %w", registry, repo, tag, err)
	}
	s.tags.Add(string(key), a)
	return a, nil
}

// SetTag records the upstream's answer for repo:tag.
func (s *Store) SetTag(registry, repo, tag string, a TagAnswer) error {
	key := tagKey(registry, repo, tag)
	v, err := json.Marshal(a)
	if err != nil {
		return err
	}
	if err := s.db.Update(func(txn *badger.Txn) error { return s.setRecord(txn, key, v) }); err != nil {
		return fmt.Errorf("write tag %s/%s:%s: %w", registry, repo, tag, err)
	}
	s.tags.Add(string(key), a)
	s.recordChanged(key)
	return nil
}

// DeleteTag forgets the answer for repo:tag (the upstream no longer has it).
func (s *Store) DeleteTag(registry, repo, tag string) error {
	key := tagKey(registry, repo, tag)
	s.tags.Remove(string(key))
	if err := s.db.Update(func(txn *badger.Txn) error { return s.setRecord(txn, key, nil) }); err != nil {
		return fmt.Errorf("delete tag %s/%s:%s: %w", registry, repo, tag, err)
	}
	s.recordChanged(key)
	return nil
}

// setRecord writes (v not nil) or deletes a tag answer or pin and, with a
// bucket, marks it for upload in the same transaction.
func (s *Store) setRecord(txn *badger.Txn, key, v []byte) error {
	if s.opt.Bucket != nil {
		if err := txn.Set(uploadKey(string(key)), nil); err != nil {
			return err
		}
	}
	if v == nil {
		return txn.Delete(key)
	}
	return txn.Set(key, v)
}

// recordChanged queues a tag answer or pin written by setRecord for the bucket.
func (s *Store) recordChanged(key []byte) {
	if s.opt.Bucket != nil {
		s.up.add(string(key))
	}
}

// Tags lists the tags of repo that the index has answers for, in order.
func (s *Store) Tags(registry, repo string) ([]string, error) {
	prefix := tagPrefix(registry, repo)
	var tags []string
	err := s.db.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: prefix})
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			tag := strings.TrimPrefix(string(it.Item().Key()), string(prefix))
			if !strings.ContainsAny(tag, "/:") {
				tags = append(tags, tag)
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list tags of %s/%s: %w", registry, repo, err)
	}
	return tags, nil
}

// Repository is a repository the index holds tag answers for.
type Repository struct {
	Registry string
	Name     string
}

// Repositories lists every repository with a tag answer, sorted by registry
// and name. It reads keys only.
func (s *Store) Repositories() ([]Repository, error) {
	seen := map[Repository]bool{}
	err := s.db.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: []byte(prefixTag)})
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			key := strings.TrimPrefix(string(it.Item().Key()), prefixTag)
			registry, rest, ok := strings.Cut(key, "/")
			i := strings.LastIndexByte(rest, ':')
			if ok && i > 0 {
				seen[Repository{Registry: registry, Name: rest[:i]}] = true
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list repositories: %w", err)
	}
	out := make([]Repository, 0, len(seen))
	for r := range seen {
		out = append(out, r)
	}
	slices.SortFunc(out, func(a, b Repository) int {
		return cmp.Or(cmp.Compare(a.Registry, b.Registry), cmp.Compare(a.Name, b.Name))
	})
	return out, nil
}

// badgerLogger routes badger's chatter into zap; its Info is our Debug.
type badgerLogger struct{ s *zap.SugaredLogger }

func (l badgerLogger) Errorf(f string, a ...any)   { l.s.Errorf(strings.TrimSpace(f), a...) }
func (l badgerLogger) Warningf(f string, a ...any) { l.s.Warnf(strings.TrimSpace(f), a...) }
func (l badgerLogger) Infof(f string, a ...any)    { l.s.Debugf(strings.TrimSpace(f), a...) }
func (l badgerLogger) Debugf(string, ...any)       {} // per-write chatter, useless even at debug
