package proxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/regmirror/regmirror/cache"
	"go.uber.org/zap"
)

// Fleet makes the proxy one of several replicas on one bucket, which
// download each cold blob from upstream once between them: a replica that
// misses takes the digest's lease in the bucket and leads the download, or
// finds it held and streams the blob from the holder's peer endpoint as if
// the holder were the upstream (docs/ARCHITECTURE.md, Replicas).
type Fleet struct {
	Leases Leases
	// Self is this replica in a lease: an ID unique to this process, the URL
	// the others reach its peer endpoint at, and the leases' TTL.
	Self cache.LeaseHolder
	// Token is the shared secret of the peer endpoint, sent and checked.
	Token string
	// Client carries requests to the peers; its transport should time out
	// on dialing and on response headers, never on a whole body.
	Client *http.Client
	// Wait bounds how long a replica that cannot reach a digest's leader
	// waits for the object to appear in the bucket before fetching it itself.
	Wait time.Duration
}

// Leases is the bucket's arbitration as downloads use it (cache.S3Objects).
type Leases interface {
	AcquireLease(ctx context.Context, name string, me cache.LeaseHolder) (*cache.Lease, cache.LeaseHolder, error)
	SupplantLease(ctx context.Context, name string, me, failed cache.LeaseHolder) (*cache.Lease, cache.LeaseHolder, error)
	ReadLease(ctx context.Context, name string) (holder cache.LeaseHolder, stale bool, err error)
}

// leaseTimeout bounds one lease operation (a few requests to the bucket).
const leaseTimeout = 10 * time.Second

// maxLeaders bounds how many leaders one download tries to follow in a row
// (each refused or failed) before it fetches from upstream itself.
const maxLeaders = 3

// bucketPoll is how often a replica that cannot reach the leader looks for
// the object in the bucket.
const bucketPoll = 250 * time.Millisecond

// errStoredMeanwhile ends a flight whose blob appeared in the store (the
// bucket) before it fetched anything: its requesters serve it from there.
var errStoredMeanwhile = errors.New("blob stored by another replica meanwhile")

// open returns the flight's first response: from upstream, or in a fleet
// from whoever leads the digest's download.
func (p *Proxy) open(fl *flight) (*attempt, error) {
	if p.opt.Fleet == nil {
		return p.fetch(p.ctx, fl.up, fl.repo, fl.digest, 0, -1)
	}
	return p.coordinate(fl, 0, nil)
}

// coordinate decides where the flight's bytes from offset come from, and
// opens that source. It takes the digest's lease (failed: taking it over
// from a leader whose peer endpoint just failed) and then fetches from
// upstream, or follows the holder. Every failure of the coordination ends in
// a fetch from upstream: at most a second download, never a wrong byte,
// since the flight checks the digest of what it writes whatever the source.
func (p *Proxy) coordinate(fl *flight, offset int64, failed *cache.LeaseHolder) (*attempt, error) {
	f := p.opt.Fleet
	name := fl.digest.String()
	var waitUntil time.Time
	for leaders := 0; ; {
		ctx, cancel := context.WithTimeout(p.ctx, leaseTimeout)
		var (
			lease *cache.Lease
			held  cache.LeaseHolder
			err   error
		)
		if failed != nil {
			lease, held, err = f.Leases.SupplantLease(ctx, name, f.Self, *failed)
		} else {
			lease, held, err = f.Leases.AcquireLease(ctx, name, f.Self)
		}
		cancel()
		failed = nil
		switch {
		case err == nil:
			fl.lease, fl.leader = lease, nil
			if offset == 0 && p.storedElsewhere(fl) {
				// Uploaded by a leader that released the lease between our
				// miss and our acquire: serve it from the bucket.
				p.releaseLease(fl, errStoredMeanwhile)
				return nil, errStoredMeanwhile
			}
			return p.fetch(p.ctx, fl.up, fl.repo, fl.digest, offset, fl.size)
		case errors.Is(err, cache.ErrLeaseHeld):
			a, perr := p.fromPeer(fl, held, offset)
			if perr == nil {
				fl.leader = &held
				p.log.Debug("following a replica's download", zap.Stringer(keyDigest, fl.digest),
					zap.String("leader", held.ID), zap.Int64("offset", offset))
				return a, nil
			}
			if leaders++; leaders > maxLeaders {
				p.log.Warn("no replica could give the blob; fetching it from upstream", zap.Stringer(keyDigest, fl.digest), zap.Error(perr))
				return p.fetch(p.ctx, fl.up, fl.repo, fl.digest, offset, fl.size)
			}
			if !errors.Is(perr, errPeerUnreachable) {
				// It answered but cannot give the blob (its download failed,
				// or it restarted): lead instead, or follow who does.
				p.log.Info("leading replica cannot give the blob", zap.Stringer(keyDigest, fl.digest),
					zap.String("leader", held.ID), zap.Error(perr))
				failed = &held
				continue
			}
			if offset > 0 {
				// Mid-blob, with clients waiting on the next byte: no waiting
				// for an upload that may never come.
				p.log.Warn("cannot reach the leading replica mid-blob; resuming from upstream", zap.Stringer(keyDigest, fl.digest),
					zap.String("leader", held.ID), zap.Error(perr))
				return p.fetch(p.ctx, fl.up, fl.repo, fl.digest, offset, fl.size)
			}
			if waitUntil.IsZero() {
				waitUntil = time.Now().Add(f.Wait)
				p.log.Warn("cannot reach the leading replica; waiting for the blob in the bucket", zap.Stringer(keyDigest, fl.digest),
					zap.String("leader", held.ID), zap.String("peer_url", held.URL), zap.Duration("wait", f.Wait), zap.Error(perr))
			}
			leaders-- // waiting for the same leader is no new leader
			if time.Now().After(waitUntil) {
				p.log.Warn("the blob did not appear in the bucket in time; fetching it from upstream", zap.Stringer(keyDigest, fl.digest))
				return p.fetch(p.ctx, fl.up, fl.repo, fl.digest, offset, fl.size)
			}
			select {
			case <-time.After(bucketPoll):
			case <-p.ctx.Done():
				return nil, p.ctx.Err()
			}
			if p.storedElsewhere(fl) {
				return nil, errStoredMeanwhile
			}
			// Still not there: ask for the lease again (free or stale once
			// the leader finished, failed or died).
		default:
			p.log.Warn("cannot coordinate the download with the other replicas; fetching it from upstream",
				zap.Stringer(keyDigest, fl.digest), zap.Error(err))
			return p.fetch(p.ctx, fl.up, fl.repo, fl.digest, offset, fl.size)
		}
	}
}

// storedElsewhere reports whether the blob is in the store now (in the
// bucket: a HEAD, made outside any lock; the caller then serves it).
func (p *Proxy) storedElsewhere(fl *flight) bool {
	return p.blobs.Stored(p.ctx, fl.digest)
}

// resumeFleet carries on a flight that followed a leader whose stream broke
// off at offset: it takes the lease over from that leader (and resumes from
// upstream by Range), or follows whoever took it over first.
func (p *Proxy) resumeFleet(fl *flight, offset int64) (*attempt, error) {
	failed := fl.leader
	fl.leader = nil
	return p.coordinate(fl, offset, failed)
}

// releaseLease gives up the flight's lease once its work is done: after a
// good download, once the blob is in the bucket (until then the others
// follow this replica, which serves the committed blob); after a failure at
// once. It runs in the background, within the proxy's lifetime.
func (p *Proxy) releaseLease(fl *flight, err error) {
	lease := fl.lease
	if lease == nil {
		return
	}
	fl.lease = nil
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		if err == nil {
			if werr := p.blobs.AwaitUpload(p.ctx, fl.digest); werr != nil {
				p.log.Debug("release the lease before the upload finished", zap.Stringer(keyDigest, fl.digest), zap.Error(werr))
			}
		}
		ctx, cancel := context.WithTimeout(context.WithoutCancel(p.ctx), leaseTimeout)
		defer cancel()
		if rerr := lease.Release(ctx); rerr != nil {
			p.log.Warn("release lease; it goes stale by itself", zap.Stringer(keyDigest, fl.digest), zap.Error(rerr))
		}
	}()
}

// maxUploadWait bounds how long a follower's upload waits for its leader's.
const maxUploadWait = 10 * time.Minute

// leaderDone returns a channel closed once the leader a flight followed no
// longer holds the digest's lease: it released it after its upload (so the
// follower's own upload finds the object and sends nothing), failed, or
// died. A follower defers its upload until then (cache.Writer.DeferUpload).
func (p *Proxy) leaderDone(fl *flight, leader cache.LeaseHolder) <-chan struct{} {
	done := make(chan struct{})
	f := p.opt.Fleet
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		defer close(done)
		t := time.NewTicker(max(f.Self.TTL/3, time.Second))
		defer t.Stop()
		give := time.After(maxUploadWait)
		for {
			select {
			case <-p.ctx.Done():
				return
			case <-give:
				return
			case <-t.C:
			}
			ctx, cancel := context.WithTimeout(p.ctx, leaseTimeout)
			held, stale, err := f.Leases.ReadLease(ctx, fl.digest.String())
			cancel()
			if err != nil || stale || held.ID != leader.ID {
				return // gone (ErrNotFound), unreadable, or someone else's now
			}
		}
	}()
	return done
}

// errPeerUnreachable marks a peer request that got no answer at all.
var errPeerUnreachable = errors.New("replica unreachable")

// fromPeer asks the replica held for the blob from offset on, as it would
// an upstream.
func (p *Proxy) fromPeer(fl *flight, held cache.LeaseHolder, offset int64) (*attempt, error) {
	f := p.opt.Fleet
	if held.URL == "" {
		return nil, fmt.Errorf("%w: the lease of %s names no peer URL", errPeerUnreachable, held.ID)
	}
	ctx, cancel := context.WithCancelCause(p.ctx)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, held.URL+PeerPath+fl.digest.String(), nil)
	if err != nil {
		cancel(nil)
		return nil, fmt.Errorf("%w: peer URL %q: %w", errPeerUnreachable, held.URL, err)
	}
	req.Header.Set(PeerTokenHeader, f.Token)
	if offset > 0 {
		req.Header.Set("Range", fmt.Sprintf("bytes=%d-", offset))
	}
	resp, err := f.Client.Do(req)
	if err != nil {
		cancel(nil)
		return nil, fmt.Errorf("%w: %s at %s: %w", errPeerUnreachable, held.ID, held.URL, err)
	}
	want := http.StatusOK
	if offset > 0 {
		want = http.StatusPartialContent
	}
	if resp.StatusCode != want {
		resp.Body.Close()
		cancel(nil)
		return nil, fmt.Errorf("replica %s at %s answered %s", held.ID, held.URL, resp.Status)
	}
	if offset > 0 {
		if start, ok := rangeStart(resp.Header.Get("Content-Range")); !ok || start != offset {
			resp.Body.Close()
			cancel(nil)
			return nil, fmt.Errorf("replica %s: asked for bytes from %d, got Content-Range %q", held.ID, offset, resp.Header.Get("Content-Range"))
		}
	}
	resp.Body = &peerBody{ReadCloser: resp.Body, n: &p.stats.peerRecv}
	return p.newAttempt(resp, ctx, cancel), nil
}

// peerBody counts the bytes read from another replica's peer endpoint.
type peerBody struct {
	io.ReadCloser
	n *atomic.Int64
}

func (b *peerBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	b.n.Add(int64(n))
	return n, err
}
