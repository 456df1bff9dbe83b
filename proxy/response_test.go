package proxy_test

import (
	"bytes"
	"io"
	"net/http"
	"os"
	"sync"
	"testing"

	"github.com/regmirror/regmirror/test/regtest"
)

// sendSpy sits between the proxy and net/http's own ResponseWriter and counts
// the body bytes that reach the socket's ReadFrom as a file, which net/http
// sends with sendfile, and the bytes that come through Write instead.
type sendSpy struct {
	http.ResponseWriter
	fromFile, written int64
}

func (s *sendSpy) Write(p []byte) (int, error) {
	s.written += int64(len(p))
	return s.ResponseWriter.Write(p)
}

func (s *sendSpy) ReadFrom(src io.Reader) (int64, error) {
	file := src
	if lr, ok := src.(*io.LimitedReader); ok {
		file = lr.R
	}
	n, err := s.ResponseWriter.(io.ReaderFrom).ReadFrom(src)
	if _, ok := file.(*os.File); ok {
		s.fromFile += n
	} else {
		s.written += n
	}
	return n, err
}

func (s *sendSpy) Flush() { s.ResponseWriter.(http.Flusher).Flush() }

// TestBlobsGoOutWithSendfile checks that a blob's bytes reach the socket as
// sections of a file, for a leader and a follower of a download in flight
// and for a hit, so that net/http sends them with sendfile.
func TestBlobsGoOutWithSendfile(t *testing.T) {
	body, h := regtest.RandomBlob(t, 1<<20)
	g := newGate(h, body)
	var mu sync.Mutex
	var spies []*sendSpy
	spying := func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			s := &sendSpy{ResponseWriter: w}
			next.ServeHTTP(s, r)
			mu.Lock()
			spies = append(spies, s)
			mu.Unlock()
		})
	}
	e := newEnv(t, withUpstreamFault(g.wrap), withMirrorWrap(spying))
	e.pushBlob("library/big", body)
	path := "/v2/big/blobs/" + h.String()

	// Two clients while the download is held at half the blob: the first
	// leads it, the second follows. Both have their first bytes before the
	// rest is let through, so both are served from the download in flight.
	var firstBytes sync.WaitGroup
	firstBytes.Add(2)
	got := make(chan []byte, 2)
	for range 2 {
		go func() {
			resp, err := http.Get(e.mirror.URL + path)
			if err != nil {
				firstBytes.Done()
				got <- nil
				return
			}
			defer resp.Body.Close()
			first := make([]byte, 64<<10)
			_, err = io.ReadFull(resp.Body, first)
			firstBytes.Done()
			rest, rerr := io.ReadAll(resp.Body)
			if err != nil || rerr != nil {
				got <- nil
				return
			}
			got <- append(first, rest...)
		}()
	}
	firstBytes.Wait()
	close(g.open)
	for range 2 {
		if b := <-got; !bytes.Equal(b, body) {
			t.Fatalf("GET %s during the download: %d bytes, want the blob's %d", path, len(b), len(body))
		}
	}
	if _, b := e.do(http.MethodGet, path, nil); !bytes.Equal(b, body) {
		t.Fatalf("GET %s from the cache: %d bytes, want the blob's %d", path, len(b), len(body))
	}
	e.settle()
	mu.Lock()
	defer mu.Unlock()
	if len(spies) != 3 {
		t.Fatalf("%d requests seen, want 3", len(spies))
	}
	for i, s := range spies {
		if s.fromFile != int64(len(body)) || s.written != 0 {
			t.Errorf("request %d: %d bytes sent from a file and %d written, want all %d from a file", i, s.fromFile, s.written, len(body))
		}
	}
}
