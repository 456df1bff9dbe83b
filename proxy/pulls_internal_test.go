package proxy

// An internal test: the bound on tracked repositories needs more distinct
// repositories than a black-box test should push through a registry.

import (
	"fmt"
	"testing"
	"time"
)

func TestPullCountsStayBoundedAndKeepTheHeavyHitters(t *testing.T) {
	l := newPullLog()
	at := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	for range 50 {
		l.add("docker.io", "library/hot", "1", "10.0.0.1", cacheHit, at)
	}
	for i := range 3 * trackedRepos {
		l.add("docker.io", fmt.Sprintf("cold/r%d", i), "1", "10.0.0.2", cacheMiss, at)
	}
	if n := len(l.counts); n != trackedRepos {
		t.Errorf("tracked repositories = %d, want the bound %d", n, trackedRepos)
	}
	top := l.top(topPulls)
	if len(top) != topPulls || top[0] != (repoPulls{"docker.io/library/hot", 50}) {
		t.Errorf("top = %v, want docker.io/library/hot first with its 50 pulls", top)
	}
	if n := len(l.recent()); n != recentPulls {
		t.Errorf("recent pulls = %d, want the bound %d", n, recentPulls)
	}
	if last := l.recent()[0].Image; last != fmt.Sprintf("docker.io/cold/r%d:1", 3*trackedRepos-1) {
		t.Errorf("newest recent pull = %s", last)
	}
}
