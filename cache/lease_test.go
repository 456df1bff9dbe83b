package cache

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/regmirror/regmirror/test/regtest"
	"go.uber.org/zap/zaptest"
)

// leaseTTL is the shortest a lease may be, so the tests that wait for one to
// go stale wait as little as the store's one-second clock allows.
const leaseTTL = MinLeaseTTL

// TestLeaseOneWinnerAmongRacers: replicas racing for one name through the
// real store's If-None-Match: * get one holder; every other is told who.
func TestLeaseOneWinnerAmongRacers(t *testing.T) {
	srv := testVersity(t)
	o := s3Objects(t, srv, S3Config{Bucket: srv.Bucket(t, "lease-race"), Prefix: "m"})
	ctx := context.Background()

	const racers = 16
	var (
		wg     sync.WaitGroup
		mu     sync.Mutex
		won    []*Lease
		holder = map[string]int{}
	)
	for i := range racers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			me := LeaseHolder{ID: fmt.Sprintf("replica-%d", i), URL: fmt.Sprintf("http://10.0.0.%d:5000", i), TTL: 30 * time.Second}
			l, held, err := o.AcquireLease(ctx, "sha256:abc", me)
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err == nil:
				won = append(won, l)
			case errors.Is(err, ErrLeaseHeld):
				holder[held.ID+" "+held.URL]++
			default:
				t.Errorf("%s: %v", me.ID, err)
			}
		}()
	}
	wg.Wait()
	if len(won) != 1 {
		t.Fatalf("%d replicas won the lease, want 1", len(won))
	}
	w := won[0].holder
	if len(holder) != 1 || holder[w.ID+" "+w.URL] != racers-1 {
		t.Fatalf("losers were told %v, want all %d told %s at %s", holder, racers-1, w.ID, w.URL)
	}
	if got, stale, err := o.ReadLease(ctx, "sha256:abc"); err != nil || stale || got != w {
		t.Fatalf("read lease: %+v stale=%v %v; want %+v fresh", got, stale, err, w)
	}
	if keys := bucketKeys(t, srv, "lease-race"); fmt.Sprint(keys) != "[m/leases/sha256:abc]" {
		t.Fatalf("bucket holds %q", keys)
	}
	if err := won[0].Release(ctx); err != nil {
		t.Fatal(err)
	}
	if keys := bucketKeys(t, srv, "lease-race"); len(keys) != 0 {
		t.Fatalf("after release the bucket holds %q", keys)
	}
	select {
	case <-won[0].Lost():
	default:
		t.Fatal("a released lease is still counted on")
	}
	// Free again: the next one to ask gets it at once.
	l, _, err := o.AcquireLease(ctx, "sha256:abc", LeaseHolder{ID: "late", TTL: leaseTTL})
	if err != nil {
		t.Fatalf("acquire after release: %v", err)
	}
	l.Release(ctx)
}

// TestLeaseTakeoverWhenStale: a holder that stops renewing (killed) loses
// its lease once it is stale by the store's clock; the new holder's lease is
// not touched by the old one's renewal or release, and while a holder renews
// nobody takes it over.
func TestLeaseTakeoverWhenStale(t *testing.T) {
	srv := testVersity(t)
	o := s3Objects(t, srv, S3Config{Bucket: srv.Bucket(t, "lease-stale")})
	ctx := context.Background()

	a, _, err := o.AcquireLease(ctx, "evictor", LeaseHolder{ID: "a", URL: "http://a", TTL: leaseTTL})
	if err != nil {
		t.Fatal(err)
	}
	// While a renews, b is refused for well over a TTL.
	for end := time.Now().Add(2*leaseTTL + time.Second); time.Now().Before(end); {
		if l, _, err := o.AcquireLease(ctx, "evictor", LeaseHolder{ID: "b", TTL: leaseTTL}); !errors.Is(err, ErrLeaseHeld) {
			if l != nil {
				l.Release(ctx)
			}
			t.Fatalf("acquire of a renewed lease: %v, want ErrLeaseHeld", err)
		}
		time.Sleep(100 * time.Millisecond)
	}

	a.stopRenewing() // as when its process is killed
	var b *Lease
	for b == nil {
		l, held, err := o.AcquireLease(ctx, "evictor", LeaseHolder{ID: "b", URL: "http://b", TTL: leaseTTL})
		switch {
		case err == nil:
			b = l
		case errors.Is(err, ErrLeaseHeld) && held.ID == "a":
			time.Sleep(100 * time.Millisecond)
		default:
			t.Fatalf("acquire: %+v %v", held, err)
		}
	}
	defer b.Release(ctx)
	if err := a.Renew(ctx); !errors.Is(err, ErrLeaseLost) {
		t.Fatalf("renewal of a lease taken over: %v, want ErrLeaseLost", err)
	}
	select {
	case <-a.Lost():
	default:
		t.Fatal("a's lease was taken over but a still counts on it")
	}
	if err := a.Release(ctx); err != nil {
		t.Fatal(err)
	}
	if got, _, err := o.ReadLease(ctx, "evictor"); err != nil || got.ID != "b" {
		t.Fatalf("after a's release the lease says %+v, %v; want b's", got, err)
	}
}

// TestLeaseDamagedIsTakenOverByOne: an object under leases/ that is no
// lease (a stray write) does not block the name for ever, and of replicas
// racing to take it over (If-Match on its ETag) one wins.
func TestLeaseDamagedIsTakenOverByOne(t *testing.T) {
	srv := testVersity(t)
	bucket := srv.Bucket(t, "lease-damaged")
	o := s3Objects(t, srv, S3Config{Bucket: bucket})
	ctx := context.Background()
	body := strings.NewReader("not json")
	if _, err := srv.Admin.PutObject(ctx, bucket, "leases/x", body, body.Size(), minio.PutObjectOptions{}); err != nil {
		t.Fatal(err)
	}
	var (
		wg  sync.WaitGroup
		mu  sync.Mutex
		won []*Lease
	)
	for i := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			l, _, err := o.AcquireLease(ctx, "x", LeaseHolder{ID: fmt.Sprint(i), TTL: leaseTTL})
			if err != nil && !errors.Is(err, ErrLeaseHeld) {
				t.Errorf("acquire over a damaged lease: %v", err)
			}
			if l != nil {
				mu.Lock()
				won = append(won, l)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if len(won) != 1 {
		t.Fatalf("%d replicas took over the damaged lease, want 1", len(won))
	}
	if err := won[0].Release(ctx); err != nil {
		t.Fatal(err)
	}
	if _, _, err := o.AcquireLease(ctx, "x", LeaseHolder{ID: "a", TTL: time.Second}); err == nil || errors.Is(err, ErrLeaseHeld) {
		t.Fatalf("a TTL under the store's clock resolution: %v, want refused", err)
	}
}

// TestLeaseConflictIsRetried: AWS answers 409 ConditionalRequestConflict to
// a conditional write that raced another; the lease tries again instead of
// reporting the store unavailable.
func TestLeaseConflictIsRetried(t *testing.T) {
	srv := testVersity(t)
	bucket := srv.Bucket(t, "lease-conflict")
	target, _ := url.Parse(srv.Endpoint)
	var conflicts atomic.Int32
	store := &httputil.ReverseProxy{Rewrite: func(r *httputil.ProxyRequest) {
		r.SetURL(target)
		r.Out.Host = r.In.Host // signed into the request
	}}
	conflicting := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodPut && (r.Header.Get("If-None-Match") != "" || r.Header.Get("If-Match") != "") && conflicts.Add(1) <= 3 {
			w.WriteHeader(http.StatusConflict)
			io.WriteString(w, `<?xml version="1.0" encoding="UTF-8"?><Error><Code>ConditionalRequestConflict</Code><Message>retry</Message></Error>`)
			return
		}
		store.ServeHTTP(w, r)
	})
	aws := httptest.NewServer(conflicting)
	defer aws.Close()
	o := s3Objects(t, srv, S3Config{Bucket: bucket})
	o2, err := NewS3Objects(S3Config{Endpoint: aws.URL, Bucket: bucket, Region: s3Region, Transport: testTransport(t)}, o.log)
	if err != nil {
		t.Fatal(err)
	}
	l, _, err := o2.AcquireLease(context.Background(), "y", LeaseHolder{ID: "a", TTL: leaseTTL})
	if err != nil {
		t.Fatalf("acquire after 409s: %v", err)
	}
	if err := l.Renew(context.Background()); err != nil {
		t.Fatalf("renew: %v", err)
	}
	if n := conflicts.Load(); n < 4 {
		t.Fatalf("%d conditional writes seen, want the 3 refused and one more", n)
	}
	l.Release(context.Background())
}

// testVersity is a versitygw with its credentials in the environment.
func testVersity(t *testing.T) *regtest.S3Server {
	srv := regtest.Versity(t)
	setS3Credentials(t, s3Access, s3Secret)
	return srv
}

// TestLeaseSupplantedByOneOfItsFollowers: followers that saw the holder
// fail take its fresh lease over, one of them; the others are told which,
// and a follower naming a holder that no longer holds it is refused.
func TestLeaseSupplantedByOneOfItsFollowers(t *testing.T) {
	srv := testVersity(t)
	o := s3Objects(t, srv, S3Config{Bucket: srv.Bucket(t, "lease-supplant")})
	ctx := context.Background()
	dead := LeaseHolder{ID: "a", URL: "http://a", TTL: 30 * time.Second}
	a, _, err := o.AcquireLease(ctx, "d", dead)
	if err != nil {
		t.Fatal(err)
	}
	a.stopRenewing()
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		won  []*Lease
		told = map[string]int{}
	)
	for i := range 6 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			l, held, err := o.SupplantLease(ctx, "d", LeaseHolder{ID: fmt.Sprint("f", i), TTL: 30 * time.Second}, dead)
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err == nil:
				won = append(won, l)
			case errors.Is(err, ErrLeaseHeld):
				told[held.ID]++
			default:
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	if len(won) != 1 || told[won[0].holder.ID] != 5 {
		t.Fatalf("%d took over, the others were told %v", len(won), told)
	}
	defer won[0].Release(ctx)
	if _, held, err := o.SupplantLease(ctx, "d", LeaseHolder{ID: "g", TTL: 30 * time.Second}, dead); !errors.Is(err, ErrLeaseHeld) || held != won[0].holder {
		t.Fatalf("supplanting a holder that no longer holds it: %+v %v", held, err)
	}
}

// sweeper is an S3Objects on srv's bucket whose requests go through a
// counter (and then hook, when set, after each answer), for the lease
// sweep's costs.
func sweeper(t *testing.T, srv *regtest.S3Server, bucket string, hook func(*http.Request)) (*S3Objects, *s3Counter) {
	t.Helper()
	c := &s3Counter{next: afterAnswer{testTransport(t), hook}, n: map[string]int{}}
	o, err := NewS3Objects(S3Config{Endpoint: srv.Endpoint, Region: s3Region, Bucket: bucket, Prefix: "mirror", Transport: c}, zaptest.NewLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	return o, c
}

// afterAnswer calls hook (if any) with each request once its answer came.
type afterAnswer struct {
	next http.RoundTripper
	hook func(*http.Request)
}

func (a afterAnswer) RoundTrip(r *http.Request) (*http.Response, error) {
	resp, err := a.next.RoundTrip(r)
	if a.hook != nil && err == nil {
		a.hook(r)
	}
	return resp, err
}

// sweepTTL is the TTL of the leases the sweep's tests let go stale: a
// second over the minimum, so that the passes the tests make first still
// find them fresh on a loaded machine.
const sweepTTL = leaseTTL + time.Second

// staleByListing waits until the lease name looks stale in a listing of
// the leases, by the listing's clock.
func staleByListing(t *testing.T, o *S3Objects, name string, ttl time.Duration) {
	t.Helper()
	key, _ := o.leaseKey(name)
	waitFor(t, "lease "+name+" to look stale in a listing", func() bool {
		now, listed, err := o.listLeases(t.Context(), "")
		if err != nil {
			t.Fatal(err)
		}
		for _, obj := range listed {
			if obj.Key == key {
				return !now.IsZero() && now.Sub(obj.LastModified) > ttl
			}
		}
		t.Fatalf("lease %s not listed", name)
		return false
	})
}

// TestLeaseSweepReadsOnlyWhatLooksStale: the evictor's sweep of leases
// judges fresh leases from the listing alone (once it has read a body like
// theirs), and reads and deletes only a lease gone stale.
func TestLeaseSweepReadsOnlyWhatLooksStale(t *testing.T) {
	srv := testVersity(t)
	bucket := srv.Bucket(t, "lease-sweep")
	holders := s3Objects(t, srv, S3Config{Bucket: bucket, Prefix: "mirror"})
	o, counted := sweeper(t, srv, bucket, nil)
	ctx := t.Context()
	pass := func(what string, removed int, want map[string]int) {
		t.Helper()
		n, err := o.RemoveStaleLeases(ctx, evictorLease)
		got, _ := counted.take()
		t.Logf("%s: removed %d, requests %v", what, n, got)
		if err != nil || n != removed || fmt.Sprint(got) != fmt.Sprint(want) {
			t.Fatalf("%s: removed %d (%v) with requests %v; want %d removed with %v", what, n, err, got, removed, want)
		}
	}

	const downloads = 6
	for i := range downloads {
		for _, id := range []string{"b/1", "c/1"} { // two replicas, each downloading
			l, _, err := holders.AcquireLease(ctx, fmt.Sprintf("sha256:%s%d", id[:1], i), LeaseHolder{ID: id, URL: "http://" + id[:1], TTL: time.Minute})
			if err != nil {
				t.Fatal(err)
			}
			defer l.Release(ctx)
		}
	}
	dead, _, err := holders.AcquireLease(ctx, "sha256:dead", LeaseHolder{ID: "d/1", URL: "http://d", TTL: sweepTTL})
	if err != nil {
		t.Fatal(err)
	}
	dead.stopRenewing() // as when its process is killed
	list := map[string]int{"LIST mirror/leases/": 1}
	pass("the first pass, 13 fresh leases by 3 holders", 0, map[string]int{"LIST mirror/leases/": 1, "GET leases": 3})
	pass("the next pass", 0, list)
	pass("and the next", 0, list)

	staleByListing(t, o, "sha256:dead", sweepTTL)
	counted.take()
	pass("a pass with one lease stale", 1, map[string]int{"LIST mirror/leases/": 1, "GET leases": 1, "DELETE leases": 1})
	if _, _, err := holders.ReadLease(ctx, "sha256:dead"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("the stale lease after a pass: %v, want it gone", err)
	}
	pass("the pass after", 0, list)
}

// TestLeaseSweepKeepsALeaseRenewedAfterTheListing: a lease that looked
// stale in the sweep's listing but was renewed before the sweep came to it
// stays: the sweep reads it again before it deletes.
func TestLeaseSweepKeepsALeaseRenewedAfterTheListing(t *testing.T) {
	srv := testVersity(t)
	bucket := srv.Bucket(t, "lease-sweep-renewed")
	holders := s3Objects(t, srv, S3Config{Bucket: bucket, Prefix: "mirror"})
	ctx := t.Context()
	slow, _, err := holders.AcquireLease(ctx, "sha256:slow", LeaseHolder{ID: "b/1", URL: "http://b", TTL: sweepTTL})
	if err != nil {
		t.Fatal(err)
	}
	slow.stopRenewing() // a holder whose renewals are late
	defer slow.Release(ctx)
	var renew atomic.Bool
	renewed := make(chan error, 1)
	o, _ := sweeper(t, srv, bucket, func(r *http.Request) {
		if strings.HasSuffix(r.URL.Query().Get("prefix"), "/leases/") && renew.CompareAndSwap(true, false) {
			renewed <- slow.Renew(ctx) // between the listing and what the sweep does with it
		}
	})
	if n, err := o.RemoveStaleLeases(ctx, evictorLease); n != 0 || err != nil {
		t.Fatalf("first pass, over a fresh lease: removed %d, %v", n, err)
	}
	staleByListing(t, o, "sha256:slow", sweepTTL)
	renew.Store(true)
	if n, err := o.RemoveStaleLeases(ctx, evictorLease); n != 0 || err != nil {
		t.Errorf("a pass whose listing saw the lease stale before its renewal: removed %d, %v; want none", n, err)
	}
	if err := <-renewed; err != nil {
		t.Fatalf("renewal after the listing: %v", err)
	}
	if h, stale, err := o.ReadLease(ctx, "sha256:slow"); err != nil || stale || h.ID != "b/1" {
		t.Fatalf("the renewed lease after the pass: %+v stale %v, %v; want b's, fresh", h, stale, err)
	}
}
