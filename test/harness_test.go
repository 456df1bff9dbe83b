// Package test holds regmirror's end-to-end tests: the real binary, built
// once, driven over HTTP against an in-process upstream registry.
package test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/regmirror/regmirror/test/regtest"
	"go.uber.org/goleak"
)

// binary is the regmirror binary built by TestMain.
var binary string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "regmirror-e2e-")
	if err != nil {
		log.Fatal(err)
	}
	binary = filepath.Join(dir, "regmirror")
	args := []string{"build", "-o", binary}
	if raceEnabled {
		args = append(args, "-race")
	}
	build := exec.Command("go", append(args, "../cmd/regmirror")...)
	build.Stdout, build.Stderr = os.Stdout, os.Stderr
	if err := build.Run(); err != nil {
		log.Fatalf("build regmirror: %v", err)
	}
	code := m.Run()
	os.RemoveAll(dir)
	// Every in-process server and client a test started is stopped by it:
	// what is left once idle keep-alive connections are closed is a leak.
	http.DefaultClient.CloseIdleConnections()
	if err := goleak.Find(); code == 0 && err != nil {
		fmt.Fprintln(os.Stderr, "goleak:", err)
		code = 1
	}
	os.Exit(code)
}

// upstreamServer is an in-process registry wrapped to count requests and,
// optionally, to inject faults.
type upstreamServer struct {
	*httptest.Server
	*regtest.Counter
}

// startUpstream starts a go-containerregistry registry on 127.0.0.1. wrap, if
// not nil, stands between the counter and the registry to inject faults.
func startUpstream(t *testing.T, wrap func(http.Handler) http.Handler) *upstreamServer {
	t.Helper()
	var h http.Handler = registry.New(registry.Logger(log.New(io.Discard, "", 0)))
	if wrap != nil {
		h = wrap(h)
	}
	counter := regtest.Count(h)
	u := &upstreamServer{Server: httptest.NewServer(counter), Counter: counter}
	t.Cleanup(u.Close)
	return u
}

// Host is host:port of the upstream, for go-containerregistry references.
func (u *upstreamServer) Host() string { return strings.TrimPrefix(u.URL, "http://") }

// mirrorProc is a running regmirror binary.
type mirrorProc struct {
	t        *testing.T
	cmd      *exec.Cmd
	Addr     string // host:port it listens on
	URL      string // http://host:port
	AdminURL string // its admin API
	DataDir  string
	log      *regtest.Log // every line it wrote to stderr
	exited   chan struct{}
}

// startMirror runs the binary with its cache in dataDir (a fresh temp dir if
// empty) against upstreamURL, plus any extra REGMIRROR_* settings, and waits
// until it logs that it listens. It is stopped (SIGTERM) when the test ends.
func startMirror(t *testing.T, upstreamURL, dataDir string, extraEnv ...string) *mirrorProc {
	t.Helper()
	if dataDir == "" {
		dataDir = t.TempDir()
	}
	cmd := exec.Command(binary)
	cmd.Env = append(os.Environ(),
		"REGMIRROR_ADDR=127.0.0.1:0",
		"REGMIRROR_DATA_DIR="+dataDir,
		"REGMIRROR_UPSTREAM="+upstreamURL,
		"REGMIRROR_LOG_FORMAT=json",
		"REGMIRROR_LOG_LEVEL=debug",
		"REGMIRROR_UPSTREAM_TIMEOUT=5s",
		"REGMIRROR_ADMIN_ADDR=127.0.0.1:0",
		"REGMIRROR_MIN_FREE=0",     // a test machine's disk may be nearly full; tests of the floor set it
		"GORACE=atexit_sleep_ms=0", // a -race binary would sleep 1s on every exit
	)
	cmd.Env = append(cmd.Env, extraEnv...)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout = io.Discard
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	m := &mirrorProc{t: t, cmd: cmd, DataDir: dataDir, log: regtest.NewLog(), exited: make(chan struct{})}
	listening := make(chan [2]string, 1)
	go func() {
		sc := bufio.NewScanner(stderr)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			line := sc.Text()
			m.log.Add(line)
			var rec struct {
				Msg       string `json:"msg"`
				Addr      string `json:"addr"`
				AdminAddr string `json:"admin_addr"`
			}
			if json.Unmarshal([]byte(line), &rec) == nil && rec.Msg == "listening" {
				listening <- [2]string{rec.Addr, rec.AdminAddr}
			}
		}
		m.log.Close()
		cmd.Wait()
		close(m.exited)
	}()
	t.Cleanup(func() {
		m.Stop()
		// The binary is built with -race when the tests run with it: a race
		// report on its stderr fails the test that ran it.
		if logs := m.Logs(); strings.Contains(logs, "WARNING: DATA RACE") {
			t.Errorf("regmirror reported a data race; logs:\n%s", logs)
		}
	})
	select {
	case addrs := <-listening:
		m.Addr, m.URL = addrs[0], "http://"+addrs[0]
		if addrs[1] != "" {
			m.AdminURL = "http://" + addrs[1]
		}
	case <-m.exited:
		t.Fatalf("regmirror exited before listening; logs:\n%s", m.Logs())
	case <-time.After(60 * time.Second):
		t.Fatalf("regmirror did not start listening; logs:\n%s", m.Logs())
	}
	return m
}

// Stop sends SIGTERM and waits for the process to exit.
func (m *mirrorProc) Stop() {
	select {
	case <-m.exited:
		return
	default:
	}
	m.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-m.exited:
	case <-time.After(60 * time.Second):
		m.cmd.Process.Kill()
		<-m.exited
		m.t.Errorf("regmirror did not exit within 60s of SIGTERM")
	}
}

// Kill sends SIGKILL and waits for the process to exit.
func (m *mirrorProc) Kill() {
	m.cmd.Process.Kill()
	<-m.exited
}

// Logs returns everything the mirror logged so far.
func (m *mirrorProc) Logs() string {
	return m.log.String()
}

// Host is host:port of the mirror, for go-containerregistry references.
func (m *mirrorProc) Host() string { return m.Addr }

// do sends a request to the mirror and returns the response with its body read.
func (m *mirrorProc) do(method, path string, header http.Header) (*http.Response, []byte) {
	m.t.Helper()
	return regtest.Do(m.t, method, m.URL+path, header)
}

// listFiles returns every regular file under dir with its size, for "nothing
// was touched" comparisons.
func listFiles(t *testing.T, dir string) map[string]string {
	t.Helper()
	out := map[string]string{}
	filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return nil
		}
		info, err := d.Info()
		if err == nil {
			out[p] = fmt.Sprintf("%d %s", info.Size(), info.ModTime())
		}
		return nil
	})
	return out
}

// ref parses host/repo:tag, failing the test on error.
func ref(t *testing.T, host, repoTag string) name.Reference {
	t.Helper()
	r, err := name.ParseReference(host + "/" + repoTag)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// waitLog waits until the mirror has logged a JSON line for which match is
// true. It fails when ctx ends or the process exits first.
func (m *mirrorProc) waitLog(ctx context.Context, match func(rec map[string]any) bool) error {
	_, err := m.log.Wait(ctx, 0, match)
	return err
}

// ExitCode waits for the process to exit and returns its exit code.
func (m *mirrorProc) ExitCode() int {
	<-m.exited
	return m.cmd.ProcessState.ExitCode()
}

// send is do for subtests: it reports failures on t rather than on the test
// that started the mirror, and it can send a body.
func (m *mirrorProc) send(t *testing.T, method, path string, body io.Reader) (*http.Response, []byte) {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), method, m.URL+path, body)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: read body: %v", method, path, err)
	}
	return resp, b
}

// rawDo sends a request with requestURI written into the request line exactly
// as given, over a fresh TCP connection, so that no client cleans or
// re-escapes the path. It returns the response with its body read.
func (m *mirrorProc) rawDo(t *testing.T, method, requestURI string) (*http.Response, []byte) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", m.Addr)
	if err != nil {
		t.Fatalf("%s %s: %v", method, requestURI, err)
	}
	defer conn.Close()
	if dl, ok := ctx.Deadline(); ok {
		conn.SetDeadline(dl)
	}
	wire := fmt.Sprintf("%s %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n", method, requestURI, m.Addr)
	resp, body, err := regtest.Exchange(conn, bufio.NewReader(conn), method, []byte(wire))
	if err != nil {
		t.Fatalf("%s %s: %v", method, requestURI, err)
	}
	return resp, body
}

// pushBlob pushes data upstream as a layer of repo and returns its digest.
func pushBlob(t *testing.T, u *upstreamServer, repo string, data []byte) v1.Hash {
	t.Helper()
	r, err := name.NewRepository(u.Host() + "/" + repo)
	if err != nil {
		t.Fatal(err)
	}
	layer := static.NewLayer(data, types.OCILayer)
	if err := remote.WriteLayer(r, layer, remote.WithContext(t.Context())); err != nil {
		t.Fatalf("push blob to %s: %v", r, err)
	}
	h, err := layer.Digest()
	if err != nil {
		t.Fatal(err)
	}
	return h
}

// blobFiles lists the files under dataDir/blobs whose name holds h's hex, i.e.
// the cached copies of h, wherever the store puts them.
func blobFiles(t *testing.T, dataDir string, h v1.Hash) []string {
	t.Helper()
	var out []string
	for p := range listFiles(t, filepath.Join(dataDir, "blobs")) {
		if strings.Contains(filepath.Base(p), h.Hex) {
			out = append(out, p)
		}
	}
	return out
}

// tmpFiles lists every file under dataDir/tmp.
func tmpFiles(t *testing.T, dataDir string) []string {
	t.Helper()
	var out []string
	for p := range listFiles(t, filepath.Join(dataDir, "tmp")) {
		out = append(out, p)
	}
	return out
}

// gatedBlob is random blob content whose first upstream GET sends the first
// half of the bytes, flushes, and then waits until the test opens the gate
// (or the requester goes away). Later GETs are served normally.
type gatedBlob struct {
	data   []byte
	digest v1.Hash
	repo   string // upstream repository, library/ included
	path   string // upstream path of the blob
	gate   chan struct{}
	once   sync.Once
	gets   atomic.Int32
}

// startGated starts an upstream holding a gatedBlob of size bytes in
// library/<repo>. The gate opens when the test ends, if not before.
func startGated(t *testing.T, repo string, size int) (*upstreamServer, *gatedBlob) {
	t.Helper()
	data, _ := regtest.RandomBlob(t, size)
	layer := static.NewLayer(data, types.OCILayer)
	h, err := layer.Digest()
	if err != nil {
		t.Fatal(err)
	}
	g := &gatedBlob{data: data, digest: h, repo: "library/" + repo, gate: make(chan struct{})}
	g.path = "/v2/" + g.repo + "/blobs/" + h.String()
	up := startUpstream(t, g.wrap)
	t.Cleanup(g.Open) // runs before the upstream closes, which waits for its handlers
	if got := pushBlob(t, up, g.repo, data); got != h {
		t.Fatalf("pushed digest %s, want %s", got, h)
	}
	return up, g
}

// Open lets the held-back GET send the rest of the blob.
func (g *gatedBlob) Open() { g.once.Do(func() { close(g.gate) }) }

func (g *gatedBlob) wrap(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet || r.URL.Path != g.path || g.gets.Add(1) > 1 {
			next.ServeHTTP(w, r)
			return
		}
		next.ServeHTTP(&pauseWriter{ResponseWriter: w, ctx: r.Context(), at: int64(len(g.data) / 2), release: g.gate}, r)
	})
}

// pauseWriter passes the first at bytes through, flushes them, waits until
// release is closed (or ctx ends), then passes the rest.
type pauseWriter struct {
	http.ResponseWriter
	ctx     context.Context
	at      int64
	release <-chan struct{}
	n       int64
}

func (w *pauseWriter) Write(p []byte) (int, error) {
	written := 0
	if w.n < w.at {
		k := int(min(int64(len(p)), w.at-w.n))
		n, err := w.ResponseWriter.Write(p[:k])
		w.n += int64(n)
		written += n
		if err != nil {
			return written, err
		}
		p = p[k:]
		if w.n < w.at {
			return written, nil
		}
		http.NewResponseController(w.ResponseWriter).Flush()
		select {
		case <-w.release:
		case <-w.ctx.Done():
			return written, w.ctx.Err()
		}
	}
	n, err := w.ResponseWriter.Write(p)
	w.n += int64(n)
	return written + n, err
}

// faultOnce wraps an upstream so that the first GET of path goes through
// fault instead of straight to the registry; later requests are untouched.
func faultOnce(path string, fault func(next http.Handler, w http.ResponseWriter, r *http.Request)) func(http.Handler) http.Handler {
	var n atomic.Int32
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.Method == http.MethodGet && r.URL.Path == path && n.Add(1) == 1 {
				fault(next, w, r)
				return
			}
			next.ServeHTTP(w, r)
		})
	}
}

// tamperWriter flips the byte at offset at of what the registry writes.
type tamperWriter struct {
	http.ResponseWriter
	at, n int64
}

func (w *tamperWriter) Write(p []byte) (int, error) {
	if w.at >= w.n && w.at < w.n+int64(len(p)) {
		p = bytes.Clone(p)
		p[w.at-w.n] ^= 0xff
	}
	n, err := w.ResponseWriter.Write(p)
	w.n += int64(n)
	return n, err
}

// noLengthWriter drops the Content-Length header, so that the response goes
// out chunked.
type noLengthWriter struct{ http.ResponseWriter }

func (w *noLengthWriter) WriteHeader(code int) {
	w.Header().Del("Content-Length")
	w.ResponseWriter.WriteHeader(code)
}

func (w *noLengthWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// truncateWriter passes the first limit bytes and refuses the rest.
type truncateWriter struct {
	http.ResponseWriter
	limit, n int64
}

var errTruncated = errors.New("truncated by the test")

func (w *truncateWriter) Write(p []byte) (int, error) {
	if w.n+int64(len(p)) > w.limit {
		p = p[:w.limit-w.n]
		n, _ := w.ResponseWriter.Write(p)
		w.n += int64(n)
		return n, errTruncated
	}
	n, err := w.ResponseWriter.Write(p)
	w.n += int64(n)
	return n, err
}
