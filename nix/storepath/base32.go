package storepath

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"strings"
)

// ErrBadBase32 is wrapped by every error DecodeBase32 returns.
var ErrBadBase32 = errors.New("store: bad base-32 string")

// base32Alphabet is Nix's base-32 alphabet: the digits and the lowercase
// letters without e, o, u and t.
const base32Alphabet = "0123456789abcdfghijklmnpqrsvwxyz"

// Base32Chars are the digits of Nix base-32, in order (no e, o, u or t).
const Base32Chars = base32Alphabet

// base32Digit maps a byte to its base-32 value, or 0xff if it is not in the
// alphabet.
var base32Digit = func() (t [256]byte) {
	for i := range t {
		t[i] = 0xff
	}
	for i := 0; i < len(base32Alphabet); i++ {
		t[base32Alphabet[i]] = byte(i)
	}
	return t
}()

// Base32Len is the length of the Nix base-32 encoding of nbytes bytes:
// (nbytes*8-1)/5+1, and 0 for 0 bytes.
func Base32Len(nbytes int) int {
	if nbytes <= 0 {
		return 0
	}
	return (nbytes*8-1)/5 + 1
}

// EncodeBase32 encodes b in Nix's base-32. Nix reads the byte string as a
// little-endian number and prints it most significant digit first: the
// character k positions from the end holds the 5 bits that start at bit
// k*5.
func EncodeBase32(b []byte) string {
	n := Base32Len(len(b))
	out := make([]byte, n)
	for k := 0; k < n; k++ {
		bit := k * 5
		i, j := bit/8, uint(bit%8)
		c := b[i] >> j
		if i+1 < len(b) {
			c |= b[i+1] << (8 - j)
		}
		out[n-1-k] = base32Alphabet[c&0x1f]
	}
	return string(out)
}

// DecodeBase32 decodes a Nix base-32 string into (len(s)*5)/8 bytes. It
// rejects characters outside the alphabet, set bits beyond the last byte,
// and lengths that EncodeBase32 never produces (so that decoding and
// encoding are inverse to each other).
func DecodeBase32(s string) ([]byte, error) {
	nbytes := len(s) * 5 / 8
	if Base32Len(nbytes) != len(s) {
		return nil, fmt.Errorf("%w: %q has a length (%d) that no encoding has", ErrBadBase32, s, len(s))
	}
	out := make([]byte, nbytes)
	for k := 0; k < len(s); k++ {
		c := s[len(s)-1-k]
		d := base32Digit[c]
		if d == 0xff {
			return nil, fmt.Errorf("%w: %q contains the illegal character %s", ErrBadBase32, s, quoteByte(c))
		}
		bit := k * 5
		i, j := bit/8, uint(bit%8)
		if i < nbytes {
			out[i] |= d << j
		}
		var hi byte
		if j > 3 {
			hi = d >> (8 - j)
		}
		if i+1 < nbytes {
			out[i+1] |= hi
		} else if hi != 0 || (i >= nbytes && d != 0) {
			return nil, fmt.Errorf("%w: %q has non-zero bits beyond its %d bytes", ErrBadBase32, s, nbytes)
		}
	}
	return out, nil
}

// CompressHash folds h into n bytes by XOR, as Nix's compressHash does:
// out[i%n] ^= h[i].
func CompressHash(h []byte, n int) []byte {
	out := make([]byte, n)
	if n == 0 {
		return out
	}
	for i, b := range h {
		out[i%n] ^= b
	}
	return out
}

// MakeStorePath computes a store path as Nix's makeStorePath does: the
// SHA-256 of "typ:sha256:<hex hash>:storeDir:name", folded to 20 bytes and
// printed in base-32, gives storeDir/<hash32>-name.
func MakeStorePath(storeDir, typ string, hash [32]byte, name string) string {
	s := typ + ":sha256:" + hex.EncodeToString(hash[:]) + ":" + storeDir + ":" + name
	h := sha256.Sum256([]byte(s))
	return storeDir + "/" + EncodeBase32(CompressHash(h[:], 20)) + "-" + name
}

// MakeFixedOutputPathRecursive computes the path of a recursive
// (NAR-hashed) SHA-256 content-addressed store object, the way
// `nix-store --add` and builtins.path name their results: the type is
// "source", then ":"+ref for every reference (full store paths, sorted),
// then ":self" if the object refers to itself.
func MakeFixedOutputPathRecursive(storeDir string, narHash [32]byte, name string, refs []string, selfRef bool) string {
	sorted := slices.Clone(refs)
	slices.Sort(sorted)
	var typ strings.Builder
	typ.WriteString("source")
	for _, r := range sorted {
		typ.WriteString(":")
		typ.WriteString(r)
	}
	if selfRef {
		typ.WriteString(":self")
	}
	return MakeStorePath(storeDir, typ.String(), narHash, name)
}
