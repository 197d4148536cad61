package fs

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"

	"storekeeper/internal/procfs"
)

// Sentinel errors about the file systems the store lives on. Each error
// wrapping one names the directory, the mount it is on and what to do.
var (
	// ErrReadOnlyStore: the store is on a read-only mount that cannot be
	// made writable.
	ErrReadOnlyStore = errors.New("store: the store is on a read-only file system")
	// ErrReadOnlyFS: the state directory or the database directory, which
	// a command that writes must write to, is on a read-only mount.
	ErrReadOnlyFS = errors.New("store: read-only file system")
	// ErrDiskFull: the database cannot even be read, because SQLite
	// cannot create the file it needs on the full disk (see OpenDB).
	ErrDiskFull = errors.New("store: disk full")
)

// PrivateNamespaceEnv marks a storekeeper process that was re-executed in
// a private mount namespace of its own (see cmd/storekeeper/remount.go).
const PrivateNamespaceEnv = "STOREKEEPER_PRIVATE_MOUNT_NS"

// IsReadOnlyMount reports whether dir is on a read-only mount, from
// statvfs's ST_RDONLY flag. That flag reflects the mount point dir is on
// (a read-only bind mount of /nix/store, as NixOS makes, included); the
// 4th field of /proc/self/mountinfo would only show the superblock's.
func IsReadOnlyMount(dir string) (bool, error) {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return false, fmt.Errorf("store: statfs %s: %w", dir, err)
	}
	return st.Flags&unix.ST_RDONLY != 0, nil
}

// CheckWritableDir returns an error wrapping ErrReadOnlyFS, naming dir,
// its mount point and the command that makes it writable, if dir is on a
// read-only mount; nil otherwise (a dir that cannot be examined is left
// to the open that follows to report).
func CheckWritableDir(dir string) error {
	if ro, err := IsReadOnlyMount(dir); err != nil || !ro {
		return nil
	}
	return ReadOnlyFSError(dir)
}

// readOnlyFSError is CheckWritableDir's error: dir, which a command that
// writes must write to, is on a read-only mount.
func ReadOnlyFSError(dir string) error {
	return ReadOnlyDirError(ErrReadOnlyFS, dir, "", "", nil, "or use a command that only reads")
}

// readOnlyDirError says that dir is on a read-only mount, why that
// matters (why and its cause, both optional) and how to remount it (mp,
// the mount point, is looked up if ""), then what else to do (alt, may
// be empty). It wraps sentinel and cause. It never tells root to run as
// root.
func ReadOnlyDirError(sentinel error, dir, mp, why string, cause error, alt string) error {
	if mp == "" {
		mp = MountPointOf(dir)
	}
	msg := fmt.Sprintf("%s is on a read-only file system (mounted at %s)", dir, mp)
	if why != "" {
		msg += ": " + why
	}
	if alt != "" {
		alt = ", " + alt
	}
	if cause == nil {
		return fmt.Errorf("%w: %s; remount it read-write (mount -o remount,rw %s)%s", sentinel, msg, mp, alt)
	}
	return fmt.Errorf("%w: %s (%w); remount it read-write (mount -o remount,rw %s)%s", sentinel, msg, cause, mp, alt)
}

// MountPointOf returns where the mount dir is on is mounted (/nix for
// /nix/var/nix/db on a /nix mount), following symbolic links in dir: the
// mount found by statx's mount id in /proc/self/mountinfo. It returns dir
// itself when that cannot be found, for messages only.
func MountPointOf(dir string) string {
	var sx unix.Statx_t
	if err := unix.Statx(unix.AT_FDCWD, dir, 0, unix.STATX_MNT_ID, &sx); err != nil || sx.Mask&unix.STATX_MNT_ID == 0 {
		return dir
	}
	if _, _, on := MountOf(sx.Mnt_id); on != "" {
		return on
	}
	return dir
}

// RemountWritable makes dir writable for this process: it remounts the
// mount dir is on read-write, keeping its other flags. When dir is not a
// mount point of its own (the read-only mount is a parent, /nix rather
// than /nix/store), it first bind-mounts dir onto itself, so that only dir
// becomes writable. It must only be called in a private mount namespace
// (a process started with CLONE_NEWNS and private propagation), so that
// the writable mount is seen by no other process and vanishes with it. It
// is what Nix does before a collection on NixOS, where /nix/store is a
// read-only bind mount. A file system that is read-only itself (not only
// through the mount) stays read-only, and the error says so.
func RemountWritable(dir string) error {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return fmt.Errorf("store: statfs %s: %w", dir, err)
	}
	if st.Flags&unix.ST_RDONLY == 0 {
		return nil
	}
	real, err := filepath.EvalSymlinks(dir)
	if err == nil {
		real, err = filepath.Abs(real)
	}
	if err != nil {
		return fmt.Errorf("store: %s: %w", dir, err)
	}
	mp := MountPointOf(real)
	if mp != real {
		if err := unix.Mount(real, real, "", unix.MS_BIND, ""); err != nil {
			return remountError(dir, mp, err)
		}
		if err := unix.Statfs(real, &st); err != nil {
			return fmt.Errorf("store: statfs %s: %w", dir, err)
		}
	}
	flags := uintptr(unix.MS_REMOUNT | unix.MS_BIND)
	for _, f := range []struct{ st, ms int64 }{
		{unix.ST_NOSUID, unix.MS_NOSUID}, {unix.ST_NODEV, unix.MS_NODEV}, {unix.ST_NOEXEC, unix.MS_NOEXEC},
		{unix.ST_NOATIME, unix.MS_NOATIME}, {unix.ST_NODIRATIME, unix.MS_NODIRATIME}, {unix.ST_RELATIME, unix.MS_RELATIME},
	} {
		if st.Flags&f.st != 0 {
			flags |= uintptr(f.ms)
		}
	}
	if err := unix.Mount("", real, "", flags, ""); err != nil {
		return remountError(dir, mp, err)
	}
	if ro, err := IsReadOnlyMount(real); err != nil || ro {
		return ReadOnlyDirError(ErrReadOnlyStore, dir, mp, "the file system itself is read-only, not only the mount, so storekeeper cannot make it writable for itself", nil, "")
	}
	return nil
}

// remountError reports a failed private remount of dir, on the mount at
// mp: as root, what to do instead; otherwise that it takes root.
func remountError(dir, mp string, err error) error {
	if os.Geteuid() != 0 {
		return remountNeedsRoot(dir, mp)
	}
	return ReadOnlyDirError(ErrReadOnlyStore, dir, mp, "making it writable in a private mount namespace failed", err, "")
}

// RemountNeedsRoot is the error for a user other than root whose command
// must write to the store dir on a read-only mount: only root can make
// it writable for one process.
func RemountNeedsRoot(dir string) error { return remountNeedsRoot(dir, MountPointOf(dir)) }

// remountNeedsRoot is RemountNeedsRoot for dir on the mount at mp.
func remountNeedsRoot(dir, mp string) error {
	return fmt.Errorf("%w: %s is on a read-only mount (%s); only root can make it writable for storekeeper alone (in a private mount namespace): run as root, or remount it read-write (mount -o remount,rw %s)", ErrReadOnlyStore, dir, mp, mp)
}

// FreeSpace returns the bytes available to unprivileged users and the
// total size of the file system holding dir.
func FreeSpace(dir string) (avail, total uint64, err error) {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return 0, 0, fmt.Errorf("store: statfs %s: %w", dir, err)
	}
	avail, total = freeSpaceOf(&st)
	return avail, total, nil
}

// freeSpaceOf is FreeSpace's arithmetic on a statfs result: f_bavail
// (what root's reserved blocks leave, as Nix's autoGC counts) and
// f_blocks are in f_frsize units (statvfs(3), Nix 2.8's autoGC), which is
// not f_bsize on every file system (ZFS: 512 and 128 KiB).
func freeSpaceOf(st *unix.Statfs_t) (avail, total uint64) {
	unit := uint64(st.Frsize)
	if st.Frsize <= 0 {
		unit = uint64(st.Bsize)
	}
	return st.Bavail * unit, st.Blocks * unit
}

// MountOf finds a mount in /proc/self/mountinfo by its id: its file-system
// type, source and mount point, for messages (all "" if not found).
func MountOf(mntID uint64) (fstype, source, mountedOn string) {
	e, _ := procfs.Mount(mntID)
	return e.FSType, e.Source, e.MountPoint
}
