// Package micro_test holds regmirror's microbenchmarks of its hot paths: route
// parsing and rejection, cache lookups, tag answers from memory and blob hits.
// They drive exported APIs only: the real store on a temp dir, an in-process
// go-containerregistry registry as the upstream, and the proxy's ServeHTTP
// into an httptest.ResponseRecorder (no socket, so no sendfile).
//
//	go test ./bench/micro -run '^$' -bench . -benchmem -count 6
package micro_test

import (
	"bytes"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/regmirror/regmirror/cache"
	"github.com/regmirror/regmirror/proxy"
	"github.com/regmirror/regmirror/test/regtest"
	"github.com/regmirror/regmirror/upstream"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

const (
	// upRepo is the repository on the upstream; the mirror names it "bench",
	// as Docker Hub's official images drop library/.
	upRepo   = "library/bench"
	blobSize = 1 << 20
)

// mirror is one primed mirror: an upstream holding one image whose only layer
// is a 1 MiB blob, the real store, and every path the benchmarks ask for.
type mirror struct {
	counts *regtest.Counter
	store  *cache.Store
	client *upstream.Client

	tagPath      string // GET/HEAD /v2/bench/manifests/latest
	manifestPath string // /v2/bench/manifests/sha256:…
	blobPath     string // /v2/bench/blobs/sha256:… (1 MiB)
	manifest     v1.Hash
	blob         v1.Hash
	manifestSize int
}

// newMirror starts the upstream, seeds it, opens the store and primes it
// through a proxy of its own (tag answer, manifest and blob), so that every
// request the benchmarks send afterwards is a hit.
func newMirror(tb testing.TB) *mirror {
	tb.Helper()
	counts := regtest.Count(registry.New(registry.Logger(log.New(io.Discard, "", 0))))
	up := httptest.NewServer(counts)
	tb.Cleanup(up.Close)

	layer, blob := regtest.RandomBlob(tb, blobSize)
	img, err := mutate.AppendLayers(mutate.MediaType(empty.Image, types.OCIManifestSchema1), static.NewLayer(layer, types.OCILayer))
	if err != nil {
		tb.Fatal(err)
	}
	img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
	ref, err := name.ParseReference(strings.TrimPrefix(up.URL, "http://") + "/" + upRepo + ":latest")
	if err != nil {
		tb.Fatal(err)
	}
	if err := remote.Write(ref, img); err != nil {
		tb.Fatal(err)
	}
	raw, err := img.RawManifest()
	if err != nil {
		tb.Fatal(err)
	}

	st, err := cache.Open(tb.TempDir(), cache.Options{}, zap.NewNop())
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		if err := st.Close(); err != nil {
			tb.Error(err)
		}
	})
	client, err := upstream.New(upstream.Options{Name: "docker.io", URL: up.URL, Timeout: 5 * time.Second}, zap.NewNop())
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(client.Close)

	m := &mirror{
		counts: counts, store: st, client: client,
		tagPath:      "/v2/bench/manifests/latest",
		manifest:     regtest.Digest(tb, img),
		blob:         blob,
		manifestSize: len(raw),
	}
	m.manifestPath = "/v2/bench/manifests/" + m.manifest.String()
	m.blobPath = "/v2/bench/blobs/" + blob.String()

	// Prime: the tag answer and the manifest, then the blob (its last byte
	// goes out only after the store committed it, so it is a hit from now on).
	px := m.proxy(tb, zap.NewNop())
	m.expect(tb, px, http.MethodGet, m.tagPath, http.StatusOK, len(raw))
	m.expect(tb, px, http.MethodGet, m.blobPath, http.StatusOK, blobSize)
	if !st.Has(blob) {
		tb.Fatalf("blob %s not in the store after priming", blob)
	}
	return m
}

// proxy returns a proxy over the mirror's store and upstream, logging to lg.
// The tag TTL is an hour: every tag request inside a benchmark is answered
// from the store's memory.
func (m *mirror) proxy(tb testing.TB, lg *zap.Logger) *proxy.Proxy {
	tb.Helper()
	px, err := proxy.New(m.store, []proxy.Upstream{m.client}, proxy.Options{TagTTL: time.Hour, UpstreamTimeout: 5 * time.Second}, lg)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(px.Close) // registered after the store's Close, so it runs first
	return px
}

// expect sends one request to px and checks its status and body length
// (bodyLen < 0: any length).
func (m *mirror) expect(tb testing.TB, px http.Handler, method, path string, status, bodyLen int) *httptest.ResponseRecorder {
	tb.Helper()
	rec := httptest.NewRecorder()
	px.ServeHTTP(rec, httptest.NewRequest(method, path, nil))
	if rec.Code != status || (bodyLen >= 0 && rec.Body.Len() != bodyLen) {
		tb.Fatalf("%s %s: status = %d, want %d; body %d bytes, want %d: %.200s", method, path, rec.Code, status, rec.Body.Len(), bodyLen, rec.Body.Bytes())
	}
	return rec
}

// loggers are the access-log variants: zap's no-op logger, and production's
// JSON logger (as cmd/regmirror builds it: info level, no sampling, caller,
// ISO 8601 time) writing to io.Discard, since production logs every request.
func loggers(tb testing.TB) []struct {
	name string
	log  *zap.Logger
} {
	tb.Helper()
	zc := zap.NewProductionConfig()
	zc.Level = zap.NewAtomicLevelAt(zap.InfoLevel)
	zc.Sampling = nil
	zc.EncoderConfig.TimeKey = "time"
	zc.EncoderConfig.EncodeTime = zapcore.ISO8601TimeEncoder
	zc.DisableStacktrace = true
	jsonLog, err := zc.Build(zap.WrapCore(func(zapcore.Core) zapcore.Core {
		return zapcore.NewCore(zapcore.NewJSONEncoder(zc.EncoderConfig), zapcore.AddSync(io.Discard), zc.Level)
	}))
	if err != nil {
		tb.Fatal(err)
	}
	return []struct {
		name string
		log  *zap.Logger
	}{{"log=nop", zap.NewNop()}, {"log=json", jsonLog}}
}

// serveLoop is the timed loop of a ServeHTTP benchmark: a fresh recorder per
// request (its header map is part of the cost, as a server's is), the same
// request each time (the proxy copies it before adding to its context).
func serveLoop(b *testing.B, h http.Handler, method, path string, status int) {
	b.Helper()
	req := httptest.NewRequest(method, path, nil)
	b.ReportAllocs()
	for b.Loop() {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		if rec.Code != status {
			b.Fatalf("%s %s: status = %d, want %d; body %s", method, path, rec.Code, status, rec.Body.Bytes())
		}
	}
}

// noUpstream fails b when the upstream saw any request since before.
func (m *mirror) noUpstream(b *testing.B, before map[string]int) {
	b.Helper()
	after := m.counts.Snapshot()
	for k, n := range after {
		if n != before[k] {
			b.Fatalf("upstream saw %s %d times during the loop, want 0", k, n-before[k])
		}
	}
}

// discard makes a recorder body that keeps its capacity between requests,
// so a blob benchmark measures copying 1 MiB, not growing a buffer to it.
func discard(n int) *bytes.Buffer { return bytes.NewBuffer(make([]byte, 0, n)) }
