package proxy_test

import (
	"bytes"
	"fmt"
	"net/http"
	"testing"

	"github.com/regmirror/regmirror/test/regtest"
)

// TestOversizedManifestIsRefusedAndNotCached: a manifest is held in memory
// to be verified, so what upstream sends is read under a 4 MiB cap, with or
// without a Content-Length; past it the client gets 502 and nothing is stored.
func TestOversizedManifestIsRefusedAndNotCached(t *testing.T) {
	body := bytes.Repeat([]byte(" "), 5<<20)
	digest := regtest.DigestOf(body).String()
	huge := func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			switch r.URL.Path {
			case "/v2/library/big/manifests/1", "/v2/library/big/manifests/" + digest:
				w.Header().Set("Content-Type", "application/vnd.oci.image.manifest.v1+json")
				w.Header().Set("Docker-Content-Digest", digest)
				w.Header().Set("Content-Length", fmt.Sprint(len(body)))
				w.Write(body)
			case "/v2/library/chunked/manifests/1":
				w.Header().Set("Content-Type", "application/vnd.oci.image.manifest.v1+json")
				w.Header().Set("Docker-Content-Digest", digest)
				w.WriteHeader(http.StatusOK)
				for i := 0; i < len(body); i += 1 << 20 {
					w.Write(body[i : i+1<<20])
					http.NewResponseController(w).Flush() // no Content-Length: chunked
				}
			default:
				next.ServeHTTP(w, r)
			}
		})
	}
	e := newEnv(t, withUpstreamFault(huge))
	for _, path := range []string{"/v2/big/manifests/1", "/v2/big/manifests/" + digest, "/v2/chunked/manifests/1"} {
		resp, got := e.do(http.MethodGet, path, nil)
		if resp.StatusCode != http.StatusBadGateway {
			t.Fatalf("GET %s: status = %d, want 502; body %.200s", path, resp.StatusCode, got)
		}
		regtest.OCICode(t, resp, got)
	}
	if files := listFiles(t, e.dataDir+"/blobs"); len(files) != 0 {
		t.Errorf("stored: %v", files)
	}
}
