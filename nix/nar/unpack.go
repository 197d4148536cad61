package nar

import (
	"crypto/sha256"
	"fmt"
	"io"
	"os"
	"strings"
	"unsafe"

	"golang.org/x/sys/unix"
)

// UnpackOptions bound what Unpack accepts.
type UnpackOptions struct {
	// Limits bound the NAR (bytes, entries, nesting); see Limits.
	Limits Limits
	// Mtime, when not 0, is the modification time (seconds) every node
	// gets as it is completed (a file once written, a directory once
	// full, a symlink once made; the access time is left as is): a store
	// path's canonical mtime set in passing, which saves the caller a
	// walk of the tree.
	Mtime int64
}

// Unpack reads a NAR from r and creates what it holds as the NEW entry
// name of the open directory dirfd, returning the NAR's SHA-256 and size
// (of exactly the bytes it read, which are the whole of r). It accepts
// what Reader accepts (the canonical serialisation, within opts.Limits).
//
// It works only through *at system calls relative to dirfd and to the
// directories it created, and never follows a symlink: name and every
// entry are created with O_CREAT|O_EXCL|O_NOFOLLOW (files), mkdirat and
// then openat O_DIRECTORY|O_NOFOLLOW (directories) or symlinkat
// (symlinks, targets as given, neither followed nor checked, as Nix), so
// it fails rather than touch anything that already exists, and nothing
// outside name is created, written or changed, whatever the archive
// holds and whatever another process does to the tree meanwhile. Regular
// files get mode 0444, or 0555 if the NAR marks them executable;
// directories are 0700 while being filled and 0555 once complete. Owner
// and times are left as created, but for opts.Mtime: the caller
// canonicalises what else needs it, and syncs
// (Unpack does not fsync) before relying on the tree after a crash.
//
// On any error (a malformed NAR, a limit, a system call, r's error),
// Unpack stops and returns it, leaving what it created under name as it
// is, possibly with directories still 0700 or 0555: removing that is the
// caller's job (store/fs.RemoveTree). Unpack does not read r past the
// error. A context's cancellation reaches it through r (a reader that
// fails once the context is done).
func Unpack(r io.Reader, dirfd int, name string, opts UnpackOptions) (Hash, int64, error) {
	if why := badName(name); why != "" {
		return Hash{}, 0, fmt.Errorf("nar: cannot unpack into %q: the name %s", name, why)
	}
	h := sha256.New()
	nr := NewReaderLimits(io.TeeReader(r, h), opts.Limits)
	u := unpacker{nr: nr, top: name, mtime: opts.Mtime}
	defer u.closeAll()
	if err := u.run(dirfd); err != nil {
		return Hash{}, 0, err
	}
	var sum Hash
	h.Sum(sum[:0])
	return sum, nr.Offset(), nil
}

type unpackDir struct {
	fd   int
	path string // its Header.Path
}

type unpacker struct {
	nr    *Reader
	top   string
	stack []unpackDir
	buf   []byte
	mtime int64 // UnpackOptions.Mtime
}

// times is the utimensat argument that sets the mtime (atime unchanged).
func (u *unpacker) times() []unix.Timespec {
	return []unix.Timespec{{Nsec: unix.UTIME_OMIT}, {Sec: u.mtime}}
}

// setMtime sets the mtime of the node open at fd, when asked to.
func (u *unpacker) setMtime(fd int, path string) error {
	if u.mtime == 0 {
		return nil
	}
	if err := retryEINTR(func() error { return futimens(fd, u.times()) }); err != nil {
		return u.pathErr("utimensat", path, err)
	}
	return nil
}

// disp is the display path of a node: name/Path.
func (u *unpacker) disp(path string) string {
	if path == "" {
		return u.top
	}
	return u.top + "/" + path
}

func (u *unpacker) pathErr(op, path string, err error) error {
	return fmt.Errorf("nar: unpacking: %w", &os.PathError{Op: op, Path: u.disp(path), Err: err})
}

// closeAll closes the directories still open (after an error) without
// changing their mode.
func (u *unpacker) closeAll() {
	for _, d := range u.stack {
		unix.Close(d.fd)
	}
	u.stack = nil
	if u.buf != nil {
		b := u.buf[:cap(u.buf)]
		narBufPool.Put(&b)
		u.buf = nil
	}
}

// popDir makes the innermost directory 0555 and closes it.
func (u *unpacker) popDir() error {
	d := u.stack[len(u.stack)-1]
	u.stack = u.stack[:len(u.stack)-1]
	err := retryEINTR(func() error { return unix.Fchmod(d.fd, 0o555) })
	var terr error
	if err == nil {
		terr = u.setMtime(d.fd, d.path)
	}
	cerr := unix.Close(d.fd)
	if err != nil {
		return u.pathErr("chmod", d.path, err)
	}
	if terr != nil {
		return terr
	}
	if cerr != nil {
		return u.pathErr("close", d.path, cerr)
	}
	return nil
}

func (u *unpacker) run(dirfd int) error {
	for {
		hd, err := u.nr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return err
		}
		pfd, base := dirfd, u.top
		if hd.Path != "" {
			parent := ""
			base = hd.Path
			if i := strings.LastIndexByte(hd.Path, '/'); i >= 0 {
				parent, base = hd.Path[:i], hd.Path[i+1:]
			}
			// The Reader returns entries inside the open directories.
			for u.stack[len(u.stack)-1].path != parent {
				if err := u.popDir(); err != nil {
					return err
				}
			}
			pfd = u.stack[len(u.stack)-1].fd
		}
		switch hd.Type {
		case FileDirectory:
			if err := retryEINTR(func() error { return unix.Mkdirat(pfd, base, 0o700) }); err != nil {
				return u.pathErr("mkdir", hd.Path, err)
			}
			var fd int
			err := retryEINTR(func() (err error) {
				fd, err = unix.Openat(pfd, base, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
				return err
			})
			if err != nil {
				return u.pathErr("open", hd.Path, err)
			}
			u.stack = append(u.stack, unpackDir{fd: fd, path: hd.Path})
		case FileSymlink:
			if err := retryEINTR(func() error { return unix.Symlinkat(hd.LinkTarget, pfd, base) }); err != nil {
				return u.pathErr("symlink", hd.Path, err)
			}
			if u.mtime != 0 {
				if err := retryEINTR(func() error {
					return unix.UtimesNanoAt(pfd, base, u.times(), unix.AT_SYMLINK_NOFOLLOW)
				}); err != nil {
					return u.pathErr("utimensat", hd.Path, err)
				}
			}
		case FileRegular:
			if err := u.file(pfd, base, hd); err != nil {
				return err
			}
		}
	}
	for len(u.stack) > 0 {
		if err := u.popDir(); err != nil {
			return err
		}
	}
	return nil
}

// file creates the regular file base in pfd with the current contents.
func (u *unpacker) file(pfd int, base string, hd *Header) error {
	var fd int
	err := retryEINTR(func() (err error) {
		fd, err = unix.Openat(pfd, base, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
		return err
	})
	if err != nil {
		return u.pathErr("create", hd.Path, err)
	}
	err = u.copyContents(fd, hd)
	if err == nil {
		mode := uint32(0o444)
		if hd.Executable {
			mode = 0o555
		}
		// Exact whatever the umask.
		if cerr := retryEINTR(func() error { return unix.Fchmod(fd, mode) }); cerr != nil {
			err = u.pathErr("chmod", hd.Path, cerr)
		} else {
			err = u.setMtime(fd, hd.Path)
		}
	}
	if cerr := unix.Close(fd); cerr != nil && err == nil {
		err = u.pathErr("close", hd.Path, cerr)
	}
	return err
}

func (u *unpacker) copyContents(fd int, hd *Header) error {
	if hd.Size == 0 {
		return nil
	}
	if u.buf == nil {
		u.buf = *narBufPool.Get().(*[]byte)
	}
	buf := u.buf
	if int64(len(buf)) > hd.Size {
		buf = buf[:hd.Size]
	}
	for {
		n, rerr := io.ReadFull(u.nr, buf)
		for w := buf[:n]; len(w) > 0; {
			m, err := unix.Write(fd, w)
			if err == unix.EINTR {
				continue
			}
			if err != nil {
				return u.pathErr("write", hd.Path, err)
			}
			w = w[m:]
		}
		if rerr == io.EOF || rerr == io.ErrUnexpectedEOF {
			return nil // the Reader's end of contents; a truncation is its error
		}
		if rerr != nil {
			return rerr
		}
	}
}

// futimens sets the times of the file open at fd (utimensat with a NULL
// path), resolving no path.
func futimens(fd int, ts []unix.Timespec) error {
	_, _, e := unix.Syscall6(unix.SYS_UTIMENSAT, uintptr(fd), 0, uintptr(unsafe.Pointer(&ts[0])), 0, 0, 0)
	if e != 0 {
		return e
	}
	return nil
}

// retryEINTR calls fn until it does not fail with EINTR.
func retryEINTR(fn func() error) error {
	for {
		if err := fn(); err != unix.EINTR {
			return err
		}
	}
}
