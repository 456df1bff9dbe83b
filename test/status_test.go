//go:build linux

package test

import (
	"context"
	"strconv"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/regmirror/regmirror/test/regtest"
)

// chromium renders url in Debian's headless Chromium and returns what it
// wrote (the DOM with --dump-dom).
func chromium(t *testing.T, url string, extra ...string) string {
	t.Helper()
	bin := lookClient(t, "chromium")[0]
	ctx, cancel := context.WithTimeout(t.Context(), guard)
	defer cancel()
	home := shortTempDir(t, "chromium")
	return regtest.Chromium(ctx, t, bin, home, clientEnv("HOME="+home), url, extra...)
}

// TestStatusPageInABrowser pulls an image through the real binary twice,
// then loads the status page in a real browser and reads what it shows.
func TestStatusPageInABrowser(t *testing.T) {
	t.Parallel()
	up := startUpstream(t, nil)
	img, err := random.Image(4096, 2)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(ref(t, up.Host(), "team/web-app:2.1"), img, remote.WithContext(t.Context())); err != nil {
		t.Fatal(err)
	}
	m := startMirror(t, up.URL, "")
	n, requests := pullOnce(t, m, "team/web-app:2.1")
	n2, requests2 := pullOnce(t, m, "team/web-app:2.1")
	if n2 != n {
		t.Fatalf("the warm pull got %d bytes, the cold one %d", n2, n)
	}
	m.waitRequests(t, requests+requests2)

	dom := chromium(t, m.URL+"/", "--dump-dom")
	// The cold pull's 4 requests (manifest, config, two layers) were misses
	// and the warm pull's were hits: 50%, and as many bytes from each source.
	bytes := strconv.FormatInt(n, 10)
	for _, want := range []string{
		"<title>regmirror status</title>",
		"docker.io/team/web-app:2.1",  // a recent pull
		"docker.io/team/web-app</td>", // the most pulled
		">50.0%<",
		"4 of 8 manifest and blob requests",
		`<data value="` + bytes + `" title="` + bytes + ` bytes">`, // saved and from upstream
		`<span class="up">up</span>`,
	} {
		if !strings.Contains(dom, want) {
			t.Errorf("the rendered page does not contain %q; DOM:\n%s", want, dom)
		}
	}
	if c := strings.Count(dom, `<data value="`+bytes+`"`); c < 2 {
		t.Errorf("the byte figure %s appears %d times, want it as bytes saved and as bytes from upstream", bytes, c)
	}
}
