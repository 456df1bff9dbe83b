package proxy

import (
	"errors"
	"net/http"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
)

// tierHeaders are the headers of an upstream's manifest answer that the
// mirror's own clients must see too when the upstream is itself a mirror (a
// lower tier): its Warning that the answer is stale, and the pull quota of
// the registry behind it.
type tierHeaders struct {
	warning   string // a Warning: 299 ..., verbatim
	rateLimit http.Header
}

// rateLimitHeaders are Docker Hub's quota headers, which mirrors pass on.
var rateLimitHeaders = []string{"Ratelimit-Limit", "Ratelimit-Remaining", "Docker-Ratelimit-Source"}

func tierOf(h http.Header) tierHeaders {
	var t tierHeaders
	for _, w := range h.Values("Warning") {
		if strings.HasPrefix(strings.TrimSpace(w), "299 ") {
			t.warning = strings.TrimSpace(w)
			break
		}
	}
	for _, k := range rateLimitHeaders {
		if v := h.Get(k); v != "" {
			if t.rateLimit == nil {
				t.rateLimit = http.Header{}
			}
			t.rateLimit.Set(k, v)
		}
	}
	return t
}

// stale reports whether the lower tier said its answer may be out of date.
func (t tierHeaders) stale() bool { return t.warning != "" }

// passOn sets the headers on a response to our client. A lower tier's
// Warning replaces ours: it says where the answer went stale.
func (t tierHeaders) passOn(h http.Header) {
	if t.warning != "" {
		h.Set("Warning", t.warning)
	}
	for k, v := range t.rateLimit {
		h[k] = v
	}
}

// expired is a LearnedAt that makes a tag answer due for revalidation at once.
func (p *Proxy) expired() time.Time { return p.opt.Now().Add(-p.opt.TagTTL - time.Second) }

// passQuota puts the upstream's quota headers on a 429 passed on to our
// client: the one answer where they say most (how long until pulls work).
func passQuota(h http.Header, up Upstream, err error) {
	if te, ok := errors.AsType[*transport.Error](err); !ok || te.StatusCode != http.StatusTooManyRequests {
		return
	}
	if rl, ok := up.RateLimit(); ok {
		for k, v := range rl.Header {
			h[k] = v
		}
	}
}
