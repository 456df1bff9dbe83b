package test

import (
	"testing"

	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/validate"
)

func TestSmokePull(t *testing.T) {
	up := startUpstream(t, nil)
	img, _ := random.Image(1024, 2)
	if err := remote.Write(ref(t, up.Host(), "library/small:latest"), img); err != nil {
		t.Fatal(err)
	}
	m := startMirror(t, up.URL, "")
	got, err := remote.Image(ref(t, m.Host(), "small:latest"))
	if err != nil {
		t.Fatal(err, m.Logs())
	}
	if err := validate.Image(got); err != nil {
		t.Fatal(err)
	}
	t.Log(m.Logs())
}
