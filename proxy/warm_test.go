package proxy_test

import (
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/regmirror/regmirror/proxy"
	"github.com/regmirror/regmirror/test/regtest"
)

// contentOf is the digests of img's manifest, config and layers.
func contentOf(t *testing.T, img v1.Image) []v1.Hash {
	t.Helper()
	cfg, err := img.ConfigName()
	if err != nil {
		t.Fatal(err)
	}
	out := []v1.Hash{regtest.Digest(t, img), cfg}
	layers, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range layers {
		out = append(out, regtest.Digest(t, l))
	}
	return out
}

// TestPinWithReferrersKeepsThemOffline: a pin with referrers=1 fetches the
// image's signature and SBOM, and the SBOM's own signature (a referrer of a
// referrer), with their blobs; keeps them through eviction; serves them and
// the referrers answers with the upstream gone; and check reports them. A
// warm-up without referrers=1 fetches none of them, and check says so.
func TestPinWithReferrersKeepsThemOffline(t *testing.T) {
	e := newEnv(t, withReferrersAPI(), withBudget(256<<10))
	img := randomImage(t)
	e.push("library/app:1", img)
	sig := e.artifactOf("library/app", img, sigType)
	sbom := e.artifactOf("library/app", img, sbomType)
	sbomSig := e.artifactOf("library/app", sbom, sigType)
	plain := randomImage(t)
	e.push("library/plain:1", plain)
	e.artifactOf("library/plain", plain, sigType)
	h := e.proxy.Admin("")

	code, lines := e.admin(h, http.MethodPost, proxy.AdminPin+"?image=app:1&referrers=1", "")
	var last proxy.WarmProgress
	if code != http.StatusOK || len(lines) == 0 || json.Unmarshal(lines[len(lines)-1], &last) != nil {
		t.Fatalf("pin with referrers: %d %q", code, lines)
	}
	if !last.Done || last.Error != "" || last.Referrers != 3 || last.Platforms != 1 || last.Blobs != 2+3*2 {
		t.Fatalf("last progress %+v: want done, 3 referrers, 1 platform, 8 blobs", last)
	}

	// Pressure: other images fill the budget several times over.
	for i := range 8 {
		big, err := random.Image(64<<10, 1)
		if err != nil {
			t.Fatal(err)
		}
		ref := fmt.Sprintf("library/filler:%d", i)
		e.push(ref, big)
		regtest.ReadImage(t, mustImage(t, e, ref))
	}
	if _, err := e.store.GC(); err != nil {
		t.Fatal(err)
	}
	if u := e.store.Usage(); u.Evictions == 0 {
		t.Fatalf("no eviction under pressure: %+v", u)
	}
	for _, a := range []v1.Image{img, sig, sbom, sbomSig} {
		for _, d := range contentOf(t, a) {
			if !e.store.Has(d) {
				t.Errorf("%s evicted although pinned with its image's referrers", d)
			}
		}
	}

	if code, _ := e.admin(h, http.MethodPost, proxy.AdminWarm+"?image=plain:1", ""); code != http.StatusOK {
		t.Fatalf("warm plain: %d", code)
	}
	if code, _ := e.admin(h, http.MethodPost, proxy.AdminWarm+"?image=plain:1&referrers=maybe", ""); code != http.StatusBadRequest {
		t.Errorf("referrers=maybe: status %d, want 400", code)
	}

	e.upstream.Close()
	subject := regtest.Digest(t, img)
	_, idx := e.getReferrers("/v2/app/referrers/" + subject.String())
	if got, want := digests(idx), sortedDigests(t, sig, sbom); !slices.Equal(got, want) {
		t.Errorf("offline referrers = %v, want %v", got, want)
	}
	_, idx = e.getReferrers("/v2/app/referrers/" + regtest.Digest(t, sbom).String())
	if got, want := digests(idx), sortedDigests(t, sbomSig); !slices.Equal(got, want) {
		t.Errorf("offline referrers of the SBOM = %v, want %v", got, want)
	}
	for _, d := range contentOf(t, sbomSig)[1:] {
		if resp, _ := e.do(http.MethodGet, "/v2/app/blobs/"+d.String(), nil); resp.StatusCode != http.StatusOK {
			t.Errorf("offline GET of the SBOM signature's blob %s: %d", d, resp.StatusCode)
		}
	}

	check := func(image string) proxy.CheckResult {
		t.Helper()
		resp, body := e.do(http.MethodGet, proxy.CheckPath+"?referrers=1&image="+image, nil)
		var res []proxy.CheckResult
		if resp.StatusCode != http.StatusOK || json.Unmarshal(body, &res) != nil || len(res) != 1 {
			t.Fatalf("check %s: %d %s", image, resp.StatusCode, body)
		}
		return res[0]
	}
	if res := check("app:1"); !res.Complete || res.Referrers != 3 || res.Present != 4*3 {
		t.Errorf("check app:1 with referrers = %+v: want complete, 3 referrers, 12 parts", res)
	}
	if res := check("plain:1"); res.Complete || len(res.Missing) != 1 || res.Missing[0].Kind != "referrers" {
		t.Errorf("check plain:1 (warmed without referrers) = %+v: want its referrers missing", res)
	}
}

func mustImage(t *testing.T, e *env, ref string) v1.Image {
	t.Helper()
	img, err := remote.Image(e.mirrorRef(ref))
	if err != nil {
		t.Fatal(err)
	}
	return img
}

func sortedDigests(t *testing.T, imgs ...v1.Image) []string {
	var out []string
	for _, img := range imgs {
		out = append(out, regtest.Digest(t, img).String())
	}
	slices.Sort(out)
	return out
}
