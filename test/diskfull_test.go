package test

// A disk that fills in the middle of a download (issue 15): the flight's
// clients carry on from upstream, and nothing half-written stays behind.

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"

	"github.com/regmirror/regmirror/test/regtest"
)

func TestDiskFillingMidDownloadStreamsToEveryClient(t *testing.T) {
	t.Parallel()
	dir := regtest.Tmpfs(t, "16m")
	// 24 MiB: the first half (held back upstream until every client
	// follows the download) fits on the 16 MiB disk, the whole does not.
	up, g := startGated(t, "big", 24*mib)
	m := startMirror(t, up.URL, dir, "REGMIRROR_MAX_SIZE=0", "REGMIRROR_MIN_FREE=0")
	path := "/v2/big/blobs/" + g.digest.String()

	get := func(following func()) error {
		resp, err := http.Get(m.URL + path)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("status %d", resp.StatusCode)
		}
		hash := sha256.New()
		n, err := io.CopyN(hash, resp.Body, 64<<10)
		following()
		if err == nil {
			var rest int64
			rest, err = io.Copy(hash, resp.Body)
			n += rest
		}
		if got := hex.EncodeToString(hash.Sum(nil)); err != nil || got != g.digest.Hex || n != int64(len(g.data)) {
			return fmt.Errorf("%d bytes hashing to sha256:%s, %v; want %d bytes of %s", n, got, err, len(g.data), g.digest)
		}
		return nil
	}
	const clients = 8
	var following sync.WaitGroup
	following.Add(clients)
	errs := make(chan error, clients)
	for range clients {
		go func() {
			var once sync.Once
			reached := func() { once.Do(following.Done) }
			err := get(reached)
			reached() // a client that failed early must not hold the test up
			errs <- err
		}()
	}
	following.Wait() // every client has its first bytes from the one download
	g.Open()
	for range clients {
		if err := <-errs; err != nil {
			t.Errorf("GET %s: %v", path, err)
		}
	}
	if n := up.Count(http.MethodGet, g.path); n < 2 {
		t.Errorf("upstream GETs of the blob = %d: want the first and the streams after the disk filled", n)
	}
	ctx, cancel := context.WithTimeout(t.Context(), guard)
	defer cancel()
	streamed := func(rec map[string]any) bool {
		return rec["msg"] == "cannot store blob; streaming it through" && rec["digest"] == g.digest.String()
	}
	if err := m.waitLog(ctx, streamed); err != nil {
		t.Errorf("no log that the blob was streamed: %v", err)
	}
	if budStored(t, m, g.digest) {
		t.Error("the blob larger than the disk is in the cache")
	}
	if files := tmpFiles(t, dir); len(files) != 0 {
		t.Errorf("temp files left: %v", files)
	}
	if u := budImages(t, m).Usage; u.Streamed == 0 || u.Objects != 0 {
		t.Errorf("usage %+v: want the blob counted as streamed, nothing stored", u)
	}
	// The next request streams it from the start.
	if err := get(func() {}); err != nil {
		t.Errorf("GET %s after the disk filled: %v", path, err)
	}
	stdout, stderr, code := budCLI(t, m, "verify")
	if code != 0 || strings.Contains(stdout, "CORRUPT") {
		t.Errorf("regmirror verify: exit %d, stdout %q; stderr %s", code, stdout, stderr)
	}
}
