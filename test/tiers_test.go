package test

import (
	"net/http"
	"strings"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/regmirror/regmirror/test/regtest"
)

// pushRandom pushes a random image of n layers to repoTag at up.
func pushRandom(t *testing.T, up *upstreamServer, repoTag string, n int64) v1.Image {
	t.Helper()
	img, err := random.Image(2048, n)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(ref(t, up.Host(), repoTag), img, remote.WithContext(t.Context())); err != nil {
		t.Fatal(err)
	}
	return img
}

// twoOrigins is a docker.io and a ghcr.io origin holding different images
// under the same repository name, and a regional regmirror in front of both.
type twoOrigins struct {
	hub, ghcr       *upstreamServer
	hubImg, ghcrImg v1.Image
	regional        *mirrorProc
}

func startTwoOrigins(t *testing.T, regionalEnv ...string) twoOrigins {
	t.Helper()
	o := twoOrigins{hub: startUpstream(t, nil), ghcr: startUpstream(t, nil)}
	o.hubImg = pushRandom(t, o.hub, "other/tool:1.0", 2)
	o.ghcrImg = pushRandom(t, o.ghcr, "other/tool:1.0", 3)
	o.regional = startMirror(t, o.hub.URL, "", append([]string{"REGMIRROR_UPSTREAMS=ghcr.io=" + o.ghcr.URL}, regionalEnv...)...)
	return o
}

// The wrong-image bug of mirrors of mirrors: a site whose ghcr.io upstream is
// a regional mirror must get ghcr.io's image for every ghcr.io name, with
// either way of naming the registry at the regional, and docker.io's for
// docker.io names.
func TestSiteThroughRegionalKeepsRegistriesApart(t *testing.T) {
	t.Parallel()
	o := startTwoOrigins(t)
	hubDigest, ghcrDigest := regtest.Digest(t, o.hubImg), regtest.Digest(t, o.ghcrImg)
	if hubDigest == ghcrDigest {
		t.Fatal("the two origins hold the same image")
	}
	sites := map[string]*mirrorProc{
		"ns": startMirror(t, o.regional.URL+"?ns=docker.io", "",
			"REGMIRROR_UPSTREAMS=ghcr.io="+o.regional.URL+"?ns=ghcr.io"),
		"prefix": startMirror(t, o.regional.URL+"/docker.io", "",
			"REGMIRROR_UPSTREAMS=ghcr.io="+o.regional.URL+"/ghcr.io"),
	}
	for form, site := range sites {
		t.Run(form, func(t *testing.T) {
			pullImage(t, site, "ghcr.io/other/tool:1.0", ghcrDigest)
			pullImage(t, site, "ghcr.io/other/tool@"+ghcrDigest.String(), ghcrDigest)
			pullImage(t, site, "other/tool:1.0", hubDigest)
			pullImage(t, site, "other/tool@"+hubDigest.String(), hubDigest)
			// containerd's way of naming the registry at the site.
			resp, _ := site.do(http.MethodHead, "/v2/other/tool/manifests/1.0?ns=ghcr.io", nil)
			if got := resp.Header.Get("Docker-Content-Digest"); got != ghcrDigest.String() {
				t.Errorf("HEAD ?ns=ghcr.io: digest %q, want ghcr.io's %s", got, ghcrDigest)
			}
		})
	}
	// Every ghcr.io request reached the ghcr.io origin through the regional,
	// and the regional logged them as ghcr.io's.
	for _, line := range strings.Split(o.regional.Logs(), "\n") {
		if strings.Contains(line, `"msg":"request"`) && strings.Contains(line, ghcrDigest.Hex) && !strings.Contains(line, `"upstream":"ghcr.io"`) {
			t.Errorf("regional served ghcr.io's manifest as another registry's: %s", line)
		}
	}
}

// A site configured the old way (ghcr.io=http://regional:5000, no ?ns= or
// prefix) would get docker.io's image under the ghcr.io name; the regional's
// Oci-Namespace gives it away, and the site refuses it instead.
func TestSiteRefusesARegionalAnsweringForAnotherRegistry(t *testing.T) {
	t.Parallel()
	o := startTwoOrigins(t)
	site := startMirror(t, o.regional.URL, "", "REGMIRROR_UPSTREAMS=ghcr.io="+o.regional.URL)
	hubDigest := regtest.Digest(t, o.hubImg)
	resp, body := site.do(http.MethodGet, "/v2/ghcr.io/other/tool/manifests/1.0", nil)
	if resp.StatusCode != http.StatusBadGateway || strings.Contains(resp.Header.Get("Docker-Content-Digest"), hubDigest.Hex) {
		t.Fatalf("GET ghcr.io/other/tool:1.0 through a plain regional URL: %d %s, want 502 and never docker.io's image", resp.StatusCode, body)
	}
	if !strings.Contains(string(body), "?ns=ghcr.io") {
		t.Errorf("the error does not say how to fix the setting: %s", body)
	}
	// The default upstream is docker.io at the regional too: that works.
	pullImage(t, site, "other/tool:1.0", hubDigest)
}
