package proxy_test

import (
	"bytes"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/regmirror/regmirror/test/regtest"
)

const (
	dockerManifest = "application/vnd.docker.distribution.manifest.v2+json"
	dockerList     = "application/vnd.docker.distribution.manifest.list.v2+json"
	ociIndex       = "application/vnd.oci.image.index.v1+json"
	ociManifest    = "application/vnd.oci.image.manifest.v1+json"
)

func randomImage(t *testing.T) v1.Image {
	t.Helper()
	img, err := random.Image(512, 1)
	if err != nil {
		t.Fatal(err)
	}
	return img
}

// pushApp starts an env whose upstream has a random image as library/app:1,
// and returns its manifest, digest and media type.
func pushApp(t *testing.T) (*env, []byte, v1.Hash, types.MediaType) {
	t.Helper()
	e := newEnv(t)
	img := randomImage(t)
	e.push("library/app:1", img)
	raw, _ := img.RawManifest()
	mt, _ := img.MediaType()
	return e, raw, regtest.Digest(t, img), mt
}

func TestManifestHeadersAndBytesAreUpstreams(t *testing.T) {
	e, raw, d, mt := pushApp(t)

	for _, path := range []string{"/v2/app/manifests/1", "/v2/library/app/manifests/1", "/v2/app/manifests/" + d.String(), "/v2/app/manifests/1?ns=docker.io"} {
		for _, method := range []string{http.MethodGet, http.MethodHead} {
			resp, body := e.do(method, path, http.Header{"Accept": {string(mt)}})
			if resp.StatusCode != http.StatusOK {
				t.Fatalf("%s %s: status = %d, want 200; body %s", method, path, resp.StatusCode, body)
			}
			if got := resp.Header.Get("Docker-Content-Digest"); got != d.String() {
				t.Errorf("%s %s: Docker-Content-Digest = %s, want %s", method, path, got, d)
			}
			if got := resp.Header.Get("Content-Type"); got != string(mt) {
				t.Errorf("%s %s: Content-Type = %s, want %s", method, path, got, mt)
			}
			if resp.ContentLength != int64(len(raw)) {
				t.Errorf("%s %s: Content-Length = %d, want %d", method, path, resp.ContentLength, len(raw))
			}
			if method == http.MethodGet && !bytes.Equal(body, raw) {
				t.Errorf("%s %s: body differs from upstream's", method, path)
			}
		}
	}
	if n := e.counts.Count(http.MethodGet, "/v2/library/app/manifests/1"); n != 1 {
		t.Errorf("upstream GETs by tag = %d, want 1", n)
	}
	if n := e.counts.Count(http.MethodGet, "/v2/library/app/manifests/"+d.String()); n != 0 {
		t.Errorf("upstream GETs by digest = %d, want 0 (the tag answer stored the manifest)", n)
	}
}

// platformIndex builds an index of two images (linux/amd64, linux/arm64)
// with the given index media type.
func platformIndex(t *testing.T, indexType types.MediaType) (v1.ImageIndex, map[string]v1.Image) {
	t.Helper()
	imgs := map[string]v1.Image{}
	idx := mutate.IndexMediaType(empty.Index, indexType)
	for _, arch := range []string{"arm64", "amd64"} {
		img := mutate.MediaType(randomImage(t), dockerManifest)
		imgs[arch] = img
		idx = mutate.AppendManifests(idx, mutate.IndexAddendum{Add: img, Descriptor: v1.Descriptor{
			MediaType: dockerManifest,
			Platform:  &v1.Platform{OS: "linux", Architecture: arch},
		}})
	}
	return idx, imgs
}

func TestAcceptNegotiation(t *testing.T) {
	e := newEnv(t)
	idx, imgs := platformIndex(t, dockerList)
	e.pushIndex("library/multi:1", idx)
	single := mutate.MediaType(randomImage(t), ociManifest)
	e.push("library/single:1", single)

	tests := []struct {
		name       string
		path       string
		accept     []string
		wantStatus int
		wantDigest v1.Hash
		wantType   string
	}{
		{"index to a client that takes it", "/v2/multi/manifests/1", []string{dockerList + ", " + dockerManifest}, 200, regtest.Digest(t, idx), dockerList},
		{"no Accept means anything", "/v2/multi/manifests/1", nil, 200, regtest.Digest(t, idx), dockerList},
		{"wildcard", "/v2/multi/manifests/1", []string{"*/*"}, 200, regtest.Digest(t, idx), dockerList},
		{"Accept split over header lines with q values", "/v2/multi/manifests/1", []string{ociManifest, dockerList + ";q=0.9"}, 200, regtest.Digest(t, idx), dockerList},
		{"index to a client that takes only images gets linux/amd64", "/v2/multi/manifests/1", []string{dockerManifest}, 200, regtest.Digest(t, imgs["amd64"]), dockerManifest},
		{"nothing acceptable", "/v2/single/manifests/1", []string{dockerManifest}, 404, v1.Hash{}, ""},
		{"by digest, Accept does not matter", "/v2/single/manifests/" + regtest.Digest(t, single).String(), []string{dockerManifest}, 200, regtest.Digest(t, single), ociManifest},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp, body := e.do(http.MethodGet, tt.path, http.Header{"Accept": tt.accept})
			if resp.StatusCode != tt.wantStatus {
				t.Fatalf("GET %s: status = %d, want %d; body %s", tt.path, resp.StatusCode, tt.wantStatus, body)
			}
			if tt.wantStatus != 200 {
				if code := regtest.OCICode(t, resp, body); code != "MANIFEST_UNKNOWN" {
					t.Errorf("code = %s, want MANIFEST_UNKNOWN", code)
				}
				return
			}
			if got := resp.Header.Get("Docker-Content-Digest"); got != tt.wantDigest.String() {
				t.Errorf("digest = %s, want %s", got, tt.wantDigest)
			}
			if got := resp.Header.Get("Content-Type"); got != tt.wantType {
				t.Errorf("Content-Type = %s, want %s", got, tt.wantType)
			}
		})
	}
}

func TestTagIsAnsweredFromCacheInsideTTLAndRevalidatedWithHeadAfter(t *testing.T) {
	e := newEnv(t, withTTL(time.Minute))
	first := randomImage(t)
	e.push("library/app:latest", first)
	path := "/v2/app/manifests/latest"
	up := "/v2/library/app/manifests/latest"

	resp, _ := e.do(http.MethodHead, path, nil)
	if resp.Header.Get("Docker-Content-Digest") != regtest.Digest(t, first).String() {
		t.Fatalf("first answer: digest %s", resp.Header.Get("Docker-Content-Digest"))
	}
	getsBefore, headsBefore := e.counts.Count(http.MethodGet, up), e.counts.Count(http.MethodHead, up)

	e.clock.Advance(30 * time.Second)
	for range 5 {
		e.do(http.MethodHead, path, nil)
		e.do(http.MethodGet, path, nil)
	}
	if g, h := e.counts.Count(http.MethodGet, up)-getsBefore, e.counts.Count(http.MethodHead, up)-headsBefore; g != 0 || h != 0 {
		t.Fatalf("inside the TTL: upstream GET %d, HEAD %d by tag; want 0, 0", g, h)
	}

	// Past the TTL, unchanged upstream: one HEAD, no GET.
	e.clock.Advance(time.Minute)
	resp, _ = e.do(http.MethodGet, path, nil)
	if resp.Header.Get("Docker-Content-Digest") != regtest.Digest(t, first).String() {
		t.Fatalf("after TTL, unchanged: digest %s", resp.Header.Get("Docker-Content-Digest"))
	}
	if g, h := e.counts.Count(http.MethodGet, up)-getsBefore, e.counts.Count(http.MethodHead, up)-headsBefore; g != 0 || h != 1 {
		t.Fatalf("revalidation: upstream GET %d, HEAD %d by tag; want 0, 1", g, h)
	}

	// The tag moves upstream: seen after the TTL, not before.
	second := randomImage(t)
	e.push("library/app:latest", second)
	resp, _ = e.do(http.MethodGet, path, nil)
	if got := resp.Header.Get("Docker-Content-Digest"); got != regtest.Digest(t, first).String() {
		t.Errorf("inside the TTL after a move: digest %s, want the old %s", got, regtest.Digest(t, first))
	}
	e.clock.Advance(2 * time.Minute)
	resp, body := e.do(http.MethodGet, path, nil)
	raw, _ := second.RawManifest()
	if got := resp.Header.Get("Docker-Content-Digest"); got != regtest.Digest(t, second).String() || !bytes.Equal(body, raw) {
		t.Errorf("after the TTL: digest %s, want the new %s", got, regtest.Digest(t, second))
	}
}

func TestStaleTagIsServedWithWarningWhenUpstreamIsDown(t *testing.T) {
	down := make(chan struct{})
	failing := func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			select {
			case <-down:
				http.Error(w, "down", http.StatusServiceUnavailable)
			default:
				next.ServeHTTP(w, r)
			}
		})
	}
	e := newEnv(t, withUpstreamFault(failing), withTTL(time.Minute))
	img := randomImage(t)
	e.push("library/app:latest", img)
	e.do(http.MethodGet, "/v2/app/manifests/latest", nil)

	close(down)
	e.clock.Advance(time.Hour)
	resp, body := e.do(http.MethodGet, "/v2/app/manifests/latest", nil)
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Docker-Content-Digest") != regtest.Digest(t, img).String() {
		t.Fatalf("stale answer: status %d, digest %s; body %s", resp.StatusCode, resp.Header.Get("Docker-Content-Digest"), body)
	}
	if w := resp.Header.Get("Warning"); !strings.HasPrefix(w, "299 ") {
		t.Errorf("Warning = %q, want a 299 warning", w)
	}
	if n := e.logs.FilterMessage("serving stale tag answer").Len(); n != 1 {
		t.Errorf("stale warnings logged = %d, want 1", n)
	}
	resp, body = e.do(http.MethodGet, "/v2/app/manifests/never-seen", nil)
	if resp.StatusCode != http.StatusServiceUnavailable {
		t.Errorf("uncached tag while down: status %d, want 503", resp.StatusCode)
	}
	if code := regtest.OCICode(t, resp, body); code != "UNAVAILABLE" {
		t.Errorf("uncached tag while down: code %s", code)
	}
}

func TestTagDeletedUpstreamIsForgotten(t *testing.T) {
	gone := make(chan struct{})
	deleting := func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			select {
			case <-gone:
				if strings.HasSuffix(r.URL.Path, "/manifests/latest") {
					w.WriteHeader(http.StatusNotFound)
					return
				}
			default:
			}
			next.ServeHTTP(w, r)
		})
	}
	e := newEnv(t, withUpstreamFault(deleting), withTTL(time.Minute))
	e.push("library/app:latest", randomImage(t))
	e.do(http.MethodGet, "/v2/app/manifests/latest", nil)
	close(gone)
	e.clock.Advance(time.Hour)
	resp, body := e.do(http.MethodGet, "/v2/app/manifests/latest", nil)
	if resp.StatusCode != http.StatusNotFound || regtest.OCICode(t, resp, body) != "MANIFEST_UNKNOWN" {
		t.Errorf("deleted tag: status %d, body %s; want 404 MANIFEST_UNKNOWN", resp.StatusCode, body)
	}
	if _, err := e.store.Tag("docker.io", "library/app", "latest"); err == nil {
		t.Error("the deleted tag's answer is still in the index")
	}
}

func TestTamperedManifestIsRefused(t *testing.T) {
	img := randomImage(t)
	d := regtest.Digest(t, img)
	lying := func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if strings.HasSuffix(r.URL.Path, "/manifests/"+d.String()) && r.Method == http.MethodGet {
				w.Header().Set("Content-Type", dockerManifest)
				w.Write([]byte(`{"schemaVersion":2}`))
				return
			}
			next.ServeHTTP(w, r)
		})
	}
	e := newEnv(t, withUpstreamFault(lying))
	e.push("library/app:1", img)
	resp, body := e.do(http.MethodGet, "/v2/app/manifests/"+d.String(), nil)
	if resp.StatusCode != http.StatusBadGateway {
		t.Errorf("status = %d, want 502; body %s", resp.StatusCode, body)
	}
	regtest.OCICode(t, resp, body)
	if e.store.Has(d) {
		t.Error("tampered manifest entered the cache")
	}
}

func TestManifestRequestsCoalesce(t *testing.T) {
	const clients = 8
	allArrived := make(chan struct{})
	var arrivals atomic.Int32
	countArrivals := func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if arrivals.Add(1) == clients {
				close(allArrived)
			}
			next.ServeHTTP(w, r)
		})
	}
	// Upstream answers the tag only once every client is inside the mirror,
	// so without coalescing each of them would ask upstream itself.
	holdTag := func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.Method == http.MethodGet && strings.HasSuffix(r.URL.Path, "/manifests/1") {
				<-allArrived
			}
			next.ServeHTTP(w, r)
		})
	}
	e := newEnv(t, withUpstreamFault(holdTag), withMirrorWrap(countArrivals))
	e.push("library/app:1", randomImage(t))

	done := make(chan int, clients)
	for range clients {
		go func() {
			resp, err := http.Get(e.mirror.URL + "/v2/app/manifests/1")
			if err != nil {
				done <- 0
				return
			}
			resp.Body.Close()
			done <- resp.StatusCode
		}()
	}
	for range clients {
		if s := <-done; s != 200 {
			t.Errorf("status %d", s)
		}
	}
	if n := e.counts.Count(http.MethodGet, "/v2/library/app/manifests/1"); n != 1 {
		t.Errorf("upstream GETs by tag = %d, want 1", n)
	}
}

// TestManifestByTagIsRefusedOnlyWhenOCIMeetsAClientNamingNoOCIType: Docker
// schema 2 is served in its own type whatever the Accept; an index a client
// does not take gets its linux/amd64 image; only an OCI manifest or index to
// a client that names no OCI type at all gets 404, saying why.
func TestManifestByTagIsRefusedOnlyWhenOCIMeetsAClientNamingNoOCIType(t *testing.T) {
	e := newEnv(t)
	schema2 := randomImage(t)
	e.push("library/schema2:1", schema2)
	list, listImgs := platformIndex(t, dockerList)
	e.pushIndex("library/list:1", list)
	ociImg := mutate.MediaType(randomImage(t), ociManifest)
	e.push("library/oci:1", ociImg)
	ociIdx := mutate.IndexMediaType(empty.Index, ociIndex)
	ociAMD64 := mutate.MediaType(randomImage(t), ociManifest)
	ociIdx = mutate.AppendManifests(ociIdx, mutate.IndexAddendum{Add: ociAMD64, Descriptor: v1.Descriptor{
		MediaType: ociManifest, Platform: &v1.Platform{OS: "linux", Architecture: "amd64"}}})
	e.pushIndex("library/ociindex:1", ociIdx)

	tests := []struct {
		name, repo string
		accept     string
		want       v1.Hash // zero: refused
		wantType   string
	}{
		{"schema 2 to an OCI-only client", "schema2", ociManifest, regtest.Digest(t, schema2), dockerManifest},
		{"schema 2 to an index-only client", "schema2", ociIndex + ", " + dockerList, regtest.Digest(t, schema2), dockerManifest},
		{"schema 2 to a client naming no manifest type", "schema2", "application/json", regtest.Digest(t, schema2), dockerManifest},
		{"Docker list to an OCI-manifest-only client", "list", ociManifest, regtest.Digest(t, listImgs["amd64"]), dockerManifest},
		{"Docker list to a schema-2-only client", "list", dockerManifest, regtest.Digest(t, listImgs["amd64"]), dockerManifest},
		{"OCI index to an OCI-manifest-only client", "ociindex", ociManifest, regtest.Digest(t, ociAMD64), ociManifest},
		{"OCI index to a Docker-only client", "ociindex", dockerManifest + ", " + dockerList, v1.Hash{}, ""},
		{"OCI manifest to a Docker-only client", "oci", dockerManifest + ", " + dockerList, v1.Hash{}, ""},
		{"OCI manifest to a client naming the OCI index only", "oci", ociIndex, v1.Hash{}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for _, method := range []string{http.MethodGet, http.MethodHead} {
				resp, body := e.do(method, "/v2/"+tt.repo+"/manifests/1", http.Header{"Accept": {tt.accept}})
				if tt.want.Hex == "" {
					if resp.StatusCode != http.StatusNotFound {
						t.Fatalf("%s: status %d, want 404; body %s", method, resp.StatusCode, body)
					}
					if method == http.MethodGet {
						if code := regtest.OCICode(t, resp, body); code != "MANIFEST_UNKNOWN" {
							t.Errorf("code = %s, want MANIFEST_UNKNOWN", code)
						}
						if tt.repo != "oci" || tt.accept != ociIndex {
							if !strings.Contains(string(body), "names no OCI type") {
								t.Errorf("message %s does not say the client names no OCI type", body)
							}
						}
					}
					continue
				}
				if resp.StatusCode != http.StatusOK || resp.Header.Get("Docker-Content-Digest") != tt.want.String() ||
					resp.Header.Get("Content-Type") != tt.wantType {
					t.Errorf("%s: status %d, digest %s, type %s; want 200 %s %s; body %s", method, resp.StatusCode,
						resp.Header.Get("Docker-Content-Digest"), resp.Header.Get("Content-Type"), tt.want, tt.wantType, body)
				}
			}
		})
	}
}

// TestManifestAnswersAsServeContentWould checks that a manifest's answer,
// with or without Range and preconditions (the mirror answers plain
// requests itself, the others through http.ServeContent), has the status,
// headers and body http.ServeContent gives for the same bytes.
func TestManifestAnswersAsServeContentWould(t *testing.T) {
	e, raw, d, mt := pushApp(t)
	etag := `"` + d.String() + `"`

	for _, path := range []string{"/v2/app/manifests/1", "/v2/app/manifests/" + d.String()} {
		for _, method := range []string{http.MethodGet, http.MethodHead} {
			for _, extra := range []http.Header{
				{},
				{"Range": {"bytes=0-9"}},
				{"If-None-Match": {etag}},
				{"If-Match": {`"other"`}},
				{"If-Modified-Since": {"Mon, 02 Jan 2006 15:04:05 GMT"}},
			} {
				hdr := http.Header{"Accept": {string(mt)}}
				for k, v := range extra {
					hdr[k] = v
				}
				req := httptest.NewRequest(method, path, nil)
				req.Header = hdr
				want := httptest.NewRecorder()
				want.Header().Set("Content-Type", string(mt))
				want.Header().Set("Docker-Content-Digest", d.String())
				want.Header().Set("Etag", etag)
				http.ServeContent(want, req, "", time.Time{}, bytes.NewReader(raw))

				resp, body := e.do(method, path, hdr)
				if resp.StatusCode != want.Code {
					t.Errorf("%s %s %v: status = %d, want %d; body %s", method, path, extra, resp.StatusCode, want.Code, body)
					continue
				}
				if want.Code >= 400 {
					continue // an OCI error body, checked elsewhere
				}
				for _, k := range []string{"Accept-Ranges", "Content-Length", "Content-Range", "Content-Type", "Docker-Content-Digest", "Etag"} {
					if got, w := resp.Header.Values(k), want.Header().Values(k); strings.Join(got, ",") != strings.Join(w, ",") {
						t.Errorf("%s %s %v: %s = %q, want %q", method, path, extra, k, got, w)
					}
				}
				if !bytes.Equal(body, want.Body.Bytes()) {
					t.Errorf("%s %s %v: body of %d bytes, want %d", method, path, extra, len(body), want.Body.Len())
				}
			}
		}
	}
}
