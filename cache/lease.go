package cache

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/minio/minio-go/v7"
	"go.uber.org/zap"
)

// A lease is a small object under <prefix>/leases/<name> that says which
// replica holds a piece of work (the download of a digest, the evictor's
// turn) and until when. The bucket arbitrates: the first write is made with
// If-None-Match: *, so of replicas racing for a name one wins; renewals and
// takeovers are made with If-Match on the ETag last seen, so a replica whose
// lease was taken over learns it instead of writing over the new holder.
// Staleness is judged by the store's clock alone (the object's Last-Modified
// against the Date of the answer that returned it), never by comparing
// replicas' clocks. Both have a resolution of one second: a TTL is meant to be
// several seconds.

// LeaseHolder is what a lease says: who holds it, how the others reach the
// holder, and how long after its last write the lease counts as held.
type LeaseHolder struct {
	ID  string        `json:"holder"`
	URL string        `json:"url,omitempty"`
	TTL time.Duration `json:"ttl"`
}

// The outcomes of lease operations other than success.
var (
	// ErrLeaseHeld means another holder's lease is fresh.
	ErrLeaseHeld = errors.New("lease held by another replica")
	// ErrLeaseLost means the lease was taken over (or removed) since it was
	// last written by its holder.
	ErrLeaseLost = errors.New("lease lost")
)

// MinLeaseTTL is the shortest TTL a lease may have: the store's clock has a
// resolution of a second, so anything shorter would look stale at once.
const MinLeaseTTL = 2 * time.Second

// leaseAttempts bounds the writes of one Acquire when the bucket keeps
// answering "someone else wrote first" and then "it is gone".
const leaseAttempts = 8

// Lease is a lease this replica holds. It is renewed in the background every
// third of its TTL until Release; Lost is closed when a renewal found it
// taken over, or when renewals failed for a whole TTL (the others may take
// it over by then, so it can no longer be counted on).
type Lease struct {
	o      *S3Objects
	name   string
	key    string
	holder LeaseHolder

	mu   sync.Mutex
	etag string // of the last write of ours

	lost     chan struct{}
	lostOnce sync.Once
	stop     chan struct{}
	stopOnce sync.Once
	done     chan struct{}
}

func (o *S3Objects) leaseKey(name string) (string, error) {
	if name == "" || strings.HasPrefix(name, "/") || strings.Contains(name, "..") || len(name) > 512 {
		return "", fmt.Errorf("lease name %q: not a lease's", name)
	}
	return o.prefix + "leases/" + name, nil
}

// AcquireLease tries to take the lease name for me. It returns the lease
// when it was free or stale (taken over). When another holder's is fresh it
// returns that holder with ErrLeaseHeld. Store failures are classified as
// for content (ErrStoreUnavailable, ErrAccessDenied, …).
func (o *S3Objects) AcquireLease(ctx context.Context, name string, me LeaseHolder) (*Lease, LeaseHolder, error) {
	return o.acquireLease(ctx, name, me, "")
}

// SupplantLease is AcquireLease by a replica that found the holder failed
// (its peer endpoint broke off or refused): a lease still written by
// failed.ID is taken over at once, fresh or not, with If-Match on its ETag,
// so of several replicas that saw the same holder fail one takes over and
// the others are told who did. A holder that was not dead after all learns
// it on its next renewal (Lost); that costs at most a second download.
func (o *S3Objects) SupplantLease(ctx context.Context, name string, me, failed LeaseHolder) (*Lease, LeaseHolder, error) {
	return o.acquireLease(ctx, name, me, failed.ID)
}

func (o *S3Objects) acquireLease(ctx context.Context, name string, me LeaseHolder, failedID string) (*Lease, LeaseHolder, error) {
	if me.TTL < MinLeaseTTL {
		return nil, LeaseHolder{}, fmt.Errorf("lease %s: TTL %s below the minimum of %s", name, me.TTL, MinLeaseTTL)
	}
	key, err := o.leaseKey(name)
	if err != nil {
		return nil, LeaseHolder{}, err
	}
	body, err := json.Marshal(me)
	if err != nil {
		return nil, LeaseHolder{}, err
	}
	for attempt := 0; attempt < leaseAttempts; attempt++ {
		if attempt > 0 {
			if err := leaseBackoff(ctx, attempt); err != nil {
				return nil, LeaseHolder{}, err
			}
		}
		etag, err := o.putLease(ctx, key, body, onlyIfAbsent("application/json"))
		if err == nil {
			return o.startLease(name, key, me, etag), me, nil
		}
		if !isPreconditionFailed(err) && !isConflict(err) {
			return nil, LeaseHolder{}, o.classify("acquire lease", key, err)
		}
		if isConflict(err) {
			continue // AWS, under concurrent conditional writes: try again
		}
		held, tag, stale, err := o.readLease(ctx, key)
		if errors.Is(err, ErrNotFound) {
			continue // released between our write and our read
		}
		if err != nil {
			return nil, LeaseHolder{}, err
		}
		if !stale && (failedID == "" || held.ID != failedID) {
			return nil, held, ErrLeaseHeld
		}
		opts := signedPayload("application/json")
		opts.SetMatchETag(tag)
		etag, err = o.putLease(ctx, key, body, opts)
		if err == nil {
			o.log.Info("took over a lease", zap.String("lease", name), zap.String("from", held.ID), zap.Bool("stale", stale))
			return o.startLease(name, key, me, etag), me, nil
		}
		if !isPreconditionFailed(err) && !isConflict(err) && !isNoSuchKey(err) {
			return nil, LeaseHolder{}, o.classify("take over lease", key, err)
		}
		// Another replica took it over, renewed it or released it first: look again.
	}
	return nil, LeaseHolder{}, fmt.Errorf("acquire lease %s: %w: still contended after %d attempts", key, ErrStoreUnavailable, leaseAttempts)
}

// ReadLease returns the holder of lease name and whether it is stale by the
// store's clock; ErrNotFound when nobody holds it.
func (o *S3Objects) ReadLease(ctx context.Context, name string) (LeaseHolder, bool, error) {
	key, err := o.leaseKey(name)
	if err != nil {
		return LeaseHolder{}, false, err
	}
	held, _, stale, err := o.readLease(ctx, key)
	return held, stale, err
}

// readLease reads a lease with its ETag and judges it by the store's clock.
// A body that does not parse (a write cut short by a crash cannot produce
// one, but a stray object can) counts as stale, so it can be taken over.
func (o *S3Objects) readLease(ctx context.Context, key string) (LeaseHolder, string, bool, error) {
	r, info, hdr, err := o.core.GetObject(ctx, o.bucket, key, minio.GetObjectOptions{})
	if err != nil {
		return LeaseHolder{}, "", false, o.classify("read lease", key, err)
	}
	defer r.Close()
	body, err := io.ReadAll(io.LimitReader(r, maxRecord))
	if err != nil {
		return LeaseHolder{}, "", false, o.classify("read lease", key, err)
	}
	var held LeaseHolder
	if json.Unmarshal(body, &held) != nil || held.TTL <= 0 {
		return LeaseHolder{}, info.ETag, true, nil
	}
	now, err := http.ParseTime(hdr.Get("Date"))
	if err != nil {
		// No Date: the store gives no clock to judge by, so the lease is
		// taken as held; it stays so only as long as its holder writes it.
		return held, info.ETag, false, nil
	}
	return held, info.ETag, now.Sub(info.LastModified) > held.TTL, nil
}

func (o *S3Objects) putLease(ctx context.Context, key string, body []byte, opts minio.PutObjectOptions) (string, error) {
	sum := sha256.Sum256(body)
	var info minio.UploadInfo
	err := o.put(ctx, func() io.Reader { return bytes.NewReader(body) }, func(r io.Reader) error {
		var err error
		info, err = o.core.PutObject(ctx, o.bucket, key, r, int64(len(body)), "", hex.EncodeToString(sum[:]), opts)
		return err
	})
	return info.ETag, err
}

func (o *S3Objects) startLease(name, key string, me LeaseHolder, etag string) *Lease {
	l := &Lease{o: o, name: name, key: key, holder: me, etag: etag,
		lost: make(chan struct{}), stop: make(chan struct{}), done: make(chan struct{})}
	go l.keep()
	return l
}

// Name is the lease's name, as given to AcquireLease.
func (l *Lease) Name() string { return l.name }

// Lost is closed once the lease can no longer be counted on.
func (l *Lease) Lost() <-chan struct{} { return l.lost }

func (l *Lease) markLost(why error) {
	l.lostOnce.Do(func() {
		l.o.log.Warn("lease lost", zap.String("lease", l.name), zap.Error(why))
		close(l.lost)
	})
}

// keep renews the lease every third of its TTL until Release, and gives up
// (Lost) when it was taken over or a whole TTL passed without a renewal.
func (l *Lease) keep() {
	defer close(l.done)
	every := l.holder.TTL / 3
	t := time.NewTicker(every)
	defer t.Stop()
	last := time.Now()
	for {
		select {
		case <-l.stop:
			return
		case <-t.C:
		}
		ctx, cancel := context.WithTimeout(context.Background(), every)
		err := l.Renew(ctx)
		cancel()
		switch {
		case err == nil:
			last = time.Now()
		case errors.Is(err, ErrLeaseLost):
			l.markLost(err)
			return
		case time.Since(last) >= l.holder.TTL:
			l.markLost(fmt.Errorf("not renewed for %s: %w", l.holder.TTL, err))
			return
		}
	}
}

// Renew writes the lease again with If-Match on the ETag of our last write,
// which restarts its TTL on the store's clock. ErrLeaseLost when it was
// taken over or removed meanwhile.
func (l *Lease) Renew(ctx context.Context) error {
	body, err := json.Marshal(l.holder)
	if err != nil {
		return err
	}
	for attempt := 0; ; attempt++ {
		if attempt > 0 {
			if err := leaseBackoff(ctx, attempt); err != nil {
				return err
			}
		}
		l.mu.Lock()
		opts := signedPayload("application/json")
		opts.SetMatchETag(l.etag)
		etag, err := l.o.putLease(ctx, l.key, body, opts)
		if err == nil {
			l.etag = etag
		}
		l.mu.Unlock()
		switch {
		case err == nil:
			return nil
		case isPreconditionFailed(err), isNoSuchKey(err):
			err = fmt.Errorf("renew lease %s: %w", l.key, ErrLeaseLost)
			l.markLost(err)
			return err
		case isConflict(err) && attempt < leaseAttempts:
			continue
		default:
			return l.o.classify("renew lease", l.key, err)
		}
	}
}

// Release stops the renewals and removes the lease if it is still ours (its
// ETag is our last write's). S3 has no conditional delete everywhere, so
// this is a read then a delete: a takeover in between (only of a lease left
// unrenewed for a TTL) would lose the new holder its lease, which costs at
// most a second download, never a wrong byte.
func (l *Lease) Release(ctx context.Context) error {
	l.stopRenewing()
	select {
	case <-l.lost:
		return nil
	default:
	}
	l.markLostQuietly()
	_, etag, _, err := l.o.readLease(ctx, l.key)
	if errors.Is(err, ErrNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	l.mu.Lock()
	mine := etag == l.etag
	l.mu.Unlock()
	if !mine {
		return nil
	}
	return l.o.removeLease(ctx, l.key)
}

// removeLease deletes the lease object at key; gone already is no error.
func (o *S3Objects) removeLease(ctx context.Context, key string) error {
	err := o.classify("remove lease", key, o.core.RemoveObject(ctx, o.bucket, key, minio.RemoveObjectOptions{}))
	if errors.Is(err, ErrNotFound) {
		return nil
	}
	return err
}

// RemoveStaleLeases deletes the leases that are stale by the store's clock
// (the rule AcquireLease takes over by) and returns how many it deleted. A
// holder killed with no one asking after its work leaves its lease behind;
// the evictor's pass calls this so that such a lease does not stay for ever.
// The lease named except (the caller's own, fresh) is not even read.
//
// The listing decides, so that a fresh lease costs nothing beyond it: it
// gives each lease's Last-Modified and ETag, and its answers' Date is the
// store's clock. What the listing lacks is the TTL, which is in the body;
// the sweep remembers it by ETag (a lease renewed by its holder keeps its
// body, so its ETag on stores whose ETag is the body's MD5), and reads a
// lease whose ETag it has not seen yet. A lease that looks stale by the
// listing is read again before it is deleted, and judged by that read (as
// in Release: minio-go sends no If-Match on DELETE, and not every S3 store
// honours one), so a lease renewed since the listing stays. The race that
// remains is the read's: a replica takes the stale lease over between our
// read and our delete, and the delete removes its fresh lease. It learns so
// on its next renewal (Lost) but goes on with its download; a replica
// asking for the same work meanwhile finds no lease and does it too: at
// most a second download, each verified, never a wrong byte.
func (o *S3Objects) RemoveStaleLeases(ctx context.Context, except string) (int, error) {
	skip, err := o.leaseKey(except)
	if err != nil {
		return 0, err
	}
	now, listed, err := o.listLeases(ctx, skip)
	if err != nil {
		return 0, err
	}
	known := o.leases.ttls()
	seen := make(map[string]time.Duration, len(known))
	defer func() { o.leases.keep(seen) }() // forget what is no longer listed
	n := 0
	for _, obj := range listed {
		ttl, ok := seen[obj.ETag]
		if !ok {
			ttl, ok = known[obj.ETag]
		}
		if ok && (now.IsZero() || now.Sub(obj.LastModified) <= ttl) {
			seen[obj.ETag] = ttl // fresh by the listing (or no clock to judge by)
			continue
		}
		held, etag, stale, err := o.readLease(ctx, obj.Key)
		if errors.Is(err, ErrNotFound) {
			continue // released meanwhile
		}
		if err != nil {
			return n, err
		}
		if !stale {
			seen[etag] = held.TTL
			continue
		}
		if err := o.removeLease(ctx, obj.Key); err != nil {
			return n, err
		}
		n++
	}
	return n, nil
}

// listLeases lists the leases but the one at key skip, with the store's
// clock: the earliest Date of the listing's answers, zero when they had none.
func (o *S3Objects) listLeases(ctx context.Context, skip string) (time.Time, []minio.ObjectInfo, error) {
	clock := &storeClock{}
	var listed []minio.ObjectInfo
	err := o.walkKeys(context.WithValue(ctx, storeClockKey{}, clock), o.prefix+"leases/", func(obj minio.ObjectInfo) error {
		if obj.Key != skip {
			listed = append(listed, obj)
		}
		return nil
	})
	return clock.earliest(), listed, err
}

// leaseSweep is what RemoveStaleLeases remembers between passes: the TTL
// each lease body it read says, by the body's ETag (0 for a body that is no
// lease), for the ETags the last listing showed.
type leaseSweep struct {
	mu  sync.Mutex
	ttl map[string]time.Duration
}

func (w *leaseSweep) ttls() map[string]time.Duration {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.ttl
}

func (w *leaseSweep) keep(ttl map[string]time.Duration) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.ttl = ttl
}

// storeClock notes the earliest Date of the store's answers to the requests
// made with it in their context (under storeClockKey): minio-go returns a
// listing without its answers' headers. The earliest is the safe one when a
// listing takes several answers: by it a lease only looks younger.
type storeClock struct {
	mu    sync.Mutex
	first time.Time
}

type storeClockKey struct{}

func (c *storeClock) note(h http.Header) {
	t, err := http.ParseTime(h.Get("Date"))
	if err != nil {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.first.IsZero() || t.Before(c.first) {
		c.first = t
	}
}

func (c *storeClock) earliest() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.first
}

// clockTransport hands the Date of each answer to the storeClock in its
// request's context, if any.
type clockTransport struct{ next http.RoundTripper }

func (t clockTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	resp, err := t.next.RoundTrip(r)
	if c, ok := r.Context().Value(storeClockKey{}).(*storeClock); ok && err == nil {
		c.note(resp.Header)
	}
	return resp, err
}

// markLostQuietly closes Lost without a warning: the holder gave it up.
func (l *Lease) markLostQuietly() { l.lostOnce.Do(func() { close(l.lost) }) }

// stopRenewing ends the background renewals and waits for them; the lease
// object stays as it is (as when the process dies).
func (l *Lease) stopRenewing() {
	l.stopOnce.Do(func() { close(l.stop) })
	<-l.done
}

// leaseBackoff waits a jittered, growing while before another attempt.
func leaseBackoff(ctx context.Context, attempt int) error {
	base := time.Duration(attempt) * 25 * time.Millisecond
	d := base/2 + rand.N(base)
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(d):
		return nil
	}
}

// isConflict is AWS's 409 ConditionalRequestConflict: a conditional write
// raced another one in flight; trying again decides it.
func isConflict(err error) bool {
	var resp minio.ErrorResponse
	return errors.As(err, &resp) && (resp.StatusCode == http.StatusConflict || resp.Code == "ConditionalRequestConflict")
}

func isNoSuchKey(err error) bool {
	var resp minio.ErrorResponse
	return errors.As(err, &resp) && (resp.StatusCode == http.StatusNotFound || resp.Code == minio.NoSuchKey)
}
