// Command offlinepull is the client of bench/offline.sh: it seeds an image of
// many small layers into a registry, and times whole pulls of it with
// go-containerregistry's remote, as a client pulling through the mirror sees
// them.
//
//	offlinepull seed -registry 127.0.0.1:5001 -image library/fifty:latest -layers 50 -size 5000000
//	offlinepull pull -registry 127.0.0.1:5000 -image library/fifty:latest -want sha256:… -n 20
//
// seed prints the image's manifest digest. pull prints one line per pull
// ("pull i: 12.3 ms") and then "median … ms, p95 … ms, min … ms, max … ms";
// with -for 10s it pulls again and again for that long instead of -n times.
// Each pull is a new client (fresh connections, as a new `docker pull` or
// `crane pull` process has): GET the manifest by tag, then the config and
// every layer, three at a time (Docker's default max-concurrent-downloads),
// each read to the end and checked against its digest by remote's verifying
// reader.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"math/rand/v2"
	"net/http"
	"os"
	"slices"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"golang.org/x/sync/errgroup"
)

func main() {
	log.SetFlags(0)
	log.SetPrefix("offlinepull: ")
	if len(os.Args) < 2 {
		log.Fatal("usage: offlinepull seed|pull [flags]")
	}
	fs := flag.NewFlagSet(os.Args[1], flag.ExitOnError)
	registry := fs.String("registry", "127.0.0.1:5000", "registry host:port (plain HTTP)")
	image := fs.String("image", "library/fifty:latest", "repository:tag")
	layers := fs.Int("layers", 50, "seed: number of layers")
	size := fs.Int("size", 5_000_000, "seed: total bytes of the layers")
	seed := fs.Uint64("seed", 1, "seed: seed of the layers' pseudo-random bytes")
	want := fs.String("want", "", "pull: the manifest digest every pull must get")
	n := fs.Int("n", 20, "pull: number of pulls")
	soak := fs.Duration("for", 0, "pull: if set, pull again and again for this long instead of -n times")
	fs.Parse(os.Args[2:])
	ref, err := name.ParseReference(*registry+"/"+*image, name.Insecure)
	if err != nil {
		log.Fatal(err)
	}
	ctx := context.Background()
	switch os.Args[1] {
	case "seed":
		err = seedImage(ctx, ref, *layers, *size, *seed)
	case "pull":
		err = pulls(ctx, ref, *want, *n, *soak)
	default:
		err = fmt.Errorf("unknown command %q", os.Args[1])
	}
	if err != nil {
		log.Fatal(err)
	}
}

// seedImage pushes an image of n layers of size/n incompressible bytes each.
func seedImage(ctx context.Context, ref name.Reference, n, size int, seed uint64) error {
	var key [32]byte
	for i := range 8 {
		key[i] = byte(seed >> (8 * i))
	}
	rng := rand.NewChaCha8(key)
	img := empty.Image
	for range n {
		b := make([]byte, size/n)
		rng.Read(b)
		var err error
		if img, err = mutate.AppendLayers(img, static.NewLayer(b, types.DockerLayer)); err != nil {
			return err
		}
	}
	if err := remote.Write(ref, img, remote.WithContext(ctx)); err != nil {
		return fmt.Errorf("push %s: %w", ref, err)
	}
	d, err := img.Digest()
	if err != nil {
		return err
	}
	fmt.Println(d)
	return nil
}

func pulls(ctx context.Context, ref name.Reference, want string, n int, soak time.Duration) error {
	if n < 1 && soak <= 0 {
		return errors.New("-n must be at least 1")
	}
	var took []time.Duration
	begin := time.Now()
	for i := 0; soak > 0 && time.Since(begin) < soak || soak <= 0 && i < n; i++ {
		start := time.Now()
		bytes, err := pull(ctx, ref, want)
		if err != nil {
			return fmt.Errorf("pull %d: %w", i+1, err)
		}
		d := time.Since(start)
		took = append(took, d)
		fmt.Printf("pull %d: %.1f ms, %d bytes\n", i+1, ms(d), bytes)
	}
	n = len(took)
	slices.Sort(took)
	// Median of the middle two for an even count; p95 by nearest rank.
	med := (took[(n-1)/2] + took[n/2]) / 2
	p95 := took[(95*n+99)/100-1]
	fmt.Printf("median %.1f ms, p95 %.1f ms, min %.1f ms, max %.1f ms (%d pulls)\n", ms(med), ms(p95), ms(took[0]), ms(took[n-1]), n)
	return nil
}

// pull fetches the whole image with a client of its own and returns the
// bytes of config and layers it read.
func pull(ctx context.Context, ref name.Reference, want string) (int64, error) {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	defer tr.CloseIdleConnections()
	img, err := remote.Image(ref, remote.WithContext(ctx), remote.WithTransport(tr))
	if err != nil {
		return 0, err
	}
	d, err := img.Digest()
	if err != nil {
		return 0, err
	}
	if want != "" && d.String() != want {
		return 0, fmt.Errorf("got manifest %s, want %s", d, want)
	}
	raw, err := img.RawConfigFile()
	if err != nil {
		return 0, err
	}
	ls, err := img.Layers()
	if err != nil {
		return 0, err
	}
	sizes := make([]int64, len(ls))
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(3)
	for i, l := range ls {
		g.Go(func() error {
			if gctx.Err() != nil {
				return gctx.Err()
			}
			var err error
			sizes[i], err = readLayer(l)
			return err
		})
	}
	if err := g.Wait(); err != nil {
		return 0, err
	}
	total := int64(len(raw))
	for _, s := range sizes {
		total += s
	}
	return total, nil
}

// readLayer reads a layer to the end; remote's reader fails on a digest mismatch.
func readLayer(l v1.Layer) (int64, error) {
	rc, err := l.Compressed()
	if err != nil {
		return 0, err
	}
	defer rc.Close()
	return io.Copy(io.Discard, rc)
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
