package main

import (
	"io"
	"net"
	"os"
	"strings"
	"testing"
)

// With the cache in a bucket, the data dir alone is not a cache: verify
// without a running mirror refuses, rather than open it as a disk cache.
func TestVerifyWithoutMirrorRefusesABucketsDataDir(t *testing.T) {
	dir := t.TempDir()
	t.Setenv("REGMIRROR_STORAGE", "s3")
	t.Setenv("REGMIRROR_S3_BUCKET", "cache")
	t.Setenv("REGMIRROR_DATA_DIR", dir)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := "http://" + l.Addr().String()
	l.Close() // nobody answers there: connection refused

	err = runAdmin("verify", []string{"-admin", closed}, io.Discard, io.Discard)
	if err == nil || !strings.Contains(err.Error(), "REGMIRROR_STORAGE=s3") {
		t.Fatalf("verify = %v, want a refusal naming REGMIRROR_STORAGE=s3", err)
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 0 {
		t.Errorf("verify touched the data dir: %v", entries)
	}
}
