package proxy_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"mime"
	"mime/multipart"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"go.uber.org/zap"

	"github.com/regmirror/regmirror/proxy"
	"github.com/regmirror/regmirror/test/regtest"
)

// pushBlob puts b into the upstream's repo as a layer.
func (e *env) pushBlob(repo string, b []byte) {
	e.t.Helper()
	r := e.upRef(repo + ":unused")
	if err := remote.WriteLayer(r.Context(), staticLayer(b)); err != nil {
		e.t.Fatal(err)
	}
}

func staticLayer(b []byte) v1.Layer { return static.NewLayer(b, types.OCIUncompressedLayer) }

// gate is an upstream fault: for GETs of one blob it sends the first half of
// the body, flushes, and waits until the test opens the gate.
type gate struct {
	digest v1.Hash
	body   []byte
	open   chan struct{}
	sent   chan struct{} // closed once the first half went out
	once   sync.Once
}

func newGate(h v1.Hash, body []byte) *gate {
	return &gate{digest: h, body: body, open: make(chan struct{}), sent: make(chan struct{})}
}

func (g *gate) wrap(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet || filepath.Base(r.URL.Path) != g.digest.String() {
			next.ServeHTTP(w, r)
			return
		}
		half := len(g.body) / 2
		w.Header().Set("Content-Length", strconv.Itoa(len(g.body)))
		w.WriteHeader(http.StatusOK)
		w.Write(g.body[:half])
		http.NewResponseController(w).Flush()
		g.once.Do(func() { close(g.sent) })
		select {
		case <-g.open:
		case <-r.Context().Done():
			return
		}
		w.Write(g.body[half:])
	})
}

func TestColdBlobEightClientsOneUpstreamDownloadAllStream(t *testing.T) {
	body, h := regtest.RandomBlob(t, 1<<20)
	g := newGate(h, body)
	e := newEnv(t, withUpstreamFault(g.wrap))
	e.pushBlob("library/big", body)
	path := "/v2/big/blobs/" + h.String()

	const clients = 8
	var firstBytes sync.WaitGroup
	firstBytes.Add(clients)
	results := make(chan error, clients)
	for i := range clients {
		go func() {
			results <- func() error {
				resp, err := http.Get(e.mirror.URL + path)
				if err != nil {
					return err
				}
				defer resp.Body.Close()
				if resp.StatusCode != http.StatusOK {
					return fmt.Errorf("client %d: status %d", i, resp.StatusCode)
				}
				first := make([]byte, 64<<10)
				_, err = io.ReadFull(resp.Body, first)
				firstBytes.Done()
				if err != nil {
					return err
				}
				rest, err := io.ReadAll(resp.Body)
				if err != nil {
					return err
				}
				if !bytes.Equal(append(first, rest...), body) {
					return fmt.Errorf("client %d: wrong bytes", i)
				}
				return nil
			}()
		}()
	}
	// Every client has its first bytes while upstream is still holding back
	// the second half: nobody waited for the whole blob.
	firstBytes.Wait()
	close(g.open)
	for range clients {
		if err := <-results; err != nil {
			t.Error(err)
		}
	}
	if n := e.counts.Count(http.MethodGet, "/v2/library/big/blobs/"+h.String()); n != 1 {
		t.Errorf("upstream GETs of the blob = %d, want 1", n)
	}
	if !e.store.Has(h) {
		t.Error("blob not in the store after the download")
	}
}

func TestClientLeavingDoesNotStopTheDownloadForOthers(t *testing.T) {
	body, h := regtest.RandomBlob(t, 1<<20)
	g := newGate(h, body)
	e := newEnv(t, withUpstreamFault(g.wrap))
	e.pushBlob("library/big", body)
	url := e.mirror.URL + "/v2/big/blobs/" + h.String()

	ctx, leave := context.WithCancel(t.Context())
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	quitter, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(quitter.Body, make([]byte, 1000)); err != nil {
		t.Fatal(err)
	}
	leave()
	quitter.Body.Close()

	stayer, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer stayer.Body.Close()
	close(g.open)
	got, err := io.ReadAll(stayer.Body)
	if err != nil {
		t.Fatalf("remaining client: %v", err)
	}
	if !bytes.Equal(got, body) {
		t.Fatal("remaining client got wrong bytes")
	}
	if n := e.counts.Count(http.MethodGet, "/v2/library/big/blobs/"+h.String()); n != 1 {
		t.Errorf("upstream GETs = %d, want 1", n)
	}
}

// corrupt is an upstream fault that serves a blob's GET with other content.
func corrupt(h v1.Hash, serve func(w http.ResponseWriter)) func(http.Handler) http.Handler {
	return onBlobGet(h, func(w http.ResponseWriter, _ *http.Request) { serve(w) })
}

// onBlobGet answers GETs of the blob h with serve; the registry answers
// everything else.
func onBlobGet(h v1.Hash, serve func(w http.ResponseWriter, r *http.Request)) func(http.Handler) http.Handler {
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.Method == http.MethodGet && filepath.Base(r.URL.Path) == h.String() {
				serve(w, r)
				return
			}
			next.ServeHTTP(w, r)
		})
	}
}

func TestBadUpstreamContentNeverEntersTheCache(t *testing.T) {
	forEachAlgorithm(t, testBadUpstreamContentNeverEntersTheCache)
}

func testBadUpstreamContentNeverEntersTheCache(t *testing.T, alg string) {
	body, h := randomBlobBy(t, alg, 256<<10)
	tests := []struct {
		name  string
		serve func(w http.ResponseWriter)
	}{
		{"tampered", func(w http.ResponseWriter) {
			bad := bytes.Clone(body)
			bad[len(bad)-1] ^= 0xff
			w.Header().Set("Content-Length", strconv.Itoa(len(bad)))
			w.Write(bad)
		}},
		{"truncated", func(w http.ResponseWriter) {
			w.Header().Set("Content-Length", strconv.Itoa(len(body)))
			w.Write(body[:len(body)/2])
			http.NewResponseController(w).Flush()
			panic(http.ErrAbortHandler)
		}},
		{"too long", func(w http.ResponseWriter) {
			w.Write(append(bytes.Clone(body), 'x')) // chunked, no length announced
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t, withUpstreamFault(corrupt(h, tt.serve)))
			e.getCut("/v2/big/blobs/"+h.String(), "for bad upstream content")
			e.proxy.Close() // waits for the download to clean up
			if e.store.Has(h) {
				t.Error("bad content entered the cache")
			}
			if left, _ := os.ReadDir(filepath.Join(e.dataDir, "tmp")); len(left) != 0 {
				t.Errorf("temp files left behind: %v", left)
			}
		})
	}
}

func TestUpstreamRefusalReachesEveryWaiterAsOCIError(t *testing.T) {
	e := newEnv(t)
	_, h := regtest.RandomBlob(t, 10)
	resp, body := e.do(http.MethodGet, "/v2/nothing/blobs/"+h.String(), nil)
	if resp.StatusCode != http.StatusNotFound {
		t.Fatalf("status = %d, want 404; body %s", resp.StatusCode, body)
	}
	if code := regtest.OCICode(t, resp, body); code != "BLOB_UNKNOWN" {
		t.Errorf("code = %s, want BLOB_UNKNOWN", code)
	}
}

// TestBrokenStoreIsNotBlamedOnTheUpstream breaks the store's temp directory
// (a regular file in its place gives ENOTDIR, even to root), so a miss fails
// when the download's temp file is created. The client must be told the
// mirror's store failed, not that the upstream is unreachable, without the
// store's paths; the upstream must stay up; and the blob must be fetched
// normally once the directory is back.
func TestBrokenStoreIsNotBlamedOnTheUpstream(t *testing.T) {
	e := newEnv(t, withTTL(time.Minute))
	img := randomImage(t)
	e.push("library/app:1", img)
	if resp, body := e.do(http.MethodGet, "/v2/app/manifests/1", nil); resp.StatusCode != http.StatusOK {
		t.Fatalf("GET tag before the fault: status = %d, want 200; body %s", resp.StatusCode, body)
	}
	blob, h := regtest.RandomBlob(t, 64<<10)
	e.pushBlob("app", blob)

	tmp := filepath.Join(e.dataDir, "tmp")
	if err := os.RemoveAll(tmp); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(tmp, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	path := "/v2/app/blobs/" + h.String()
	resp, body := e.do(http.MethodGet, path, nil)
	if resp.StatusCode != http.StatusInternalServerError {
		t.Errorf("GET %s: status = %d, want %d; body %s", path, resp.StatusCode, http.StatusInternalServerError, body)
	}
	if code := regtest.OCICode(t, resp, body); code != "UNKNOWN" {
		t.Errorf("GET %s: code = %s, want UNKNOWN", path, code)
	}
	if !strings.Contains(string(body), "cache store failed") || strings.Contains(string(body), "unreachable") {
		t.Errorf("GET %s: body %s, want it to blame the cache store, not the upstream", path, body)
	}
	if strings.Contains(string(body), e.dataDir) {
		t.Errorf("GET %s: body %s names the store's files", path, body)
	}
	e.settle()
	logged := false
	for _, l := range e.logs.FilterMessage("request").FilterField(zap.String("path", path)).AllUntimed() {
		logged = logged || strings.Contains(fmt.Sprint(l.ContextMap()["error"]), "not a directory")
	}
	if !logged {
		t.Error("the access log line does not carry the store's error")
	}
	// The download logs its failure after its requesters were told of it.
	for deadline := time.Now().Add(10 * time.Second); e.logs.FilterMessage("download failed").Len() == 0 && time.Now().Before(deadline); {
		time.Sleep(time.Millisecond)
	}
	if failed := e.logs.FilterMessage("download failed").AllUntimed(); len(failed) != 1 || failed[0].Level != zap.ErrorLevel {
		t.Errorf("want one 'download failed' line at error level (the mirror's own disk failed): %v", failed)
	}

	// The upstream was never at fault: it is not marked down, and a tag past
	// its TTL is revalidated with it rather than served stale.
	e.clock.Advance(time.Hour)
	resp, body = e.do(http.MethodGet, "/v2/app/manifests/1", nil)
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Warning") != "" {
		t.Errorf("GET tag after the fault: status %d, Warning %q; want 200 without a Warning; body %s",
			resp.StatusCode, resp.Header.Get("Warning"), body)
	}
	if n := e.logs.FilterMessage("upstream down: serving from cache until it answers again").Len(); n != 0 {
		t.Errorf("the upstream was marked down %d times for a local disk error", n)
	}
	resp, body = e.do(http.MethodGet, proxy.ReadyPath, nil)
	if !strings.Contains(string(body), `{"name":"docker.io","up":true}`) {
		t.Errorf("readyz after the fault: %d %s, want docker.io up", resp.StatusCode, body)
	}
	if resp.StatusCode != http.StatusServiceUnavailable || !strings.Contains(string(body), "tmp") {
		t.Errorf("readyz after the fault: %d %s, want 503 naming the store's temp directory", resp.StatusCode, body)
	}

	if err := os.Remove(tmp); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(tmp, 0o750); err != nil {
		t.Fatal(err)
	}
	resp, body = e.do(http.MethodGet, path, nil)
	if resp.StatusCode != http.StatusOK || !bytes.Equal(body, blob) {
		t.Fatalf("GET %s with the store repaired: status %d, %d bytes; want 200 with the blob", path, resp.StatusCode, len(body))
	}
	e.settle()
	if !e.store.Has(h) {
		t.Error("the blob was not stored once the store was repaired")
	}
}

func TestHeadOfUncachedBlobAsksUpstreamWithHead(t *testing.T) {
	e := newEnv(t)
	body, h := regtest.RandomBlob(t, 5000)
	e.pushBlob("library/big", body)
	p := "/v2/library/big/blobs/" + h.String()
	headsBefore := e.counts.Count(http.MethodHead, p) // pushing asks whether the blob exists
	resp, _ := e.do(http.MethodHead, "/v2/big/blobs/"+h.String(), nil)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("HEAD status = %d, want 200", resp.StatusCode)
	}
	if resp.ContentLength != int64(len(body)) || resp.Header.Get("Docker-Content-Digest") != h.String() {
		t.Errorf("HEAD: Content-Length %d, digest %q; want %d, %s", resp.ContentLength, resp.Header.Get("Docker-Content-Digest"), len(body), h)
	}
	if g, hd := e.counts.Count(http.MethodGet, p), e.counts.Count(http.MethodHead, p)-headsBefore; g != 0 || hd != 1 {
		t.Errorf("upstream GET %d, HEAD %d; want 0, 1", g, hd)
	}
	if e.store.Has(h) {
		t.Error("a HEAD downloaded the blob")
	}
}

func TestRangesAndConditionalRequestsOnCachedBlob(t *testing.T) {
	e := newEnv(t)
	body, h := regtest.RandomBlob(t, 100_000)
	e.pushBlob("library/big", body)
	path := "/v2/big/blobs/" + h.String()
	if resp, got := e.do(http.MethodGet, path, nil); resp.StatusCode != 200 || !bytes.Equal(got, body) {
		t.Fatalf("priming GET: status %d, %d bytes", resp.StatusCode, len(got))
	}
	etag := `"` + h.String() + `"`

	resp, got := e.do(http.MethodGet, path, http.Header{"Range": {"bytes=10-19"}})
	if resp.StatusCode != http.StatusPartialContent || !bytes.Equal(got, body[10:20]) {
		t.Errorf("Range 10-19: status %d, body %x; want 206, %x", resp.StatusCode, got, body[10:20])
	}
	if resp.Header.Get("Docker-Content-Digest") != h.String() || resp.Header.Get("Etag") != etag {
		t.Errorf("headers: digest %q etag %q", resp.Header.Get("Docker-Content-Digest"), resp.Header.Get("Etag"))
	}

	resp, got = e.do(http.MethodGet, path, http.Header{"Range": {"bytes=0-1,99998-"}})
	mt, params, _ := mime.ParseMediaType(resp.Header.Get("Content-Type"))
	if resp.StatusCode != http.StatusPartialContent || mt != "multipart/byteranges" {
		t.Fatalf("multi-range: status %d, type %q", resp.StatusCode, mt)
	}
	mr := multipart.NewReader(bytes.NewReader(got), params["boundary"])
	var parts [][]byte
	for {
		p, err := mr.NextPart()
		if err != nil {
			break
		}
		b, _ := io.ReadAll(p)
		parts = append(parts, b)
	}
	if len(parts) != 2 || !bytes.Equal(parts[0], body[:2]) || !bytes.Equal(parts[1], body[99998:]) {
		t.Errorf("multi-range parts = %x", parts)
	}

	resp, _ = e.do(http.MethodGet, path, http.Header{"If-None-Match": {etag}})
	if resp.StatusCode != http.StatusNotModified {
		t.Errorf("If-None-Match: status %d, want 304", resp.StatusCode)
	}

	resp, got = e.do(http.MethodGet, path, http.Header{"Range": {"bytes=200000-"}})
	if resp.StatusCode != http.StatusRequestedRangeNotSatisfiable {
		t.Errorf("unsatisfiable range: status %d, want 416", resp.StatusCode)
	}
	if code := regtest.OCICode(t, resp, got); code != "RANGE_INVALID" {
		t.Errorf("unsatisfiable range: code %s", code)
	}
	if n := e.counts.CountPrefix(http.MethodGet, "/v2/library/big/blobs/"); n != 1 {
		t.Errorf("upstream GETs = %d, want 1", n)
	}
}

func TestRangeOnBlobInFlightIsServedFromThePartWritten(t *testing.T) {
	body, h := regtest.RandomBlob(t, 1<<20)
	g := newGate(h, body)
	e := newEnv(t, withUpstreamFault(g.wrap))
	e.pushBlob("library/big", body)
	path := "/v2/big/blobs/" + h.String()

	// Start the download and wait until the first half is on its way.
	full, err := http.Get(e.mirror.URL + path)
	if err != nil {
		t.Fatal(err)
	}
	defer full.Body.Close()
	<-g.sent
	resp, got := e.do(http.MethodGet, path, http.Header{"Range": {"bytes=100-199"}})
	if resp.StatusCode != http.StatusPartialContent || !bytes.Equal(got, body[100:200]) {
		t.Errorf("range in flight: status %d; want 206 with the right bytes", resp.StatusCode)
	}
	close(g.open)
	all, err := io.ReadAll(full.Body)
	if err != nil || !bytes.Equal(all, body) {
		t.Errorf("full read: %v", err)
	}
	if n := e.counts.Count(http.MethodGet, "/v2/library/big/blobs/"+h.String()); n != 1 {
		t.Errorf("upstream GETs = %d, want 1", n)
	}
}

func TestCloseRemovesUnfinishedDownloads(t *testing.T) {
	body, h := regtest.RandomBlob(t, 1<<20)
	g := newGate(h, body)
	e := newEnv(t, withUpstreamFault(g.wrap))
	e.pushBlob("library/big", body)

	resp, err := http.Get(e.mirror.URL + "/v2/big/blobs/" + h.String())
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	<-g.sent
	e.proxy.Close()
	if _, err := io.ReadAll(resp.Body); err == nil {
		t.Error("client read a complete body from a download that was stopped")
	}
	if e.store.Has(h) {
		t.Error("unfinished download became visible")
	}
	if left, _ := os.ReadDir(filepath.Join(e.dataDir, "tmp")); len(left) != 0 {
		t.Errorf("temp files left behind: %v", left)
	}
}

// leaveMidBlob GETs a gated blob, reads 64 KiB of it once the gate has sent
// its first half, leaves, then opens the gate. It returns the request's
// access-log line.
func leaveMidBlob(t *testing.T, e *env, g *gate) map[string]any {
	t.Helper()
	path := "/v2/app/blobs/" + g.digest.String()
	req, err := http.NewRequest(http.MethodGet, e.mirror.URL+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	tr := &http.Transport{}
	defer tr.CloseIdleConnections()
	resp, err := tr.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	<-g.sent
	if _, err := io.ReadFull(resp.Body, make([]byte, 64<<10)); err != nil {
		t.Fatal(err)
	}
	resp.Body.Close() // the client leaves
	close(g.open)
	e.waitFor("the request's access-log line", func(rec map[string]any) bool {
		return rec["msg"] == "request" && rec["path"] == path
	})
	return e.logs.FilterMessage("request").FilterField(zap.String("path", path)).AllUntimed()[0].ContextMap()
}

// A client that leaves in the middle of a streamed-through blob is logged
// as an abort with its own error, not as anything told to it: it was told
// nothing, and its broken pipe is no upstream failure.
func TestClientLeavingMidStreamIsNotToldAnything(t *testing.T) {
	body, h := regtest.RandomBlob(t, 4<<20)
	g := newGate(h, body)
	e := newEnv(t, withBudget(1<<20), withUpstreamFault(g.wrap)) // larger than the budget: streamed through
	line := leaveMidBlob(t, e, g)
	if line["aborted"] != true || line["cache"] != "stream" {
		t.Errorf("access log %v: want an aborted stream", line)
	}
	if told, ok := line["told_client"]; ok {
		t.Errorf("access log says the client was told %q; it got only an abort", told)
	}
}

// A client that leaves while following a download is logged as aborted,
// though http.ServeContent reports no error for it.
func TestClientLeavingAFollowedDownloadIsLoggedAborted(t *testing.T) {
	body, h := regtest.RandomBlob(t, 8<<20)
	g := newGate(h, body)
	e := newEnv(t, withUpstreamFault(g.wrap))
	line := leaveMidBlob(t, e, g)
	if line["aborted"] != true || line["status"] != int64(http.StatusOK) {
		t.Errorf("access log %v: want status 200, aborted", line)
	}
	// The download itself goes on for the store.
	end := e.waitFor("the download's end", func(rec map[string]any) bool {
		return (rec["msg"] == "download done" || rec["msg"] == "download failed") && rec["digest"] == h.String()
	})
	if end["msg"] != "download done" || !e.store.Has(h) {
		t.Fatalf("the download stopped with its only client: %v", end)
	}
}

// TestHeadOfBlobAnswersTheSameColdAndWarm: a HEAD with conditional or Range
// headers gets the answer a cached blob gets (RFC 9110 asks 304 of a HEAD
// too), before the blob is cached and after.
func TestHeadOfBlobAnswersTheSameColdAndWarm(t *testing.T) {
	forEachAlgorithm(t, testHeadOfBlobAnswersTheSameColdAndWarm)
}

func testHeadOfBlobAnswersTheSameColdAndWarm(t *testing.T, alg string) {
	e := newEnv(t)
	body, h := randomBlobBy(t, alg, 1000)
	regtest.PushBlob(t, e.upstream.URL, "library/app", h, body)
	path, etag := "/v2/app/blobs/"+h.String(), `"`+h.String()+`"`
	tests := []struct {
		name         string
		header       http.Header
		status       int
		contentRange string
	}{
		{"plain", nil, 200, ""},
		{"If-None-Match", http.Header{"If-None-Match": {etag}}, 304, ""},
		{"If-None-Match, another", http.Header{"If-None-Match": {`"sha256:0"`}}, 200, ""},
		{"If-Match, another", http.Header{"If-Match": {`"sha256:0"`}}, 412, ""},
		{"first byte", http.Header{"Range": {"bytes=0-0"}}, 206, "bytes 0-0/1000"},
		{"last bytes", http.Header{"Range": {"bytes=-10"}}, 206, "bytes 990-999/1000"},
		{"past the end", http.Header{"Range": {"bytes=1000-"}}, 416, "bytes */1000"},
		{"If-Range, another", http.Header{"Range": {"bytes=0-0"}, "If-Range": {`"sha256:0"`}}, 200, ""},
	}
	check := func(state string) {
		for _, tt := range tests {
			resp, _ := e.do(http.MethodHead, path, tt.header)
			if resp.StatusCode != tt.status || resp.Header.Get("Content-Range") != tt.contentRange {
				t.Errorf("%s HEAD, %s: status %d, Content-Range %q; want %d, %q", state, tt.name,
					resp.StatusCode, resp.Header.Get("Content-Range"), tt.status, tt.contentRange)
			}
			if tt.status == 206 && resp.ContentLength != 1 && resp.ContentLength != 10 {
				t.Errorf("%s HEAD, %s: Content-Length %d", state, tt.name, resp.ContentLength)
			}
		}
	}
	check("cold")
	if e.store.Has(h) {
		t.Fatal("a HEAD cached the blob")
	}
	if resp, _ := e.do(http.MethodGet, path, nil); resp.StatusCode != 200 {
		t.Fatalf("GET: %d", resp.StatusCode)
	}
	check("warm")
}
