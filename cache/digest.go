package cache

import (
	"encoding/hex"
	"fmt"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// checkHash accepts the only digests the store names content by: sha256 as
// 64 lower-case hex digits, the spelling of its keys and file names (the
// eviction table holds the 32 raw bytes).
func checkHash(h v1.Hash) error {
	if h.Algorithm != "sha256" || len(h.Hex) != 64 {
		return fmt.Errorf("%w: %q", ErrUnsupportedDigest, h.String())
	}
	for _, c := range h.Hex {
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return fmt.Errorf("%w: %q", ErrUnsupportedDigest, h.String())
		}
	}
	return nil
}

// keyRaw turns "sha256:<hex>" (a key suffix) into raw bytes.
func keyRaw(k []byte) ([32]byte, bool) {
	const p = "sha256:"
	if len(k) < len(p) || string(k[:len(p)]) != p {
		return [32]byte{}, false
	}
	return hexRaw(k[len(p):])
}

// rawOf is keyRaw for a digest.
func rawOf(h v1.Hash) ([32]byte, bool) {
	if h.Algorithm != "sha256" {
		return [32]byte{}, false
	}
	return hexRaw(h.Hex)
}

// hexRaw decodes 64 lowercase hex digits, the only spelling the store uses
// in keys and file names, without allocating.
func hexRaw[T string | []byte](s T) ([32]byte, bool) {
	var raw [32]byte
	if len(s) != 64 {
		return raw, false
	}
	bad := byte(0)
	for i := range raw {
		hi, lo := hexValue[s[2*i]], hexValue[s[2*i+1]]
		bad |= hi | lo
		raw[i] = hi<<4 | lo&0x0f
	}
	return raw, bad&0xf0 == 0
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

func rawHash(raw [32]byte) v1.Hash {
	return v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(raw[:])}
}
