package signature

import (
	"crypto/ed25519"
	"encoding/base64"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"storekeeper/nix/nar"
)

// ErrBadKey is wrapped by errors about a trusted public key.
var ErrBadKey = errors.New("verify: bad public key")

// PublicKeys maps a key name to its ed25519 public key.
type PublicKeys map[string]ed25519.PublicKey

// ParsePublicKeys parses keys in Nix's form "NAME:BASE64(32-byte key)", as
// trusted-public-keys lists them.
func ParsePublicKeys(keys []string) (PublicKeys, error) {
	pk := PublicKeys{}
	for _, k := range keys {
		name, b64, ok := strings.Cut(k, ":")
		if !ok || name == "" {
			return nil, fmt.Errorf("%w: %q is not NAME:BASE64", ErrBadKey, k)
		}
		b, err := base64.StdEncoding.DecodeString(b64)
		if err != nil || len(b) != ed25519.PublicKeySize {
			return nil, fmt.Errorf("%w: %q: the key is not %d bytes of base64", ErrBadKey, k, ed25519.PublicKeySize)
		}
		pk[name] = ed25519.PublicKey(b)
	}
	return pk, nil
}

// Fingerprint is the string Nix signs for a path: "1;PATH;NARHASH;NARSIZE;REFS"
// with the hash as "sha256:" and base-32 and the references as full
// paths, sorted, joined by commas.
func Fingerprint(path string, h nar.Hash, narSize uint64, refs []string) string {
	var b strings.Builder
	b.WriteString("1;")
	b.WriteString(path)
	b.WriteString(";")
	b.WriteString(h.String())
	b.WriteString(";")
	b.WriteString(strconv.FormatUint(narSize, 10))
	b.WriteString(";")
	b.WriteString(strings.Join(refs, ","))
	return b.String()
}

// CountValidSigs counts the signatures in sigs (the DB's space-separated
// "NAME:BASE64" list) that verify fingerprint under a key of keys. A
// signature is counted once however often it is listed, like Nix's set.
func CountValidSigs(keys PublicKeys, fingerprint string, sigs string) int {
	n := 0
	seen := map[string]bool{}
	for _, s := range strings.Fields(sigs) {
		if seen[s] {
			continue
		}
		seen[s] = true
		name, b64, ok := strings.Cut(s, ":")
		if !ok {
			continue
		}
		key, ok := keys[name]
		if !ok {
			continue
		}
		sig, err := base64.StdEncoding.DecodeString(b64)
		if err != nil || len(sig) != ed25519.SignatureSize {
			continue
		}
		if ed25519.Verify(key, []byte(fingerprint), sig) {
			n++
		}
	}
	return n
}
