package cache

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"testing"

	"github.com/dgraph-io/badger/v4"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"go.uber.org/zap"
)

func TestRecordRoundTrips(t *testing.T) {
	for _, info := range []Info{
		{Size: 0}, {Size: 16, MediaType: "application/octet-stream"},
		{Size: 1 << 40, MediaType: "application/vnd.oci.image.manifest.v1+json"},
	} {
		got, err := decodeRecord(encodeRecord(info))
		if err != nil || got != info {
			t.Errorf("decodeRecord(encodeRecord(%+v)) = %+v, %v", info, got, err)
		}
		if size, err := recordSize(encodeRecord(info)); err != nil || size != info.Size {
			t.Errorf("recordSize(encodeRecord(%+v)) = %d, %v", info, size, err)
		}
	}
	for _, bad := range []string{"", "\x01", "\x01\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff", `{"size":-1}`, `{"size":"1"}`, "\x02abc"} {
		if info, err := decodeRecord([]byte(bad)); err == nil {
			t.Errorf("decodeRecord(%q) = %+v, want an error", bad, info)
		}
		if _, err := recordSize([]byte(bad)); err == nil {
			t.Errorf("recordSize(%q): want an error", bad)
		}
	}
}

// A store written before records were binary holds JSON records; it must
// still serve, count and evict them.
func TestJSONRecordsOfAnOlderStoreStillCount(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(dir, Options{}, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	body := []byte("an older store's blob")
	sum := sha256.Sum256(body)
	h := v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(sum[:])}
	w, err := s.Create(h, int64(len(body)), "application/octet-stream")
	if err != nil {
		t.Fatal(err)
	}
	w.Write(body)
	if err := w.Commit(); err != nil {
		t.Fatal(err)
	}
	old := `{"size":21,"media_type":"application/x-old"}`
	if err := s.db.Update(func(txn *badger.Txn) error { return txn.Set(blobKey(h), []byte(old)) }); err != nil {
		t.Fatal(err)
	}
	if info, err := s.info(h); err != nil || info != (Info{Size: 21, MediaType: "application/x-old"}) {
		t.Fatalf("info = %+v, %v", info, err)
	}
	if err := s.Reconcile(t.Context()); err != nil {
		t.Fatal(err)
	}
	if u := s.Usage(); u.Objects != 1 || u.Bytes != 21 {
		t.Fatalf("after reconcile: %+v, want 1 object of 21 bytes", u)
	}
	tb, err := s.loadTable()
	if err != nil || len(tb.objs) != 1 || tb.objs[0].size != 21 {
		t.Fatalf("eviction table %+v, %v", tb, err)
	}
}

func TestHexRaw(t *testing.T) {
	for id, a := range algorithms {
		sum := Sum(a.name, []byte("x"))
		want, _ := hex.DecodeString(sum.Hex)
		lower := sum.Hex
		r, ok := hexRaw(uint8(id), lower)
		if !ok || !bytes.Equal(r.bytes(), want) || r.hash() != sum {
			t.Fatalf("hexRaw(%s) = %x, %v", lower, r.bytes(), ok)
		}
		if k, ok := keyRaw([]byte(sum.String())); !ok || k != r {
			t.Fatalf("keyRaw(%s) = %x, %v", sum, k.bytes(), ok)
		}
		upper := []byte(lower)
		upper[5] = 'A'
		for _, bad := range []string{lower[:len(lower)-1], lower + "0", string(upper), lower[:10] + "g" + lower[11:], lower[:10] + "/" + lower[11:], ""} {
			if _, ok := hexRaw(uint8(id), bad); ok {
				t.Errorf("hexRaw(%q) accepted", bad)
			}
		}
	}
	h256 := Sum("sha256", []byte("x"))
	for _, bad := range []string{"sha512:" + h256.Hex, "md5:" + h256.Hex[:32], "sha256" + h256.Hex, ":" + h256.Hex} {
		if _, ok := keyRaw([]byte(bad)); ok {
			t.Errorf("keyRaw(%q) accepted", bad)
		}
	}
}

// A damaged record cannot make a stored manifest look larger than it is.
func TestManifestSizeIsTheFilesOwn(t *testing.T) {
	s, err := Open(t.TempDir(), Options{}, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	body := []byte(`{"schemaVersion":2}`)
	sum := sha256.Sum256(body)
	h := v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(sum[:])}
	if err := s.PutManifest(h, body, "application/vnd.oci.image.manifest.v1+json"); err != nil {
		t.Fatal(err)
	}
	huge := encodeRecord(Info{Size: 1 << 40, MediaType: "application/vnd.oci.image.manifest.v1+json"})
	if err := s.db.Update(func(txn *badger.Txn) error { return txn.Set(blobKey(h), huge) }); err != nil {
		t.Fatal(err)
	}
	s.manifests.Remove(h)
	got, info, err := s.Manifest(t.Context(), h, 4<<20)
	if err != nil || string(got) != string(body) || info.Size != int64(len(body)) {
		t.Fatalf("Manifest = %q, %+v, %v; want the body and its own size", got, info, err)
	}
	if info.MediaType != "application/vnd.oci.image.manifest.v1+json" {
		t.Errorf("media type %q, want the record's", info.MediaType)
	}
}
