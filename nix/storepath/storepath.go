package storepath

import (
	"errors"
	"fmt"
	"path"
	"strconv"
	"strings"
	"unicode/utf8"
)

const (
	// HashLen is the length of the hash part of a store path's base name.
	HashLen = 32
	// MaxNameLen is the longest name part Nix accepts.
	MaxNameLen = 211
)

// ErrBadStorePath is wrapped by every error about a malformed store path.
var ErrBadStorePath = errors.New("store: bad store path")

// ValidateBaseName checks a store path's base name (the part below the store
// dir) as Nix 2.8 does: HashLen characters of Nix base-32, a '-', and a name
// of 1 to MaxNameLen characters from [0-9a-zA-Z+\-._?=].
//
// Nix 2.8 itself does not look at the character after the hash part; this
// function requires it to be '-', as every path Nix creates has it.
func ValidateBaseName(base string) error {
	if len(base) < HashLen+1 {
		return fmt.Errorf("%w: %q is too short to be a store path", ErrBadStorePath, base)
	}
	for i := 0; i < HashLen; i++ {
		if c := base[i]; base32Digit[c] == 0xff {
			return fmt.Errorf("%w: %q contains the illegal base-32 character %s in its hash part", ErrBadStorePath, base, quoteByte(c))
		}
	}
	if base[HashLen] != '-' {
		return fmt.Errorf("%w: %q has %s instead of '-' after its hash part", ErrBadStorePath, base, quoteByte(base[HashLen]))
	}
	name := base[HashLen+1:]
	if name == "" {
		return fmt.Errorf("%w: %q has an empty name", ErrBadStorePath, base)
	}
	if len(name) > MaxNameLen {
		return fmt.Errorf("%w: %q has a name longer than %d characters", ErrBadStorePath, base, MaxNameLen)
	}
	for i := 0; i < len(name); i++ {
		if c := name[i]; !nameChar(c) {
			return fmt.Errorf("%w: %q contains the illegal character %s in its name", ErrBadStorePath, base, quoteByte(c))
		}
	}
	return nil
}

// quoteByte quotes a byte as a Go character literal, showing a byte that is
// not ASCII as '\xNN' rather than as the Latin-1 character.
func quoteByte(c byte) string {
	if c < utf8.RuneSelf {
		return strconv.QuoteRune(rune(c))
	}
	return fmt.Sprintf(`'\x%02x'`, c)
}

// nameChar reports whether c may appear in a store path's name.
func nameChar(c byte) bool {
	switch {
	case c >= '0' && c <= '9', c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z':
		return true
	}
	switch c {
	case '+', '-', '.', '_', '?', '=':
		return true
	}
	return false
}

// HashPart returns the hash part of a validated base name.
func HashPart(base string) string { return base[:HashLen] }

// NamePart returns the name part of a validated base name.
func NamePart(base string) string { return base[HashLen+1:] }

// IsInStore reports whether p lies strictly below storeDir, purely
// lexically, as Nix's isInDir: p starts with storeDir + "/" and has at least
// one more character.
func IsInStore(storeDir, p string) bool {
	return strings.HasPrefix(p, "/") &&
		len(p) >= len(storeDir)+2 &&
		p[:len(storeDir)] == storeDir &&
		p[len(storeDir)] == '/'
}

// ParseStorePath parses a store path as Nix's parseStorePath: p is made
// canonical lexically (it must be absolute; "." and ".." and repeated
// slashes are resolved without looking at the file system), its parent must
// be storeDir, and its base name must be valid. It returns the base name.
func Parse(storeDir, p string) (string, error) {
	if !strings.HasPrefix(p, "/") {
		return "", fmt.Errorf("%w: %q is not an absolute path", ErrBadStorePath, p)
	}
	c := path.Clean(p)
	dir, base := path.Split(c)
	if dir != "/" {
		dir = strings.TrimSuffix(dir, "/")
	}
	if dir != storeDir || base == "" {
		return "", fmt.Errorf("%w: %q is not in the store %s", ErrBadStorePath, p, storeDir)
	}
	if err := ValidateBaseName(base); err != nil {
		return "", fmt.Errorf("%w (in path %q)", err, p)
	}
	return base, nil
}

// ToStorePath splits a path inside the store into the store path it belongs
// to and the rest, as Nix's toStorePath: "/nix/store/abc-foo/bin/x" gives
// "/nix/store/abc-foo" and "/bin/x". The rest is returned as given ("" when
// p is the store path itself); the store path is validated and canonical.
func ToStorePath(storeDir, p string) (storePath string, rest string, err error) {
	if !IsInStore(storeDir, p) {
		return "", "", fmt.Errorf("%w: %q is not in the store %s", ErrBadStorePath, p, storeDir)
	}
	head := p
	if i := strings.IndexByte(p[len(storeDir)+1:], '/'); i >= 0 {
		head, rest = p[:len(storeDir)+1+i], p[len(storeDir)+1+i:]
	}
	base, err := Parse(storeDir, head)
	if err != nil {
		return "", "", err
	}
	return storeDir + "/" + base, rest, nil
}
