package proxy

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"slices"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/regmirror/regmirror/cache"
	"github.com/regmirror/regmirror/upstream"
	"go.uber.org/zap"
)

// Manifests is manifests at rest by digest, read whole (they are small):
// served from memory when hot.
type Manifests interface {
	// Manifest reads a stored manifest of at most max bytes; cache.ErrNotFound
	// when it is not there.
	Manifest(ctx context.Context, h v1.Hash, max int64) ([]byte, cache.Info, error)
	// PutManifest stores a manifest whose digest the caller verified.
	PutManifest(h v1.Hash, body []byte, mediaType string) error
}

// maxManifest caps a manifest read from upstream or from disk, as
// distribution does: manifests are small, and we buffer them whole.
const maxManifest = 4 << 20

const (
	typeOCIIndex     = "application/vnd.oci.image.index.v1+json"
	typeDockerList   = "application/vnd.docker.distribution.manifest.list.v2+json"
	typeOCIManifest  = "application/vnd.oci.image.manifest.v1+json"
	typeDockerSchema = "application/vnd.docker.distribution.manifest.v2+json"
)

// manifest is a verified manifest held in memory.
type manifest struct {
	body      []byte
	digest    v1.Hash
	mediaType string
	tier      tierHeaders // what upstream said of it that clients must hear; none when cached
	fallback  string      // the fallback source that answered instead of the upstream, if one did
}

// resolved is a manifest and how we came by it.
type resolved struct {
	m      manifest
	source string // cacheHit, cacheMiss or cacheStale
}

func (p *Proxy) serveManifest(w *response, r *http.Request, rt route) error {
	ctx := r.Context()
	up := p.ups[rt.registry]
	var res resolved
	var err error
	if rt.byDigest() {
		res, err = p.manifestByDigest(ctx, up, rt.repo, rt.digest)
	} else {
		res, err = p.manifestByTag(ctx, up, rt)
	}
	if err != nil {
		passQuota(w.Header(), up, err)
		return err
	}
	w.setCache(res.source)
	m := res.m
	if !rt.byDigest() {
		if m, err = p.negotiate(ctx, up, rt, m, r.Header.Values("Accept")); err != nil {
			return err
		}
	}
	if res.source == cacheStale {
		w.Header().Set("Warning", fmt.Sprintf(`299 - "upstream %s unreachable: tag answer may be out of date"`, rt.registry))
	}
	res.m.tier.passOn(w.Header())
	setContentHeaders(w.Header(), m.mediaType, m.digest)
	w.serveBytes(m.body)
	return nil
}

// manifestByDigest returns the manifest h: from memory or disk when cached,
// otherwise fetched once from upstream however many ask, verified, and stored.
func (p *Proxy) manifestByDigest(ctx context.Context, up Upstream, repo string, h v1.Hash) (resolved, error) {
	body, info, err := p.manifests.Manifest(ctx, h, maxManifest)
	if err == nil {
		return resolved{manifest{body: body, digest: h, mediaType: manifestType(info.MediaType, body)}, cacheHit}, nil
	}
	if !errors.Is(err, cache.ErrNotFound) {
		return resolved{}, err
	}
	v, shared, err := p.shared(ctx, "m/"+h.String(), func(ctx context.Context) (any, error) {
		return p.fetchManifest(ctx, up, repo, h.String(), h)
	})
	if err != nil {
		return resolved{}, err
	}
	return resolved{v.(manifest), coalesced(cacheMiss, shared)}, nil
}

// manifestByTag answers a tag from its cached answer inside the TTL, and
// otherwise asks upstream: a HEAD when we know an answer to compare with, a
// GET when we do not. When upstream cannot be asked, the last answer is served.
func (p *Proxy) manifestByTag(ctx context.Context, up Upstream, rt route) (resolved, error) {
	known, err := p.tags.Tag(rt.registry, rt.repo, rt.tag)
	if err != nil && !errors.Is(err, cache.ErrNotFound) {
		return resolved{}, err
	}
	haveAnswer := err == nil
	if haveAnswer && p.opt.Now().Sub(known.LearnedAt) < p.opt.TagTTL {
		if res, err := p.manifestByDigest(ctx, up, rt.repo, known.Digest); err == nil {
			return res, nil
		}
		// The manifest went missing from the store: ask upstream afresh.
	}
	key := "t/" + rt.registry + "/" + rt.repo + ":" + rt.tag
	return p.sharedResolve(ctx, key, func(ctx context.Context) (resolved, error) {
		if res, ok := p.sharedTag(ctx, up, rt); ok {
			return res, nil
		}
		return p.resolveTag(ctx, up, rt, known, haveAnswer)
	})
}

// sharedResolve runs a resolution once for every concurrent caller with the
// same key; a miss shared with others counts as coalesced.
func (p *Proxy) sharedResolve(ctx context.Context, key string, fn func(ctx context.Context) (resolved, error)) (resolved, error) {
	v, shared, err := p.shared(ctx, key, func(ctx context.Context) (any, error) { return fn(ctx) })
	if err != nil {
		return resolved{}, err
	}
	res := v.(resolved)
	if res.source == cacheMiss {
		res.source = coalesced(cacheMiss, shared)
	}
	return res, nil
}

func (p *Proxy) resolveTag(ctx context.Context, up Upstream, rt route, known cache.TagAnswer, haveAnswer bool) (resolved, error) {
	if haveAnswer {
		res, err := p.revalidate(ctx, up, rt, known)
		if err == nil || !errors.Is(err, errNoDigestHeader) {
			return res, err
		}
	}
	m, err := p.fetchManifest(ctx, up, rt.repo, rt.tag, v1.Hash{})
	if err != nil {
		return resolved{}, err
	}
	if m.fallback != "" {
		p.learnFromFallback(rt, &m)
		return resolved{m, cacheMiss}, nil
	}
	if m.tier.stale() {
		// A lower tier served its last answer: ours is as stale as its.
		p.learnTagAt(rt, m, p.expired())
		return resolved{m, cacheStale}, nil
	}
	p.learnTag(rt, m)
	return resolved{m, cacheMiss}, nil
}

var errNoDigestHeader = errors.New("upstream sent no Docker-Content-Digest")

// revalidate asks upstream with a HEAD (free against Docker Hub's pull limit)
// whether the tag still points where it did.
func (p *Proxy) revalidate(ctx context.Context, up Upstream, rt route, known cache.TagAnswer) (resolved, error) {
	// Our own last answer beats a fallback's: only the upstream is asked.
	resp, err := up.Manifest(upstream.PrimaryOnly(ctx), http.MethodHead, rt.repo, rt.tag)
	if err != nil {
		if isNotFound(err) {
			// Deleted upstream: forget it rather than serve a tag that is gone.
			if derr := p.tags.DeleteTag(rt.registry, rt.repo, rt.tag); derr != nil {
				p.log.Warn("forget deleted tag", zap.Error(derr))
			}
			return resolved{}, err
		}
		if !upstream.FailureOf(err).Unavailable() {
			return resolved{}, err
		}
		res, cerr := p.manifestByDigest(ctx, up, rt.repo, known.Digest)
		if cerr != nil {
			return resolved{}, err
		}
		p.noteStale(rt, known, err)
		res.source = cacheStale
		p.markFallback(rt, &res.m)
		return res, nil
	}
	resp.Body.Close()
	d, err := v1.NewHash(resp.Header.Get("Docker-Content-Digest"))
	if err != nil {
		return resolved{}, errNoDigestHeader
	}
	res, err := p.manifestByDigest(ctx, up, rt.repo, d)
	if err != nil {
		return resolved{}, err
	}
	res.m.tier = tierOf(resp.Header)
	if res.m.tier.stale() {
		// A lower tier served its last answer: not a renewal of ours.
		p.learnTagAt(rt, res.m, p.expired())
		res.source = cacheStale
		return res, nil
	}
	p.learnTag(rt, res.m)
	return res, nil
}

// noteStale logs a stale answer at Warn, at most once per tag every
// staleWarnEvery, so an outage does not flood the log. (The access log
// counts each stale answer.)
func (p *Proxy) noteStale(rt route, known cache.TagAnswer, err error) {
	key := rt.registry + "/" + rt.repo + ":" + rt.tag
	now := p.opt.Now()
	if last, ok := p.staleWarned.Get(key); ok && now.Sub(last) < staleWarnEvery {
		return
	}
	p.staleWarned.Add(key, now)
	p.log.Warn("serving stale tag answer", zap.String(keyUpstream, rt.registry), zap.String(keyRepo, rt.repo),
		zap.String("tag", rt.tag), zap.Time("learned_at", known.LearnedAt), zap.NamedError("upstream_error", err))
}

// learnTag records the upstream's own answer for a tag, which replaces a
// fallback's.
func (p *Proxy) learnTag(rt route, m manifest) {
	p.fellBack.Remove(tagKey(rt))
	p.learnTagAt(rt, m, p.opt.Now())
}

// learnTagAt records a tag answer as learned at t: an answer that is already
// out of date is recorded as learned a TTL ago, so the next request asks again.
func (p *Proxy) learnTagAt(rt route, m manifest, t time.Time) {
	a := cache.TagAnswer{Digest: m.digest, MediaType: m.mediaType, Size: int64(len(m.body)), LearnedAt: t}
	if err := p.tags.SetTag(rt.registry, rt.repo, rt.tag, a); err != nil {
		p.log.Warn("record tag answer", zap.String(keyRepo, rt.repo), zap.String("tag", rt.tag), zap.Error(err))
	}
}

// fetchManifest GETs a manifest by ref, reads it under the size cap, checks
// it against want (when fetched by digest) and against the digest upstream
// claims, and stores it.
func (p *Proxy) fetchManifest(ctx context.Context, up Upstream, repo, ref string, want v1.Hash) (manifest, error) {
	ctx, src := upstream.WithSource(ctx)
	resp, err := up.Manifest(ctx, http.MethodGet, repo, ref)
	if err != nil {
		return manifest{}, err
	}
	body, err := readManifest(resp, "manifest "+ref)
	if err != nil {
		return manifest{}, err
	}
	alg := "sha256" // what a manifest by tag is known by
	if want.Hex != "" {
		alg = want.Algorithm
	}
	got := cache.Sum(alg, body)
	if want.Hex != "" && got != want {
		return manifest{}, fmt.Errorf("manifest %s: %w: content hashes to %s", ref, cache.ErrDigestMismatch, got)
	}
	if claimed := resp.Header.Get("Docker-Content-Digest"); claimed != "" && !claims(claimed, body, got) {
		return manifest{}, fmt.Errorf("manifest %s: %w: upstream claims %s, content hashes to %s", ref, errUpstreamInvalid, claimed, got)
	}
	m := manifest{body: body, digest: got, mediaType: manifestType(resp.Header.Get("Content-Type"), body), tier: tierOf(resp.Header), fallback: src.Fallback()}
	if err := p.manifests.PutManifest(m.digest, m.body, m.mediaType); err != nil {
		// Verified in memory: serve it even when the disk cannot keep it.
		p.log.Warn("store manifest", zap.Stringer(keyDigest, m.digest), zap.Error(err))
	}
	return m, nil
}

// readManifest reads and closes an upstream's manifest-sized answer, under
// the size cap; what names it in errors.
func readManifest(resp *http.Response, what string) ([]byte, error) {
	defer resp.Body.Close()
	if resp.ContentLength > maxManifest {
		return nil, fmt.Errorf("%s: %w: %d bytes", what, errUpstreamInvalid, resp.ContentLength)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxManifest+1))
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", what, err)
	}
	if len(body) > maxManifest {
		return nil, fmt.Errorf("%s: %w: larger than %d bytes", what, errUpstreamInvalid, maxManifest)
	}
	return body, nil
}

// claims reports whether an upstream's Docker-Content-Digest is body's, got
// being body's digest already known. Registries give sha256 even for a
// manifest asked for by sha512, which is its digest too.
func claims(claimed string, body []byte, got v1.Hash) bool {
	if claimed == got.String() {
		return true
	}
	h, err := v1.NewHash(claimed)
	return err == nil && h.Algorithm != got.Algorithm && cache.CheckDigest(h) == nil && cache.Sum(h.Algorithm, body) == h
}

// manifestType is the media type to serve a manifest with: the one upstream
// (or the index) gave, or else the one the manifest names itself.
func manifestType(given string, body []byte) string {
	if isManifestType(given) {
		return given // the common case, without parsing parameters
	}
	if mt, _, err := mime.ParseMediaType(given); err == nil && isManifestType(mt) {
		return mt
	}
	var probe struct {
		MediaType string `json:"mediaType"`
	}
	if json.Unmarshal(body, &probe) == nil && probe.MediaType != "" {
		return probe.MediaType
	}
	if given != "" {
		return given
	}
	return typeOCIManifest
}

func isManifestType(mt string) bool { return slices.Contains(upstream.ManifestTypes, mt) }

func isIndex(mt string) bool { return mt == typeOCIIndex || mt == typeDockerList }

func coalesced(outcome string, shared bool) string {
	if shared {
		return cacheCoalesced
	}
	return outcome
}

func isNotFound(err error) bool {
	return upstream.FailureOf(err) == failureNotFound
}
