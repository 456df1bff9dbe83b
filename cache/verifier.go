package cache

import (
	"encoding"
	"encoding/hex"
	"fmt"
	"hash"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// Verifier checks content against its digest and announced size as it
// passes. The store's Writer verifies with one before a commit, and the
// proxy with one what it streams to clients without storing.
type Verifier struct {
	h      v1.Hash
	size   int64 // -1 when unknown
	hasher hash.Hash
	n      int64
}

// NewVerifier checks content of digest h (sha256 or sha512, by its
// algorithm) and, unless it is -1, of length size. Content of a digest the
// store does not know never checks.
func NewVerifier(h v1.Hash, size int64) *Verifier {
	alg, _ := algorithmOf(h.Algorithm)
	return &Verifier{h: h, size: size, hasher: algorithms[alg].new()}
}

// Write hashes p. Once more bytes arrive than were announced it fails,
// hashing nothing.
func (v *Verifier) Write(p []byte) (int, error) {
	if err := v.fits(len(p)); err != nil {
		return 0, err
	}
	v.hasher.Write(p)
	v.n += int64(len(p))
	return len(p), nil
}

func (v *Verifier) fits(n int) error {
	if v.size >= 0 && v.n+int64(n) > v.size {
		return fmt.Errorf("blob %s: %w: more than %d bytes", v.h, ErrSizeMismatch, v.size)
	}
	return nil
}

// Written is how many bytes have passed.
func (v *Verifier) Written() int64 { return v.n }

// Check reports whether what passed is the content: its announced size, and
// its digest.
func (v *Verifier) Check() error {
	if v.size >= 0 && v.n != v.size {
		return fmt.Errorf("blob %s: %w: got %d bytes, want %d", v.h, ErrSizeMismatch, v.n, v.size)
	}
	if err := CheckDigest(v.h); err != nil {
		return fmt.Errorf("blob %s: %w", v.h, err)
	}
	if got := hex.EncodeToString(v.hasher.Sum(nil)); got != v.h.Hex {
		return fmt.Errorf("blob %s: %w: content hashes to %s:%s", v.h, ErrDigestMismatch, v.h.Algorithm, got)
	}
	return nil
}

// Clone returns a Verifier in the same state that goes on by itself: the
// content checked so far need not pass again.
func (v *Verifier) Clone() *Verifier {
	state, err := v.hasher.(encoding.BinaryMarshaler).MarshalBinary()
	if err != nil {
		panic(fmt.Sprintf("hash state: %v", err)) // crypto/sha256 and sha512 always marshal
	}
	c := NewVerifier(v.h, v.size)
	if err := c.hasher.(encoding.BinaryUnmarshaler).UnmarshalBinary(state); err != nil {
		panic(fmt.Sprintf("hash state: %v", err))
	}
	c.n = v.n
	return c
}
