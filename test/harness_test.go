// Package test holds regmirror's end-to-end tests: the real binary, built
// once, driven over HTTP against an in-process upstream registry.
package test

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
)

// binary is the regmirror binary built by TestMain.
var binary string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "regmirror-e2e-")
	if err != nil {
		log.Fatal(err)
	}
	binary = filepath.Join(dir, "regmirror")
	build := exec.Command("go", "build", "-race", "-o", binary, "../cmd/regmirror")
	if os.Getenv("REGMIRROR_E2E_NORACE") != "" {
		build = exec.Command("go", "build", "-o", binary, "../cmd/regmirror")
	}
	build.Stdout, build.Stderr = os.Stdout, os.Stderr
	if err := build.Run(); err != nil {
		log.Fatalf("build regmirror: %v", err)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// upstreamServer is an in-process registry wrapped to count requests and,
// optionally, to inject faults.
type upstreamServer struct {
	*httptest.Server
	mu   sync.Mutex
	hits map[string]int // "METHOD /path" → count
}

// startUpstream starts a go-containerregistry registry on 127.0.0.1. wrap, if
// not nil, stands between the counter and the registry to inject faults.
func startUpstream(t *testing.T, wrap func(http.Handler) http.Handler) *upstreamServer {
	t.Helper()
	var h http.Handler = registry.New(registry.Logger(log.New(io.Discard, "", 0)))
	if wrap != nil {
		h = wrap(h)
	}
	u := &upstreamServer{hits: map[string]int{}}
	u.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		u.mu.Lock()
		u.hits[r.Method+" "+r.URL.Path]++
		u.mu.Unlock()
		h.ServeHTTP(w, r)
	}))
	t.Cleanup(u.Close)
	return u
}

// Host is host:port of the upstream, for go-containerregistry references.
func (u *upstreamServer) Host() string { return strings.TrimPrefix(u.URL, "http://") }

func (u *upstreamServer) count(method, path string) int {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.hits[method+" "+path]
}

// countPrefix counts requests of method whose path starts with prefix.
func (u *upstreamServer) countPrefix(method, prefix string) int {
	u.mu.Lock()
	defer u.mu.Unlock()
	n := 0
	for k, v := range u.hits {
		if strings.HasPrefix(k, method+" "+prefix) {
			n += v
		}
	}
	return n
}

// mirrorProc is a running regmirror binary.
type mirrorProc struct {
	t       *testing.T
	cmd     *exec.Cmd
	Addr    string // host:port it listens on
	URL     string // http://host:port
	DataDir string
	logMu   sync.Mutex
	logs    []string // every line it wrote to stderr
	exited  chan struct{}
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
	m := &mirrorProc{t: t, cmd: cmd, DataDir: dataDir, exited: make(chan struct{})}
	listening := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stderr)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			line := sc.Text()
			m.logMu.Lock()
			m.logs = append(m.logs, line)
			m.logMu.Unlock()
			var rec struct {
				Msg  string `json:"msg"`
				Addr string `json:"addr"`
			}
			if json.Unmarshal([]byte(line), &rec) == nil && rec.Msg == "listening" {
				listening <- rec.Addr
			}
		}
		cmd.Wait()
		close(m.exited)
	}()
	t.Cleanup(func() { m.Stop() })
	select {
	case addr := <-listening:
		m.Addr, m.URL = addr, "http://"+addr
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
	m.logMu.Lock()
	defer m.logMu.Unlock()
	return strings.Join(m.logs, "\n")
}

// Host is host:port of the mirror, for go-containerregistry references.
func (m *mirrorProc) Host() string { return m.Addr }

// get sends a request to the mirror and returns the response with its body read.
func (m *mirrorProc) do(method, path string, header http.Header) (*http.Response, []byte) {
	m.t.Helper()
	req, err := http.NewRequestWithContext(m.t.Context(), method, m.URL+path, nil)
	if err != nil {
		m.t.Fatal(err)
	}
	for k, v := range header {
		req.Header[k] = v
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		m.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		m.t.Fatalf("%s %s: read body: %v", method, path, err)
	}
	return resp, body
}

// ociError decodes an OCI error body and returns its first code, failing the
// test if the body is not one.
func ociError(t *testing.T, resp *http.Response, body []byte) string {
	t.Helper()
	var e struct {
		Errors []struct{ Code, Message string }
	}
	if resp.Header.Get("Content-Type") != "application/json" || json.Unmarshal(body, &e) != nil || len(e.Errors) == 0 {
		t.Fatalf("status %d: not an OCI error (Content-Type %q): %q", resp.StatusCode, resp.Header.Get("Content-Type"), body)
	}
	return e.Errors[0].Code
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
