package fs

import (
	"errors"
	"fmt"
	"os"
	"storekeeper/internal/sys"

	"golang.org/x/sys/unix"
)

// RemoveTree deletes name (relative to the open directory dirfd) and
// everything below it, whatever its type (regular file, directory tree,
// symlink, fifo, socket, device), and returns the bytes freed: the blocks
// of each regular file whose last link it removed itself. display names
// name in errors. An entry already gone is not an error.
//
// It never follows a symlink: every entry is opened or unlinked relative
// to its parent's descriptor with O_NOFOLLOW, so a symlink swapped in
// during the removal is unlinked, never entered. Entry types come from
// getdents, so only regular files are stat'ed (for their link count).
// When not root, a directory inside the tree that lacks write or search
// permission is made accessible to its owner first (it is being removed;
// AddOwnerBitsAt, never through a symlink).
//
// Concurrency: another process may remove the same tree at the same time:
// an entry or directory that disappears under it (ENOENT from a stat, an
// open, a listing or an unlink) is skipped, and its blocks are counted by
// whoever unlinked it, never by both. Nothing stops another process from
// adding entries while it runs; a directory that gains one is left behind
// with an error. Crash or cancellation: a partly removed tree is left, and
// a second call removes the rest.
func RemoveTree(dirfd int, name, display string) (uint64, error) {
	return removeEntry(dirfd, name, unix.DT_UNKNOWN, display, os.Geteuid() == 0)
}

// testHookRemoving, set by tests, runs with the display path of each
// entry RemoveTree is about to delete: after its stat, before its unlink;
// for a directory, after opening it, before listing it.
var testHookRemoving func(path string)

func removeEntry(dirfd int, name string, typ uint8, display string, root bool) (uint64, error) {
	var st unix.Stat_t
	if typ == unix.DT_UNKNOWN || typ == unix.DT_REG {
		if err := unix.Fstatat(dirfd, name, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			if errors.Is(err, unix.ENOENT) {
				return 0, nil
			}
			return 0, fmt.Errorf("%s: %w", display, err)
		}
		switch st.Mode & unix.S_IFMT {
		case unix.S_IFDIR:
			typ = unix.DT_DIR
		case unix.S_IFREG:
			typ = unix.DT_REG
		default:
			typ = unix.DT_LNK // anything else is unlinked like a symlink
		}
	}
	if typ != unix.DT_DIR {
		if testHookRemoving != nil {
			testHookRemoving(display)
		}
		if err := unix.Unlinkat(dirfd, name, 0); err != nil {
			if errors.Is(err, unix.ENOENT) {
				return 0, nil // someone else removed it, and freed its blocks
			}
			return 0, fmt.Errorf("removing %s: %w", display, err)
		}
		if typ == unix.DT_REG && st.Nlink == 1 {
			return uint64(st.Blocks) * 512, nil
		}
		return 0, nil
	}
	fd, err := unix.Openat(dirfd, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil && errors.Is(err, unix.EACCES) && !root && AddOwnerBitsAt(dirfd, name) == nil {
		fd, err = unix.Openat(dirfd, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	}
	if err != nil {
		if errors.Is(err, unix.ENOENT) {
			return 0, nil
		}
		return 0, fmt.Errorf("%s: %w", display, err)
	}
	if !root {
		unix.Fchmod(fd, 0o700)
	}
	if testHookRemoving != nil {
		testHookRemoving(display)
	}
	ents, err := sys.ReadDirents(fd, nil)
	if err != nil {
		unix.Close(fd)
		if errors.Is(err, unix.ENOENT) {
			return 0, nil // removed since we opened it (getdents on a dead directory)
		}
		return 0, fmt.Errorf("reading %s: %w", display, err)
	}
	var freed uint64
	for _, e := range ents {
		b, err := removeEntry(fd, e.Name, e.Type, display+"/"+e.Name, root)
		freed += b
		if err != nil {
			unix.Close(fd)
			return freed, err
		}
	}
	unix.Close(fd)
	if err := unix.Unlinkat(dirfd, name, unix.AT_REMOVEDIR); err != nil && !errors.Is(err, unix.ENOENT) {
		return freed, fmt.Errorf("removing %s: %w", display, err)
	}
	return freed, nil
}
