package proxy_test

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
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
	return regtest.Digest(e.t, e.artifactOf(repo, subject, artifactType))
}

// artifactOf is pushReferrer's artifact itself.
func (e *env) artifactOf(repo string, subject v1.Image, artifactType string) v1.Image {
	e.t.Helper()
	desc, err := partial.Descriptor(subject)
	if err != nil {
		e.t.Fatal(err)
	}
	art := mutate.ConfigMediaType(mutate.MediaType(randomImage(e.t), types.OCIManifestSchema1), types.MediaType(artifactType))
	art = mutate.Subject(art, *desc).(v1.Image)
	e.push(repo+"@"+regtest.Digest(e.t, art).String(), art)
	return art
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

// pagingReferrers is an upstream fault: it answers the referrers API in
// pages of per descriptors, by a ?page= cursor of its own, each with a Link
// to the next (the last one repeated at the start of the next page, as a
// registry whose list moved may), from the registry's whole answer. A
// selfLoop upstream links every page to page 1, forever.
func pagingReferrers(per int, selfLoop bool) func(http.Handler) http.Handler {
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.Method != http.MethodGet || !strings.Contains(r.URL.Path, "/referrers/") {
				next.ServeHTTP(w, r)
				return
			}
			whole := httptest.NewRecorder()
			r2 := r.Clone(r.Context())
			r2.URL.RawQuery = ""
			next.ServeHTTP(whole, r2)
			var idx v1.IndexManifest
			if whole.Code != http.StatusOK || json.Unmarshal(whole.Body.Bytes(), &idx) != nil {
				w.WriteHeader(whole.Code)
				w.Write(whole.Body.Bytes())
				return
			}
			// The registry lists from a map: in digest order, pages hold still.
			slices.SortFunc(idx.Manifests, func(a, b v1.Descriptor) int { return strings.Compare(a.Digest.String(), b.Digest.String()) })
			page, _ := strconv.Atoi(r.URL.Query().Get("page"))
			from := max(page*per-1, 0) // one repeat from the page before
			to := min((page+1)*per, len(idx.Manifests))
			all := idx.Manifests
			idx.Manifests = all[min(from, len(all)):to]
			if to < len(all) || selfLoop {
				np := page + 1
				if selfLoop {
					np = 1
				}
				w.Header().Set("Link", fmt.Sprintf(`<%s?page=%d>; rel="next"`, r.URL.Path, np))
			}
			w.Header().Set("Content-Type", string(types.OCIImageIndex))
			json.NewEncoder(w).Encode(idx)
		})
	}
}

// TestPagedReferrersAreMerged: an upstream that pages its referrers answer
// is read page after page, and the mirror answers every referrer in one
// index, without repeats and unpaged; the artifactType filter applies to
// all of it. An upstream whose pages never end is read a bounded number of
// times.
func TestPagedReferrersAreMerged(t *testing.T) {
	e := newEnv(t, withReferrersAPI(), withUpstreamFault(pagingReferrers(2, false)))
	subject := randomImage(t)
	e.push("library/app:1", subject)
	var want []string
	for i := range 5 {
		at := sigType
		if i == 0 {
			at = sbomType
		}
		want = append(want, e.pushReferrer("library/app", subject, at).String())
	}
	slices.Sort(want)
	sd := regtest.Digest(t, subject)
	path := "/v2/app/referrers/" + sd.String()
	before := e.counts.CountPrefix(http.MethodGet, "/v2/library/app/referrers/") // the pushes asked too
	resp, idx := e.getReferrers(path)
	if got := digests(idx); !slices.Equal(got, want) {
		t.Errorf("paged referrers = %v, want all %d: %v", got, len(want), want)
	}
	if l := resp.Header.Get("Link"); l != "" {
		t.Errorf("merged answer has Link %q, want none", l)
	}
	if n := e.counts.CountPrefix(http.MethodGet, "/v2/library/app/referrers/") - before; n != 3 {
		t.Errorf("upstream referrers GETs = %d, want 3 pages", n)
	}
	if _, idx = e.getReferrers(path + "?artifactType=" + sbomType); len(idx.Manifests) != 1 {
		t.Errorf("filtered merged answer = %v, want the one SBOM", digests(idx))
	}

	loop := newEnv(t, withReferrersAPI(), withUpstreamFault(pagingReferrers(2, true)))
	loop.push("library/app:1", subject)
	loop.pushReferrer("library/app", subject, sigType)
	before = loop.counts.CountPrefix(http.MethodGet, "/v2/library/app/referrers/")
	loop.getReferrers(path)
	if n := loop.counts.CountPrefix(http.MethodGet, "/v2/library/app/referrers/") - before; n > 3 {
		t.Errorf("an upstream whose pages loop was asked %d times", n)
	}
}
