package fs

import (
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// StoreOwner returns the canonical owner of the nodes of a store whose
// store directory is open at storeDirFd: the directory's owner uid, as
// Nix gives every path its own effective uid (root in a multi-user
// store); the group is this process's effective gid when that uid is
// ours, and the directory's group otherwise. Canonicalise's
// CanonicaliseOptions.UID and GID take these values; repair's staged
// trees and register's canonicalisation both get them here.
func StoreOwner(storeDirFd int) (uid, gid int, err error) {
	var st unix.Stat_t
	if err := unix.Fstat(storeDirFd, &st); err != nil {
		return 0, 0, fmt.Errorf("the store directory's owner: %w", err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFDIR {
		return 0, 0, fmt.Errorf("the store directory's owner: %w", unix.ENOTDIR)
	}
	uid, gid = int(st.Uid), int(st.Gid)
	if uid == os.Geteuid() {
		gid = os.Getegid()
	}
	return uid, gid, nil
}
