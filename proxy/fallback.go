package proxy

import (
	"fmt"
)

// FellBack implements upstream.FallbackObserver.
func (m *Metrics) FellBack(registry, fallback, op string) {
	m.fallbacks.WithLabelValues(registry, fallback, op).Inc()
}

func tagKey(rt route) string { return rt.registry + "/" + rt.repo + ":" + rt.tag }

// answeredBy is the Warning on a tag answer that came from a fallback source.
func answeredBy(fallback string) string { return fmt.Sprintf(`299 - "answered by %s"`, fallback) }

// learnFromFallback records a tag answer a fallback gave. A fallback is
// trusted for content by digest (it is verified) but only provisionally for
// what a tag points to: the answer carries a Warning naming the fallback, and
// is recorded as past its TTL, so the upstream is asked again on the next
// request and its answer replaces the fallback's as soon as it can give one.
func (p *Proxy) learnFromFallback(rt route, m *manifest) {
	m.tier.warning = answeredBy(m.fallback)
	p.learnTagAt(rt, *m, p.expired())
	p.fellBack.Add(tagKey(rt), m.fallback)
}

// markFallback puts the fallback's Warning on a cached tag answer served
// while the upstream is still unreachable, when a fallback gave it.
func (p *Proxy) markFallback(rt route, m *manifest) {
	if name, ok := p.fellBack.Get(tagKey(rt)); ok {
		m.tier.warning = answeredBy(name)
	}
}
