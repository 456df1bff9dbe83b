package cache

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/minio/minio-go/v7"
	"github.com/regmirror/regmirror/test/regtest"
	"go.uber.org/zap/zaptest"
)

const (
	s3Access = regtest.S3Access
	s3Secret = regtest.S3Secret
	s3Region = regtest.S3Region
)

// testTransport is a transport whose idle connections close with the test,
// so no goroutine outlives it.
func testTransport(t *testing.T) *http.Transport {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	t.Cleanup(tr.CloseIdleConnections)
	return tr
}

// s3Objects opens a bucket of srv through S3Objects with credentials from the
// environment, as in production.
func s3Objects(t *testing.T, srv *regtest.S3Server, cfg S3Config) *S3Objects {
	t.Helper()
	cfg.Endpoint, cfg.Region, cfg.Transport = srv.Endpoint, s3Region, testTransport(t)
	o, err := NewS3Objects(cfg, zaptest.NewLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	return o
}

func setS3Credentials(t *testing.T, access, secret string) {
	t.Setenv("AWS_ACCESS_KEY_ID", access)
	t.Setenv("AWS_SECRET_ACCESS_KEY", secret)
	t.Setenv("AWS_SESSION_TOKEN", "")
}

// bucketKeys lists every object key in the bucket, sorted.
func bucketKeys(t *testing.T, srv *regtest.S3Server, bucket string) []string {
	t.Helper()
	var keys []string
	for k := range srv.Objects(t, bucket) {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

// cancelAt cancels a context when a read reaches off.
type cancelAt struct {
	io.ReaderAt
	off    int64
	cancel context.CancelFunc
}

func (c cancelAt) ReadAt(p []byte, off int64) (int, error) {
	if off >= c.off {
		c.cancel()
	}
	return c.ReaderAt.ReadAt(p, off)
}

// checkAndPutFail asserts that the start-up check and a write both fail with want.
func checkAndPutFail(t *testing.T, o *S3Objects, want error) {
	t.Helper()
	ctx := context.Background()
	if err := o.Check(ctx); !errors.Is(err, want) {
		t.Fatalf("check: %v, want %v", err, want)
	}
	body, h := randomContent(t, 10)
	if err := o.Put(ctx, h, bytes.NewReader(body), 10, ""); !errors.Is(err, want) {
		t.Fatalf("put: %v, want %v", err, want)
	}
}

func TestS3ObjectsAgainstVersity(t *testing.T) {
	srv := regtest.Versity(t)
	setS3Credentials(t, s3Access, s3Secret)
	ctx := context.Background()

	for _, tc := range []struct {
		name string
		alg  string
		size int // with 5 MiB parts: one PUT, or three parts
	}{{"single PUT", "sha256", 3000}, {"multipart", "sha256", 11<<20 + 17},
		{"single PUT sha512", "sha512", 3000}, {"multipart sha512", "sha512", 11<<20 + 17}} {
		t.Run(tc.name, func(t *testing.T) {
			bucket := srv.Bucket(t, "put-"+strings.ReplaceAll(strings.ToLower(tc.name), " ", "-"))
			o := s3Objects(t, srv, S3Config{Bucket: bucket, Prefix: "/mirror-a/", PartSize: minPartSize})
			body, h := randomContentBy(t, tc.alg, tc.size)

			// The last byte differs from what h names: only the whole hash can tell.
			bad := bytes.Clone(body)
			bad[len(bad)-1] ^= 1
			if err := o.Put(ctx, h, bytes.NewReader(bad), int64(len(bad)), ""); !errors.Is(err, ErrDigestMismatch) {
				t.Fatalf("put of wrong content: %v, want ErrDigestMismatch", err)
			}
			if err := o.Put(ctx, h, bytes.NewReader(body[:len(body)-1]), int64(len(body)), ""); !errors.Is(err, ErrSizeMismatch) {
				t.Fatalf("put of short content: %v, want ErrSizeMismatch", err)
			}
			if keys, ups := bucketKeys(t, srv, bucket), srv.Uploads(t, bucket); len(keys) != 0 || len(ups) != 0 {
				t.Fatalf("after refused puts: objects %q, incomplete uploads %q", keys, ups)
			}
			if _, err := o.Stat(ctx, h); !errors.Is(err, ErrNotFound) {
				t.Fatalf("stat before put: %v, want ErrNotFound", err)
			}

			if err := o.Put(ctx, h, bytes.NewReader(body), int64(len(body)), ""); err != nil {
				t.Fatal(err)
			}
			if err := o.Put(ctx, h, bytes.NewReader(body), int64(len(body)), ""); err != nil {
				t.Fatalf("second put of the same content: %v", err)
			}
			want := []string{"mirror-a/blobs/" + tc.alg + "/" + h.Hex}
			if keys, ups := bucketKeys(t, srv, bucket), srv.Uploads(t, bucket); fmt.Sprint(keys) != fmt.Sprint(want) || len(ups) != 0 {
				t.Fatalf("objects %q (want %q), incomplete uploads %q", keys, want, ups)
			}
			if size, err := o.Stat(ctx, h); err != nil || size != int64(len(body)) {
				t.Fatalf("stat: %d, %v; want %d", size, err, len(body))
			}
			var listed []v1.Hash
			if err := o.List(ctx, func(l v1.Hash, _ int64) error { listed = append(listed, l); return nil }); err != nil || len(listed) != 1 || listed[0] != h {
				t.Fatalf("list: %v, %v; want %s", listed, err, h)
			}
			r, info, err := o.Open(ctx, h, From{})
			size := info.Size
			if err != nil {
				t.Fatal(err)
			}
			got, err := io.ReadAll(r)
			r.Close()
			if err != nil || size != int64(len(body)) || !bytes.Equal(got, body) {
				t.Fatalf("open: %d bytes of %d (%v), equal %v", len(got), size, err, bytes.Equal(got, body))
			}
		})
	}

	t.Run("complete refused by If-None-Match is success and aborts", func(t *testing.T) {
		bucket := srv.Bucket(t, "complete-twice")
		o := s3Objects(t, srv, S3Config{Bucket: bucket, PartSize: minPartSize})
		body, h := randomContent(t, 6<<20)
		if err := o.Put(ctx, h, bytes.NewReader(body), int64(len(body)), ""); err != nil {
			t.Fatal(err)
		}
		// Past Put's HEAD, as when another writer completed first.
		if err := o.uploadParts(ctx, h, bytes.NewReader(body), int64(len(body)), ""); err != nil {
			t.Fatalf("a second complete of the same digest: %v", err)
		}
		if ups := srv.Uploads(t, bucket); len(ups) != 0 {
			t.Fatalf("incomplete uploads left: %q", ups)
		}
		if keys := bucketKeys(t, srv, bucket); len(keys) != 1 {
			t.Fatalf("objects %q, want one", keys)
		}
	})

	t.Run("a put cancelled midway aborts its upload", func(t *testing.T) {
		bucket := srv.Bucket(t, "cancelled")
		o := s3Objects(t, srv, S3Config{Bucket: bucket, PartSize: minPartSize})
		body, h := randomContent(t, 11<<20)
		ctx, cancel := context.WithCancel(ctx)
		defer cancel()
		// The client leaves once the first part is up: the second part's read cancels.
		content := cancelAt{ReaderAt: bytes.NewReader(body), off: minPartSize, cancel: cancel}
		if err := o.Put(ctx, h, content, int64(len(body)), ""); !errors.Is(err, context.Canceled) {
			t.Fatalf("put: %v, want context.Canceled", err)
		}
		if keys, ups := bucketKeys(t, srv, bucket), srv.Uploads(t, bucket); len(keys) != 0 || len(ups) != 0 {
			t.Fatalf("objects %q, incomplete uploads %q", keys, ups)
		}
	})

	t.Run("concurrent puts store one object", func(t *testing.T) {
		bucket := srv.Bucket(t, "concurrent")
		o := s3Objects(t, srv, S3Config{Bucket: bucket, PartSize: minPartSize})
		body, h := randomContent(t, 6<<20)
		var wg sync.WaitGroup
		errs := make([]error, 4)
		for i := range errs {
			wg.Go(func() { errs[i] = o.Put(ctx, h, bytes.NewReader(body), int64(len(body)), "") })
		}
		wg.Wait()
		for i, err := range errs {
			if err != nil {
				t.Errorf("put %d: %v", i, err)
			}
		}
		if keys, ups := bucketKeys(t, srv, bucket), srv.Uploads(t, bucket); len(keys) != 1 || len(ups) != 0 {
			t.Fatalf("objects %q (want one), incomplete uploads %q", keys, ups)
		}
	})

	// Each answer costs one GET, asking for no more than the first read
	// needs, when the open's starts where the first read does; a wrong guess
	// costs one more, never wrong bytes.
	t.Run("Range", func(t *testing.T) {
		bucket := srv.Bucket(t, "range")
		ct := &regtest.ContentRequests{Next: testTransport(t)}
		o, err := NewS3Objects(S3Config{Endpoint: srv.Endpoint, Region: s3Region, Bucket: bucket, Transport: ct}, zaptest.NewLogger(t))
		if err != nil {
			t.Fatal(err)
		}
		body, h := randomContent(t, 100000)
		if err := o.Put(ctx, h, bytes.NewReader(body), int64(len(body)), ""); err != nil {
			t.Fatal(err)
		}
		serve := func(rangeHeader string, from From, want ...string) *httptest.ResponseRecorder {
			t.Helper()
			ct.Take()
			r, info, err := o.Open(ctx, h, from)
			if err != nil || info.Size != int64(len(body)) {
				t.Fatalf("open from %+v: size %d, %v", from, info.Size, err)
			}
			defer r.Close()
			req := httptest.NewRequest(http.MethodGet, "/blob", nil)
			req.Header.Set("Range", rangeHeader)
			rec := httptest.NewRecorder()
			rec.Header().Set("Content-Type", "application/octet-stream") // as the proxy's: no sniffing read
			http.ServeContent(rec, req, "", time.Time{}, r)
			if seen := ct.Take(); !slices.Equal(seen, want) {
				t.Fatalf("%q opened from %+v: requests %q, want %q", rangeHeader, from, seen, want)
			}
			return rec
		}
		rec := serve("bytes=1000-1999", From{Offset: 1000, Length: 1000}, "GET bytes=1000-1999")
		if rec.Code != http.StatusPartialContent || !bytes.Equal(rec.Body.Bytes(), body[1000:2000]) ||
			rec.Header().Get("Content-Range") != "bytes 1000-1999/100000" {
			t.Fatalf("range: %d %q, %d bytes, right bytes %v", rec.Code, rec.Header().Get("Content-Range"),
				rec.Body.Len(), bytes.Equal(rec.Body.Bytes(), body[1000:2000]))
		}
		rec = serve("bytes=-10", From{Offset: 10, Suffix: true}, "GET bytes=-10")
		if rec.Code != http.StatusPartialContent || !bytes.Equal(rec.Body.Bytes(), body[len(body)-10:]) {
			t.Fatalf("suffix range: %d, %d bytes", rec.Code, rec.Body.Len())
		}
		rec = serve("bytes=-200000", From{Offset: 200000, Suffix: true}, "GET bytes=-200000")
		if rec.Code != http.StatusPartialContent || !bytes.Equal(rec.Body.Bytes(), body) {
			t.Fatalf("suffix range longer than the blob: %d, %d bytes", rec.Code, rec.Body.Len())
		}
		rec = serve("bytes=0-9,50000-50009", From{}, "GET", "GET bytes=50000-")
		if rec.Code != http.StatusPartialContent || !strings.HasPrefix(rec.Header().Get("Content-Type"), "multipart/byteranges") ||
			!bytes.Contains(rec.Body.Bytes(), body[:10]) || !bytes.Contains(rec.Body.Bytes(), body[50000:50010]) {
			t.Fatalf("multi-range: %d %q", rec.Code, rec.Header().Get("Content-Type"))
		}
		rec = serve("bytes=0-9,50000-50009", From{Length: 10}, "GET bytes=0-9", "GET bytes=50000-")
		if rec.Code != http.StatusPartialContent || !bytes.Contains(rec.Body.Bytes(), body[:10]) || !bytes.Contains(rec.Body.Bytes(), body[50000:50010]) {
			t.Fatalf("multi-range opened for the first: %d", rec.Code)
		}
		// Reads that go on past the first GET's closed range GET the rest.
		rec = serve("bytes=0-9,10-19", From{Length: 10}, "GET bytes=0-9", "GET bytes=10-")
		if rec.Code != http.StatusPartialContent || !bytes.Contains(rec.Body.Bytes(), body[:10]) || !bytes.Contains(rec.Body.Bytes(), body[10:20]) {
			t.Fatalf("adjacent ranges: %d", rec.Code)
		}
		if rec = serve("", From{Length: 10}, "GET bytes=0-9", "GET bytes=10-"); rec.Code != http.StatusOK || !bytes.Equal(rec.Body.Bytes(), body) {
			t.Fatalf("whole, opened for a range: %d, %d bytes", rec.Code, rec.Body.Len())
		}
		rec = serve("bytes=99990-200000", From{Offset: 99990, Length: 100011}, "GET bytes=99990-200000")
		if rec.Code != http.StatusPartialContent || !bytes.Equal(rec.Body.Bytes(), body[99990:]) {
			t.Fatalf("range past the end of the blob: %d, %d bytes", rec.Code, rec.Body.Len())
		}
		rec = serve("bytes=5000-5999", From{Offset: 1000}, "GET bytes=1000-", "GET bytes=5000-")
		if rec.Code != http.StatusPartialContent || !bytes.Equal(rec.Body.Bytes(), body[5000:6000]) {
			t.Fatalf("range opened elsewhere: %d, %d bytes", rec.Code, rec.Body.Len())
		}
		// The store refuses a start past the end; the whole object's answer
		// gives the size the 416 names.
		rec = serve("bytes=200000-", From{Offset: 200000}, "GET bytes=200000-", "GET")
		if rec.Code != http.StatusRequestedRangeNotSatisfiable || rec.Header().Get("Content-Range") != "bytes */100000" {
			t.Fatalf("range past the end: %d %q", rec.Code, rec.Header().Get("Content-Range"))
		}
		rec = serve("bytes=200000-200009", From{Offset: 200000, Length: 10}, "GET bytes=200000-200009", "GET")
		if rec.Code != http.StatusRequestedRangeNotSatisfiable || rec.Header().Get("Content-Range") != "bytes */100000" {
			t.Fatalf("closed range past the end: %d %q", rec.Code, rec.Header().Get("Content-Range"))
		}
		if rec = serve("", From{}, "GET"); rec.Code != http.StatusOK || !bytes.Equal(rec.Body.Bytes(), body) {
			t.Fatalf("whole: %d, %d bytes", rec.Code, rec.Body.Len())
		}
	})

	t.Run("not found, delete, list", func(t *testing.T) {
		bucket := srv.Bucket(t, "list")
		o := s3Objects(t, srv, S3Config{Bucket: bucket, Prefix: "a"})
		other := s3Objects(t, srv, S3Config{Bucket: bucket, Prefix: "b"})
		_, missing := randomContent(t, 1)
		if _, _, err := o.Open(ctx, missing, From{}); !errors.Is(err, ErrNotFound) {
			t.Fatalf("open of a missing digest: %v, want ErrNotFound", err)
		}
		if err := o.Delete(ctx, missing); err != nil {
			t.Fatalf("delete of a missing digest: %v", err)
		}
		var want []string
		for i := range 3 {
			body, h := randomContent(t, 10+i)
			if err := o.Put(ctx, h, bytes.NewReader(body), int64(len(body)), ""); err != nil {
				t.Fatal(err)
			}
			want = append(want, fmt.Sprintf("%s %d", h, len(body)))
		}
		// Not a digest: skipped by the walk.
		if _, err := srv.Admin.PutObject(ctx, bucket, "a/blobs/sha256/notes.txt", strings.NewReader("x"), 1, minio.PutObjectOptions{}); err != nil {
			t.Fatal(err)
		}
		slices.Sort(want)
		list := func(o *S3Objects) []string {
			var got []string
			if err := o.List(ctx, func(h v1.Hash, size int64) error {
				got = append(got, fmt.Sprintf("%s %d", h, size))
				return nil
			}); err != nil {
				t.Fatal(err)
			}
			return got
		}
		if got := list(o); fmt.Sprint(got) != fmt.Sprint(want) {
			t.Fatalf("list:\n%q\nwant\n%q", got, want)
		}
		if got := list(other); len(got) != 0 {
			t.Fatalf("another prefix lists %q", got)
		}
		stop := errors.New("stop")
		calls := 0
		if err := o.List(ctx, func(v1.Hash, int64) error { calls++; return stop }); !errors.Is(err, stop) || calls != 1 {
			t.Fatalf("list stopped by fn: %v after %d calls", err, calls)
		}
		first, _ := v1.NewHash(strings.Fields(want[0])[0])
		if err := o.Delete(ctx, first); err != nil {
			t.Fatal(err)
		}
		if _, err := o.Stat(ctx, first); !errors.Is(err, ErrNotFound) {
			t.Fatalf("stat after delete: %v", err)
		}
		if got := list(o); fmt.Sprint(got) != fmt.Sprint(want[1:]) {
			t.Fatalf("list after delete: %q", got)
		}
	})

	t.Run("If-None-Match self-test", func(t *testing.T) {
		bucket := srv.Bucket(t, "probe")
		o := s3Objects(t, srv, S3Config{Bucket: bucket, Prefix: "p"})
		if err := o.Check(ctx); err != nil {
			t.Fatal(err)
		}
		if err := o.CheckConditionalWrites(ctx); err != nil {
			t.Fatal(err)
		}
		if keys := bucketKeys(t, srv, bucket); len(keys) != 0 {
			t.Fatalf("probe left behind: %q", keys)
		}
	})

	t.Run("missing bucket", func(t *testing.T) {
		// A HEAD of an object cannot tell (a 404 without a body): Check at start-up can.
		checkAndPutFail(t, s3Objects(t, srv, S3Config{Bucket: "no-such-bucket"}), ErrBucketMissing)
	})
}

// Wrong credentials are refused by name, not taken for a missing object.
func TestS3ObjectsWrongCredentials(t *testing.T) {
	srv := regtest.Versity(t)
	bucket := srv.Bucket(t, "creds")
	ctx := context.Background()
	for _, tc := range []struct {
		name, access, secret string
		// versitygw answers a HEAD with an unknown key 404 and no body, which
		// reads as a missing object; AWS answers 403. Check, a GET, tells.
		headTells bool
	}{
		{"wrong secret", s3Access, "not-the-secret", true},
		{"unknown key", "nobody", s3Secret, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			setS3Credentials(t, tc.access, tc.secret)
			o := s3Objects(t, srv, S3Config{Bucket: bucket})
			checkAndPutFail(t, o, ErrAccessDenied)
			_, h := randomContent(t, 1)
			if _, err := o.Stat(ctx, h); tc.headTells && !errors.Is(err, ErrAccessDenied) {
				t.Fatalf("stat: %v, want ErrAccessDenied", err)
			}
			if strings.Contains(fmt.Sprint(o.Check(ctx)), tc.secret) {
				t.Fatal("the secret is in the error")
			}
		})
	}
}

// A store that cannot be reached, or answers 5xx or SlowDown, is unavailable:
// a transient state, told apart from the configuration mistakes above.
func TestS3ObjectsUnavailable(t *testing.T) {
	setS3Credentials(t, s3Access, s3Secret)
	ctx := context.Background()
	open := func(t *testing.T, endpoint string) *S3Objects {
		o, err := NewS3Objects(S3Config{Endpoint: endpoint, Bucket: "bucket", Region: s3Region, Transport: testTransport(t)}, zaptest.NewLogger(t))
		if err != nil {
			t.Fatal(err)
		}
		return o
	}
	t.Run("refused", func(t *testing.T) {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := l.Addr().String()
		l.Close()
		o := open(t, "http://"+addr)
		if err := o.Check(ctx); !errors.Is(err, ErrStoreUnavailable) {
			t.Fatalf("check: %v, want ErrStoreUnavailable", err)
		}
		if _, err := o.Stat(ctx, v1.Hash{Algorithm: "sha256", Hex: strings.Repeat("a", 64)}); !errors.Is(err, ErrStoreUnavailable) {
			t.Fatalf("stat: %v, want ErrStoreUnavailable", err)
		}
	})
	for _, tc := range []struct {
		status int
		code   string
	}{{http.StatusServiceUnavailable, "SlowDown"}, {http.StatusInternalServerError, "InternalError"}} {
		t.Run(tc.code, func(t *testing.T) {
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Content-Type", "application/xml")
				w.WriteHeader(tc.status)
				if r.Method != http.MethodHead {
					fmt.Fprintf(w, `<?xml version="1.0" encoding="UTF-8"?><Error><Code>%s</Code><Message>busy</Message></Error>`, tc.code)
				}
			}))
			defer srv.Close()
			checkAndPutFail(t, open(t, srv.URL), ErrStoreUnavailable)
		})
	}
}

// A store that lets a second If-None-Match: * write through is reported.
func TestS3ConditionalWritesIgnored(t *testing.T) {
	setS3Credentials(t, s3Access, s3Secret)
	var mu sync.Mutex
	objects := map[string]bool{}
	// Answers like S3 but without conditions: every PUT overwrites.
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		defer mu.Unlock()
		switch r.Method {
		case http.MethodPut:
			io.Copy(io.Discard, r.Body)
			objects[r.URL.Path] = true
			w.Header().Set("ETag", `"0123"`)
		case http.MethodDelete:
			delete(objects, r.URL.Path)
			w.WriteHeader(http.StatusNoContent)
		default:
			w.WriteHeader(http.StatusNotImplemented)
		}
	}))
	defer srv.Close()
	o, err := NewS3Objects(S3Config{Endpoint: srv.URL, Bucket: "bucket", Region: s3Region, Transport: testTransport(t)}, zaptest.NewLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	if err := o.CheckConditionalWrites(context.Background()); !errors.Is(err, ErrConditionalWritesIgnored) {
		t.Fatalf("self-test: %v, want ErrConditionalWritesIgnored", err)
	}
	if len(objects) != 0 {
		t.Fatalf("probe left: %v", objects)
	}
}

func TestS3Endpoint(t *testing.T) {
	for _, tc := range []struct {
		endpoint, host string
		secure, ok     bool
	}{
		{"", "s3.amazonaws.com", true, true},
		{"http://127.0.0.1:7070", "127.0.0.1:7070", false, true},
		{"https://s3.example.com/", "s3.example.com", true, true},
		{"https://key:secret@s3.example.com", "", false, false},
		{"s3.example.com", "", false, false},
		{"ftp://s3.example.com", "", false, false},
		{"https://s3.example.com/bucket", "", false, false},
	} {
		host, secure, err := s3Endpoint(tc.endpoint)
		if (err == nil) != tc.ok || host != tc.host || secure != tc.secure {
			t.Errorf("%q: %q %v %v", tc.endpoint, host, secure, err)
		}
		if err != nil && strings.Contains(err.Error(), "secret") {
			t.Errorf("%q: the error repeats the credentials: %v", tc.endpoint, err)
		}
	}
	if _, err := NewS3Objects(S3Config{Bucket: "bucket", PartSize: 1 << 20}, zaptest.NewLogger(t)); err == nil {
		t.Error("a part size under 5 MiB was accepted")
	}
	if _, err := NewS3Objects(S3Config{}, zaptest.NewLogger(t)); err == nil {
		t.Error("no bucket was accepted")
	}
}

// A store that answers a part's upload before reading its body (a 503
// SlowDown mid-request) makes the upload try again with the same bytes: the
// retry is a new reader of them, never the first attempt's body rewound
// while the HTTP transport may still be reading it (a data race under
// -race with minio-go's own rewind).
func TestS3PutRetriesWithAFreshBody(t *testing.T) {
	srv := regtest.Versity(t)
	setS3Credentials(t, s3Access, s3Secret)
	bucket := srv.Bucket(t, "retry")
	target, err := url.Parse(srv.Endpoint)
	if err != nil {
		t.Fatal(err)
	}
	var refused atomic.Int32
	pass := httputil.NewSingleHostReverseProxy(target)
	front := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Query().Has("partNumber") && refused.Add(1) <= 2 {
			w.Header().Set("Connection", "close")
			w.WriteHeader(http.StatusServiceUnavailable)
			io.WriteString(w, `<?xml version="1.0" encoding="UTF-8"?><Error><Code>SlowDown</Code><Message>later</Message></Error>`)
			return
		}
		pass.ServeHTTP(w, r)
	}))
	defer front.Close()
	o, err := NewS3Objects(S3Config{Endpoint: front.URL, Bucket: bucket, Region: s3Region,
		Transport: testTransport(t), PartSize: minPartSize}, zaptest.NewLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	body, h := randomContentBy(t, "sha256", 11<<20+17)
	ctx := context.Background()
	if err := o.Put(ctx, h, bytes.NewReader(body), int64(len(body)), ""); err != nil {
		t.Fatalf("put through two refused parts: %v", err)
	}
	if n := refused.Load(); n < 3 {
		t.Fatalf("parts refused %d times, want the two refusals and more parts", n)
	}
	r, size, err := o.Open(ctx, h, From{})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	got, err := io.ReadAll(r)
	if err != nil || size.Size != int64(len(body)) || !bytes.Equal(got, body) {
		t.Fatalf("stored %d bytes (size %d, err %v), want the %d put", len(got), size.Size, err, len(body))
	}
}

// A store that ignores Range, answering every GET with the whole object, is
// read from where its answers start: an open from an offset is read from
// the start, and a read after a seek fails rather than send bytes from
// elsewhere.
func TestS3ObjectsStoreIgnoringRange(t *testing.T) {
	setS3Credentials(t, s3Access, s3Secret)
	body, h := randomContent(t, 10_000)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Last-Modified", time.Now().UTC().Format(http.TimeFormat))
		w.Header().Set("Content-Length", strconv.Itoa(len(body)))
		w.Write(body)
	}))
	defer srv.Close()
	o, err := NewS3Objects(S3Config{Endpoint: srv.URL, Bucket: "bucket", Region: s3Region, Transport: testTransport(t)}, zaptest.NewLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	r, info, err := o.Open(context.Background(), h, From{Offset: 1000})
	if err != nil || info.Size != int64(len(body)) {
		t.Fatalf("open: size %d, %v", info.Size, err)
	}
	defer r.Close()
	head := make([]byte, 100)
	if _, err := io.ReadFull(r, head); err != nil || !bytes.Equal(head, body[:100]) {
		t.Fatalf("read from the start: %v, right bytes %v", err, bytes.Equal(head, body[:100]))
	}
	if _, err := r.Seek(5000, io.SeekStart); err != nil {
		t.Fatal(err)
	}
	if n, err := r.Read(head); err == nil || n != 0 {
		t.Fatalf("read at 5000 answered from the start: %d bytes, %v", n, err)
	}
}
