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

// Pin is an image kept out of eviction.
type Pin struct {
	Registry string    `json:"registry"` // e.g. docker.io
	Repo     string    `json:"repo"`     // e.g. library/alpine
	Ref      string    `json:"ref"`      // the tag or digest as pinned
	Digest   v1.Hash   `json:"digest"`   // what the ref resolved to when pinned
	PinnedAt time.Time `json:"pinned_at"`
}

// Pin keeps the manifest p.Digest, and everything it refers to, out of
// eviction. Pinning the same ref again moves the pin to the new digest.
func (s *Store) Pin(p Pin) error {
	if err := checkHash(p.Digest); err != nil {
		return err
	}
	if p.PinnedAt.IsZero() {
		p.PinnedAt = s.opt.Now()
	}
	v, err := json.Marshal(p)
	if err != nil {
		return err
	}
	if err := s.db.Update(func(txn *badger.Txn) error { return txn.Set(pinKey(p.Registry, p.Repo, p.Ref), v) }); err != nil {
		return fmt.Errorf("pin %s/%s:%s: %w", p.Registry, p.Repo, p.Ref, err)
	}
	return nil
}

// Unpin removes a pin. It returns ErrNotFound when there is none.
func (s *Store) Unpin(registry, repo, ref string) error {
	key := pinKey(registry, repo, ref)
	err := s.db.Update(func(txn *badger.Txn) error {
		if _, err := txn.Get(key); err != nil {
			return err
		}
		return txn.Delete(key)
	})
	if err == badger.ErrKeyNotFound {
		return fmt.Errorf("pin %s/%s:%s: %w", registry, repo, ref, ErrNotFound)
	}
	if err != nil {
		return fmt.Errorf("unpin %s/%s:%s: %w", registry, repo, ref, err)
	}
	return nil
}

// Pins lists the pins, sorted by registry, repository and ref.
func (s *Store) Pins() ([]Pin, error) {
	var pins []Pin
	err := s.db.View(func(txn *badger.Txn) error {
		return scan(txn, prefixPin, func(_, v []byte) error {
			var p Pin
			if err := json.Unmarshal(v, &p); err == nil {
				pins = append(pins, p)
			}
			return nil
		})
	})
	if err != nil {
		return nil, fmt.Errorf("list pins: %w", err)
	}
	return pins, nil
}

// manifestRefs lists what a manifest or index refers to: its config and
// layers, or its manifests. Anything else (a blob, JSON of another shape)
// refers to nothing.
func manifestRefs(body []byte) []v1.Hash {
	var m struct {
		Config    *struct{ Digest string }  `json:"config"`
		Layers    []struct{ Digest string } `json:"layers"`
		Manifests []struct{ Digest string } `json:"manifests"`
	}
	if json.Unmarshal(body, &m) != nil {
		return nil
	}
	var refs []v1.Hash
	add := func(d string) {
		if h, err := v1.NewHash(d); err == nil && checkHash(h) == nil {
			refs = append(refs, h)
		}
	}
	if m.Config != nil {
		add(m.Config.Digest)
	}
	for _, l := range m.Layers {
		add(l.Digest)
	}
	for _, d := range m.Manifests {
		add(d.Digest)
	}
	return refs
}

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
				if strings.HasPrefix(p.Ref, "sha256:") {
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
			if !ok || i <= 0 || json.Unmarshal(v, &a) != nil {
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
	raw, ok := rawOf(img.Digest)
	if !ok {
		return
	}
	root := t.find(raw)
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
