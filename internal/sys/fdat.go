package sys

import (
	"fmt"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// LstatAt is fstatat(dirfd, name, AT_SYMLINK_NOFOLLOW), retried on EINTR.
func LstatAt(dirfd int, name string, st *unix.Stat_t) error {
	for {
		err := unix.Fstatat(dirfd, name, st, unix.AT_SYMLINK_NOFOLLOW)
		if err != unix.EINTR {
			return err
		}
	}
}

// readNoatime is cleared the first time the kernel refuses O_NOATIME.
var readNoatime atomic.Bool

func init() { readNoatime.Store(true) }

// OpenAt opens name in dirfd (openat(2) with flags), retrying on EINTR.
// It asks for O_NOATIME: reading a store never writes to it, not even the
// access time of every inode it reads (which on a relatime mount is a
// journal write per file the first time a copied or day-old file is
// read). The kernel allows that only to the file's owner or with
// CAP_FOWNER; the first EPERM turns it off for the rest of the process.
func OpenAt(dirfd int, name string, flags int) (int, error) {
	for {
		f := flags
		if readNoatime.Load() {
			f |= unix.O_NOATIME
		}
		fd, err := unix.Openat(dirfd, name, f, 0)
		if err == unix.EPERM && f != flags {
			readNoatime.Store(false)
			continue
		}
		if err != unix.EINTR {
			return fd, err
		}
	}
}

// ReadlinkAt is readlinkat(dirfd, name) whatever the target's length,
// retried on EINTR.
func ReadlinkAt(dirfd int, name string) (string, error) { return ReadlinkAtSize(dirfd, name, 0) }

func ReadlinkAtSize(dirfd int, name string, size int64) (string, error) {
	n := 256
	if size >= int64(n) {
		n = int(size) + 1
	}
	for {
		buf := make([]byte, n)
		m, err := unix.Readlinkat(dirfd, name, buf)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return "", err
		}
		if m < len(buf) {
			return string(buf[:m]), nil
		}
		n *= 2
	}
}

// FileKind names the type of a node a store path may not hold (a fifo,
// socket or device), for error messages.
func FileKind(mode uint32) string {
	switch mode & unix.S_IFMT {
	case unix.S_IFIFO:
		return "fifo"
	case unix.S_IFSOCK:
		return "socket"
	case unix.S_IFCHR:
		return "character device"
	case unix.S_IFBLK:
		return "block device"
	}
	return fmt.Sprintf("file of type %#o", mode&unix.S_IFMT)
}
