package cache

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"testing"

	"github.com/dgraph-io/badger/v4"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"go.uber.org/zap"
)

// FuzzIndexRecords stores arbitrary bytes as a tag answer and as the blob
// record of a stored manifest, then reads them back through the store's own
// decoding, as a damaged or hand-edited index would be read. Nothing
// panics; a tag answer that decodes names no digest that could reach
// outside the store; a manifest is served with its own bytes and size
// whatever its record says.
func FuzzIndexRecords(f *testing.F) {
	s, err := Open(f.TempDir(), Options{}, zap.NewNop())
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { s.Close() })
	body := []byte(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json"}`)
	sum := sha256.Sum256(body)
	h := v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(sum[:])}
	if err := s.PutManifest(h, body, "application/vnd.oci.image.manifest.v1+json"); err != nil {
		f.Fatal(err)
	}
	const max = 4 << 20

	for _, seed := range []string{
		`{"digest":"sha256:` + h.Hex + `","media_type":"application/vnd.oci.image.index.v1+json","size":527,"learned_at":"2026-01-01T00:00:00Z"}`,
		`{"size":123,"media_type":"application/vnd.oci.image.manifest.v1+json"}`,
		`{}`, `null`, ``, `[]`, `{"size":-1}`, `{"size":99999999999}`, `{"size":1e400}`, `{"size":"12"}`,
		`{"digest":"sha256:../../../etc/passwd"}`, `{"digest":"sha256:` + h.Hex[:10] + `"}`, `{"digest":"md5:abc"}`,
		`{"digest":"SHA256:` + h.Hex + `"}`, `{"digest":null}`, `{"digest":1}`, `{"learned_at":"yesterday"}`,
		`{"digest":"sha256:` + h.Hex + `","digest":"x"}`, "\xff\xfe", `{"media_type":"\u0000"}`,
		"\x01\x4fapplication/vnd.oci.image.manifest.v1+json", "\x01", "\x01\xff\xff\xff\xff\xff\xff\xff\xff\x7f", "\x01\x00",
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, value []byte) {
		// A tag answer.
		key := tagKey("docker.io", "library/app", "t")
		if err := s.db.Update(func(txn *badger.Txn) error { return txn.Set(key, value) }); err != nil {
			t.Fatal(err)
		}
		s.tags.Remove(string(key))
		a, err := s.Tag("docker.io", "library/app", "t")
		// A record that does not decode to a usable digest is no answer
		// (ErrNotFound), so upstream is asked again and its answer replaces it.
		if err == nil && checkHash(a.Digest) != nil {
			t.Fatalf("tag answer %q decoded to digest %q", value, a.Digest)
		}
		if err != nil && !errors.Is(err, ErrNotFound) {
			t.Fatalf("tag answer %q: %v, want an answer or ErrNotFound", value, err)
		}

		// The blob record of a stored manifest.
		if err := s.db.Update(func(txn *badger.Txn) error { return txn.Set(blobKey(h), value) }); err != nil {
			t.Fatal(err)
		}
		s.manifests.Remove(h)
		fl, info, err := s.Open(t.Context(), h)
		if err != nil {
			t.Fatalf("blob record %q: Open: %v", value, err)
		}
		fl.Close()
		if info.Size < 0 {
			t.Fatalf("blob record %q: size %d", value, info.Size)
		}
		got, _, err := s.Manifest(t.Context(), h, max)
		switch {
		case err == nil && !bytes.Equal(got, body):
			t.Fatalf("blob record %q: manifest served with other bytes: %q", value, got)
		case err != nil:
			t.Fatalf("blob record %q: Manifest: %v", value, err)
		}
	})
}
