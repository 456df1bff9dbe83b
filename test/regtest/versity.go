package regtest

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/hex"
	"hash"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
)

// The root credentials and region of every S3Server.
const (
	S3Access = "regmirror-test"
	S3Secret = "regmirror-test-secret"
	S3Region = "us-east-1"
)

// S3Server is a versitygw process (an S3 server that checks signatures and
// honours If-None-Match) serving a temp dir on 127.0.0.1. It can be stopped
// and started again on the same address and directory, as a store that goes
// down and comes back; the test that started it stops it when it ends.
type S3Server struct {
	Addr     string        // host:port
	Endpoint string        // http://host:port
	Admin    *minio.Client // root credentials, for making buckets and looking behind the mirror

	t    testing.TB
	bin  string
	root string
	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{} // closed when cmd exited
	out  bytes.Buffer  // its output, for a failure's message
}

// Versity starts versitygw, or skips the test when it is not installed
// (.ci/clients.sh installs it): fails it when REGMIRROR_REQUIRE_CLIENTS=1.
func Versity(t testing.TB) *S3Server {
	t.Helper()
	bin, err := exec.LookPath("versitygw")
	if err != nil {
		msg := "versitygw not on PATH (bash .ci/clients.sh, or go install github.com/versity/versitygw/cmd/versitygw@v1.8.0)"
		if os.Getenv("REGMIRROR_REQUIRE_CLIENTS") == "1" {
			t.Fatal(msg + "; REGMIRROR_REQUIRE_CLIENTS=1 makes this a failure")
		}
		t.Skip(msg)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	tr := http.DefaultTransport.(*http.Transport).Clone()
	t.Cleanup(tr.CloseIdleConnections)
	admin, err := minio.New(addr, &minio.Options{
		Creds: credentials.NewStaticV4(S3Access, S3Secret, ""), Region: S3Region, Transport: tr, MaxRetries: 1,
	})
	if err != nil {
		t.Fatal(err)
	}
	s := &S3Server{Addr: addr, Endpoint: "http://" + addr, Admin: admin, t: t, bin: bin, root: t.TempDir()}
	t.Cleanup(s.Stop)
	s.Start()
	return s
}

// Env is the environment that gives a mirror the root credentials, by the
// standard AWS variables.
func (s *S3Server) Env() []string {
	return []string{"AWS_ACCESS_KEY_ID=" + S3Access, "AWS_SECRET_ACCESS_KEY=" + S3Secret, "AWS_SESSION_TOKEN="}
}

// Start runs versitygw (again) and waits until it answers a signed request.
func (s *S3Server) Start() {
	s.t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd != nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	// The address was free when chosen; a restart may race the old socket's
	// release, so a process that exits before answering is started again.
	for !s.launch(ctx) {
		if ctx.Err() != nil {
			s.t.Fatalf("versitygw did not answer within 60s:\n%s", s.out.String())
		}
	}
}

// launch starts the process and waits until it answers (true), exits
// (false) or ctx ends (false, killed).
func (s *S3Server) launch(ctx context.Context) bool {
	s.out.Reset()
	cmd := exec.Command(s.bin, "--port", s.Addr, "--quiet", "posix", s.root)
	cmd.Env = append(os.Environ(), "ROOT_ACCESS_KEY="+S3Access, "ROOT_SECRET_KEY="+S3Secret)
	cmd.Stdout, cmd.Stderr = &s.out, &s.out
	if err := cmd.Start(); err != nil {
		s.t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	for {
		if _, err := s.Admin.ListBuckets(ctx); err == nil {
			s.cmd, s.done = cmd, done
			return true
		}
		select {
		case <-done:
			return false
		case <-ctx.Done():
			cmd.Process.Kill()
			<-done
			return false
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// Stop kills versitygw (a store gone down at once) and waits for it to exit.
func (s *S3Server) Stop() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd == nil {
		return
	}
	s.cmd.Process.Kill()
	<-s.done
	s.cmd, s.done = nil, nil
}

// Bucket makes a bucket.
func (s *S3Server) Bucket(t testing.TB, name string) string {
	t.Helper()
	if err := s.Admin.MakeBucket(context.Background(), name, minio.MakeBucketOptions{Region: S3Region}); err != nil {
		t.Fatalf("make bucket %s: %v", name, err)
	}
	return name
}

// Objects lists every object of the bucket, key → size.
func (s *S3Server) Objects(t testing.TB, bucket string) map[string]int64 {
	t.Helper()
	out := map[string]int64{}
	for obj := range s.Admin.ListObjects(context.Background(), bucket, minio.ListObjectsOptions{Recursive: true}) {
		if obj.Err != nil {
			t.Fatalf("list %s: %v", bucket, obj.Err)
		}
		out[obj.Key] = obj.Size
	}
	return out
}

// Uploads lists the bucket's multipart uploads neither completed nor
// aborted, as "key upload-id".
func (s *S3Server) Uploads(t testing.TB, bucket string) []string {
	t.Helper()
	var out []string
	for u := range s.Admin.ListIncompleteUploads(context.Background(), bucket, "", true) {
		if u.Err != nil {
			t.Fatalf("list uploads of %s: %v", bucket, u.Err)
		}
		out = append(out, u.Key+" "+u.UploadID)
	}
	return out
}

// ContentKeys returns the keys of content (…/blobs/sha256/<hex> and
// …/blobs/sha512/<hex>) in the bucket, key → size, after checking that each
// one's bytes hash to its key: anything else there is a wrong or partial object.
func (s *S3Server) ContentKeys(t testing.TB, bucket string) map[string]int64 {
	t.Helper()
	out := map[string]int64{}
	for key, size := range s.Objects(t, bucket) {
		dir, hexDigest := path.Split(key)
		var h hash.Hash
		switch {
		case strings.HasSuffix(dir, "blobs/sha256/"):
			h = sha256.New()
		case strings.HasSuffix(dir, "blobs/sha512/"):
			h = sha512.New()
		default:
			continue
		}
		obj, err := s.Admin.GetObject(context.Background(), bucket, key, minio.GetObjectOptions{})
		if err != nil {
			t.Fatalf("get %s: %v", key, err)
		}
		n, err := io.Copy(h, obj)
		obj.Close()
		if err != nil {
			t.Fatalf("read %s: %v", key, err)
		}
		if got := hex.EncodeToString(h.Sum(nil)); got != hexDigest || n != size {
			t.Errorf("object %s: %d bytes hashing to %s, listed as %d bytes: not the content its key names", key, n, got, size)
		}
		out[key] = size
	}
	return out
}

// ContentRequests is a transport in front of an S3 client's that notes each
// request for content (keys under blobs/) as its method and Range header,
// for the tests of what a read costs.
type ContentRequests struct {
	Next http.RoundTripper
	mu   sync.Mutex
	seen []string
}

func (c *ContentRequests) RoundTrip(req *http.Request) (*http.Response, error) {
	if strings.Contains(req.URL.Path, "/blobs/") {
		c.mu.Lock()
		c.seen = append(c.seen, strings.TrimSpace(req.Method+" "+req.Header.Get("Range")))
		c.mu.Unlock()
	}
	return c.Next.RoundTrip(req)
}

// Take returns the requests seen since the last Take.
func (c *ContentRequests) Take() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	seen := c.seen
	c.seen = nil
	return seen
}
