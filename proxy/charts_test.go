package proxy_test

import (
	"bytes"
	"context"
	"fmt"
	"image/png"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/regmirror/regmirror/proxy"
	"github.com/regmirror/regmirror/test/regtest"
)

// pageBudget is the most the status page may weigh: the charts are drawn
// as one path per series and one rectangle per run of a health state.
const pageBudget = 200 << 10

// scriptedWeek drives the mirror through six days at one pull an hour, then
// a last day at 5-minute steps: a working day's pulls (a new image every
// half hour in the day, evicting old ones), the upstream down from 10:00 to
// 11:00 and out of pulls from 15:00 to 15:30. It samples the series after
// each step, as the page's readers and the mirror's own ticker would.
func scriptedWeek(t *testing.T, e *env, sw *upstreamSwitch) (end time.Time) {
	t.Helper()
	// An image is pulled as a client does once it knows the manifest's
	// content: the manifest by tag, then its config and layers by digest.
	type image struct {
		manifest string
		blobs    []string
	}
	images := 0
	fresh := func() image {
		img, err := random.Image(48<<10, 2)
		if err != nil {
			t.Fatal(err)
		}
		images++
		e.push(fmt.Sprintf("team/app:%d", images), img)
		m, err := img.Manifest()
		if err != nil {
			t.Fatal(err)
		}
		im := image{manifest: fmt.Sprintf("/v2/team/app/manifests/%d", images)}
		for _, d := range append([]v1.Descriptor{m.Config}, m.Layers...) {
			im.blobs = append(im.blobs, "/v2/team/app/blobs/"+d.Digest.String())
		}
		return im
	}
	accept := http.Header{"Accept": {string(types.DockerManifestSchema2), string(types.OCIManifestSchema1)}}
	pull := func(im image) {
		for i, path := range append([]string{im.manifest}, im.blobs...) {
			h := accept
			if i > 0 {
				h = nil
			}
			if resp, body := e.do(http.MethodGet, path, h); resp.StatusCode != http.StatusOK {
				t.Fatalf("GET %s: %d %.200s", path, resp.StatusCode, body)
			}
		}
	}
	warm := fresh()
	step := func(d time.Duration, pulls func()) {
		e.settle()
		e.clock.Advance(d)
		pulls()
		e.settle()
		e.do(http.MethodHead, proxy.HistoryPath+"?range=7d", nil) // samples
	}
	for h := 0; h < 6*24; h++ {
		step(time.Hour, func() {
			if h%3 == 0 {
				warm = fresh()
			}
			pull(warm)
		})
	}
	for k := 0; k < 288; k++ {
		at := e.clock.Now().Add(5 * time.Minute)
		hour := at.Hour()
		mode := upOK
		switch {
		case hour == 10:
			mode = upDown
		case hour == 15 && at.Minute() < 30:
			mode = upLimited
		}
		if sw.mode.Swap(int32(mode)) == upDown && mode != upDown {
			e.waitUp()
		}
		step(5*time.Minute, func() {
			if mode != upOK {
				// A tag not cached yet must be asked upstream, which fails.
				e.do(http.MethodGet, fmt.Sprintf("/v2/team/app/manifests/new-%d", k), nil)
			}
			day := hour >= 8 && hour < 18
			if day && mode == upOK && at.Minute()%30 == 0 {
				warm = fresh() // misses, which evict older images
			}
			pull(warm)
			if day {
				pull(warm)
			}
		})
	}
	return e.clock.Now()
}

// chromium renders url in Debian's headless Chromium, as test/status_test.go
// does, with the extra arguments, and returns its standard output.
func chromium(t *testing.T, url string, extra ...string) string {
	t.Helper()
	bin, err := exec.LookPath("chromium")
	if err != nil {
		if os.Getenv("REGMIRROR_REQUIRE_CLIENTS") == "1" {
			t.Fatal("chromium is not installed (bash .ci/clients.sh installs it)")
		}
		t.Skip("chromium is not installed (bash .ci/clients.sh installs it)")
	}
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	home := t.TempDir()
	return regtest.Chromium(ctx, t, bin, home, append(os.Environ(), "HOME="+home), url, extra...)
}

// figure is the element with id in the DOM, up to its </figure>.
func figure(t *testing.T, dom, id string) string {
	t.Helper()
	start := strings.Index(dom, `<figure class="chart" id="`+id+`"`)
	if start < 0 {
		t.Fatalf("the page has no chart %s", id)
	}
	end := strings.Index(dom[start:], "</figure>")
	return dom[start : start+end]
}

var seriesPath = regexp.MustCompile(`<path class="line series[^"]*" d="([^"]*)"`)

// points counts the coordinate pairs of a chart's first series line.
func points(t *testing.T, fig string) int {
	t.Helper()
	m := seriesPath.FindStringSubmatch(fig)
	if m == nil {
		t.Fatalf("no series line in %.300s", fig)
	}
	return len(strings.Fields(strings.NewReplacer("M", " ", "L", " ").Replace(m[1]))) / 2
}

// TestStatusPageChartsInABrowser renders the page in Chromium after a
// scripted week and checks what it drew. REGMIRROR_SCREENSHOT=docs/status.png
// (from the repository's root) writes the screenshot there (README's picture).
func TestStatusPageChartsInABrowser(t *testing.T) {
	var sw upstreamSwitch
	start := time.Date(2026, 3, 2, 0, 0, 0, 0, time.UTC).Add(-6 * 24 * time.Hour)
	e := newEnv(t, withUpstreamFault(sw.wrap), withProbe(time.Millisecond), withBudget(640<<10),
		withTTL(time.Hour), withClockAt(start))
	scriptedWeek(t, e, &sw)

	resp, page := e.do(http.MethodGet, "/", nil)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /: %d", resp.StatusCode)
	}
	if len(page) > pageBudget {
		t.Errorf("the status page is %d bytes after a busy week, over its budget of %d", len(page), pageBudget)
	}
	t.Logf("status page: %d bytes", len(page))

	dom := chromium(t, e.mirror.URL+"/", "--dump-dom")
	for id, want := range map[string]int{"bytes-24h": 288, "bytes-7d": 168, "hit-24h": 288, "disk-7d": 168} {
		fig := figure(t, dom, id)
		if !strings.Contains(fig, "<svg") {
			t.Errorf("chart %s has no SVG", id)
			continue
		}
		if n := points(t, fig); n != want {
			t.Errorf("chart %s draws %d points, want %d", id, n, want)
		}
	}
	day := figure(t, dom, "health-24h")
	for state, what := range map[string]string{"s1": "up", "s2": "rate-limited", "s3": "down"} {
		if !strings.Contains(day, `class="`+state+`"`) {
			t.Errorf("the 24-hour health strip shows no %s step", what)
		}
	}
	for _, want := range []string{"saved</b>", "MiB", "KiB", "06:00", "12:00", "UTC", "Wed 25", "from the cache", "from upstream", "budget", "docker.io"} {
		if !strings.Contains(dom, want) {
			t.Errorf("the rendered charts do not contain %q", want)
		}
	}

	shot := os.Getenv("REGMIRROR_SCREENSHOT")
	switch {
	case shot == "":
		shot = filepath.Join(t.TempDir(), "status.png")
	case !filepath.IsAbs(shot):
		shot = filepath.Join("..", shot) // from the repository's root; tests run in proxy/
	}
	chromium(t, e.mirror.URL+"/", "--screenshot="+shot, "--window-size=1200,1000", "--hide-scrollbars", "--force-device-scale-factor=1")
	b, err := os.ReadFile(shot)
	if err != nil {
		t.Fatal(err)
	}
	img, err := png.Decode(bytes.NewReader(b))
	if err != nil {
		t.Fatalf("the screenshot is not a PNG: %v", err)
	}
	if sz := img.Bounds().Size(); sz.X != 1200 || sz.Y != 1000 {
		t.Errorf("screenshot is %v, want 1200x1000", sz)
	}
	t.Logf("screenshot: %s (%d bytes)", shot, len(b))
}
