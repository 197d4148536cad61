package nar

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"strconv"
	"strings"
)

// ErrBadNAR is wrapped by every error about a malformed or hostile NAR:
// wrong magic, an unknown or misplaced token, non-zero padding, a bad
// entry name, entries out of order or duplicated, a string or size out of
// bounds, trailing data, truncated input. The error is an *Error naming
// the byte offset and the entry.
var ErrBadNAR = errors.New("malformed NAR")

// ErrLimit is wrapped (instead of ErrBadNAR) when a NAR exceeds a limit of
// the reader's Limits: more bytes, more entries or deeper nesting than
// allowed.
var ErrLimit = errors.New("NAR exceeds a limit")

// The bounds every Reader applies, whatever its Limits.
const (
	// MaxNameLen is the longest entry name accepted: NAME_MAX, the longest
	// any Linux file system holds (so the longest nix-store --dump writes).
	MaxNameLen = 255
	// MaxTargetLen is the longest symlink target accepted: PATH_MAX - 1,
	// the longest symlink(2) creates.
	MaxTargetLen = 4095
	// DefaultMaxDepth is the deepest directory nesting accepted when
	// Limits.MaxDepth is 0 (the top directory is depth 1).
	DefaultMaxDepth = 256
	// maxTokenLen is longer than every token of the format
	// ("nix-archive-1" is the longest).
	maxTokenLen = 16
)

const narMagic = "nix-archive-1"

// Limits bound what a Reader accepts; a zero field means its default.
type Limits struct {
	// MaxBytes is the most bytes the NAR may have (0: no limit). A
	// regular file announcing contents that would pass it fails at once,
	// before its contents are read.
	MaxBytes int64
	// MaxEntries is the most nodes (files, symlinks and directories, the
	// top included) the NAR may have (0: no limit).
	MaxEntries int64
	// MaxDepth is the deepest directory nesting accepted (0:
	// DefaultMaxDepth).
	MaxDepth int
}

// Header describes one node of a NAR, as Reader.Next returns it and
// Writer.WriteHeader takes it.
type Header struct {
	// Path is the node's path inside the NAR: "" for the top node, else
	// its names from the top joined by "/" ("bin", "bin/sh").
	Path string
	Type FileType
	// Executable is the executable flag of a regular file.
	Executable bool
	// Size is the length of a regular file's contents.
	Size int64
	// LinkTarget is a symlink's target, as stored (never resolved).
	LinkTarget string
}

// Error is the error a Reader returns for a malformed NAR or one past a
// limit. It wraps Kind (ErrBadNAR or ErrLimit) and, for truncated input,
// io.ErrUnexpectedEOF.
type Error struct {
	Kind   error  // ErrBadNAR or ErrLimit
	Offset int64  // the byte offset of the field at fault
	Path   string // the entry's path inside the NAR ("" for the top)
	Msg    string
	Cause  error // io.ErrUnexpectedEOF for truncated input, else nil
}

func (e *Error) Error() string {
	where := "at the top node"
	if e.Path != "" {
		where = "in " + strconv.Quote(e.Path)
	}
	return fmt.Sprintf("%v at byte %d %s: %s", e.Kind, e.Offset, where, e.Msg)
}

func (e *Error) Unwrap() []error {
	if e.Cause != nil {
		return []error{e.Kind, e.Cause}
	}
	return []error{e.Kind}
}

// readState is where a Reader stands between calls.
type readState uint8

const (
	stStart    readState = iota // nothing read yet
	stFile                      // in a regular file's contents
	stNodeDone                  // a node is complete
	stInDir                     // expecting "entry" or ")" in the innermost directory
	stEnd                       // the archive is complete (io.EOF)
)

type openDir struct {
	path string // the directory's Path
	prev string // the last entry name read in it
	any  bool   // whether an entry was read
}

// Reader reads a NAR as a stream of nodes, like archive/tar: Next returns
// the next node's Header in the order of the archive (a directory before
// its entries, entries in ascending byte order of name), and Read reads
// the current regular file's contents.
//
// It accepts exactly the canonical serialisation that nix-store --dump
// writes, which is also the only one whose hash equals the hash of the
// tree it unpacks to: the magic "nix-archive-1", fields in the order Nix
// writes them ("executable" before "contents", nothing else in a node),
// zero padding, entry names that are not "", "." or "..", hold no "/" or
// NUL and are at most MaxNameLen bytes, in strictly ascending byte order
// (so no duplicates), non-empty symlink targets without NUL of at most
// MaxTargetLen bytes (not otherwise checked or resolved, as Nix), and
// nothing after the top node. Nix 2.8's nix-store --restore rejects the
// bad names, duplicates (when creating the second), non-zero padding, a
// wrong magic and empty targets too; it also accepts entries out of order
// (current Nix rejects them: "NAR directory is not sorted"), data after
// the archive, fields of a node in another order and a regular file
// without "contents". No Nix writes those, their hash could not be the
// hash of the tree they unpack to, and they fail here. Names are taken
// literally: Nix's macOS "~nix~case~hack~" suffixes (off on Linux) are
// ordinary name bytes here, as in Nix on Linux.
//
// Every error about the archive is an *Error wrapping ErrBadNAR or
// ErrLimit, with the byte offset and the entry's path; an error of the
// underlying reader is returned wrapped with the offset. Errors are
// sticky. A Reader is not safe for concurrent use.
type Reader struct {
	br     *bufio.Reader
	lim    Limits
	off    int64
	state  readState
	stack  []openDir
	cur    Header
	left   int64 // contents bytes of the current file not yet read
	nodes  int64
	err    error
	tokbuf [maxTokenLen + 8]byte
	num    [8]byte // u64's and padding's buffer (a local would escape)
}

// NewReader returns a Reader of the NAR in r with default limits (no
// limit on bytes or entries, DefaultMaxDepth). It reads r through its
// own buffer, so it may read past the archive's end (which must be r's
// end).
func NewReader(r io.Reader) *Reader { return NewReaderLimits(r, Limits{}) }

// NewReaderLimits is NewReader with limits.
func NewReaderLimits(r io.Reader, lim Limits) *Reader {
	if lim.MaxDepth <= 0 {
		lim.MaxDepth = DefaultMaxDepth
	}
	return &Reader{br: bufio.NewReaderSize(r, 64<<10), lim: lim}
}

// Offset returns the number of bytes of the NAR read so far; after Next
// returned io.EOF, the NAR's size.
func (r *Reader) Offset() int64 { return r.off }

func (r *Reader) fail(kind error, off int64, path string, cause error, format string, args ...any) error {
	if r.err == nil {
		r.err = &Error{Kind: kind, Offset: off, Path: path, Msg: fmt.Sprintf(format, args...), Cause: cause}
	}
	return r.err
}

// bad records and returns a malformed-NAR error.
func (r *Reader) bad(off int64, path, format string, args ...any) error {
	return r.fail(ErrBadNAR, off, path, nil, format, args...)
}

// readFull reads len(p) bytes of the archive at path.
func (r *Reader) readFull(p []byte, path string) error {
	if r.lim.MaxBytes > 0 && r.off+int64(len(p)) > r.lim.MaxBytes {
		return r.fail(ErrLimit, r.off, path, nil, "more than the limit of %d bytes", r.lim.MaxBytes)
	}
	n, err := io.ReadFull(r.br, p)
	start := r.off
	r.off += int64(n)
	if err == io.EOF || err == io.ErrUnexpectedEOF {
		return r.fail(ErrBadNAR, start, path, io.ErrUnexpectedEOF, "truncated: %d bytes expected, %d left", len(p), n)
	}
	if err != nil {
		if r.err == nil {
			r.err = fmt.Errorf("nar: reading at byte %d: %w", r.off, err)
		}
		return r.err
	}
	return nil
}

// u64 reads a little-endian 64-bit number.
func (r *Reader) u64(path string) (uint64, error) {
	if err := r.readFull(r.num[:], path); err != nil {
		return 0, err
	}
	return binary.LittleEndian.Uint64(r.num[:]), nil
}

// padding reads and checks the zero padding after n bytes.
func (r *Reader) padding(n uint64, path string) error {
	k := (8 - n%8) % 8
	if k == 0 {
		return nil
	}
	start := r.off
	if err := r.readFull(r.num[:k], path); err != nil {
		return err
	}
	for _, c := range r.num[:k] {
		if c != 0 {
			return r.bad(start, path, "non-zero padding")
		}
	}
	return nil
}

// str reads a string of at most max bytes; what names it in errors.
func (r *Reader) str(max int, path, what string) (string, error) {
	start := r.off
	n, err := r.u64(path)
	if err != nil {
		return "", err
	}
	if n > uint64(max) {
		return "", r.bad(start, path, "%s of %d bytes, longer than the %d allowed", what, n, max)
	}
	var s string
	if n <= uint64(len(r.tokbuf)) {
		if err := r.readFull(r.tokbuf[:n], path); err != nil {
			return "", err
		}
		s = string(r.tokbuf[:n])
	} else {
		b := make([]byte, n)
		if err := r.readFull(b, path); err != nil {
			return "", err
		}
		s = string(b)
	}
	if err := r.padding(n, path); err != nil {
		return "", err
	}
	return s, nil
}

// token reads a token and returns it and its offset; the tokens of the
// format are returned without allocating.
func (r *Reader) token(path string) (string, int64, error) {
	start := r.off
	n, err := r.u64(path)
	if err != nil {
		return "", start, err
	}
	if n > maxTokenLen {
		return "", start, r.bad(start, path, "a token of %d bytes, longer than the %d allowed", n, maxTokenLen)
	}
	b := r.tokbuf[:n]
	if err := r.readFull(b, path); err != nil {
		return "", start, err
	}
	if err := r.padding(n, path); err != nil {
		return "", start, err
	}
	switch string(b) {
	case "(":
		return "(", start, nil
	case ")":
		return ")", start, nil
	case "type":
		return "type", start, nil
	case "entry":
		return "entry", start, nil
	case "name":
		return "name", start, nil
	case "node":
		return "node", start, nil
	case "regular":
		return "regular", start, nil
	case "contents":
		return "contents", start, nil
	case "directory":
		return "directory", start, nil
	case "symlink":
		return "symlink", start, nil
	case "target":
		return "target", start, nil
	case "executable":
		return "executable", start, nil
	case "":
		return "", start, nil
	}
	return string(b), start, nil
}

// expect reads a token that must be want.
func (r *Reader) expect(want, path string) error {
	s, off, err := r.token(path)
	if err != nil {
		return err
	}
	if s != want {
		return r.bad(off, path, "%q where %q belongs", s, want)
	}
	return nil
}

// Next advances to the next node of the archive, skipping what is left of
// the current file's contents, and returns its header; io.EOF after the
// top node is complete and the input has ended there. The Header is the
// caller's to keep.
func (r *Reader) Next() (*Header, error) {
	if r.err != nil {
		return nil, r.err
	}
	for {
		switch r.state {
		case stEnd:
			return nil, io.EOF
		case stStart:
			if err := r.expect(narMagic, ""); err != nil {
				var e *Error
				if errors.As(err, &e) && e.Offset == 0 {
					e.Msg = "not a NAR (no nix-archive-1 magic): " + e.Msg
				}
				return nil, err
			}
			return r.node("")
		case stFile:
			if err := r.skipContents(); err != nil {
				return nil, err
			}
			if err := r.expect(")", r.cur.Path); err != nil {
				return nil, err
			}
			r.state = stNodeDone
		case stNodeDone:
			if len(r.stack) == 0 {
				return nil, r.end()
			}
			// The ")" closing the entry that held the node.
			if err := r.expect(")", r.cur.Path); err != nil {
				return nil, err
			}
			r.state = stInDir
		case stInDir:
			d := &r.stack[len(r.stack)-1]
			tok, off, err := r.token(d.path)
			if err != nil {
				return nil, err
			}
			switch tok {
			case ")":
				r.cur.Path = d.path
				r.stack = r.stack[:len(r.stack)-1]
				r.state = stNodeDone
				continue
			case "entry":
			default:
				return nil, r.bad(off, d.path, "%q where \"entry\" or \")\" belongs in a directory", tok)
			}
			if err := r.expect("(", d.path); err != nil {
				return nil, err
			}
			if err := r.expect("name", d.path); err != nil {
				return nil, err
			}
			off = r.off
			name, err := r.str(MaxNameLen, d.path, "an entry name")
			if err != nil {
				return nil, err
			}
			if why := badName(name); why != "" {
				return nil, r.bad(off, d.path, "entry name %q %s", name, why)
			}
			if d.any && name <= d.prev {
				if name == d.prev {
					return nil, r.bad(off, d.path, "entry %q twice", name)
				}
				return nil, r.bad(off, d.path, "entry %q after %q (names must be in strictly ascending byte order)", name, d.prev)
			}
			d.prev, d.any = name, true
			path := name
			if d.path != "" {
				path = d.path + "/" + name
			}
			if err := r.expect("node", path); err != nil {
				return nil, err
			}
			return r.node(path)
		}
	}
}

// badName says what is wrong with an entry name, or "".
func badName(name string) string {
	switch {
	case name == "":
		return "is empty"
	case name == "." || name == "..":
		return "is not a file name"
	case strings.IndexByte(name, '/') >= 0:
		return "holds a slash"
	case strings.IndexByte(name, 0) >= 0:
		return "holds a NUL byte"
	case len(name) > MaxNameLen:
		return fmt.Sprintf("is longer than %d bytes", MaxNameLen)
	}
	return ""
}

// node reads a node's header up to its contents (regular file), its end
// (symlink) or its first entry (directory).
func (r *Reader) node(path string) (*Header, error) {
	start := r.off
	r.nodes++
	if r.lim.MaxEntries > 0 && r.nodes > r.lim.MaxEntries {
		return nil, r.fail(ErrLimit, start, path, nil, "more than the limit of %d entries", r.lim.MaxEntries)
	}
	if err := r.expect("(", path); err != nil {
		return nil, err
	}
	if err := r.expect("type", path); err != nil {
		return nil, err
	}
	typ, off, err := r.token(path)
	if err != nil {
		return nil, err
	}
	r.cur = Header{Path: path}
	switch typ {
	case "regular":
		r.cur.Type = FileRegular
		tok, off, err := r.token(path)
		if err != nil {
			return nil, err
		}
		if tok == "executable" {
			if err := r.expect("", path); err != nil {
				return nil, err
			}
			r.cur.Executable = true
			if tok, off, err = r.token(path); err != nil {
				return nil, err
			}
		}
		if tok != "contents" {
			return nil, r.bad(off, path, "%q where \"contents\" belongs in a regular file", tok)
		}
		off = r.off
		n, err := r.u64(path)
		if err != nil {
			return nil, err
		}
		// The contents, their padding and the closing ")" must fit in an
		// int64 offset.
		if n > math.MaxInt64-uint64(r.off)-32 {
			return nil, r.bad(off, path, "contents size %d overflows", n)
		}
		if r.lim.MaxBytes > 0 && r.off+int64(n) > r.lim.MaxBytes {
			return nil, r.fail(ErrLimit, off, path, nil, "%d bytes of contents (bytes %d to %d) pass the limit of %d bytes", n, r.off, r.off+int64(n), r.lim.MaxBytes)
		}
		r.cur.Size = int64(n)
		r.left = int64(n)
		r.state = stFile
	case "symlink":
		r.cur.Type = FileSymlink
		if err := r.expect("target", path); err != nil {
			return nil, err
		}
		off := r.off
		t, err := r.str(MaxTargetLen, path, "a symlink target")
		if err != nil {
			return nil, err
		}
		if t == "" {
			return nil, r.bad(off, path, "empty symlink target")
		}
		if strings.IndexByte(t, 0) >= 0 {
			return nil, r.bad(off, path, "symlink target %q holds a NUL byte", t)
		}
		if err := r.expect(")", path); err != nil {
			return nil, err
		}
		r.cur.LinkTarget = t
		r.state = stNodeDone
	case "directory":
		r.cur.Type = FileDirectory
		if len(r.stack) >= r.lim.MaxDepth {
			return nil, r.fail(ErrLimit, off, path, nil, "directories nested deeper than %d", r.lim.MaxDepth)
		}
		r.stack = append(r.stack, openDir{path: path})
		r.state = stInDir
	default:
		return nil, r.bad(off, path, "unknown node type %q", typ)
	}
	h := r.cur
	return &h, nil
}

// Read reads the current regular file's contents; io.EOF at their end, or
// when the current node is not a regular file.
func (r *Reader) Read(p []byte) (int, error) {
	if r.err != nil {
		return 0, r.err
	}
	if r.state != stFile || r.left <= 0 {
		return 0, io.EOF
	}
	if int64(len(p)) > r.left {
		p = p[:r.left]
	}
	n, err := r.br.Read(p)
	r.off += int64(n)
	r.left -= int64(n)
	if err == io.EOF && r.left > 0 {
		return n, r.fail(ErrBadNAR, r.off, r.cur.Path, io.ErrUnexpectedEOF, "truncated: %d bytes of contents missing", r.left)
	}
	if err != nil && err != io.EOF {
		r.err = fmt.Errorf("nar: reading at byte %d: %w", r.off, err)
		return n, r.err
	}
	if r.left == 0 {
		if perr := r.padding(uint64(r.cur.Size), r.cur.Path); perr != nil {
			return n, perr
		}
		r.left = -1 // padding read
	}
	return n, nil
}

// skipContents reads what is left of the current file and its padding.
func (r *Reader) skipContents() error {
	if r.left < 0 {
		return nil
	}
	if r.left > 0 {
		n, err := r.br.Discard(int(min(r.left, math.MaxInt)))
		r.off += int64(n)
		r.left -= int64(n)
		if r.left > 0 {
			if err == nil || err == io.EOF {
				return r.fail(ErrBadNAR, r.off, r.cur.Path, io.ErrUnexpectedEOF, "truncated: %d bytes of contents missing", r.left)
			}
			r.err = fmt.Errorf("nar: reading at byte %d: %w", r.off, err)
			return r.err
		}
	}
	r.left = -1
	return r.padding(uint64(r.cur.Size), r.cur.Path)
}

// end checks that nothing follows the top node.
func (r *Reader) end() error {
	_, err := r.br.ReadByte()
	switch {
	case err == io.EOF:
		r.state = stEnd
		return io.EOF
	case err == nil:
		return r.bad(r.off, "", "data after the end of the archive")
	default:
		r.err = fmt.Errorf("nar: reading at byte %d: %w", r.off, err)
		return r.err
	}
}
