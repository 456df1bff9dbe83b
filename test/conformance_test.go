package test

// The OCI distribution-spec conformance suite (its Go, non-Ginkgo runner),
// read-only, against the mirror in front of two upstreams: Debian's
// docker-registry (distribution 2.8, no referrers API) and
// go-containerregistry's registry with the referrers API. .ci/clients.sh
// installs the suite as oci-conformance.

import (
	"fmt"
	"io"
	"log"
	"net"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/partial"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/regmirror/regmirror/test/regtest"
)

const conformanceRepo = "conformance/repo1"

// conformanceData is what was seeded upstream, as the suite's OCI_RO_DATA_* lists.
type conformanceData struct{ tags, manifests, blobs, referrers []string }

// seedConformance pushes an OCI image, an OCI index of two images, an
// artifact whose subject is the image and an image of sha512 content to host's
// conformance repository.
func seedConformance(t *testing.T, host string, manifestsBySHA512 bool) conformanceData {
	t.Helper()
	var d conformanceData
	repo := func(s string) name.Reference {
		r, err := name.ParseReference(host + "/" + conformanceRepo + s)
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	ociImage := func() v1.Image {
		img, err := random.Image(1024, 2)
		if err != nil {
			t.Fatal(err)
		}
		img = mutate.MediaType(mutate.ConfigMediaType(img, types.OCIConfigJSON), types.OCIManifestSchema1)
		layers, err := img.Layers()
		if err != nil {
			t.Fatal(err)
		}
		cfg, err := img.ConfigName()
		if err != nil {
			t.Fatal(err)
		}
		d.blobs = append(d.blobs, cfg.String())
		for _, l := range layers {
			h, err := l.Digest()
			if err != nil {
				t.Fatal(err)
			}
			d.blobs = append(d.blobs, h.String())
		}
		d.manifests = append(d.manifests, regtest.Digest(t, img).String())
		return img
	}
	img := ociImage()
	if err := remote.Write(repo(":v1"), img); err != nil {
		t.Fatal(err)
	}
	idx := mutate.IndexMediaType(empty.Index, types.OCIImageIndex)
	for _, arch := range []string{"amd64", "arm64"} {
		idx = mutate.AppendManifests(idx, mutate.IndexAddendum{Add: ociImage(), Descriptor: v1.Descriptor{
			Platform: &v1.Platform{OS: "linux", Architecture: arch}}})
	}
	if err := remote.WriteIndex(repo(":index"), idx); err != nil {
		t.Fatal(err)
	}
	d.manifests = append(d.manifests, regtest.Digest(t, idx).String())
	desc, err := partial.Descriptor(img)
	if err != nil {
		t.Fatal(err)
	}
	art := mutate.Subject(mutate.ConfigMediaType(ociImage(), "application/vnd.example.signature"), *desc).(v1.Image)
	artDigest := regtest.Digest(t, art)
	d.manifests[len(d.manifests)-1] = artDigest.String() // ociImage recorded the artifact before its subject was set
	if err := remote.Write(repo("@"+artDigest.String()), art); err != nil {
		t.Fatal(err)
	}
	// An image whose config and layers are named by sha512, its manifest by
	// its sha512 digest where the upstream keeps manifests by sha512
	// (distribution 2.8 names them by sha256 only: there, by tag).
	img512 := regtest.NewSHA512Image(t, 2, 1024)
	d.tags = []string{"v1", "index"}
	if manifestsBySHA512 {
		img512.Push(t, "http://"+host, conformanceRepo, "")
		d.manifests = append(d.manifests, img512.Digest.String())
	} else {
		img512.Push(t, "http://"+host, conformanceRepo, "sha512-layers")
		d.manifests = append(d.manifests, regtest.DigestOf(img512.Manifest).String())
		d.tags = append(d.tags, "sha512-layers")
	}
	for h := range img512.Blobs {
		d.blobs = append(d.blobs, h.String())
	}
	d.referrers = []string{desc.Digest.String()}
	return d
}

// startDistribution runs Debian's docker-registry (distribution 2.8) on a
// free loopback port with in-memory storage, until the test ends.
func startDistribution(t *testing.T, bin string) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	cfg := filepath.Join(t.TempDir(), "config.yml")
	conf := fmt.Sprintf("version: 0.1\nlog:\n  level: error\nstorage:\n  inmemory: {}\nhttp:\n  addr: %s\n", addr)
	if err := os.WriteFile(cfg, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "serve", cfg)
	cmd.Stdout, cmd.Stderr = io.Discard, io.Discard
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	for i := 0; ; i++ {
		c, err := net.Dial("tcp", addr)
		if err == nil {
			c.Close()
			return addr
		}
		if i == 300 {
			t.Fatalf("docker-registry did not listen on %s", addr)
		}
		time.Sleep(20 * time.Millisecond) // waiting for another process to listen: nothing to wait on
	}
}

// conformanceStatus is one line of the suite's printed report: "<name>: <status>".
var conformanceStatus = regexp.MustCompile(`(?m)^\s*(.+): (Pass|FAIL|Error|Skip|Disabled|Unknown)$`)

func TestOCIConformanceReadOnly(t *testing.T) {
	bins := lookClient(t, "oci-conformance", "docker-registry")
	for _, up := range []struct {
		name              string
		start             func(t *testing.T) string // host:port
		manifestsBySHA512 bool
	}{
		{"distribution 2.8", func(t *testing.T) string { return startDistribution(t, bins[1]) }, false},
		{"go-containerregistry with referrers", func(t *testing.T) string {
			s := httptest.NewServer(registry.New(registry.Logger(log.New(io.Discard, "", 0)), registry.WithReferrersSupport(true)))
			t.Cleanup(s.Close)
			return strings.TrimPrefix(s.URL, "http://")
		}, true},
	} {
		t.Run(up.name, func(t *testing.T) {
			host := up.start(t)
			data := seedConformance(t, host, up.manifestsBySHA512)
			m := startMirror(t, "http://"+host, "")
			results := t.TempDir()
			cmd := exec.Command(bins[0])
			cmd.Dir = results
			cmd.Env = append(os.Environ(),
				"OCI_REGISTRY="+m.Addr, "OCI_TLS=disabled", "OCI_REPO1="+conformanceRepo, "OCI_REPO2="+conformanceRepo,
				"OCI_RESULTS_DIR="+results, "OCI_VERSION=1.1", "OCI_LOG=error",
				"OCI_API_PUSH=false", "OCI_API_BLOBS_DELETE=false", "OCI_API_MANIFESTS_DELETE=false", "OCI_API_TAGS_DELETE=false",
				// Its sha512 blob-push cases need push; the sha512 content is in the read-only data.
				"OCI_DATA_SHA512=true",
				"OCI_RO_DATA_TAGS="+strings.Join(data.tags, " "),
				"OCI_RO_DATA_MANIFESTS="+strings.Join(data.manifests, " "),
				"OCI_RO_DATA_BLOBS="+strings.Join(data.blobs, " "),
				"OCI_RO_DATA_REFERRERS="+strings.Join(data.referrers, " "),
			)
			// With push off the suite panics after printing its report (nil data
			// in its YAML report): the printed results are the verdict.
			out, _ := cmd.CombinedOutput()
			report, _, _ := strings.Cut(string(out), "Configuration:")
			passed := 0
			for _, l := range conformanceStatus.FindAllStringSubmatch(report, -1) {
				switch l[2] {
				case "Pass":
					passed++
				case "FAIL", "Error":
					t.Errorf("conformance: %s: %s", l[1], l[2])
				}
			}
			if passed == 0 || !strings.Contains(string(out), "OCI Conformance Result:") {
				t.Errorf("conformance: no test passed, or no verdict printed")
			}
			if t.Failed() || testing.Verbose() {
				t.Logf("conformance output:\n%s", out)
			}
		})
	}
}
