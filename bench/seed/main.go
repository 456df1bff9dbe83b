// Command seed is the seeder of bench/run.sh: it pushes the three test images
// into a registry (plain HTTP) and prints what it pushed as one JSON object.
//
//	seed -registry 127.0.0.1:5001 -big 200000000 -small 3000000 -layers 50 -fifty 50000000 -blob-out www/blob
//
// The images, all of pseudo-random bytes (ChaCha8, so they do not compress),
// each layer of a different seed:
//
//	library/big:latest    one layer of -big bytes (also written to -blob-out)
//	library/small:latest  one layer of -small bytes
//	library/fifty:latest  -layers layers of -fifty/-layers bytes each
//
// The output names each image's manifest, config and layer digests and its
// size in bytes (config and layers):
//
//	{"big":{"ref":"library/big:latest","manifest":"sha256:…","config":"sha256:…","layers":["sha256:…"],"bytes":200000412}, "small":{…}, "fifty":{…}}
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"log"
	"math/rand/v2"
	"os"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

type pushed struct {
	Ref      string   `json:"ref"`
	Manifest string   `json:"manifest"`
	Config   string   `json:"config"`
	Layers   []string `json:"layers"`
	Bytes    int64    `json:"bytes"`
}

func main() {
	log.SetFlags(0)
	log.SetPrefix("seed: ")
	registry := flag.String("registry", "127.0.0.1:5001", "registry host:port (plain HTTP)")
	big := flag.Int("big", 200_000_000, "bytes of library/big's one layer")
	small := flag.Int("small", 3_000_000, "bytes of library/small's one layer")
	layers := flag.Int("layers", 50, "number of library/fifty's layers")
	fifty := flag.Int("fifty", 50_000_000, "bytes of library/fifty's layers in all")
	blobOut := flag.String("blob-out", "", "if set, also write library/big's layer to this file")
	flag.Parse()
	if *layers < 1 {
		log.Fatal("-layers must be at least 1")
	}

	ctx := context.Background()
	out := map[string]pushed{}
	images := []struct {
		key     string
		n, size int
		seed    uint64
	}{
		{"big", 1, *big, 1},
		{"small", 1, *small, 2},
		{"fifty", *layers, *fifty / *layers, 3},
	}
	for _, im := range images {
		repo := "library/" + im.key + ":latest"
		ref, err := name.ParseReference(*registry+"/"+repo, name.Insecure)
		if err != nil {
			log.Fatal(err)
		}
		img, data, err := image(im.n, im.size, im.seed)
		if err != nil {
			log.Fatal(err)
		}
		if im.key == "big" && *blobOut != "" {
			if err := os.WriteFile(*blobOut, data, 0o644); err != nil {
				log.Fatal(err)
			}
		}
		if err := remote.Write(ref, img, remote.WithContext(ctx)); err != nil {
			log.Fatalf("push %s: %v", ref, err)
		}
		p, err := describe(repo, img)
		if err != nil {
			log.Fatal(err)
		}
		out[im.key] = p
	}
	if err := json.NewEncoder(os.Stdout).Encode(out); err != nil {
		log.Fatal(err)
	}
}

// image builds an image of n layers of size pseudo-random bytes each; it also
// returns the last layer's bytes.
func image(n, size int, seed uint64) (v1.Image, []byte, error) {
	var key [32]byte
	for i := range 8 {
		key[i] = byte(seed >> (8 * i))
	}
	rng := rand.NewChaCha8(key)
	img := empty.Image
	var b []byte
	for range n {
		b = make([]byte, size)
		rng.Read(b)
		var err error
		if img, err = mutate.AppendLayers(img, static.NewLayer(b, types.DockerLayer)); err != nil {
			return nil, nil, err
		}
	}
	return img, b, nil
}

func describe(repo string, img v1.Image) (pushed, error) {
	p := pushed{Ref: repo}
	d, err := img.Digest()
	if err != nil {
		return p, err
	}
	p.Manifest = d.String()
	m, err := img.Manifest()
	if err != nil {
		return p, err
	}
	p.Config = m.Config.Digest.String()
	p.Bytes = m.Config.Size
	for _, l := range m.Layers {
		p.Layers = append(p.Layers, l.Digest.String())
		p.Bytes += l.Size
	}
	if len(p.Layers) == 0 {
		return p, fmt.Errorf("%s: no layers", repo)
	}
	return p, nil
}
