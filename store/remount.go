package store

import (
	"errors"
	"fmt"

	"golang.org/x/sys/unix"
)

// ErrReadOnlyStore is returned when the store is on a read-only mount that
// cannot be made writable.
var ErrReadOnlyStore = errors.New("store: the store is on a read-only file system")

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

// RemountWritable remounts the bind mount at dir read-write, keeping its
// other flags. It must only be called in a private mount namespace (a
// process started with CLONE_NEWNS and private propagation), so that the
// writable mount is seen by no other process and vanishes with it. It is
// what Nix does before a collection on NixOS.
func RemountWritable(dir string) error {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return fmt.Errorf("store: statfs %s: %w", dir, err)
	}
	if st.Flags&unix.ST_RDONLY == 0 {
		return nil
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
	if err := unix.Mount("", dir, "", flags, ""); err != nil {
		return fmt.Errorf("%w: remounting %s read-write in a private mount namespace: %v (run as root, or remount it yourself)", ErrReadOnlyStore, dir, err)
	}
	if ro, err := IsReadOnlyMount(dir); err != nil || ro {
		return fmt.Errorf("%w: %s is still read-only after remounting", ErrReadOnlyStore, dir)
	}
	return nil
}

// FreeSpace returns the bytes available to unprivileged users and the
// total size of the file system holding dir.
func FreeSpace(dir string) (avail, total uint64, err error) {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return 0, 0, fmt.Errorf("store: statfs %s: %w", dir, err)
	}
	return st.Bavail * uint64(st.Bsize), st.Blocks * uint64(st.Bsize), nil
}
