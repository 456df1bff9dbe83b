package test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/validate"

	"github.com/regmirror/regmirror/test/regtest"
)

// guard bounds every wait on the mirror: a mirror that does not stream, or
// that hangs, fails the test with a message instead of hanging it.
const guard = 30 * time.Second

// gatedEnv is the mirror's settings for a gated upstream: the mirror must not
// fail a held-back download on its own (REGMIRROR_UPSTREAM_TIMEOUT is also
// the stall limit) before the guard fires, and a test that fails with the
// gate closed should not wait 30s for the mirror to stop.
var gatedEnv = []string{"REGMIRROR_UPSTREAM_TIMEOUT=2m", "REGMIRROR_SHUTDOWN_TIMEOUT=1s"}

// seeded is what seed pushed upstream.
type seeded struct {
	img v1.Image      // in library/multi:latest
	idx v1.ImageIndex // in library/idx:latest
}

// platforms are the platforms of the index that seed pushes.
var platforms = []v1.Platform{
	{OS: "linux", Architecture: "amd64"},
	{OS: "linux", Architecture: "arm64"},
	{OS: "linux", Architecture: "arm", Variant: "v7"},
}

// seed pushes a multi-layer image and a multi-platform index upstream.
// (random.Index gives its images no platform, so the index is built from
// random images with mutate.)
func seed(t *testing.T, up *upstreamServer) seeded {
	t.Helper()
	img, err := random.Image(2048, 3)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(ref(t, up.Host(), "library/multi:latest"), img, remote.WithContext(t.Context())); err != nil {
		t.Fatal(err)
	}
	var adds []mutate.IndexAddendum
	for _, p := range platforms {
		child, err := random.Image(1024, 2)
		if err != nil {
			t.Fatal(err)
		}
		cf, err := child.ConfigFile()
		if err != nil {
			t.Fatal(err)
		}
		cf = cf.DeepCopy()
		cf.OS, cf.Architecture, cf.Variant = p.OS, p.Architecture, p.Variant
		if child, err = mutate.ConfigFile(child, cf); err != nil {
			t.Fatal(err)
		}
		adds = append(adds, mutate.IndexAddendum{Add: child, Descriptor: v1.Descriptor{Platform: &p}})
	}
	idx := mutate.AppendManifests(empty.Index, adds...)
	if err := remote.WriteIndex(ref(t, up.Host(), "library/idx:latest"), idx, remote.WithContext(t.Context())); err != nil {
		t.Fatal(err)
	}
	return seeded{img: img, idx: idx}
}

// childFor returns the digest of idx's image for platform p.
func childFor(t *testing.T, idx v1.ImageIndex, p v1.Platform) v1.Hash {
	t.Helper()
	im, err := idx.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range im.Manifests {
		if d.Platform != nil && d.Platform.Equals(p) {
			return d.Digest
		}
	}
	t.Fatalf("index has no image for %s", p)
	return v1.Hash{}
}

// blobsOf returns the config and layer digests of img.
func blobsOf(t *testing.T, img v1.Image) []v1.Hash {
	t.Helper()
	m, err := img.Manifest()
	if err != nil {
		t.Fatal(err)
	}
	out := []v1.Hash{m.Config.Digest}
	for _, l := range m.Layers {
		out = append(out, l.Digest)
	}
	return out
}

// childrenOf returns the images of idx by manifest digest.
func childrenOf(t *testing.T, idx v1.ImageIndex) map[v1.Hash]v1.Image {
	t.Helper()
	im, err := idx.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	out := map[v1.Hash]v1.Image{}
	for _, d := range im.Manifests {
		img, err := idx.Image(d.Digest)
		if err != nil {
			t.Fatal(err)
		}
		out[d.Digest] = img
	}
	return out
}

// pullImage pulls repoRef through the mirror with ggcr's remote, validates
// every byte of it, and checks its digest.
func pullImage(t *testing.T, m *mirrorProc, repoRef string, want v1.Hash, opts ...remote.Option) {
	t.Helper()
	img, err := remote.Image(ref(t, m.Host(), repoRef), append(opts, remote.WithContext(t.Context()))...)
	if err != nil {
		t.Fatalf("pull %s: %v; logs:\n%s", repoRef, err, m.Logs())
	}
	if err := validate.Image(img); err != nil {
		t.Fatalf("pull %s: validate: %v", repoRef, err)
	}
	if got := regtest.Digest(t, img); got != want {
		t.Errorf("pull %s: digest = %s, want %s", repoRef, got, want)
	}
}

// pullIndex is pullImage for an index, children included.
func pullIndex(t *testing.T, m *mirrorProc, repoRef string, want v1.Hash) {
	t.Helper()
	idx, err := remote.Index(ref(t, m.Host(), repoRef), remote.WithContext(t.Context()))
	if err != nil {
		t.Fatalf("pull %s: %v; logs:\n%s", repoRef, err, m.Logs())
	}
	if err := validate.Index(idx); err != nil {
		t.Fatalf("pull %s: validate: %v", repoRef, err)
	}
	if got := regtest.Digest(t, idx); got != want {
		t.Errorf("pull %s: digest = %s, want %s", repoRef, got, want)
	}
}

func TestPullThroughMirror(t *testing.T) {
	t.Parallel()
	up := startUpstream(t, nil)
	s := seed(t, up)
	m := startMirror(t, up.URL, "")
	imgDigest, idxDigest := regtest.Digest(t, s.img), regtest.Digest(t, s.idx)
	arm64 := platforms[1]
	tests := []struct {
		name     string
		ref      string
		index    bool         // pull as an index
		platform *v1.Platform // pull the image for this platform out of an index
		want     v1.Hash
	}{
		{name: "image, short name", ref: "multi:latest", want: imgDigest},
		{name: "image, library name", ref: "library/multi:latest", want: imgDigest},
		{name: "image by digest", ref: "multi@" + imgDigest.String(), want: imgDigest},
		{name: "index, short name", ref: "idx:latest", index: true, want: idxDigest},
		{name: "index, library name", ref: "library/idx:latest", index: true, want: idxDigest},
		{name: "index by digest", ref: "idx@" + idxDigest.String(), index: true, want: idxDigest},
		{name: "linux/arm64 out of the index", ref: "idx:latest", platform: &arm64, want: childFor(t, s.idx, arm64)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			switch {
			case tt.index:
				pullIndex(t, m, tt.ref, tt.want)
			case tt.platform != nil:
				pullImage(t, m, tt.ref, tt.want, remote.WithPlatform(*tt.platform))
			default:
				pullImage(t, m, tt.ref, tt.want)
			}
		})
	}
}

func TestCachedContentSkipsUpstream(t *testing.T) {
	t.Parallel()
	up := startUpstream(t, nil)
	s := seed(t, up)
	imgDigest, idxDigest := regtest.Digest(t, s.img), regtest.Digest(t, s.idx)

	// Every upstream path that content by digest comes from.
	byDigest := map[string]bool{}
	for _, h := range blobsOf(t, s.img) {
		byDigest["/v2/library/multi/blobs/"+h.String()] = true
	}
	for d, img := range childrenOf(t, s.idx) {
		byDigest["/v2/library/idx/manifests/"+d.String()] = true
		for _, h := range blobsOf(t, img) {
			byDigest["/v2/library/idx/blobs/"+h.String()] = true
		}
	}
	pullAll := func(m *mirrorProc) {
		t.Helper()
		pullImage(t, m, "multi:latest", imgDigest)
		pullImage(t, m, "multi@"+imgDigest.String(), imgDigest)
		pullIndex(t, m, "idx:latest", idxDigest)
		pullIndex(t, m, "idx@"+idxDigest.String(), idxDigest)
	}
	// Each piece of content by digest must have come from upstream exactly
	// once, however often the client read it.
	checkOnce := func(when string) {
		t.Helper()
		for _, p := range slices.Sorted(maps.Keys(byDigest)) {
			if n := up.Count(http.MethodGet, p); n != 1 {
				t.Errorf("%s: upstream GET %s: %d times, want 1", when, p, n)
			}
		}
		// Nothing else by digest either (a manifest fetched by digest that
		// should have come from the cache, say).
		got := up.CountPrefix(http.MethodGet, "/v2/library/multi/blobs/") + up.CountPrefix(http.MethodGet, "/v2/library/idx/blobs/") +
			up.CountPrefix(http.MethodGet, "/v2/library/multi/manifests/sha256:") + up.CountPrefix(http.MethodGet, "/v2/library/idx/manifests/sha256:")
		if got != len(byDigest) {
			t.Errorf("%s: upstream GETs by digest = %d, want %d", when, got, len(byDigest))
		}
	}

	dir := t.TempDir()
	m := startMirror(t, up.URL, dir)
	pullAll(m)
	checkOnce("first pull")
	pullAll(m)
	checkOnce("second pull")

	m.Stop()
	if code := m.ExitCode(); code != 0 {
		t.Errorf("regmirror exit code after SIGTERM = %d, want 0; logs:\n%s", code, m.Logs())
	}
	m = startMirror(t, up.URL, dir)
	pullAll(m)
	checkOnce("pull after restart")
}

// readBlob GETs a blob from url and reads it, calling first once the first
// 64 KiB have arrived (or the request has failed before that).
func readBlob(ctx context.Context, url string, first func()) ([]byte, error) {
	first = sync.OnceFunc(first)
	defer first()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, fmt.Errorf("GET %s: %w", url, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		return nil, fmt.Errorf("GET %s: status = %d, want %d; body %s", url, resp.StatusCode, http.StatusOK, body)
	}
	buf := make([]byte, 64<<10)
	if _, err := io.ReadFull(resp.Body, buf); err != nil {
		return nil, fmt.Errorf("GET %s: the first 64 KiB did not arrive while upstream held back the rest of the blob (does the mirror stream?): %w", url, err)
	}
	first()
	rest, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, fmt.Errorf("GET %s: read body: %w", url, err)
	}
	return append(buf, rest...), nil
}

func TestConcurrentColdGetsShareOneStreamingDownload(t *testing.T) {
	t.Parallel()
	up, g := startGated(t, "big", 4<<20)
	m := startMirror(t, up.URL, "", gatedEnv...)
	url := m.URL + "/v2/big/blobs/" + g.digest.String()
	ctx, cancel := context.WithTimeout(t.Context(), guard)
	defer cancel()

	const clients = 8
	var first, all sync.WaitGroup
	first.Add(clients)
	bodies := make([][]byte, clients)
	errs := make([]error, clients)
	for i := range clients {
		all.Go(func() { bodies[i], errs[i] = readBlob(ctx, url, first.Done) })
	}
	firstDone := make(chan struct{})
	go func() { first.Wait(); close(firstDone) }()
	select {
	case <-firstDone:
	case <-ctx.Done():
	}
	// Upstream has sent half the blob and waits: every client must already
	// hold its first 64 KiB.
	if ctx.Err() != nil {
		all.Wait()
		failed := slices.DeleteFunc(slices.Clone(errs), func(err error) bool { return err == nil })
		t.Fatalf("after %v, %d of %d clients lacked their first 64 KiB while upstream held back the second half of the blob: the mirror does not stream; first error: %v",
			guard, len(failed), clients, errors.Join(failed[:min(1, len(failed))]...))
	}
	g.Open()
	all.Wait()
	for i := range clients {
		if errs[i] != nil {
			t.Errorf("client %d: %v", i, errs[i])
			continue
		}
		if got := regtest.DigestOf(bodies[i]); got != g.digest || len(bodies[i]) != len(g.data) {
			t.Errorf("client %d: got %d bytes hashing to %s, want %d bytes of %s", i, len(bodies[i]), got, len(g.data), g.digest)
		}
	}
	if n := up.Count(http.MethodGet, g.path); n != 1 {
		t.Errorf("upstream GET %s: %d times for %d concurrent clients, want 1", g.path, n, clients)
	}
}

func TestClientDisconnectDoesNotCancelSharedDownload(t *testing.T) {
	t.Parallel()
	up, g := startGated(t, "shared", 4<<20)
	m := startMirror(t, up.URL, "", gatedEnv...)
	path := "/v2/shared/blobs/" + g.digest.String()
	var wg sync.WaitGroup
	defer wg.Wait() // after cancel, on every way out
	ctx, cancel := context.WithTimeout(t.Context(), guard)
	defer cancel()

	// Client A starts the download, reads some bytes and leaves.
	ctxA, cancelA := context.WithCancel(ctx)
	readA := make(chan struct{})
	var errA error
	wg.Go(func() {
		_, errA = readBlob(ctxA, m.URL+path, func() {
			close(readA)
			<-ctxA.Done()
		})
	})
	select {
	case <-readA:
	case <-ctx.Done():
		t.Fatalf("client A did not get its first 64 KiB within %v; logs:\n%s", guard, m.Logs())
	}

	// Client B joins the same download.
	readB := make(chan struct{})
	var bodyB []byte
	var errB error
	wg.Go(func() { bodyB, errB = readBlob(ctx, m.URL+path, func() { close(readB) }) })
	select {
	case <-readB:
	case <-ctx.Done():
		t.Fatalf("client B did not get its first 64 KiB within %v; logs:\n%s", guard, m.Logs())
	}

	// A disconnects; wait until the mirror has finished A's request, so that
	// whatever A's departure does to the download has been done.
	cancelA()
	err := m.waitLog(ctx, func(rec map[string]any) bool { return rec["msg"] == "request" && rec["path"] == path })
	if err != nil {
		t.Fatalf("the mirror did not log the end of client A's request: %v; logs:\n%s", err, m.Logs())
	}
	g.Open()
	wg.Wait()
	if errA == nil {
		t.Errorf("client A: read the whole blob after canceling")
	}
	if errB != nil {
		t.Fatalf("client B: %v; logs:\n%s", errB, m.Logs())
	}
	if got := regtest.DigestOf(bodyB); got != g.digest {
		t.Errorf("client B: got %d bytes hashing to %s, want %d bytes of %s", len(bodyB), got, len(g.data), g.digest)
	}
	if n := up.Count(http.MethodGet, g.path); n != 1 {
		t.Errorf("upstream GET %s: %d times, want 1", g.path, n)
	}

	// The download completed into the cache.
	resp, body := m.do(http.MethodGet, path, nil)
	if resp.StatusCode != http.StatusOK || regtest.DigestOf(body) != g.digest {
		t.Fatalf("GET %s after the download: status = %d, want %d; %d bytes hashing to %s, want %s", path, resp.StatusCode, http.StatusOK, len(body), regtest.DigestOf(body), g.digest)
	}
	if n := up.Count(http.MethodGet, g.path); n != 1 {
		t.Errorf("upstream GET %s after a cached read: %d times, want 1", g.path, n)
	}
}

func TestBadUpstreamContentNeverCached(t *testing.T) {
	t.Parallel()
	const size = 1 << 20
	tests := []struct {
		name string
		// fault serves the first upstream GET of the blob; it may hold bytes
		// back until release is closed.
		fault func(release <-chan struct{}) func(next http.Handler, w http.ResponseWriter, r *http.Request)
		// clientFirst is how many bytes the client reads before release is closed.
		clientFirst int
	}{
		{
			name: "first byte tampered",
			fault: func(<-chan struct{}) func(next http.Handler, w http.ResponseWriter, r *http.Request) {
				return func(next http.Handler, w http.ResponseWriter, r *http.Request) {
					next.ServeHTTP(&tamperWriter{ResponseWriter: w, at: 0}, r)
				}
			},
		},
		{
			// Upstream sends all but the (wrong) last byte and waits until the
			// client holds them. The mirror must hold the last byte back until
			// it has verified the digest, or the client gets a complete 200 of
			// wrong bytes.
			name: "last byte tampered",
			fault: func(release <-chan struct{}) func(next http.Handler, w http.ResponseWriter, r *http.Request) {
				return func(next http.Handler, w http.ResponseWriter, r *http.Request) {
					pause := &pauseWriter{ResponseWriter: w, ctx: r.Context(), at: size - 1, release: release}
					next.ServeHTTP(&tamperWriter{ResponseWriter: pause, at: size - 1}, r)
				}
			},
			clientFirst: size - 1,
		},
		{
			// Without a Content-Length the mirror cannot know which byte is the
			// last: the client may get every byte, but never the end of the
			// response, until the content is verified.
			name: "last byte tampered, no Content-Length",
			fault: func(release <-chan struct{}) func(next http.Handler, w http.ResponseWriter, r *http.Request) {
				return func(next http.Handler, w http.ResponseWriter, r *http.Request) {
					pause := &pauseWriter{ResponseWriter: &noLengthWriter{w}, ctx: r.Context(), at: size / 2, release: release}
					next.ServeHTTP(&tamperWriter{ResponseWriter: pause, at: size - 1}, r)
				}
			},
			clientFirst: size / 2,
		},
		// A connection cut short of Content-Length is not bad content: the
		// download resumes (TestCutDownloadResumesThroughTheBinary).
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			data, _ := regtest.RandomBlob(t, size)
			h := regtest.DigestOf(data)
			upPath := "/v2/library/bad/blobs/" + h.String()
			release := make(chan struct{})
			open := sync.OnceFunc(func() { close(release) })
			up := startUpstream(t, faultOnce(upPath, tt.fault(release)))
			t.Cleanup(open) // before the upstream closes, which waits for its handlers
			pushBlob(t, up, "library/bad", data)
			m := startMirror(t, up.URL, "", gatedEnv...)
			path := "/v2/bad/blobs/" + h.String()

			ctx, cancel := context.WithTimeout(t.Context(), guard)
			defer cancel()
			req, err := http.NewRequestWithContext(ctx, http.MethodGet, m.URL+path, nil)
			if err != nil {
				t.Fatal(err)
			}
			if tt.clientFirst == 0 {
				open()
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil && tt.clientFirst > 0 {
				t.Fatalf("GET %s: no response while upstream held back the rest of the blob (does the mirror stream?): %v", path, err)
			}
			if err == nil {
				body := make([]byte, tt.clientFirst)
				if _, err := io.ReadFull(resp.Body, body); err != nil {
					t.Fatalf("GET %s: status %d: the first %d bytes did not arrive while upstream held back the last one (does the mirror hold back more than the last byte?): %v",
						path, resp.StatusCode, tt.clientFirst, err)
				}
				open()
				rest, rerr := io.ReadAll(resp.Body)
				resp.Body.Close()
				body = append(body, rest...)
				complete := resp.ContentLength < 0 || int64(len(body)) == resp.ContentLength
				if resp.StatusCode == http.StatusOK && rerr == nil && complete {
					t.Fatalf("GET %s: a complete 200 of %d bytes hashing to %s (Content-Length %d), want a failed response for bad upstream content",
						path, len(body), regtest.DigestOf(body), resp.ContentLength)
				}
			}
			if n := up.Count(http.MethodGet, upPath); n != 1 {
				t.Fatalf("upstream GET %s: %d times, want 1", upPath, n)
			}
			if files := blobFiles(t, m.DataDir, h); len(files) != 0 {
				t.Errorf("bad content of %s is in the cache: %v", h, files)
			}

			// The next request goes upstream again, and now gets the real blob.
			resp, body := m.do(http.MethodGet, path, nil)
			if resp.StatusCode != http.StatusOK {
				t.Fatalf("GET %s: status = %d, want %d; body %s", path, resp.StatusCode, http.StatusOK, body)
			}
			if got := regtest.DigestOf(body); got != h {
				t.Errorf("GET %s: %d bytes hashing to %s, want %s", path, len(body), got, h)
			}
			if n := up.Count(http.MethodGet, upPath); n != 2 {
				t.Errorf("upstream GET %s: %d times, want 2", upPath, n)
			}
			// The failed download left the flight before the retry could start
			// one, and the retry's content was committed before its last byte
			// went out: no temp file may be left.
			if files := tmpFiles(t, m.DataDir); len(files) != 0 {
				t.Errorf("temp files left: %v", files)
			}
		})
	}
}

func TestWriteMethodsUnsupported(t *testing.T) {
	t.Parallel()
	up := startUpstream(t, nil)
	m := startMirror(t, up.URL, "")
	digest := "sha256:" + strings.Repeat("ab", 32)
	paths := []string{
		"/v2/x/manifests/latest",
		"/v2/x/manifests/" + digest,
		"/v2/library/x/manifests/latest",
		"/v2/x/blobs/" + digest,
		"/v2/x/blobs/uploads/",
		"/v2/x/blobs/uploads/0b5d0c3e-upload",
		"/v2/x/blobs/uploads/?mount=" + digest + "&from=y",
		"/v2/x/tags/list",
		"/v2/",
	}
	before := up.Total()
	for _, method := range []string{http.MethodPut, http.MethodPost, http.MethodPatch, http.MethodDelete} {
		for _, p := range paths {
			t.Run(method+" "+p, func(t *testing.T) {
				resp, body := m.send(t, method, p, strings.NewReader("{}"))
				if resp.StatusCode != http.StatusMethodNotAllowed {
					t.Fatalf("%s %s: status = %d, want %d; body %s", method, p, resp.StatusCode, http.StatusMethodNotAllowed, body)
				}
				if code := regtest.OCICode(t, resp, body); code != "UNSUPPORTED" {
					t.Errorf("%s %s: code = %s, want UNSUPPORTED", method, p, code)
				}
				if allow := resp.Header.Get("Allow"); !strings.Contains(allow, http.MethodGet) {
					t.Errorf("%s %s: Allow = %q, want GET listed", method, p, allow)
				}
			})
		}
	}
	if n := up.Total() - before; n != 0 {
		t.Errorf("upstream received %d requests for write methods, want 0", n)
	}
}

func TestPathTricksRefused(t *testing.T) {
	t.Parallel()
	up := startUpstream(t, nil)
	s := seed(t, up)
	m := startMirror(t, up.URL, "")
	// Something in the cache, so that a trick has something to reach.
	pullImage(t, m, "multi:latest", regtest.Digest(t, s.img))
	layer := blobsOf(t, s.img)[1].String()
	hex64 := strings.Repeat("ab", 32)

	tests := []struct {
		name       string
		uri        string // sent as is in the request line
		wantStatus int
		wantCodes  []string // any of these
	}{
		{"dot-dot to /etc", "/v2/../../etc/passwd/manifests/latest", 400, []string{"NAME_INVALID"}},
		{"dot-dot inside the name", "/v2/multi/../../../etc/blobs/" + layer, 400, []string{"NAME_INVALID"}},
		{"dot-dot before a blob route", "/v2/multi/manifests/../blobs/" + layer, 400, []string{"NAME_INVALID"}},
		{"single dot", "/v2/./multi/manifests/latest", 400, []string{"NAME_INVALID"}},
		{"empty component", "/v2/library//multi/manifests/latest", 400, []string{"NAME_INVALID"}},
		{"encoded slash in the name", "/v2/a%2Fb/manifests/latest", 400, []string{"NAME_INVALID"}},
		{"encoded dot-dot in the name", "/v2/..%2F..%2Fetc/manifests/latest", 400, []string{"NAME_INVALID"}},
		{"encoded dot-dot in the digest", "/v2/app/blobs/sha256:..%2F..%2Fx", 400, []string{"NAME_INVALID"}},
		{"NUL in the name", "/v2/a%00b/manifests/latest", 400, []string{"NAME_INVALID"}},
		{"upper-case name", "/v2/Library/Multi/manifests/latest", 400, []string{"NAME_INVALID"}},
		{"300-character name", "/v2/" + strings.Repeat("a", 300) + "/manifests/latest", 400, []string{"NAME_INVALID"}},
		{"300-character multi-part name", "/v2/" + strings.Repeat("abcdefghi/", 30) + "x/manifests/latest", 400, []string{"NAME_INVALID"}},
		{"path over 512 bytes", "/v2/" + strings.Repeat("a/", 300) + "manifests/latest", 400, []string{"NAME_INVALID"}},
		{"short sha256 digest", "/v2/app/blobs/sha256:xyz", 400, []string{"DIGEST_INVALID"}},
		{"md5 digest", "/v2/app/blobs/md5:d41d8cd98f00b204e9800998ecf8427e", 400, []string{"DIGEST_INVALID"}},
		{"upper-case hex digest", "/v2/app/blobs/sha256:" + strings.ToUpper(hex64), 400, []string{"DIGEST_INVALID"}},
		{"digest without algorithm", "/v2/app/blobs/" + hex64, 400, []string{"DIGEST_INVALID"}},
		{"bad manifest digest", "/v2/app/manifests/sha256:xyz", 400, []string{"DIGEST_INVALID"}},
		{"tag with +", "/v2/app/manifests/bad+tag", 400, []string{"TAG_INVALID"}},
		// Go's URL parser keeps a raw path for '!', which the mirror refuses as encoded.
		{"tag with !", "/v2/app/manifests/bad!tag", 400, []string{"TAG_INVALID", "NAME_INVALID"}},
		{"tag with space", "/v2/app/manifests/a%20b", 400, []string{"TAG_INVALID"}},
		{"tag starting with -", "/v2/app/manifests/-tag", 400, []string{"TAG_INVALID"}},
		{"tag of dot-dot", "/v2/app/manifests/..", 400, []string{"TAG_INVALID", "NAME_INVALID"}},
		{"129-character tag", "/v2/app/manifests/" + strings.Repeat("t", 129), 400, []string{"TAG_INVALID"}},
		// Never an open proxy: a registry that is not configured is refused.
		{"unconfigured registry prefix", "/v2/evil.example.com/x/manifests/latest", 404, []string{"NAME_UNKNOWN"}},
		{"unconfigured registry by ns", "/v2/x/manifests/latest?ns=evil.example.com", 404, []string{"NAME_UNKNOWN"}},
		{"upstream host as ns", "/v2/x/manifests/latest?ns=" + up.Host(), 404, []string{"NAME_UNKNOWN"}},
	}
	skipIndex := func(files map[string]string) map[string]string {
		maps.DeleteFunc(files, func(p, _ string) bool {
			return strings.HasPrefix(p, filepath.Join(m.DataDir, "index")+string(filepath.Separator))
		})
		return files
	}
	filesBefore := skipIndex(listFiles(t, m.DataDir))
	upBefore := up.Total()
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for _, method := range []string{http.MethodGet, http.MethodHead} {
				resp, body := m.rawDo(t, method, tt.uri)
				if resp.StatusCode != tt.wantStatus {
					t.Fatalf("%s %s: status = %d, want %d; body %s", method, tt.uri, resp.StatusCode, tt.wantStatus, body)
				}
				if method == http.MethodHead {
					if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
						t.Errorf("HEAD %s: Content-Type = %q, want application/json", tt.uri, ct)
					}
					continue
				}
				if code := regtest.OCICode(t, resp, body); !slices.Contains(tt.wantCodes, code) {
					t.Errorf("%s %s: code = %s, want one of %v; body %s", method, tt.uri, code, tt.wantCodes, body)
				}
			}
		})
	}
	if n := up.Total() - upBefore; n != 0 {
		t.Errorf("upstream received %d requests for refused paths, want 0", n)
	}
	filesAfter := skipIndex(listFiles(t, m.DataDir))
	if !maps.Equal(filesBefore, filesAfter) {
		t.Errorf("files in the data dir changed:\nbefore %v\nafter  %v", filesBefore, filesAfter)
	}
}

func TestHeadUncachedBlobAsksUpstreamWithHead(t *testing.T) {
	t.Parallel()
	up := startUpstream(t, nil)
	data, _ := regtest.RandomBlob(t, 100_000)
	h := pushBlob(t, up, "library/headme", data)
	upPath := "/v2/library/headme/blobs/" + h.String()
	headsBefore := up.Count(http.MethodHead, upPath) // the push asked whether it exists
	m := startMirror(t, up.URL, "")

	path := "/v2/headme/blobs/" + h.String()
	resp, body := m.do(http.MethodHead, path, nil)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("HEAD %s: status = %d, want %d; body %s", path, resp.StatusCode, http.StatusOK, body)
	}
	if resp.ContentLength != int64(len(data)) {
		t.Errorf("HEAD %s: Content-Length = %d, want %d", path, resp.ContentLength, len(data))
	}
	if got := resp.Header.Get("Docker-Content-Digest"); got != h.String() {
		t.Errorf("HEAD %s: Docker-Content-Digest = %q, want %q", path, got, h)
	}
	if n := up.Count(http.MethodHead, upPath) - headsBefore; n != 1 {
		t.Errorf("upstream HEAD %s: %d times, want 1", upPath, n)
	}
	if n := up.Count(http.MethodGet, upPath); n != 0 {
		t.Errorf("upstream GET %s: %d times, want 0 (a HEAD must not download)", upPath, n)
	}
	if files := blobFiles(t, m.DataDir, h); len(files) != 0 {
		t.Errorf("a HEAD put %s in the cache: %v", h, files)
	}
}

// startHeldDownload starts a mirror on a gated upstream and a client whose
// GET of the gated blob has received its first 64 KiB, so that a download is
// in progress, with its temp file, when it returns. The returned channel
// yields the client's result once its response ends.
func startHeldDownload(t *testing.T, repo string, extraEnv ...string) (*upstreamServer, *gatedBlob, *mirrorProc, <-chan error) {
	t.Helper()
	up, g := startGated(t, repo, 4<<20)
	m := startMirror(t, up.URL, t.TempDir(), append(slices.Clone(gatedEnv), extraEnv...)...)
	ctx, cancel := context.WithTimeout(t.Context(), guard)
	t.Cleanup(cancel)
	first := make(chan struct{})
	result := make(chan error, 1)
	go func() {
		body, err := readBlob(ctx, m.URL+"/v2/"+repo+"/blobs/"+g.digest.String(), func() { close(first) })
		if err == nil && regtest.DigestOf(body) != g.digest {
			err = fmt.Errorf("%d bytes hashing to %s", len(body), regtest.DigestOf(body))
		}
		result <- err
	}()
	select {
	case <-first:
	case <-ctx.Done():
		t.Fatalf("the client did not get its first 64 KiB within %v; logs:\n%s", guard, m.Logs())
	}
	if files := tmpFiles(t, m.DataDir); len(files) != 1 {
		t.Fatalf("temp files during the download: %v, want one", files)
	}
	return up, g, m, result
}

func TestShutdownDuringDownloadLeavesNoTrace(t *testing.T) {
	t.Parallel()
	_, g, m, result := startHeldDownload(t, "shutdown", "REGMIRROR_SHUTDOWN_TIMEOUT=1s") // gatedEnv says so too
	m.Stop()
	if code := m.ExitCode(); code != 0 {
		t.Errorf("regmirror exit code after SIGTERM = %d, want 0; logs:\n%s", code, m.Logs())
	}
	if err := <-result; err == nil {
		t.Errorf("the client read the whole blob, though upstream never sent its second half")
	}
	if files := tmpFiles(t, m.DataDir); len(files) != 0 {
		t.Errorf("temp files left after shutdown: %v", files)
	}
	if files := blobFiles(t, m.DataDir, g.digest); len(files) != 0 {
		t.Errorf("half-downloaded %s is in the cache after shutdown: %v", g.digest, files)
	}
}

func TestKillDuringDownloadThenRestart(t *testing.T) {
	t.Parallel()
	up, g, m, result := startHeldDownload(t, "killed")
	m.Kill()
	if err := <-result; err == nil {
		t.Errorf("the client read the whole blob from a killed mirror")
	}
	if files := blobFiles(t, m.DataDir, g.digest); len(files) != 0 {
		t.Fatalf("half-downloaded %s is in the cache after kill -9: %v", g.digest, files)
	}

	m = startMirror(t, up.URL, m.DataDir)
	if files := tmpFiles(t, m.DataDir); len(files) != 0 {
		t.Errorf("temp files left after a restart: %v", files)
	}
	path := "/v2/killed/blobs/" + g.digest.String()
	// Not visible: a HEAD has to ask upstream.
	heads := up.Count(http.MethodHead, g.path)
	resp, body := m.do(http.MethodHead, path, nil)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("HEAD %s: status = %d, want %d; body %s", path, resp.StatusCode, http.StatusOK, body)
	}
	if n := up.Count(http.MethodHead, g.path) - heads; n != 1 {
		t.Errorf("upstream HEAD %s after restart: %d times, want 1 (the blob must not be cached)", g.path, n)
	}
	resp, body = m.do(http.MethodGet, path, nil)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: status = %d, want %d; body %s", path, resp.StatusCode, http.StatusOK, body)
	}
	if got := regtest.DigestOf(body); got != g.digest {
		t.Errorf("GET %s: %d bytes hashing to %s, want %s", path, len(body), got, g.digest)
	}
	if n := up.Count(http.MethodGet, g.path); n != 2 {
		t.Errorf("upstream GET %s: %d times, want 2 (one killed, one after restart)", g.path, n)
	}
	if files := blobFiles(t, m.DataDir, g.digest); len(files) != 1 {
		t.Errorf("cached copies of %s after the pull: %v, want one", g.digest, files)
	}
}

func TestCutDownloadResumesThroughTheBinary(t *testing.T) {
	data, _ := regtest.RandomBlob(t, 1<<20)
	h := regtest.DigestOf(data)
	upPath := "/v2/library/cut/blobs/" + h.String()
	up := startUpstream(t, faultOnce(upPath, func(next http.Handler, w http.ResponseWriter, r *http.Request) {
		next.ServeHTTP(&truncateWriter{ResponseWriter: w, limit: int64(len(data) / 2)}, r)
		http.NewResponseController(w).Flush()
		panic(http.ErrAbortHandler) // the connection breaks short of Content-Length
	}))
	pushBlob(t, up, "library/cut", data)
	m := startMirror(t, up.URL, "")
	resp, err := http.Get(m.URL + "/v2/library/cut/blobs/" + h.String())
	if err != nil {
		t.Fatal(err)
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil || resp.StatusCode != http.StatusOK || regtest.DigestOf(body) != h {
		t.Fatalf("status %d, %d bytes, %v: want the whole blob; logs:\n%s", resp.StatusCode, len(body), err, m.Logs())
	}
	if n := up.Count(http.MethodGet, upPath); n != 2 {
		t.Errorf("upstream GETs = %d, want 2 (the cut one and the resume)", n)
	}
	if files := blobFiles(t, m.DataDir, h); len(files) != 1 {
		t.Errorf("the resumed blob is not cached: %v", files)
	}
}
