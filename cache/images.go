package cache

import (
	"cmp"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/dgraph-io/badger/v4"
	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// Image is a cached image as `regmirror ls` shows it: a tag answer or a pin,
// with the bytes of it that are stored.
type Image struct {
	Registry string    `json:"registry"`
	Repo     string    `json:"repo"`
	Ref      string    `json:"ref"` // a tag, or a digest for a pin by digest
	Digest   v1.Hash   `json:"digest"`
	Bytes    int64     `json:"bytes"`    // stored bytes of the image and all it refers to
	Objects  int       `json:"objects"`  // stored objects of it
	Missing  int       `json:"missing"`  // objects it refers to that are not stored
	LastUsed time.Time `json:"last_use"` // the latest use of the image (zero if never)
	Pinned   bool      `json:"pinned"`
}

// Images lists every image the store knows by tag or pin, with what of it
// is stored, sorted by registry, repository and ref.
func (s *Store) Images() ([]Image, error) {
	t, err := s.loadTable()
	if err != nil {
		return nil, err
	}
	children := make(map[int32][]int32)
	for _, e := range t.edges {
		children[e[0]] = append(children[e[0]], e[1])
	}
	pinned := map[string]bool{}
	var out []Image
	err = s.db.View(func(txn *badger.Txn) error {
		if err := scan(txn, prefixPin, func(_, v []byte) error {
			var p Pin
			if json.Unmarshal(v, &p) == nil {
				pinned[p.Registry+"/"+p.Repo+":"+p.Ref] = true
				if h, err := v1.NewHash(p.Ref); err == nil && CheckDigest(h) == nil { // a pin by digest
					out = append(out, Image{Registry: p.Registry, Repo: p.Repo, Ref: p.Ref, Digest: p.Digest})
				}
			}
			return nil
		}); err != nil {
			return err
		}
		return scan(txn, prefixTag, func(key, v []byte) error {
			var a TagAnswer
			registry, rest, ok := strings.Cut(string(key), "/")
			i := strings.LastIndexByte(rest, ':')
			if !ok || i <= 0 || strings.Contains(rest[i+1:], "/") || json.Unmarshal(v, &a) != nil {
				// A name no tag can have ('/') is an answer kept for another
				// request (the proxy's referrers answers), not an image.
				return nil
			}
			out = append(out, Image{Registry: registry, Repo: rest[:i], Ref: rest[i+1:], Digest: a.Digest})
			return nil
		})
	})
	if err != nil {
		return nil, fmt.Errorf("list images: %w", err)
	}
	for i := range out {
		img := &out[i]
		img.Pinned = pinned[img.Registry+"/"+img.Repo+":"+img.Ref]
		t.measure(img, children)
	}
	slices.SortFunc(out, func(a, b Image) int {
		return cmp.Or(cmp.Compare(a.Registry, b.Registry), cmp.Compare(a.Repo, b.Repo), cmp.Compare(a.Ref, b.Ref))
	})
	return out, nil
}

// measure adds up what of img is stored, walking down from its manifest.
func (t *table) measure(img *Image, children map[int32][]int32) {
	r, ok := rawOf(img.Digest)
	if !ok {
		return
	}
	root := t.find(&r)
	if root < 0 {
		img.Missing = 1
		return
	}
	seen := map[int32]bool{}
	var visit func(i int32)
	visit = func(i int32) {
		if seen[i] {
			return
		}
		seen[i] = true
		o := t.objs[i]
		img.Bytes += o.size
		img.Objects++
		img.Missing += int(o.absent)
		for _, c := range children[i] {
			visit(c)
		}
	}
	visit(int32(root))
	img.LastUsed = time.Unix(0, t.objs[root].last)
	if t.objs[root].last == 0 {
		img.LastUsed = time.Time{}
	}
}
