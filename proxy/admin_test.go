package proxy_test

import (
	"bufio"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/regmirror/regmirror/proxy"
	"github.com/regmirror/regmirror/test/regtest"
)

// admin sends one admin API request and returns its status and the JSON
// lines of its body.
func (e *env) admin(h http.Handler, method, path, token string) (int, [][]byte) {
	e.t.Helper()
	req := httptest.NewRequest(method, path, nil)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	var lines [][]byte
	sc := bufio.NewScanner(rec.Body)
	for sc.Scan() {
		lines = append(lines, append([]byte(nil), sc.Bytes()...))
	}
	return rec.Code, lines
}

func TestAdminPinWarmsEveryPlatformAndKeepsIt(t *testing.T) {
	e := newEnv(t)
	idx, err := random.Index(4096, 2, 3) // 3 platforms of 2 layers
	if err != nil {
		t.Fatal(err)
	}
	e.pushIndex("library/app:1", idx)
	h := e.proxy.Admin(e.store, "")

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
	h := e.proxy.Admin(e.store, "s3cret")
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
