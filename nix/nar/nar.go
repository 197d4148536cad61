package nar

import (
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"storekeeper/nix/storepath"
	"strings"
	"sync"

	"golang.org/x/sys/unix"
)

// ErrUnsupportedFileType is wrapped by the error for a file that a NAR
// cannot hold (fifo, socket, device); the error names the file.
var ErrUnsupportedFileType = errors.New("store: unsupported file type")

// ErrBadHash is wrapped by every error ParseNarHash returns.
var ErrBadHash = errors.New("store: bad hash")

// errChanged is wrapped when a file changes while it is being serialised.
var errChanged = errors.New("file changed while being read")

// NarHash is the SHA-256 of a NAR serialisation.
type Hash [32]byte

// Hex returns the hash in lowercase base-16.
func (h Hash) Hex() string { return hex.EncodeToString(h[:]) }

// Base32 returns the hash in Nix base-32 (52 characters).
func (h Hash) Base32() string { return storepath.EncodeBase32(h[:]) }

// String returns "sha256:" + the base-32 form, as Nix prints hashes.
func (h Hash) String() string { return "sha256:" + h.Base32() }

// SRI returns the SRI form: "sha256-" + standard base64.
func (h Hash) SRI() string { return "sha256-" + base64.StdEncoding.EncodeToString(h[:]) }

// ParseNarHash parses a SHA-256 hash in the forms Nix writes: "sha256:" and
// 64 base-16 digits (the database's form), "sha256:" and 52 base-32 digits,
// "sha256:" and 44 base64 characters, and SRI "sha256-" and base64.
func ParseHash(s string) (Hash, error) {
	var h Hash
	bad := func(why string) (Hash, error) {
		return Hash{}, fmt.Errorf("%w: %q: %s", ErrBadHash, s, why)
	}
	var b64 string
	switch {
	case strings.HasPrefix(s, "sha256:"):
		d := s[len("sha256:"):]
		switch len(d) {
		case 64:
			if _, err := hex.Decode(h[:], []byte(d)); err != nil {
				return bad("invalid base-16 digits")
			}
			return h, nil
		case 52:
			b, err := storepath.DecodeBase32(d)
			if err != nil {
				return bad("invalid base-32 digits")
			}
			copy(h[:], b)
			return h, nil
		case 44:
			b64 = d
		default:
			return bad(fmt.Sprintf("a SHA-256 hash has 64 base-16, 52 base-32 or 44 base64 digits, not %d", len(d)))
		}
	case strings.HasPrefix(s, "sha256-"):
		b64 = s[len("sha256-"):]
		if len(b64) != 44 {
			return bad(fmt.Sprintf("an SRI SHA-256 hash has 44 base64 characters, not %d", len(b64)))
		}
	default:
		return bad(`expected "sha256:" or "sha256-"`)
	}
	// 44 base64 characters decode to up to 33 bytes: decode into room
	// for them (Decode panics on a short destination), then require 32.
	var buf [33]byte
	n, err := base64.StdEncoding.Strict().Decode(buf[:], []byte(b64))
	if err != nil || n != len(h) {
		return bad("invalid base64")
	}
	copy(h[:], buf[:n])
	return h, nil
}

// FileType is the type of a node in a NAR.
type FileType uint8

// The node types a NAR holds.
const (
	FileRegular FileType = iota + 1
	FileDirectory
	FileSymlink
)

func (t FileType) String() string {
	switch t {
	case FileRegular:
		return "regular"
	case FileDirectory:
		return "directory"
	case FileSymlink:
		return "symlink"
	}
	return fmt.Sprintf("FileType(%d)", uint8(t))
}

// narBufSize is the size of the buffer NAR output goes through.
const narBufSize = 1 << 20

var narBufPool = sync.Pool{New: func() any {
	b := make([]byte, narBufSize)
	return &b
}}

// narWriter writes NAR tokens through one buffer. Errors are sticky: after
// the first failed write every operation is a no-op and err holds it.
type narWriter struct {
	w       io.Writer
	bufp    *[]byte
	buf     []byte
	n       int
	written int64
	err     error
}

func newNarWriter(w io.Writer) *narWriter {
	bp := narBufPool.Get().(*[]byte)
	return &narWriter{w: w, bufp: bp, buf: *bp}
}

// release returns the buffer to the pool; the writer is unusable after.
func (nw *narWriter) release() {
	if nw.bufp != nil {
		narBufPool.Put(nw.bufp)
		nw.bufp, nw.buf = nil, nil
	}
}

func (nw *narWriter) flush() error {
	if nw.err != nil || nw.n == 0 {
		return nw.err
	}
	m, err := nw.w.Write(nw.buf[:nw.n])
	nw.written += int64(m)
	if err == nil && m != nw.n {
		err = io.ErrShortWrite
	}
	nw.n = 0
	nw.err = err
	return err
}

func (nw *narWriter) raw(s string) { narRaw(nw, s) }

// narRaw writes bytes through nw's buffer.
func narRaw[T ~string | ~[]byte](nw *narWriter, s T) {
	for len(s) > 0 && nw.err == nil {
		if nw.n == len(nw.buf) {
			nw.flush()
			continue
		}
		c := copy(nw.buf[nw.n:], s)
		nw.n += c
		s = s[c:]
	}
}

func (nw *narWriter) u64(v uint64) {
	if len(nw.buf)-nw.n >= 8 {
		binary.LittleEndian.PutUint64(nw.buf[nw.n:], v)
		nw.n += 8
		return
	}
	var b [8]byte
	binary.LittleEndian.PutUint64(b[:], v)
	nw.raw(string(b[:]))
}

const zeroPad = "\x00\x00\x00\x00\x00\x00\x00\x00"

func (nw *narWriter) pad(n uint64) {
	if r := n % 8; r != 0 {
		nw.raw(zeroPad[:8-r])
	}
}

// str writes a NAR string: its length, its bytes, and zero padding.
func (nw *narWriter) str(s string) {
	nw.u64(uint64(len(s)))
	nw.raw(s)
	nw.pad(uint64(len(s)))
}

// symlink writes a symlink node.
func (nw *narWriter) symlink(target string) {
	nw.str("(")
	nw.str("type")
	nw.str("symlink")
	nw.str("target")
	nw.str(target)
	nw.str(")")
}

// regular writes a regular file node: its header, the contents of the
// open file fd (see contents) and the closing token.
func (nw *narWriter) regular(fd int, w io.Writer, st *unix.Stat_t, disp string) error {
	return nw.regularAfter(nil, fd, w, st, disp)
}

// regularAfter is regular for a file whose first bytes, prefix, were
// already read from fd; with fd -1, prefix is the whole file (batched
// hashing reads small files that way).
func (nw *narWriter) regularAfter(prefix []byte, fd int, w io.Writer, st *unix.Stat_t, disp string) error {
	nw.str("(")
	nw.str("type")
	nw.str("regular")
	if st.Mode&unix.S_IXUSR != 0 {
		nw.str("executable")
		nw.str("")
	}
	if err := nw.contents(prefix, fd, w, st.Size, disp); err != nil {
		return err
	}
	nw.str(")")
	return nw.err
}

// contents writes "contents", size, prefix and the rest of the open file
// fd from its current offset (none if fd is -1), then the padding, and
// copies the bytes to w if not nil. Each read asks for one byte more than
// is left, so the file's end shows as a short read without a final empty
// read; a file found shorter or longer than size is an error (errChanged)
// naming disp.
func (nw *narWriter) contents(prefix []byte, fd int, w io.Writer, size int64, disp string) error {
	if size < 0 {
		return fmt.Errorf("store: %s: negative size %d", disp, size)
	}
	if int64(len(prefix)) > size {
		return fmt.Errorf("store: %s: %w: more than the %d bytes announced", disp, errChanged, size)
	}
	nw.str("contents")
	nw.u64(uint64(size))
	if len(prefix) > 0 && w != nil {
		if _, err := w.Write(prefix); err != nil {
			return err
		}
	}
	narRaw(nw, prefix)
	left := size - int64(len(prefix))
	for nw.err == nil && fd >= 0 {
		if nw.n == len(nw.buf) {
			nw.flush()
			continue
		}
		chunk := nw.buf[nw.n:]
		if int64(len(chunk)) > left+1 {
			chunk = chunk[:left+1]
		}
		m, err := fdReader(fd).Read(chunk)
		if err == io.EOF {
			m, err = 0, nil
		}
		if err != nil {
			return &os.PathError{Op: "read", Path: disp, Err: err}
		}
		if int64(m) > left {
			return fmt.Errorf("store: %s: %w: more than the %d bytes announced", disp, errChanged, size)
		}
		if m > 0 && w != nil {
			if _, err := w.Write(chunk[:m]); err != nil {
				return err
			}
		}
		nw.n += m
		left -= int64(m)
		if m == 0 {
			break
		}
		if left == 0 && m < len(chunk) {
			break // the short read was the end of the file
		}
	}
	if nw.err != nil {
		return nw.err
	}
	if left > 0 {
		return fmt.Errorf("store: %s: %w: %d bytes announced, only %d read", disp, errChanged, size, size-left)
	}
	nw.pad(uint64(size))
	return nw.err
}

// fdReader reads from a raw file descriptor.
type fdReader int

func (fd fdReader) Read(p []byte) (int, error) {
	for {
		n, err := unix.Read(int(fd), p)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return 0, err
		}
		if n == 0 && len(p) > 0 {
			return 0, io.EOF
		}
		return n, nil
	}
}

// cleanTop strips trailing slashes, which would make the kernel follow a
// symlink at the top.
func cleanTop(p string) string {
	q := strings.TrimRight(p, "/")
	if q == "" && p != "" {
		return "/"
	}
	return q
}

// DumpPath writes the NAR serialisation of path to w, exactly as
// `nix-store --dump` does, and returns the number of bytes written.
//
// It never follows symlinks: a symlink at the top is dumped as a symlink,
// and every node below is opened relative to its parent directory's
// descriptor with O_NOFOLLOW, so replacing part of the tree with a symlink
// while it is being read cannot lead outside it. A regular file whose size
// changes while it is read, or a node replaced by one of another type, is
// an error; so is a fifo, socket or device (wrapping
// ErrUnsupportedFileType). Errors name the file.
func DumpPath(w io.Writer, path string) (int64, error) {
	nw := newNarWriter(w)
	defer nw.release()
	nw.str("nix-archive-1")
	t := treeWalker{nw: nw}
	err := t.walkTop(path)
	if err == nil {
		err = nw.flush()
	}
	return nw.written, err
}

// HashPath returns the SHA-256 of the NAR serialisation of path (see
// DumpPath) and the NAR's size.
func HashPath(path string) (Hash, int64, error) {
	h := sha256.New()
	n, err := DumpPath(h, path)
	if err != nil {
		return Hash{}, 0, err
	}
	var nh Hash
	h.Sum(nh[:0])
	return nh, n, nil
}
