//go:build linux && amd64

package nar

import (
	"crypto/sha256"
	"slices"
	"storekeeper/internal/sys"
	"strings"

	"golang.org/x/sys/unix"
)

// BatchHasher computes what HashPathFiles computes, with fewer system
// calls: it lists a path's tree first (directories read with getdents as
// usual, each regular file lstat'ed), then opens, reads and closes the
// files smaller than batchReadSize through io_uring, many files per
// io_uring_enter(2), and only then builds the NAR and calls the visitor.
// A whole-store audit is made of small files, and on a virtual machine
// where a system call costs a microsecond the four calls per file (open,
// fstat, read, close) are most of its time.
//
// The result and the visitor's calls are HashPathFiles': same nodes, same
// order, same bytes through the writer, and the same Stat except that a
// small file's is its lstat, taken just before it was opened (the read
// must then return exactly that many bytes). Whenever something is not
// as the listing said (a file vanished, changed type or size, an error on
// any call, a tree too big to hold: more than batchMaxFiles regular files
// or batchMaxDirs directories), the path is walked again by HashPathFiles
// from the start, before the visitor has seen anything, so errors are
// reported in its words. Larger files are read as HashPathFiles reads
// them, while the NAR is written.
//
// A BatchHasher is used by one goroutine at a time; each goroutine of a
// parallel audit has its own. It holds at most BatchHasherFDs
// descriptors. Close releases its ring and the descriptors it still
// holds.
type BatchHasher struct {
	r      *sys.Ring
	res    []int32
	nodes  []bnode
	files  []int // indexes in nodes of the regular files
	small  []int // those read in the batch
	closes []int32
	names  [][]byte // NUL-terminated names of a chunk's files
	arena  []byte   // the small files' contents
	reads  []sys.SmallRead
	ndirs  int
	// endMarked: the path's file system marks the end of a listing
	// (DirEndMarked); learnt from its top directory.
	endMarked bool

	// Batched and Fallbacks count the paths hashed each way.
	Batched, Fallbacks int64
}

const (
	batchArenaSize = 1 << 20 // bytes of small files held per path; the rest are read while the NAR is written
	batchMaxFiles  = 256     // more regular files in one path: walked by HashPathFiles
	batchMaxDirs   = 64      // more directories (held open while a path is hashed): likewise
	batchMaxCloses = 32      // descriptors left open between paths, to close with the next submission

	// BatchHasherFDs bounds the descriptors one BatchHasher holds open.
	BatchHasherFDs = batchMaxDirs + batchMaxCloses + 1
)

// bnode is one node of a listed tree, in NAR order.
type bnode struct {
	name   string // in its parent, or the whole path for the top
	rel    string
	typ    FileType
	depth  int32
	dirfd  int // the parent's descriptor (AT_FDCWD for the top)
	fd     int // a directory's open descriptor, or -1
	target string
	st     unix.Stat_t
	haveSt bool
	off    int    // where a small file is read into the arena
	data   []byte // a small regular file's contents; nil for a larger one
}

// NewBatchHasher returns a BatchHasher, or ErrNoIOURing when the kernel
// cannot do what it needs (io_uring with openat, statx of a descriptor,
// read at the file position and close: Linux 5.6 and later) or when the
// environment sets STOREKEEPER_NO_IO_URING.
func NewBatchHasher() (*BatchHasher, error) {
	r, err := sys.NewFileRing()
	if err != nil {
		return nil, err
	}
	return &BatchHasher{r: r, res: make([]int32, 3*sys.BatchChunk), names: make([][]byte, sys.BatchChunk)}, nil
}

// Close closes the descriptors the hasher still holds and its ring.
func (b *BatchHasher) Close() error {
	if b == nil || b.r == nil {
		return nil
	}
	b.flushCloses(0)
	for _, fd := range b.closes {
		unix.Close(int(fd))
	}
	b.closes = nil
	b.r.Close()
	b.r = nil
	return nil
}

// HashPathFiles is HashPathFiles(path, fn) (see BatchHasher). A nil
// BatchHasher, or one whose ring broke, hashes with HashPathFiles.
func (b *BatchHasher) HashPathFiles(path string, fn NodeFunc) (Hash, int64, error) {
	if b == nil || b.r == nil || b.r.Err != nil {
		return HashPathFiles(path, fn)
	}
	ok := b.list(path) && b.read()
	if !ok {
		b.release()
		b.Fallbacks++
		return HashPathFiles(path, fn)
	}
	b.Batched++
	h, n, err := b.emit(path, fn)
	b.release()
	return h, n, err
}

// release queues the descriptors of the last path for closing (with the
// next submission) and forgets its nodes.
func (b *BatchHasher) release() {
	for i := range b.nodes {
		if fd := b.nodes[i].fd; fd >= 0 {
			b.closes = append(b.closes, int32(fd))
		}
		b.nodes[i] = bnode{}
	}
	b.nodes, b.files, b.ndirs = b.nodes[:0], b.files[:0], 0
	if len(b.closes) > batchMaxCloses {
		b.flushCloses(0)
	}
}

// flushCloses queues pending closes while more than keepRoom SQEs stay
// free, and submits them unless keepRoom > 0 (then they go with the
// caller's submission). A close once queued is never retried: should the
// ring break, a descriptor may leak, but none is closed twice (its number
// could belong to another file by then). Close closes synchronously what
// was never queued.
func (b *BatchHasher) flushCloses(keepRoom int) {
	for len(b.closes) > 0 && b.r.Err == nil {
		k := 0
		for k < len(b.closes) && b.r.Room() > keepRoom {
			b.r.Push(sys.SQE{Opcode: sys.OpClose, FD: b.closes[k], UserData: ^uint64(0)})
			k++
		}
		b.closes = b.closes[k:]
		if keepRoom > 0 {
			return
		}
		if b.r.Submit(b.res) != nil {
			return
		}
	}
}

func (b *BatchHasher) add(n bnode) int {
	b.nodes = append(b.nodes, n)
	return len(b.nodes) - 1
}

// list fills nodes with the tree at path, opening its directories.
func (b *BatchHasher) list(path string) bool {
	top := cleanTop(path)
	var lst unix.Stat_t
	if sys.LstatAt(unix.AT_FDCWD, top, &lst) != nil {
		return false
	}
	switch lst.Mode & unix.S_IFMT {
	case unix.S_IFREG:
		return b.file(unix.AT_FDCWD, top, "", 0, &lst)
	case unix.S_IFDIR:
		return b.dir(unix.AT_FDCWD, top, "", 0, &lst)
	case unix.S_IFLNK:
		target, err := sys.ReadlinkAtSize(unix.AT_FDCWD, top, lst.Size)
		if err != nil {
			return false
		}
		b.add(bnode{name: top, typ: FileSymlink, dirfd: unix.AT_FDCWD, fd: -1, target: target, st: lst, haveSt: true})
		return true
	}
	return false
}

// file lists a regular file; lst is its lstat if known.
func (b *BatchHasher) file(dirfd int, name, rel string, depth int32, lst *unix.Stat_t) bool {
	if len(b.files) == batchMaxFiles {
		return false
	}
	n := bnode{name: name, rel: rel, typ: FileRegular, depth: depth, dirfd: dirfd, fd: -1, haveSt: true}
	if lst != nil {
		n.st = *lst
	} else if sys.LstatAt(dirfd, name, &n.st) != nil || n.st.Mode&unix.S_IFMT != unix.S_IFREG {
		return false
	}
	b.files = append(b.files, b.add(n))
	return true
}

func (b *BatchHasher) dir(dirfd int, name, rel string, depth int32, lst *unix.Stat_t) bool {
	if b.ndirs == batchMaxDirs {
		return false
	}
	fd, err := sys.OpenAt(dirfd, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC)
	if err != nil {
		return false
	}
	b.ndirs++
	i := b.add(bnode{name: name, rel: rel, typ: FileDirectory, depth: depth, dirfd: dirfd, fd: fd})
	if lst != nil {
		n := &b.nodes[i]
		if unix.Fstat(fd, &n.st) != nil || n.st.Dev != lst.Dev || n.st.Ino != lst.Ino {
			return false
		}
		n.haveSt = true
		b.endMarked = sys.DirEndMarked(fd, n.st.Dev)
	}
	ents, err := sys.ReadDirentsMarked(fd, b.endMarked, nil)
	if err != nil {
		return false
	}
	slices.SortFunc(ents, func(a, b sys.Dirent) int { return strings.Compare(a.Name, b.Name) })
	for _, e := range ents {
		crel := e.Name
		if rel != "" {
			crel = rel + "/" + e.Name
		}
		switch e.Type {
		case unix.DT_REG:
			if !b.file(fd, e.Name, crel, depth+1, nil) {
				return false
			}
		case unix.DT_DIR:
			if !b.dir(fd, e.Name, crel, depth+1, nil) {
				return false
			}
		case unix.DT_LNK:
			target, err := sys.ReadlinkAtSize(fd, e.Name, 0)
			if err != nil {
				return false
			}
			b.add(bnode{name: e.Name, rel: crel, typ: FileSymlink, depth: depth + 1, dirfd: fd, fd: -1, target: target})
		default:
			return false // DT_UNKNOWN or a special file: the plain walker decides
		}
	}
	return true
}

// read reads the listed regular files smaller than batchReadSize, a chunk
// per submission: each file is opened into a slot of the ring's file
// table, read in one request one byte longer than its lstat size, and
// closed, the three requests hard-linked so the close runs whatever the
// others did. Larger files are read while the NAR is written.
func (b *BatchHasher) read() bool {
	small, total := b.small[:0], 0
	for _, ni := range b.files {
		n := &b.nodes[ni]
		if n.st.Size+1 <= sys.BatchReadSize && total+int(n.st.Size)+1 <= batchArenaSize {
			small = append(small, ni)
			n.off = total
			total += int(n.st.Size) + 1
		}
	}
	b.small = small
	if cap(b.arena) < total {
		b.arena = make([]byte, total)
	}
	b.arena = b.arena[:total]
	for start := 0; start < len(small); start += sys.BatchChunk {
		chunk := small[start:min(start+sys.BatchChunk, len(small))]
		b.flushCloses(3 * len(chunk))
		b.reads = b.reads[:0]
		for _, ni := range chunk {
			n := &b.nodes[ni]
			b.reads = append(b.reads, sys.SmallRead{Dirfd: n.dirfd, Name: n.name, Size: n.st.Size, Off: n.off})
		}
		sys.PushSmallReads(b.r, b.names, b.res, b.arena, b.reads)
		if b.r.Submit(b.res, b.names, b.arena) != nil {
			return false
		}
		for k, ni := range chunk {
			n := &b.nodes[ni]
			if !sys.ReadWhole(b.res, k, n.st.Size) {
				return false // changed since its lstat, or an error: the plain walker reports it
			}
			n.data = b.arena[n.off : n.off+int(n.st.Size)]
		}
	}
	return true
}

// emit writes the NAR of the listed tree and calls fn for each node, as
// treeWalker does.
func (b *BatchHasher) emit(path string, fn NodeFunc) (Hash, int64, error) {
	h := sha256.New()
	nw := newNarWriter(h)
	defer nw.release()
	nw.str("nix-archive-1")
	t := treeWalker{nw: nw, fn: fn, root: path}
	var open []int32 // depths of the directories still open in the NAR
	closeTo := func(depth int32) {
		for len(open) > 0 && open[len(open)-1] >= depth {
			d := open[len(open)-1]
			open = open[:len(open)-1]
			nw.str(")")
			if d > 0 {
				nw.str(")")
			}
		}
	}
	for i := range b.nodes {
		n := &b.nodes[i]
		closeTo(n.depth)
		if n.depth > 0 {
			nw.str("entry")
			nw.str("(")
			nw.str("name")
			nw.str(n.name)
			nw.str("node")
		}
		var stp *unix.Stat_t
		if n.haveSt {
			stp = &n.st
		}
		switch n.typ {
		case FileDirectory:
			if _, err := t.report(n.rel, FileDirectory, 0, stp, n.fd, n.dirfd, n.name, ""); err != nil {
				return Hash{}, 0, err
			}
			nw.str("(")
			nw.str("type")
			nw.str("directory")
			open = append(open, n.depth)
			continue
		case FileSymlink:
			if _, err := t.report(n.rel, FileSymlink, int64(len(n.target)), stp, -1, n.dirfd, n.name, n.target); err != nil {
				return Hash{}, 0, err
			}
			nw.symlink(n.target)
		case FileRegular:
			if n.data == nil {
				// Too big for the batch: read as the plain walker does.
				if err := t.regular(n.dirfd, n.name, n.rel, &n.st); err != nil {
					return Hash{}, 0, err
				}
				break
			}
			w, err := t.report(n.rel, FileRegular, n.st.Size, stp, -1, n.dirfd, n.name, "")
			if err != nil {
				return Hash{}, 0, err
			}
			if err := nw.regularAfter(n.data, -1, w, &n.st, t.display(n.rel)); err != nil {
				return Hash{}, 0, err
			}
		}
		if n.depth > 0 {
			nw.str(")")
		}
		if nw.err != nil {
			return Hash{}, 0, nw.err
		}
	}
	closeTo(0)
	if err := nw.flush(); err != nil {
		return Hash{}, 0, err
	}
	var nh Hash
	h.Sum(nh[:0])
	return nh, nw.written, nil
}
