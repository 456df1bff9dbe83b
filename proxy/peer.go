package proxy

import (
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"net/http"
	"strings"

	"github.com/regmirror/regmirror/cache"
	"go.uber.org/zap"
)

// PeerPath is where a replica serves other replicas a blob it holds or is
// downloading: PeerPath + "sha256:<hex>". Only in a fleet, and only to a
// request that carries the fleet's secret in PeerTokenHeader; to anyone
// else it is no endpoint at all.
const PeerPath = "/_regmirror/peer/blobs/"

// PeerTokenHeader carries the fleet's secret. Not Authorization: client
// authentication (Basic) has that one, and the access log writes no header.
const PeerTokenHeader = "Regmirror-Peer-Token"

// peerAuthorized compares the secret in constant time (over digests of
// both, so not even its length shows in the timing).
func (p *Proxy) peerAuthorized(r *http.Request) bool {
	f := p.opt.Fleet
	if f == nil || f.Token == "" {
		return false
	}
	got := sha256.Sum256([]byte(r.Header.Get(PeerTokenHeader)))
	want := sha256.Sum256([]byte(f.Token))
	return subtle.ConstantTimeCompare(got[:], want[:]) == 1
}

// servePeer serves another replica a blob: committed (the local file or the
// bucket's object), or in flight, streamed as it arrives with its last byte
// held back until verified, with Range, as a client is served. It never
// starts a download: a replica asked for what it neither holds nor
// downloads answers 404, and the asker leads instead.
func (p *Proxy) servePeer(w *response, r *http.Request) error {
	if !p.peerAuthorized(r) {
		if p.opt.Fleet != nil {
			p.log.Warn("peer request without the fleet's secret", zap.String(keyRemote, r.RemoteAddr),
				zap.Bool("token_sent", r.Header.Get(PeerTokenHeader) != ""))
		}
		return errNoSuchEndpoint()
	}
	h, err := parseDigest(strings.TrimPrefix(r.URL.Path, PeerPath))
	if err != nil {
		return err
	}
	w.setKind("peer")
	w.setCache(cachePeer)
	defer p.blobs.Hold(h)()
	// A flight can end between our miss and our look for it, its blob then
	// committed: look again, as serveBlob does, rather than answer 404 to a
	// follower, which would take the lease over and download a second time.
	for range 2 {
		f, err := p.blobs.OpenBlob(r.Context(), h, firstRead(r.Header))
		if err == nil {
			defer f.Close()
			serveContent(w, h, f)
			return nil
		}
		if !errors.Is(err, cache.ErrNotFound) {
			return err
		}
		fl := p.flight(h)
		if fl == nil {
			continue
		}
		select {
		case <-fl.ready:
		case <-r.Context().Done():
			return r.Context().Err()
		}
		if _, stored := fl.started(); !stored {
			break // failed, or streamed through unstored: nothing to follow
		}
		return p.follow(w, r, fl, route{kind: routeBlob, digest: h})
	}
	return notFound(routeBlob, "this replica neither holds nor downloads "+h.String())
}
