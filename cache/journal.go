package cache

import (
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/dgraph-io/badger/v4"
	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// Access journals. Every replica of a fleet writes what it used to the bucket
// in batches, one record per JournalInterval under
// access/<replica>/<unix nanoseconds, 20 digits>, written even when empty so
// that it doubles as the replica's heartbeat. The evictor merges them into
// its compacted table (fleet/access) and removes them.
//
// A journal, and the compacted table, is a sequence of entries: the digest
// (its algorithm's id in the store, sha256 0 or sha512 1, then its raw
// bytes), its last use (unix nanoseconds, 8 bytes big-endian), a uvarint
// count of what it refers to (a manifest's children, as the replica that used
// it knows them), and those digests in the same form. The table's entries
// carry a second time after the last use: when the evictor first saw the
// object.

const (
	journalDir    = "access/"
	accessTable   = "fleet/access"
	fleetStateKey = "fleet/state"
	evictedDir    = "evicted/"
	// maxJournal bounds one journal record; a bigger batch is split.
	maxJournal = 512 << 10
	// maxAccessTable bounds the compacted table: about 3 million objects.
	maxAccessTable = 256 << 20
)

// use is one object's entry in a journal or the compacted table.
type use struct {
	last  int64 // unix nanoseconds
	first int64 // table only: when the evictor first saw it
	refs  []raw
}

// journalKey names a journal of replica written at t; the time is padded
// so that key order is time order.
func journalKey(replica string, t time.Time) string {
	return fmt.Sprintf("%s%s/%020d", journalDir, replica, t.UnixNano())
}

// parseJournalKey is journalKey's inverse.
func parseJournalKey(key string) (replica string, t time.Time, ok bool) {
	rest, ok := strings.CutPrefix(key, journalDir)
	if !ok {
		return "", time.Time{}, false
	}
	i := strings.LastIndexByte(rest, '/')
	if i <= 0 {
		return "", time.Time{}, false
	}
	n, err := strconv.ParseInt(rest[i+1:], 10, 64)
	if err != nil {
		return "", time.Time{}, false
	}
	return rest[:i], time.Unix(0, n), true
}

// appendRaw encodes a digest: its algorithm's id, then its bytes.
func appendRaw(b []byte, r raw) []byte {
	return append(append(b, r.alg), r.bytes()...)
}

// readRaw decodes a digest appendRaw wrote, and returns the rest of b.
func readRaw(b []byte) (raw, []byte, bool) {
	if len(b) < 1 || int(b[0]) >= len(algorithms) || len(b) < 1+algorithms[b[0]].size {
		return raw{}, nil, false
	}
	r := raw{alg: b[0]}
	n := copy(r.b[:], b[1:1+algorithms[r.alg].size])
	return r, b[1+n:], true
}

// appendUse encodes one entry; withFirst for the compacted table.
func appendUse(b []byte, r raw, u use, withFirst bool) []byte {
	b = appendRaw(b, r)
	b = binary.BigEndian.AppendUint64(b, uint64(u.last))
	if withFirst {
		b = binary.BigEndian.AppendUint64(b, uint64(u.first))
	}
	b = binary.AppendUvarint(b, uint64(len(u.refs)))
	for _, c := range u.refs {
		b = appendRaw(b, c)
	}
	return b
}

var errBadJournal = errors.New("damaged access journal")

// decodeUses calls fn for every entry of a journal or table.
func decodeUses(b []byte, withFirst bool, fn func(r raw, u use)) error {
	times := 8
	if withFirst {
		times = 16
	}
	for len(b) > 0 {
		r, rest, ok := readRaw(b)
		if !ok || len(rest) < times {
			return errBadJournal
		}
		u := use{last: int64(binary.BigEndian.Uint64(rest[:8]))}
		if withFirst {
			u.first = int64(binary.BigEndian.Uint64(rest[8:16]))
		}
		b = rest[times:]
		n, k := binary.Uvarint(b)
		if k <= 0 || n > uint64(len(b)) {
			return errBadJournal
		}
		b = b[k:]
		for range n {
			c, rest, ok := readRaw(b)
			if !ok {
				return errBadJournal
			}
			u.refs = append(u.refs, c)
			b = rest
		}
		fn(r, u)
	}
	return nil
}

// journalBatches encodes the uses a replica made since its last journal,
// with what each manifest among them refers to (from its index), in
// records of at most maxJournal bytes; at least one, empty, as a heartbeat.
func (s *Store) journalBatches(pending map[v1.Hash]time.Time) ([][]byte, error) {
	hashes := make([]v1.Hash, 0, len(pending))
	for h := range pending {
		hashes = append(hashes, h)
	}
	slices.SortFunc(hashes, func(a, b v1.Hash) int { return strings.Compare(a.String(), b.String()) })
	batches := [][]byte{nil}
	err := s.db.View(func(txn *badger.Txn) error {
		for _, h := range hashes {
			r, ok := rawOf(h)
			if !ok {
				continue
			}
			u := use{last: pending[h].UnixNano()}
			for child := range algorithms {
				item, err := txn.Get(refsKey(uint8(child), h))
				if err != nil {
					continue // none by digests of this algorithm
				}
				size := algorithms[child].size
				if err := item.Value(func(v []byte) error {
					for ; len(v) >= size; v = v[size:] {
						c := raw{alg: uint8(child)}
						copy(c.b[:], v[:size])
						u.refs = append(u.refs, c)
					}
					return nil
				}); err != nil {
					return err
				}
			}
			last := &batches[len(batches)-1]
			if len(*last) > maxJournal {
				batches = append(batches, nil)
				last = &batches[len(batches)-1]
			}
			*last = appendUse(*last, r, u, false)
		}
		return nil
	})
	return batches, err
}
