package lock

import (
	"context"
	"fmt"
	"net"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// maxSunPath is the room for a path in sockaddr_un (108 bytes on Linux,
// with its terminating NUL).
const maxSunPath = 107

// socketAddr returns the address to bind or connect to for the Unix
// socket at path: path itself when it fits in sockaddr_un, otherwise
// /proc/self/fd/N/<name> through a descriptor of its directory (which the
// returned release closes), so that a state dir of any length works, as
// Nix makes it work by binding from inside the directory. The directory
// is opened with O_PATH, following no symlink at its last component.
func socketAddr(path string) (addr string, release func(), err error) {
	if len(path) <= maxSunPath {
		return path, func() {}, nil
	}
	dir, name := filepath.Split(path)
	fd, err := unix.Open(dir, unix.O_PATH|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return "", nil, fmt.Errorf("opening the directory of the socket %s: %w", path, err)
	}
	addr = fmt.Sprintf("/proc/self/fd/%d/%s", fd, name)
	if len(addr) > maxSunPath {
		unix.Close(fd)
		return "", nil, fmt.Errorf("the socket name %q is too long for a Unix socket (at most %d bytes)", name, maxSunPath-len("/proc/self/fd/NNNN/"))
	}
	return addr, func() { unix.Close(fd) }, nil
}

// ListenUnix listens on a Unix socket at path, of any length (see
// socketAddr). The socket file is not removed when the listener closes.
func ListenUnix(path string) (*net.UnixListener, error) {
	addr, release, err := socketAddr(path)
	if err != nil {
		return nil, err
	}
	defer release()
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: addr, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("listening on %s: %w", path, err)
	}
	ln.SetUnlinkOnClose(false)
	return ln, nil
}

// DialUnix connects to the Unix socket at path, of any length (see
// socketAddr). ctx bounds the connection attempt.
func DialUnix(ctx context.Context, path string) (net.Conn, error) {
	addr, release, err := socketAddr(path)
	if err != nil {
		return nil, err
	}
	defer release()
	var d net.Dialer
	return d.DialContext(ctx, "unix", addr)
}
