package upstream

import (
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"
)

// RateLimit is the latest pull quota an upstream reported (Docker Hub sends
// "ratelimit-limit: 100;w=21600", "ratelimit-remaining: 76;w=21600" and
// "docker-ratelimit-source").
type RateLimit struct {
	Limit     int
	Remaining int
	Source    string
	At        time.Time
	// Header is the quota headers as the registry sent them
	// (Ratelimit-Limit, Ratelimit-Remaining, Docker-Ratelimit-Source), for
	// a mirror to pass on to its own clients.
	Header http.Header
}

// rateLimits keeps the latest RateLimit and warns, at most every few minutes,
// when less than a tenth of the quota is left.
type rateLimits struct {
	mu         sync.Mutex
	latest     RateLimit
	known      bool
	lastWarned time.Time
}

const rateWarnEvery = 5 * time.Minute

func (r *rateLimits) observe(h http.Header, registry string, log *zap.Logger) {
	limit, okL := quota(h.Get("Ratelimit-Limit"))
	remaining, okR := quota(h.Get("Ratelimit-Remaining"))
	if !okL || !okR {
		return
	}
	now := time.Now()
	r.mu.Lock()
	raw := http.Header{}
	for _, k := range []string{"Ratelimit-Limit", "Ratelimit-Remaining", "Docker-Ratelimit-Source"} {
		if v := h.Get(k); v != "" {
			raw.Set(k, v)
		}
	}
	r.latest = RateLimit{Limit: limit, Remaining: remaining, Source: h.Get("Docker-Ratelimit-Source"), At: now, Header: raw}
	r.known = true
	warn := remaining*10 < limit && now.Sub(r.lastWarned) >= rateWarnEvery
	if warn {
		r.lastWarned = now
	}
	r.mu.Unlock()
	if warn {
		log.Warn("upstream pull quota running low", zap.String("upstream", registry),
			zap.Int("remaining", remaining), zap.Int("limit", limit))
	}
}

// quota parses "76;w=21600" (or "76") into 76.
func quota(v string) (int, bool) {
	v, _, _ = strings.Cut(v, ";")
	n, err := strconv.Atoi(strings.TrimSpace(v))
	return n, err == nil && n >= 0
}

// RateLimit returns the latest quota the upstream reported, if it ever did.
func (c *Client) RateLimit() (RateLimit, bool) {
	c.limits.mu.Lock()
	defer c.limits.mu.Unlock()
	return c.limits.latest, c.limits.known
}
