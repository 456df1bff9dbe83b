package proxy_test

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/regmirror/regmirror/test/regtest"
)

// A blob streamed through for want of room obeys the same idle rule as one
// being stored: less than 32 KiB within the upstream timeout cuts it.
func TestTricklingUpstreamIsCutWhenStreamedThrough(t *testing.T) {
	body, h := regtest.RandomBlob(t, 64<<10)
	const bytes = 400
	cut := make(chan int, 1) // how many bytes went out before upstream's request was cut; -1 if never
	trickle := onBlobGet(h, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", strconv.Itoa(len(body)))
		w.WriteHeader(http.StatusOK)
		rc := http.NewResponseController(w)
		for i := range bytes { // a byte every 25 ms: 10 s in all, never 32 KiB
			if _, err := w.Write(body[i : i+1]); err != nil {
				cut <- i
				return
			}
			rc.Flush()
			select {
			case <-time.After(25 * time.Millisecond):
			case <-r.Context().Done():
				cut <- i
				return
			}
		}
		cut <- -1
	})
	e := newEnv(t, withBudget(16<<10), withUpstreamTimeout(300*time.Millisecond), withUpstreamFault(trickle))
	e.getCut("/v2/app/blobs/"+h.String(), "from a trickling upstream")
	if n := <-cut; n < 0 {
		t.Fatalf("the stream-through was never cut: upstream trickled all %d bytes over 10 s against an idle timeout of 0.3 s", bytes)
	}
	e.settle()
	idle := false
	for _, l := range e.logs.FilterMessage("request").All() {
		idle = idle || strings.Contains(fmt.Sprint(l.ContextMap()["error"]), "upstream stopped sending")
	}
	if !idle {
		t.Errorf("want the request's log line to say upstream stopped sending; logs: %v", e.logs.FilterMessage("request").All())
	}
}

// revivable is a listener a test can take down (new connections refused,
// open ones cut) and bring back on the same address.
type revivable struct {
	addr net.Addr

	mu      sync.Mutex
	l       net.Listener // nil while down
	conns   []net.Conn
	revived chan struct{} // closed while up
	closed  bool
}

func newRevivable(t *testing.T) *revivable {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	up := make(chan struct{})
	close(up)
	return &revivable{addr: l.Addr(), l: l, revived: up}
}

func (r *revivable) Accept() (net.Conn, error) {
	for {
		r.mu.Lock()
		l, revived, closed := r.l, r.revived, r.closed
		r.mu.Unlock()
		if closed {
			return nil, net.ErrClosed
		}
		if l == nil {
			<-revived
			continue
		}
		c, err := l.Accept()
		r.mu.Lock()
		if err != nil {
			if r.l == l && !r.closed {
				r.mu.Unlock()
				return nil, err
			}
			r.mu.Unlock()
			continue // taken down meanwhile
		}
		r.conns = append(r.conns, c)
		r.mu.Unlock()
		return c, nil
	}
}

// kill closes the listener and every connection it accepted.
func (r *revivable) kill() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.l.Close()
	r.l = nil
	r.revived = make(chan struct{})
	for _, c := range r.conns {
		c.Close()
	}
	r.conns = nil
}

// revive listens again on the same address.
func (r *revivable) revive(t *testing.T) {
	l, err := net.Listen("tcp", r.addr.String())
	if err != nil {
		t.Fatal(err)
	}
	r.mu.Lock()
	r.l = l
	close(r.revived)
	r.mu.Unlock()
}

func (r *revivable) Close() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return nil
	}
	r.closed = true
	if r.l != nil {
		return r.l.Close()
	}
	close(r.revived)
	return nil
}

func (r *revivable) Addr() net.Addr { return r.addr }

// An upstream that dies mid-download and comes back within the resumes'
// back-off: the download uses its resumes, though the first one, refused,
// marked the upstream down for new requests, and every client gets the blob.
func TestDownloadOutlastsAnUpstreamRestart(t *testing.T) {
	body, h := regtest.RandomBlob(t, 1<<20)
	g := newGate(h, body) // the first half, then it waits; once open, whole blobs
	ln := newRevivable(t)
	e := newEnv(t, withUpstreamListener(ln), withUpstreamFault(g.wrap))

	const clients = 4
	var firstBytes sync.WaitGroup
	firstBytes.Add(clients)
	results := make(chan error, clients)
	for i := range clients {
		go func() {
			results <- func() error {
				var once sync.Once
				reached := func() { once.Do(firstBytes.Done) }
				defer reached()
				resp, err := http.Get(e.mirror.URL + "/v2/app/blobs/" + h.String())
				if err != nil {
					return err
				}
				defer resp.Body.Close()
				first := make([]byte, 64<<10)
				if _, err := io.ReadFull(resp.Body, first); err != nil {
					return fmt.Errorf("client %d: %v", i, err)
				}
				reached()
				rest, err := io.ReadAll(resp.Body)
				if err != nil || resp.StatusCode != http.StatusOK || !bytes.Equal(append(first, rest...), body) {
					return fmt.Errorf("client %d: status %d, %d bytes, %v", i, resp.StatusCode, len(first)+len(rest), err)
				}
				return nil
			}()
		}()
	}
	firstBytes.Wait() // every client is mid-blob
	ln.kill()
	close(g.open)
	waitLog(t, e, "upstream down: serving from cache until it answers again") // a resume was refused
	ln.revive(t)
	for range clients {
		if err := <-results; err != nil {
			t.Error(err)
		}
	}
	e.proxy.Close()
	if !e.store.Has(h) {
		t.Error("the resumed blob was not stored")
	}
	// The second resume went through though the upstream was still marked
	// down (its probe waits a second).
	resumed := e.logs.FilterMessage("download resumed").All()
	if len(resumed) != 1 || resumed[0].ContextMap()["attempt"] != int64(2) {
		t.Errorf("want one 'download resumed' line, for attempt 2: %v", resumed)
	}
}

// waitLog waits until the proxy logged msg.
func waitLog(t *testing.T, e *env, msg string) {
	t.Helper()
	for deadline := time.Now().Add(20 * time.Second); e.logs.FilterMessage(msg).Len() == 0; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("no %q log line", msg)
		}
	}
}

// get10 sends a GET as an HTTP/1.0 client and reads the answer to the end
// of the connection.
func get10(t *testing.T, e *env, path string) (*http.Response, []byte, error) {
	t.Helper()
	conn, err := net.Dial("tcp", host(e.mirror))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	fmt.Fprintf(conn, "GET %s HTTP/1.0\r\nHost: %s\r\n\r\n", path, host(e.mirror))
	req, _ := http.NewRequest(http.MethodGet, e.mirror.URL+path, nil)
	resp, err := http.ReadResponse(bufio.NewReader(conn), req)
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(resp.Body)
	return resp, got, err
}

// An HTTP/1.0 client has no chunked encoding: without a Content-Length, the
// end of the connection is the end of the body, and an aborted body looks
// whole. So it always gets a Content-Length, and never all of a wrong blob.
func TestHTTP10ClientNeverGetsAWrongBlobThatLooksComplete(t *testing.T) {
	body, h := regtest.RandomBlob(t, 256<<10)
	bad := bytes.Clone(body)
	bad[len(bad)-1] ^= 0xff
	for _, tt := range []struct {
		name   string
		budget int64
		sent   []byte
	}{
		{"stored", 0, body},
		{"stored, wrong bytes", 0, bad},
		{"streamed through", 64 << 10, body},
		{"streamed through, wrong bytes", 64 << 10, bad},
	} {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t, withBudget(tt.budget), withUpstreamFault(corrupt(h, func(w http.ResponseWriter) {
				w.Write(tt.sent) // chunked: no length announced
			})))
			e.pushBlob("app", body) // upstream's HEAD knows the size
			resp, got, err := get10(t, e, "/v2/app/blobs/"+h.String())
			if resp.StatusCode == http.StatusOK && resp.ContentLength < 0 {
				t.Fatalf("a 200 without Content-Length to an HTTP/1.0 client (%d bytes, %v)", len(got), err)
			}
			if bytes.Equal(tt.sent, body) {
				if resp.StatusCode != http.StatusOK || err != nil || !bytes.Equal(got, body) {
					t.Fatalf("status %d, %d bytes, %v; want 200 and the blob", resp.StatusCode, len(got), err)
				}
				return
			}
			if resp.StatusCode == http.StatusOK && err == nil && int64(len(got)) == resp.ContentLength {
				t.Fatalf("a complete-looking 200 of %d wrong bytes", len(got))
			}
		})
	}
}

// A blob the mirror does not store, of a size upstream says neither in its
// GET nor in its HEAD, cannot go to an HTTP/1.0 client safely: it is refused.
func TestHTTP10ClientIsRefusedABlobOfUnknownSize(t *testing.T) {
	body, h := regtest.RandomBlob(t, 256<<10)
	noLength := func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if filepath.Base(r.URL.Path) != h.String() {
				next.ServeHTTP(w, r)
				return
			}
			w.WriteHeader(http.StatusOK)
			if r.Method == http.MethodGet {
				w.Write(body) // chunked
			}
		})
	}
	e := newEnv(t, withBudget(64<<10), withUpstreamFault(noLength))
	resp, got, err := get10(t, e, "/v2/app/blobs/"+h.String())
	if err != nil || resp.StatusCode != http.StatusHTTPVersionNotSupported {
		t.Fatalf("status %d, %v; want %d", resp.StatusCode, err, http.StatusHTTPVersionNotSupported)
	}
	if code := regtest.OCICode(t, resp, got); code != "UNSUPPORTED" {
		t.Errorf("code %s, want UNSUPPORTED", code)
	}
}
