package store

import (
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
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
type NarHash [32]byte

// Hex returns the hash in lowercase base-16.
func (h NarHash) Hex() string { return hex.EncodeToString(h[:]) }

// Base32 returns the hash in Nix base-32 (52 characters).
func (h NarHash) Base32() string { return EncodeBase32(h[:]) }

// String returns "sha256:" + the base-32 form, as Nix prints hashes.
func (h NarHash) String() string { return "sha256:" + h.Base32() }

// SRI returns the SRI form: "sha256-" + standard base64.
func (h NarHash) SRI() string { return "sha256-" + base64.StdEncoding.EncodeToString(h[:]) }

// ParseNarHash parses a SHA-256 hash in the forms Nix writes: "sha256:" and
// 64 base-16 digits (the database's form), "sha256:" and 52 base-32 digits,
// "sha256:" and 44 base64 characters, and SRI "sha256-" and base64.
func ParseNarHash(s string) (NarHash, error) {
	var h NarHash
	bad := func(why string) (NarHash, error) {
		return NarHash{}, fmt.Errorf("%w: %q: %s", ErrBadHash, s, why)
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
			b, err := DecodeBase32(d)
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
	n, err := base64.StdEncoding.Strict().Decode(h[:], []byte(b64))
	if err != nil || n != len(h) {
		return bad("invalid base64")
	}
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

func (nw *narWriter) raw(s string) {
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

// contents writes "contents", the size and exactly size bytes read from r,
// then the padding. It fails if r holds fewer or more bytes than size.
func (nw *narWriter) contents(r io.Reader, size int64, name string) error {
	if size < 0 {
		return fmt.Errorf("store: %s: negative size %d", name, size)
	}
	nw.str("contents")
	nw.u64(uint64(size))
	left := size
	for left > 0 && nw.err == nil {
		if nw.n == len(nw.buf) {
			nw.flush()
			continue
		}
		chunk := nw.buf[nw.n:]
		if int64(len(chunk)) > left {
			chunk = chunk[:left]
		}
		m, err := r.Read(chunk)
		nw.n += m
		left -= int64(m)
		if err == io.EOF || (err == nil && m == 0) {
			if left > 0 {
				return fmt.Errorf("store: %s: %w: %d bytes announced, only %d read", name, errChanged, size, size-left)
			}
			break
		}
		if err != nil {
			return &os.PathError{Op: "read", Path: name, Err: err}
		}
	}
	if nw.err != nil {
		return nw.err
	}
	var one [1]byte
	for {
		m, err := r.Read(one[:])
		if m > 0 {
			return fmt.Errorf("store: %s: %w: more than the %d bytes announced", name, errChanged, size)
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			return &os.PathError{Op: "read", Path: name, Err: err}
		}
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

// narVisitor receives the nodes of a file system tree in NAR order.
type narVisitor interface {
	// regular is called for a regular file; dirfd and name locate it
	// (without following symlinks), st is its lstat.
	regular(dirfd int, name, rel, disp string, st *unix.Stat_t) error
	symlink(rel, target string, st *unix.Stat_t) error
	dirStart(rel string, st *unix.Stat_t) error
	entryStart(name string) error
	entryEnd() error
	dirEnd() error
}

// treeWalker walks a tree without following symlinks: each node is reached
// by an *at system call relative to its parent directory's descriptor.
type treeWalker struct {
	root   string
	v      narVisitor
	dirbuf []byte
}

func (t *treeWalker) display(rel string) string {
	switch {
	case rel == "":
		return t.root
	case strings.HasSuffix(t.root, "/"):
		return t.root + rel
	}
	return t.root + "/" + rel
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

func (t *treeWalker) walkTop(p string) error {
	t.root = p
	return t.node(unix.AT_FDCWD, cleanTop(p), "")
}

func (t *treeWalker) node(dirfd int, name, rel string) error {
	disp := t.display(rel)
	var st unix.Stat_t
	if err := narFstatat(dirfd, name, &st); err != nil {
		return &os.PathError{Op: "lstat", Path: disp, Err: err}
	}
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFREG:
		return t.v.regular(dirfd, name, rel, disp, &st)
	case unix.S_IFLNK:
		target, err := narReadlinkat(dirfd, name, st.Size)
		if err != nil {
			return &os.PathError{Op: "readlink", Path: disp, Err: err}
		}
		return t.v.symlink(rel, target, &st)
	case unix.S_IFDIR:
		return t.dir(dirfd, name, rel, disp, &st)
	}
	return fmt.Errorf("%w: %s is a %s", ErrUnsupportedFileType, disp, fileKind(st.Mode))
}

func (t *treeWalker) dir(dirfd int, name, rel, disp string, lst *unix.Stat_t) error {
	fd, err := narOpenat(dirfd, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC)
	if err != nil {
		if err == unix.ELOOP || err == unix.ENOTDIR {
			return fmt.Errorf("store: %s: %w: no longer a directory", disp, errChanged)
		}
		return &os.PathError{Op: "open", Path: disp, Err: err}
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return &os.PathError{Op: "fstat", Path: disp, Err: err}
	}
	if st.Dev != lst.Dev || st.Ino != lst.Ino {
		return fmt.Errorf("store: %s: %w: replaced by another directory", disp, errChanged)
	}
	names, err := t.readNames(fd)
	if err != nil {
		return &os.PathError{Op: "readdir", Path: disp, Err: err}
	}
	slices.Sort(names)
	if err := t.v.dirStart(rel, &st); err != nil {
		return err
	}
	for _, n := range names {
		if err := t.v.entryStart(n); err != nil {
			return err
		}
		crel := n
		if rel != "" {
			crel = rel + "/" + n
		}
		if err := t.node(fd, n, crel); err != nil {
			return err
		}
		if err := t.v.entryEnd(); err != nil {
			return err
		}
	}
	return t.v.dirEnd()
}

// readNames reads all entry names of the directory open at fd, without "."
// and "..".
func (t *treeWalker) readNames(fd int) ([]string, error) {
	if t.dirbuf == nil {
		t.dirbuf = make([]byte, 32<<10)
	}
	var names []string
	for {
		n, err := unix.Getdents(fd, t.dirbuf)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return nil, err
		}
		if n <= 0 {
			return names, nil
		}
		_, _, names = unix.ParseDirent(t.dirbuf[:n], -1, names)
	}
}

func narFstatat(dirfd int, name string, st *unix.Stat_t) error {
	for {
		err := unix.Fstatat(dirfd, name, st, unix.AT_SYMLINK_NOFOLLOW)
		if err != unix.EINTR {
			return err
		}
	}
}

func narOpenat(dirfd int, name string, flags int) (int, error) {
	for {
		fd, err := unix.Openat(dirfd, name, flags, 0)
		if err != unix.EINTR {
			return fd, err
		}
	}
}

func narReadlinkat(dirfd int, name string, size int64) (string, error) {
	n := 256
	if size >= int64(n) {
		n = int(size) + 1
	}
	for {
		buf := make([]byte, n)
		m, err := unix.Readlinkat(dirfd, name, buf)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return "", err
		}
		if m < len(buf) {
			return string(buf[:m]), nil
		}
		n *= 2
	}
}

func fileKind(mode uint32) string {
	switch mode & unix.S_IFMT {
	case unix.S_IFIFO:
		return "fifo"
	case unix.S_IFSOCK:
		return "socket"
	case unix.S_IFCHR:
		return "character device"
	case unix.S_IFBLK:
		return "block device"
	}
	return fmt.Sprintf("file of type %#o", mode&unix.S_IFMT)
}

// narDumper is the narVisitor that writes the NAR.
type narDumper struct {
	nw *narWriter
}

func (d *narDumper) regular(dirfd int, name, rel, disp string, lst *unix.Stat_t) error {
	// O_NONBLOCK so that a file swapped for a fifo cannot block the open.
	fd, err := narOpenat(dirfd, name, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC|unix.O_NONBLOCK|unix.O_NOCTTY)
	if err != nil {
		if err == unix.ELOOP {
			return fmt.Errorf("store: %s: %w: no longer a regular file", disp, errChanged)
		}
		return &os.PathError{Op: "open", Path: disp, Err: err}
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return &os.PathError{Op: "fstat", Path: disp, Err: err}
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG || st.Dev != lst.Dev || st.Ino != lst.Ino {
		return fmt.Errorf("store: %s: %w: replaced by another file", disp, errChanged)
	}
	return d.file(fdReader(fd), st.Size, st.Mode&unix.S_IXUSR != 0, disp)
}

func (d *narDumper) file(r io.Reader, size int64, executable bool, disp string) error {
	nw := d.nw
	nw.str("(")
	nw.str("type")
	nw.str("regular")
	if executable {
		nw.str("executable")
		nw.str("")
	}
	if err := nw.contents(r, size, disp); err != nil {
		return err
	}
	nw.str(")")
	return nw.err
}

func (d *narDumper) symlink(rel, target string, st *unix.Stat_t) error {
	nw := d.nw
	nw.str("(")
	nw.str("type")
	nw.str("symlink")
	nw.str("target")
	nw.str(target)
	nw.str(")")
	return nw.err
}

func (d *narDumper) dirStart(rel string, st *unix.Stat_t) error {
	d.nw.str("(")
	d.nw.str("type")
	d.nw.str("directory")
	return d.nw.err
}

func (d *narDumper) entryStart(name string) error {
	d.nw.str("entry")
	d.nw.str("(")
	d.nw.str("name")
	d.nw.str(name)
	d.nw.str("node")
	return d.nw.err
}

func (d *narDumper) entryEnd() error {
	d.nw.str(")")
	return d.nw.err
}

func (d *narDumper) dirEnd() error {
	d.nw.str(")")
	return d.nw.err
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
	t := treeWalker{v: &narDumper{nw: nw}}
	err := t.walkTop(path)
	if err == nil {
		err = nw.flush()
	}
	return nw.written, err
}

// HashPath returns the SHA-256 of the NAR serialisation of path (see
// DumpPath) and the NAR's size.
func HashPath(path string) (NarHash, int64, error) {
	h := sha256.New()
	n, err := DumpPath(h, path)
	if err != nil {
		return NarHash{}, 0, err
	}
	var nh NarHash
	h.Sum(nh[:0])
	return nh, n, nil
}

// HashRegularFileNAR returns the NAR hash of a lone regular file (the name
// Nix gives a file in the store's .links directory) whose contents are the
// next size bytes of f, read from its current offset; executable sets the
// NAR's executable flag. It fails unless f holds exactly size more bytes.
func HashRegularFileNAR(f *os.File, size int64, executable bool) (NarHash, error) {
	h := sha256.New()
	nw := newNarWriter(h)
	defer nw.release()
	nw.str("nix-archive-1")
	d := narDumper{nw: nw}
	err := d.file(f, size, executable, f.Name())
	if err == nil {
		err = nw.flush()
	}
	if err != nil {
		return NarHash{}, err
	}
	var nh NarHash
	h.Sum(nh[:0])
	return nh, nil
}

// narWalkFunc adapts a WalkNAR callback to narVisitor.
type narWalkFunc func(rel string, typ FileType, mode uint32, size int64, target string) error

func (f narWalkFunc) regular(dirfd int, name, rel, disp string, st *unix.Stat_t) error {
	return f(rel, FileRegular, st.Mode, st.Size, "")
}

func (f narWalkFunc) symlink(rel, target string, st *unix.Stat_t) error {
	return f(rel, FileSymlink, st.Mode, int64(len(target)), target)
}

func (f narWalkFunc) dirStart(rel string, st *unix.Stat_t) error {
	return f(rel, FileDirectory, st.Mode, 0, "")
}

func (narWalkFunc) entryStart(string) error { return nil }
func (narWalkFunc) entryEnd() error         { return nil }
func (narWalkFunc) dirEnd() error           { return nil }

// WalkNAR calls fn for every node of the tree at path in NAR order (a
// directory before its entries, entries sorted bytewise), walking it exactly
// as DumpPath does without reading file contents. rel is the node's path
// relative to path ("" for path itself, "a/b" below it); mode is its
// st_mode (from lstat, or for a directory from fstat of the opened
// directory); size is a regular file's size or a symlink target's length;
// target is a symlink's target. An error from fn stops the walk and is
// returned as is.
func WalkNAR(path string, fn func(rel string, typ FileType, mode uint32, size int64, target string) error) error {
	t := treeWalker{v: narWalkFunc(fn)}
	return t.walkTop(path)
}
