package cache

import (
	"encoding/json"
	"fmt"
	"time"

	"github.com/dgraph-io/badger/v4"
	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// Pin is an image kept out of eviction.
type Pin struct {
	Registry string  `json:"registry"` // e.g. docker.io
	Repo     string  `json:"repo"`     // e.g. library/alpine
	Ref      string  `json:"ref"`      // the tag or digest as pinned
	Digest   v1.Hash `json:"digest"`   // what the ref resolved to when pinned
	// Also are more manifests kept with it, and all they refer to: the
	// referrers answers (indexes of its signatures, SBOMs …) of its manifests.
	Also     []v1.Hash `json:"also,omitempty"`
	PinnedAt time.Time `json:"pinned_at"`
}

// Pin keeps the manifest p.Digest and those of p.Also, and everything they
// refer to, out of eviction. Pinning the same ref again moves the pin.
func (s *Store) Pin(p Pin) error {
	for _, h := range append([]v1.Hash{p.Digest}, p.Also...) {
		if err := checkHash(h); err != nil {
			return err
		}
	}
	if p.PinnedAt.IsZero() {
		p.PinnedAt = s.opt.Now()
	}
	v, err := json.Marshal(p)
	if err != nil {
		return err
	}
	key := pinKey(p.Registry, p.Repo, p.Ref)
	if err := s.db.Update(func(txn *badger.Txn) error { return s.setRecord(txn, key, v) }); err != nil {
		return fmt.Errorf("pin %s/%s:%s: %w", p.Registry, p.Repo, p.Ref, err)
	}
	s.recordChanged(key)
	return nil
}

// Unpin removes a pin. It returns ErrNotFound when there is none.
func (s *Store) Unpin(registry, repo, ref string) error {
	key := pinKey(registry, repo, ref)
	err := s.db.Update(func(txn *badger.Txn) error {
		if _, err := txn.Get(key); err != nil {
			return err
		}
		return s.setRecord(txn, key, nil)
	})
	if err == badger.ErrKeyNotFound {
		return fmt.Errorf("pin %s/%s:%s: %w", registry, repo, ref, ErrNotFound)
	}
	if err != nil {
		return fmt.Errorf("unpin %s/%s:%s: %w", registry, repo, ref, err)
	}
	s.recordChanged(key)
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
