package nar

import (
	"crypto/sha256"
	"fmt"
	"io"
	"os"
	"slices"
	"storekeeper/internal/sys"
	"strconv"
	"strings"

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
	fd     int    // an open directory's or regular file's descriptor, or -1
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
		err = sys.LstatAt(n.dirfd, n.name, &n.st)
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

// Listxattr lists the node's extended attributes into buf as
// listxattr(2) does (with an empty buf: the size needed): through the
// node's open descriptor for a regular file or a directory (the walk's
// own: HashPathFiles and DumpPathAtFiles; WalkPathStat's files have
// none), otherwise through its name relative to its open parent
// (/proc/self/fd, which must be mounted), never following a symlink.
// Call it only during the visit.
func (n *Node) Listxattr(buf []byte) (int, error) {
	if n.fd >= 0 {
		return unix.Flistxattr(n.fd, buf)
	}
	return unix.Llistxattr("/proc/self/fd/"+strconv.Itoa(n.dirfd)+"/"+n.name, buf)
}

// NodeFunc is called for each node in NAR order (a directory before its
// entries, entries sorted bytewise). For a regular file it may return a
// writer: the file's contents are written to it as they are read for the
// NAR, so a per-file digest costs no second read. An error stops the walk
// and is returned as is.
type NodeFunc func(n *Node) (io.Writer, error)

// treeWalker walks a tree in NAR order, writing the NAR to nw if not nil
// and handing each node to fn if not nil. Every node is reached by an *at
// call relative to its parent directory's descriptor and nothing is
// followed: a symlink is read with readlinkat, files and directories are
// opened with O_NOFOLLOW. It keeps system calls per node low, which is
// what a whole-store audit is made of: the entry types from getdents
// spare the lstat of regular files and directories (the opened
// descriptor's fstat says what was opened, and O_NOFOLLOW|O_NONBLOCK make
// opening a swapped-in symlink or fifo fail or harmless), and a regular
// file is read with requests one byte larger than what is left, so the
// short read that ends it also shows its end (narWriter.contents).
type treeWalker struct {
	nw   *narWriter // nil: walk without reading contents
	fn   NodeFunc
	node Node
	root string
	// endMarked: the tree's file system marks the end of a directory
	// listing (DirEndMarked), learnt from its top directory.
	endMarked bool
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

// report calls the visitor. st is the node's stat if known (nil: fetch
// it on demand from fd, or from dirfd and name for a symlink).
func (t *treeWalker) report(rel string, typ FileType, size int64, st *unix.Stat_t, fd, dirfd int, name, target string) (io.Writer, error) {
	if t.fn == nil {
		return nil, nil
	}
	t.node = Node{Rel: rel, Type: typ, Size: size, Target: target, fd: fd, dirfd: dirfd, name: name}
	if st != nil {
		t.node.st, t.node.haveSt = *st, true
	}
	return t.fn(&t.node)
}

func (t *treeWalker) walkTop(p string) error {
	_, err := t.walkAt(unix.AT_FDCWD, cleanTop(p), p)
	return err
}

// walkAt walks the node called name in the directory open at dirfd; disp
// names it in errors. It returns the node's lstat.
func (t *treeWalker) walkAt(dirfd int, name, disp string) (unix.Stat_t, error) {
	t.root = disp
	var st unix.Stat_t
	if err := sys.LstatAt(dirfd, name, &st); err != nil {
		return st, &os.PathError{Op: "lstat", Path: disp, Err: err}
	}
	return st, t.nodeStat(dirfd, name, "", &st)
}

// nodeStat handles a node whose lstat is known.
func (t *treeWalker) nodeStat(dirfd int, name, rel string, lst *unix.Stat_t) error {
	switch lst.Mode & unix.S_IFMT {
	case unix.S_IFREG:
		return t.regular(dirfd, name, rel, lst)
	case unix.S_IFDIR:
		return t.dir(dirfd, name, rel, lst)
	case unix.S_IFLNK:
		target, err := sys.ReadlinkAtSize(dirfd, name, lst.Size)
		if err != nil {
			return &os.PathError{Op: "readlink", Path: t.display(rel), Err: err}
		}
		return t.symlink(dirfd, name, rel, target, lst)
	}
	return fmt.Errorf("%w: %s is a %s", ErrUnsupportedFileType, t.display(rel), sys.FileKind(lst.Mode))
}

func (t *treeWalker) symlink(dirfd int, name, rel, target string, lst *unix.Stat_t) error {
	if _, err := t.report(rel, FileSymlink, int64(len(target)), lst, -1, dirfd, name, target); err != nil {
		return err
	}
	if t.nw != nil {
		t.nw.symlink(target)
		return t.nw.err
	}
	return nil
}

// entry handles a directory entry whose type getdents reported.
func (t *treeWalker) entry(dirfd int, name, rel string, typ uint8) error {
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
		target, err := sys.ReadlinkAtSize(dirfd, name, 0)
		if err == nil {
			return t.symlink(dirfd, name, rel, target, nil)
		}
		if err != unix.EINVAL {
			return &os.PathError{Op: "readlink", Path: t.display(rel), Err: err}
		}
	}
	return t.lstatNode(dirfd, name, rel)
}

func (t *treeWalker) lstatNode(dirfd int, name, rel string) error {
	var st unix.Stat_t
	if err := sys.LstatAt(dirfd, name, &st); err != nil {
		return &os.PathError{Op: "lstat", Path: t.display(rel), Err: err}
	}
	return t.nodeStat(dirfd, name, rel, &st)
}

// regular reads a regular file. lst is its lstat, or nil when only
// getdents' type is known (then whatever the name holds when opened is
// what gets serialised).
func (t *treeWalker) regular(dirfd int, name, rel string, lst *unix.Stat_t) error {
	if t.nw == nil {
		_, err := t.report(rel, FileRegular, lst.Size, lst, -1, dirfd, name, "")
		return err
	}
	fd, err := sys.OpenAt(dirfd, name, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC|unix.O_NONBLOCK|unix.O_NOCTTY)
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
	w, err := t.report(rel, FileRegular, st.Size, &st, fd, dirfd, name, "")
	if err != nil {
		return err
	}
	return t.nw.regular(fd, w, &st, t.display(rel))
}

func (t *treeWalker) dir(dirfd int, name, rel string, lst *unix.Stat_t) error {
	fd, err := sys.OpenAt(dirfd, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC)
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
		t.endMarked = sys.DirEndMarked(fd, st.Dev)
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
			nw.str(e.Name)
			nw.str("node")
		}
		crel := e.Name
		if rel != "" {
			crel = rel + "/" + e.Name
		}
		if err := t.entry(fd, e.Name, crel, e.Type); err != nil {
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
func (t *treeWalker) readEntries(fd int) ([]sys.Dirent, error) {
	ents, err := sys.ReadDirentsMarked(fd, t.endMarked, nil)
	if err != nil {
		return nil, err
	}
	slices.SortFunc(ents, func(a, b sys.Dirent) int { return strings.Compare(a.Name, b.Name) })
	return ents, nil
}

// HashPathFiles returns the SHA-256 and size of the NAR serialisation of
// path, the same as HashPath, and calls fn (if not nil) for every node of
// the tree on the way, in NAR order, handing it each node's metadata and,
// through the writer fn returns, each regular file's contents: the tree
// is read once.
//
// It walks the tree exactly as DumpPath does (see there and treeWalker):
// no symlink is followed, and a file that changes size or type while it
// is read is an error naming it (a file that grows after its last byte
// was read by a short read may go unnoticed, as in Nix).
//
// fn is called from the calling goroutine only; HashPathFiles may run in
// many goroutines at once.
func HashPathFiles(path string, fn NodeFunc) (Hash, int64, error) {
	h := sha256.New()
	nw := newNarWriter(h)
	defer nw.release()
	nw.str("nix-archive-1")
	t := treeWalker{nw: nw, fn: fn}
	err := t.walkTop(path)
	if err == nil {
		err = nw.flush()
	}
	if err != nil {
		return Hash{}, 0, err
	}
	var nh Hash
	h.Sum(nh[:0])
	return nh, nw.written, nil
}

// WalkPathStat calls fn for every node of the tree at path in NAR order,
// walking it as HashPathFiles does but without opening regular files:
// their Stat is their lstat. The writer fn returns is ignored.
func WalkPathStat(path string, fn NodeFunc) error {
	t := treeWalker{fn: fn}
	return t.walkTop(path)
}
