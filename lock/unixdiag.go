package lock

import (
	"encoding/binary"
	"errors"
	"fmt"
	"syscall"

	"golang.org/x/sys/unix"

	"storekeeper/internal/procfs"
)

// Linux's unix_diag interface (linux/unix_diag.h), which x/sys/unix does
// not define.
const (
	udiagShowVFS = 0x2 // UDIAG_SHOW_VFS: the bound file's device and inode
	unixDiagVFS  = 1   // UNIX_DIAG_VFS attribute
	tcpListen    = 10  // TCP_LISTEN, the state of a listening Unix socket
)

// maxDiagMessages bounds the messages (one a listening socket) read from
// the kernel's table; a variable for tests.
var maxDiagMessages = 1 << 20

// errDiagTooMany says the kernel's table of listening Unix sockets was
// longer than maxDiagMessages and the socket was not among those read.
var errDiagTooMany = errors.New("more listening Unix sockets than storekeeper reads")

// errNoSockDiag says the kernel does not answer unix_diag requests.
var errNoSockDiag = errors.New("the kernel does not list Unix sockets (no unix_diag)")

// unixListening reports whether a Unix socket in this network namespace
// listens on the socket file with fstat st, asking the kernel's socket
// table through NETLINK_SOCK_DIAG (as ss -xl does) for the listening
// sockets and the device and inode of the file each is bound to (path is
// the file's name, for its file system's device). It never
// connects to the socket: a connection that closes at once can crash Nix
// 2.8's collector (its server thread terminates the process when a
// second client arrives on the file descriptor number of one that has
// already gone). The kernel reports the inode's low 32 bits, and the
// device of the file system (its superblock's), which stat gives too
// except on btrfs, where a file in a subvolume has the subvolume's: either
// device matches, the superblock's found through the file's mount
// (superblockDev). On btrfs inode numbers repeat across subvolumes, so
// another listening socket with the file's inode number in another
// subvolume of the same file system would be taken for it. A listener in
// another network namespace is not seen.
func unixListening(st *unix.Stat_t, path string) (bool, error) {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, unix.NETLINK_SOCK_DIAG)
	if err != nil {
		return false, fmt.Errorf("%w: %w", errNoSockDiag, err)
	}
	defer unix.Close(fd)
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return false, fmt.Errorf("binding a netlink socket: %w", err)
	}
	tv := unix.Timeval{Sec: 2}
	unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv)

	// struct nlmsghdr + struct unix_diag_req
	req := make([]byte, unix.NLMSG_HDRLEN+24)
	ne := binary.NativeEndian
	ne.PutUint32(req[0:], uint32(len(req)))
	ne.PutUint16(req[4:], unix.SOCK_DIAG_BY_FAMILY)
	ne.PutUint16(req[6:], unix.NLM_F_REQUEST|unix.NLM_F_DUMP)
	ne.PutUint32(req[8:], 1) // sequence number
	b := req[unix.NLMSG_HDRLEN:]
	b[0] = unix.AF_UNIX
	ne.PutUint32(b[4:], 1<<tcpListen)  // udiag_states
	ne.PutUint32(b[12:], udiagShowVFS) // udiag_show
	if err := unix.Sendto(fd, req, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return false, fmt.Errorf("%w: %w", errNoSockDiag, err)
	}

	// The kernel's dev_t: major << 20 | minor.
	kdev := func(major, minor uint32) uint32 { return major<<20 | minor&(1<<20-1) }
	wantDev := kdev(unix.Major(st.Dev), unix.Minor(st.Dev))
	sbDev := wantDev
	if major, minor, ok := superblockDev(path, false); ok {
		sbDev = kdev(major, minor)
	}
	wantIno := uint32(st.Ino)
	found := false
	buf := make([]byte, 64<<10)
	for n := 0; n < maxDiagMessages; {
		m, _, err := unix.Recvfrom(fd, buf, 0)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return false, fmt.Errorf("reading the kernel's Unix socket table: %w", err)
		}
		msgs, err := syscall.ParseNetlinkMessage(buf[:m])
		if err != nil {
			return false, fmt.Errorf("reading the kernel's Unix socket table: %w", err)
		}
		for _, msg := range msgs {
			n++
			switch msg.Header.Type {
			case unix.NLMSG_DONE:
				return found, nil
			case unix.NLMSG_ERROR:
				if len(msg.Data) >= 4 {
					if errno := int32(ne.Uint32(msg.Data)); errno != 0 {
						return false, fmt.Errorf("%w: %w", errNoSockDiag, unix.Errno(-errno))
					}
				}
				return found, nil
			}
			// struct unix_diag_msg (16 bytes), then attributes.
			d := msg.Data
			if len(d) < 16 {
				continue
			}
			for a := d[16:]; len(a) >= 4; {
				l := int(ne.Uint16(a[0:]))
				typ := ne.Uint16(a[2:])
				if l < 4 || l > len(a) {
					break
				}
				if typ == unixDiagVFS && l >= 12 {
					ino := ne.Uint32(a[4:])
					dev := ne.Uint32(a[8:]) // the kernel's dev_t
					if ino == wantIno && (dev == wantDev || dev == sbDev) {
						found = true
					}
				}
				al := (l + 3) &^ 3
				if al > len(a) {
					break
				}
				a = a[al:]
			}
		}
	}
	if found {
		return true, nil
	}
	return false, fmt.Errorf("%w (%d): whether a process listens on the socket is unknown; 'ss -xlp' lists them", errDiagTooMany, maxDiagMessages)
}

// superblockDev returns the device number of the file system holding
// path (followed if a symbolic link only when follow): the major:minor that
// /proc/self/mountinfo gives for the mount statx names (STATX_MNT_ID,
// Linux 5.8), which is the superblock's s_dev. ok is false when it cannot
// be found (an older kernel, no /proc).
func superblockDev(path string, follow bool) (major, minor uint32, ok bool) {
	flags := unix.AT_SYMLINK_NOFOLLOW
	if follow {
		flags = 0
	}
	var sx unix.Statx_t
	if err := unix.Statx(unix.AT_FDCWD, path, flags, unix.STATX_MNT_ID, &sx); err != nil || sx.Mask&unix.STATX_MNT_ID == 0 {
		return 0, 0, false
	}
	e, ok := procfs.Mount(sx.Mnt_id)
	return e.Major, e.Minor, ok
}
