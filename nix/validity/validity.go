// Package validity reads and writes Nix's registration format: what
// `nix-store --register-validity` reads on stdin (with `--hash-given`, what
// `nix-store --dump-db` writes), and what installers and image builders
// feed to it (`--load-db`, nixos-install, `exportReferencesGraph`). Each
// record is lines, every one ending in "\n":
//
//	<store path>
//	<NAR hash>        (only with hashes given: base-16 as --dump-db writes it,
//	<NAR size>         or any form Nix's Hash::parseAny takes for SHA-256)
//	<deriver>         (a store path, or an empty line)
//	<N>               (the number of references)
//	<reference> × N
//
// as Nix 2.8's decodeValidPathInfo and makeValidityRegistration read and
// write it. The input ends at the end of a record; unlike Nix, which stops
// silently at a last path line without its newline, a record cut short
// anywhere is an error.
//
// Every line is bounded (MaxLine) and so is the number of references
// (MaxReferences), so a hostile or broken stream costs bounded memory. The
// package does no I/O beyond the io.Reader and io.Writer it is given;
// nothing here touches a store.
package validity

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"

	"storekeeper/nix/nar"
	"storekeeper/nix/storepath"
)

// ErrBadRegistration is wrapped by every error about malformed input.
var ErrBadRegistration = errors.New("malformed registration")

// MaxLine bounds a line (a store path is at most 211 bytes after its
// directory; hashes and counts are shorter).
const MaxLine = 4096

// MaxReferences bounds the references of one path.
const MaxReferences = 1 << 20

// Info is one path's registration.
type Info struct {
	Path string // the full store path
	// HashGiven: NarHash and NarSize were in the input (otherwise the
	// registering program hashes the path, as nix-store does).
	HashGiven  bool
	NarHash    nar.Hash
	NarSize    uint64
	Deriver    string   // the full store path of the deriver, or ""
	References []string // full store paths, sorted, each once (Nix reads them into a set)
}

// Reader reads registrations one by one.
type Reader struct {
	br        *bufio.Reader
	storeDir  string
	hashGiven bool
	line      int // lines read
}

// NewReader reads registrations of paths in storeDir from r; hashGiven
// says whether each record carries the NAR hash and size (--hash-given).
func NewReader(r io.Reader, storeDir string, hashGiven bool) *Reader {
	return &Reader{br: bufio.NewReaderSize(r, 64<<10), storeDir: storeDir, hashGiven: hashGiven}
}

// errAtEnd marks the end of input where a record may end.
var errAtEnd = errors.New("end")

// readLine returns the next line without its "\n". At the end of input it
// returns errAtEnd when nothing was read, else a truncation error.
func (r *Reader) readLine(what string) (string, error) {
	var buf []byte
	for {
		chunk, err := r.br.ReadSlice('\n')
		buf = append(buf, chunk...)
		if len(buf) > MaxLine+1 {
			return "", r.errf("the %s line is longer than %d bytes", what, MaxLine)
		}
		if err == nil {
			r.line++
			return string(buf[:len(buf)-1]), nil
		}
		if errors.Is(err, bufio.ErrBufferFull) {
			continue
		}
		if errors.Is(err, io.EOF) {
			if len(buf) == 0 {
				return "", errAtEnd
			}
			return "", r.errf("the input ends inside the %s line %q (no newline)", what, buf)
		}
		return "", fmt.Errorf("validity: reading the %s line: %w", what, err)
	}
}

func (r *Reader) errf(format string, a ...any) error {
	return fmt.Errorf("validity: %w: line %d: %s", ErrBadRegistration, r.line+1, fmt.Sprintf(format, a...))
}

// need reads a line inside a record: the end of input there is a
// truncation.
func (r *Reader) need(what string) (string, error) {
	s, err := r.readLine(what)
	if errors.Is(err, errAtEnd) {
		return "", r.errf("the input ends before the %s line", what)
	}
	return s, err
}

func (r *Reader) storePath(s, what string) (string, error) {
	base, err := storepath.Parse(r.storeDir, s)
	if err != nil {
		return "", fmt.Errorf("validity: %w: line %d: the %s: %w", ErrBadRegistration, r.line, what, err)
	}
	return r.storeDir + "/" + base, nil
}

// ParseHash reads a SHA-256 NAR hash as Nix's Hash::parseAny does for
// SHA-256: with or without the "sha256:" prefix, base-16, Nix base-32 or
// base64, or SRI.
func ParseHash(s string) (nar.Hash, error) {
	if !strings.HasPrefix(s, "sha256:") && !strings.HasPrefix(s, "sha256-") {
		if strings.ContainsAny(s, ":-") { // another algorithm's "md5:..." (no digit set has ':' or '-')
			return nar.Hash{}, fmt.Errorf("%w: %q is not a SHA-256 hash", nar.ErrBadHash, s)
		}
		s = "sha256:" + s
	}
	return nar.ParseHash(s)
}

// Next returns the next registration, or io.EOF after the last one. An
// error wrapping ErrBadRegistration names the line and what is wrong; the
// Reader is not usable after an error.
func (r *Reader) Next() (*Info, error) {
	p, err := r.readLine("store path")
	if errors.Is(err, errAtEnd) {
		return nil, io.EOF
	}
	if err != nil {
		return nil, err
	}
	info := &Info{HashGiven: r.hashGiven}
	if info.Path, err = r.storePath(p, "store path"); err != nil {
		return nil, err
	}
	if r.hashGiven {
		h, err := r.need("NAR hash")
		if err != nil {
			return nil, err
		}
		if info.NarHash, err = ParseHash(h); err != nil {
			return nil, fmt.Errorf("validity: %w: line %d: the NAR hash of %s: %w", ErrBadRegistration, r.line, info.Path, err)
		}
		n, err := r.need("NAR size")
		if err != nil {
			return nil, err
		}
		if info.NarSize, err = strconv.ParseUint(n, 10, 64); err != nil {
			return nil, r.errBack("the NAR size of %s is not a number: %q", info.Path, n)
		}
	}
	d, err := r.need("deriver")
	if err != nil {
		return nil, err
	}
	if d != "" {
		if info.Deriver, err = r.storePath(d, "deriver"); err != nil {
			return nil, err
		}
	}
	c, err := r.need("reference count")
	if err != nil {
		return nil, err
	}
	n, err := strconv.Atoi(c)
	if err != nil || n < 0 || n > MaxReferences {
		return nil, r.errBack("the number of references of %s is not a number from 0 to %d: %q", info.Path, MaxReferences, c)
	}
	refs := make([]string, 0, min(n, 1024))
	for range n {
		s, err := r.need("reference")
		if err != nil {
			return nil, err
		}
		ref, err := r.storePath(s, "reference")
		if err != nil {
			return nil, err
		}
		refs = append(refs, ref)
	}
	slices.Sort(refs)
	info.References = slices.Compact(refs)
	return info, nil
}

// errBack is errf for the line just read.
func (r *Reader) errBack(format string, a ...any) error {
	return fmt.Errorf("validity: %w: line %d: %s", ErrBadRegistration, r.line, fmt.Sprintf(format, a...))
}

// ReadAll reads every registration of r (see Reader).
func ReadAll(r io.Reader, storeDir string, hashGiven bool) ([]Info, error) {
	rd := NewReader(r, storeDir, hashGiven)
	var out []Info
	for {
		info, err := rd.Next()
		if errors.Is(err, io.EOF) {
			return out, nil
		}
		if err != nil {
			return out, err
		}
		out = append(out, *info)
	}
}

// Write writes infos as Nix's makeValidityRegistration does: with
// showHash (what `nix-store --dump-db` writes) the NAR hash in base 16
// and the NAR size follow each path. The references are written sorted.
func Write(w io.Writer, infos []Info, showHash bool) error {
	var b bytes.Buffer
	for i := range infos {
		in := &infos[i]
		b.Reset()
		b.WriteString(in.Path)
		b.WriteByte('\n')
		if showHash {
			b.WriteString(in.NarHash.Hex())
			b.WriteByte('\n')
			b.WriteString(strconv.FormatUint(in.NarSize, 10))
			b.WriteByte('\n')
		}
		b.WriteString(in.Deriver)
		b.WriteByte('\n')
		refs := slices.Clone(in.References)
		slices.Sort(refs)
		refs = slices.Compact(refs)
		b.WriteString(strconv.Itoa(len(refs)))
		b.WriteByte('\n')
		for _, r := range refs {
			b.WriteString(r)
			b.WriteByte('\n')
		}
		if _, err := w.Write(b.Bytes()); err != nil {
			return fmt.Errorf("validity: writing the registration of %s: %w", in.Path, err)
		}
	}
	return nil
}
