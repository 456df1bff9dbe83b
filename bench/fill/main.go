// Command fill does, alone, the work a mirror cannot avoid when it stores a
// blob it downloads: it GETs the blob, hashes every byte, writes it to a new
// file in the pieces the mirror writes (256 KiB, at offsets that are
// multiples of it), fsyncs the file, renames it into place and fsyncs the
// directory. bench/herd.sh and bench/run.sh run it beside the warm herd (the
// same clients served from the cache): a cold herd's work done apart, by two
// programs that do not coordinate, against which the cold herd's own cost
// tells what its coordination costs.
//
//	fill -url http://127.0.0.1:5001/v2/big/blobs/sha256:HEX -dir DIR
//
// It checks the bytes against the digest at the URL's end and prints one
// line, "bytes N cpu_ns N wall_ns N", its CPU being its own user and system
// time (getrusage), from start to exit.
package main

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net/http"
	"os"
	"path"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// pieceSize is proxy.pieceSize: what the mirror reads and writes at a time.
const pieceSize = 256 << 10

func main() {
	url := flag.String("url", "", "the blob's URL, ending in its sha256 digest (required)")
	dir := flag.String("dir", "", "directory to store the blob in (required)")
	flag.Parse()
	if *url == "" || *dir == "" {
		log.Fatal("fill: -url and -dir are required")
	}
	start := time.Now()
	n, err := fill(*url, *dir)
	if err != nil {
		log.Fatalf("fill: %v", err)
	}
	wall := time.Since(start)
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		log.Fatalf("fill: getrusage: %v", err)
	}
	cpu := time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	fmt.Printf("bytes %d cpu_ns %d wall_ns %d\n", n, cpu.Nanoseconds(), wall.Nanoseconds())
}

// fill stores the blob at url under dir as the mirror would, and returns its
// length.
func fill(url, dir string) (int64, error) {
	want, ok := strings.CutPrefix(path.Base(url), "sha256:")
	if !ok {
		return 0, fmt.Errorf("%s does not end in a sha256 digest", url)
	}
	resp, err := http.Get(url)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return 0, fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	tmp, err := os.CreateTemp(dir, "fill-*")
	if err != nil {
		return 0, err
	}
	defer os.Remove(tmp.Name()) // fails once renamed
	defer tmp.Close()

	h := sha256.New()
	buf := make([]byte, pieceSize)
	var n int64
	for {
		k, rerr := io.ReadFull(resp.Body, buf)
		h.Write(buf[:k])
		if _, err := tmp.Write(buf[:k]); err != nil {
			return n, err
		}
		n += int64(k)
		if errors.Is(rerr, io.EOF) || errors.Is(rerr, io.ErrUnexpectedEOF) {
			break
		}
		if rerr != nil {
			return n, rerr
		}
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != want {
		return n, fmt.Errorf("%s: got sha256:%s", url, got)
	}
	if err := tmp.Sync(); err != nil {
		return n, err
	}
	if err := tmp.Close(); err != nil {
		return n, err
	}
	if err := os.Rename(tmp.Name(), filepath.Join(dir, want)); err != nil {
		return n, err
	}
	d, err := os.Open(dir)
	if err != nil {
		return n, err
	}
	defer d.Close()
	return n, d.Sync()
}
