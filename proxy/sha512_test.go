package proxy_test

import (
	"bytes"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/regmirror/regmirror/cache"
	"github.com/regmirror/regmirror/test/regtest"
)

// forEachAlgorithm runs test for content named by sha256 and by sha512.
func forEachAlgorithm(t *testing.T, test func(t *testing.T, alg string)) {
	for _, alg := range []string{"sha256", "sha512"} {
		t.Run(alg, func(t *testing.T) { test(t, alg) })
	}
}

// randomBlobBy is n random bytes and their digest by algorithm alg.
func randomBlobBy(t *testing.T, alg string, n int) ([]byte, v1.Hash) {
	t.Helper()
	b, _ := regtest.RandomBlob(t, n)
	return b, cache.Sum(alg, b)
}

// TestSHA512ImageThroughTheMirror pulls an image whose manifest, config and
// layers are all named by sha512 from go-containerregistry's registry, with
// go-containerregistry's client: each is verified, stored under
// blobs/sha512, served again without the upstream, and re-verified by Verify.
func TestSHA512ImageThroughTheMirror(t *testing.T) {
	e := newEnv(t)
	img := regtest.NewSHA512Image(t, 2, 64<<10)
	img.Push(t, e.upstream.URL, "library/app", "")

	get := func(path string, want []byte, digest v1.Hash) {
		t.Helper()
		resp, body := e.do(http.MethodGet, path, nil)
		if resp.StatusCode != http.StatusOK || !bytes.Equal(body, want) {
			t.Fatalf("GET %s: status = %d, want 200 and the content; body %.200s", path, resp.StatusCode, body)
		}
		if got := resp.Header.Get("Docker-Content-Digest"); got != digest.String() {
			t.Errorf("GET %s: Docker-Content-Digest %s, want %s", path, got, digest)
		}
	}
	// A client first: go-containerregistry's, by the sha512 digest; then the
	// same again over plain HTTP, from the cache.
	d, err := name.NewDigest(host(e.mirror) + "/library/app@" + img.Digest.String())
	if err != nil {
		t.Fatal(err)
	}
	pulled, err := remote.Image(d)
	if err != nil {
		t.Fatal(err)
	}
	if _, layers := regtest.ReadImage(t, pulled); layers != len(img.Layers) {
		t.Fatalf("pulled %d layers, want %d", layers, len(img.Layers))
	}
	mpath := "/v2/app/manifests/" + img.Digest.String()
	for range 2 {
		get(mpath, img.Manifest, img.Digest)
		for h, b := range img.Blobs {
			get("/v2/app/blobs/"+h.String(), b, h)
		}
	}
	e.settle()
	if n := e.counts.Count(http.MethodGet, "/v2/library/app/manifests/"+img.Digest.String()); n != 1 {
		t.Errorf("upstream GETs of the manifest = %d, want 1", n)
	}
	for h := range img.Blobs {
		if n := e.counts.Count(http.MethodGet, "/v2/library/app/blobs/"+h.String()); n != 1 {
			t.Errorf("upstream GETs of blob %s = %d, want 1", h, n)
		}
		if _, err := os.Stat(filepath.Join(e.dataDir, "blobs", "sha512", h.Hex[:2], h.Hex)); err != nil {
			t.Errorf("blob %s not stored under blobs/sha512: %v", h, err)
		}
	}

	// Range and conditional requests, as for any blob.
	layer := img.Layers[0]
	lpath := "/v2/app/blobs/" + layer.String()
	if resp, body := e.do(http.MethodGet, lpath, http.Header{"Range": {"bytes=10-19"}}); resp.StatusCode != http.StatusPartialContent || !bytes.Equal(body, img.Blobs[layer][10:20]) {
		t.Errorf("GET %s, Range bytes=10-19: status %d, %d bytes; want 206 and those 10", lpath, resp.StatusCode, len(body))
	}
	if resp, _ := e.do(http.MethodGet, lpath, http.Header{"If-None-Match": {`"` + layer.String() + `"`}}); resp.StatusCode != http.StatusNotModified {
		t.Errorf("GET %s, If-None-Match its digest: status %d, want 304", lpath, resp.StatusCode)
	}

	// The manifest's children are its own: pinned, the image counts them all.
	if err := e.store.Pin(cache.Pin{Registry: "docker.io", Repo: "library/app", Ref: img.Digest.String(), Digest: img.Digest}); err != nil {
		t.Fatal(err)
	}
	images, err := e.store.Images()
	if err != nil || len(images) != 1 || images[0].Objects != 1+len(img.Blobs) || images[0].Missing != 0 {
		t.Fatalf("images = %+v, %v; want the pinned image with its %d objects", images, err, 1+len(img.Blobs))
	}
	rep, err := e.store.Verify(t.Context(), nil)
	if err != nil || rep.Checked != int64(1+len(img.Blobs)) || len(rep.Corrupt) != 0 {
		t.Fatalf("verify = %+v, %v", rep, err)
	}
}

// TestTamperedSHA512ManifestIsRefused: a manifest asked for by sha512 is
// checked against it, even when the upstream's Docker-Content-Digest (a
// sha256, as registries give) matches what it sent.
func TestTamperedSHA512ManifestIsRefused(t *testing.T) {
	img := regtest.NewSHA512Image(t, 1, 100)
	lie := []byte(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json"}`)
	lying := func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.Method == http.MethodGet && strings.HasSuffix(r.URL.Path, "/manifests/"+img.Digest.String()) {
				w.Header().Set("Content-Type", "application/vnd.oci.image.manifest.v1+json")
				w.Header().Set("Docker-Content-Digest", regtest.DigestOf(lie).String())
				w.Write(lie)
				return
			}
			next.ServeHTTP(w, r)
		})
	}
	e := newEnv(t, withUpstreamFault(lying))
	img.Push(t, e.upstream.URL, "library/app", "")
	resp, body := e.do(http.MethodGet, "/v2/app/manifests/"+img.Digest.String(), nil)
	if resp.StatusCode != http.StatusBadGateway {
		t.Errorf("status = %d, want 502; body %s", resp.StatusCode, body)
	}
	regtest.OCICode(t, resp, body)
	if e.store.Has(img.Digest) || e.store.Has(cache.Sum("sha512", lie)) {
		t.Error("tampered manifest entered the cache")
	}
}
