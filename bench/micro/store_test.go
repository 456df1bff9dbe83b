package micro_test

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/regmirror/regmirror/cache"
	"github.com/regmirror/regmirror/test/regtest"
	"go.uber.org/zap"
)

// openStore opens the real store on a temp dir.
func openStore(tb testing.TB, opt cache.Options) *cache.Store {
	tb.Helper()
	st, err := cache.Open(tb.TempDir(), opt, zap.NewNop())
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		if err := st.Close(); err != nil {
			tb.Error(err)
		}
	})
	return st
}

// put stores body under its digest, as a download's commit does.
func put(tb testing.TB, st *cache.Store, body []byte, h v1.Hash, mediaType string) {
	tb.Helper()
	w, err := st.Create(h, int64(len(body)), mediaType)
	if err != nil {
		tb.Fatal(err)
	}
	if _, err := w.Write(body); err != nil {
		tb.Fatal(err)
	}
	if err := w.Commit(); err != nil {
		tb.Fatal(err)
	}
}

// manifestBody is a real-sized OCI image manifest (one config, one layer).
const manifestBody = `{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json",` +
	`"config":{"mediaType":"application/vnd.oci.image.config.v1+json","size":233,` +
	`"digest":"sha256:0a5ee2bcf66ee1ee2ff10a0c1ebd7b5ba50b32e5e7b8d3ee7ea0d4b5e1c4c0a1"},` +
	`"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar","size":1048576,` +
	`"digest":"sha256:5f0c4f1e0ae1d7a8c1b2e3d4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c0d1e2f3a4"}]}`

// BenchmarkStoreOpen measures a blob cache hit's lookup: Store.Open (path,
// open(2), the badger record, the in-memory access time) and Close. The
// os-floor case opens and closes a plain file of the same size in a temp dir:
// the part of the cost that is the system's, not the store's.
func BenchmarkStoreOpen(b *testing.B) {
	body, h := regtest.RandomBlob(b, blobSize)
	b.Run("store", func(b *testing.B) {
		st := openStore(b, cache.Options{})
		put(b, st, body, h, "application/octet-stream")
		ctx := context.Background()
		b.ReportAllocs()
		for b.Loop() {
			f, info, err := st.Open(ctx, h)
			if err != nil {
				b.Fatal(err)
			}
			if info.Size != blobSize {
				b.Fatalf("Open: size = %d, want %d", info.Size, blobSize)
			}
			f.Close()
		}
	})
	b.Run("os-floor", func(b *testing.B) {
		path := filepath.Join(b.TempDir(), h.Hex)
		if err := os.WriteFile(path, body, 0o600); err != nil {
			b.Fatal(err)
		}
		b.ReportAllocs()
		for b.Loop() {
			f, err := os.Open(path)
			if err != nil {
				b.Fatal(err)
			}
			f.Close()
		}
	})
}

// BenchmarkStoreManifest measures Store.Manifest of a hot manifest (the
// in-memory LRU) and of a cold one (a store that keeps no manifest in memory,
// so every call opens, reads and closes the file and reads its record).
func BenchmarkStoreManifest(b *testing.B) {
	body := []byte(manifestBody)
	h, _, err := v1.SHA256(bytes.NewReader(body))
	if err != nil {
		b.Fatal(err)
	}
	const mt = "application/vnd.oci.image.manifest.v1+json"
	for _, c := range []struct {
		name string
		opt  cache.Options
	}{
		{"hot", cache.Options{}},
		{"cold", cache.Options{MemoryManifestMax: 1}}, // nothing fits in memory
	} {
		b.Run(c.name, func(b *testing.B) {
			st := openStore(b, c.opt)
			if err := st.PutManifest(h, body, mt); err != nil {
				b.Fatal(err)
			}
			ctx := context.Background()
			b.ReportAllocs()
			for b.Loop() {
				got, info, err := st.Manifest(ctx, h, 4<<20)
				if err != nil {
					b.Fatal(err)
				}
				if len(got) != len(body) || info.MediaType != mt {
					b.Fatalf("Manifest: %d bytes of %q, want %d of %q", len(got), info.MediaType, len(body), mt)
				}
			}
		})
	}
}
