package nar

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"os"
	"storekeeper/internal/sys"

	"golang.org/x/sys/unix"
)

// DumpPathAt writes the NAR serialisation of the node called name in the
// directory open at dirfd (a regular file, symlink or directory tree) to w,
// exactly as DumpPath does for a path, and returns the bytes written and
// the node's lstat. It never follows a symlink, name included: the node is
// reached with fstatat(AT_SYMLINK_NOFOLLOW) and opened with O_NOFOLLOW
// relative to dirfd, so no path is resolved again from the root. A regular
// file is read through a descriptor whose device and inode are checked
// against the lstat, so the returned stat describes exactly the inode whose
// contents were hashed. disp names the node in errors.
//
// Concurrency: a node that changes type, size or inode while it is read
// gives an error, never a silently wrong result.
func DumpPathAt(w io.Writer, dirfd int, name, disp string) (int64, unix.Stat_t, error) {
	return DumpPathAtFiles(w, dirfd, name, disp, nil)
}

// DumpPathAtFiles is DumpPathAt calling fn (if not nil) for every node
// of the tree on the way, in NAR order, as HashPathFiles does: one walk
// gives the NAR and each node's metadata (see Node.Stat) and contents.
func DumpPathAtFiles(w io.Writer, dirfd int, name, disp string, fn NodeFunc) (int64, unix.Stat_t, error) {
	nw := newNarWriter(w)
	defer nw.release()
	nw.str("nix-archive-1")
	t := treeWalker{nw: nw, fn: fn}
	st, err := t.walkAt(dirfd, name, disp)
	if err == nil {
		err = nw.flush()
	}
	return nw.written, st, err
}

// HashPathAt returns the SHA-256 of the NAR serialisation of the node
// called name in the directory open at dirfd, with the node's lstat (see
// DumpPathAt). For a lone regular file or symlink this is the hash Nix
// names the node's entry in the store's .links directory after.
func HashPathAt(dirfd int, name, disp string) (Hash, unix.Stat_t, error) {
	h := sha256.New()
	_, st, err := DumpPathAt(h, dirfd, name, disp)
	if err != nil {
		return Hash{}, st, err
	}
	var nh Hash
	h.Sum(nh[:0])
	return nh, st, nil
}

// IsChanged reports whether err says that a node changed (size, type or
// inode) while it was being serialised.
func IsChanged(err error) bool { return errors.Is(err, errChanged) }

// HashNodeAt is HashPathAt for a caller that has just lstat'ed the node
// (lst, from fstatat(dirfd, name, AT_SYMLINK_NOFOLLOW)): it saves that
// system call. A regular file is opened with O_NOFOLLOW and its device and
// inode must still be lst's, a symlink's target must still have lst's
// length, or the error wraps the "changed" condition (see IsChanged) and
// the caller should look again with HashPathAt. A directory is walked as
// by HashPathAt.
func HashNodeAt(dirfd int, name, disp string, lst *unix.Stat_t) (Hash, error) {
	return narHash(func(nw *narWriter) error {
		if lst.Mode&unix.S_IFMT != unix.S_IFLNK {
			t := treeWalker{nw: nw, root: disp}
			return t.nodeStat(dirfd, name, "", lst)
		}
		target, err := sys.ReadlinkAtSize(dirfd, name, lst.Size)
		switch {
		case err == unix.EINVAL:
			return fmt.Errorf("store: %s: %w: no longer a symlink", disp, errChanged)
		case err != nil:
			return &os.PathError{Op: "readlink", Path: disp, Err: err}
		case int64(len(target)) != lst.Size:
			return fmt.Errorf("store: %s: %w: symlink target changed", disp, errChanged)
		}
		nw.symlink(target)
		return nw.err
	})
}

// HashOpenFile returns the NAR hash of the regular file open at fd, read
// from its current offset (the start, for a fresh descriptor), whose
// fstat is st: the name Nix gives its entry in the .links directory. It
// reads through fd only, so it hashes exactly the inode st describes
// whatever happens to the file's name meanwhile; a file found shorter or
// longer than st.Size gives an error wrapping the "changed" condition
// (see IsChanged). disp names the file in errors.
func HashOpenFile(fd int, st *unix.Stat_t, disp string) (Hash, error) {
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		return Hash{}, fmt.Errorf("store: %s: %w: not a regular file", disp, errChanged)
	}
	return narHash(func(nw *narWriter) error { return nw.regular(fd, nil, st, disp) })
}

// narHash returns the SHA-256 of a NAR whose single node fill writes.
func narHash(fill func(nw *narWriter) error) (Hash, error) {
	h := sha256.New()
	nw := newNarWriter(h)
	defer nw.release()
	nw.str("nix-archive-1")
	err := fill(nw)
	if err == nil {
		err = nw.flush()
	}
	if err != nil {
		return Hash{}, err
	}
	var nh Hash
	h.Sum(nh[:0])
	return nh, nil
}

// HashFileBytes returns the NAR hash of a lone regular file whose
// contents are data and whose lstat is st (its size must be len(data);
// of its mode only the owner's executable bit counts): what HashOpenFile
// returns for that file, for a caller that has read it already. The
// error (wrapping the "changed" condition, see IsChanged) names no file:
// the caller knows which it is.
func HashFileBytes(data []byte, st *unix.Stat_t) (Hash, error) {
	if st.Mode&unix.S_IFMT != unix.S_IFREG || st.Size != int64(len(data)) {
		return Hash{}, fmt.Errorf("store: %w: not a regular file of %d bytes", errChanged, len(data))
	}
	return narHash(func(nw *narWriter) error { return nw.regularAfter(data, -1, nil, st, "") })
}
