package proxy_test

import (
	"encoding/json"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/partial"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/regmirror/regmirror/test/regtest"
)

const (
	sigType  = "application/vnd.example.signature"
	sbomType = "application/vnd.example.sbom"
)

// pushReferrer pushes an OCI artifact of artifactType whose subject is img,
// by digest, as cosign or oras would; ggcr's client also writes the
// referrers tag schema's index, which an upstream without the API needs.
func (e *env) pushReferrer(repo string, subject v1.Image, artifactType string) v1.Hash {
	e.t.Helper()
	desc, err := partial.Descriptor(subject)
	if err != nil {
		e.t.Fatal(err)
	}
	art := mutate.ConfigMediaType(mutate.MediaType(randomImage(e.t), types.OCIManifestSchema1), types.MediaType(artifactType))
	art = mutate.Subject(art, *desc).(v1.Image)
	d := regtest.Digest(e.t, art)
	e.push(repo+"@"+d.String(), art)
	return d
}

type referrersIndex struct {
	MediaType string          `json:"mediaType"`
	Manifests []v1.Descriptor `json:"manifests"`
}

func (e *env) getReferrers(path string) (*http.Response, referrersIndex) {
	e.t.Helper()
	resp, body := e.do(http.MethodGet, path, nil)
	var idx referrersIndex
	if resp.StatusCode != http.StatusOK || json.Unmarshal(body, &idx) != nil || idx.Manifests == nil {
		e.t.Fatalf("GET %s: status %d, body %s; want 200 with an index", path, resp.StatusCode, body)
	}
	if ct := resp.Header.Get("Content-Type"); ct != string(types.OCIImageIndex) {
		e.t.Errorf("GET %s: Content-Type %q", path, ct)
	}
	return resp, idx
}

func digests(idx referrersIndex) []string {
	var out []string
	for _, d := range idx.Manifests {
		out = append(out, d.Digest.String())
	}
	slices.Sort(out)
	return out
}

// TestReferrersThroughTheMirror: the referrers API answers through the
// mirror whether the upstream has the API or only the referrers tag schema;
// the artifactType filter is applied here and says so; a subject with no
// referrers gets an empty index; the answer is kept for the TTL and served,
// with a Warning, when the upstream is gone.
func TestReferrersThroughTheMirror(t *testing.T) {
	for _, up := range []struct {
		name string
		opts []envOption
	}{
		{"upstream with the referrers API", []envOption{withReferrersAPI()}},
		{"upstream with the tag schema only", nil},
	} {
		t.Run(up.name, func(t *testing.T) {
			e := newEnv(t, append(up.opts, withTTL(time.Minute))...)
			subject, lonely := randomImage(t), randomImage(t)
			e.push("library/app:1", subject)
			e.push("library/app:2", lonely)
			sd := regtest.Digest(t, subject)
			sig := e.pushReferrer("library/app", subject, sigType)
			sbom := e.pushReferrer("library/app", subject, sbomType)
			path := "/v2/app/referrers/" + sd.String()

			want := []string{sig.String(), sbom.String()}
			slices.Sort(want)
			resp, idx := e.getReferrers(path)
			if got := digests(idx); !slices.Equal(got, want) {
				t.Errorf("referrers = %v, want %v", got, want)
			}
			if resp.Header.Get("OCI-Filters-Applied") != "" {
				t.Errorf("OCI-Filters-Applied = %q without a filter", resp.Header.Get("OCI-Filters-Applied"))
			}
			resp, idx = e.getReferrers(path + "?artifactType=" + sigType)
			if got := digests(idx); !slices.Equal(got, []string{sig.String()}) || idx.Manifests[0].ArtifactType != sigType {
				t.Errorf("referrers of type %s = %+v, want %s", sigType, idx.Manifests, sig)
			}
			if got := resp.Header.Get("OCI-Filters-Applied"); got != "artifactType" {
				t.Errorf("OCI-Filters-Applied = %q, want artifactType", got)
			}
			if _, idx = e.getReferrers("/v2/app/referrers/" + regtest.Digest(t, lonely).String()); len(idx.Manifests) != 0 {
				t.Errorf("referrers of an image nothing refers to: %+v", idx.Manifests)
			}

			// A client of the API, through the mirror.
			rd, err := name.NewDigest(host(e.mirror) + "/app@" + sd.String())
			if err != nil {
				t.Fatal(err)
			}
			ri, err := remote.Referrers(rd, remote.WithFilter("artifactType", sbomType))
			if err != nil {
				t.Fatal(err)
			}
			im, err := ri.IndexManifest()
			if err != nil || len(im.Manifests) != 1 || im.Manifests[0].Digest != sbom {
				t.Errorf("remote.Referrers with a filter: %+v, %v; want %s", im, err, sbom)
			}
			// The referrer itself is content like any: pulled and kept.
			if resp, body := e.do(http.MethodGet, "/v2/app/manifests/"+sig.String(), nil); resp.StatusCode != 200 || !strings.Contains(string(body), sd.Hex) {
				t.Errorf("GET the referrer: status %d, body %s", resp.StatusCode, body)
			}

			// Inside the TTL the kept answer serves; past it, offline, it still does.
			e.settle()
			asked := e.counts.Total()
			e.getReferrers(path)
			e.settle()
			if n := e.counts.Total(); n != asked {
				t.Errorf("inside the TTL: %d upstream requests, want none", n-asked)
			}
			e.clock.Advance(2 * time.Minute)
			e.upstream.Close()
			resp, idx = e.getReferrers(path + "?artifactType=" + sbomType)
			if got := digests(idx); !slices.Equal(got, []string{sbom.String()}) {
				t.Errorf("offline: referrers %v, want %s", got, sbom)
			}
			if !strings.HasPrefix(resp.Header.Get("Warning"), "299 ") {
				t.Errorf("offline: Warning = %q, want a 299 warning", resp.Header.Get("Warning"))
			}
			resp, body := e.do(http.MethodGet, "/v2/app/referrers/"+regtest.Digest(t, randomImage(t)).String(), nil)
			if resp.StatusCode != http.StatusServiceUnavailable || regtest.OCICode(t, resp, body) != "UNAVAILABLE" {
				t.Errorf("offline, never asked: status %d, body %s; want 503 UNAVAILABLE", resp.StatusCode, body)
			}
		})
	}
}

// TestReferrersAnswersAreNoTags: the kept referrers answer is listed
// neither as a tag (offline tags/list) nor as an image (admin API).
func TestReferrersAnswersAreNoTags(t *testing.T) {
	e := newEnv(t, withReferrersAPI())
	subject := randomImage(t)
	e.push("library/app:1", subject)
	e.pushReferrer("library/app", subject, sigType)
	e.do(http.MethodGet, "/v2/app/manifests/1", nil)
	e.getReferrers("/v2/app/referrers/" + regtest.Digest(t, subject).String())
	imgs, err := e.store.Images()
	if err != nil {
		t.Fatal(err)
	}
	if len(imgs) != 1 || imgs[0].Ref != "1" {
		t.Errorf("images = %+v, want app:1 only", imgs)
	}
	e.upstream.Close()
	_, body := e.do(http.MethodGet, "/v2/app/tags/list", nil)
	if string(body) != `{"name":"library/app","tags":["1"]}` {
		t.Errorf("offline tags/list = %s, want tag 1 only", body)
	}
}
