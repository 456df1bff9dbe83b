package proxy

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/regmirror/regmirror/cache"
	"github.com/regmirror/regmirror/upstream"
	"go.uber.org/zap"
)

// The referrers API (OCI distribution 1.1): GET /v2/<name>/referrers/<digest>
// answers an image index of the manifests whose subject is digest. The
// mirror keeps the whole, unfiltered answer like a tag answer: the index is
// stored as a manifest (by its sha256) and a tag answer under
// referrersTag(subject) points at it, learned at a time, answered without
// asking upstream inside REGMIRROR_TAG_TTL and from the cache, with a
// Warning, when upstream cannot be asked. The artifactType filter is applied
// here, on that one answer.

// referrersTag is the tag answer's name for subject's referrers. The '/' no
// real tag can hold keeps it apart from the tags (and out of the tag
// listings, which skip such names); its repository is the subject's.
func referrersTag(subject v1.Hash) string {
	return "referrers/" + subject.Algorithm + "-" + subject.Hex
}

// tagSchemaTag is the referrers tag schema's tag for subject: where clients
// of a registry without the referrers API keep its referrers index. The
// schema cuts the algorithm at 32 characters and the hex at 64 (a sha512's
// first half), so the tag fits the tag grammar.
func tagSchemaTag(subject v1.Hash) string {
	return subject.Algorithm[:min(len(subject.Algorithm), 32)] + "-" + subject.Hex[:min(len(subject.Hex), 64)]
}

// emptyReferrers is the answer for a subject nothing refers to.
var emptyReferrers = []byte(`{"schemaVersion":2,"mediaType":"` + typeOCIIndex + `","manifests":[]}`)

func (p *Proxy) serveReferrers(w *response, r *http.Request, rt route) error {
	ctx := r.Context()
	res, err := p.referrers(ctx, p.ups[rt.registry], rt)
	if err != nil {
		return err
	}
	w.setCache(res.source)
	body := res.m.body
	if at := r.URL.Query().Get("artifactType"); at != "" {
		if body, err = filterReferrers(body, at); err != nil {
			return err
		}
		w.Header().Set("OCI-Filters-Applied", "artifactType")
	}
	if res.source == cacheStale {
		w.Header().Set("Warning", fmt.Sprintf(`299 - "upstream %s unreachable: referrers answer may be out of date"`, rt.registry))
	}
	w.Header().Set("Content-Type", typeOCIIndex)
	w.serveBytes(body)
	return nil
}

// referrers returns subject's referrers index: the kept answer inside the
// TTL, otherwise upstream's (once however many ask), otherwise, when
// upstream cannot be asked, the kept answer however old.
func (p *Proxy) referrers(ctx context.Context, up Upstream, rt route) (resolved, error) {
	tag := referrersTag(rt.digest)
	known, err := p.tags.Tag(rt.registry, rt.repo, tag)
	if err != nil && !errors.Is(err, cache.ErrNotFound) {
		return resolved{}, err
	}
	haveAnswer := err == nil
	if haveAnswer && p.opt.Now().Sub(known.LearnedAt) < p.opt.TagTTL {
		if body, _, err := p.manifests.Manifest(ctx, known.Digest, maxManifest); err == nil {
			return resolved{manifest{body: body, digest: known.Digest, mediaType: typeOCIIndex}, cacheHit}, nil
		}
	}
	key := "r/" + rt.registry + "/" + rt.repo + "@" + rt.digest.String()
	return p.sharedResolve(ctx, key, func(ctx context.Context) (resolved, error) {
		body, err := p.askReferrers(ctx, up, rt)
		if err != nil {
			if upstream.FailureOf(err).Unavailable() && haveAnswer {
				if body, _, cerr := p.manifests.Manifest(ctx, known.Digest, maxManifest); cerr == nil {
					return resolved{manifest{body: body, digest: known.Digest, mediaType: typeOCIIndex}, cacheStale}, nil
				}
			}
			return resolved{}, err
		}
		m := manifest{body: body, digest: cache.Sum("sha256", body), mediaType: typeOCIIndex}
		if err := p.manifests.PutManifest(m.digest, m.body, m.mediaType); err != nil {
			p.log.Warn("store referrers index", zap.Stringer(keyDigest, rt.digest), zap.Error(err))
		}
		a := cache.TagAnswer{Digest: m.digest, MediaType: m.mediaType, Size: int64(len(body)), LearnedAt: p.opt.Now()}
		if err := p.tags.SetTag(rt.registry, rt.repo, tag, a); err != nil {
			p.log.Warn("record referrers answer", zap.String(keyRepo, rt.repo), zap.Stringer(keyDigest, rt.digest), zap.Error(err))
		}
		return resolved{m, cacheMiss}, nil
	})
}

// askReferrers asks upstream's referrers API and, when it has none (404),
// reads the referrers tag schema, as the spec's clients do; no index there
// either means nothing refers to the subject.
func (p *Proxy) askReferrers(ctx context.Context, up Upstream, rt route) ([]byte, error) {
	body, err := p.upstreamReferrers(ctx, up, rt)
	if err == nil || !isNotFound(err) {
		return body, err
	}
	m, err := p.fetchManifest(ctx, up, rt.repo, tagSchemaTag(rt.digest), v1.Hash{})
	if isNotFound(err) {
		return emptyReferrers, nil
	}
	if err != nil {
		return nil, err
	}
	return m.body, checkReferrers(m.body)
}

// maxReferrersPages bounds the pages of an upstream's referrers answer that
// are read; all of them together must also fit maxManifest, since the
// merged answer is kept as one index.
const maxReferrersPages = 100

// upstreamReferrers reads the upstream's referrers answer. A paged one (a
// Link to a next page) is read page after page, up to maxReferrersPages,
// and merged into one index without repeats, which the mirror then answers
// unpaged; an unpaged one is kept as sent. Only the query of a next-page
// link is followed, so paging asks nothing but this subject's referrers of
// this registry. A 404 of the first page (no referrers API) is returned as
// it is, for the tag schema.
func (p *Proxy) upstreamReferrers(ctx context.Context, up Upstream, rt route) ([]byte, error) {
	what := "referrers of " + rt.digest.String()
	var merged *v1.IndexManifest
	seen := map[v1.Hash]bool{}
	asked := map[string]bool{"": true}
	var page url.Values
	budget := maxManifest
	for i := range maxReferrersPages {
		resp, err := up.Referrers(ctx, rt.repo, rt.digest, page)
		if err != nil {
			if i > 0 && isNotFound(err) {
				return nil, fmt.Errorf("%s: %w: page %d linked to is not there", what, errUpstreamInvalid, i+1)
			}
			return nil, err
		}
		link := resp.Header.Get("Link")
		body, err := readManifest(resp, what)
		if err != nil {
			return nil, err
		}
		if budget -= len(body); budget < 0 {
			return nil, fmt.Errorf("%s: %w: its pages are larger than %d bytes", what, errUpstreamInvalid, maxManifest)
		}
		idx, err := parseReferrers(body)
		if err != nil {
			return nil, err
		}
		next, more := referrersPage(link, rt.digest)
		if i == 0 && !more {
			return body, nil
		}
		listed := idx.Manifests
		if merged == nil {
			merged = idx // the first page's other fields stay
			merged.Manifests = nil
		}
		for _, d := range listed {
			if !seen[d.Digest] {
				seen[d.Digest] = true
				merged.Manifests = append(merged.Manifests, d)
			}
		}
		if !more || asked[next.Encode()] {
			break // the last page, or one that does not move on
		}
		if i == maxReferrersPages-1 {
			p.log.Warn("referrers answer cut short", zap.String(keyUpstream, rt.registry), zap.String(keyRepo, rt.repo),
				zap.Stringer(keyDigest, rt.digest), zap.Int("pages", maxReferrersPages))
		}
		asked[next.Encode()], page = true, next
	}
	if merged.Manifests == nil {
		merged.Manifests = []v1.Descriptor{}
	}
	merged.SchemaVersion, merged.MediaType = 2, types.OCIImageIndex
	return json.Marshal(merged)
}

// referrersPage is the query of the next page a referrers answer's Link
// header names, when the link is to subject's referrers.
func referrersPage(link string, subject v1.Hash) (url.Values, bool) {
	u, ok := nextLink(link)
	if !ok || (u.Path != "" && !strings.HasSuffix(u.Path, "/referrers/"+subject.String())) {
		return nil, false
	}
	q := u.Query()
	return q, len(q) > 0
}

// parseReferrers reads an image index, the only form a referrers answer has.
func parseReferrers(body []byte) (*v1.IndexManifest, error) {
	idx, err := v1.ParseIndexManifest(bytes.NewReader(body))
	if err != nil {
		return nil, fmt.Errorf("referrers: %w: %v", errUpstreamInvalid, err)
	}
	if idx.MediaType != "" && !isIndex(string(idx.MediaType)) {
		return nil, fmt.Errorf("referrers: %w: a %s, not an index", errUpstreamInvalid, idx.MediaType)
	}
	return idx, nil
}

// checkReferrers accepts an image index, the only form a referrers answer has.
func checkReferrers(body []byte) error {
	_, err := parseReferrers(body)
	return err
}

// filterReferrers keeps the descriptors of artifactType at.
func filterReferrers(body []byte, at string) ([]byte, error) {
	idx, err := v1.ParseIndexManifest(bytes.NewReader(body))
	if err != nil {
		return nil, fmt.Errorf("referrers: %w: %v", errUpstreamInvalid, err)
	}
	kept := []v1.Descriptor{}
	for _, d := range idx.Manifests {
		if d.ArtifactType == at {
			kept = append(kept, d)
		}
	}
	idx.Manifests, idx.SchemaVersion, idx.MediaType = kept, 2, types.OCIImageIndex
	return json.Marshal(idx)
}
