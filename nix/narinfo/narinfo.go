// Package narinfo parses and writes the files of a Nix binary cache:
// "<hash>.narinfo" (what a cache knows about one store path) and
// "nix-cache-info" (the cache's store directory and priority), as Nix
// 2.8 (and current Nix) writes and reads them. It does no I/O beyond
// reading a bounded io.Reader; everything is safe for concurrent use.
package narinfo

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"

	"storekeeper/nix/nar"
	"storekeeper/nix/signature"
	"storekeeper/nix/storepath"
)

// MaxSize is the largest .narinfo or nix-cache-info accepted. Real ones
// are well under 10 KiB (a path with thousands of references stays under
// 200 KiB).
const MaxSize = 1 << 20

// ErrBadNarInfo is wrapped by every error about a malformed .narinfo or
// nix-cache-info: too large, a line that is not "Key: value", a bad value,
// a known single-valued key given twice, a required key missing.
var ErrBadNarInfo = errors.New("malformed narinfo")

// NarInfo is a parsed .narinfo.
type NarInfo struct {
	// StorePath is the full store path ("/nix/store/<hash>-<name>").
	StorePath string
	// URL is the NAR file's location, relative to the cache's root.
	URL string
	// Compression is the NAR file's compression ("xz", "zstd", "bzip2",
	// "br", "none", ...); "bzip2" when the file does not say, as Nix.
	Compression string
	// FileHash and FileSize describe the (compressed) NAR file; FileHash
	// is nil when the file does not say.
	FileHash *nar.Hash
	FileSize uint64
	// NarHash and NarSize describe the uncompressed NAR.
	NarHash nar.Hash
	NarSize uint64
	// References are the base names of the path's references.
	References []string
	// Deriver is the base name of the deriver, "" if unknown.
	Deriver string
	// System is the system the path was built for ("" if not given).
	System string
	// Sigs are the signatures, "NAME:BASE64" each.
	Sigs []string
	// CA is the content address ("fixed:r:sha256:...", "text:sha256:...")
	// or "".
	CA string
}

// StoreDir returns the store directory of n.StorePath.
func (n *NarInfo) StoreDir() string {
	return n.StorePath[:strings.LastIndexByte(n.StorePath, '/')]
}

// ReferencePaths returns the references as full store paths, sorted.
func (n *NarInfo) ReferencePaths() []string {
	dir := n.StoreDir()
	out := make([]string, len(n.References))
	for i, r := range n.References {
		out[i] = dir + "/" + r
	}
	slices.Sort(out)
	return out
}

// Fingerprint returns what a signature of this path covers (Nix's
// fingerprintPath): "1;<path>;sha256:<nix32>;<NarSize>;<refs>", the
// references as full paths, sorted, joined by ",".
func (n *NarInfo) Fingerprint() string {
	return signature.Fingerprint(n.StorePath, n.NarHash, n.NarSize, n.ReferencePaths())
}

// ValidSigs counts n's signatures that verify its fingerprint under a key
// of keys (a signature listed twice counts once), as Nix's
// checkSignatures; it does not look at CA (a content-addressed path
// needs no signature in Nix, but its contents must then be checked
// against CA, which is the caller's business).
func (n *NarInfo) ValidSigs(keys signature.PublicKeys) int {
	// Each Sig whole: joined and split at white space, "Sig: x k:SIG"
	// would become a signature by k, which it is not.
	return keys.CountValid(n.Fingerprint(), n.Sigs)
}

// Read parses a .narinfo from r, reading at most MaxSize bytes (more is
// an error); storeDir is the store directory StorePath must be in.
func Read(r io.Reader, storeDir string) (*NarInfo, error) {
	data, err := readBounded(r)
	if err != nil {
		return nil, err
	}
	return Parse(data, storeDir)
}

func readBounded(r io.Reader) ([]byte, error) {
	data, err := io.ReadAll(io.LimitReader(r, MaxSize+1))
	if err != nil {
		return nil, err
	}
	if len(data) > MaxSize {
		return nil, fmt.Errorf("%w: larger than %d bytes", ErrBadNarInfo, MaxSize)
	}
	return data, nil
}

// lines calls fn for each "Key: value" line of data, as Nix reads them:
// every line ends with "\n" and has a ": " after its key. It stops at fn's
// first error.
func lines(data []byte, fn func(line int, key, value string) error) error {
	if len(data) > MaxSize {
		return fmt.Errorf("%w: larger than %d bytes", ErrBadNarInfo, MaxSize)
	}
	for n := 1; len(data) > 0; n++ {
		i := bytes.IndexByte(data, '\n')
		if i < 0 {
			return fmt.Errorf("%w: line %d does not end with a newline", ErrBadNarInfo, n)
		}
		line := string(data[:i])
		data = data[i+1:]
		key, value, ok := strings.Cut(line, ": ")
		if !ok || key == "" || strings.IndexByte(key, ':') >= 0 {
			return fmt.Errorf("%w: line %d is not \"Key: value\": %q", ErrBadNarInfo, n, abbrev(line))
		}
		if err := fn(n, key, value); err != nil {
			return err
		}
	}
	return nil
}

func abbrev(s string) string {
	if len(s) > 200 {
		return s[:200] + "..."
	}
	return s
}

// Parse parses a .narinfo as Nix's NarInfo constructor does: "Key:
// value" lines, each ending in a newline; unknown keys are ignored (for
// what later Nix versions add); StorePath, URL, NarHash and a non-zero
// NarSize are required; Compression defaults to "bzip2"; a Deriver of
// "unknown-deriver" means none. Stricter than Nix: a known key other than
// Sig given twice is an error (Nix keeps the last, or fails for
// References and CA), StorePath must be canonical and in storeDir, every
// reference and the deriver must be valid store path base names (the
// references separated by spaces, none listed twice), and hashes must be SHA-256 ("sha256:" with base-32, base-16 or base64, or
// SRI; Nix writes base-32).
func Parse(data []byte, storeDir string) (*NarInfo, error) {
	n := &NarInfo{}
	seen := map[string]bool{}
	haveSize := false
	err := lines(data, func(line int, key, value string) error {
		bad := func(format string, args ...any) error {
			return fmt.Errorf("%w: line %d: %s: %s", ErrBadNarInfo, line, key, fmt.Sprintf(format, args...))
		}
		switch key {
		case "StorePath", "URL", "Compression", "FileHash", "FileSize", "NarHash", "NarSize", "References", "Deriver", "System", "CA":
			if seen[key] {
				return bad("given twice")
			}
			seen[key] = true
		}
		switch key {
		case "StorePath":
			base, err := storepath.Parse(storeDir, value)
			if err != nil {
				return bad("%v", err)
			}
			if value != storeDir+"/"+base {
				return bad("%q is not a canonical store path", value)
			}
			n.StorePath = value
		case "URL":
			if value == "" {
				return bad("empty")
			}
			n.URL = value
		case "Compression":
			n.Compression = value
		case "FileHash":
			h, err := nar.ParseHash(value)
			if err != nil {
				return bad("%v", err)
			}
			n.FileHash = &h
		case "FileSize":
			v, err := strconv.ParseUint(value, 10, 64)
			if err != nil {
				return bad("not a number: %q", abbrev(value))
			}
			n.FileSize = v
		case "NarHash":
			h, err := nar.ParseHash(value)
			if err != nil {
				return bad("%v", err)
			}
			n.NarHash = h
		case "NarSize":
			v, err := strconv.ParseUint(value, 10, 64)
			if err != nil {
				return bad("not a number: %q", abbrev(value))
			}
			n.NarSize, haveSize = v, true
		case "References":
			// As Nix's tokenizeString(value, " "): spaces only, empty
			// tokens skipped. Nix keeps a set; a name listed twice is an
			// error here (the fingerprint would list it twice).
			var refs []string
			seenRef := map[string]bool{}
			for _, r := range strings.Split(value, " ") {
				if r == "" {
					continue
				}
				if err := storepath.ValidateBaseName(r); err != nil {
					return bad("%v", err)
				}
				if seenRef[r] {
					return bad("%q listed twice", r)
				}
				seenRef[r] = true
				refs = append(refs, r)
			}
			n.References = refs
		case "Deriver":
			if value == "unknown-deriver" {
				break
			}
			if err := storepath.ValidateBaseName(value); err != nil {
				return bad("%v", err)
			}
			n.Deriver = value
		case "System":
			n.System = value
		case "Sig":
			if _, err := signature.ParseSig(value); err != nil {
				return bad("%v", err)
			}
			n.Sigs = append(n.Sigs, value)
		case "CA":
			if err := checkCA(value); err != nil {
				return bad("%v", err)
			}
			n.CA = value
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	for _, k := range []string{"StorePath", "URL", "NarHash", "NarSize"} {
		if !seen[k] {
			return nil, fmt.Errorf("%w: no %s", ErrBadNarInfo, k)
		}
	}
	if haveSize && n.NarSize == 0 {
		return nil, fmt.Errorf("%w: NarSize is 0", ErrBadNarInfo)
	}
	if n.Compression == "" {
		n.Compression = "bzip2"
	}
	return n, nil
}

// checkCA checks a content address as Nix renders them: "text:" or
// "fixed:" (with "r:" for a recursive hash), a hash algorithm, ":", and
// the hash.
func checkCA(s string) error {
	rest, ok := strings.CutPrefix(s, "text:")
	if !ok {
		if rest, ok = strings.CutPrefix(s, "fixed:"); !ok {
			return fmt.Errorf("content address %q is neither text: nor fixed:", abbrev(s))
		}
		rest = strings.TrimPrefix(rest, "r:")
	}
	algo, digest, ok := strings.Cut(rest, ":")
	switch algo {
	case "md5", "sha1", "sha256", "sha512":
	default:
		return fmt.Errorf("content address %q has no known hash algorithm", abbrev(s))
	}
	if !ok || digest == "" {
		return fmt.Errorf("content address %q has no hash", abbrev(s))
	}
	for i := 0; i < len(digest); i++ {
		c := digest[i]
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c == '+' || c == '/' || c == '=') {
			return fmt.Errorf("content address %q has a bad hash", abbrev(s))
		}
	}
	return nil
}

// String formats n as Nix's NarInfo::to_string writes it: the keys in
// Nix's order, hashes as "sha256:" and base-32, References and Sigs
// sorted without duplicates (Nix keeps them in sets), "References: "
// even when empty, Deriver, System, FileHash and FileSize only when set
// (FileSize always with FileHash), CA last.
func (n *NarInfo) String() string {
	var b strings.Builder
	w := func(k, v string) {
		b.WriteString(k)
		b.WriteString(": ")
		b.WriteString(v)
		b.WriteByte('\n')
	}
	w("StorePath", n.StorePath)
	w("URL", n.URL)
	comp := n.Compression
	if comp == "" {
		comp = "bzip2"
	}
	w("Compression", comp)
	if n.FileHash != nil {
		w("FileHash", n.FileHash.String())
	}
	if n.FileHash != nil || n.FileSize != 0 {
		w("FileSize", strconv.FormatUint(n.FileSize, 10))
	}
	w("NarHash", n.NarHash.String())
	w("NarSize", strconv.FormatUint(n.NarSize, 10))
	w("References", strings.Join(sortedSet(n.References), " "))
	if n.Deriver != "" {
		w("Deriver", n.Deriver)
	}
	if n.System != "" {
		w("System", n.System)
	}
	for _, s := range sortedSet(n.Sigs) {
		w("Sig", s)
	}
	if n.CA != "" {
		w("CA", n.CA)
	}
	return b.String()
}

func sortedSet(s []string) []string {
	return slices.Compact(slices.Sorted(slices.Values(s)))
}

// CacheInfo is a parsed nix-cache-info.
type CacheInfo struct {
	// StoreDir is the store directory the cache's paths are in.
	StoreDir string
	// WantMassQuery says whether the cache is worth querying for many
	// paths at once.
	WantMassQuery bool
	// Priority orders caches (lower first); 0 if the file does not say
	// (Nix then keeps the substituter's own: ?priority=N, else 0).
	Priority int
	// HasPriority says whether the file gave a Priority.
	HasPriority bool
}

// ReadCacheInfo parses a nix-cache-info from r, at most MaxSize bytes.
func ReadCacheInfo(r io.Reader) (*CacheInfo, error) {
	data, err := readBounded(r)
	if err != nil {
		return nil, err
	}
	return ParseCacheInfo(data)
}

// ParseCacheInfo parses a nix-cache-info as Nix's BinaryCacheStore does:
// lines split at newlines (the last may lack one), a line without ":"
// ignored, the key before the first ":", the value after it trimmed of
// white space; StoreDir (which the caller must compare with its own, as
// Nix refuses a cache of another store directory; "" when the file does
// not say, which Nix accepts), WantMassQuery ("1" is true, anything else
// false) and Priority (an integer; Nix's stoi would also take "40abc");
// other keys ignored. Stricter than Nix: a known key given twice, a
// StoreDir that is not an absolute canonical path.
func ParseCacheInfo(data []byte) (*CacheInfo, error) {
	if len(data) > MaxSize {
		return nil, fmt.Errorf("%w: nix-cache-info larger than %d bytes", ErrBadNarInfo, MaxSize)
	}
	ci := &CacheInfo{}
	seen := map[string]bool{}
	for n, line := range strings.Split(string(data), "\n") {
		key, value, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		value = strings.TrimSpace(value)
		bad := func(format string, args ...any) error {
			return fmt.Errorf("%w: nix-cache-info line %d: %s: %s", ErrBadNarInfo, n+1, key, fmt.Sprintf(format, args...))
		}
		switch key {
		case "StoreDir", "WantMassQuery", "Priority":
			if seen[key] {
				return nil, bad("given twice")
			}
			seen[key] = true
		}
		switch key {
		case "StoreDir":
			if !strings.HasPrefix(value, "/") || (len(value) > 1 && strings.HasSuffix(value, "/")) || strings.Contains(value, "//") ||
				strings.Contains(value, "/./") || strings.Contains(value, "/../") || strings.HasSuffix(value, "/.") || strings.HasSuffix(value, "/..") ||
				strings.ContainsRune(value, 0) {
				return nil, bad("%q is not an absolute canonical directory", abbrev(value))
			}
			ci.StoreDir = value
		case "WantMassQuery":
			ci.WantMassQuery = value == "1"
		case "Priority":
			v, err := strconv.Atoi(value)
			if err != nil {
				return nil, bad("not an integer: %q", abbrev(value))
			}
			ci.Priority, ci.HasPriority = v, true
		}
	}
	return ci, nil
}

// String formats ci as Nix writes it (StoreDir, WantMassQuery and
// Priority, each when set).
func (ci *CacheInfo) String() string {
	var b strings.Builder
	if ci.StoreDir != "" {
		fmt.Fprintf(&b, "StoreDir: %s\n", ci.StoreDir)
	}
	if ci.WantMassQuery {
		b.WriteString("WantMassQuery: 1\n")
	}
	if ci.HasPriority {
		fmt.Fprintf(&b, "Priority: %d\n", ci.Priority)
	}
	return b.String()
}
