// Package regtest is what regmirror's tests share: a request counter to put
// in front of an upstream registry, request helpers (raw ones too), OCI error
// decoding, a log to wait on, random content with its digest, a tiny
// filesystem, the state of a directory, headless Chromium, and the package-dependency check. Only tests
// import it.
package regtest

import (
	"bufio"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// Counter wraps a handler and counts its requests by method and path, so
// that "one upstream download" is an assertion.
type Counter struct {
	next http.Handler
	mu   sync.Mutex
	hits map[string]int // "METHOD /path" → requests
}

// Count returns a Counter in front of next.
func Count(next http.Handler) *Counter {
	return &Counter{next: next, hits: map[string]int{}}
}

func (c *Counter) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	c.mu.Lock()
	c.hits[r.Method+" "+r.URL.Path]++
	c.mu.Unlock()
	c.next.ServeHTTP(w, r)
}

// Count is the number of requests of method for exactly path.
func (c *Counter) Count(method, path string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.hits[method+" "+path]
}

// CountPrefix is the number of requests of method whose path starts with prefix.
func (c *Counter) CountPrefix(method, prefix string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := 0
	for k, v := range c.hits {
		if strings.HasPrefix(k, method+" "+prefix) {
			n += v
		}
	}
	return n
}

// Total is the number of requests of any method and path, pings included.
func (c *Counter) Total() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := 0
	for _, v := range c.hits {
		n += v
	}
	return n
}

// Snapshot copies the counts, keyed "METHOD /path".
func (c *Counter) Snapshot() map[string]int {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make(map[string]int, len(c.hits))
	for k, v := range c.hits {
		out[k] = v
	}
	return out
}

// Do sends a request and returns the response with its body read, failing
// the test on any transport error. A Host in header is sent as the request's
// Host.
func Do(t testing.TB, method, url string, header http.Header) (*http.Response, []byte) {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), method, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range header {
		req.Header[k] = v
	}
	if host := header.Get("Host"); host != "" {
		req.Host = host
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: read body: %v", method, url, err)
	}
	return resp, body
}

// ParseOCIError decodes an OCI error body: its first code and message. ok is
// false when body is not one, or its first error has no code.
func ParseOCIError(body []byte) (code, message string, ok bool) {
	var e struct {
		Errors []struct{ Code, Message string }
	}
	if json.Unmarshal(body, &e) != nil || len(e.Errors) == 0 || e.Errors[0].Code == "" {
		return "", "", false
	}
	return e.Errors[0].Code, e.Errors[0].Message, true
}

// OCIError checks that resp carries an OCI error body and returns its first
// code and message.
func OCIError(t testing.TB, resp *http.Response, body []byte) (code, message string) {
	t.Helper()
	code, message, ok := ParseOCIError(body)
	if ct := resp.Header.Get("Content-Type"); ct != "application/json" || !ok {
		t.Fatalf("status %d: not an OCI error (Content-Type %q): %q", resp.StatusCode, ct, body)
	}
	return code, message
}

// OCICode is OCIError's code.
func OCICode(t testing.TB, resp *http.Response, body []byte) string {
	t.Helper()
	code, _ := OCIError(t, resp, body)
	return code
}

// RandomBlob returns n random bytes and their sha256 digest.
func RandomBlob(t testing.TB, n int) ([]byte, v1.Hash) {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b, DigestOf(b)
}

// DigestOf is b's sha256 digest.
func DigestOf(b []byte) v1.Hash {
	sum := sha256.Sum256(b)
	return v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(sum[:])}
}

// Digest is d's digest, failing the test on error.
func Digest(t testing.TB, d interface{ Digest() (v1.Hash, error) }) v1.Hash {
	t.Helper()
	h, err := d.Digest()
	if err != nil {
		t.Fatal(err)
	}
	return h
}

// CheckDeps fails when the package in the current directory, self, imports
// any other package of module: it keeps cache and upstream from growing a
// dependency on proxy or on each other.
func CheckDeps(t *testing.T, module, self string) {
	t.Helper()
	out, err := exec.Command("go", "list", "-deps", ".").Output()
	if err != nil {
		t.Fatal(err)
	}
	for _, dep := range strings.Fields(string(out)) {
		if strings.HasPrefix(dep, module+"/") && dep != self {
			t.Errorf("%s imports %s", self, dep)
		}
	}
}

// ReadImage reads img's manifest, its config and every layer (compressed)
// once, as a pull does, and returns their bytes and the number of layers.
func ReadImage(t testing.TB, img v1.Image) (bytes int64, layers int) {
	t.Helper()
	raw, err := img.RawManifest()
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := img.RawConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	bytes = int64(len(raw) + len(cfg))
	ls, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range ls {
		rc, err := l.Compressed()
		if err != nil {
			t.Fatal(err)
		}
		n, err := io.Copy(io.Discard, rc)
		rc.Close()
		if err != nil {
			t.Fatal(err)
		}
		bytes += n
	}
	return bytes, len(ls)
}

// Tmpfs mounts a tmpfs of size (mount -o size=, e.g. "4m") on a fresh
// directory, unmounted when the test ends, after anything registered later
// (a store, a mirror) has stopped. Without root, or if the mount fails, it
// skips; it fails when REGMIRROR_REQUIRE_CLIENTS=1, as CI sets.
func Tmpfs(t testing.TB, size string) string {
	t.Helper()
	skip := func(msg string) {
		t.Helper()
		if os.Getenv("REGMIRROR_REQUIRE_CLIENTS") == "1" {
			t.Fatal(msg + "; REGMIRROR_REQUIRE_CLIENTS=1 makes this a failure")
		}
		t.Skip(msg)
	}
	if os.Geteuid() != 0 {
		skip("a tiny filesystem needs root, to mount a tmpfs")
	}
	dir := t.TempDir()
	if err := syscall.Mount("tmpfs", dir, "tmpfs", 0, "size="+size); err != nil {
		skip(fmt.Sprintf("mount -t tmpfs -o size=%s tmpfs %s: %v", size, dir, err))
	}
	t.Cleanup(func() {
		if err := syscall.Unmount(dir, 0); err != nil {
			t.Errorf("umount %s: %v", dir, err)
			syscall.Unmount(dir, syscall.MNT_DETACH)
		}
	})
	return dir
}

// Exchange writes one request, as raw bytes on the wire, on conn and reads
// its answer from br (reading conn), body included: for requests no client
// would send. The request is written while the answer is read, since a
// server may answer (431, 400) before it has read all of it. A connection the
// server closes after such an answer may be reset where the end of file
// after the body would be: that counts as the end. resp.Close is also set
// when the request could not be written whole: conn is not to be reused.
func Exchange(conn net.Conn, br *bufio.Reader, method string, wire []byte) (*http.Response, []byte, error) {
	written := make(chan error, 1)
	go func() { _, err := conn.Write(wire); written <- err }()
	resp, err := http.ReadResponse(br, &http.Request{Method: method})
	if err != nil {
		conn.Close() // ends the write, if it still waits
		<-written
		return nil, nil, fmt.Errorf("read answer: %w", err)
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil && resp.Close && errors.Is(err, syscall.ECONNRESET) {
		err = nil
	}
	if werr := <-written; werr != nil {
		resp.Close = true
	}
	if err != nil {
		return resp, body, fmt.Errorf("read body: %w", err)
	}
	return resp, body, nil
}

// Chromium renders url in Debian's headless Chromium (bin), with home as its
// profile and env as its environment, and returns its standard output (the
// DOM with --dump-dom). It talks to nothing but url: no proxy, no
// background traffic.
func Chromium(ctx context.Context, t testing.TB, bin, home string, env []string, url string, extra ...string) string {
	t.Helper()
	args := append([]string{"--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
		"--disable-background-networking", "--no-proxy-server", "--user-data-dir=" + home}, extra...)
	cmd := exec.CommandContext(ctx, bin, append(args, url)...)
	cmd.Env = env
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("chromium %s: %v\n%s", url, err, stderr.String())
	}
	return string(out)
}

// DirState is every file and directory under dir with its mode, size,
// modification time and, for files, the SHA-256 of its bytes: equal states
// mean nothing under dir changed.
func DirState(t testing.TB, dir string) map[string]string {
	t.Helper()
	state := map[string]string{}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		sum := ""
		if !d.IsDir() {
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			sum = fmt.Sprintf("%x", sha256.Sum256(b))
		}
		state[p] = fmt.Sprint(info.Mode(), info.Size(), info.ModTime(), sum)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return state
}
