// Package signature is Nix's ed25519 signing of store paths: keys as
// nix-store --generate-binary-cache-key writes them ("NAME:BASE64"),
// detached signatures as narinfo files and the database's sigs column
// hold them ("NAME:BASE64"), and the fingerprint a signature covers.
// It does no I/O; every function is safe for concurrent use.
package signature

import (
	"crypto/ed25519"
	"encoding/base64"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"

	"storekeeper/nix/nar"
)

// ErrBadKey is wrapped by errors about a public or secret key.
var ErrBadKey = errors.New("signature: bad key")

// ErrBadSig is wrapped by errors about a malformed signature.
var ErrBadSig = errors.New("signature: bad signature")

// splitKey splits "NAME:BASE64" at its first colon, as Nix's splitKey,
// and decodes the base64 part (standard alphabet, padded), which must
// have size bytes. what names the kind of key in errors.
func splitKey(s, what string, size int, sentinel error) (string, []byte, error) {
	name, b64, ok := strings.Cut(s, ":")
	if !ok || name == "" || b64 == "" {
		return "", nil, fmt.Errorf("%w: %s %q is not NAME:BASE64", sentinel, what, abbrev(s))
	}
	b, err := base64.StdEncoding.DecodeString(b64)
	if err != nil || len(b) != size {
		return "", nil, fmt.Errorf("%w: %s %q: not %d bytes of base64", sentinel, what, abbrev(s), size)
	}
	return name, b, nil
}

// abbrev shortens a secret or overlong text for an error message.
func abbrev(s string) string {
	if len(s) > 120 {
		return s[:120] + "..."
	}
	return s
}

// PublicKey is a named ed25519 public key.
type PublicKey struct {
	Name string
	Key  ed25519.PublicKey
}

// ParsePublicKey parses "NAME:BASE64(32 bytes)", as trusted-public-keys
// lists keys and as nix-store --generate-binary-cache-key writes them.
func ParsePublicKey(s string) (PublicKey, error) {
	name, b, err := splitKey(s, "public key", ed25519.PublicKeySize, ErrBadKey)
	if err != nil {
		return PublicKey{}, err
	}
	return PublicKey{Name: name, Key: ed25519.PublicKey(b)}, nil
}

// String returns the key as Nix writes it.
func (k PublicKey) String() string {
	return k.Name + ":" + base64.StdEncoding.EncodeToString(k.Key)
}

// SecretKey is a named ed25519 secret key.
type SecretKey struct {
	Name string
	Key  ed25519.PrivateKey
}

// ParseSecretKey parses "NAME:BASE64(64 bytes)", the file
// nix-store --generate-binary-cache-key writes (libsodium's secret key:
// the seed and then the public key, as Go's ed25519.PrivateKey), with
// surrounding white space (a trailing newline) allowed. The public half
// must be the seed's.
func ParseSecretKey(s string) (SecretKey, error) {
	s = strings.TrimSpace(s)
	name, b, err := splitKey(s, "secret key", ed25519.PrivateKeySize, ErrBadKey)
	if err != nil {
		// Do not echo a secret key in an error.
		return SecretKey{}, fmt.Errorf("%w: a secret key is NAME:BASE64 of %d bytes", ErrBadKey, ed25519.PrivateKeySize)
	}
	k := ed25519.PrivateKey(b)
	if !ed25519.NewKeyFromSeed(k.Seed()).Equal(k) {
		return SecretKey{}, fmt.Errorf("%w: secret key %q: its public half does not match its seed", ErrBadKey, name)
	}
	return SecretKey{Name: name, Key: k}, nil
}

// Public returns the public key of k, with k's name.
func (k SecretKey) Public() PublicKey {
	return PublicKey{Name: k.Name, Key: k.Key.Public().(ed25519.PublicKey)}
}

// String returns the key as Nix writes it (the secret itself).
func (k SecretKey) String() string {
	return k.Name + ":" + base64.StdEncoding.EncodeToString(k.Key)
}

// Sign returns the detached signature of fingerprint as Nix writes it:
// "NAME:BASE64(64 bytes)".
func (k SecretKey) Sign(fingerprint string) string {
	return k.Name + ":" + base64.StdEncoding.EncodeToString(ed25519.Sign(k.Key, []byte(fingerprint)))
}

// Sig is a parsed detached signature.
type Sig struct {
	Name string // the name of the key that made it
	Sig  []byte // 64 bytes
}

// ParseSig parses "NAME:BASE64(64 bytes)".
func ParseSig(s string) (Sig, error) {
	name, b, err := splitKey(s, "signature", ed25519.SignatureSize, ErrBadSig)
	if err != nil {
		return Sig{}, err
	}
	return Sig{Name: name, Sig: b}, nil
}

// PublicKeys maps a key name to its ed25519 public key.
type PublicKeys map[string]ed25519.PublicKey

// ParsePublicKeys parses keys in Nix's form "NAME:BASE64(32-byte key)", as
// trusted-public-keys lists them. Of keys with the same name the first is
// kept and later ones are ignored, as in Nix's getDefaultPublicKeys
// (emplace into a map): a key appended under a trusted name does not
// replace the trusted key.
func ParsePublicKeys(keys []string) (PublicKeys, error) {
	pk := PublicKeys{}
	for _, k := range keys {
		p, err := ParsePublicKey(k)
		if err != nil {
			return nil, err
		}
		if _, ok := pk[p.Name]; !ok {
			pk[p.Name] = p.Key
		}
	}
	return pk, nil
}

// Verify reports whether sig ("NAME:BASE64") is a valid signature of
// fingerprint by the key of that name in keys, as Nix's verifyDetached:
// an unknown key name or a malformed signature is simply not valid.
func (keys PublicKeys) Verify(fingerprint, sig string) bool {
	name, b64, ok := strings.Cut(sig, ":")
	if !ok {
		return false
	}
	key, ok := keys[name]
	if !ok {
		return false
	}
	if len(b64) != base64.StdEncoding.EncodedLen(ed25519.SignatureSize) {
		return false
	}
	raw, err := base64.StdEncoding.DecodeString(b64)
	if err != nil || len(raw) != ed25519.SignatureSize {
		return false
	}
	return ed25519.Verify(key, []byte(fingerprint), raw)
}

// Fingerprint is the string Nix signs for a path: "1;PATH;NARHASH;NARSIZE;REFS"
// with the hash as "sha256:" and base-32 and the references as full
// paths, sorted, joined by commas. refs are sorted here if they are not
// (refs itself is left as it is).
func Fingerprint(path string, h nar.Hash, narSize uint64, refs []string) string {
	if !slices.IsSorted(refs) {
		refs = slices.Sorted(slices.Values(refs))
	}
	var b strings.Builder
	b.WriteString("1;")
	b.WriteString(path)
	b.WriteString(";")
	b.WriteString(h.String())
	b.WriteString(";")
	b.WriteString(strconv.FormatUint(narSize, 10))
	b.WriteString(";")
	for i, r := range refs {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(r)
	}
	return b.String()
}

// CountValidSigs counts the signatures in sigs (the DB's space-separated
// "NAME:BASE64" list) that verify fingerprint under a key of keys. A
// signature is counted once however often it is listed, like Nix's set.
func CountValidSigs(keys PublicKeys, fingerprint string, sigs string) int {
	return keys.CountValid(fingerprint, strings.Fields(sigs))
}

// CountValid counts the signatures in sigs ("NAME:BASE64" each, taken
// whole: a narinfo's Sig values, where NAME is everything before the
// first colon, white space included, as in Nix's verifyDetached) that
// verify fingerprint under a key of keys, each counted once.
func (keys PublicKeys) CountValid(fingerprint string, sigs []string) int {
	n := 0
	seen := map[string]bool{}
	for _, s := range sigs {
		if seen[s] {
			continue
		}
		seen[s] = true
		if keys.Verify(fingerprint, s) {
			n++
		}
	}
	return n
}
