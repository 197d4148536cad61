package transfer

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"

	"storekeeper/internal/sys"
	"storekeeper/report"
	"storekeeper/store/fs"
)

// maxDepth bounds the nesting of a tree copied (each level holds two
// descriptors); PATH_MAX allows at most 2048.
const maxDepth = 2048

// copier builds trees in a target directory from a source directory,
// with the file method of the run (see Copy). It is safe for concurrent
// use: one tree per goroutine.
type copier struct {
	method Method
	uid    int    // the target's canonical owner: a hard-linked file must already be owned by it
	dstDev uint64 // the file system of the staging directory
	// noReflink: auto found the target unable to clone (set once, read by
	// every worker).
	noReflink atomic.Bool
	pr        report.Progress
}

// treeStats is what copying one tree did.
type treeStats struct {
	reflinked, linked, copied int    // regular files by method
	bytes                     uint64 // regular file bytes
}

// method is the method a tree's files used: the one that copied bytes
// when several were used (copy, then hardlink, then reflink), "copy" for
// a tree without regular files (its directories and symlinks are made
// anew).
func (s treeStats) method() Method {
	switch {
	case s.copied > 0:
		return MethodCopy
	case s.linked > 0:
		return MethodHardlink
	case s.reflinked > 0:
		return MethodReflink
	}
	return MethodCopy
}

// errNotCanonical: a file --method hardlink cannot link.
var errNotCanonical = errors.New("not canonical")

// copyTree creates dstName in dstDir as a copy of name in srcDir (a
// regular file, a symlink or a directory tree), never following a
// symlink on either side: every source node is opened relative to its
// parent's descriptor with O_NOFOLLOW and checked to be the node lstat
// saw; every target node is created new (O_EXCL, mkdirat, symlinkat), so
// nothing that exists is written through. Files get mode 0444 or 0555
// (fs.Nix.Fix of the source's mode) and every node mtime 1 as it is
// completed; directories are 0700 while filled, then 0555. The owner is
// this process's: register's canonicalisation gives the store's.
//
// On an error it stops and returns it, leaving what it created under
// dstName for the caller to remove (fs.RemoveTree). ctx is checked before
// each node.
func (c *copier) copyTree(ctx context.Context, srcDir int, name, display string, dstDir int, dstName string) (treeStats, error) {
	var s treeStats
	err := c.node(ctx, srcDir, name, display, dstDir, dstName, 0, &s)
	return s, err
}

func (c *copier) node(ctx context.Context, srcDir int, name, display string, dstDir int, dstName string, depth int, s *treeStats) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if depth > maxDepth {
		return fmt.Errorf("'%s': nested deeper than %d directories", display, maxDepth)
	}
	var st unix.Stat_t
	if err := sys.LstatAt(srcDir, name, &st); err != nil {
		return fmt.Errorf("reading '%s': %w", display, err)
	}
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFREG:
		return c.file(srcDir, name, display, dstDir, dstName, &st, s)
	case unix.S_IFLNK:
		target, err := sys.ReadlinkAtSize(srcDir, name, st.Size)
		if err != nil {
			return fmt.Errorf("reading the symlink '%s': %w", display, err)
		}
		if err := unix.Symlinkat(target, dstDir, dstName); err != nil {
			return fmt.Errorf("recreating the symlink '%s': %w", display, err)
		}
		ts := []unix.Timespec{{Nsec: unix.UTIME_OMIT}, {Sec: fs.Nix.Mtime}}
		if err := unix.UtimesNanoAt(dstDir, dstName, ts, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			return fmt.Errorf("setting the mtime of the copy of '%s': %w", display, err)
		}
		return nil
	case unix.S_IFDIR:
		return c.dir(ctx, srcDir, name, display, dstDir, dstName, &st, depth, s)
	}
	return fmt.Errorf("'%s' is a %s: %w", display, sys.FileKind(st.Mode), ErrBadSourceTree)
}

func (c *copier) dir(ctx context.Context, srcDir int, name, display string, dstDir int, dstName string, lst *unix.Stat_t, depth int, s *treeStats) error {
	sfd, err := sys.OpenAt(srcDir, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC)
	if err != nil {
		return fmt.Errorf("opening '%s': %w", display, err)
	}
	defer unix.Close(sfd)
	var st unix.Stat_t
	if err := unix.Fstat(sfd, &st); err != nil {
		return fmt.Errorf("reading '%s': %w", display, err)
	}
	if st.Dev != lst.Dev || st.Ino != lst.Ino {
		return fmt.Errorf("'%s' %w", display, errChanged)
	}
	ents, err := sys.ReadDirents(sfd, nil)
	if err != nil {
		return fmt.Errorf("reading '%s': %w", display, err)
	}
	if err := unix.Mkdirat(dstDir, dstName, 0o700); err != nil {
		return fmt.Errorf("creating the copy of '%s': %w", display, err)
	}
	dfd, err := unix.Openat(dstDir, dstName, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("opening the copy of '%s': %w", display, err)
	}
	defer unix.Close(dfd)
	for _, e := range ents {
		// display only names the node in errors: escaped (report.Name),
		// so a file name cannot forge a line of output.
		if err := c.node(ctx, sfd, e.Name, display+"/"+report.Name(e.Name), dfd, e.Name, depth+1, s); err != nil {
			return err
		}
	}
	if err := unix.Fchmod(dfd, fs.Nix.Dir); err != nil {
		return fmt.Errorf("setting the mode of the copy of '%s': %w", display, err)
	}
	if err := futimens(dfd); err != nil {
		return fmt.Errorf("setting the mtime of the copy of '%s': %w", display, err)
	}
	return nil
}

// errChanged: a source node changed between its lstat and its open.
var errChanged = errors.New("changed while it was being copied")

// file copies the regular file name of srcDir to dstName of dstDir by the
// run's method (see Copy): reflink, else hard link, else a copy of the
// bytes.
func (c *copier) file(srcDir int, name, display string, dstDir int, dstName string, lst *unix.Stat_t, s *treeStats) error {
	// O_NONBLOCK: a FIFO swapped in since the lstat does not block the open.
	sfd, err := sys.OpenAt(srcDir, name, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_CLOEXEC)
	if err != nil {
		return fmt.Errorf("opening '%s': %w", display, err)
	}
	defer unix.Close(sfd)
	var st unix.Stat_t
	if err := unix.Fstat(sfd, &st); err != nil {
		return fmt.Errorf("reading '%s': %w", display, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG || st.Dev != lst.Dev || st.Ino != lst.Ino {
		return fmt.Errorf("'%s' %w", display, errChanged)
	}
	perm, _ := fs.Nix.Fix(st.Mode)
	perm &^= 0o7000
	size := uint64(max(st.Size, 0))

	if c.method == MethodReflink || c.method == MethodAuto && !c.noReflink.Load() {
		dfd, err := createFile(dstDir, dstName, display)
		if err != nil {
			return err
		}
		err = unix.IoctlFileClone(dfd, sfd)
		if err == nil {
			err = finishFile(dfd, perm, display)
			if cerr := unix.Close(dfd); err == nil && cerr != nil {
				err = fmt.Errorf("closing the copy of '%s': %w", display, cerr)
			}
			if err == nil {
				s.reflinked++
				s.bytes += size
				c.pr.Add(int64(size))
			}
			return err
		}
		unix.Close(dfd)
		if c.method == MethodReflink || !cloneUnsupported(err) {
			return fmt.Errorf("reflinking '%s': %w", display, reflinkError(err))
		}
		c.noReflink.Store(true)
		if err := unix.Unlinkat(dstDir, dstName, 0); err != nil {
			return fmt.Errorf("removing the empty copy of '%s': %w", display, err)
		}
	}

	if c.method == MethodHardlink || c.method == MethodAuto && uint64(st.Dev) == c.dstDev {
		err := c.link(sfd, &st, display, dstDir, dstName)
		if err == nil {
			s.linked++
			s.bytes += size
			c.pr.Add(int64(size))
			return nil
		}
		if c.method == MethodHardlink {
			return err
		}
	}

	dfd, err := createFile(dstDir, dstName, display)
	if err != nil {
		return err
	}
	n, err := copyData(sfd, dfd, c.pr)
	if err != nil {
		err = fmt.Errorf("copying '%s': %w", display, err)
	} else {
		err = finishFile(dfd, perm, display)
	}
	if cerr := unix.Close(dfd); err == nil && cerr != nil {
		err = fmt.Errorf("closing the copy of '%s': %w", display, cerr)
	}
	if err == nil {
		s.copied++
		s.bytes += n
	}
	return err
}

// link hard-links the source file open at sfd (fstat st) as dstName of
// dstDir, if it is on the target's file system and canonical as the
// target wants it (see canonical): the very inode checked is linked
// (linkat of /proc/self/fd/N), so a file swapped in since is not.
func (c *copier) link(sfd int, st *unix.Stat_t, display string, dstDir int, dstName string) error {
	if uint64(st.Dev) != c.dstDev {
		return fmt.Errorf("hard-linking '%s': %w: the source and the target are on different file systems", display, ErrMethodUnsupported)
	}
	if why := c.canonical(sfd, st); why != "" {
		return fmt.Errorf("hard-linking '%s': %w (%s): its canonicalisation in the target would change the source's file; use --method auto or copy", display, errNotCanonical, why)
	}
	err := unix.Linkat(unix.AT_FDCWD, "/proc/self/fd/"+strconv.Itoa(sfd), dstDir, dstName, unix.AT_SYMLINK_FOLLOW)
	if err != nil {
		return fmt.Errorf("hard-linking '%s': %w", display, err)
	}
	return nil
}

// canonical says why the file open at fd (fstat st) is not canonical as
// the target store wants its files ("" when it is): owned by the target's
// canonical owner, mode 0444 or 0555 with no setuid, setgid or sticky
// bit, mtime 1, no extended attribute but those Nix keeps. Linking such a
// file changes nothing in it when the target canonicalises the path, so
// the source's file is never changed.
func (c *copier) canonical(fd int, st *unix.Stat_t) string {
	if int(st.Uid) != c.uid {
		return fmt.Sprintf("owned by uid %d, not uid %d", st.Uid, c.uid)
	}
	if _, change := fs.Nix.Fix(st.Mode); change || st.Mode&0o7000 != 0 {
		return fmt.Sprintf("mode %#o", st.Mode&0o7777)
	}
	if !fs.Nix.MtimeOK(st) {
		return fmt.Sprintf("mtime %d.%09d", st.Mtim.Sec, st.Mtim.Nsec)
	}
	var buf [1024]byte
	n, err := unix.Flistxattr(fd, buf[:])
	switch {
	case errors.Is(err, unix.ENOTSUP):
		return ""
	case err != nil:
		return fmt.Sprintf("its extended attributes cannot be listed: %v", err)
	}
	for _, a := range strings.Split(string(buf[:n]), "\x00") {
		keep := a == ""
		for _, k := range fs.Nix.KeepXattrs {
			keep = keep || a == k
		}
		if !keep {
			return "extended attribute " + a
		}
	}
	return ""
}

// createFile creates the new file name in dir, never through a symlink
// or over anything that exists.
func createFile(dir int, name, display string) (int, error) {
	for {
		fd, err := unix.Openat(dir, name, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return -1, fmt.Errorf("creating the copy of '%s': %w", display, err)
		}
		return fd, nil
	}
}

// finishFile gives a new file its mode and mtime 1.
func finishFile(fd int, perm uint32, display string) error {
	if err := unix.Fchmod(fd, perm); err != nil {
		return fmt.Errorf("setting the mode of the copy of '%s': %w", display, err)
	}
	if err := futimens(fd); err != nil {
		return fmt.Errorf("setting the mtime of the copy of '%s': %w", display, err)
	}
	return nil
}

// futimens sets the mtime of the file open at fd to fs.Nix.Mtime (the
// access time is left), resolving no path.
func futimens(fd int) error {
	ts := []unix.Timespec{{Nsec: unix.UTIME_OMIT}, {Sec: fs.Nix.Mtime}}
	for {
		_, _, e := unix.Syscall6(unix.SYS_UTIMENSAT, uintptr(fd), 0, uintptr(unsafe.Pointer(&ts[0])), 0, 0, 0)
		if e == unix.EINTR {
			continue
		}
		if e != 0 {
			return e
		}
		return nil
	}
}

// cloneUnsupported reports whether a FICLONE error means the file
// systems cannot clone (rather than a failure of this file).
func cloneUnsupported(err error) bool {
	return errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.ENOTTY) || errors.Is(err, unix.EXDEV) ||
		errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOSYS)
}

// reflinkError explains a FICLONE failure.
func reflinkError(err error) error {
	if cloneUnsupported(err) {
		return fmt.Errorf("%w: the file systems cannot clone files (FICLONE: %w); use --method auto, hardlink or copy", ErrMethodUnsupported, err)
	}
	return err
}

var bufPool = sync.Pool{New: func() any { b := make([]byte, 256<<10); return &b }}

// copyData copies what is left of the file open at in to out:
// copy_file_range (in the kernel, which may share blocks itself), or
// read and write where the kernel or the file systems cannot. It returns
// the bytes copied, each also counted into pr.
func copyData(in, out int, pr report.Progress) (uint64, error) {
	var n uint64
	for {
		m, err := unix.CopyFileRange(in, nil, out, nil, 1<<30, 0)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			if n == 0 && (errors.Is(err, unix.EXDEV) || errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOSYS) ||
				errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.EPERM)) {
				return readWrite(in, out, pr)
			}
			return n, err
		}
		if m == 0 {
			return n, nil
		}
		n += uint64(m)
		pr.Add(int64(m))
	}
}

// readWrite copies in to out through a buffer.
func readWrite(in, out int, pr report.Progress) (uint64, error) {
	bp := bufPool.Get().(*[]byte)
	defer bufPool.Put(bp)
	buf := *bp
	var n uint64
	for {
		m, err := unix.Read(in, buf)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return n, err
		}
		if m == 0 {
			return n, nil
		}
		for w := buf[:m]; len(w) > 0; {
			k, err := unix.Write(out, w)
			if err == unix.EINTR {
				continue
			}
			if err != nil {
				return n, err
			}
			w = w[k:]
		}
		n += uint64(m)
		pr.Add(int64(m))
	}
}

// probeReflink reports whether files in the directory dir can be cloned
// into it (FICLONE between two new files there), and removes what it
// made. It is what --method reflink checks before anything is copied.
func probeReflink(dir int) error {
	a, b := ".reflink-probe-a", ".reflink-probe-b"
	defer unix.Unlinkat(dir, a, 0)
	defer unix.Unlinkat(dir, b, 0)
	// The source of a clone must be open for reading.
	fa, err := unix.Openat(dir, a, unix.O_RDWR|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return fmt.Errorf("creating %s: %w", a, err)
	}
	defer unix.Close(fa)
	if _, err := unix.Write(fa, []byte("storekeeper reflink probe\n")); err != nil {
		return err
	}
	fb, err := createFile(dir, b, b)
	if err != nil {
		return err
	}
	defer unix.Close(fb)
	if err := unix.IoctlFileClone(fb, fa); err != nil {
		return reflinkError(err)
	}
	return nil
}
