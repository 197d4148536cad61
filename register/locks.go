package register

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"

	"storekeeper/lock"
	"storekeeper/nix/storepath"
	"storekeeper/report"
	"storekeeper/store"
)

// Locks are what a batch of paths is registered under: temporary roots
// (Nix's protocol, so that a concurrent garbage collector, which deletes
// every path of the store directory that is not valid, leaves them
// alone) and the paths' PathLocks ("<path>.lock" in the store directory,
// as Nix's builders and substituters take them before they create or
// register a path). Copy takes them with Lock, places trees under them,
// then hands them to Register (Options.Locked).
//
// Crash: the kernel releases the locks when the process dies, and the
// next collector deletes the temporary roots file; nothing else is left.
type Locks struct {
	lay   store.Layout
	dir   *os.File // the store directory the lock files are in
	roots *lock.TempRoots
	pls   []*lock.PathLocks
	held  map[string]bool // the full paths locked
}

// Lock adds paths (full store paths of s) as temporary roots, then takes
// their PathLocks, waiting for locks other processes hold (bounded by
// ctx; Options.Printer is not available here, so nothing is said while
// waiting: use LockWait for a message). The open-file limit is raised as
// needed (see raiseFileLimit); ErrTooMany when even that is not enough.
// On any error nothing is held. Close releases everything.
func Lock(ctx context.Context, s *store.Store, paths []string) (*Locks, error) {
	return LockWait(ctx, s, paths, nil)
}

// LockWait is Lock with waitMsg called (with the path) before waiting
// for a lock another process holds.
func LockWait(ctx context.Context, s *store.Store, paths []string, waitMsg func(path string)) (*Locks, error) {
	lay := s.Layout
	names := make([]string, 0, len(paths))
	held := make(map[string]bool, len(paths))
	for _, p := range paths {
		base, err := storepath.Parse(lay.StoreDir, p)
		if err != nil {
			return nil, fmt.Errorf("locking '%s': %w: %w", report.Name(p), ErrNotInStore, err)
		}
		full := lay.StorePathOf(base)
		if !held[full] {
			held[full] = true
			names = append(names, base)
		}
	}
	dir, err := openStoreDir(lay)
	if err != nil {
		return nil, err
	}
	l := &Locks{lay: lay, dir: dir, held: held}
	if err := l.lock(ctx, names, waitMsg); err != nil {
		l.Close()
		return nil, err
	}
	return l, nil
}

func (l *Locks) lock(ctx context.Context, names []string, waitMsg func(string)) error {
	if _, err := raiseFileLimit(uint64(len(names))+fileReserve, len(names)); err != nil {
		return err
	}
	var err error
	if l.roots, err = lock.OpenTempRoots(l.lay.StateDir); err != nil {
		return fmt.Errorf("temporary roots in %s: %w", l.lay.TempRootsDir(), err)
	}
	full := make([]string, len(names))
	for i, n := range names {
		full[i] = l.lay.StorePathOf(n)
	}
	if err := l.roots.AddAll(ctx, full); err != nil {
		return fmt.Errorf("adding %d temporary roots: %w", len(full), err)
	}
	// In order, one at a time, waiting for a busy one, as Nix does.
	// Creating lock files in parallel gains nothing: the store
	// directory's lock serialises their creation in the kernel, and the
	// contention costs more CPU (63k paths: 11.7 s of CPU in two
	// goroutines against 7.0 s in one, the same wall time).
	pl, err := lock.LockPathsAt(ctx, l.dir, l.lay.RealStoreDir, names, true, waitMsg)
	if err != nil {
		return fmt.Errorf("locking %d paths: %w", len(names), err)
	}
	l.pls = []*lock.PathLocks{pl}
	return nil
}

// Holds reports whether p (a full store path) is one of the paths locked.
func (l *Locks) Holds(p string) bool { return l.held[p] }

// addRoots adds more temporary roots (the references a batch relies on).
func (l *Locks) addRoots(ctx context.Context, paths []string) error {
	if len(paths) == 0 {
		return nil
	}
	if err := l.roots.AddAll(ctx, paths); err != nil {
		return fmt.Errorf("adding %d temporary roots: %w", len(paths), err)
	}
	return nil
}

// Close releases the PathLocks (deleting the lock files where that is
// safe, as Nix does once a path is registered) and the temporary roots.
// It is idempotent and safe on nil.
func (l *Locks) Close() error {
	if l == nil {
		return nil
	}
	var errs []error
	for _, pl := range l.pls {
		errs = append(errs, pl.Unlock(true))
	}
	l.pls = nil
	if l.roots != nil {
		errs = append(errs, l.roots.Close())
		l.roots = nil
	}
	if l.dir != nil {
		l.dir.Close()
		l.dir = nil
	}
	return errors.Join(errs...)
}

// openStoreDir opens the physical store directory.
func openStoreDir(lay store.Layout) (*os.File, error) {
	fd, err := unix.Open(lay.RealStoreDir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("opening the store directory %s: %w", lay.RealStoreDir, err)
	}
	return os.NewFile(uintptr(fd), lay.RealStoreDir), nil
}

// fileReserve is the open files kept free beside the lock files (one
// each: lock.LockPathsAt shares one descriptor of the directory): the
// database, the hashing and canonicalising walkers' directories.
const fileReserve = 1024

// rlimits are the system calls raiseFileLimit makes; tests replace them.
var rlimits = struct {
	get    func(*syscall.Rlimit) error
	set    func(*syscall.Rlimit) error
	nrOpen func() (uint64, error) // the kernel's ceiling for the hard limit
}{
	get: func(r *syscall.Rlimit) error { return syscall.Getrlimit(syscall.RLIMIT_NOFILE, r) },
	// syscall.Setrlimit (not x/sys/unix's) so the runtime knows the
	// limit was set on purpose.
	set: func(r *syscall.Rlimit) error { return syscall.Setrlimit(syscall.RLIMIT_NOFILE, r) },
	nrOpen: func() (uint64, error) {
		b, err := os.ReadFile("/proc/sys/fs/nr_open")
		if err != nil {
			return 0, err
		}
		return strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64)
	},
}

// raiseFileLimit makes RLIMIT_NOFILE's soft limit at least need: up to
// the hard limit, and when that is too low too (as root: with
// CAP_SYS_RESOURCE), the hard limit up to the kernel's nr_open. The
// limit is left raised (it is the process's, and other goroutines may
// rely on it). It returns the soft limit now in force, and ErrTooMany,
// saying what was tried, when it is below need. paths is only for the
// message.
func raiseFileLimit(need uint64, paths int) (uint64, error) {
	var r syscall.Rlimit
	if err := rlimits.get(&r); err != nil {
		return 0, fmt.Errorf("reading the open-file limit: %w", err)
	}
	if r.Cur >= need {
		return r.Cur, nil
	}
	have := r.Cur
	if r.Cur < r.Max {
		nr := syscall.Rlimit{Cur: r.Max, Max: r.Max}
		if err := rlimits.set(&nr); err != nil {
			return have, tooMany(paths, need, r, fmt.Sprintf("raising the soft limit to %d failed", r.Max), err)
		}
		have = r.Max
	}
	if have >= need {
		return have, nil
	}
	ceiling, err := rlimits.nrOpen()
	if err != nil {
		return have, tooMany(paths, need, r, "the kernel's ceiling (/proc/sys/fs/nr_open) is unknown", err)
	}
	if ceiling < need {
		return have, tooMany(paths, need, r, fmt.Sprintf("that is more than the kernel allows any process (fs.nr_open = %d)", ceiling), nil)
	}
	nr := syscall.Rlimit{Cur: need, Max: need}
	if err := rlimits.set(&nr); err != nil {
		return have, tooMany(paths, need, r, "raising the hard limit needs root with CAP_SYS_RESOURCE", err)
	}
	return need, nil
}

func tooMany(paths int, need uint64, r syscall.Rlimit, why string, cause error) error {
	const hint = "; nothing was changed: register them in smaller batches, or raise the hard limit (ulimit -Hn, or LimitNOFILE= for a service)"
	msg := fmt.Sprintf("%d paths need %d open files (one lock file each), but the open-file limit is %d (hard limit %d): %s", paths, need, r.Cur, r.Max, why)
	if cause != nil {
		return fmt.Errorf("%w: %s (%w)%s", ErrTooMany, msg, cause, hint)
	}
	return fmt.Errorf("%w: %s%s", ErrTooMany, msg, hint)
}
