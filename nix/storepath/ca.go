package storepath

import (
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"strings"
)

// ErrBadContentAddress is wrapped by every error ContentAddressedPath
// returns about a malformed content address.
var ErrBadContentAddress = errors.New("store: bad content address")

// hashSizes are the digest sizes of the hash algorithms Nix 2.8 knows.
var hashSizes = map[string]int{"md5": 16, "sha1": 20, "sha256": 32, "sha512": 64}

// ContentAddress is a parsed content address, as Nix renders one in a
// narinfo's CA field and the database's ca column: "text:sha256:HASH",
// "fixed:ALGO:HASH" (a flat file's hash) or "fixed:r:ALGO:HASH" (the
// hash of the NAR serialisation).
type ContentAddress struct {
	Text      bool   // "text:" (then Algo is sha256 and Recursive false)
	Recursive bool   // "fixed:r:"
	Algo      string // md5, sha1, sha256, sha512
	Hash      []byte // the digest, of Algo's size
}

// ParseContentAddress parses a content address as Nix's
// parseContentAddress: the hash in base-32 (as Nix writes it), base-16 or
// base64, told apart by length as Nix's Hash::parseNonSRIUnprefixed does;
// a text address must use sha256.
func ParseContentAddress(s string) (ContentAddress, error) {
	var ca ContentAddress
	rest, ok := strings.CutPrefix(s, "text:")
	if ok {
		ca.Text = true
	} else if rest, ok = strings.CutPrefix(s, "fixed:"); ok {
		rest, ca.Recursive = strings.CutPrefix(rest, "r:")
	} else {
		return ca, fmt.Errorf("%w: %q is neither text: nor fixed:", ErrBadContentAddress, abbrevCA(s))
	}
	algo, digest, ok := strings.Cut(rest, ":")
	size, known := hashSizes[algo]
	if !ok || !known {
		return ca, fmt.Errorf("%w: %q has no known hash algorithm (md5, sha1, sha256, sha512)", ErrBadContentAddress, abbrevCA(s))
	}
	if ca.Text && algo != "sha256" {
		return ca, fmt.Errorf("%w: %q: a text content address uses sha256, not %s", ErrBadContentAddress, abbrevCA(s), algo)
	}
	h, err := decodeDigest(digest, size)
	if err != nil {
		return ca, fmt.Errorf("%w: %q: %w", ErrBadContentAddress, abbrevCA(s), err)
	}
	ca.Algo, ca.Hash = algo, h
	return ca, nil
}

// decodeDigest decodes a digest of size bytes given in base-16, Nix
// base-32 or base64, by its length.
func decodeDigest(s string, size int) ([]byte, error) {
	switch len(s) {
	case 2 * size:
		b, err := hex.DecodeString(s)
		if err != nil {
			return nil, fmt.Errorf("bad base-16 hash: %w", err)
		}
		return b, nil
	case Base32Len(size):
		return DecodeBase32(s)
	case base64.StdEncoding.EncodedLen(size):
		b, err := base64.StdEncoding.DecodeString(s)
		if err != nil || len(b) != size {
			return nil, fmt.Errorf("bad base64 hash")
		}
		return b, nil
	}
	return nil, fmt.Errorf("a hash of %d bytes cannot be %d characters long", size, len(s))
}

func abbrevCA(s string) string {
	if len(s) > 200 {
		return s[:200] + "..."
	}
	return s
}

// String renders ca as Nix does (the hash in base-32).
func (ca ContentAddress) String() string {
	switch {
	case ca.Text:
		return "text:" + ca.Algo + ":" + EncodeBase32(ca.Hash)
	case ca.Recursive:
		return "fixed:r:" + ca.Algo + ":" + EncodeBase32(ca.Hash)
	}
	return "fixed:" + ca.Algo + ":" + EncodeBase32(ca.Hash)
}

// MakeTextPath is Nix's makeTextPath: the path of a text object (what
// builtins.toFile and derivations' .drv files are) with contents hashing
// to hash and the given references (full store paths, in any order).
func MakeTextPath(storeDir string, hash [32]byte, name string, refs []string) string {
	sorted := slices.Sorted(slices.Values(refs))
	typ := "text"
	for _, r := range sorted {
		typ += ":" + r
	}
	return MakeStorePath(storeDir, typ, hash, name)
}

// MakeFixedOutputPath is Nix's makeFixedOutputPath: a recursive SHA-256
// address is MakeFixedOutputPathRecursive's ("source" and the
// references); any other (a flat file's hash, or a recursive one by
// another algorithm) is "output:out" over the SHA-256 of
// "fixed:out:[r:]ALGO:HEX:", and may have no references (Nix asserts it;
// here it is an error).
func MakeFixedOutputPath(storeDir string, recursive bool, algo string, hash []byte, name string, refs []string, selfRef bool) (string, error) {
	if size, ok := hashSizes[algo]; !ok || len(hash) != size {
		return "", fmt.Errorf("%w: %d bytes of %q is not a hash Nix knows", ErrBadContentAddress, len(hash), algo)
	}
	if recursive && algo == "sha256" {
		return MakeFixedOutputPathRecursive(storeDir, [32]byte(hash), name, refs, selfRef), nil
	}
	if len(refs) > 0 || selfRef {
		return "", fmt.Errorf("%w: a fixed-output path addressed by a flat or non-sha256 hash has no references", ErrBadContentAddress)
	}
	prefix := ""
	if recursive {
		prefix = "r:"
	}
	inner := sha256.Sum256([]byte("fixed:out:" + prefix + algo + ":" + hex.EncodeToString(hash) + ":"))
	return MakeStorePath(storeDir, "output:out", inner, name), nil
}

// ContentAddressedPath returns the store path that the content address
// ca gives an object named name with references refs (full store paths;
// self is the object's own path, which for a fixed-output address counts
// as a self-reference when refs holds it, as in Nix), exactly as Nix
// 2.8's ValidPathInfo::isContentAddressed computes it: the object is
// content-addressed when the result equals its path.
func ContentAddressedPath(storeDir, self, ca, name string, refs []string) (string, error) {
	c, err := ParseContentAddress(ca)
	if err != nil {
		return "", err
	}
	if c.Text {
		return MakeTextPath(storeDir, [32]byte(c.Hash), name, refs), nil
	}
	others := make([]string, 0, len(refs))
	selfRef := false
	for _, r := range refs {
		if r == self {
			selfRef = true
			continue
		}
		others = append(others, r)
	}
	return MakeFixedOutputPath(storeDir, c.Recursive, c.Algo, c.Hash, name, others, selfRef)
}
