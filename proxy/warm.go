package proxy

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"golang.org/x/sync/errgroup"
)

// WarmProgress is one step of a warm-up, as the admin API streams it.
type WarmProgress struct {
	Image     string `json:"image"`
	Digest    string `json:"digest,omitempty"` // what the image resolved to
	Platforms int    `json:"platforms"`
	Referrers int    `json:"referrers,omitempty"` // referrer manifests (signatures, SBOMs …), when asked for
	Blobs     int    `json:"blobs"`               // configs and layers of every platform
	BlobsDone int    `json:"blobs_done"`
	Bytes     int64  `json:"bytes"`
	BytesDone int64  `json:"bytes_done"`
	Done      bool   `json:"done,omitempty"`
	Error     string `json:"error,omitempty"`
}

// warmParallel is how many blobs of one image a warm-up fetches at once.
const warmParallel = 4

// warmEvery spaces the progress reports of a warm-up.
const warmEvery = 200 * time.Millisecond

// warmOptions are what a warm-up does beyond fetching the image.
type warmOptions struct {
	// referrers fetches the referrers of every manifest of the image too
	// (their answers, the referrer manifests and their blobs), so signatures
	// and SBOMs are there offline.
	referrers bool
	// onResolved, when not nil, is called with the image's digest before any
	// manifest under it is fetched, and again with the referrers answers
	// (also) once they are known, before any blob is fetched: pinning uses
	// it, so nothing fetched is evicted meanwhile.
	onResolved func(rt route, h v1.Hash, also []v1.Hash) error
}

// warm fetches an image into the cache ahead of its first pull: its manifest,
// for an index every platform's manifest, and every config and layer, each
// through the same one-download-per-digest flights that clients use; with
// opt.referrers, its referrers too. progress is called from one goroutine at
// a time.
func (p *Proxy) warm(ctx context.Context, image string, opt warmOptions, progress func(WarmProgress)) error {
	current := WarmProgress{Image: image} // what the next report says
	var mu sync.Mutex
	last := time.Time{}
	report := func(force bool, change func(*WarmProgress)) {
		mu.Lock()
		defer mu.Unlock()
		if change != nil {
			change(&current)
		}
		if force || time.Since(last) >= warmEvery {
			last = time.Now()
			progress(current)
		}
	}
	fail := func(err error) error {
		report(true, func(s *WarmProgress) { s.Done, s.Error = true, errMessage(err) })
		return err
	}

	rt, err := p.parseImage(image)
	if err != nil {
		return fail(err)
	}
	up := p.ups[rt.registry]
	var root resolved
	if rt.byDigest() {
		root, err = p.manifestByDigest(ctx, up, rt.repo, rt.digest)
	} else {
		root, err = p.manifestByTag(ctx, up, rt)
	}
	if err != nil {
		return fail(err)
	}
	current.Digest = root.m.digest.String()
	if opt.onResolved != nil {
		if err := opt.onResolved(rt, root.m.digest, nil); err != nil {
			return fail(err)
		}
	}
	images, subjects, err := p.platforms(ctx, up, rt.repo, root.m)
	if err != nil {
		return fail(err)
	}
	platforms := len(images)
	if opt.referrers {
		answers, referrers, more, err := p.referrersToWarm(ctx, up, rt, subjects)
		if err != nil {
			return fail(err)
		}
		current.Referrers, images = referrers, append(images, more...)
		if opt.onResolved != nil {
			if err := opt.onResolved(rt, root.m.digest, answers); err != nil {
				return fail(err)
			}
		}
	}
	seen := map[v1.Hash]bool{}
	var blobs []v1.Descriptor
	for _, m := range images {
		for _, d := range append([]v1.Descriptor{m.Config}, m.Layers...) {
			if d.MediaType.IsDistributable() && !seen[d.Digest] {
				seen[d.Digest] = true
				blobs = append(blobs, d)
			}
		}
	}
	report(true, func(s *WarmProgress) {
		s.Platforms, s.Blobs = platforms, len(blobs)
		for _, d := range blobs {
			s.Bytes += d.Size
		}
	})

	// Not WithContext: a blob that fails does not stop the others; the first
	// error is the warm-up's.
	var g errgroup.Group
	g.SetLimit(warmParallel)
	for _, d := range blobs {
		g.Go(func() error {
			var counted int64
			err := p.warmBlob(ctx, up, rt, d.Digest, func(written int64) {
				report(false, func(s *WarmProgress) { s.BytesDone += written - counted })
				counted = written
			})
			if err != nil {
				return fmt.Errorf("blob %s: %w", d.Digest, err)
			}
			report(false, func(s *WarmProgress) { s.BytesDone += d.Size - counted; s.BlobsDone++ })
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return fail(err)
	}
	report(true, func(s *WarmProgress) { s.Done = true })
	return nil
}

// platforms returns the image manifests of m: m itself, or every platform's
// manifest of an index (build attestations left out: no client runs them);
// and the digests of every manifest it went through, m's included.
func (p *Proxy) platforms(ctx context.Context, up Upstream, repo string, m manifest) ([]*v1.Manifest, []v1.Hash, error) {
	if !isIndex(m.mediaType) {
		im, err := v1.ParseManifest(bytes.NewReader(m.body))
		if err != nil {
			return nil, nil, fmt.Errorf("%w: manifest %s: %w", errUpstreamInvalid, m.digest, err)
		}
		return []*v1.Manifest{im}, []v1.Hash{m.digest}, nil
	}
	idx, err := v1.ParseIndexManifest(bytes.NewReader(m.body))
	if err != nil {
		return nil, nil, fmt.Errorf("%w: index %s: %w", errUpstreamInvalid, m.digest, err)
	}
	var out []*v1.Manifest
	digests := []v1.Hash{m.digest}
	for _, d := range idx.Manifests {
		if d.Platform != nil && d.Platform.OS == "unknown" {
			continue
		}
		res, err := p.manifestByDigest(ctx, up, repo, d.Digest)
		if err != nil {
			return nil, nil, err
		}
		ims, ds, err := p.platforms(ctx, up, repo, res.m)
		if err != nil {
			return nil, nil, err
		}
		out, digests = append(out, ims...), append(digests, ds...)
	}
	return out, digests, nil
}

// referrersDepth bounds how far warm-ups and checks follow referrers: the
// image's own (a signature, an SBOM), then theirs (the SBOM's signature).
const referrersDepth = 2

// referrersToWarm resolves the referrers answers of subjects, kept as a
// client's referrers request keeps them, and fetches the referrer manifests
// they list, and the referrers of those in turn, to referrersDepth. It
// returns the answers' digests (what a pin keeps them by), how many referrer
// manifests there are, and their image manifests (whose blobs the warm-up
// fetches).
func (p *Proxy) referrersToWarm(ctx context.Context, up Upstream, rt route, subjects []v1.Hash) ([]v1.Hash, int, []*v1.Manifest, error) {
	var answers []v1.Hash
	var images []*v1.Manifest
	seen := map[v1.Hash]bool{}
	for range referrersDepth {
		var next []v1.Hash
		for _, s := range subjects {
			res, err := p.referrers(ctx, up, route{kind: routeReferrers, registry: rt.registry, repo: rt.repo, digest: s})
			if err != nil {
				return nil, 0, nil, fmt.Errorf("referrers of %s: %w", s, err)
			}
			if !slices.Contains(answers, res.m.digest) { // the empty answer is one for many subjects
				answers = append(answers, res.m.digest)
			}
			idx, err := v1.ParseIndexManifest(bytes.NewReader(res.m.body))
			if err != nil {
				return nil, 0, nil, fmt.Errorf("%w: referrers of %s: %w", errUpstreamInvalid, s, err)
			}
			for _, d := range idx.Manifests {
				if seen[d.Digest] {
					continue
				}
				seen[d.Digest] = true
				m, err := p.manifestByDigest(ctx, up, rt.repo, d.Digest)
				if err != nil {
					return nil, 0, nil, fmt.Errorf("referrer %s of %s: %w", d.Digest, s, err)
				}
				ims, ds, err := p.platforms(ctx, up, rt.repo, m.m)
				if err != nil {
					return nil, 0, nil, err
				}
				images, next = append(images, ims...), append(next, ds...)
			}
		}
		subjects = next
	}
	return answers, len(seen), images, nil
}

// warmBlob brings one blob into the store through its flight.
func (p *Proxy) warmBlob(ctx context.Context, up Upstream, rt route, h v1.Hash, onWrite func(int64)) error {
	for range 3 {
		if p.blobs.Has(h) {
			return nil
		}
		fl, _ := p.join(up, route{kind: routeBlob, registry: rt.registry, repo: rt.repo, digest: h})
		if fl == nil {
			continue // it landed between Has and join
		}
		err := fl.wait(ctx, onWrite)
		if errors.Is(err, errPassThrough) {
			if h := fl.claim(fl.progress().written); h != nil {
				h.end()
			}
			return fmt.Errorf("no room in the cache for it (REGMIRROR_MAX_SIZE, REGMIRROR_MIN_FREE)")
		}
		return err
	}
	return nil
}

// wait blocks until the flight ends, telling onWrite how much it has written.
func (fl *flight) wait(ctx context.Context, onWrite func(int64)) error {
	for {
		pr := fl.progress()
		onWrite(pr.written)
		if pr.done {
			return pr.err
		}
		select {
		case <-pr.changed:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}
