package cache

import (
	"bytes"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/hex"
	"fmt"
	"hash"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// algorithm is a digest algorithm the store names content by: its files live
// under blobs/<name>/, its keys are "<name>:<hex>".
type algorithm struct {
	name string
	size int // bytes of a raw digest
	new  func() hash.Hash
	// refs is the index prefix of what a manifest refers to by digests of
	// this algorithm, size raw bytes each.
	refs string
}

// algorithms are the ones the store knows, in key order ("sha256" <
// "sha512"), which is the order of every scan over keys and files. An
// algorithm's place in it is its id in raw.
var algorithms = [...]algorithm{
	{name: "sha256", size: sha256.Size, new: sha256.New, refs: prefixRefs},
	{name: "sha512", size: sha512.Size, new: sha512.New, refs: prefixRefs512},
}

// algorithmOf returns the id of the algorithm named name.
func algorithmOf(name string) (uint8, bool) {
	for i := range algorithms {
		if algorithms[i].name == name {
			return uint8(i), true
		}
	}
	return 0, false
}

// CheckDigest accepts the digests the store names content by: sha256 or
// sha512 with their hex in lower case, the spelling of its keys and file
// names. Anything else is ErrUnsupportedDigest.
func CheckDigest(h v1.Hash) error {
	if _, ok := rawOf(h); !ok {
		return fmt.Errorf("%w: %q", ErrUnsupportedDigest, h.String())
	}
	return nil
}

// checkHash is CheckDigest.
func checkHash(h v1.Hash) error { return CheckDigest(h) }

// Sum is the digest of b by algorithm alg ("sha256", "sha512"); an
// algorithm the store does not know hashes by sha256.
func Sum(alg string, b []byte) v1.Hash {
	a := algorithms[0]
	if i, ok := algorithmOf(alg); ok {
		a = algorithms[i]
	}
	hs := a.new()
	hs.Write(b)
	return v1.Hash{Algorithm: a.name, Hex: hex.EncodeToString(hs.Sum(nil))}
}

// raw is a digest in raw form: the algorithm's id and its bytes, a sha256
// digest in the first 32. It is the form of scans and merges; the eviction
// table keeps the first 32 bytes only (see table).
type raw struct {
	alg uint8
	b   [sha512.Size]byte
}

// head is the first 32 bytes: a sha256 digest whole, half of a sha512 one.
func (r *raw) head() [32]byte { return [32]byte(r.b[:32]) }

// tail is the second half of a sha512 digest (zero for sha256).
func (r *raw) tail() [32]byte { return [32]byte(r.b[32:]) }

func (r *raw) bytes() []byte { return r.b[:algorithms[r.alg].size] }

func (r *raw) hash() v1.Hash {
	return v1.Hash{Algorithm: algorithms[r.alg].name, Hex: hex.EncodeToString(r.bytes())}
}

// compareRaw orders digests as their keys and files are: by algorithm, then bytes.
func compareRaw(a, b *raw) int {
	if a.alg != b.alg {
		return int(a.alg) - int(b.alg)
	}
	return bytes.Compare(a.b[:], b.b[:])
}

// keyRaw turns "<algorithm>:<hex>" (a key suffix) into raw bytes.
func keyRaw(k []byte) (raw, bool) {
	for i := range algorithms {
		name := algorithms[i].name
		if len(k) > len(name) && k[len(name)] == ':' && string(k[:len(name)]) == name {
			return hexRaw(uint8(i), k[len(name)+1:])
		}
	}
	return raw{}, false
}

// rawOf is keyRaw for a digest.
func rawOf(h v1.Hash) (raw, bool) {
	alg, ok := algorithmOf(h.Algorithm)
	if !ok {
		return raw{}, false
	}
	return hexRaw(alg, h.Hex)
}

// hexRaw decodes a digest of algorithm alg from its lowercase hex digits, the
// only spelling the store uses in keys and file names, without allocating.
func hexRaw[T string | []byte](alg uint8, s T) (raw, bool) {
	r := raw{alg: alg}
	n := algorithms[alg].size
	if len(s) != 2*n {
		return r, false
	}
	bad := byte(0)
	for i := range n {
		hi, lo := hexValue[s[2*i]], hexValue[s[2*i+1]]
		bad |= hi | lo
		r.b[i] = hi<<4 | lo&0x0f
	}
	return r, bad&0xf0 == 0
}

// hexValue maps a lowercase hex digit to its value, anything else to 0xff.
var hexValue = func() (t [256]byte) {
	for c := range t {
		t[c] = 0xff
	}
	for c := byte('0'); c <= '9'; c++ {
		t[c] = c - '0'
	}
	for c := byte('a'); c <= 'f'; c++ {
		t[c] = c - 'a' + 10
	}
	return t
}()
