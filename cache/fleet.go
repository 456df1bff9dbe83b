package cache

import (
	"cmp"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"regexp"
	"slices"
	"strings"
	"sync"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	lru "github.com/hashicorp/golang-lru/v2"
	"go.uber.org/zap"
)

// A fleet is several replicas of regmirror on one bucket (Options.Fleet).
// Besides what one store on a bucket does, each replica
//   - reads the bucket's answer for a tag before asking upstream, and shares
//     revalidation (cache/sharedtags.go);
//   - writes what it used to the bucket in batches (cache/journal.go);
//   - leaves the bucket's budget to one evictor at a time, the replica that
//     holds the lease "evictor": it merges the journals into a compacted
//     table, runs the image-aware LRU of evict.go over the bucket's listing
//     with it, never evicts what any replica used within Grace, keeps what
//     the pins in the bucket name, and publishes what it evicted
//     (evicted/<time>) and a summary (fleet/state), and removes the leases
//     left stale by holders that died;
//   - drops from its index and local copy what the evictor evicted.
// The store's own bucket eviction is off: only the evictor deletes content.

// FleetOptions make a store one replica of a fleet.
type FleetOptions struct {
	// Replica is this replica's name, unique in the fleet (a pod's name).
	Replica string
	// Interval is how often the replica writes its journal, looks at the
	// fleet, and (when it is the evictor) runs a pass. 0 means a minute.
	Interval time.Duration
	// Grace is how long after any replica used an object it is kept,
	// whatever the budget. 0 means an hour; it is at least 3 Intervals, as a
	// use reaches the evictor up to an Interval late.
	Grace time.Duration
}

func (o *FleetOptions) defaults() {
	if o.Interval <= 0 {
		o.Interval = time.Minute
	}
	if o.Grace <= 0 {
		o.Grace = time.Hour
	}
	o.Grace = max(o.Grace, 3*o.Interval)
}

// replicaName is what a replica may be called: a key component in the bucket.
var replicaName = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$`)

// CheckReplicaName says why name cannot name a replica, or nil.
func CheckReplicaName(name string) error {
	if !replicaName.MatchString(name) {
		return fmt.Errorf("replica name %q: want letters, digits, '.', '_' or '-', at most 63, starting with a letter or digit", name)
	}
	return nil
}

// holderName is the replica's name in a lease holder's or claimant's ID.
func holderName(id string) string { name, _, _ := strings.Cut(id, "/"); return name }

// fleet is a replica's part in the fleet.
type fleet struct {
	s    *Store
	opt  FleetOptions
	id   string // Replica/<nonce>: this process, in claims and the evictor's lease
	objs SharedObjects
	// budget is the bucket's (Options.MaxSize), the evictor's to keep.
	budget int64

	versions *lru.Cache[string, string] // a tag record's ETag, as last seen

	ticking sync.Mutex // one tick at a time

	mu      sync.Mutex
	pending map[v1.Hash]time.Time // uses not yet journaled
	view    FleetState
	notices map[string]bool // eviction notices already applied

	// The evictor's, while this replica holds the lease.
	lease *Lease
	table map[raw]use // the compacted access table, as last written
	seen  map[string]time.Time

	sharedFresh, sharedClaimed int64 // guarded by mu
	passes                     int64 // evictor passes run here
}

// FleetState is a replica's view of its fleet, as of its last look.
type FleetState struct {
	Replica       string        // this replica
	Evictor       string        // the replica holding the evictor's lease; "" if none
	EvictorHere   bool          // it is this one
	Viewed        time.Time     // when this replica last looked
	Interval      time.Duration // of journals and passes
	Grace         time.Duration
	Budget        int64 // the bucket's
	BucketBytes   int64 // content in the bucket at the evictor's last pass
	BucketObjects int64
	LastPass      time.Time // the evictor's last pass; zero before the first
	Evicted       int64     // objects the fleet's evictors evicted, all told
	EvictedBytes  int64
	JournalsSeen  int           // journals waiting in the bucket at the last look
	Replicas      []ReplicaSeen // replicas that wrote a journal, latest first
	SharedAnswers int64         // tag answers taken from the bucket instead of upstream, since start
	SharedWaits   int64         // stale answers served while another replica revalidated, since start
}

// ReplicaSeen is a replica of the fleet and when it last wrote its journal.
type ReplicaSeen struct {
	Name     string
	LastSeen time.Time
}

// Recent reports whether the replica wrote a journal within three intervals.
func (r ReplicaSeen) Recent(now time.Time, interval time.Duration) bool {
	return now.Sub(r.LastSeen) < 3*interval
}

// fleetSummary is fleet/state: what the evictor's last pass found.
type fleetSummary struct {
	Evictor      string               `json:"evictor"`
	At           time.Time            `json:"at"`
	Bytes        int64                `json:"bytes"`
	Objects      int64                `json:"objects"`
	Budget       int64                `json:"budget"`
	Evicted      int64                `json:"evicted"`
	EvictedBytes int64                `json:"evicted_bytes"`
	Replicas     map[string]time.Time `json:"replicas"`
}

func newFleet(s *Store, opt FleetOptions, budget int64) (*fleet, error) {
	objs, ok := s.opt.Bucket.(SharedObjects)
	if !ok {
		return nil, errors.New("a fleet needs an object store with conditional writes and leases (S3)")
	}
	if opt.Replica == "" {
		return nil, errors.New("a fleet replica needs a name")
	}
	if err := CheckReplicaName(opt.Replica); err != nil {
		return nil, err
	}
	opt.defaults()
	var nonce [6]byte
	rand.Read(nonce[:])
	f := &fleet{s: s, opt: opt, id: opt.Replica + "/" + hex.EncodeToString(nonce[:]), objs: objs, budget: budget, pending: map[v1.Hash]time.Time{}, notices: map[string]bool{}}
	f.versions, _ = lru.New[string, string](s.opt.MemoryTags)
	f.view = FleetState{Replica: opt.Replica, Interval: opt.Interval, Grace: opt.Grace, Budget: budget}
	return f, nil
}

// tagVersion remembers (set) or recalls a tag record's version; etag ""
// with known true means there is no record.
func (f *fleet) tagVersion(bkey, etag string, set bool) (string, bool) {
	if set {
		f.versions.Add(bkey, etag)
		return etag, true
	}
	return f.versions.Get(bkey)
}

func (f *fleet) forgetTagVersion(bkey string) { f.versions.Remove(bkey) }

func (f *fleet) count(n *int64) {
	f.mu.Lock()
	*n++
	f.mu.Unlock()
}

// noteUses takes the uses flushAccess wrote to the index, for the journal.
func (f *fleet) noteUses(uses map[v1.Hash]time.Time) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for h, t := range uses {
		if t.After(f.pending[h]) {
			f.pending[h] = t
		}
	}
}

// Fleet is this replica's view of its fleet; ok false outside a fleet.
func (s *Store) Fleet() (FleetState, bool) {
	if s.fleet == nil {
		return FleetState{}, false
	}
	f := s.fleet
	f.mu.Lock()
	defer f.mu.Unlock()
	v := f.view
	v.Replicas = slices.Clone(v.Replicas)
	v.SharedAnswers, v.SharedWaits = f.sharedFresh, f.sharedClaimed
	return v, true
}

// run does the replica's fleet work every Interval until ctx ends, then
// writes its last journal and gives up the evictor's lease.
func (f *fleet) run(ctx context.Context) {
	t := time.NewTicker(f.opt.Interval)
	defer t.Stop()
	for {
		f.tick(ctx)
		select {
		case <-ctx.Done():
			end, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
			f.writeJournal(end)
			f.resign(end)
			cancel()
			return
		case <-t.C:
		}
	}
}

// tick is one round: journal, eviction notices, the evictor's lease and
// pass, the view.
func (f *fleet) tick(ctx context.Context) {
	f.ticking.Lock()
	defer f.ticking.Unlock()
	s := f.s
	if s.bucketDown() {
		return
	}
	if err := f.writeJournal(ctx); err != nil && ctx.Err() == nil {
		s.log.Warn("write access journal", zap.Error(err))
	}
	if err := f.applyNotices(ctx); err != nil && ctx.Err() == nil {
		s.log.Warn("read eviction notices", zap.Error(err))
	}
	evictor := f.campaign(ctx)
	if f.leading() && isClosed(s.counted) {
		if err := f.pass(ctx); err != nil && ctx.Err() == nil {
			s.log.Warn("fleet eviction pass", zap.Error(err))
		}
	}
	if err := f.look(ctx, evictor); err != nil && ctx.Err() == nil {
		s.log.Warn("look at the fleet", zap.Error(err))
	}
}

// writeJournal writes the uses since the last journal (a heartbeat when
// there are none). On failure they are kept for the next one.
func (f *fleet) writeJournal(ctx context.Context) error {
	s := f.s
	s.flushAccess()
	f.mu.Lock()
	pending := f.pending
	f.pending = map[v1.Hash]time.Time{}
	f.mu.Unlock()
	batches, err := s.journalBatches(pending)
	if err == nil {
		now := s.opt.Now()
		for i, b := range batches {
			if err = s.noted(f.objs.PutRecord(ctx, journalKey(f.opt.Replica, now.Add(time.Duration(i))), b)); err != nil {
				break
			}
		}
	}
	if err != nil {
		f.noteUses(pending) // a batch written twice is merged twice: harmless
	}
	return err
}

// evictorLease is the name of the lease the evictor holds.
const evictorLease = "evictor"

// campaign keeps or tries to take the evictor's lease; it returns who holds it.
func (f *fleet) campaign(ctx context.Context) string {
	f.mu.Lock()
	l := f.lease
	f.mu.Unlock()
	if l != nil {
		select {
		case <-l.Lost():
			f.mu.Lock()
			f.lease, f.table, f.seen = nil, nil, nil
			f.mu.Unlock()
		default:
			return f.id
		}
	}
	ttl := max(MinLeaseTTL, 3*f.opt.Interval)
	l, holder, err := f.objs.AcquireLease(ctx, evictorLease, LeaseHolder{ID: f.id, TTL: ttl})
	switch {
	case err == nil:
		f.s.log.Info("this replica runs the fleet's evictor", zap.String("replica", f.opt.Replica))
		f.mu.Lock()
		f.lease = l
		f.mu.Unlock()
		return f.id
	case errors.Is(err, ErrLeaseHeld):
		return holder.ID
	default:
		f.s.noted(err)
		if ctx.Err() == nil {
			f.s.log.Warn("evictor lease", zap.Error(err))
		}
		return ""
	}
}

func (f *fleet) leading() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.lease == nil {
		return false
	}
	select {
	case <-f.lease.Lost():
		return false
	default:
		return true
	}
}

// resign gives the evictor's lease up, so another replica takes over at once.
func (f *fleet) resign(ctx context.Context) {
	f.mu.Lock()
	l := f.lease
	f.lease = nil
	f.mu.Unlock()
	if l != nil {
		if err := l.Release(ctx); err != nil {
			f.s.log.Warn("release the evictor's lease", zap.Error(err))
		}
	}
}

// close gives the evictor's lease up at Close (Run gives it up as it ends).
func (f *fleet) close() {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	f.resign(ctx)
}

// look refreshes the view: the journals waiting, the evictor's summary.
func (f *fleet) look(ctx context.Context, evictor string) error {
	latest := map[string]time.Time{}
	journals := 0
	err := f.objs.ListRecords(ctx, journalDir, func(key string) error {
		if r, t, ok := parseJournalKey(key); ok {
			journals++
			latest[r] = maxTime(latest[r], t)
		}
		return nil
	})
	if f.s.noted(err) != nil {
		return err
	}
	var sum fleetSummary
	body, err := f.objs.GetRecord(ctx, fleetStateKey)
	if err == nil {
		if err := json.Unmarshal(body, &sum); err != nil {
			f.s.log.Warn("damaged fleet summary ignored", zap.Error(err))
		}
	} else if !errors.Is(f.s.noted(err), ErrNotFound) {
		return err
	}
	for r, t := range sum.Replicas {
		latest[r] = maxTime(latest[r], t)
	}
	replicas := make([]ReplicaSeen, 0, len(latest))
	for r, t := range latest {
		replicas = append(replicas, ReplicaSeen{Name: r, LastSeen: t})
	}
	slices.SortFunc(replicas, func(a, b ReplicaSeen) int {
		return cmp.Or(b.LastSeen.Compare(a.LastSeen), cmp.Compare(a.Name, b.Name))
	})
	f.mu.Lock()
	defer f.mu.Unlock()
	v := &f.view
	v.Evictor, v.EvictorHere, v.Viewed = holderName(evictor), evictor == f.id, f.s.opt.Now()
	v.BucketBytes, v.BucketObjects, v.LastPass = sum.Bytes, sum.Objects, sum.At
	v.Evicted, v.EvictedBytes = sum.Evicted, sum.EvictedBytes
	v.JournalsSeen, v.Replicas = journals, replicas
	return nil
}

func maxTime(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}

// pass is one run of the evictor: merge the journals into the compacted
// table, match it with the bucket's listing and pins, evict past the high
// mark down to the low mark what no replica used within Grace, write the
// table back, then remove the journals it merged, publish what it evicted,
// remove stale leases and write a summary.
func (f *fleet) pass(ctx context.Context) error {
	s := f.s
	start := time.Now()
	now := s.opt.Now()
	var sum fleetSummary
	if body, err := f.objs.GetRecord(ctx, fleetStateKey); err == nil {
		json.Unmarshal(body, &sum) // a damaged one starts the totals afresh
	} else if !errors.Is(s.noted(err), ErrNotFound) {
		return err
	}
	if sum.Replicas == nil {
		sum.Replicas = map[string]time.Time{}
	}
	if f.table == nil {
		loaded, err := f.loadTable(ctx)
		if err != nil {
			return err
		}
		f.table = loaded
	}
	uses := f.table

	var journals []string
	if err := s.noted(f.objs.ListRecords(ctx, journalDir, func(key string) error {
		journals = append(journals, key)
		return nil
	})); err != nil {
		return err
	}
	for _, key := range journals {
		body, err := f.objs.GetRecord(ctx, key)
		if errors.Is(err, ErrNotFound) {
			continue
		}
		if s.noted(err) != nil {
			return err
		}
		if r, t, ok := parseJournalKey(key); ok {
			sum.Replicas[r] = maxTime(sum.Replicas[r], t)
		}
		if err := decodeUses(body, false, func(r raw, u use) {
			e := uses[r]
			e.last = max(e.last, u.last)
			if len(u.refs) > 0 {
				e.refs = u.refs
			}
			uses[r] = e
		}); err != nil {
			s.log.Warn("damaged access journal skipped", zap.String("key", key), zap.Error(err))
		}
	}
	for r, t := range sum.Replicas {
		if now.Sub(t) > 24*time.Hour {
			delete(sum.Replicas, r) // gone for a day: no longer of the fleet
		}
	}

	// The listing is the truth of what is stored; in digest order, as the
	// eviction table wants it.
	t := &table{}
	var bytes int64
	present := map[raw]bool{}
	if err := s.noted(s.opt.Bucket.List(ctx, func(h v1.Hash, size int64) error {
		r, _ := rawOf(h)
		t.add(&r, size)
		present[r] = true
		bytes += size
		return nil
	})); err != nil {
		return err
	}
	for r := range uses {
		if !present[r] {
			delete(uses, r)
		}
	}
	pins, err := f.pinnedRoots(ctx)
	if err != nil {
		return err
	}
	for _, r := range pins {
		if present[r] {
			f.learnRefs(ctx, uses, r, 2)
		}
	}
	for i := range t.objs {
		o := &t.objs[i]
		key, _ := rawOf(t.hash(i))
		e, ok := uses[key]
		if !ok || e.first == 0 {
			e.first = now.UnixNano() // new to the evictor: kept for a grace period at least
			uses[key] = e
		}
		o.last = e.last
		if o.last == 0 {
			o.last = e.first // no use journaled yet: as if used when first seen
		}
		for _, r := range e.refs {
			o.manifest = true
			if c := t.find(&r); c >= 0 {
				t.edges = append(t.edges, [2]int32{int32(i), int32(c)})
			} else {
				o.absent++
			}
		}
	}
	for _, r := range pins {
		if i := t.find(&r); i >= 0 {
			t.objs[i].pinned = true
		}
	}
	t.propagate()

	var evicted []v1.Hash
	var evictedBytes int64
	budget := f.budget
	high, low := int64(float64(budget)*s.opt.HighWater), int64(float64(budget)*s.opt.LowWater)
	if budget > 0 && bytes > high {
		recent := now.Add(-f.opt.Grace).UnixNano()
		for _, v := range t.victims() {
			if bytes <= low || ctx.Err() != nil {
				break
			}
			o := &t.objs[v]
			if o.last > recent {
				continue // some replica used it within the grace period
			}
			h := t.hash(int(v))
			if s.isHeld(h) {
				continue
			}
			if err := s.noted(s.opt.Bucket.Delete(ctx, h)); err != nil {
				if errors.Is(err, ErrStoreUnavailable) {
					break
				}
				s.log.Warn("evict from the bucket", zap.Stringer("digest", h), zap.Error(err))
				continue
			}
			key, _ := rawOf(h)
			delete(uses, key)
			evicted = append(evicted, h)
			evictedBytes += o.size
			bytes -= o.size
		}
		if bytes > high {
			s.log.Warn("the bucket stays over its budget: the rest is pinned or used within the grace period",
				zap.Int64("bytes", bytes), zap.Int64("budget", budget), zap.Duration("grace", f.opt.Grace))
		}
	}

	// The table first: once it is written, the journals it merged may go.
	if err := s.noted(f.objs.PutRecord(ctx, accessTable, encodeTable(uses))); err != nil {
		return err
	}
	for _, key := range journals {
		if err := s.noted(f.objs.DeleteRecord(ctx, key)); err != nil {
			s.log.Warn("remove merged access journal", zap.String("key", key), zap.Error(err))
		}
	}
	if len(evicted) > 0 {
		if err := f.publishEvicted(ctx, now, evicted); err != nil {
			s.log.Warn("publish evicted content", zap.Error(err))
		}
	}
	// Leases left by holders killed with no one asking after their work.
	if n, err := f.objs.RemoveStaleLeases(ctx, evictorLease); s.noted(err) != nil {
		s.log.Warn("remove stale leases", zap.Error(err))
	} else if n > 0 {
		s.log.Info("removed stale leases", zap.Int("leases", n))
	}
	sum.Evictor, sum.At, sum.Bytes, sum.Objects, sum.Budget = f.opt.Replica, now, bytes, int64(len(t.objs)-len(evicted)), budget
	sum.Evicted += int64(len(evicted))
	sum.EvictedBytes += evictedBytes
	body, _ := json.Marshal(sum)
	if err := s.noted(f.objs.PutRecord(ctx, fleetStateKey, body)); err != nil {
		return err
	}
	if len(evicted) > 0 {
		s.log.Info("fleet evictor evicted", zap.Int("objects", len(evicted)), zap.Int64("bytes", evictedBytes),
			zap.Int64("bucket_bytes", bytes), zap.Int64("budget", budget), zap.Int("journals", len(journals)),
			zap.Duration("took", time.Since(start)))
	}
	f.mu.Lock()
	f.passes++
	f.mu.Unlock()
	return nil
}

// learnRefs makes sure the table knows what the pinned manifest raw refers
// to, reading it from the bucket when no journal said (a pin made before
// any replica used the image since the table began), and, for an index,
// what its manifests refer to, depth levels down. A pin protects the whole
// image only through these edges. Only manifests are read: the children of
// an index, never a manifest's layers.
func (f *fleet) learnRefs(ctx context.Context, uses map[raw]use, r raw, depth int) {
	e := uses[r]
	if len(e.refs) > 0 || depth <= 0 {
		return // a journal said; its replica knew the children's too
	}
	body, _, err := f.s.Manifest(ctx, r.hash(), 4<<20)
	if err != nil {
		return // not readable now: the next pass tries again
	}
	for _, h := range manifestRefs(body) {
		if c, ok := rawOf(h); ok {
			e.refs = append(e.refs, c)
		}
	}
	uses[r] = e
	var index struct {
		Manifests []json.RawMessage `json:"manifests"`
	}
	if json.Unmarshal(body, &index) == nil && len(index.Manifests) > 0 {
		for _, c := range e.refs {
			f.learnRefs(ctx, uses, c, depth-1)
		}
	}
}

// loadTable reads the compacted access table, empty when there is none.
func (f *fleet) loadTable(ctx context.Context) (map[raw]use, error) {
	table := map[raw]use{}
	body, _, err := f.objs.GetLargeRecord(ctx, accessTable, maxAccessTable)
	if errors.Is(err, ErrNotFound) {
		return table, nil
	}
	if f.s.noted(err) != nil {
		return nil, err
	}
	if err := decodeUses(body, true, func(r raw, u use) { table[r] = u }); err != nil {
		f.s.log.Warn("damaged access table: uses start afresh (everything gets a grace period)", zap.Error(err))
		clear(table)
	}
	return table, nil
}

func encodeTable(table map[raw]use) []byte {
	keys := slices.SortedFunc(maps.Keys(table), func(a, b raw) int { return compareRaw(&a, &b) })
	var b []byte
	for _, k := range keys {
		b = appendUse(b, k, table[k], true)
	}
	return b
}

// pinnedRoots are the digests the bucket's pins name.
func (f *fleet) pinnedRoots(ctx context.Context) ([]raw, error) {
	var keys []string
	if err := f.s.noted(f.objs.ListRecords(ctx, "pins/", func(k string) error {
		keys = append(keys, k)
		return nil
	})); err != nil {
		return nil, err
	}
	var roots []raw
	for _, k := range keys {
		body, err := f.objs.GetRecord(ctx, k)
		if errors.Is(err, ErrNotFound) {
			continue
		}
		if f.s.noted(err) != nil {
			return nil, fmt.Errorf("read pin %s: %w", k, err)
		}
		var p Pin
		if json.Unmarshal(body, &p) == nil {
			if r, ok := rawOf(p.Digest); ok {
				roots = append(roots, r)
			}
		}
	}
	return roots, nil
}

// publishEvicted writes an eviction notice (evicted/<time>: digests as
// journals write them),
// applies it here, and removes notices older than noticeKeep.
func (f *fleet) publishEvicted(ctx context.Context, now time.Time, evicted []v1.Hash) error {
	var b []byte
	for _, h := range evicted {
		r, _ := rawOf(h)
		b = appendRaw(b, r)
	}
	key := fmt.Sprintf("%s%020d", evictedDir, now.UnixNano())
	err := f.s.noted(f.objs.PutRecord(ctx, key, b))
	f.forget(evicted)
	f.mu.Lock()
	f.notices[key] = true
	f.mu.Unlock()
	return err
}

// noticeKeep is how many Intervals an eviction notice stays in the bucket:
// a replica away longer learns of the eviction from the bucket's 404.
const noticeKeep = 10

// applyNotices drops from this replica what the evictor's notices name.
func (f *fleet) applyNotices(ctx context.Context) error {
	var keys []string
	if err := f.s.noted(f.objs.ListRecords(ctx, evictedDir, func(k string) error {
		keys = append(keys, k)
		return nil
	})); err != nil {
		return err
	}
	now := f.s.opt.Now()
	live := map[string]bool{}
	for _, key := range keys {
		live[key] = true
		var n int64
		if _, err := fmt.Sscanf(key[len(evictedDir):], "%d", &n); err == nil && f.leading() &&
			now.Sub(time.Unix(0, n)) > noticeKeep*f.opt.Interval {
			f.s.noted(f.objs.DeleteRecord(ctx, key))
			continue
		}
		f.mu.Lock()
		done := f.notices[key]
		f.mu.Unlock()
		if done {
			continue
		}
		body, err := f.objs.GetRecord(ctx, key)
		if errors.Is(err, ErrNotFound) {
			continue
		}
		if f.s.noted(err) != nil {
			return err
		}
		var hs []v1.Hash
		for len(body) > 0 {
			r, rest, ok := readRaw(body)
			if !ok {
				f.s.log.Warn("damaged eviction notice", zap.String("key", key))
				break
			}
			hs, body = append(hs, r.hash()), rest
		}
		f.forget(hs)
		f.mu.Lock()
		f.notices[key] = true
		f.mu.Unlock()
	}
	f.mu.Lock()
	for key := range f.notices {
		if !live[key] {
			delete(f.notices, key)
		}
	}
	f.mu.Unlock()
	return nil
}

// forget drops evicted content from the index and the local copy, unless
// this replica is uploading it again (it fetched it anew since).
func (f *fleet) forget(hs []v1.Hash) {
	s := f.s
	for _, h := range hs {
		if s.up.has(h.String()) || s.isHeld(h) {
			continue
		}
		if _, err := s.info(h); err != nil && !s.hasLocal(h) {
			continue
		}
		if err := s.remove(h); err != nil {
			s.log.Warn("forget content evicted from the bucket", zap.Stringer("digest", h), zap.Error(err))
		}
	}
}

// isHeld reports whether h is in use here (served or downloaded).
func (s *Store) isHeld(h v1.Hash) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.held[h] > 0
}

// budget is the bucket's budget: the fleet's in a fleet.
func (s *Store) budget() int64 {
	if s.fleet != nil {
		return s.fleet.budget
	}
	return s.opt.MaxSize
}
