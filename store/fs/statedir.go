package fs

import (
	"fmt"
	iofs "io/fs"
	"path/filepath"

	"golang.org/x/sys/unix"

	"storekeeper/internal/sys"
)

// OpenStateDir opens storekeeper's own state directory dir
// (Layout.OwnStateDir: gc-auto.lock, verify's ledger and manifests),
// creating it with mode 0755 when missing (its parent must exist), and
// returns its descriptor (O_RDONLY|O_DIRECTORY; the caller closes it).
//
// dir itself is opened without following a symbolic link: one there is
// refused (the error says to remove it), since whoever controls the
// parent could point it anywhere, and files opened in it would land
// there. As root, dir is not created in a parent another user controls
// (owned by another user, or writable by others without the sticky bit):
// the error, wrapping fs.ErrPermission, says to create it as root.
// Concurrency: two processes creating it at once both succeed.
func OpenStateDir(dir string) (int, error) {
	dir = filepath.Clean(dir)
	parent, name := filepath.Dir(dir), filepath.Base(dir)
	pfd, err := unix.Open(parent, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, fmt.Errorf("opening %s: %w", parent, err)
	}
	defer unix.Close(pfd)
	const flags = unix.O_RDONLY | unix.O_DIRECTORY | unix.O_NOFOLLOW | unix.O_CLOEXEC
	fd, err := sys.OpenAt(pfd, name, flags)
	if err == unix.ENOENT {
		var st unix.Stat_t
		if err := unix.Fstat(pfd, &st); err != nil {
			return -1, fmt.Errorf("stat %s: %w", parent, err)
		}
		if unix.Geteuid() == 0 && (st.Uid != 0 || (st.Mode&0o022 != 0 && st.Mode&unix.S_ISVTX == 0)) {
			return -1, fmt.Errorf("not creating %s as root in %s, which uid %d owns or others may write to: create it as root (install -d -m 755 %s), or run as the store's owner: %w",
				dir, parent, st.Uid, dir, iofs.ErrPermission)
		}
		if err := unix.Mkdirat(pfd, name, 0o755); err != nil && err != unix.EEXIST {
			return -1, fmt.Errorf("creating %s: %w", dir, err)
		}
		fd, err = sys.OpenAt(pfd, name, flags)
	}
	if err == unix.ELOOP || err == unix.ENOTDIR {
		return -1, fmt.Errorf("%s is a symbolic link or not a directory, which storekeeper never follows: remove it (it is made again as a directory): %w", dir, err)
	}
	if err != nil {
		return -1, fmt.Errorf("opening %s: %w", dir, err)
	}
	return fd, nil
}
