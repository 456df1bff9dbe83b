package proxy_test

import (
	"bufio"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/regmirror/regmirror/proxy"
	"github.com/regmirror/regmirror/test/regtest"
)

// admin sends one admin API request, as the CLI does, and returns its
// status and the JSON lines of its body.
func (e *env) admin(h http.Handler, method, path, token string) (int, [][]byte) {
	e.t.Helper()
	header := http.Header{}
	if token != "" {
		header.Set("Authorization", "Bearer "+token)
	}
	return e.adminAs(h, method, path, "", header)
}

// adminAs sends one admin API request over a loopback listener of its
// own, with Host host (when not empty) and header, as a browser might.
func (e *env) adminAs(h http.Handler, method, path, host string, header http.Header) (int, [][]byte) {
	e.t.Helper()
	srv := httptest.NewServer(h)
	defer srv.Close()
	req, err := http.NewRequestWithContext(e.t.Context(), method, srv.URL+path, nil)
	if err != nil {
		e.t.Fatal(err)
	}
	req.Header = header
	if host != "" {
		req.Host = host
	}
	resp, err := srv.Client().Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	defer resp.Body.Close()
	var lines [][]byte
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		lines = append(lines, append([]byte(nil), sc.Bytes()...))
	}
	return resp.StatusCode, lines
}

func TestAdminPinWarmsEveryPlatformAndKeepsIt(t *testing.T) {
	e := newEnv(t)
	idx, err := random.Index(4096, 2, 3) // 3 platforms of 2 layers
	if err != nil {
		t.Fatal(err)
	}
	e.pushIndex("library/app:1", idx)
	h := e.proxy.Admin("")

	code, lines := e.admin(h, http.MethodPost, proxy.AdminPin+"?image=app:1", "")
	if code != http.StatusOK || len(lines) == 0 {
		t.Fatalf("pin: %d %q", code, lines)
	}
	var last proxy.WarmProgress
	if err := json.Unmarshal(lines[len(lines)-1], &last); err != nil {
		t.Fatal(err)
	}
	d, _ := idx.Digest()
	if !last.Done || last.Error != "" || last.Platforms != 3 || last.Blobs != 9 || last.BlobsDone != 9 || last.Digest != d.String() {
		t.Fatalf("last progress %+v", last)
	}
	im, _ := idx.IndexManifest()
	for _, desc := range im.Manifests {
		img, _ := idx.Image(desc.Digest)
		layers, _ := img.Layers()
		cfg, _ := img.ConfigName()
		if !e.store.Has(desc.Digest) || !e.store.Has(cfg) {
			t.Fatalf("platform %s not cached", desc.Digest)
		}
		for _, l := range layers {
			ld, _ := l.Digest()
			if !e.store.Has(ld) {
				t.Fatalf("layer %s not cached", ld)
			}
		}
	}
	pins, _ := e.store.Pins()
	if len(pins) != 1 || pins[0].Repo != "library/app" || pins[0].Ref != "1" || pins[0].Digest != d {
		t.Fatalf("pins %+v", pins)
	}

	// ls shows it pinned, whole; a second warm-up downloads nothing.
	code, lines = e.admin(h, http.MethodGet, proxy.AdminImages, "")
	var ls proxy.ImagesAnswer
	if code != http.StatusOK || json.Unmarshal(lines[0], &ls) != nil || len(ls.Images) != 1 {
		t.Fatalf("images: %d %s", code, lines)
	}
	if img := ls.Images[0]; !img.Pinned || img.Missing != 0 || img.Objects != 1+3+9 || ls.Usage.Objects != 13 {
		t.Fatalf("ls %+v", ls)
	}
	blobGets := e.counts.CountPrefix(http.MethodGet, "/v2/library/app/blobs/")
	code, _ = e.admin(h, http.MethodPost, proxy.AdminWarm+"?image=docker.io/library/app:1", "")
	if code != http.StatusOK || e.counts.CountPrefix(http.MethodGet, "/v2/library/app/blobs/") != blobGets {
		t.Fatalf("a warm-up of a cached image downloaded again (%d)", code)
	}

	if code, _ := e.admin(h, http.MethodPost, proxy.AdminUnpin+"?image=app:1", ""); code != http.StatusOK {
		t.Fatalf("unpin: %d", code)
	}
	if code, _ := e.admin(h, http.MethodPost, proxy.AdminUnpin+"?image=app:1", ""); code != http.StatusNotFound {
		t.Fatalf("second unpin: %d, want 404", code)
	}
	if pins, _ := e.store.Pins(); len(pins) != 0 {
		t.Fatalf("pins after unpin %+v", pins)
	}
	code, lines = e.admin(h, http.MethodPost, proxy.AdminVerify, "")
	var v proxy.VerifyProgress
	if code != http.StatusOK || json.Unmarshal(lines[len(lines)-1], &v) != nil || !v.Done || v.Checked != 13 || len(v.Corrupt) != 0 {
		t.Fatalf("verify: %d %s", code, lines)
	}
}

func TestAdminRefusesBadRequests(t *testing.T) {
	e := newEnv(t)
	h := e.proxy.Admin("s3cret")
	for _, tt := range []struct {
		method, path, token string
		want                int
	}{
		{http.MethodGet, proxy.AdminImages, "", http.StatusUnauthorized},
		{http.MethodGet, proxy.AdminImages, "wrong", http.StatusUnauthorized},
		{http.MethodGet, proxy.AdminImages, "s3cret", http.StatusOK},
		{http.MethodGet, proxy.AdminGC, "s3cret", http.StatusMethodNotAllowed},
		{http.MethodPost, proxy.AdminWarm, "s3cret", http.StatusBadRequest},
		{http.MethodPost, proxy.AdminWarm + "?image=Bad..Name", "s3cret", http.StatusBadRequest},
		{http.MethodPost, proxy.AdminPin + "?image=nowhere.example/x:1", "s3cret", http.StatusNotFound},
		{http.MethodPost, "/admin/../etc/passwd", "s3cret", http.StatusNotFound},
	} {
		code, lines := e.admin(h, tt.method, tt.path, tt.token)
		if code != tt.want {
			t.Errorf("%s %s: %d, want %d (%s)", tt.method, tt.path, code, tt.want, lines)
		}
	}
	// The admin API's requests are counted as such, not as "other".
	m := regtest.Scrape(t, e.mirror.URL+"/metrics")
	if v := m.Value("regmirror_requests_total", "kind", "admin", "method", "GET", "code", "401"); v != 2 {
		t.Errorf("admin GETs answered 401 in regmirror_requests_total: %v, want 2", v)
	}
	if v := m.Value("regmirror_requests_total", "kind", "admin", "method", "POST", "code", "400"); v != 2 {
		t.Errorf("admin POSTs answered 400 in regmirror_requests_total: %v, want 2", v)
	}
}

// A web page open on the mirror's host must not drive the admin API (issue
// 15): not by a simple cross-site POST (CSRF), not by a name of its own that
// resolves to 127.0.0.1 (DNS rebinding). The CLI's requests still pass.
func TestAdminRefusesWebPages(t *testing.T) {
	e := newEnv(t)
	img, err := random.Image(1024, 1)
	if err != nil {
		t.Fatal(err)
	}
	e.push("library/app:1", img)
	const token = "s3cret"
	bearer := func(h http.Header) http.Header { h.Set("Authorization", "Bearer "+token); return h }
	for _, tt := range []struct {
		name        string
		token       string // of the admin API; requests carry it when set
		method      string
		path        string
		host        string // empty: the listener's own address, as the CLI sends it
		header      http.Header
		want        int
		wantMessage string
	}{
		{"CLI", "", http.MethodGet, proxy.AdminImages, "", http.Header{}, http.StatusOK, ""},
		{"CLI by localhost", "", http.MethodGet, proxy.AdminImages, "localhost:5001", http.Header{}, http.StatusOK, ""},
		{"CLI through a tunnel to another port", "", http.MethodPost, proxy.AdminGC, "127.0.0.1:9000", http.Header{}, http.StatusOK, ""},
		{"same-origin page", "", http.MethodGet, proxy.AdminImages, "localhost:5001",
			http.Header{"Origin": {"http://localhost:5001"}, "Sec-Fetch-Site": {"same-origin"}}, http.StatusOK, ""},
		{"typed into the address bar", "", http.MethodGet, proxy.AdminImages, "", http.Header{"Sec-Fetch-Site": {"none"}}, http.StatusOK, ""},

		{"CSRF pin", "", http.MethodPost, proxy.AdminPin + "?image=app:1", "",
			http.Header{"Origin": {"http://evil.example"}, "Content-Type": {"text/plain"}}, http.StatusForbidden, "Origin"},
		{"CSRF warm", "", http.MethodPost, proxy.AdminWarm + "?image=app:1", "",
			http.Header{"Origin": {"http://evil.example"}}, http.StatusForbidden, "Origin"},
		{"CSRF unpin", "", http.MethodPost, proxy.AdminUnpin + "?image=app:1", "", http.Header{"Origin": {"null"}}, http.StatusForbidden, "Origin"},
		{"CSRF gc", "", http.MethodPost, proxy.AdminGC, "", http.Header{"Origin": {"http://localhost:8080"}}, http.StatusForbidden, "Origin"},
		{"CSRF verify over https origin", "", http.MethodPost, proxy.AdminVerify, "localhost:5001",
			http.Header{"Origin": {"https://localhost:5001"}}, http.StatusForbidden, "Origin"},
		{"cross-site without Origin", "", http.MethodGet, proxy.AdminImages, "", http.Header{"Sec-Fetch-Site": {"cross-site"}}, http.StatusForbidden, "Sec-Fetch-Site"},
		{"same-site without Origin", "", http.MethodGet, proxy.AdminImages, "", http.Header{"Sec-Fetch-Site": {"same-site"}}, http.StatusForbidden, "Sec-Fetch-Site"},
		{"DNS rebinding", "", http.MethodGet, proxy.AdminImages, "evil.example:5001", http.Header{}, http.StatusForbidden, "Host"},
		{"DNS rebinding, same origin", "", http.MethodPost, proxy.AdminGC, "evil.example:5001",
			http.Header{"Origin": {"http://evil.example:5001"}, "Sec-Fetch-Site": {"same-origin"}}, http.StatusForbidden, "Host"},
		{"another loopback address", "", http.MethodGet, proxy.AdminImages, "127.0.0.2:5001", http.Header{}, http.StatusForbidden, "Host"},

		// With a token, the API may be reached under any name; a browser
		// cannot add the token, but it is refused before that is looked at.
		{"token, another name", token, http.MethodGet, proxy.AdminImages, "mirror.lan:5001", bearer(http.Header{}), http.StatusOK, ""},
		{"token, CSRF", token, http.MethodPost, proxy.AdminGC, "mirror.lan:5001",
			bearer(http.Header{"Origin": {"http://evil.example"}}), http.StatusForbidden, "Origin"},
		{"token, cross-site", token, http.MethodGet, proxy.AdminImages, "mirror.lan:5001",
			bearer(http.Header{"Sec-Fetch-Site": {"cross-site"}}), http.StatusForbidden, "Sec-Fetch-Site"},
		{"token, rebinding without the token", token, http.MethodGet, proxy.AdminImages, "evil.example:5001", http.Header{}, http.StatusUnauthorized, ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			code, lines := e.adminAs(e.proxy.Admin(tt.token), tt.method, tt.path, tt.host, tt.header)
			if code != tt.want {
				t.Fatalf("%s %s (Host %q, %v): %d, want %d (%s)", tt.method, tt.path, tt.host, tt.header, code, tt.want, lines)
			}
			if tt.want != http.StatusForbidden {
				return
			}
			var body struct {
				Errors []struct{ Code, Message string }
			}
			if len(lines) != 1 || json.Unmarshal(lines[0], &body) != nil || len(body.Errors) != 1 ||
				body.Errors[0].Code != "DENIED" || !strings.Contains(body.Errors[0].Message, tt.wantMessage) {
				t.Fatalf("body %s: want one OCI error DENIED naming %s", lines, tt.wantMessage)
			}
		})
	}
	if pins, _ := e.store.Pins(); len(pins) != 0 {
		t.Errorf("refused requests pinned %+v", pins)
	}
}
