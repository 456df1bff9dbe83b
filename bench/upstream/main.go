// Command upstream is the upstream registry of regmirror's benchmarks: an
// in-memory go-containerregistry registry on a loopback address, seeded with
// one large incompressible blob as the only layer of an image, that counts
// every request it gets.
//
// It prints the blob's digest on stdout once it is ready to serve. Request
// counts ("METHOD /path" → n) are at GET /_counts; DELETE /_counts zeroes
// them. The requests of the seeding itself are not counted.
//
//	go run ./bench/upstream -addr 127.0.0.1:5001 -size 200000000
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"sync"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:5001", "listen address (loopback)")
	size := flag.Int64("size", 200_000_000, "size of the seeded blob in bytes")
	seed := flag.Uint64("seed", 1, "seed of the blob's pseudo-random bytes")
	image := flag.String("image", "library/big:latest", "repository:tag the blob is pushed under")
	blobOut := flag.String("blob-out", "", "if set, also write the blob's bytes to this file")
	flag.Parse()
	log.SetFlags(0)
	log.SetPrefix("bench upstream: ")
	if err := run(*addr, *size, *seed, *image, *blobOut); err != nil {
		log.Fatal(err)
	}
}

func run(addr string, size int64, seed uint64, image, blobOut string) error {
	data := blobBytes(size, seed)
	layer := static.NewLayer(data, types.DockerLayer)
	digest, err := layer.Digest()
	if err != nil {
		return err
	}
	if blobOut != "" {
		if err := os.WriteFile(blobOut, data, 0o644); err != nil {
			return err
		}
	}

	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	c := &counter{counts: map[string]int{}}
	blobs := &seededBlobs{mem: registry.NewInMemoryBlobHandler(), digest: digest, data: data}
	reg := registry.New(registry.Logger(log.New(io.Discard, "", 0)), registry.WithBlobHandler(blobs))
	srv := &http.Server{Handler: c.wrap(reg), ReadHeaderTimeout: 10 * time.Second}
	go func() {
		if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
			log.Fatal(err)
		}
	}()

	// Push the image through the registry's own API. The layer is already
	// in the blob handler, so remote.Write finds it by HEAD and uploads only
	// the config and the manifest.
	ref, err := name.ParseReference(ln.Addr().String()+"/"+image, name.Insecure)
	if err != nil {
		return err
	}
	img, err := mutate.AppendLayers(empty.Image, layer)
	if err != nil {
		return err
	}
	if err := remote.Write(ref, img); err != nil {
		return fmt.Errorf("seed %s: %w", ref, err)
	}
	c.reset()
	log.Printf("serving %s on http://%s, blob %s (%d bytes)", image, ln.Addr(), digest, size)
	fmt.Println(digest)
	select {}
}

// blobBytes returns size deterministic pseudo-random bytes: the same seed
// gives the same blob, and it does not compress.
func blobBytes(size int64, seed uint64) []byte {
	var key [32]byte
	for i := range 8 {
		key[i] = byte(seed >> (8 * i))
	}
	b := make([]byte, size)
	rand.NewChaCha8(key).Read(b)
	return b
}

// seededBlobs serves the seeded blob from its slice, without a copy, and
// keeps every other blob (the config pushed by remote.Write) in memory.
type seededBlobs struct {
	mem    registry.BlobHandler // also a BlobStatHandler and BlobPutHandler
	digest v1.Hash
	data   []byte
}

func (s *seededBlobs) Get(ctx context.Context, repo string, h v1.Hash) (io.ReadCloser, error) {
	if h == s.digest {
		return io.NopCloser(bytes.NewReader(s.data)), nil
	}
	return s.mem.Get(ctx, repo, h)
}

func (s *seededBlobs) Stat(ctx context.Context, repo string, h v1.Hash) (int64, error) {
	if h == s.digest {
		return int64(len(s.data)), nil
	}
	return s.mem.(registry.BlobStatHandler).Stat(ctx, repo, h)
}

func (s *seededBlobs) Put(ctx context.Context, repo string, h v1.Hash, rc io.ReadCloser) error {
	return s.mem.(registry.BlobPutHandler).Put(ctx, repo, h, rc)
}

// counter counts requests by method and path, and serves the counts.
type counter struct {
	mu     sync.Mutex
	counts map[string]int
}

func (c *counter) wrap(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/_counts" {
			c.serveCounts(w, r)
			return
		}
		c.mu.Lock()
		c.counts[r.Method+" "+r.URL.Path]++
		c.mu.Unlock()
		h.ServeHTTP(w, r)
	})
}

func (c *counter) serveCounts(w http.ResponseWriter, r *http.Request) {
	switch r.Method {
	case http.MethodGet:
		c.mu.Lock()
		body, err := json.Marshal(c.counts)
		c.mu.Unlock()
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.Write(append(body, '\n'))
	case http.MethodDelete:
		c.reset()
		w.WriteHeader(http.StatusNoContent)
	default:
		w.Header().Set("Allow", "GET, DELETE")
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
	}
}

func (c *counter) reset() {
	c.mu.Lock()
	clear(c.counts)
	c.mu.Unlock()
}
