package proxy_test

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/regmirror/regmirror/test/regtest"
)

func TestBaseEndpoint(t *testing.T) {
	e := newEnv(t)
	for _, path := range []string{"/v2/", "/v2"} {
		resp, body := e.do(http.MethodGet, path, nil)
		if resp.StatusCode != http.StatusOK || string(body) != "{}" {
			t.Errorf("GET %s: status = %d, body %q; want 200 {}", path, resp.StatusCode, body)
		}
		if v := resp.Header.Get("Docker-Distribution-API-Version"); v != "registry/2.0" {
			t.Errorf("GET %s: Docker-Distribution-API-Version = %q", path, v)
		}
	}
}

func TestWriteMethodsAreUnsupported(t *testing.T) {
	e := newEnv(t)
	paths := []string{"/v2/app/manifests/latest", "/v2/app/blobs/sha256:" + strings.Repeat("a", 64), "/v2/app/blobs/uploads/", "/v2/app/tags/list", "/v2/"}
	for _, method := range []string{http.MethodPut, http.MethodPost, http.MethodPatch, http.MethodDelete} {
		for _, path := range paths {
			resp, body := e.do(method, path, nil)
			if resp.StatusCode != http.StatusMethodNotAllowed {
				t.Errorf("%s %s: status = %d, want 405; body %s", method, path, resp.StatusCode, body)
				continue
			}
			if code := regtest.OCICode(t, resp, body); code != "UNSUPPORTED" {
				t.Errorf("%s %s: code = %s, want UNSUPPORTED", method, path, code)
			}
			if v := resp.Header.Get("Docker-Distribution-API-Version"); v != "registry/2.0" {
				t.Errorf("%s %s: Docker-Distribution-API-Version = %q, want registry/2.0", method, path, v)
			}
		}
	}
	if n := e.counts.Total(); n != 0 {
		t.Errorf("upstream requests = %d, want 0", n)
	}
}

// rawGet sends a request line exactly as given, so no client cleans the path.
func rawGet(t *testing.T, hostport, target string) (int, []byte) {
	t.Helper()
	conn, err := net.Dial("tcp", hostport)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	fmt.Fprintf(conn, "GET %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n", target, hostport)
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatalf("GET %s: %v", target, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode >= 400 && resp.Header.Get("Content-Type") != "application/json" {
		t.Errorf("GET %s: error %d is not JSON: %q", target, resp.StatusCode, body)
	}
	return resp.StatusCode, body
}

func TestBadRequestsAreRefusedBeforeAnyFileOrUpstream(t *testing.T) {
	e := newEnv(t)
	digest := "sha256:" + strings.Repeat("a", 64)
	tests := []struct {
		name   string
		target string
		status int
		code   string
	}{
		{"dot-dot in the name", "/v2/../../etc/passwd/manifests/latest", 400, "NAME_INVALID"},
		{"dot-dot component", "/v2/library/../x/manifests/latest", 400, "NAME_INVALID"},
		{"encoded slash", "/v2/a%2Fb/manifests/latest", 400, "NAME_INVALID"},
		{"encoded dots in digest", "/v2/app/blobs/sha256:..%2F..%2Fx", 400, "NAME_INVALID"},
		{"upper-case name", "/v2/Library/App/manifests/latest", 400, "NAME_INVALID"},
		{"punctuation in the name", "/v2/app!/manifests/latest", 400, "NAME_INVALID"},
		{"empty component", "/v2/a//b/manifests/latest", 400, "NAME_INVALID"},
		{"name too long", "/v2/" + strings.Repeat("a", 300) + "/manifests/latest", 400, "NAME_INVALID"},
		{"path too long", "/v2/" + strings.Repeat("ab/", 400) + "manifests/latest", 400, "NAME_INVALID"},
		{"digest of wrong length", "/v2/app/blobs/sha256:abc", 400, "DIGEST_INVALID"},
		{"digest not hex", "/v2/app/blobs/sha256:" + strings.Repeat("z", 64), 400, "DIGEST_INVALID"},
		{"upper-case digest", "/v2/app/blobs/sha256:" + strings.Repeat("A", 64), 400, "DIGEST_INVALID"},
		{"other algorithm", "/v2/app/blobs/md5:d41d8cd98f00b204e9800998ecf8427e", 400, "DIGEST_INVALID"},
		{"blob by tag", "/v2/app/blobs/latest", 400, "DIGEST_INVALID"},
		{"manifest digest with traversal", "/v2/app/manifests/sha256:../../../x", 400, "NAME_INVALID"},
		{"bad tag", "/v2/app/manifests/-latest", 400, "TAG_INVALID"},
		{"tag too long", "/v2/app/manifests/" + strings.Repeat("t", 129), 400, "TAG_INVALID"},
		{"unknown endpoint", "/v2/app/uploads/x", 404, "UNSUPPORTED"},
		{"outside the API", "/etc/passwd", 404, "UNSUPPORTED"},
		{"unconfigured registry by ns", "/v2/app/manifests/latest?ns=evil.example", 404, "NAME_UNKNOWN"},
		{"unconfigured registry by prefix", "/v2/evil.example/app/manifests/latest", 404, "NAME_UNKNOWN"},
		{"bad page size", "/v2/app/tags/list?n=-1", 400, "PAGINATION_NUMBER_INVALID"},
		{"bad last", "/v2/app/tags/list?last=%2F..", 400, "TAG_INVALID"},
		{"blob digest too", "/v2/app/blobs/" + digest + "x", 400, "DIGEST_INVALID"},
	}
	before := listFiles(t, e.dataDir)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			status, body := rawGet(t, host(e.mirror), tt.target)
			if status != tt.status {
				t.Fatalf("GET %s: status = %d, want %d; body %s", tt.target, status, tt.status, body)
			}
			if !strings.Contains(string(body), `"code":"`+tt.code+`"`) {
				t.Errorf("GET %s: body %s, want code %s", tt.target, body, tt.code)
			}
		})
	}
	if n := e.counts.Total(); n != 0 {
		t.Errorf("upstream requests = %d, want 0", n)
	}
	if after := listFiles(t, e.dataDir); fmt.Sprint(after) != fmt.Sprint(before) {
		t.Errorf("files changed:\nbefore %v\nafter  %v", before, after)
	}
}

// listFiles lists the store's content files (the index is badger's own).
func listFiles(t *testing.T, dir string) []string {
	t.Helper()
	var out []string
	filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err == nil && d.IsDir() && d.Name() == "index" {
			return filepath.SkipDir
		}
		if err == nil && !d.IsDir() {
			out = append(out, p)
		}
		return nil
	})
	return out
}

func TestTagsListIsProxiedWithPagination(t *testing.T) {
	e := newEnv(t)
	for _, tag := range []string{"a", "b", "c"} {
		e.push("library/app:"+tag, randomImage(t))
	}
	resp, body := e.do(http.MethodGet, "/v2/app/tags/list?n=2&last=a", nil)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("status = %d; body %s", resp.StatusCode, body)
	}
	if !strings.Contains(string(body), `"tags":["b","c"]`) || !strings.Contains(string(body), `"name":"library/app"`) {
		t.Errorf("body = %s, want tags b and c of library/app", body)
	}
	resp, body = e.do(http.MethodGet, "/v2/nothing/tags/list", nil)
	if resp.StatusCode != http.StatusNotFound || regtest.OCICode(t, resp, body) != "NAME_UNKNOWN" {
		t.Errorf("unknown repo: status %d, body %s", resp.StatusCode, body)
	}
}

func TestUpstreamAuthFailuresKeepTheirStatus(t *testing.T) {
	deny := func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			switch {
			case strings.HasPrefix(r.URL.Path, "/v2/private/"):
				w.WriteHeader(http.StatusUnauthorized)
			case strings.HasPrefix(r.URL.Path, "/v2/forbidden/"):
				w.WriteHeader(http.StatusForbidden)
			case strings.HasPrefix(r.URL.Path, "/v2/busy/"):
				w.WriteHeader(http.StatusTooManyRequests)
			default:
				next.ServeHTTP(w, r)
			}
		})
	}
	e := newEnv(t, withUpstreamFault(deny))
	tests := []struct {
		path   string
		status int
		code   string
	}{
		{"/v2/private/app/manifests/1", 401, "UNAUTHORIZED"},
		{"/v2/forbidden/app/blobs/sha256:" + strings.Repeat("b", 64), 403, "DENIED"},
		{"/v2/busy/app/manifests/1", 429, "TOOMANYREQUESTS"},
	}
	for _, tt := range tests {
		resp, body := e.do(http.MethodGet, tt.path, nil)
		if resp.StatusCode != tt.status {
			t.Errorf("GET %s: status = %d, want %d; body %s", tt.path, resp.StatusCode, tt.status, body)
			continue
		}
		if code := regtest.OCICode(t, resp, body); code != tt.code {
			t.Errorf("GET %s: code = %s, want %s", tt.path, code, tt.code)
		}
		if resp.Header.Get("Www-Authenticate") != "" {
			t.Errorf("GET %s: upstream's challenge leaked to the client", tt.path)
		}
	}
}

func TestUnreachableUpstreamIsAClearError(t *testing.T) {
	e := newEnv(t)
	e.upstream.Close()
	resp, body := e.do(http.MethodGet, "/v2/app/manifests/1", nil)
	if resp.StatusCode != http.StatusServiceUnavailable {
		t.Fatalf("status = %d, want 503; body %s", resp.StatusCode, body)
	}
	if code := regtest.OCICode(t, resp, body); code != "UNAVAILABLE" {
		t.Errorf("code = %s", code)
	}
	if !strings.Contains(string(body), "upstream docker.io is unreachable") {
		t.Errorf("message = %s, want it to say the upstream is unreachable", body)
	}
}

func TestAccessLogHasOneLinePerRequest(t *testing.T) {
	e := newEnv(t)
	img := randomImage(t)
	e.push("library/app:1", img)
	e.do(http.MethodGet, "/v2/app/manifests/1", nil)
	e.do(http.MethodGet, "/v2/app/manifests/1?secret=x", nil)
	lines := e.logs.FilterMessage("request").AllUntimed()
	if len(lines) != 2 {
		t.Fatalf("access lines = %d, want 2", len(lines))
	}
	first, second := lines[0].ContextMap(), lines[1].ContextMap()
	if first["cache"] != "miss" || second["cache"] != "hit" {
		t.Errorf("cache outcomes = %v, %v; want miss, hit", first["cache"], second["cache"])
	}
	for _, l := range lines {
		m := l.ContextMap()
		if m["path"] != "/v2/app/manifests/1" || m["status"] != int64(200) || m["upstream"] != "docker.io" || m["repo"] != "library/app" {
			t.Errorf("access line = %v", m)
		}
		if strings.Contains(fmt.Sprint(m), "secret") {
			t.Errorf("query string logged: %v", m)
		}
	}
}

// Access lines carry no caller: it would name the same line of the access
// middleware on every one of them. The proxy's other lines keep theirs.
func TestAccessLinesHaveNoCallerOtherLinesDo(t *testing.T) {
	e := newEnv(t, withCallers())
	body, h := regtest.RandomBlob(t, 4096)
	e.pushBlob("library/app", body)
	if resp, b := e.do(http.MethodGet, "/v2/app/blobs/"+h.String(), nil); resp.StatusCode != http.StatusOK {
		t.Fatalf("GET blob: status = %d, want 200; body %s", resp.StatusCode, b)
	}
	// The access line is written once the handler returns, which may be
	// after the client has read the body.
	e.waitFor("access line", func(rec map[string]any) bool { return rec["msg"] == "request" })
	e.waitFor("download done", func(rec map[string]any) bool { return rec["msg"] == "download done" })
	access := e.logs.FilterMessage("request").AllUntimed()
	if len(access) != 1 {
		t.Fatalf("access lines = %d, want 1", len(access))
	}
	if c := access[0].Caller; c.Defined {
		t.Errorf("access line has caller %s, want none", c.TrimmedPath())
	}
	done := e.logs.FilterMessage("download done").AllUntimed()
	if len(done) != 1 || !done[0].Caller.Defined || !strings.HasPrefix(done[0].Caller.TrimmedPath(), "proxy/download.go:") {
		t.Errorf("download done lines = %+v, want one with its caller in proxy/download.go", done)
	}
}

func TestTokenServerOnAnotherPrivateAddressIsABadGatewayNotA500(t *testing.T) {
	// go-containerregistry refuses a token realm on a private address other
	// than the registry's own; the client must learn why, not get a 500.
	challenge := func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("WWW-Authenticate", `Bearer realm="http://10.255.255.1:9/token",service="test"`)
			w.WriteHeader(http.StatusUnauthorized)
		})
	}
	e := newEnv(t, withUpstreamFault(challenge))
	resp, body := e.do(http.MethodGet, "/v2/app/manifests/1", nil)
	if resp.StatusCode != http.StatusBadGateway {
		t.Fatalf("status = %d, want 502; body %s", resp.StatusCode, body)
	}
	if code := regtest.OCICode(t, resp, body); code != "UNAVAILABLE" || !strings.Contains(string(body), "private") {
		t.Errorf("code %s, body %s: want UNAVAILABLE saying the realm is private", code, body)
	}
}

// TestSHA512DigestsAreValid: sha512 is a valid OCI digest, asked of the
// upstream like a sha256 one (404 when it has no such content); only a
// malformed one is a 400, and it reaches no upstream.
func TestSHA512DigestsAreValid(t *testing.T) {
	e := newEnv(t)
	d := "sha512:" + strings.Repeat("ab", 64)
	for _, tt := range []struct{ path, code string }{
		{"/v2/app/blobs/" + d, "BLOB_UNKNOWN"},
		{"/v2/app/manifests/" + d, "MANIFEST_UNKNOWN"},
		{"/v2/ghcr.io/owner/app/blobs/" + d + "?ns=docker.io", "BLOB_UNKNOWN"},
	} {
		for _, method := range []string{http.MethodGet, http.MethodHead} {
			resp, body := e.do(method, tt.path, nil)
			if resp.StatusCode != http.StatusNotFound {
				t.Errorf("%s %s: status %d, want 404; body %s", method, tt.path, resp.StatusCode, body)
				continue
			}
			if method == http.MethodGet {
				if code := regtest.OCICode(t, resp, body); code != tt.code {
					t.Errorf("GET %s: code %s, want %s", tt.path, code, tt.code)
				}
			}
		}
	}
	if n := e.counts.CountPrefix(http.MethodGet, "/v2/library/app/blobs/"+d); n == 0 {
		t.Error("the upstream was not asked for the sha512 blob")
	}
	before := e.counts.Total()
	for _, bad := range []string{"sha512:" + strings.Repeat("a", 64), "sha512:" + strings.Repeat("A", 128), "sha384:" + strings.Repeat("a", 96)} {
		resp, body := e.do(http.MethodGet, "/v2/app/blobs/"+bad, nil)
		if resp.StatusCode != http.StatusBadRequest || regtest.OCICode(t, resp, body) != "DIGEST_INVALID" {
			t.Errorf("GET blob %s: status %d, body %s; want 400 DIGEST_INVALID", bad, resp.StatusCode, body)
		}
	}
	if n := e.counts.Total() - before; n != 0 {
		t.Errorf("upstream requests for malformed digests = %d, want 0", n)
	}
}
