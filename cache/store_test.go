package cache_test

import (
	"bytes"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/regmirror/regmirror/cache"
	"go.uber.org/zap"
)

func open(t *testing.T, dir string) *cache.Store {
	t.Helper()
	s, err := cache.Open(dir, cache.Options{}, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func content(t *testing.T, n int) ([]byte, v1.Hash) {
	t.Helper()
	return contentBy(t, "sha256", n)
}

// contentBy is n random bytes and their digest by algorithm alg.
func contentBy(t *testing.T, alg string, n int) ([]byte, v1.Hash) {
	t.Helper()
	b := make([]byte, n)
	rand.Read(b)
	return b, cache.Sum(alg, b)
}

func readAll(t *testing.T, s *cache.Store, h v1.Hash) []byte {
	t.Helper()
	f, _, err := s.Open(t.Context(), h)
	if err != nil {
		t.Fatalf("Open(%s): %v", h, err)
	}
	defer f.Close()
	b, err := io.ReadAll(f)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestContentIsVisibleOnlyAfterCommit(t *testing.T) {
	forEachAlgorithm(t, testContentIsVisibleOnlyAfterCommit)
}

func testContentIsVisibleOnlyAfterCommit(t *testing.T, alg string) {
	dir := t.TempDir()
	s := open(t, dir)
	defer s.Close()
	b, h := contentBy(t, alg, 100_000)

	w, err := s.Create(h, int64(len(b)), "application/octet-stream")
	if err != nil {
		t.Fatal(err)
	}
	w.Write(b[:50_000])
	if s.Has(h) {
		t.Fatal("half-written content is visible")
	}
	if _, _, err := s.Open(t.Context(), h); !errors.Is(err, cache.ErrNotFound) {
		t.Fatalf("Open before commit: err = %v, want ErrNotFound", err)
	}
	// A reader opened on the temp file keeps reading across the rename.
	r, err := w.OpenReader()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	w.Write(b[50_000:])
	if err := w.Commit(); err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(r)
	if err != nil || !bytes.Equal(got, b) {
		t.Fatalf("reader across commit: %v, equal %v", err, bytes.Equal(got, b))
	}
	if !bytes.Equal(readAll(t, s, h), b) {
		t.Fatal("committed content differs")
	}
	if _, err := os.Stat(filepath.Join(dir, "blobs", alg, h.Hex[:2], h.Hex)); err != nil {
		t.Errorf("content not at its digest's path: %v", err)
	}
	if left, _ := os.ReadDir(filepath.Join(dir, "tmp")); len(left) != 0 {
		t.Errorf("temp files left: %v", left)
	}
}

func TestBadContentNeverCommits(t *testing.T) {
	forEachAlgorithm(t, testBadContentNeverCommits)
}

func testBadContentNeverCommits(t *testing.T, alg string) {
	b, h := contentBy(t, alg, 1000)
	tests := []struct {
		name  string
		size  int64
		write []byte
		want  error
	}{
		{"wrong bytes", 1000, append(bytes.Clone(b[:999]), b[999]^1), cache.ErrDigestMismatch},
		{"short", 1000, b[:999], cache.ErrSizeMismatch},
		{"long", 999, b, cache.ErrSizeMismatch},
		{"unknown size, wrong bytes", -1, b[1:], cache.ErrDigestMismatch},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			s := open(t, dir)
			defer s.Close()
			w, err := s.Create(h, tt.size, "")
			if err != nil {
				t.Fatal(err)
			}
			_, werr := w.Write(tt.write)
			cerr := w.Commit()
			if !errors.Is(werr, tt.want) && !errors.Is(cerr, tt.want) {
				t.Fatalf("Write: %v, Commit: %v; want %v", werr, cerr, tt.want)
			}
			if s.Has(h) {
				t.Error("bad content is visible")
			}
			if left, _ := os.ReadDir(filepath.Join(dir, "tmp")); len(left) != 0 {
				t.Errorf("temp files left: %v", left)
			}
		})
	}
}

func TestAbortRemovesTempAndReopenCleansLeftovers(t *testing.T) {
	dir := t.TempDir()
	s := open(t, dir)
	b, h := content(t, 10)
	w, _ := s.Create(h, 10, "")
	w.Write(b[:5])
	w.Abort()
	w.Abort() // twice is fine
	if left, _ := os.ReadDir(filepath.Join(dir, "tmp")); len(left) != 0 {
		t.Errorf("Abort left %v", left)
	}
	if _, err := w.OpenReader(); err == nil {
		t.Error("OpenReader after Abort succeeded")
	}
	// A crash leaves a temp file behind; the next Open removes it.
	w2, _ := s.Create(h, 10, "")
	w2.Write(b[:3])
	s.Close()
	s = open(t, dir)
	defer s.Close()
	if left, _ := os.ReadDir(filepath.Join(dir, "tmp")); len(left) != 0 {
		t.Errorf("reopen left %v", left)
	}
	if s.Has(h) {
		t.Error("leftover became visible")
	}
}

func TestBadDigestsNeverNameAFile(t *testing.T) {
	s := open(t, t.TempDir())
	defer s.Close()
	for _, h := range []v1.Hash{
		{Algorithm: "sha256", Hex: "../../../../etc/passwd"},
		{Algorithm: "sha256", Hex: "AB"},
		{Algorithm: "md5", Hex: "d41d8cd98f00b204e9800998ecf8427e"},
		{Algorithm: "sha512", Hex: strings.Repeat("ab", 32)}, // a sha256's length
		{Algorithm: "sha384", Hex: strings.Repeat("ab", 48)},
	} {
		if _, _, err := s.Open(t.Context(), h); !errors.Is(err, cache.ErrUnsupportedDigest) {
			t.Errorf("Open(%q): %v, want ErrUnsupportedDigest", h, err)
		}
		if _, err := s.Create(h, 1, ""); !errors.Is(err, cache.ErrUnsupportedDigest) {
			t.Errorf("Create(%q): %v, want ErrUnsupportedDigest", h, err)
		}
	}
}

func TestIndexSurvivesReopen(t *testing.T) {
	dir := t.TempDir()
	now := time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)
	s, err := cache.Open(dir, cache.Options{Now: func() time.Time { return now }}, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	m, h := content(t, 300)
	if err := s.PutManifest(h, m, "application/vnd.oci.image.manifest.v1+json"); err != nil {
		t.Fatal(err)
	}
	a := cache.TagAnswer{Digest: h, MediaType: "application/vnd.oci.image.manifest.v1+json", Size: 300, LearnedAt: now}
	if err := s.SetTag("docker.io", "library/app", "1.0", a); err != nil {
		t.Fatal(err)
	}
	s.SetTag("docker.io", "library/app", "2.0", a)
	s.SetTag("docker.io", "library/app/sub", "3.0", a)
	s.DeleteTag("docker.io", "library/app", "2.0")
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	s = open(t, dir)
	defer s.Close()
	got, err := s.Tag("docker.io", "library/app", "1.0")
	if err != nil || got.Digest != h || !got.LearnedAt.Equal(now) || got.MediaType != a.MediaType {
		t.Errorf("Tag after reopen = %+v, %v; want %+v", got, err, a)
	}
	if _, err := s.Tag("docker.io", "library/app", "2.0"); !errors.Is(err, cache.ErrNotFound) {
		t.Errorf("deleted tag: %v", err)
	}
	if tags, _ := s.Tags("docker.io", "library/app"); len(tags) != 1 || tags[0] != "1.0" {
		t.Errorf("Tags = %v, want [1.0]", tags)
	}
	s.SetTag("ghcr.io", "owner/app", "1", a)
	repos, err := s.Repositories()
	want := []cache.Repository{{"docker.io", "library/app"}, {"docker.io", "library/app/sub"}, {"ghcr.io", "owner/app"}}
	if err != nil || fmt.Sprint(repos) != fmt.Sprint(want) {
		t.Errorf("Repositories = %v, %v; want %v", repos, err, want)
	}
	body, info, err := s.Manifest(t.Context(), h, 1<<20)
	if err != nil || !bytes.Equal(body, m) || info.MediaType != a.MediaType || info.Size != 300 {
		t.Errorf("Manifest after reopen: %v, info %+v", err, info)
	}
	if _, _, err := s.Manifest(t.Context(), h, 100); !errors.Is(err, cache.ErrTooLarge) {
		t.Errorf("Manifest over the limit: %v, want ErrTooLarge", err)
	}
	if at, err := s.LastAccess(h); err != nil || at.IsZero() {
		t.Errorf("LastAccess after reopen: %v, %v", at, err)
	}
}

func TestOpenFallsBackToTheFileWhenTheRecordIsLost(t *testing.T) {
	dir := t.TempDir()
	s := open(t, dir)
	b, h := content(t, 64)
	w, _ := s.Create(h, 64, "x")
	w.Write(b)
	w.Commit()
	s.Close()
	// A crash between rename and index write: simulate with a fresh index.
	os.RemoveAll(filepath.Join(dir, "index"))
	s = open(t, dir)
	defer s.Close()
	f, info, err := s.Open(t.Context(), h)
	if err != nil {
		t.Fatal(err)
	}
	f.Close()
	if info.Size != 64 {
		t.Errorf("size from file = %d, want 64", info.Size)
	}
}

func TestSecondProcessCannotOpenTheSameStore(t *testing.T) {
	dir := t.TempDir()
	s := open(t, dir)
	defer s.Close()
	if s2, err := cache.Open(dir, cache.Options{}, zap.NewNop()); err == nil {
		s2.Close()
		t.Fatal("a second Open of the same dir succeeded; it would delete the first one's temp files")
	}
}

func TestHealthyNeedsTheTempDirectory(t *testing.T) {
	dir := t.TempDir()
	s, err := cache.Open(dir, cache.Options{}, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if err := s.Healthy(); err != nil {
		t.Fatalf("a fresh store: %v", err)
	}
	tmp := filepath.Join(dir, "tmp")
	if err := os.Remove(tmp); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(tmp, nil, 0o640); err != nil {
		t.Fatal(err)
	}
	if err := s.Healthy(); err == nil {
		t.Fatal("healthy with tmp/ a regular file, where no download can write")
	}
}
