package lock

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"storekeeper/internal/sys"
	"strings"
	"sync"

	"golang.org/x/sys/unix"
)

// PathLocks holds exclusive locks on "<path>.lock" files, Nix's PathLocks.
// Nix builders, substituters and `nix-store --optimise`-style code take
// these on store paths before creating or replacing them, and nix-env
// takes one on a profile while it changes it. A PathLocks is safe for
// concurrent use.
type PathLocks struct {
	mu   sync.Mutex
	held []heldLock
	// shared is LockPathsAt's one duplicate of the caller's directory,
	// which every held lock uses; Unlock closes it last.
	shared *lockDir
}

type heldLock struct {
	lockPath string
	f        *os.File
	st       unix.Stat_t // f's fstat when locked
	// dir is the lock file's directory when Unlock(true) may delete the
	// file there (the directory is ours, see lockDir.ours); nil otherwise.
	dir  *lockDir
	name string
}

// maxStaleRetries bounds how many stale lock files in a row lockAt takes
// before it gives up: each one means another locker deleted the file
// between our open and our lock, which a live protocol does a few times
// at most.
const maxStaleRetries = 50

// LockPaths locks "<p>.lock" exclusively for every p in paths,
// deduplicated and in byte-wise sorted order of p (the order of Nix's
// std::set<Path>, so that we never deadlock against Nix). For each path it
// creates/opens the lock file (mode 0600), tries the lock without waiting
// and, if it is busy, either fails (wait=false) or calls waitMsg(p) (if
// non-nil) and waits until it is free or ctx is done. Once locked it checks
// the file is still empty: a previous holder that released with
// deleteLockFiles unlinked it and wrote "d", so we hold a lock on a dead
// file and start over with a fresh one, after a short growing delay
// (2ms to 100ms), at most 50 times, and not after ctx is done.
//
// Hostile lock files: a lock file is only ever a regular file opened with
// O_NOFOLLOW|O_NONBLOCK. A symbolic link (whatever it points to) or any
// other non-regular file fails at once with an error wrapping
// ErrNotRegular that names it; a non-empty file that is still in place
// once locked (so no holder unlinked it before marking it, as the
// protocol does) fails at once with ErrNotLockFile. Neither is written,
// removed or followed. The directory of each path is opened once and
// the lock file opened relative to it; symbolic links in the directory's
// own path are followed (use LockPathsAt to pin the directory).
//
// Directories of other users: running as root in a directory owned by
// another user (e.g. profiles/per-user/USER), the lock file is opened and,
// if missing, created with that user's file-system ids on a thread of its
// own (see openAsOwner), so root never creates a file there and never
// opens one the user could not; the file belongs to the user, as if the
// user's nix-env had made it. A lock file root left there is locked
// read-only (see lockDir.open).
//
// On any failure every lock already taken is released (lock files are
// kept) and the error is returned: wrapping ErrWouldBlock if wait=false
// and a path was busy, wrapping ctx.Err() if ctx ended while waiting or
// retrying.
//
// Locks are per open file description: another LockPaths call in this
// process on an overlapping set conflicts with this one exactly as another
// process would, so goroutines can use it to exclude each other; locking a
// path this goroutine already holds with wait=true waits until ctx is done.
// The kernel releases the locks if the process dies; the lock files stay
// behind empty and are reused.
func LockPaths(ctx context.Context, paths []string, wait bool, waitMsg func(path string)) (*PathLocks, error) {
	return lockSorted(ctx, paths, wait, waitMsg, func(p string) (*lockDir, string, error) {
		d, err := openLockDir(filepath.Dir(p))
		return d, filepath.Base(p), err
	})
}

// LockPathsAt is LockPaths for names in the directory dir (an open
// directory, e.g. opened with O_NOFOLLOW while walking a tree with *at
// calls): "<name>.lock" is opened relative to dir, so the directory is
// the one the caller opened even if its path is renamed or replaced by a
// symbolic link meanwhile. dirPath names dir in messages and in
// LockFiles. dir stays the caller's: PathLocks keeps its own duplicate
// where it needs one.
func LockPathsAt(ctx context.Context, dir *os.File, dirPath string, names []string, wait bool, waitMsg func(path string)) (*PathLocks, error) {
	for _, n := range names {
		if n == "" || n == "." || n == ".." || strings.Contains(n, "/") {
			return nil, fmt.Errorf("lock: %q is not a name in %s", n, dirPath)
		}
	}
	paths := make([]string, len(names))
	for i, n := range names {
		paths[i] = filepath.Join(dirPath, n)
	}
	// One duplicate of the directory for all the names (not one each: a
	// batch of tens of thousands of paths saves three system calls per
	// lock).
	d, err := lockDirOf(dir, dirPath)
	if err != nil {
		return nil, err
	}
	return lockSortedIn(ctx, paths, wait, waitMsg, func(p string) (*lockDir, string, error) {
		return d, filepath.Base(p), nil
	}, d)
}

// lockSorted locks the sorted, deduplicated paths in turn; dirOf opens
// the directory of each and gives its name there.
func lockSorted(ctx context.Context, paths []string, wait bool, waitMsg func(string), dirOf func(p string) (*lockDir, string, error)) (*PathLocks, error) {
	return lockSortedIn(ctx, paths, wait, waitMsg, dirOf, nil)
}

// lockSortedIn is lockSorted where dirOf returns shared for every path
// (when shared is not nil): the PathLocks owns it and closes it last.
func lockSortedIn(ctx context.Context, paths []string, wait bool, waitMsg func(string), dirOf func(p string) (*lockDir, string, error), shared *lockDir) (*PathLocks, error) {
	sorted := append([]string(nil), paths...)
	sort.Strings(sorted)
	pl := &PathLocks{shared: shared}
	for i, p := range sorted {
		if i > 0 && p == sorted[i-1] {
			continue
		}
		if err := ctx.Err(); err != nil {
			pl.Unlock(false)
			return nil, err
		}
		d, name, err := dirOf(p)
		if err != nil {
			pl.Unlock(false)
			return nil, err
		}
		h, err := lockAt(ctx, d, name+".lock", p, wait, waitMsg)
		if err != nil {
			if d != shared {
				d.close()
			}
			pl.Unlock(false)
			return nil, err
		}
		if d.ours() || d.ownSticky() && int(h.st.Uid) == unix.Geteuid() {
			h.dir = d
		} else if d != shared {
			d.close()
		}
		pl.held = append(pl.held, h)
	}
	return pl, nil
}

// lockAt opens and locks the lock file name in d for path p (see
// LockPaths), retrying with a fresh file while the one it locked turns
// out stale.
func lockAt(ctx context.Context, d *lockDir, name, p string, wait bool, waitMsg func(string)) (heldLock, error) {
	lockPath := filepath.Join(d.path, name)
	var b sys.Backoff
	for attempt := 1; ; attempt++ {
		if err := ctx.Err(); err != nil {
			return heldLock{}, fmt.Errorf("locking %s: %w", lockPath, err)
		}
		f, st, err := d.open(name, unix.O_RDWR|unix.O_CREAT)
		if err != nil {
			return heldLock{}, err
		}
		if testHookBeforeLock != nil {
			testHookBeforeLock(lockPath)
		}
		err = tryLock(f, unix.LOCK_EX)
		if errors.Is(err, ErrWouldBlock) {
			if !wait {
				f.Close()
				return heldLock{}, fmt.Errorf("%s is locked: %w", lockPath, ErrWouldBlock)
			}
			if waitMsg != nil {
				waitMsg(p)
			}
			err = Lock(ctx, f, Exclusive, true)
		}
		if err != nil {
			f.Close()
			return heldLock{}, fmt.Errorf("locking %s: %w", lockPath, err)
		}
		if err := unix.Fstat(int(f.Fd()), &st); err != nil {
			f.Close()
			return heldLock{}, fmt.Errorf("stat %s: %w", lockPath, err)
		}
		if st.Size == 0 {
			return heldLock{lockPath: lockPath, f: f, st: st, name: name}, nil
		}
		// Stale, if the previous holder deleted this file after we opened
		// it: it unlinks before it writes "d", so a file still in place
		// was never part of the protocol.
		f.Close()
		if stillLinked(d.fd, name, &st) {
			return heldLock{}, fmt.Errorf("lock file %s holds %d bytes but was never released as stale (a holder unlinks it before marking it), %w: it is left as it is (remove it if no process is using it)", lockPath, st.Size, ErrNotLockFile)
		}
		if attempt >= maxStaleRetries {
			return heldLock{}, fmt.Errorf("lock file %s was stale %d times in a row, %w: something keeps replacing it", lockPath, attempt, ErrNotLockFile)
		}
		if err := b.Wait(ctx); err != nil {
			return heldLock{}, fmt.Errorf("locking %s: %w", lockPath, err)
		}
	}
}

// LockFiles returns the lock files held ("<p>.lock"), in locking order.
func (p *PathLocks) LockFiles() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make([]string, len(p.held))
	for i, h := range p.held {
		out[i] = h.lockPath
	}
	return out
}

// Unlock releases all locks. With deleteLockFiles it first deletes each
// lock file as Nix does (unlink, then write "d" into it, so that processes
// already waiting on it notice it is stale and create a new one; do this
// only when the protected path is finished, as Nix does after a
// successful build), but only where that is safe:
//   - only in a directory that is ours (owned by the effective uid and
//     writable by nobody else), or, for a lock file we own, in a
//     directory we own with the sticky bit (Nix's /nix/store, 1775
//     root:nixbld: nobody else may unlink or rename over our file); in
//     any other directory, such as a user's profiles/per-user/USER,
//     nothing is unlinked or written and the empty lock file stays for
//     the next locker;
//   - the name is unlinked only if it is still the file we locked (same
//     device and inode); "d" is written only into the regular file we
//     opened and locked, never through a name.
//
// Errors removing files are ignored, as in Nix; close errors are
// returned. Unlock is idempotent and safe on a nil *PathLocks. If the
// process dies instead, the kernel releases the locks and the files stay
// behind, empty, to be reused.
func (p *PathLocks) Unlock(deleteLockFiles bool) error {
	if p == nil {
		return nil
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	var first error
	for _, h := range p.held {
		if deleteLockFiles && h.dir != nil {
			// Removing the file is an optimisation; the "d" marks it stale.
			_ = unlinkIfSame(h.dir.fd, h.name, &h.st)
			if _, err := h.f.Write([]byte("d")); err != nil && first == nil {
				first = fmt.Errorf("marking %s stale: %w", h.lockPath, err)
			}
		}
		if h.dir != p.shared {
			h.dir.close()
		}
		if err := h.f.Close(); err != nil && first == nil {
			first = err
		}
	}
	p.held = nil
	p.shared.close()
	p.shared = nil
	return first
}
