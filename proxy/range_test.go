package proxy_test

import (
	"bytes"
	"net/http"
	"testing"

	"github.com/regmirror/regmirror/test/regtest"
)

// TestZeroLengthRangesAreUnsatisfiable: http.ServeContent answers a suffix
// range of zero bytes (and any suffix range of empty content) with a 206 of
// no bytes and a Content-Range whose last byte precedes its first; RFC 9110
// calls both unsatisfiable. FuzzBlobRange found it.
func TestZeroLengthRangesAreUnsatisfiable(t *testing.T) {
	e := newEnv(t)
	body, h := regtest.RandomBlob(t, 1000)
	empty, eh := regtest.RandomBlob(t, 0)
	for _, b := range []struct {
		data []byte
		repo string
	}{{body, "library/app"}, {empty, "library/empty"}} {
		e.pushBlob(b.repo, b.data)
	}
	path, emptyPath := "/v2/app/blobs/"+h.String(), "/v2/empty/blobs/"+eh.String()
	for _, p := range []string{path, emptyPath} {
		if resp, _ := e.do(http.MethodGet, p, nil); resp.StatusCode != http.StatusOK {
			t.Fatalf("priming GET %s: %d", p, resp.StatusCode)
		}
	}
	tests := []struct {
		name, path, rng string
		status          int
		contentRange    string
		want            []byte
	}{
		{"zero suffix", path, "bytes=-0", 416, "bytes */1000", nil},
		{"zero suffix, spelled oddly", path, "bytes= - 00 ", 416, "bytes */1000", nil},
		{"zero suffix beside a good range", path, "bytes=0-9,-0", 206, "bytes 0-9/1000", body[:10]},
		{"suffix of empty content", emptyPath, "bytes=-5", 416, "bytes */0", nil},
		{"the last byte", path, "bytes=-1", 206, "bytes 999-999/1000", body[999:]},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp, got := e.do(http.MethodGet, tt.path, http.Header{"Range": {tt.rng}})
			if resp.StatusCode != tt.status {
				t.Fatalf("GET %s Range %q: status = %d, want %d; body %q", tt.path, tt.rng, resp.StatusCode, tt.status, got)
			}
			if cr := resp.Header.Get("Content-Range"); cr != tt.contentRange {
				t.Errorf("Content-Range = %q, want %q", cr, tt.contentRange)
			}
			if tt.status == 416 {
				if code := regtest.OCICode(t, resp, got); code != "RANGE_INVALID" {
					t.Errorf("code = %s, want RANGE_INVALID", code)
				}
			} else if !bytes.Equal(got, tt.want) {
				t.Errorf("body = %x, want %x", got, tt.want)
			}
		})
	}
}
