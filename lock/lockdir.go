package lock

import (
	"errors"
	"fmt"
	"os"
	"os/user"
	"path/filepath"
	"runtime"
	"strconv"

	"golang.org/x/sys/unix"
)

// lockDir is an open directory that lock files are opened in, relative to
// its descriptor, so that a directory renamed or swapped for a symbolic
// link meanwhile is never followed. Its owner and mode decide how files
// are opened in it (open) and whether they may be deleted (ours).
type lockDir struct {
	fd   int
	path string
	st   unix.Stat_t
}

// openLockDir opens the directory at path. Symbolic links in path itself
// are followed: the caller names a directory it trusts the way to.
func openLockDir(path string) (*lockDir, error) {
	fd, err := openDirAt(unix.AT_FDCWD, path, 0)
	if err != nil {
		return nil, fmt.Errorf("opening lock file directory: %w", &os.PathError{Op: "open", Path: path, Err: err})
	}
	return newLockDir(fd, path)
}

// lockDirOf duplicates the descriptor of the directory dir (opened by
// the caller, e.g. with O_NOFOLLOW) as a lockDir; path names it in
// messages.
func lockDirOf(dir *os.File, path string) (*lockDir, error) {
	fd, err := unix.FcntlInt(dir.Fd(), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("duplicating the descriptor of %s: %w", path, err)
	}
	return newLockDir(fd, path)
}

func newLockDir(fd int, path string) (*lockDir, error) {
	d := &lockDir{fd: fd, path: path}
	if err := unix.Fstat(fd, &d.st); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("stat %s: %w", path, err)
	}
	if d.st.Mode&unix.S_IFMT != unix.S_IFDIR {
		unix.Close(fd)
		return nil, fmt.Errorf("lock file directory %s: %w", path, unix.ENOTDIR)
	}
	return d, nil
}

// openDirAt opens the directory name relative to dirfd with extra flags
// (e.g. O_NOFOLLOW), retrying on EINTR.
func openDirAt(dirfd int, name string, flags int) (int, error) {
	for {
		fd, err := unix.Openat(dirfd, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC|flags, 0)
		if err != unix.EINTR {
			return fd, err
		}
	}
}

func (d *lockDir) close() {
	if d != nil && d.fd >= 0 {
		unix.Close(d.fd)
		d.fd = -1
	}
}

// ours reports whether only this process's user controls the directory:
// it is owned by the effective uid and writable by nobody else. Only
// there are lock files deleted (unlinked and marked "d"): in any other
// directory, whoever else controls it could have put anything at the
// name, and the empty lock file is left for the next locker.
func (d *lockDir) ours() bool {
	return int(d.st.Uid) == unix.Geteuid() && d.st.Mode&0o022 == 0
}

// ownSticky reports whether the directory is owned by the effective uid
// and has the sticky bit (Nix's /nix/store: 1775 root:nixbld): others may
// create files there but not unlink or rename over a file of ours, so a
// lock file we own may be deleted as in a directory that is ours.
func (d *lockDir) ownSticky() bool {
	return int(d.st.Uid) == unix.Geteuid() && d.st.Mode&unix.S_ISVTX != 0
}

// asOwner reports whether files in the directory are opened with its
// owner's file-system ids: when running as root in a directory another
// user owns, so that root never creates a file there, never opens one
// that user could not, and never follows anything.
func (d *lockDir) asOwner() bool {
	return unix.Geteuid() == 0 && d.st.Uid != 0
}

// open opens the lock file name in d with flags (O_CREAT creates it with
// mode 0600, minus umask), refusing anything but a regular file (see
// openRegularAt), and returns it with its fstat.
//
// As root in a directory another user owns, it opens as that user (see
// openAsOwner), so a file it creates belongs to the user. If the user may
// not open an existing lock file (one root left there, e.g. after Nix's
// collector was killed while holding it), it is opened read-only as root
// instead, and only if it is a regular file owned by root with a single
// link: a file only root can have made, which flock can lock and which is
// never written (no deletion happens in such a directory).
func (d *lockDir) open(name string, flags int) (*os.File, unix.Stat_t, error) {
	disp := filepath.Join(d.path, name)
	if !d.asOwner() {
		return openRegularAt(d.fd, name, disp, flags, 0o600)
	}
	f, st, err := openAsOwner(int(d.st.Uid), primaryGid(d.st.Uid, d.st.Gid), func() (*os.File, unix.Stat_t, error) {
		return openRegularAt(d.fd, name, disp, flags, 0o600)
	})
	if err == nil || !(errors.Is(err, unix.EACCES) || errors.Is(err, unix.EPERM)) {
		return f, st, err
	}
	rf, rst, rerr := openRegularAt(d.fd, name, disp, unix.O_RDONLY, 0)
	if rerr != nil {
		return nil, st, err
	}
	if rst.Uid != 0 || rst.Nlink != 1 {
		rf.Close()
		return nil, st, fmt.Errorf("%w (it belongs to uid %d and has %d links, so it is not a lock file root left there; remove it if no process is using it)", err, rst.Uid, rst.Nlink)
	}
	return rf, rst, nil
}

// primaryGid is uid's primary group from the user database, or fallback
// (the directory's group) when uid has no entry. Nix makes
// profiles/per-user/USER group root, so the directory's group alone
// would leave root's group in force while acting as the user.
func primaryGid(uid, fallback uint32) int {
	if u, err := user.LookupId(strconv.FormatUint(uint64(uid), 10)); err == nil {
		if g, err := strconv.Atoi(u.Gid); err == nil && g >= 0 {
			return g
		}
	}
	return int(fallback)
}

// ownerSwitch is the file-system id switching openAsOwner does; tests
// replace it to simulate a failure to switch back.
var ownerSwitch = func(uid, gid int) (restore func() bool, err error) {
	prevGid, _ := unix.SetfsgidRetGid(gid)
	if cur, _ := unix.SetfsgidRetGid(-1); cur != gid {
		unix.SetfsgidRetGid(prevGid)
		return nil, fmt.Errorf("setfsgid(%d) did not take effect (no CAP_SETGID?)", gid)
	}
	prevUid, _ := unix.SetfsuidRetUid(uid)
	if cur, _ := unix.SetfsuidRetUid(-1); cur != uid {
		unix.SetfsuidRetUid(prevUid)
		unix.SetfsgidRetGid(prevGid)
		return nil, fmt.Errorf("setfsuid(%d) did not take effect (no CAP_SETUID?)", uid)
	}
	return func() bool {
		unix.SetfsuidRetUid(prevUid)
		unix.SetfsgidRetGid(prevGid)
		u, _ := unix.SetfsuidRetUid(-1)
		g, _ := unix.SetfsgidRetGid(-1)
		return u == prevUid && g == prevGid
	}, nil
}

// openAsOwner runs open on an OS thread of its own whose file-system uid
// and gid (setfsuid(2), setfsgid(2)) are uid and gid for the duration of
// the call, and returns what open returned.
//
// File-system ids are per thread in Linux (golang.org/x/sys/unix calls
// the system calls directly, not on every thread as glibc's setuid
// does), so only that thread acts as the user; and while its fsuid is not
// 0 the kernel drops its file-system capabilities (CAP_DAC_OVERRIDE,
// CAP_FOWNER, ...), so it can open and create exactly what the user
// could, as the user. The goroutine is wired to the thread with
// runtime.LockOSThread, which also makes the runtime create any new
// thread from a clean template thread rather than by cloning this one.
// After open the ids are switched back and checked; only if they are
// back is the thread returned to the runtime. Otherwise the goroutine
// ends still locked to it, and the runtime terminates the thread (or, if
// it is the process's main thread, which cannot end, parks it for good),
// so no other goroutine ever runs with the user's ids.
func openAsOwner(uid, gid int, open func() (*os.File, unix.Stat_t, error)) (*os.File, unix.Stat_t, error) {
	type result struct {
		f   *os.File
		st  unix.Stat_t
		err error
	}
	ch := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		restore, err := ownerSwitch(uid, gid)
		if err != nil {
			// Nothing changed (or it was put back): the thread is clean.
			runtime.UnlockOSThread()
			ch <- result{err: fmt.Errorf("acting as uid %d to open a lock file in its directory: %w", uid, err)}
			return
		}
		f, st, err := open()
		if !restore() {
			// The thread cannot be trusted any more: end the goroutine
			// still locked to it, so that the runtime discards it.
			if f != nil {
				f.Close()
			}
			ch <- result{err: fmt.Errorf("could not switch back from uid %d after opening a lock file", uid)}
			return
		}
		runtime.UnlockOSThread()
		ch <- result{f, st, err}
	}()
	r := <-ch
	return r.f, r.st, r.err
}

// stillLinked reports whether name in dirfd is still the file whose
// fstat is st (same device and inode), not following a symbolic link.
func stillLinked(dirfd int, name string, st *unix.Stat_t) bool {
	var cur unix.Stat_t
	for {
		err := unix.Fstatat(dirfd, name, &cur, unix.AT_SYMLINK_NOFOLLOW)
		if err == unix.EINTR {
			continue
		}
		return err == nil && cur.Dev == st.Dev && cur.Ino == st.Ino
	}
}

// unlinkIfSame unlinks name in dirfd if it is still the file whose fstat
// is st. Between the check and the unlink only someone who can write to
// the directory can swap the name, so callers use it only in directories
// that are ours (or that only root writes to).
func unlinkIfSame(dirfd int, name string, st *unix.Stat_t) error {
	if !stillLinked(dirfd, name, st) {
		return nil
	}
	for {
		err := unix.Unlinkat(dirfd, name, 0)
		if err != unix.EINTR {
			if err == unix.ENOENT {
				return nil
			}
			return err
		}
	}
}
