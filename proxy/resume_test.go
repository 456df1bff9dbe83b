package proxy_test

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/regmirror/regmirror/test/regtest"
)

// flaky serves one blob itself: a GET without Range breaks the connection
// after cut bytes; a GET with Range gets the rest (206), or the whole blob
// again (200) when ignoreRange is set, as some registries do.
type flaky struct {
	digest      v1.Hash
	body        []byte
	cut         int
	breaks      int // how many requests break before one goes through whole
	ignoreRange bool
	gets        atomic.Int32
	ranges      sync.Map // Range header → true
}

func (f *flaky) wrap(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet || filepath.Base(r.URL.Path) != f.digest.String() {
			next.ServeHTTP(w, r)
			return
		}
		n := int(f.gets.Add(1))
		from := 0
		if rg := r.Header.Get("Range"); rg != "" {
			f.ranges.Store(rg, true)
			if !f.ignoreRange {
				first, _, _ := strings.Cut(strings.TrimPrefix(rg, "bytes="), "-")
				from, _ = strconv.Atoi(first)
			}
		}
		rest := f.body[from:]
		w.Header().Set("Content-Length", strconv.Itoa(len(rest)))
		if from > 0 {
			w.Header().Set("Content-Range", fmt.Sprintf("bytes %d-%d/%d", from, len(f.body)-1, len(f.body)))
			w.WriteHeader(http.StatusPartialContent)
		}
		if n <= f.breaks {
			w.Write(rest[:min(f.cut, len(rest))])
			http.NewResponseController(w).Flush()
			panic(http.ErrAbortHandler) // the connection resets mid-blob
		}
		w.Write(rest)
	})
}

func TestResetMidBlobIsResumedAndClientsSeeNoError(t *testing.T) {
	for _, ignoreRange := range []bool{false, true} {
		t.Run(fmt.Sprintf("ignoreRange=%v", ignoreRange), func(t *testing.T) {
			body, h := regtest.RandomBlob(t, 1<<20)
			f := &flaky{digest: h, body: body, cut: 300 << 10, breaks: 2, ignoreRange: ignoreRange}
			e := newEnv(t, withUpstreamFault(f.wrap))
			var wg sync.WaitGroup
			errs := make(chan error, 4)
			for range 4 {
				wg.Go(func() {
					resp, err := http.Get(e.mirror.URL + "/v2/big/blobs/" + h.String())
					if err != nil {
						errs <- err
						return
					}
					defer resp.Body.Close()
					got, err := io.ReadAll(resp.Body)
					if err != nil || resp.StatusCode != http.StatusOK || !bytes.Equal(got, body) {
						errs <- fmt.Errorf("status %d, %d bytes, %v", resp.StatusCode, len(got), err)
					}
				})
			}
			wg.Wait()
			close(errs)
			for err := range errs {
				t.Error(err)
			}
			if got := f.gets.Load(); got != 3 {
				t.Errorf("upstream GETs of the blob = %d, want 3 (one, then two resumes)", got)
			}
			// Resumes ask from the bytes written: 300 KiB, then 600 KiB.
			for _, want := range []string{"bytes=307200-1048575", "bytes=614400-1048575"} {
				if _, ok := f.ranges.Load(want); !ok && !ignoreRange {
					t.Errorf("no resume with Range %s", want)
				}
			}
			e.proxy.Close()
			if !e.store.Has(h) {
				t.Error("the resumed blob was not stored")
			}
			if e.logs.FilterMessage("download resumed").Len() != 2 {
				t.Errorf("want 2 'download resumed' log lines")
			}
		})
	}
}

func TestResumesAreBounded(t *testing.T) {
	body, h := regtest.RandomBlob(t, 1<<20)
	f := &flaky{digest: h, body: body, cut: 100 << 10, breaks: 100}
	e := newEnv(t, withUpstreamFault(f.wrap))
	e.getCut("/v2/big/blobs/"+h.String(), "from an upstream that always breaks")
	e.proxy.Close()
	if got := f.gets.Load(); got != 4 {
		t.Errorf("upstream GETs = %d, want 4 (one and three resumes)", got)
	}
	if e.store.Has(h) {
		t.Error("a broken download was stored")
	}
}

// queueBehind GETs the gated blob, whose download takes the only slot, then
// h, and waits until h's download is queued without having gone upstream.
// Both bodies arrive on the channel it returns.
func queueBehind(t *testing.T, e *env, g *gate, h v1.Hash) <-chan []byte {
	t.Helper()
	got := make(chan []byte, 2)
	get := func(h v1.Hash) {
		resp, err := http.Get(e.mirror.URL + "/v2/app/blobs/" + h.String())
		if err != nil {
			got <- nil
			return
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		got <- b
	}
	go get(g.digest)
	<-g.sent // the first download holds the only slot
	go get(h)
	e.waitFor("the second download to queue", func(rec map[string]any) bool {
		return rec["msg"] == "download queued" && rec["digest"] == h.String()
	})
	if n := e.counts.Count(http.MethodGet, "/v2/library/app/blobs/"+h.String()); n != 0 || e.proxy.Stats().Queued != 1 {
		t.Fatalf("the second download was not queued (%d upstream GETs, %d queued) while the only slot was taken", n, e.proxy.Stats().Queued)
	}
	return got
}

func TestMaxDownloadsQueuesTheRest(t *testing.T) {
	first, h1 := regtest.RandomBlob(t, 256<<10)
	second, h2 := regtest.RandomBlob(t, 256<<10)
	g := newGate(h1, first)
	e := newEnv(t, withMaxDownloads(1), withUpstreamFault(g.wrap))
	e.pushBlob("app", second)

	got := queueBehind(t, e, g, h2)
	if v := regtest.Scrape(t, e.mirror.URL+"/metrics").Value("regmirror_downloads_queued"); v != 1 {
		t.Errorf("regmirror_downloads_queued = %v, want 1", v)
	}
	close(g.open)
	for range 2 {
		b := <-got
		if !bytes.Equal(b, first) && !bytes.Equal(b, second) {
			t.Fatalf("a client got %d wrong bytes", len(b))
		}
	}
	if q := e.proxy.Stats().Queued; q != 0 {
		t.Fatalf("queued = %d after both finished", q)
	}
}

func TestStalledClientDoesNotSlowTheOthers(t *testing.T) {
	body, h := regtest.RandomBlob(t, 8<<20) // far more than socket buffers hold
	g := newGate(h, body)
	e := newEnv(t, withUpstreamFault(g.wrap))
	// The stalled client asks first, so it is the flight's leader, then reads nothing.
	stalled, err := http.Get(e.mirror.URL + "/v2/app/blobs/" + h.String())
	if err != nil {
		t.Fatal(err)
	}
	defer stalled.Body.Close()
	<-g.sent
	close(g.open)
	// If the stalled reader held the download back, this would never finish.
	resp, err := http.Get(e.mirror.URL + "/v2/app/blobs/" + h.String())
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil || !bytes.Equal(got, body) {
		t.Fatalf("the other client got %d bytes, %v", len(got), err)
	}
	e.proxy.Close() // the download finished whole though one reader never read
	if !e.store.Has(h) {
		t.Fatal("the blob was not stored")
	}
}

func TestTricklingUpstreamHitsTheIdleTimeout(t *testing.T) {
	body, h := regtest.RandomBlob(t, 64<<10)
	var gets atomic.Int32
	// Each request trickles from where it was asked to start (Range is
	// honoured), so every attempt is cut by the idle timeout alone, never
	// by a skip that races with it.
	trickle := onBlobGet(h, func(w http.ResponseWriter, r *http.Request) {
		gets.Add(1)
		from := 0
		if rg := r.Header.Get("Range"); rg != "" {
			first, _, _ := strings.Cut(strings.TrimPrefix(rg, "bytes="), "-")
			from, _ = strconv.Atoi(first)
		}
		w.Header().Set("Content-Length", strconv.Itoa(len(body)-from))
		if from > 0 {
			w.Header().Set("Content-Range", fmt.Sprintf("bytes %d-%d/%d", from, len(body)-1, len(body)))
			w.WriteHeader(http.StatusPartialContent)
		} else {
			w.WriteHeader(http.StatusOK)
		}
		rc := http.NewResponseController(w)
		for i := from; i < len(body) && i < from+2000; i++ { // a byte every 50 ms: never 32 KiB within the timeout
			if _, err := w.Write(body[i : i+1]); err != nil {
				return
			}
			rc.Flush()
			select {
			case <-time.After(50 * time.Millisecond):
			case <-r.Context().Done():
				return
			}
		}
	})
	e := newEnv(t, withUpstreamTimeout(300*time.Millisecond), withUpstreamFault(trickle))
	e.getCut("/v2/app/blobs/"+h.String(), "from a trickling upstream")
	e.proxy.Close()
	if n := gets.Load(); n != 4 {
		t.Errorf("upstream GETs = %d, want 4: the first and 3 resumes, each cut for trickling", n)
	}
	if e.store.Has(h) {
		t.Error("a trickled blob was stored")
	}
	failed := e.logs.FilterMessage("download failed").All()
	if len(failed) != 1 || !strings.Contains(fmt.Sprint(failed[0].ContextMap()["error"]), "upstream stopped sending") {
		t.Errorf("want one 'download failed' line, for the idle timeout: %v", failed)
	}
}

// A registry that ignores Range resends the part already written; skipping
// it is progress, so a skip that takes longer than the idle timeout while
// bytes keep coming still resumes.
func TestResumeSkipLongerThanTheIdleTimeout(t *testing.T) {
	body, h := regtest.RandomBlob(t, 1536<<10)
	const cut = 1 << 20
	var gets atomic.Int32
	paced := onBlobGet(h, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", strconv.Itoa(len(body)))
		if gets.Add(1) == 1 {
			w.Write(body[:cut])
			http.NewResponseController(w).Flush()
			panic(http.ErrAbortHandler) // the connection resets mid-blob
		}
		// Range ignored: the whole blob, 64 KiB every 50 ms, so the
		// megabyte to skip takes 0.8 s against an idle timeout of 0.5 s.
		rc := http.NewResponseController(w)
		for i := 0; i < len(body); i += 64 << 10 {
			if _, err := w.Write(body[i:min(i+64<<10, len(body))]); err != nil {
				return
			}
			rc.Flush()
			time.Sleep(50 * time.Millisecond)
		}
	})
	e := newEnv(t, withUpstreamTimeout(500*time.Millisecond), withUpstreamFault(paced))
	resp, err := http.Get(e.mirror.URL + "/v2/app/blobs/" + h.String())
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil || resp.StatusCode != http.StatusOK || !bytes.Equal(got, body) {
		t.Fatalf("status %d, %d bytes, %v; want 200 and the blob", resp.StatusCode, len(got), err)
	}
	if n := gets.Load(); n != 2 {
		t.Errorf("upstream GETs = %d, want 2: the first, cut, and one resume", n)
	}
	if !e.store.Has(h) {
		t.Error("the resumed blob was not stored")
	}
}

// A blob streamed through without being stored is an upstream download
// like any other: it holds its slot until its stream ends.
func TestStreamThroughHoldsADownloadSlot(t *testing.T) {
	big, h1 := regtest.RandomBlob(t, 256<<10)
	small, h2 := regtest.RandomBlob(t, 16<<10)
	g := newGate(h1, big)
	e := newEnv(t, withMaxDownloads(1), withBudget(128<<10), withUpstreamFault(g.wrap))
	e.pushBlob("app", small)

	got := queueBehind(t, e, g, h2) // the first is larger than the budget: streamed through
	close(g.open)
	for range 2 {
		if b := <-got; !bytes.Equal(b, big) && !bytes.Equal(b, small) {
			t.Fatalf("a client got %d wrong bytes", len(b))
		}
	}
	if e.store.Has(h1) || !e.store.Has(h2) {
		t.Errorf("stored: the big blob %v, the small one %v; want only the small one", e.store.Has(h1), e.store.Has(h2))
	}
	if q := e.proxy.Stats().Queued; q != 0 {
		t.Fatalf("queued = %d after both finished", q)
	}
}
