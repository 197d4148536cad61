// Package usage says what a set of store entries holds on disk, counting
// hard links: the blocks of each entry's files (Measure), the inodes that
// .links holds (LinkInodes), and what deleting a set of entries frees
// (Freed): a file with several links frees its blocks only when every one
// of its links goes with the set or sits in .links (which gc empties of
// entries nothing else links to). gc uses it for --dry-run and
// --max-freed, roots size for what removing one root frees.
//
// Sizes are allocated bytes (st_blocks × 512) of every entry that is not a
// directory (regular files and symlinks): what the file system gives back
// when their last link goes. Directories are not counted.
package usage

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"sync"

	"golang.org/x/sys/unix"

	"storekeeper/internal/sys"
)

// Usage is what one store entry holds on disk.
type Usage struct {
	// Single is the bytes of the entry's files with one link: freed
	// exactly when the entry is deleted.
	Single uint64
	// Multi is the entry's files with several links, one element per
	// inode, sorted by inode number.
	Multi []Inode
}

// Inode is a file with several links met in one entry.
type Inode struct {
	Ino    uint64
	Nlink  uint64 // its link count when it was measured
	Seen   uint64 // how many of its links are inside the entry
	Blocks uint64 // its allocated bytes
}

// Bytes is everything the entry's files take, each inode counted once
// (the entry's size as if nothing were shared).
func (u Usage) Bytes() uint64 {
	b := u.Single
	for _, m := range u.Multi {
		b += m.Blocks
	}
	return b
}

// walker measures entries relative to the store directory's descriptor:
// every node is reached by an *at call from its parent's descriptor and
// nothing is followed (directories are opened with O_NOFOLLOW, other
// nodes are lstat'ed). Per directory it costs an open, one getdents (two
// where the file system does not mark a listing's end) and a close; per
// other node one fstatat. A node that vanishes meanwhile (a concurrent
// gc, a build) is skipped: it frees nothing.
type walker struct {
	marked bool // the store's file system marks a listing's end (sys.DirEndMarked)
	ents   []sys.Dirent
}

// entry measures the entry name of the directory open at dirfd; disp
// names it in errors.
func (w *walker) entry(dirfd int, name, disp string) (Usage, error) {
	var u Usage
	err := w.node(dirfd, name, disp, unix.DT_UNKNOWN, &u)
	u.Multi = merge(u.Multi)
	return u, err
}

// node adds the node name of dirfd, of getdents type typ (DT_UNKNOWN:
// not known), to u.
func (w *walker) node(dirfd int, name, disp string, typ uint8, u *Usage) error {
	if typ == unix.DT_DIR || typ == unix.DT_UNKNOWN {
		fd, err := sys.OpenAt(dirfd, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC)
		switch {
		case err == nil:
			return w.dir(fd, disp, u)
		case err == unix.ENOENT:
			return nil
		case err != unix.ENOTDIR && err != unix.ELOOP:
			return &os.PathError{Op: "open", Path: disp, Err: err}
		}
		// Not a directory (now): measured as what it is.
	}
	var st unix.Stat_t
	if err := sys.LstatAt(dirfd, name, &st); err != nil {
		if err == unix.ENOENT {
			return nil
		}
		return &os.PathError{Op: "lstat", Path: disp, Err: err}
	}
	if st.Mode&unix.S_IFMT == unix.S_IFDIR {
		return w.node(dirfd, name, disp, unix.DT_DIR, u) // a directory since getdents
	}
	b := uint64(st.Blocks) * 512
	if st.Nlink <= 1 {
		u.Single += b
		return nil
	}
	u.Multi = append(u.Multi, Inode{Ino: st.Ino, Nlink: uint64(st.Nlink), Seen: 1, Blocks: b})
	return nil
}

// dir measures the entries of the directory open at fd, and closes it.
func (w *walker) dir(fd int, disp string, u *Usage) error {
	defer unix.Close(fd)
	start := len(w.ents)
	ents, err := sys.ReadDirentsMarked(fd, w.marked, w.ents)
	if err != nil {
		if err == unix.ENOENT {
			return nil // removed since it was opened
		}
		return &os.PathError{Op: "readdir", Path: disp, Err: err}
	}
	w.ents = ents
	defer func() { w.ents = w.ents[:start] }()
	for i := start; i < len(ents); i++ {
		e := w.ents[i]
		if err := w.node(fd, e.Name, disp+"/"+e.Name, e.Type, u); err != nil {
			return err
		}
	}
	return nil
}

// merge sorts ms by inode and folds the links of one inode into one
// element (Seen added up, the last Nlink and Blocks kept).
func merge(ms []Inode) []Inode {
	if len(ms) < 2 {
		return ms
	}
	slices.SortFunc(ms, func(a, b Inode) int {
		switch {
		case a.Ino < b.Ino:
			return -1
		case a.Ino > b.Ino:
			return 1
		}
		return 0
	})
	out := ms[:1]
	for _, m := range ms[1:] {
		last := &out[len(out)-1]
		if m.Ino == last.Ino {
			last.Seen += m.Seen
			last.Nlink, last.Blocks = m.Nlink, m.Blocks
			continue
		}
		out = append(out, m)
	}
	return out
}

// Measure measures the entries names (base names in realStoreDir) in
// parallel, with jobs workers (GOMAXPROCS when jobs <= 0), calling
// progress (when not nil, from any worker, concurrently) after each. It
// only reads: no symlink is followed and nothing is opened for writing.
//
// The result has one Usage per name, in order. An entry that does not
// exist measures zero; names must be base names (no "/"). On a read error the first error is returned with
// the usages measured (the failing entry's partial); on cancellation only
// ctx's error. Concurrency: entries changed meanwhile (a gc deleting them,
// optimise linking them) are measured as each file was when it was
// stat'ed; nothing is locked here, the caller holds what lock it needs.
func Measure(ctx context.Context, realStoreDir string, names []string, jobs int, progress func()) ([]Usage, error) {
	if jobs <= 0 {
		jobs = runtime.GOMAXPROCS(0)
	}
	storeFd, err := unix.Open(realStoreDir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, &os.PathError{Op: "open", Path: realStoreDir, Err: err}
	}
	defer unix.Close(storeFd)
	marked := false
	var st unix.Stat_t
	if unix.Fstat(storeFd, &st) == nil {
		marked = sys.DirEndMarked(storeFd, st.Dev)
	}
	out := make([]Usage, len(names))
	var wg sync.WaitGroup
	work := make(chan int, 256)
	var firstErr error
	var once sync.Once
	for w := 0; w < jobs; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			wk := &walker{marked: marked}
			for i := range work {
				u, err := wk.entry(storeFd, names[i], filepath.Join(realStoreDir, names[i]))
				if err != nil {
					once.Do(func() { firstErr = err })
				}
				out[i] = u
				if progress != nil {
					progress()
				}
			}
		}()
	}
	for i := range names {
		if ctx.Err() != nil {
			break
		}
		work <- i
	}
	close(work)
	wg.Wait()
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	return out, firstErr
}

// LinkInodes returns the inode numbers of the entries of linksDir (the
// store's .links), read from the directory entries themselves (getdents),
// with no stat per entry; a missing directory has none. linksDir itself
// is not followed if it is a symlink (an error).
func LinkInodes(linksDir string) (map[uint64]bool, error) {
	fd, err := unix.Open(linksDir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		if errors.Is(err, unix.ENOENT) {
			return map[uint64]bool{}, nil
		}
		return nil, &os.PathError{Op: "open", Path: linksDir, Err: err}
	}
	defer unix.Close(fd)
	out := map[uint64]bool{}
	err = sys.ScanDirents(fd, func(_ []byte, ino uint64, _ uint8) { out[ino] = true })
	if err != nil {
		return nil, &os.PathError{Op: "reading", Path: linksDir, Err: err}
	}
	return out, nil
}

// UnusedLinks is what the entries of linksDir (the store's .links) that
// nothing else links to any more take on disk: those with one link, which
// a collection removes after deleting the dead paths (Nix's
// removeUnusedLinks), so they are freed whatever else goes. It walks
// linksDir as Measure walks an entry (nothing followed; a missing
// directory holds nothing). Concurrency: an optimise running meanwhile
// may link an entry just counted.
func UnusedLinks(ctx context.Context, linksDir string) (uint64, error) {
	us, err := Measure(ctx, filepath.Dir(linksDir), []string{filepath.Base(linksDir)}, 1, nil)
	if err != nil {
		return 0, err
	}
	return us[0].Single, nil
}

// Freed is what deleting all of us at once frees, by gc's rule: every
// single-link file, and each multi-link file whose every link is among
// us or in .links (links, from LinkInodes: gc then deletes the .links
// entry, its last link). perEntry[i] is us[i]'s share: its single-link
// files, and each freed multi-link file counted once, at the first entry
// that holds it; the shares add up to total.
func Freed(us []Usage, links map[uint64]bool) (total uint64, perEntry []uint64) {
	type acc struct {
		nlink, seen, blocks uint64
		owner               int
	}
	seen := map[uint64]*acc{}
	perEntry = make([]uint64, len(us))
	for i, u := range us {
		perEntry[i] = u.Single
		total += u.Single
		for _, m := range u.Multi {
			a := seen[m.Ino]
			if a == nil {
				a = &acc{owner: i}
				seen[m.Ino] = a
			}
			a.nlink, a.blocks = m.Nlink, m.Blocks
			a.seen += m.Seen
		}
	}
	for ino, a := range seen {
		extra := uint64(0)
		if links[ino] {
			extra = 1
		}
		if a.seen+extra >= a.nlink {
			total += a.blocks
			perEntry[a.owner] += a.blocks
		}
	}
	return total, perEntry
}
