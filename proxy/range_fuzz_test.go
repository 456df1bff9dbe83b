package proxy_test

import (
	"bytes"
	"fmt"
	"io"
	"log"
	"mime"
	"mime/multipart"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/registry"
	"github.com/regmirror/regmirror/cache"
	"github.com/regmirror/regmirror/proxy"
	"github.com/regmirror/regmirror/test/regtest"
	"github.com/regmirror/regmirror/upstream"
	"go.uber.org/zap"
)

// validHeaderValue is what net/http's server lets through to a handler: no
// control characters but tab.
func validHeaderValue(v string) bool {
	for i := 0; i < len(v); i++ {
		if c := v[i]; (c < ' ' && c != '\t') || c == 0x7f {
			return false
		}
	}
	return true
}

// FuzzBlobRange sends arbitrary Range and If-Range headers for a cached blob
// to the real proxy and store. Every answer is 200 with the whole blob, 206
// with exactly the bytes its Content-Range names, or 416 with an OCI error
// body; nothing reaches upstream.
func FuzzBlobRange(f *testing.F) {
	counts := regtest.Count(registry.New(registry.Logger(log.New(io.Discard, "", 0))))
	up := httptest.NewServer(counts)
	f.Cleanup(up.Close)
	st, err := cache.Open(f.TempDir(), cache.Options{}, zap.NewNop())
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { st.Close() })
	client, err := upstream.New(upstream.Options{Name: "docker.io", URL: up.URL, Timeout: 5 * time.Second}, zap.NewNop())
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(client.Close)
	px, err := proxy.New(st, []proxy.Upstream{client}, proxy.Options{}, zap.NewNop())
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(px.Close)
	blob, h := regtest.RandomBlob(f, 1000)
	w, err := st.Create(h, int64(len(blob)), "application/octet-stream")
	if err != nil {
		f.Fatal(err)
	}
	w.Write(blob)
	if err := w.Commit(); err != nil {
		f.Fatal(err)
	}
	path := "/v2/library/app/blobs/" + h.String()
	etag := `"` + h.String() + `"`

	for _, s := range []string{
		"", "bytes=0-0", "bytes=0-99", "bytes=-1", "bytes=-1000", "bytes=-5000", "bytes=999-", "bytes=1000-",
		"bytes=5-2", "bytes=0-9,20-29", "bytes=0-9,5-15", "bytes=0-,0-", "bytes=", "bytes=-", "bytes=-0", "bytes=a-b",
		"bytes=0-99999999999999999999", "bytes=-99999999999999999999", "items=0-1", "bytes = 0-1", "bytes=0-1,", "bytes=,0-1",
		"bytes=0-1, 3-4", "bytes=" + strings.Repeat("0-1,", 200), "bytes=1-2\t",
	} {
		f.Add(s, "", false)
	}
	f.Add("bytes=0-1", etag, false)
	f.Add("bytes=0-1", `"sha256:other"`, false)
	f.Add("bytes=0-1", "Mon, 02 Jan 2006 15:04:05 GMT", true)
	f.Add("bytes=0-1", "W/"+etag, false)

	f.Fuzz(func(t *testing.T, rng, ifRange string, head bool) {
		if !validHeaderValue(rng) || !validHeaderValue(ifRange) {
			return // net/http answers 400 before any handler
		}
		method := http.MethodGet
		if head {
			method = http.MethodHead
		}
		r := httptest.NewRequest(method, path, nil)
		if rng != "" {
			r.Header.Set("Range", rng)
		}
		if ifRange != "" {
			r.Header.Set("If-Range", ifRange)
		}
		rec := httptest.NewRecorder()
		px.ServeHTTP(rec, r)
		resp := rec.Result()
		body := rec.Body.Bytes()
		what := fmt.Sprintf("%s Range %q If-Range %q", method, rng, ifRange)

		switch resp.StatusCode {
		case http.StatusOK:
			if !head && !bytes.Equal(body, blob) {
				t.Fatalf("%s: 200 with %d bytes that are not the blob", what, len(body))
			}
		case http.StatusPartialContent:
			if !head {
				checkPartial(t, what, resp, body, blob)
			}
		case http.StatusRequestedRangeNotSatisfiable:
			if resp.Header.Get("Content-Type") != "application/json" {
				t.Fatalf("%s: 416 with Content-Type %q", what, resp.Header.Get("Content-Type"))
			}
			if !head {
				if code, _, _ := regtest.ParseOCIError(body); code != "RANGE_INVALID" {
					t.Fatalf("%s: 416 body is not an OCI RANGE_INVALID error: %q", what, body)
				}
			}
		default:
			t.Fatalf("%s: status %d, want 200, 206 or 416; body %q", what, resp.StatusCode, body)
		}
		if n := counts.Total(); n != 0 {
			t.Fatalf("%s: %d upstream requests for a cached blob", what, n)
		}
	})
}

// checkPartial checks that a 206 body holds exactly the blob's bytes that
// its Content-Range (or, for several ranges, each part's) names.
func checkPartial(t *testing.T, what string, resp *http.Response, body, blob []byte) {
	t.Helper()
	mt, params, err := mime.ParseMediaType(resp.Header.Get("Content-Type"))
	if err == nil && mt == "multipart/byteranges" {
		mr := multipart.NewReader(bytes.NewReader(body), params["boundary"])
		parts := 0
		for {
			p, err := mr.NextPart()
			if err == io.EOF {
				break
			}
			if err != nil {
				t.Fatalf("%s: multipart body: %v", what, err)
			}
			b, err := io.ReadAll(p)
			if err != nil {
				t.Fatalf("%s: multipart part: %v", what, err)
			}
			checkSlice(t, what, p.Header.Get("Content-Range"), b, blob)
			parts++
		}
		if parts < 2 {
			t.Fatalf("%s: multipart answer with %d parts", what, parts)
		}
		return
	}
	checkSlice(t, what, resp.Header.Get("Content-Range"), body, blob)
}

func checkSlice(t *testing.T, what, contentRange string, got, blob []byte) {
	t.Helper()
	spec, ok := strings.CutPrefix(contentRange, "bytes ")
	first, rest, ok2 := strings.Cut(spec, "-")
	last, total, ok3 := strings.Cut(rest, "/")
	a, err1 := strconv.Atoi(first)
	b, err2 := strconv.Atoi(last)
	if !ok || !ok2 || !ok3 || err1 != nil || err2 != nil || total != strconv.Itoa(len(blob)) || a < 0 || b < a || b >= len(blob) {
		t.Fatalf("%s: bad Content-Range %q", what, contentRange)
	}
	if !bytes.Equal(got, blob[a:b+1]) {
		t.Fatalf("%s: body of %d bytes is not bytes %d-%d of the blob", what, len(got), a, b)
	}
}
