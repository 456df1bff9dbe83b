package proxy

import (
	"cmp"
	"slices"
	"sync"
	"time"
)

// Bounds of what the status page remembers of pulls.
const (
	recentPulls   = 20   // the last pulls shown
	topPulls      = 10   // the most pulled repositories shown
	trackedRepos  = 1000 // repositories counted; past that, the least pulled gives way
	pullClientLen = 64   // a client address longer than this is cut
)

// pull is one manifest request by tag: a client resolving an image. Pulls
// by digest are not counted, because a client fetches several manifests by
// digest for one image (the index, then its platform's manifest).
type pull struct {
	At     time.Time
	Image  string // registry/repo:tag
	Client string // the client's address, without its port
	Cache  string // the cache outcome
}

// repoPulls is a repository and how often it was pulled.
type repoPulls struct {
	Repo  string // registry/repo
	Pulls int64
}

// pullLog keeps the last pulls in a ring and counts pulls per repository.
// The counts are bounded by the "space-saving" rule: when a new repository
// arrives with the table full, it takes the place of the least pulled one
// and inherits its count, so a heavily pulled repository is never lost and
// a count is never under the truth, and never over it by more than the
// smallest count in the table. Below trackedRepos repositories, counts are exact.
// Pulls are kept by their parts, which the request's route holds already,
// and named only when the status page reads them: nothing is allocated per pull.
type pullLog struct {
	mu     sync.Mutex
	ring   [recentPulls]pullEntry
	next   int // where the next pull goes
	n      int // pulls in the ring
	counts map[pulledRepo]int64
}

type pulledRepo struct{ registry, repo string }

func (r pulledRepo) String() string { return r.registry + "/" + r.repo }

type pullEntry struct {
	at                   time.Time
	repo                 pulledRepo
	tag, client, outcome string
}

func newPullLog() *pullLog { return &pullLog{counts: make(map[pulledRepo]int64)} }

func (l *pullLog) add(registry, repo, tag, client, outcome string, at time.Time) {
	if len(client) > pullClientLen {
		client = client[:pullClientLen]
	}
	name := pulledRepo{registry, repo}
	l.mu.Lock()
	defer l.mu.Unlock()
	l.ring[l.next] = pullEntry{at: at, repo: name, tag: tag, client: client, outcome: outcome}
	l.next = (l.next + 1) % len(l.ring)
	l.n = min(l.n+1, len(l.ring))

	if _, ok := l.counts[name]; !ok && len(l.counts) >= trackedRepos {
		least, leastN := pulledRepo{}, int64(-1)
		for r, c := range l.counts {
			if leastN < 0 || c < leastN {
				least, leastN = r, c
			}
		}
		delete(l.counts, least)
		l.counts[name] = leastN
	}
	l.counts[name]++
}

// recent returns the last pulls, newest first.
func (l *pullLog) recent() []pull {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := make([]pull, 0, l.n)
	for i := 1; i <= l.n; i++ {
		e := l.ring[(l.next-i+len(l.ring))%len(l.ring)]
		out = append(out, pull{At: e.at, Image: e.repo.String() + ":" + e.tag, Client: e.client, Cache: e.outcome})
	}
	return out
}

// top returns the n most pulled repositories, most pulled first.
func (l *pullLog) top(n int) []repoPulls {
	l.mu.Lock()
	out := make([]repoPulls, 0, len(l.counts))
	for r, c := range l.counts {
		out = append(out, repoPulls{r.String(), c})
	}
	l.mu.Unlock()
	slices.SortFunc(out, func(a, b repoPulls) int {
		return cmp.Or(cmp.Compare(b.Pulls, a.Pulls), cmp.Compare(a.Repo, b.Repo))
	})
	return out[:min(n, len(out))]
}
