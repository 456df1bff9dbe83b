package test

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/regmirror/regmirror/test/regtest"
)

// procStats reads a process's open descriptors, threads and resident memory.
func procStats(pid int) (fds, threads int, rssKiB int64) {
	entries, _ := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	status, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	for _, line := range strings.Split(string(status), "\n") {
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		switch f[0] {
		case "Threads:":
			threads, _ = strconv.Atoi(f[1])
		case "VmRSS:":
			rssKiB, _ = strconv.ParseInt(f[1], 10, 64)
		}
	}
	return len(entries), threads, rssKiB
}

func fdTargets(pid int) []string {
	entries, _ := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	var out []string
	for _, e := range entries {
		if target, err := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", pid, e.Name())); err == nil {
			out = append(out, target)
		}
	}
	return out
}

// goroutines reads the mirror's go_goroutines gauge from its /metrics.
func goroutines(m *mirrorProc) (int, error) {
	resp, err := http.Get(m.URL + "/metrics")
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return 0, err
	}
	for line := range strings.SplitSeq(string(body), "\n") {
		if v, ok := strings.CutPrefix(line, "go_goroutines "); ok {
			return strconv.Atoi(strings.TrimSpace(v))
		}
	}
	return 0, fmt.Errorf("no go_goroutines in /metrics")
}

// TestFiveHundredConcurrentClients: 500 clients at once on a mix of cached
// and cold blobs (cold ones shared by many) all get the right bytes, and the
// mirror's descriptors and memory stay bounded and return to their resting
// level afterwards. The figures it logs are recorded in bench/RESULTS.md.
func TestFiveHundredConcurrentClients(t *testing.T) {
	const clients = 500
	up := startUpstream(t, nil)
	blobs := map[v1.Hash][]byte{}
	var digests []v1.Hash
	for i := range 40 {
		size := 64 << 10
		if i%10 == 0 {
			size = 4 << 20
		}
		b, _ := regtest.RandomBlob(t, size)
		h := pushBlob(t, up, "load", b)
		blobs[h] = b
		digests = append(digests, h)
	}
	m := startMirror(t, up.URL, "")
	// Half of them cached before the storm.
	for _, h := range digests[:20] {
		if resp, _ := m.do(http.MethodGet, "/v2/load/blobs/"+h.String(), nil); resp.StatusCode != http.StatusOK {
			t.Fatalf("warm %s: %d", h, resp.StatusCode)
		}
	}
	pid := m.cmd.Process.Pid
	baseFDs, _, _ := procStats(pid)
	baseG, err := goroutines(m)
	if err != nil {
		t.Fatal(err)
	}

	tr := &http.Transport{MaxIdleConnsPerHost: clients, MaxConnsPerHost: 0}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr, Timeout: 2 * time.Minute}
	var maxFDs, maxThreads, maxG atomic.Int64
	var maxRSS atomic.Int64
	stop := make(chan struct{})
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		for tick := 0; ; tick++ {
			if tick%5 == 0 { // every 100 ms: a scrape is a request of its own
				if g, err := goroutines(m); err == nil && int64(g) > maxG.Load() {
					maxG.Store(int64(g))
				}
			}
			fds, threads, rss := procStats(pid)
			for _, p := range []struct {
				max *atomic.Int64
				v   int64
			}{{&maxFDs, int64(fds)}, {&maxThreads, int64(threads)}, {&maxRSS, rss}} {
				if p.v > p.max.Load() {
					p.max.Store(p.v)
				}
			}
			select {
			case <-stop:
				return
			case <-time.After(20 * time.Millisecond):
			}
		}
	}()
	var wg sync.WaitGroup
	errs := make(chan error, clients)
	start := make(chan struct{})
	for i := range clients {
		wg.Go(func() {
			<-start
			h := digests[i%len(digests)]
			resp, err := client.Get(m.URL + "/v2/load/blobs/" + h.String())
			if err != nil {
				errs <- err
				return
			}
			got, err := io.ReadAll(resp.Body)
			resp.Body.Close()
			if err != nil || resp.StatusCode != http.StatusOK || !bytes.Equal(got, blobs[h]) {
				errs <- fmt.Errorf("client %d: status %d, %d bytes, %v", i, resp.StatusCode, len(got), err)
			}
		})
	}
	began := time.Now()
	close(start)
	wg.Wait()
	took := time.Since(began)
	close(stop)
	<-sampled
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if n := up.Count(http.MethodGet, "/v2/load/blobs/"); n > len(digests) {
		t.Errorf("upstream blob GETs = %d, want at most one per blob (%d)", n, len(digests))
	}
	// Bounded: a descriptor per client connection and per open blob, not more.
	if maxFDs.Load() > int64(baseFDs+3*clients) {
		t.Errorf("peak descriptors %d for %d clients (at rest %d)", maxFDs.Load(), clients, baseFDs)
	}
	// At rest again: the clients' connections closed; what stays is the
	// pool of idle upstream connections (at most 32, upstream/client.go).
	tr.CloseIdleConnections()
	const upstreamIdle = 32
	var rest int
	for range 200 { // connections close asynchronously; wait up to 10 s for them
		if rest, _, _ = procStats(pid); rest <= baseFDs+upstreamIdle {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if rest > baseFDs+upstreamIdle {
		t.Errorf("descriptors after the load %d, at rest before %d: something leaks: %v", rest, baseFDs, fdTargets(pid))
	}
	// Goroutines too: each idle upstream connection keeps two (its read
	// and write loops); every request's and download's are gone.
	var restG int
	for range 200 {
		if restG, err = goroutines(m); err == nil && restG <= baseG+2*upstreamIdle {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err != nil || restG > baseG+2*upstreamIdle {
		t.Errorf("goroutines after the load %d (%v), at rest before %d: something leaks", restG, err, baseG)
	}
	t.Logf("%d clients, 40 blobs (20 cached, 20 cold; 4 of 4 MiB, 36 of 64 KiB): %v; peak fds %d (rest %d), threads %d, RSS %d MiB, goroutines %d (rest %d, after %d)",
		clients, took.Round(time.Millisecond), maxFDs.Load(), baseFDs, maxThreads.Load(), maxRSS.Load()>>10, maxG.Load(), baseG, restG)
}
