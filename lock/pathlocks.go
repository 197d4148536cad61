package lock

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sort"
	"sync"

	"golang.org/x/sys/unix"
)

// PathLocks holds exclusive locks on "<path>.lock" files, Nix's PathLocks.
// Nix builders, substituters and `nix-store --optimise`-style code take
// these on store paths before creating or replacing them. A PathLocks is
// safe for concurrent use.
type PathLocks struct {
	mu   sync.Mutex
	held []heldLock
}

type heldLock struct {
	lockPath string
	f        *os.File
}

// LockPaths locks "<p>.lock" exclusively for every p in paths,
// deduplicated and in byte-wise sorted order of p (the order of Nix's
// std::set<Path>, so that we never deadlock against Nix). For each path it
// creates/opens the lock file (mode 0600), tries the lock without waiting
// and, if it is busy, either fails (wait=false) or calls waitMsg(p) (if
// non-nil) and waits until it is free or ctx is done. Once locked it checks
// the file is still empty: a previous holder that released with
// deleteLockFiles unlinked it and wrote "d", so we hold a lock on a dead
// file and start over with a fresh one.
//
// On any failure every lock already taken is released (lock files are
// kept) and the error is returned: wrapping ErrWouldBlock if wait=false
// and a path was busy, wrapping ctx.Err() if ctx ended while waiting.
//
// Locks are per open file description: another LockPaths call in this
// process on an overlapping set conflicts with this one exactly as another
// process would, so goroutines can use it to exclude each other; locking a
// path this goroutine already holds with wait=true waits until ctx is done.
// The kernel releases the locks if the process dies; the lock files stay
// behind empty and are reused.
func LockPaths(ctx context.Context, paths []string, wait bool, waitMsg func(path string)) (*PathLocks, error) {
	sorted := append([]string(nil), paths...)
	sort.Strings(sorted)
	pl := &PathLocks{}
	for i, p := range sorted {
		if i > 0 && p == sorted[i-1] {
			continue
		}
		if err := ctx.Err(); err != nil {
			pl.Unlock(false)
			return nil, err
		}
		f, err := lockOnePath(ctx, p, wait, waitMsg)
		if err != nil {
			pl.Unlock(false)
			return nil, err
		}
		pl.held = append(pl.held, heldLock{lockPath: p + ".lock", f: f})
	}
	return pl, nil
}

func lockOnePath(ctx context.Context, p string, wait bool, waitMsg func(string)) (*os.File, error) {
	lockPath := p + ".lock"
	for {
		f, err := OpenLockFile(lockPath, true)
		if err != nil {
			return nil, err
		}
		if testHookBeforeLock != nil {
			testHookBeforeLock(lockPath)
		}
		err = tryLock(f, unix.LOCK_EX)
		if errors.Is(err, ErrWouldBlock) {
			if !wait {
				f.Close()
				return nil, fmt.Errorf("%s is locked: %w", lockPath, ErrWouldBlock)
			}
			if waitMsg != nil {
				waitMsg(p)
			}
			err = Lock(ctx, f, Exclusive, true)
		}
		if err != nil {
			f.Close()
			return nil, fmt.Errorf("locking %s: %w", lockPath, err)
		}
		fi, err := f.Stat()
		if err != nil {
			f.Close()
			return nil, fmt.Errorf("stat %s: %w", lockPath, err)
		}
		if fi.Size() == 0 {
			return f, nil
		}
		// Stale: the previous holder deleted this file after we opened it.
		f.Close()
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

// Unlock releases all locks. With deleteLockFiles it first unlinks each
// lock file and writes "d" into it, so that processes already waiting on
// it notice it is stale and create a new one (do this only when the
// protected path is finished, as Nix does after a successful build).
// Errors removing files are ignored, as in Nix; close errors are
// returned. Unlock is idempotent and safe on a nil *PathLocks.
func (p *PathLocks) Unlock(deleteLockFiles bool) error {
	if p == nil {
		return nil
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	var first error
	for _, h := range p.held {
		if deleteLockFiles {
			// Removing the file is an optimisation; the "d" marks it stale.
			_ = os.Remove(h.lockPath)
			if _, err := h.f.Write([]byte("d")); err != nil && first == nil {
				first = fmt.Errorf("marking %s stale: %w", h.lockPath, err)
			}
		}
		if err := h.f.Close(); err != nil && first == nil {
			first = err
		}
	}
	p.held = nil
	return first
}
