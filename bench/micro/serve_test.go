package micro_test

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// BenchmarkReject measures requests refused before any I/O, and GET /v2/:
// path parsing, the OCI error body, and the access-log line.
func BenchmarkReject(b *testing.B) {
	m := newMirror(b)
	badDigest := "/v2/bench/blobs/sha256:" + strings.Repeat("z", 64)
	cases := []struct {
		name, method, path string
		status             int
	}{
		{"PUT=405", http.MethodPut, m.tagPath, http.StatusMethodNotAllowed},
		{"bad-digest=400", http.MethodGet, badDigest, http.StatusBadRequest},
		{"base=200", http.MethodGet, "/v2/", http.StatusOK},
	}
	for _, lg := range loggers(b) {
		px := m.proxy(b, lg.log)
		for _, c := range cases {
			b.Run(lg.name+"/"+c.name, func(b *testing.B) {
				before := m.counts.Snapshot()
				serveLoop(b, px, c.method, c.path, c.status)
				m.noUpstream(b, before)
			})
		}
	}
}

// BenchmarkManifestHit measures manifests answered from the store's memory:
// HEAD by tag inside the tag TTL (the tag answer and the manifest both come
// from the in-memory LRUs; upstream is not asked) and GET by digest.
func BenchmarkManifestHit(b *testing.B) {
	m := newMirror(b)
	cases := []struct{ name, method, path string }{
		{"HEAD-tag", http.MethodHead, m.tagPath},
		{"GET-digest", http.MethodGet, m.manifestPath},
	}
	for _, lg := range loggers(b) {
		px := m.proxy(b, lg.log)
		for _, c := range cases {
			b.Run(lg.name+"/"+c.name, func(b *testing.B) {
				before := m.counts.Snapshot()
				serveLoop(b, px, c.method, c.path, http.StatusOK)
				m.noUpstream(b, before)
			})
		}
	}
}

// BenchmarkBlobHit measures GET of a cached 1 MiB blob through ServeHTTP:
// store lookup, http.ServeContent, and copying the file into a recorder.
// A recorder is not a socket, so this path copies through a user-space
// buffer where a real connection would use sendfile.
func BenchmarkBlobHit(b *testing.B) {
	m := newMirror(b)
	for _, lg := range loggers(b) {
		px := m.proxy(b, lg.log)
		b.Run(lg.name+"/GET-1MiB", func(b *testing.B) {
			before := m.counts.Snapshot()
			req := httptest.NewRequest(http.MethodGet, m.blobPath, nil)
			body := discard(blobSize)
			b.SetBytes(blobSize)
			b.ReportAllocs()
			for b.Loop() {
				rec := httptest.NewRecorder()
				body.Reset()
				rec.Body = body
				px.ServeHTTP(rec, req)
				if rec.Code != http.StatusOK || body.Len() != blobSize {
					b.Fatalf("GET %s: status = %d, want 200; body %d bytes, want %d", m.blobPath, rec.Code, body.Len(), blobSize)
				}
			}
			m.noUpstream(b, before)
		})
	}
}

// BenchmarkRecorder is the floor under every ServeHTTP benchmark: a fresh
// recorder, two headers, a status and a small body, without the proxy.
func BenchmarkRecorder(b *testing.B) {
	body := []byte(`{"errors":[{"code":"UNSUPPORTED","message":"x"}]}`)
	b.ReportAllocs()
	for b.Loop() {
		rec := httptest.NewRecorder()
		rec.Header().Set("Content-Type", "application/json")
		rec.Header().Set("Content-Length", "48")
		rec.WriteHeader(http.StatusMethodNotAllowed)
		rec.Write(body)
	}
}
