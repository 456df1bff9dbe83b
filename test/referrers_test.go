package test

import (
	"errors"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/partial"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/regmirror/regmirror/test/regtest"
)

// TestPinWithReferrersServesSignaturesOffline: `regmirror pin -referrers`
// brings an image's signature (an OCI artifact whose subject is the image,
// behind an upstream with only the referrers tag schema) into the cache;
// `regmirror check -referrers` says it is ready; with the upstream gone, a
// referrers client (go-containerregistry's remote.Referrers, as cosign's)
// finds the signature through the mirror and pulls it whole.
func TestPinWithReferrersServesSignaturesOffline(t *testing.T) {
	t.Parallel()
	up := startUpstream(t, nil)
	img, err := random.Image(2048, 2)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(ref(t, up.Host(), "library/signed:1"), img, remote.WithContext(t.Context())); err != nil {
		t.Fatal(err)
	}
	desc, err := partial.Descriptor(img)
	if err != nil {
		t.Fatal(err)
	}
	sigImg, err := random.Image(512, 1)
	if err != nil {
		t.Fatal(err)
	}
	sig := mutate.Subject(mutate.ConfigMediaType(mutate.MediaType(sigImg, types.OCIManifestSchema1), "application/vnd.example.signature"), *desc).(v1.Image)
	sigDigest := regtest.Digest(t, sig)
	// go-containerregistry's client writes the tag schema's index too, for
	// an upstream without the referrers API.
	if err := remote.Write(ref(t, up.Host(), "library/signed@"+sigDigest.String()), sig, remote.WithContext(t.Context())); err != nil {
		t.Fatal(err)
	}
	m := startMirror(t, up.URL, "", offlineEnv...)

	stdout, stderr, code := budCLI(t, m, "pin", "-referrers", "signed:1")
	if code != 0 || !strings.Contains(stdout, "signed:1: pinned (") || !strings.Contains(stdout, "1 platforms, 1 referrers, 5 blobs") {
		t.Fatalf("regmirror pin -referrers signed:1: exit %d, stdout %q; want 1 referrer, 5 blobs; stderr %s", code, stdout, stderr)
	}
	check := func(args ...string) (string, int) {
		cmd := exec.CommandContext(t.Context(), binary, append([]string{"check", "-mirror", m.URL}, args...)...)
		cmd.Env = append(os.Environ(), "GORACE=atexit_sleep_ms=0")
		out, err := cmd.Output()
		if ee, ok := errors.AsType[*exec.ExitError](err); ok {
			return string(out), ee.ExitCode()
		} else if err != nil {
			t.Fatal(err)
		}
		return string(out), 0
	}
	if out, code := check("-referrers", "signed:1"); code != 0 || !strings.Contains(out, "signed:1: ready offline (") || !strings.Contains(out, "7 parts cached, 1 referrers)") {
		t.Errorf("regmirror check -referrers signed:1: exit %d, stdout %q; want ready, 7 parts, 1 referrer", code, out)
	}

	up.Close()
	subject, err := name.NewDigest(m.Host() + "/library/signed@" + desc.Digest.String())
	if err != nil {
		t.Fatal(err)
	}
	idx, err := remote.Referrers(subject, remote.WithContext(t.Context()))
	if err != nil {
		t.Fatalf("offline remote.Referrers: %v", err)
	}
	im, err := idx.IndexManifest()
	if err != nil || len(im.Manifests) != 1 || im.Manifests[0].Digest != sigDigest {
		t.Fatalf("offline referrers = %+v, %v; want the signature %s", im, err, sigDigest)
	}
	got, err := remote.Image(ref(t, m.Host(), "library/signed@"+sigDigest.String()), remote.WithContext(t.Context()))
	if err != nil {
		t.Fatal(err)
	}
	regtest.ReadImage(t, got)
	if resp, body := m.do(http.MethodGet, "/v2/library/signed/referrers/"+desc.Digest.String(), nil); resp.Header.Get("Warning") == "" {
		t.Errorf("offline referrers answer without a Warning: %d %s", resp.StatusCode, body)
	}
}
