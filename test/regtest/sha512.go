package regtest

import (
	"bytes"
	"crypto/rand"
	"crypto/sha512"
	"encoding/hex"
	"encoding/json"
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// SHA512Image is an OCI image whose config and layers are named by sha512
// digests in its manifest, and whose manifest has a sha512 digest too.
type SHA512Image struct {
	Manifest []byte
	Digest   v1.Hash // the manifest's sha512
	Config   v1.Hash
	Layers   []v1.Hash
	Blobs    map[v1.Hash][]byte // the config and the layers
}

// SHA512Of is b's sha512 digest.
func SHA512Of(b []byte) v1.Hash {
	sum := sha512.Sum512(b)
	return v1.Hash{Algorithm: "sha512", Hex: hex.EncodeToString(sum[:])}
}

// NewSHA512Image makes an image of layers random layers of size bytes each.
func NewSHA512Image(t testing.TB, layers, size int) SHA512Image {
	t.Helper()
	img := SHA512Image{Blobs: map[v1.Hash][]byte{}}
	cfg := []byte(`{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}`)
	img.Config = SHA512Of(cfg)
	img.Blobs[img.Config] = cfg
	m := v1.Manifest{SchemaVersion: 2, MediaType: types.OCIManifestSchema1,
		Config: v1.Descriptor{MediaType: types.OCIConfigJSON, Digest: img.Config, Size: int64(len(cfg))}}
	for range layers {
		b := make([]byte, size)
		if _, err := rand.Read(b); err != nil {
			t.Fatal(err)
		}
		h := SHA512Of(b)
		img.Blobs[h] = b
		img.Layers = append(img.Layers, h)
		m.Layers = append(m.Layers, v1.Descriptor{MediaType: types.OCIUncompressedLayer, Digest: h, Size: int64(size)})
	}
	var err error
	if img.Manifest, err = json.Marshal(m); err != nil {
		t.Fatal(err)
	}
	img.Digest = SHA512Of(img.Manifest)
	return img
}

// Push uploads img to the registry at base (http://host:port) as repo, its
// manifest by ref: a tag, or its sha512 digest when ref is empty. Clients
// of go-containerregistry name uploads by sha256, so this speaks the API
// itself: a POST and a PUT per blob, then a PUT of the manifest.
func (img SHA512Image) Push(t testing.TB, base, repo, ref string) {
	t.Helper()
	for h, b := range img.Blobs {
		PushBlob(t, base, repo, h, b)
	}
	if ref == "" {
		ref = img.Digest.String()
	}
	req, _ := http.NewRequest(http.MethodPut, base+"/v2/"+repo+"/manifests/"+ref, bytes.NewReader(img.Manifest))
	req.Header.Set("Content-Type", string(types.OCIManifestSchema1))
	expect(t, req, http.StatusCreated)
}

// PushBlob uploads b as the blob h of repo in the registry at base.
func PushBlob(t testing.TB, base, repo string, h v1.Hash, b []byte) {
	t.Helper()
	resp, err := http.Post(base+"/v2/"+repo+"/blobs/uploads/", "", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted {
		t.Fatalf("start upload of %s: status %d", h, resp.StatusCode)
	}
	loc, err := resp.Request.URL.Parse(resp.Header.Get("Location"))
	if err != nil {
		t.Fatal(err)
	}
	q := loc.Query()
	q.Set("digest", h.String())
	loc.RawQuery = q.Encode()
	req, _ := http.NewRequest(http.MethodPut, loc.String(), bytes.NewReader(b))
	req.Header.Set("Content-Type", "application/octet-stream")
	expect(t, req, http.StatusCreated)
}

func expect(t testing.TB, req *http.Request, status int) {
	t.Helper()
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != status {
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		t.Fatalf("%s %s: status %d, want %d; body %s", req.Method, redact(req.URL), resp.StatusCode, status, strings.TrimSpace(string(body)))
	}
}

// redact drops a URL's query (upload state), which is noise in a failure.
func redact(u *url.URL) string { c := *u; c.RawQuery = ""; return c.String() }
