package lock

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"storekeeper/internal/sys"
	"sync"

	"golang.org/x/sys/unix"
)

// Mode is the kind of flock(2) lock to take.
type Mode int

const (
	// Shared is flock's LOCK_SH (Nix's ltRead).
	Shared Mode = iota + 1
	// Exclusive is flock's LOCK_EX (Nix's ltWrite).
	Exclusive
)

func (m Mode) String() string {
	switch m {
	case Shared:
		return "shared"
	case Exclusive:
		return "exclusive"
	}
	return fmt.Sprintf("Mode(%d)", int(m))
}

func (m Mode) op() (int, error) {
	switch m {
	case Shared:
		return unix.LOCK_SH, nil
	case Exclusive:
		return unix.LOCK_EX, nil
	}
	return 0, fmt.Errorf("lock: invalid mode %d", int(m))
}

// ErrWouldBlock is returned (possibly wrapped; test with errors.Is) when a
// non-waiting lock attempt finds the lock held by someone else.
var ErrWouldBlock = errors.New("lock: would block")

// testHookBeforeLock, when set by tests, runs after a lock file has been
// opened and before the first attempt to lock it (OpenTempRoots and
// LockPaths). It lets tests simulate another process deleting the file in
// that window.
var testHookBeforeLock func(lockPath string)

// ErrNotRegular is returned (wrapped; test with errors.Is) when a lock
// file is not a regular file: a symbolic link (never followed), a FIFO, a
// directory, a socket or a device. Nix never makes one; whoever controls
// the directory does, so nothing is locked, written or removed through it.
var ErrNotRegular = errors.New("not a regular file")

// ErrNotLockFile is returned (wrapped) when a lock file holds data but is
// not stale by Nix's protocol, or keeps being replaced by stale ones: it
// is not a lock file any process is following the protocol on.
var ErrNotLockFile = errors.New("not a usable lock file")

// openFlags are added to every open of a lock file: never follow a
// symbolic link, never leak into a child, never block opening a FIFO.
const openFlags = unix.O_NOFOLLOW | unix.O_CLOEXEC | unix.O_NONBLOCK

// openRegularAt opens name relative to dirfd (unix.AT_FDCWD for a path)
// with flags|openFlags (mode for O_CREAT) and returns it only if it is a
// regular file, with its fstat. disp names it in errors. Anything else
// (a symbolic link, FIFO, directory, socket or device) is refused with
// an error wrapping ErrNotRegular, and closed without being read or
// written. Other errors wrap the errno in an *os.PathError, so
// errors.Is(err, fs.ErrNotExist) works.
func openRegularAt(dirfd int, name, disp string, flags int, mode uint32) (*os.File, unix.Stat_t, error) {
	var st unix.Stat_t
	var fd int
	var err error
	for {
		fd, err = unix.Openat(dirfd, name, flags|openFlags, mode)
		if err != unix.EINTR {
			break
		}
	}
	if err != nil {
		// ELOOP (a symlink under O_NOFOLLOW), ENXIO (a socket), EISDIR
		// (a directory opened for writing): say what is there.
		if err == unix.ELOOP || err == unix.ENXIO || err == unix.EISDIR || err == unix.ENODEV {
			if unix.Fstatat(dirfd, name, &st, unix.AT_SYMLINK_NOFOLLOW) == nil && st.Mode&unix.S_IFMT != unix.S_IFREG {
				return nil, st, notRegular(disp, st.Mode)
			}
		}
		return nil, st, fmt.Errorf("opening lock file: %w", &os.PathError{Op: "open", Path: disp, Err: err})
	}
	if err := unix.Fstat(fd, &st); err != nil {
		unix.Close(fd)
		return nil, st, fmt.Errorf("stat %s: %w", disp, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		unix.Close(fd)
		return nil, st, notRegular(disp, st.Mode)
	}
	return os.NewFile(uintptr(fd), disp), st, nil
}

func notRegular(disp string, mode uint32) error {
	what := "a special file"
	switch mode & unix.S_IFMT {
	case unix.S_IFLNK:
		what = "a symbolic link"
	case unix.S_IFIFO:
		what = "a FIFO"
	case unix.S_IFDIR:
		what = "a directory"
	case unix.S_IFSOCK:
		what = "a socket"
	case unix.S_IFCHR, unix.S_IFBLK:
		what = "a device"
	}
	return fmt.Errorf("lock file %s is %s, %w: it is neither followed nor used (remove it if no process is using it)", disp, what, ErrNotRegular)
}

// OpenLockFile opens path read-write like Nix's openLockFile: O_RDWR,
// plus O_CREAT with mode 0600 (minus umask) when create is true, and
// always O_NOFOLLOW|O_CLOEXEC|O_NONBLOCK. Only a regular file is
// returned: a symbolic link is never followed, and a FIFO, directory,
// socket or device is refused, with an error wrapping ErrNotRegular that
// names path. With create=false a missing file yields an error satisfying
// errors.Is(err, fs.ErrNotExist).
//
// The file is opened in its directory as that directory's trust allows
// (see LockPaths): as root, in a directory another user owns, it is
// opened (and created) with that user's file-system ids, never as root.
//
// Opening takes no lock. Every call returns a new open file description, so
// two OpenLockFile calls on the same path in one process conflict with each
// other exactly as two processes would.
func OpenLockFile(path string, create bool) (*os.File, error) {
	flag := unix.O_RDWR
	if create {
		flag |= unix.O_CREAT
	}
	return openLockFile(path, flag)
}

// openLockFile opens the lock file at path with flag, relative to its
// directory as that directory's trust allows (see lockDir.open).
func openLockFile(path string, flag int) (*os.File, error) {
	d, err := openLockDir(filepath.Dir(path))
	if err != nil {
		return nil, err
	}
	defer d.close()
	f, _, err := d.open(filepath.Base(path), flag)
	return f, err
}

// flock runs flock(2) on f, retrying on EINTR.
func flock(f *os.File, how int) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var ferr error
	cerr := rc.Control(func(fd uintptr) {
		for {
			ferr = unix.Flock(int(fd), how)
			if ferr != unix.EINTR {
				return
			}
		}
	})
	if cerr != nil {
		return cerr
	}
	return ferr
}

// tryLock makes one non-blocking attempt; it reports ErrWouldBlock (bare)
// when the lock is held elsewhere.
func tryLock(f *os.File, op int) error {
	err := flock(f, op|unix.LOCK_NB)
	if err == unix.EWOULDBLOCK {
		return ErrWouldBlock
	}
	if err != nil {
		return fmt.Errorf("flock %s: %w", f.Name(), err)
	}
	return nil
}

// Lock takes a flock(2) lock of mode m on f (like Nix's lockFile).
//
// With wait=false it makes one non-blocking attempt and returns
// ErrWouldBlock if a conflicting lock is held by another open file
// description (another process, or another open of the same file in this
// process). With wait=true it waits until the lock is acquired or ctx is
// done, in which case it returns ctx.Err() and holds no new lock. When
// ctx can never be cancelled (ctx.Done() == nil, e.g. context.Background)
// it sleeps in a blocking flock(2); otherwise it polls with LOCK_NB and a
// backoff from 2ms to 100ms, so no goroutine or thread is ever left blocked
// in the kernel after cancellation. Polling gives no fairness: a waiter for
// an exclusive lock can be overtaken by newcomers.
//
// Calling Lock again on an f that already holds a lock converts it. As
// flock(2) documents, conversion is not atomic: if the conversion has to
// wait, or fails with ErrWouldBlock, the lock previously held through f may
// already have been dropped.
//
// Locks are released by Unlock, by closing f (if no duplicate of the
// descriptor exists), or by the kernel when the process dies, including
// by SIGKILL; they never outlive the process.
func Lock(ctx context.Context, f *os.File, m Mode, wait bool) error {
	op, err := m.op()
	if err != nil {
		return err
	}
	if !wait {
		return tryLock(f, op)
	}
	if ctx.Done() == nil {
		if err := flock(f, op); err != nil {
			return fmt.Errorf("flock %s: %w", f.Name(), err)
		}
		return nil
	}
	var b sys.Backoff
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		err := tryLock(f, op)
		if !errors.Is(err, ErrWouldBlock) {
			return err
		}
		if err := b.Wait(ctx); err != nil {
			return err
		}
	}
}

// Unlock releases whatever flock lock f holds (LOCK_UN). Unlocking a file
// that holds no lock is not an error. It does not close f.
func Unlock(f *os.File) error {
	if err := flock(f, unix.LOCK_UN); err != nil {
		return fmt.Errorf("unlocking %s: %w", f.Name(), err)
	}
	return nil
}

// FileLock is an open lock file holding a flock lock, such as gc.lock or
// db/big-lock. It is safe for concurrent use; the lock belongs to the
// process (its open file description), not to a goroutine.
type FileLock struct {
	mu   sync.Mutex
	f    *os.File
	path string
	mode Mode
}

// Path returns the lock file's path.
func (l *FileLock) Path() string { return l.path }

// Mode returns the mode the lock was acquired in.
func (l *FileLock) Mode() Mode { return l.mode }

// Release unlocks and closes the lock file. It is idempotent and safe to
// call on a nil *FileLock. If the process crashes instead, the kernel
// releases the lock.
func (l *FileLock) Release() error {
	if l == nil {
		return nil
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.f == nil {
		return nil
	}
	uerr := Unlock(l.f)
	cerr := l.f.Close()
	l.f = nil
	if uerr != nil {
		return uerr
	}
	return cerr
}

// acquireFile opens path with flag and locks it in mode m. If the lock is
// busy and wait is true, onWait (if non-nil) is called once before waiting.
func acquireFile(ctx context.Context, path string, flag int, m Mode, wait bool, onWait func()) (*FileLock, error) {
	if _, err := m.op(); err != nil {
		return nil, err
	}
	f, err := openLockFile(path, flag)
	if err != nil {
		return nil, err
	}
	err = Lock(ctx, f, m, false)
	held := errors.Is(err, ErrWouldBlock)
	if held && wait {
		if onWait != nil {
			onWait()
		}
		err = Lock(ctx, f, m, true)
	}
	if err != nil {
		f.Close()
		if held {
			// Busy, or the wait for it ended: say which lock (HeldError).
			return nil, &HeldError{Path: path, Err: err}
		}
		return nil, fmt.Errorf("locking %s: %w", path, err)
	}
	return &FileLock{f: f, path: path, mode: m}, nil
}

// AcquireGCLock opens (creating it, mode 0600, like Nix) <stateDir>/gc.lock
// and locks it in mode m. The garbage collector holds it Exclusive while it
// runs; Shared holders (processes registering roots) exclude a collector.
//
// If the lock is busy: with wait=false it returns an error satisfying
// errors.Is(err, ErrWouldBlock); with wait=true it calls onWait once (if
// non-nil; Nix prints "waiting for the big garbage collector lock...") and
// waits until acquired or ctx is done (then returns an error wrapping
// ctx.Err() and holds nothing). stateDir must exist; it is not created.
func AcquireGCLock(ctx context.Context, stateDir string, m Mode, wait bool, onWait func()) (*FileLock, error) {
	return acquireFile(ctx, filepath.Join(stateDir, "gc.lock"), os.O_RDWR|os.O_CREATE, m, wait, onWait)
}

// AcquireGCLockReadOnly is AcquireGCLock for processes without write
// access: it opens gc.lock O_RDONLY and never creates it (flock works on
// read-only descriptors). A missing file yields an error satisfying
// errors.Is(err, fs.ErrNotExist).
func AcquireGCLockReadOnly(ctx context.Context, stateDir string, m Mode, wait bool, onWait func()) (*FileLock, error) {
	return acquireFile(ctx, filepath.Join(stateDir, "gc.lock"), os.O_RDONLY, m, wait, onWait)
}

// AcquireBigLock locks <dbDir>/big-lock in mode m, waiting until acquired
// or ctx is done (Nix takes it Shared in every process that opens the
// database read-write and Exclusive only to upgrade the schema).
//
// With readOnly=false the file is opened read-write and created if missing
// (mode 0600), like Nix. With readOnly=true it is opened O_RDONLY and never
// created, so commands that only read need no write access; flock works
// on read-only descriptors. A missing file then yields an error satisfying
// errors.Is(err, fs.ErrNotExist).
func AcquireBigLock(ctx context.Context, dbDir string, m Mode, readOnly bool) (*FileLock, error) {
	flag := os.O_RDWR | os.O_CREATE
	if readOnly {
		flag = os.O_RDONLY
	}
	return acquireFile(ctx, filepath.Join(dbDir, "big-lock"), flag, m, true, nil)
}

// IsLocked reports whether some process (or another open file description
// in this one) holds any flock lock on the existing file at path. It opens
// the file read-only, tries a non-blocking exclusive lock and, if that
// succeeds, releases it at once. A missing file yields (false, nil); a
// symbolic link (never followed) or any other non-regular file yields
// false and an error wrapping ErrNotRegular, without blocking on a FIFO.
//
// The answer is only a snapshot: the file can be locked or unlocked right
// after. For a brief moment the probe itself holds the lock, so a
// concurrent non-blocking attempt by someone else (e.g. a Nix builder's
// PathLocks with wait=false) may fail once and be retried by its owner.
func IsLocked(path string) (bool, error) {
	f, _, err := openRegularAt(unix.AT_FDCWD, path, path, unix.O_RDONLY, 0)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return false, nil
		}
		return false, err
	}
	defer f.Close()
	err = tryLock(f, unix.LOCK_EX)
	if errors.Is(err, ErrWouldBlock) {
		return true, nil
	}
	if err != nil {
		return false, err
	}
	return false, Unlock(f)
}
