package store

import (
	"crypto/sha256"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"sync"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Node describes one node of a tree met by HashPathFiles or WalkPathStat.
// The visitor gets a pointer to a Node that is reused for the next node:
// copy what it keeps, and call Stat only during the visit.
type Node struct {
	// Rel is the node's path relative to the top ("" for the top itself,
	// "a/b" below it).
	Rel  string
	Type FileType
	// Size is a regular file's size (what the NAR holds) or a symlink
	// target's length.
	Size int64
	// Target is a symlink's target.
	Target string

	st     unix.Stat_t
	haveSt bool
	fd     int    // an open directory's descriptor, or -1
	dirfd  int    // the parent's descriptor, for a symlink's lstat
	name   string // the name in dirfd
}

// Stat returns the node's metadata: for a regular file the fstat of the
// opened file (WalkPathStat: its lstat), for a directory the fstat of the
// opened directory, for a symlink its lstat; it describes the very node
// the NAR is made from. It is fetched on first use (a walk that never
// asks saves a system call per directory and symlink). Call it only
// during the visit.
func (n *Node) Stat() (*unix.Stat_t, error) {
	if n.haveSt {
		return &n.st, nil
	}
	var err error
	if n.fd >= 0 {
		err = unix.Fstat(n.fd, &n.st)
	} else {
		err = narFstatat(n.dirfd, n.name, &n.st)
		if err == nil && n.st.Mode&unix.S_IFMT != unix.S_IFLNK {
			err = fmt.Errorf("store: %s: %w: no longer a symlink", n.Rel, errChanged)
		}
	}
	if err != nil {
		return nil, err
	}
	n.haveSt = true
	return &n.st, nil
}

// NodeFunc is called for each node in NAR order (a directory before its
// entries, entries sorted bytewise). For a regular file it may return a
// writer: the file's contents are written to it as they are read for the
// NAR, so a per-file digest costs no second read. An error stops the walk
// and is returned as is.
type NodeFunc func(n *Node) (io.Writer, error)

// hashWalker walks a tree like treeWalker (every node reached by an *at
// call relative to its parent's descriptor, never following a symlink)
// but with fewer system calls per node, which is what a whole-store audit
// is made of: the entry types from getdents spare the lstat of regular
// files and directories (the opened descriptor's fstat says what was
// opened, and O_NOFOLLOW|O_NONBLOCK make opening a swapped-in symlink or
// fifo fail or harmless), and a regular file is read with requests one
// byte larger than what is left, so the short read that ends it also
// shows its end without a final empty read.
type hashWalker struct {
	nw      *narWriter // nil: walk without reading contents
	fn      NodeFunc
	node    Node
	root    string
	dirbuf  []byte
	dirbufp *[]byte
}

var dirBufPool = sync.Pool{New: func() any {
	b := make([]byte, 32<<10)
	return &b
}}

// release returns the walker's buffer to the pool.
func (t *hashWalker) release() {
	if t.dirbufp != nil {
		dirBufPool.Put(t.dirbufp)
		t.dirbufp, t.dirbuf = nil, nil
	}
}

type dirEntry struct {
	name string
	typ  uint8
}

func (t *hashWalker) display(rel string) string {
	switch {
	case rel == "":
		return t.root
	case strings.HasSuffix(t.root, "/"):
		return t.root + rel
	}
	return t.root + "/" + rel
}

// report calls the visitor. st is the node's stat if known (nil: fetch
// it on demand from fd, or from dirfd and name for a symlink).
func (t *hashWalker) report(rel string, typ FileType, size int64, st *unix.Stat_t, fd, dirfd int, name, target string) (io.Writer, error) {
	if t.fn == nil {
		return nil, nil
	}
	t.node = Node{Rel: rel, Type: typ, Size: size, Target: target, fd: fd, dirfd: dirfd, name: name}
	if st != nil {
		t.node.st, t.node.haveSt = *st, true
	}
	return t.fn(&t.node)
}

func (t *hashWalker) walkTop(p string) error {
	t.root = p
	name := cleanTop(p)
	var st unix.Stat_t
	if err := narFstatat(unix.AT_FDCWD, name, &st); err != nil {
		return &os.PathError{Op: "lstat", Path: p, Err: err}
	}
	return t.nodeStat(unix.AT_FDCWD, name, "", &st)
}

// nodeStat handles a node whose lstat is known.
func (t *hashWalker) nodeStat(dirfd int, name, rel string, lst *unix.Stat_t) error {
	switch lst.Mode & unix.S_IFMT {
	case unix.S_IFREG:
		return t.regular(dirfd, name, rel, lst)
	case unix.S_IFDIR:
		return t.dir(dirfd, name, rel, lst)
	case unix.S_IFLNK:
		target, err := narReadlinkat(dirfd, name, lst.Size)
		if err != nil {
			return &os.PathError{Op: "readlink", Path: t.display(rel), Err: err}
		}
		return t.symlink(dirfd, name, rel, target, lst)
	}
	return fmt.Errorf("%w: %s is a %s", ErrUnsupportedFileType, t.display(rel), fileKind(lst.Mode))
}

func (t *hashWalker) symlink(dirfd int, name, rel, target string, lst *unix.Stat_t) error {
	if _, err := t.report(rel, FileSymlink, int64(len(target)), lst, -1, dirfd, name, target); err != nil {
		return err
	}
	if nw := t.nw; nw != nil {
		nw.str("(")
		nw.str("type")
		nw.str("symlink")
		nw.str("target")
		nw.str(target)
		nw.str(")")
		return nw.err
	}
	return nil
}

// entry handles a directory entry whose type getdents reported.
func (t *hashWalker) entry(dirfd int, name, rel string, typ uint8) error {
	switch typ {
	case unix.DT_REG:
		if t.nw != nil {
			return t.regular(dirfd, name, rel, nil)
		}
	case unix.DT_DIR:
		return t.dir(dirfd, name, rel, nil)
	case unix.DT_LNK:
		// readlinkat fails with EINVAL on anything but a symlink, so
		// no lstat is needed first.
		target, err := narReadlinkat(dirfd, name, 0)
		if err == nil {
			return t.symlink(dirfd, name, rel, target, nil)
		}
		if err != unix.EINVAL {
			return &os.PathError{Op: "readlink", Path: t.display(rel), Err: err}
		}
	}
	return t.lstatNode(dirfd, name, rel)
}

func (t *hashWalker) lstatNode(dirfd int, name, rel string) error {
	var st unix.Stat_t
	if err := narFstatat(dirfd, name, &st); err != nil {
		return &os.PathError{Op: "lstat", Path: t.display(rel), Err: err}
	}
	return t.nodeStat(dirfd, name, rel, &st)
}

// regular reads a regular file. lst is its lstat, or nil when only
// getdents' type is known (then whatever the name holds when opened is
// what gets serialised).
func (t *hashWalker) regular(dirfd int, name, rel string, lst *unix.Stat_t) error {
	if t.nw == nil {
		_, err := t.report(rel, FileRegular, lst.Size, lst, -1, dirfd, name, "")
		return err
	}
	fd, err := narOpenat(dirfd, name, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC|unix.O_NONBLOCK|unix.O_NOCTTY)
	if err != nil {
		if err == unix.ELOOP {
			if lst == nil {
				return t.lstatNode(dirfd, name, rel) // a symlink now
			}
			return fmt.Errorf("store: %s: %w: no longer a regular file", t.display(rel), errChanged)
		}
		return &os.PathError{Op: "open", Path: t.display(rel), Err: err}
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return &os.PathError{Op: "fstat", Path: t.display(rel), Err: err}
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		if lst == nil && st.Mode&unix.S_IFMT != unix.S_IFDIR {
			// Replaced since getdents by a fifo, socket or device:
			// report it as such.
			return t.nodeStat(dirfd, name, rel, &st)
		}
		return fmt.Errorf("store: %s: %w: no longer a regular file", t.display(rel), errChanged)
	}
	if lst != nil && (st.Dev != lst.Dev || st.Ino != lst.Ino) {
		return fmt.Errorf("store: %s: %w: replaced by another file", t.display(rel), errChanged)
	}
	w, err := t.report(rel, FileRegular, st.Size, &st, -1, dirfd, name, "")
	if err != nil {
		return err
	}
	nw := t.nw
	nw.str("(")
	nw.str("type")
	nw.str("regular")
	if st.Mode&unix.S_IXUSR != 0 {
		nw.str("executable")
		nw.str("")
	}
	if err := t.contents(fd, w, st.Size, rel); err != nil {
		return err
	}
	nw.str(")")
	return nw.err
}

// contents writes the NAR contents of the open file fd (size bytes by its
// fstat) and copies them to w if not nil. Each read asks for one byte
// more than is left, so the file's end shows as a short read; a file
// found shorter or longer than size is an error (errChanged).
func (t *hashWalker) contents(fd int, w io.Writer, size int64, rel string) error {
	nw := t.nw
	nw.str("contents")
	nw.u64(uint64(size))
	left := size
	for nw.err == nil {
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
			return &os.PathError{Op: "read", Path: t.display(rel), Err: err}
		}
		if int64(m) > left {
			return fmt.Errorf("store: %s: %w: more than the %d bytes announced", t.display(rel), errChanged, size)
		}
		if m > 0 && w != nil {
			if _, err := w.Write(chunk[:m]); err != nil {
				return err
			}
		}
		nw.n += m
		left -= int64(m)
		if m == 0 {
			if left > 0 {
				return fmt.Errorf("store: %s: %w: %d bytes announced, only %d read", t.display(rel), errChanged, size, size-left)
			}
			break
		}
		if left == 0 && m < len(chunk) {
			break // the short read was the end of the file
		}
	}
	if nw.err != nil {
		return nw.err
	}
	nw.pad(uint64(size))
	return nw.err
}

func (t *hashWalker) dir(dirfd int, name, rel string, lst *unix.Stat_t) error {
	fd, err := narOpenat(dirfd, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC)
	if err != nil {
		if err == unix.ELOOP || err == unix.ENOTDIR {
			if lst == nil {
				return t.lstatNode(dirfd, name, rel) // no longer a directory
			}
			return fmt.Errorf("store: %s: %w: no longer a directory", t.display(rel), errChanged)
		}
		return &os.PathError{Op: "open", Path: t.display(rel), Err: err}
	}
	defer unix.Close(fd)
	var stp *unix.Stat_t
	if lst != nil {
		var st unix.Stat_t
		if err := unix.Fstat(fd, &st); err != nil {
			return &os.PathError{Op: "fstat", Path: t.display(rel), Err: err}
		}
		if st.Dev != lst.Dev || st.Ino != lst.Ino {
			return fmt.Errorf("store: %s: %w: replaced by another directory", t.display(rel), errChanged)
		}
		stp = &st
	}
	ents, err := t.readEntries(fd)
	if err != nil {
		return &os.PathError{Op: "readdir", Path: t.display(rel), Err: err}
	}
	if _, err := t.report(rel, FileDirectory, 0, stp, fd, dirfd, name, ""); err != nil {
		return err
	}
	nw := t.nw
	if nw != nil {
		nw.str("(")
		nw.str("type")
		nw.str("directory")
	}
	for _, e := range ents {
		if nw != nil {
			nw.str("entry")
			nw.str("(")
			nw.str("name")
			nw.str(e.name)
			nw.str("node")
		}
		crel := e.name
		if rel != "" {
			crel = rel + "/" + e.name
		}
		if err := t.entry(fd, e.name, crel, e.typ); err != nil {
			return err
		}
		if nw != nil {
			nw.str(")")
		}
	}
	if nw != nil {
		nw.str(")")
		return nw.err
	}
	return nil
}

// readEntries reads the names and types of the directory open at fd,
// without "." and "..", sorted bytewise.
func (t *hashWalker) readEntries(fd int) ([]dirEntry, error) {
	if t.dirbuf == nil {
		t.dirbufp = dirBufPool.Get().(*[]byte)
		t.dirbuf = *t.dirbufp
	}
	var ents []dirEntry
	for {
		n, err := unix.Getdents(fd, t.dirbuf)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return nil, err
		}
		if n <= 0 {
			break
		}
		b := t.dirbuf[:n]
		for len(b) > 0 {
			// struct linux_dirent64: ino u64, off s64, reclen u16, type u8, name.
			if len(b) < 19 {
				return nil, unix.EIO
			}
			reclen := int(*(*uint16)(unsafe.Pointer(&b[16])))
			if reclen < 19 || reclen > len(b) {
				return nil, unix.EIO
			}
			typ := b[18]
			nb := b[19:reclen]
			if i := slices.Index(nb, 0); i >= 0 {
				nb = nb[:i]
			}
			b = b[reclen:]
			if len(nb) == 0 || (nb[0] == '.' && (len(nb) == 1 || (len(nb) == 2 && nb[1] == '.'))) {
				continue
			}
			ents = append(ents, dirEntry{name: string(nb), typ: typ})
		}
	}
	slices.SortFunc(ents, func(a, b dirEntry) int { return strings.Compare(a.name, b.name) })
	return ents, nil
}

// HashPathFiles returns the SHA-256 and size of the NAR serialisation of
// path, the same as HashPath, and calls fn (if not nil) for every node of
// the tree on the way, in NAR order, handing it each node's metadata and,
// through the writer fn returns, each regular file's contents: the tree
// is read once.
//
// Like DumpPath it never follows symlinks (every node is reached by an *at
// call relative to its parent directory with O_NOFOLLOW; a symlink at the
// top is hashed as a symlink), a fifo, socket or device is an error
// wrapping ErrUnsupportedFileType, and a file found shorter or longer than
// its fstat size, or a node replaced by one of another type between the
// lstat and the open, is an error naming the file. It issues fewer system
// calls than DumpPath (see hashWalker); one difference follows: a file
// that grows while being read after its last byte was read by a short
// read may go unnoticed, as in Nix.
//
// fn is called from the calling goroutine only; HashPathFiles may run in
// many goroutines at once.
func HashPathFiles(path string, fn NodeFunc) (NarHash, int64, error) {
	h := sha256.New()
	nw := newNarWriter(h)
	defer nw.release()
	nw.str("nix-archive-1")
	t := hashWalker{nw: nw, fn: fn}
	defer t.release()
	err := t.walkTop(path)
	if err == nil {
		err = nw.flush()
	}
	if err != nil {
		return NarHash{}, 0, err
	}
	var nh NarHash
	h.Sum(nh[:0])
	return nh, nw.written, nil
}

// WalkPathStat calls fn for every node of the tree at path in NAR order,
// walking it as HashPathFiles does but without opening regular files:
// their Stat is their lstat. The writer fn returns is ignored.
func WalkPathStat(path string, fn NodeFunc) error {
	t := hashWalker{fn: fn}
	defer t.release()
	return t.walkTop(path)
}
