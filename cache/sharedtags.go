package cache

import (
	"context"
	"encoding/json"
	"errors"
	"time"

	"github.com/dgraph-io/badger/v4"
	"go.uber.org/zap"
)

// Shared tags. In a fleet the tag answers in the bucket (tags/<registry>/
// <repo>:<tag>, JSON of TagAnswer) are the fleet's: a replica whose own answer
// is missing or past its TTL reads the bucket's first. If another replica
// learned or revalidated the tag within the TTL, that answer is used and
// upstream is not asked. Otherwise the replica claims the revalidation (the
// record rewritten with a claim, If-Match on the ETag it read): the one whose
// claim lands asks upstream and writes the answer back (If-Match on its
// claim's ETag); the others, finding a fresh claim, serve the answer they have
// meanwhile. So N replicas cost one upstream HEAD per TTL for a tag, and a
// concurrent write loses harmlessly: the newest answer (by LearnedAt) stays.

// revalidationClaim is how long a claim to revalidate a tag holds off the
// other replicas: past it, the claimant is taken to have died.
const revalidationClaim = 30 * time.Second

// tagRecord is a tag answer as the bucket keeps it: the answer, and a claim
// while a replica revalidates it. Readers that want the answer alone
// (TagAnswer) ignore the claim.
type tagRecord struct {
	TagAnswer
	RevalidatingBy    string    `json:"revalidating_by,omitempty"`
	RevalidatingUntil time.Time `json:"revalidating_until,omitzero"`
}

// TagTurn says what a replica does about a tag after ShareTag.
type TagTurn int

const (
	// AskUpstream: nobody revalidated it within the TTL (or this store is
	// not in a fleet): this replica asks upstream and records the answer.
	AskUpstream TagTurn = iota
	// UseShared: the answer returned is fresh, learned or revalidated by a
	// replica within the TTL; upstream is not asked.
	UseShared
	// UseWhileRevalidated: another replica is revalidating the tag now; the
	// answer returned is the last one, to serve meanwhile.
	UseWhileRevalidated
)

// ShareTag is, for a replica of a fleet whose own answer for a tag is
// missing or older than ttl, the fleet's answer: see TagTurn. Outside a
// fleet, with ttl 0, or when the bucket cannot be asked, it is AskUpstream.
func (s *Store) ShareTag(ctx context.Context, registry, repo, tag string, ttl time.Duration) (TagAnswer, TagTurn) {
	f := s.fleet
	if f == nil || ttl <= 0 || s.bucketDown() {
		return TagAnswer{}, AskUpstream
	}
	key := tagKey(registry, repo, tag)
	bkey, _ := bucketRecordKey(string(key))
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	for range 3 {
		body, etag, err := f.objs.GetRecordVersion(ctx, bkey)
		if errors.Is(s.noted(err), ErrNotFound) {
			f.tagVersion(bkey, "", true)
			return TagAnswer{}, AskUpstream // nobody knows it: a cold tag
		}
		var rec tagRecord
		if err == nil && (json.Unmarshal(body, &rec) != nil || checkHash(rec.Digest) != nil) {
			err = errors.New("damaged tag record in the bucket")
		}
		if err != nil {
			if ctx.Err() == nil {
				s.log.Debug("read shared tag", zap.String("key", bkey), zap.Error(err))
			}
			return TagAnswer{}, AskUpstream
		}
		f.tagVersion(bkey, etag, true)
		now := s.opt.Now()
		if now.Sub(rec.LearnedAt) < ttl {
			s.adoptTag(key, rec.TagAnswer)
			f.count(&f.sharedFresh)
			return rec.TagAnswer, UseShared
		}
		if rec.RevalidatingBy != "" && rec.RevalidatingBy != f.id && now.Before(rec.RevalidatingUntil) {
			f.count(&f.sharedClaimed)
			return rec.TagAnswer, UseWhileRevalidated
		}
		claim := rec
		claim.RevalidatingBy, claim.RevalidatingUntil = f.id, now.Add(revalidationClaim)
		cbody, _ := json.Marshal(claim)
		netag, err := f.objs.PutRecordIf(ctx, bkey, cbody, etag)
		if err == nil {
			f.tagVersion(bkey, netag, true)
			return TagAnswer{}, AskUpstream
		}
		if !errors.Is(err, ErrRecordChanged) {
			s.noted(err)
			return TagAnswer{}, AskUpstream
		}
		// Another replica claimed or answered first: read what it wrote.
	}
	return TagAnswer{}, AskUpstream
}

// adoptTag keeps another replica's answer as this replica's own, without
// writing it back to the bucket.
func (s *Store) adoptTag(key []byte, a TagAnswer) {
	v, err := json.Marshal(a)
	if err != nil {
		return
	}
	if err := s.db.Update(func(txn *badger.Txn) error { return txn.Set(key, v) }); err != nil {
		s.log.Warn("keep a shared tag answer", zap.ByteString("key", key), zap.Error(err))
		return
	}
	s.tags.Add(string(key), a)
}

// putSharedTag writes this replica's answer for a tag to the bucket, unless
// the bucket holds a newer one (then that one is adopted): conditional on the
// version last seen, so of two replicas writing at once one loses, reads the
// winner's answer, and keeps whichever is newer.
func (s *Store) putSharedTag(ctx context.Context, key, bkey string, body []byte) error {
	f := s.fleet
	var mine TagAnswer
	if err := json.Unmarshal(body, &mine); err != nil {
		return f.objs.PutRecord(ctx, bkey, body) // not ours to judge
	}
	for range 4 {
		etag, known := f.tagVersion(bkey, "", false)
		if !known {
			theirs, tag, err := f.objs.GetRecordVersion(ctx, bkey)
			switch {
			case errors.Is(err, ErrNotFound):
				etag = ""
			case err != nil:
				return err
			default:
				etag = tag
				var rec tagRecord
				if json.Unmarshal(theirs, &rec) == nil && checkHash(rec.Digest) == nil && rec.LearnedAt.After(mine.LearnedAt) {
					s.adoptTag([]byte(key), rec.TagAnswer)
					f.tagVersion(bkey, etag, true)
					return nil
				}
			}
		}
		netag, err := f.objs.PutRecordIf(ctx, bkey, body, etag)
		if err == nil {
			f.tagVersion(bkey, netag, true)
			return nil
		}
		f.forgetTagVersion(bkey)
		if !errors.Is(err, ErrRecordChanged) {
			return err
		}
	}
	return ErrRecordChanged // contended: the uploader tries again later
}
