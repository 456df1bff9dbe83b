package proxy

import (
	"context"

	"github.com/regmirror/regmirror/cache"
)

// sharedTag answers a tag whose own answer is missing or past its TTL from
// the fleet's answer in the bucket, when another replica learned or
// revalidated it within the TTL, or is revalidating it now (the last answer
// is served meanwhile): so N replicas cost one upstream request per TTL for
// a tag, not N. ok false means this replica asks upstream itself.
func (p *Proxy) sharedTag(ctx context.Context, up Upstream, rt route) (resolved, bool) {
	a, turn := p.tags.ShareTag(ctx, rt.registry, rt.repo, rt.tag, p.opt.TagTTL)
	if turn == cache.AskUpstream {
		return resolved{}, false
	}
	res, err := p.manifestByDigest(ctx, up, rt.repo, a.Digest)
	if err != nil {
		return resolved{}, false
	}
	return res, true
}
