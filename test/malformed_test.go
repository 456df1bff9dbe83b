package test

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"maps"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/regmirror/regmirror/proxy"
	"github.com/regmirror/regmirror/test/regtest"
)

// malformedCount is how many requests TestMalformedRequestFlood sends.
const malformedCount = 10_000

// rawRequest is one request as bytes on the wire.
type rawRequest struct {
	method string // for reading the answer (HEAD has no body)
	wire   []byte
	broken bool // built to be refused by net/http itself
}

// malformedGen builds requests from a seeded generator, so every run sends
// the same ones.
type malformedGen struct {
	r      *rand.Rand
	host   string
	cached []string // digests the mirror holds
}

func (g *malformedGen) pick(s ...string) string { return s[g.r.IntN(len(s))] }

func (g *malformedGen) digest(broken bool) string {
	switch g.r.IntN(6) {
	case 0:
		return g.pick(g.cached...)
	case 1:
		if broken {
			return "sha256:" + strings.Repeat("%", 64)
		}
		return "sha256:" + strings.Repeat(g.pick("0", "a", "f", "A", "g", "%25", "."), 64)
	case 2:
		return g.pick("sha256:", "sha256", "md5:d41d8cd98f00b204e9800998ecf8427e", "sha256:..%2F..%2Fetc", "sha512:"+strings.Repeat("a", 128))
	case 3:
		return "sha256:" + strings.Repeat("0", g.r.IntN(80))
	default:
		b := make([]byte, 32)
		for i := range b {
			b[i] = byte(g.r.IntN(256))
		}
		return fmt.Sprintf("sha256:%x", b) // well formed, not cached, not upstream
	}
}

// component is one odd path component; with broken set it may also be
// one that net/http itself refuses (a raw space, a bad escape).
func (g *malformedGen) component(broken bool) string {
	if broken && g.r.IntN(3) == 0 {
		return g.pick("%zz", "%", "a b", "a\x01b", "\x7f")
	}
	return g.pick("multi", "library", "a", "ab-c", "a__b", "A", "..", ".", "", "%2e%2e", "%2F", "%00", "a%00b",
		"a;b", "é", "%C3%A9", "manifests", "blobs", "tags", "docker.io", "evil.example", "localhost",
		"127.0.0.1:1", "a?b", "a#b", "~", "\\..\\", strings.Repeat("x", 200), strings.Repeat("ab/", 100))
}

func (g *malformedGen) path(broken bool) string {
	var b strings.Builder
	if broken && g.r.IntN(3) == 0 {
		b.WriteString(g.pick("", "*", "v2/", "?")) // not a path net/http takes
	} else {
		b.WriteString(g.pick("/v2/", "/v2/", "/v2/", "/v2", "/", "//v2/", "/v2//", "/V2/", "/v2/./", "/v2/../", "/_regmirror/check", "/healthz", "/readyz", "http://"+g.host+"/v2/"))
	}
	for range g.r.IntN(4) {
		b.WriteString(g.component(broken) + "/")
	}
	switch g.r.IntN(7) {
	case 0:
		b.WriteString("manifests/" + g.pick("latest", "-bad", "..", "a+b", strings.Repeat("t", 129), "%00", "v1.0", g.digest(broken)))
	case 1:
		b.WriteString("blobs/" + g.digest(broken))
	case 2:
		b.WriteString("tags/list")
	case 3:
		b.WriteString("_catalog")
	case 4:
		b.WriteString(g.pick("blobs/uploads/", "manifests/", "blobs/", "tags/", ""))
	case 5:
		b.WriteString(strings.Repeat(g.pick("a", "../", "%2e", "/", "%00"), g.r.IntN(2000)))
	default:
		b.WriteString("multi/manifests/latest")
	}
	if g.r.IntN(2) == 0 {
		b.WriteString("?" + g.query(broken))
	}
	return b.String()
}

func (g *malformedGen) query(broken bool) string {
	var parts []string
	if broken && g.r.IntN(3) == 0 {
		parts = append(parts, g.pick("a b", "\x00", "x=\r"))
	}
	for range 1 + g.r.IntN(3) {
		parts = append(parts, g.pick(
			"ns=docker.io", "ns=", "ns=evil.example", "ns=%00", "ns=docker.io&ns=evil.example", "ns=DOCKER.IO",
			"ns="+strings.Repeat("a.", 200), "ns=127.0.0.1:1", "ns=%zz", "n=-1", "n=0", "n=99999999999999999999", "n=abc",
			"last=%2F..", "last=", "image=multi:latest", "image=", "image=..%2F..", "image="+strings.Repeat("a", 300),
			"&&==;;", "%", "%%%", "a=b=c", "=", ";ns=docker.io", "\u00ff", "q=%0d%0aX-Injected:%20yes"))
	}
	return strings.Join(parts, "&")
}

func (g *malformedGen) headers(broken bool) []string {
	h := []string{"Host: " + g.host}
	if broken {
		switch g.r.IntN(3) {
		case 0:
			h = h[:0] // no Host
		case 1:
			h = append(h, "Host: evil.example")
		default:
			h[0] = "Host: " + g.pick("", "a b", "[::1", "x\x01y")
		}
	}
	for range g.r.IntN(4) {
		h = append(h, g.pick(
			"Range: "+g.pick("bytes=0-0", "bytes=-0", "bytes=5-2", "bytes=0-", "bytes=-99999999999999999999", "bytes=a-b", "bytes=", "items=0-1", "bytes=0-1,"+strings.Repeat("2-3,", 300)),
			"Range: bytes=0-1",
			"Accept: "+g.pick("*/*", "", "application/vnd.oci.image.index.v1+json", "text/html", "application/json;q=abc", strings.Repeat("a/b, ", 2000), "\u00ff"),
			"If-None-Match: "+g.pick("*", `"x"`, "", `W/"sha256:`),
			"If-Range: "+g.pick(`"x"`, "Mon, 02 Jan 2006 15:04:05 GMT", "garbage"),
			"If-Modified-Since: "+g.pick("yesterday", "Mon, 02 Jan 2006 15:04:05 GMT"),
			"Authorization: "+g.pick("Basic", "Basic !!!", "Bearer x", "Basic "+strings.Repeat("QUFB", 100)),
			"X-Dup: 1", "X-Dup: 2", "Cookie: a=b", "Range: bytes=1-1", "Accept: */*",
			"Transfer-Encoding: chunked", "X-Odd: \u00ff\u00fe",
		))
	}
	// A second chunked coding is refused by net/http (501).
	if i := slices.Index(h, "Transfer-Encoding: chunked"); i >= 0 {
		h = append(h[:i+1], slices.DeleteFunc(h[i+1:], func(v string) bool { return v == "Transfer-Encoding: chunked" })...)
	}
	if broken {
		h = append(h, g.pick("Content-Length: -1", "Content-Length: abc", "Content-Length: 1, 2", "Content-Length: 99999999999999999999",
			"Transfer-Encoding: chunked, chunked", "Transfer-Encoding: identity", "Bad Header: x", ": empty name", "NoColon", "X-Ctl: a\x00b"))
	}
	if g.r.IntN(100) == 0 {
		h = append(h, "X-Huge: "+strings.Repeat("h", 100<<10))
	}
	if g.r.IntN(50) == 0 {
		for i := range 200 {
			h = append(h, fmt.Sprintf("X-Many-%d: %s", i, strings.Repeat("m", 100)))
		}
	}
	return h
}

// next is a request that is odd in what it asks (three in four) or broken
// as HTTP (one in four: the request line, the Host or a header).
func (g *malformedGen) next() rawRequest {
	broken := g.r.IntN(4) == 0
	method := g.pick("GET", "GET", "GET", "GET", "HEAD", "HEAD", "PUT", "POST", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT", "PROPFIND", "get")
	proto := g.pick("HTTP/1.1", "HTTP/1.1", "HTTP/1.1", "HTTP/1.0")
	if broken {
		switch g.r.IntN(4) {
		case 0:
			method = g.pick("G\x00T", "GE T", strings.Repeat("G", 300), "", "GET\t")
		case 1:
			proto = g.pick("HTTP/1.x", "HTTP/3.0", "HTTP/2.0", "HTTP/1.1 extra", "", "http/1.1", "HTTP/01.1")
		}
	}
	var b bytes.Buffer
	b.WriteString(method + " " + g.path(broken) + " " + proto + "\r\n")
	chunked := false
	for _, h := range g.headers(broken) {
		b.WriteString(h + "\r\n")
		chunked = chunked || h == "Transfer-Encoding: chunked"
	}
	// A body is always complete: the server reads what the handler left of
	// it before answering, and would wait for a missing rest.
	switch {
	case chunked:
		b.WriteString("\r\n0\r\n\r\n")
	case method == "PUT" || method == "POST" || method == "PATCH":
		body := strings.Repeat("{}", g.r.IntN(100))
		b.WriteString(fmt.Sprintf("Content-Length: %d\r\n\r\n%s", len(body), body))
	default:
		b.WriteString("\r\n")
	}
	return rawRequest{method: method, wire: b.Bytes(), broken: broken}
}

// answer is what the mirror sent back to one request.
type answer struct {
	req    rawRequest
	status int
	header http.Header
	body   []byte
	close  bool // the server closed the connection after it
}

// netHTTPOwn reports whether a is an answer net/http writes itself, before
// any handler runs: the request line, a header or the Host could not be
// parsed (400), the headers passed MaxHeaderBytes (431), a Transfer-Encoding
// other than chunked (501), or an HTTP major version other than 1 (505).
// Those are plain text, by design of net/http, and close the connection.
func netHTTPOwn(a answer) bool {
	prefix := map[int]string{
		400: "400 Bad Request", 431: "431 Request Header Fields Too Large",
		501: "Unsupported transfer encoding", 505: "505 HTTP Version Not Supported",
	}[a.status]
	return prefix != "" && strings.HasPrefix(a.header.Get("Content-Type"), "text/plain") && a.close &&
		(bytes.HasPrefix(a.body, []byte(prefix)) || a.req.method == http.MethodHead)
}

// flood sends every request over a few reused connections and collects the
// answers. A connection the server closes is replaced.
func flood(t *testing.T, addr string, reqs []rawRequest, workers int) []answer {
	t.Helper()
	out := make([]answer, len(reqs))
	next := make(chan int)
	errc := make(chan error, workers)
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var conn net.Conn
			var br *bufio.Reader
			defer func() {
				if conn != nil {
					conn.Close()
				}
			}()
			for i := range next {
				if conn == nil {
					c, err := net.Dial("tcp", addr)
					if err != nil {
						errc <- err
						return
					}
					conn, br = c, bufio.NewReader(c)
				}
				conn.SetDeadline(time.Now().Add(guard))
				resp, body, err := regtest.Exchange(conn, br, reqs[i].method, reqs[i].wire)
				if err != nil {
					errc <- fmt.Errorf("request %d %q: %v", i, truncate(reqs[i].wire), err)
					return
				}
				out[i] = answer{req: reqs[i], status: resp.StatusCode, header: resp.Header, body: body, close: resp.Close}
				if resp.Close {
					conn.Close()
					conn = nil
				}
			}
		}()
	}
	for i := range reqs {
		select {
		case next <- i:
		case err := <-errc:
			close(next)
			wg.Wait()
			t.Fatal(err)
		}
	}
	close(next)
	wg.Wait()
	select {
	case err := <-errc:
		t.Fatal(err)
	default:
	}
	return out
}

func truncate(b []byte) string {
	if len(b) > 200 {
		return string(b[:200]) + "…"
	}
	return string(b)
}

// TestMalformedRequestFlood sends 10,000 malformed requests (odd methods,
// encoded and NUL bytes, dot-dot and very long paths, huge and duplicate
// headers, bad Range, Accept and ?ns= values, garbage queries, broken
// request lines) from a seeded generator to the built binary. The mirror
// never panics or answers 500; every error is an OCI JSON body, except the
// ones net/http writes itself before any handler (netHTTPOwn); no file
// outside the data dir, and none in it but the index, changes; and the
// cached image still pulls without asking upstream.
func TestMalformedRequestFlood(t *testing.T) {
	up := startUpstream(t, nil)
	s := seed(t, up)
	root := t.TempDir()
	dataDir, sibling := filepath.Join(root, "data"), filepath.Join(root, "sibling")
	for _, d := range []string{dataDir, sibling} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	// Something for a path trick to reach: beside the data dir and above it.
	writeFile(t, filepath.Join(sibling, "secret"), "not for clients\n")
	writeFile(t, filepath.Join(root, "passwd"), "root:x:0:0\n")
	m := startMirror(t, up.URL, dataDir)
	want := regtest.Digest(t, s.img)
	pullImage(t, m, "multi:latest", want)

	g := &malformedGen{r: rand.New(rand.NewPCG(9, 2026)), host: m.Addr}
	mf, err := s.img.Manifest()
	if err != nil {
		t.Fatal(err)
	}
	g.cached = append(g.cached, want.String(), mf.Config.Digest.String())
	for _, l := range mf.Layers {
		g.cached = append(g.cached, l.Digest.String())
	}
	reqs := make([]rawRequest, malformedCount)
	for i := range reqs {
		reqs[i] = g.next()
	}

	// The index changes with every access-time flush, and the status page's
	// history file is written every 10 s; everything else in the tree must not.
	watched := func() map[string]string {
		files := listFiles(t, root)
		maps.DeleteFunc(files, func(p, _ string) bool {
			return strings.HasPrefix(p, filepath.Join(dataDir, "index")+string(filepath.Separator)) ||
				p == filepath.Join(dataDir, proxy.HistoryFile)
		})
		return files
	}
	before := watched()
	// The mirror's working directory is this package's: nothing may appear there either.
	cwdBefore := listFiles(t, ".")

	answers := flood(t, m.Addr, reqs, 4)

	byStatus := map[int]int{}
	ociErrors, own := 0, 0
	failures := 0
	fail := func(format string, a ...any) {
		t.Helper()
		if failures++; failures <= 20 {
			t.Errorf(format, a...)
		}
	}
	for i, a := range answers {
		byStatus[a.status]++
		if a.status == http.StatusInternalServerError {
			fail("request %d %q: 500; body %s", i, truncate(a.req.wire), a.body)
		}
		if a.status < 400 {
			continue
		}
		if netHTTPOwn(a) {
			own++
			if !a.req.broken && a.status != http.StatusRequestHeaderFieldsTooLarge {
				fail("request %d %q: net/http refused a request meant to reach the mirror: %d %q", i, truncate(a.req.wire), a.status, a.body)
			}
			continue
		}
		if a.status >= 500 {
			fail("request %d %q: status %d from the mirror; body %s", i, truncate(a.req.wire), a.status, a.body)
		}
		if ct := a.header.Get("Content-Type"); ct != "application/json" {
			fail("request %d %q: status %d with Content-Type %q, not an OCI error; body %q", i, truncate(a.req.wire), a.status, ct, a.body)
			continue
		}
		if a.req.method == http.MethodHead {
			ociErrors++
			continue
		}
		if _, _, ok := regtest.ParseOCIError(a.body); !ok {
			fail("request %d %q: status %d, body is not an OCI error: %q", i, truncate(a.req.wire), a.status, a.body)
			continue
		}
		ociErrors++
	}
	t.Logf("statuses %v; OCI errors %d, net/http's own answers %d", byStatus, ociErrors, own)
	if own > malformedCount/3 {
		t.Errorf("net/http refused %d requests itself: most should reach the mirror's handler", own)
	}

	// Still serving, from its cache alone.
	if resp, _ := m.do(http.MethodGet, "/v2/", nil); resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /v2/ after the flood: %d", resp.StatusCode)
	}
	upBefore := up.Total()
	pullImage(t, m, "multi:latest", want)
	img, err := remote.Image(ref(t, m.Host(), "library/multi@"+want.String()), remote.WithContext(t.Context()))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := img.RawConfigFile(); err != nil {
		t.Fatal(err)
	}
	if n := up.Total() - upBefore; n != 0 {
		t.Errorf("the pull after the flood asked upstream %d times, want 0 (tag inside its TTL, content by digest)", n)
	}
	if after := watched(); !maps.Equal(before, after) {
		t.Errorf("files changed outside the index:\nbefore %v\nafter  %v", before, after)
	}
	if after := listFiles(t, "."); !maps.Equal(cwdBefore, after) {
		t.Errorf("files changed in the mirror's working directory:\nbefore %v\nafter  %v", cwdBefore, after)
	}
	if files := tmpFiles(t, dataDir); len(files) != 0 {
		t.Errorf("temp files left: %v", files)
	}

	m.Stop()
	for _, line := range strings.Split(m.Logs(), "\n") {
		var rec struct {
			Level, Msg, Logger string
		}
		if err := json.Unmarshal([]byte(line), &rec); err != nil {
			if strings.Contains(line, "panic") || strings.Contains(line, "goroutine ") {
				t.Errorf("the mirror wrote: %s", line)
			}
			continue
		}
		if strings.Contains(rec.Msg, "panic") || rec.Level == "error" || (rec.Logger == "http" && !isBenignHTTPLog(rec.Msg)) {
			t.Errorf("the mirror logged: %s", line)
		}
	}
}

// isBenignHTTPLog reports whether net/http's own error log line is one a
// flood of bad clients is expected to cause.
func isBenignHTTPLog(msg string) bool {
	return false
}
