package proxy

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// CheckPath is the endpoint that tells whether cached images would pull
// completely while the upstream is unreachable: GET CheckPath?image=nginx:1.25&image=…,
// with &referrers=1 their referrers (signatures, SBOMs …) too.
const CheckPath = "/_regmirror/check"

// CheckResult is the offline readiness of one image.
type CheckResult struct {
	Image      string        `json:"image"`
	Registry   string        `json:"registry,omitempty"`
	Repository string        `json:"repository,omitempty"`
	Digest     string        `json:"digest,omitempty"`
	Complete   bool          `json:"complete"`
	Present    int           `json:"present"`             // manifests, configs and layers found in the cache
	Referrers  int           `json:"referrers,omitempty"` // referrer manifests found, when asked for
	Missing    []MissingPart `json:"missing,omitempty"`
	Problem    string        `json:"problem,omitempty"` // why nothing could be checked

	subjects []v1.Hash // the manifests walked, whose referrers are checked
}

// MissingPart is content an offline pull of the image would need but the
// cache does not hold.
type MissingPart struct {
	Kind     string `json:"kind"` // manifest, config, layer, or referrers (no answer kept for the digest)
	Digest   string `json:"digest"`
	Platform string `json:"platform,omitempty"`
}

func (p *Proxy) serveCheck(w http.ResponseWriter, r *http.Request) error {
	images := r.URL.Query()["image"]
	if len(images) == 0 || len(images) > 100 {
		return &ociError{status: http.StatusBadRequest, code: "NAME_INVALID", message: "want 1 to 100 image= parameters"}
	}
	referrers, err := withReferrers(r)
	if err != nil {
		return err
	}
	results := make([]CheckResult, 0, len(images))
	for _, img := range images {
		results = append(results, p.Check(r.Context(), img, referrers))
	}
	return writeJSON(w, r, http.StatusOK, results)
}

// Check walks an image in the cache alone, never asking upstream: the tag's
// last answer, the index and every platform's manifest, config and layers;
// with referrers, the kept referrers answer of each of those manifests and
// every referrer manifest it lists, walked the same way (to referrersDepth).
func (p *Proxy) Check(ctx context.Context, image string, referrers bool) CheckResult {
	res := CheckResult{Image: image}
	rt, err := p.parseImage(image)
	if err != nil {
		res.Problem = errMessage(err)
		return res
	}
	res.Registry, res.Repository = rt.registry, rt.repo
	h := rt.digest
	if !rt.byDigest() {
		a, err := p.tags.Tag(rt.registry, rt.repo, rt.tag)
		if err != nil {
			res.Problem = "this tag was never pulled through the mirror"
			return res
		}
		h = a.Digest
	}
	res.Digest = h.String()
	p.walk(ctx, h, "", &res)
	if referrers {
		p.walkReferrers(ctx, rt, &res)
	}
	res.Complete = len(res.Missing) == 0
	return res
}

// walkReferrers walks the referrers of the manifests walked so far, and
// theirs, to referrersDepth, as a warm-up with referrers fetched them.
func (p *Proxy) walkReferrers(ctx context.Context, rt route, res *CheckResult) {
	seen := map[v1.Hash]bool{}
	for range referrersDepth {
		subjects := res.subjects
		res.subjects = nil
		for _, s := range subjects {
			idx, err := p.keptReferrers(ctx, rt, s)
			if err != nil {
				res.Missing = append(res.Missing, MissingPart{Kind: "referrers", Digest: s.String()})
				continue
			}
			for _, d := range idx.Manifests {
				if !seen[d.Digest] {
					seen[d.Digest] = true
					res.Referrers++
					p.walk(ctx, d.Digest, "referrer of "+s.String(), res)
				}
			}
		}
	}
}

// keptReferrers is the referrers answer kept for subject, from the cache alone.
func (p *Proxy) keptReferrers(ctx context.Context, rt route, subject v1.Hash) (*v1.IndexManifest, error) {
	a, err := p.tags.Tag(rt.registry, rt.repo, referrersTag(subject))
	if err != nil {
		return nil, err
	}
	body, _, err := p.manifests.Manifest(ctx, a.Digest, maxManifest)
	if err != nil {
		return nil, err
	}
	return v1.ParseIndexManifest(bytes.NewReader(body))
}

func (p *Proxy) walk(ctx context.Context, h v1.Hash, platform string, res *CheckResult) {
	body, info, err := p.manifests.Manifest(ctx, h, maxManifest)
	if err != nil {
		res.Missing = append(res.Missing, MissingPart{Kind: "manifest", Digest: h.String(), Platform: platform})
		return
	}
	res.Present++
	res.subjects = append(res.subjects, h)
	if isIndex(manifestType(info.MediaType, body)) {
		idx, err := v1.ParseIndexManifest(bytes.NewReader(body))
		if err != nil {
			res.Missing = append(res.Missing, MissingPart{Kind: "manifest", Digest: h.String(), Platform: platform})
			return
		}
		for _, d := range idx.Manifests {
			if d.Platform != nil && d.Platform.OS == "unknown" {
				continue // build attestations: no client pulls them to run an image
			}
			p.walk(ctx, d.Digest, platformOf(d.Platform), res)
		}
		return
	}
	m, err := v1.ParseManifest(bytes.NewReader(body))
	if err != nil {
		res.Missing = append(res.Missing, MissingPart{Kind: "manifest", Digest: h.String(), Platform: platform})
		return
	}
	p.need(m.Config, "config", platform, res)
	for _, l := range m.Layers {
		if l.MediaType.IsDistributable() {
			p.need(l, "layer", platform, res)
		}
	}
}

func (p *Proxy) need(d v1.Descriptor, kind, platform string, res *CheckResult) {
	if p.blobs.Has(d.Digest) {
		res.Present++
		return
	}
	res.Missing = append(res.Missing, MissingPart{Kind: kind, Digest: d.Digest.String(), Platform: platform})
}

func platformOf(pl *v1.Platform) string {
	if pl == nil {
		return ""
	}
	s := pl.OS + "/" + pl.Architecture
	if pl.Variant != "" {
		s += "/" + pl.Variant
	}
	return s
}

// parseImage reads an image reference as a client writes it (nginx,
// nginx:1.25, ghcr.io/owner/app@sha256:…) with the mirror's own rules: a
// host-like first component names a configured registry, else the default.
func (p *Proxy) parseImage(image string) (route, error) {
	ref, digest, _ := strings.Cut(image, "@")
	path, tag := ref, ""
	if i := strings.LastIndexByte(ref, ':'); i > strings.LastIndexByte(ref, '/') {
		path, tag = ref[:i], ref[i+1:]
	}
	registry, _, name, err := pickRegistry("", path, p)
	if err != nil {
		return route{}, err
	}
	rt := route{kind: routeManifest, registry: registry}
	if rt.repo, err = repoName(registry, name); err != nil {
		return route{}, err
	}
	switch {
	case digest != "":
		if rt.digest, err = parseDigest(digest); err != nil {
			return route{}, err
		}
	case tag == "":
		rt.tag = "latest"
	case isTag(tag):
		rt.tag = tag
	default:
		return route{}, errTagInvalid(tag)
	}
	return rt, nil
}

// errMessage is an error's client-facing text.
func errMessage(err error) string {
	if oe, ok := errors.AsType[*ociError](err); ok {
		return oe.message
	}
	return fmt.Sprint(err)
}
