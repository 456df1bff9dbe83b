package proxy_test

import (
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/regmirror/regmirror/cache"
	"github.com/regmirror/regmirror/test/regtest"
)

// withReplica makes the env's store the replica name of a fleet on its
// bucket (withBucket), its own rounds out of the way (an hour apart).
func withReplica(name string) envOption {
	return func(c *envConfig) { c.store.Fleet = &cache.FleetOptions{Replica: name, Interval: time.Hour} }
}

// viaUpstreamOf serves the env's upstream from first's registry, counted in
// first's counter too: replicas of one fleet ask one registry.
func viaUpstreamOf(first *env) envOption {
	return withUpstreamFault(func(http.Handler) http.Handler { return first.counts })
}

// A fleet of three replicas on one bucket, one registry behind them: a tag
// one replica learned is answered by the others without asking upstream,
// and past each TTL one replica's HEAD revalidates it for all of them,
// whether they ask one after another (round robin) or all at once.
func TestFleetSharesTagRevalidation(t *testing.T) {
	srv := regtest.Versity(t)
	name := srv.Bucket(t, "shared-tags")
	a := newEnv(t, withBucket(bucketOf(t, srv, name), 0), withReplica("a"), withTTL(time.Minute))
	b := newEnv(t, withBucket(bucketOf(t, srv, name), 0), withReplica("b"), withTTL(time.Minute), viaUpstreamOf(a))
	c := newEnv(t, withBucket(bucketOf(t, srv, name), 0), withReplica("c"), withTTL(time.Minute), viaUpstreamOf(a))
	replicas := []*env{a, b, c}
	img, err := random.Image(1024, 1)
	if err != nil {
		t.Fatal(err)
	}
	a.push("library/app:1", img)
	const path = "/v2/library/app/manifests/1"
	pushHeads := a.counts.Count(http.MethodHead, path) // the push's own
	heads := func() int { return a.counts.Count(http.MethodHead, path) - pushHeads }
	gets := func() int { return a.counts.Count(http.MethodGet, path) }
	get := func(e *env) {
		t.Helper()
		resp, _ := e.do(http.MethodGet, path, nil)
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("GET %s: status %d", path, resp.StatusCode)
		}
		e.waitUploaded()
	}
	advance := func(d time.Duration) {
		for _, e := range replicas {
			e.clock.Advance(d)
		}
	}

	get(a)
	get(b)
	get(c)
	if gets() != 1 || heads() != 0 {
		t.Fatalf("a cold tag on 3 replicas: %d GETs and %d HEADs by tag upstream, want 1 and 0", gets(), heads())
	}
	for ttl := 1; ttl <= 3; ttl++ {
		advance(time.Minute + time.Second)
		for i := range 6 {
			get(replicas[i%3])
		}
		if heads() != ttl {
			t.Fatalf("after %d TTLs asked in turn: %d HEADs upstream, want %d", ttl, heads(), ttl)
		}
	}
	advance(time.Minute + time.Second)
	var wg sync.WaitGroup
	for i := range 9 {
		wg.Go(func() { get(replicas[i%3]) })
	}
	wg.Wait()
	if heads() != 4 || gets() != 1 {
		t.Fatalf("after a TTL asked at once on all: %d HEADs and %d GETs by tag upstream, want 4 and 1", heads(), gets())
	}
}

// A replica that never asked for a tag serves it with every upstream down,
// from the answer another replica put in the bucket, and past the TTL still
// (marked stale).
func TestFleetSharedTagOffline(t *testing.T) {
	srv := regtest.Versity(t)
	name := srv.Bucket(t, "shared-offline")
	a := newEnv(t, withBucket(bucketOf(t, srv, name), 0), withReplica("a"), withTTL(time.Minute))
	img, err := random.Image(4096, 2)
	if err != nil {
		t.Fatal(err)
	}
	down := withUpstreamFault(func(http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { http.Error(w, "down", http.StatusServiceUnavailable) })
	})
	// d starts first: its index, rebuilt from the bucket at start, knows nothing.
	d := newEnv(t, withBucket(bucketOf(t, srv, name), 0), withReplica("d"), withTTL(time.Minute), down)
	if err := d.store.AwaitCounts(t.Context()); err != nil {
		t.Fatal(err)
	}
	a.push("library/app:1", img)
	pullAll(t, a, "library/app:1")
	a.waitUploaded()
	if resp, _ := d.do(http.MethodGet, "/v2/library/app/manifests/1", nil); resp.StatusCode != http.StatusOK || resp.Header.Get("Warning") != "" {
		t.Fatalf("within the TTL, upstream down: status %d, Warning %q; want a plain 200", resp.StatusCode, resp.Header.Get("Warning"))
	}
	pullAll(t, d, "library/app:1") // and every blob of it, from the bucket
	d.clock.Advance(2 * time.Minute)
	resp, _ := d.do(http.MethodGet, "/v2/library/app/manifests/1", nil)
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Warning") == "" {
		t.Fatalf("past the TTL, upstream down: status %d, Warning %q; want 200 with a Warning", resp.StatusCode, resp.Header.Get("Warning"))
	}
	if n := d.counts.Total(); n == 0 {
		t.Fatal("the offline replica never asked its upstream past the TTL")
	}
}

// Each replica's status page and /metrics show its view of the fleet: who
// runs the evictor (one of them), the replicas seen, the bucket's usage and
// the tag answers it took from the others.
func TestFleetStatusAndMetrics(t *testing.T) {
	srv := regtest.Versity(t)
	name := srv.Bucket(t, "fleet-status")
	a := newEnv(t, withBucket(bucketOf(t, srv, name), 0), withReplica("a"), withBudget(1<<30))
	b := newEnv(t, withBucket(bucketOf(t, srv, name), 0), withReplica("b"), withBudget(1<<30), viaUpstreamOf(a))
	img, err := random.Image(1024, 1)
	if err != nil {
		t.Fatal(err)
	}
	a.push("library/app:1", img)
	pullAll(t, a, "library/app:1")
	a.waitUploaded()
	pullAll(t, b, "library/app:1")
	looked := func(e *env) bool { st, _ := e.store.Fleet(); return !st.Viewed.IsZero() }
	deadline := time.Now().Add(20 * time.Second)
	for !looked(a) || !looked(b) {
		if time.Now().After(deadline) {
			t.Fatal("the replicas never looked at their fleet")
		}
		time.Sleep(5 * time.Millisecond)
	}
	here := 0.0
	var evictor string
	for _, e := range []*env{a, b} {
		m := e.scrape()
		here += m.Value("regmirror_fleet_evictor_here")
		st, _ := e.store.Fleet()
		if st.Evictor == "" || (evictor != "" && st.Evictor != evictor) || !m.Has("regmirror_fleet_evictor", "replica", st.Evictor) {
			t.Errorf("%s sees evictor %q (the other saw %q)", st.Replica, st.Evictor, evictor)
		}
		evictor = st.Evictor
		if !m.Has("regmirror_fleet_bucket_bytes") || !m.Has("regmirror_fleet_replicas_recent") || !m.Has("regmirror_fleet_journals_waiting") {
			t.Errorf("%s: fleet metrics missing", st.Replica)
		}
		resp, page := e.do(http.MethodGet, "/", nil)
		if resp.StatusCode != http.StatusOK || !strings.Contains(string(page), `id="fleet"`) || !strings.Contains(string(page), "runs the evictor") {
			t.Errorf("%s: status page without the fleet card: %d", st.Replica, resp.StatusCode)
		}
	}
	if here != 1 {
		t.Errorf("regmirror_fleet_evictor_here sums to %v over the replicas, want 1", here)
	}
	if m := b.scrape(); m.Value("regmirror_fleet_shared_tag_answers_total") != 1 {
		t.Errorf("b took %v tag answers from the bucket, want 1", m.Value("regmirror_fleet_shared_tag_answers_total"))
	}
}
