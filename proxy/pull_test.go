package proxy_test

import (
	"net/http"
	"testing"

	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/validate"

	"github.com/regmirror/regmirror/test/regtest"
)

func TestPullImageThenWarmPullAsksUpstreamNothingByDigest(t *testing.T) {
	e := newEnv(t)
	img, err := random.Image(4096, 3)
	if err != nil {
		t.Fatal(err)
	}
	e.push("library/app:1.0", img)

	got, err := remote.Image(e.mirrorRef("app:1.0"))
	if err != nil {
		t.Fatalf("pull through mirror: %v", err)
	}
	if err := validate.Image(got); err != nil {
		t.Fatalf("image pulled through mirror is not valid: %v", err)
	}
	if a, b := regtest.Digest(t, got), regtest.Digest(t, img); a != b {
		t.Fatalf("digest = %s, want %s", a, b)
	}

	before := e.counts.Total()
	again, err := remote.Image(e.mirrorRef("library/app:1.0"))
	if err != nil {
		t.Fatal(err)
	}
	if err := validate.Image(again); err != nil {
		t.Fatalf("warm pull: %v", err)
	}
	if n := e.counts.Total() - before; n != 0 {
		t.Errorf("warm pull inside the tag TTL made %d upstream requests, want 0", n)
	}
	if n := e.counts.CountPrefix(http.MethodGet, "/v2/library/app/blobs/"); n != 4 {
		t.Errorf("upstream blob GETs = %d, want 4 (3 layers and a config, once each)", n)
	}
}

func TestPullMultiPlatformIndex(t *testing.T) {
	e := newEnv(t)
	idx, err := random.Index(2048, 2, 3)
	if err != nil {
		t.Fatal(err)
	}
	e.pushIndex("team/tool:latest", idx)

	got, err := remote.Index(e.mirrorRef("team/tool:latest"))
	if err != nil {
		t.Fatal(err)
	}
	if err := validate.Index(got); err != nil {
		t.Fatalf("index pulled through mirror is not valid: %v", err)
	}
	if a, b := regtest.Digest(t, got), regtest.Digest(t, idx); a != b {
		t.Fatalf("index digest = %s, want %s", a, b)
	}
	before := e.counts.Total()
	if err := validate.Index(got); err != nil {
		t.Fatal(err)
	}
	again, err := remote.Index(e.mirrorRef("team/tool:latest"))
	if err != nil {
		t.Fatal(err)
	}
	if err := validate.Index(again); err != nil {
		t.Fatal(err)
	}
	if n := e.counts.Total() - before; n != 0 {
		t.Errorf("second pull of the index made %d upstream requests, want 0", n)
	}
}
