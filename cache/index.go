package cache

import (
	"cmp"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/dgraph-io/badger/v4"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"go.uber.org/zap"
)

// Index keys. Every key is built here, with a typed prefix:
//
//	b/sha256:<hex>                     blob record (size, media type)
//	a/sha256:<hex>                     last access, unix nanoseconds
//	t/<registry>/<repository>:<tag>    tag answer
//
// A tag cannot contain ':' or '/', so the last ':' ends the repository.
func blobKey(h v1.Hash) []byte   { return []byte("b/" + h.String()) }
func accessKey(h v1.Hash) []byte { return []byte("a/" + h.String()) }
func tagKey(registry, repo, tag string) []byte {
	return []byte("t/" + registry + "/" + repo + ":" + tag)
}
func tagPrefix(registry, repo string) []byte { return []byte("t/" + registry + "/" + repo + ":") }

// record is a blob record as stored in the index.
type record struct {
	Size      int64  `json:"size"`
	MediaType string `json:"media_type,omitempty"`
}

// TagAnswer is what the upstream said a tag pointed to, and when.
type TagAnswer struct {
	Digest    v1.Hash   `json:"digest"`
	MediaType string    `json:"media_type"`
	Size      int64     `json:"size"`
	LearnedAt time.Time `json:"learned_at"`
}

func openIndex(dir string, log *zap.Logger) (*badger.DB, error) {
	// Small tables and caches: the index holds short records, and a mirror's
	// memory should go to serving, not to a database sized for a server farm.
	opts := badger.DefaultOptions(dir).
		WithLogger(badgerLogger{log.Sugar()}).
		WithMemTableSize(8 << 20).
		WithNumMemtables(2).
		WithNumLevelZeroTables(2).
		WithNumLevelZeroTablesStall(8).
		WithValueLogFileSize(32 << 20).
		WithBlockCacheSize(8 << 20).
		WithIndexCacheSize(8 << 20).
		WithNumCompactors(2).
		WithDetectConflicts(false)
	db, err := badger.Open(opts)
	if err != nil {
		return nil, fmt.Errorf("open index %s: %w", dir, err)
	}
	return db, nil
}

func (s *Store) info(h v1.Hash) (Info, error) {
	var rec record
	if err := s.getJSON(blobKey(h), &rec); err != nil {
		return Info{}, fmt.Errorf("read record of %s: %w", h, err)
	}
	return Info(rec), nil
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

func (s *Store) putRecord(h v1.Hash, info Info) error {
	v, err := json.Marshal(record(info))
	if err != nil {
		return err
	}
	return s.db.Update(func(txn *badger.Txn) error { return txn.Set(blobKey(h), v) })
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
	if err := s.getJSON(key, &a); err != nil {
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
	if err := s.db.Update(func(txn *badger.Txn) error { return txn.Set(key, v) }); err != nil {
		return fmt.Errorf("write tag %s/%s:%s: %w", registry, repo, tag, err)
	}
	s.tags.Add(string(key), a)
	return nil
}

// DeleteTag forgets the answer for repo:tag (the upstream no longer has it).
func (s *Store) DeleteTag(registry, repo, tag string) error {
	key := tagKey(registry, repo, tag)
	s.tags.Remove(string(key))
	if err := s.db.Update(func(txn *badger.Txn) error { return txn.Delete(key) }); err != nil {
		return fmt.Errorf("delete tag %s/%s:%s: %w", registry, repo, tag, err)
	}
	return nil
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
		it := txn.NewIterator(badger.IteratorOptions{Prefix: []byte("t/")})
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			key := strings.TrimPrefix(string(it.Item().Key()), "t/")
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
