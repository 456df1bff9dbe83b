package proxy_test

import (
	"bytes"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"testing"

	"github.com/regmirror/regmirror/test/regtest"
)

func TestBlobLargerThanTheBudgetIsStreamedThrough(t *testing.T) {
	e := newEnv(t, withBudget(64<<10))
	body, h := regtest.RandomBlob(t, 1<<20)
	e.pushBlob("big", body)

	var wg sync.WaitGroup
	errs := make(chan string, 4)
	for range 4 {
		wg.Go(func() {
			resp, err := http.Get(e.mirror.URL + "/v2/big/blobs/" + h.String())
			if err != nil {
				errs <- err.Error()
				return
			}
			defer resp.Body.Close()
			got, err := io.ReadAll(resp.Body)
			if err != nil || resp.StatusCode != http.StatusOK || !bytes.Equal(got, body) {
				errs <- "client did not get the blob whole"
			}
			if resp.Header.Get("Docker-Content-Digest") != h.String() {
				errs <- "no Docker-Content-Digest"
			}
		})
	}
	wg.Wait()
	close(errs)
	for e := range errs {
		t.Error(e)
	}
	e.proxy.Close()
	if e.store.Has(h) {
		t.Fatal("a blob larger than the budget was stored")
	}
	if u := e.store.Usage(); u.Streamed == 0 || u.Bytes > 64<<10 {
		t.Fatalf("usage %+v: want streamed, under the budget", u)
	}
	if left, _ := os.ReadDir(filepath.Join(e.dataDir, "tmp")); len(left) != 0 {
		t.Errorf("temp files left behind: %v", left)
	}
	if e.logs.FilterMessage("cannot store blob; streaming it through").Len() == 0 {
		t.Error("no Warn log for a blob streamed through")
	}
}

func TestWrongBytesStreamedThroughAbortTheResponse(t *testing.T) {
	body, h := regtest.RandomBlob(t, 256<<10)
	e := newEnv(t, withBudget(64<<10), withUpstreamFault(corrupt(h, func(w http.ResponseWriter) {
		bad := bytes.Clone(body)
		bad[len(bad)-1] ^= 0xff
		w.Header().Set("Content-Length", strconv.Itoa(len(bad)))
		w.Write(bad)
	})))
	if got := e.getCut("/v2/big/blobs/"+h.String(), "for bad content streamed through"); len(got) >= len(body) {
		t.Fatalf("client got %d bytes of %d: the last must be held back", len(got), len(body))
	}
}

func TestBlobOfUnknownSizeOutgrowingTheBudgetIsStreamedNextTime(t *testing.T) {
	body, h := regtest.RandomBlob(t, 256<<10)
	e := newEnv(t, withBudget(64<<10), withUpstreamFault(corrupt(h, func(w http.ResponseWriter) {
		w.Write(body) // chunked: no length announced
	})))
	get := func() ([]byte, error) {
		resp, err := http.Get(e.mirror.URL + "/v2/big/blobs/" + h.String())
		if err != nil {
			return nil, err
		}
		defer resp.Body.Close()
		return io.ReadAll(resp.Body)
	}
	// The first attempt stores as it goes and runs out of room: it fails,
	// and its client retries, as every client does for a layer.
	get()
	got, err := get()
	if err != nil || !bytes.Equal(got, body) {
		t.Fatalf("retry: %d bytes, %v; want the whole blob streamed through", len(got), err)
	}
	e.proxy.Close()
	if e.store.Has(h) {
		t.Fatal("a blob larger than the budget was stored")
	}
	if u := e.store.Usage(); u.Bytes > 64<<10 {
		t.Fatalf("usage %+v over the budget", u)
	}
}
