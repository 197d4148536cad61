package gc

// Automatic collection by free space (`gc --auto`, issue #26), with Nix
// 2.8's min-free / max-free semantics (LocalStore::autoGC): when the
// store's file system has less than min-free bytes available, collect
// until max-free bytes are available; min-free 0 (Nix's default) means
// never; max-free's default (the largest number) means no limit: every
// dead path goes.

import (
	"context"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"

	"storekeeper/lock"
	"storekeeper/store"
	"storekeeper/store/fs"
)

// FreeSpec is an amount of free space: Bytes, or with IsPercent a
// percentage (0 to 100) of the file system's size.
type FreeSpec struct {
	Bytes     uint64
	Percent   float64
	IsPercent bool
}

// Of is the amount in bytes on a file system of total bytes.
func (f FreeSpec) Of(total uint64) uint64 {
	if f.IsPercent {
		return uint64(f.Percent / 100 * float64(total))
	}
	return f.Bytes
}

// Unlimited is max-free's default: no limit.
var Unlimited = FreeSpec{Bytes: math.MaxUint64}

// Auto are the thresholds of an automatic collection.
type Auto struct {
	MinFree, MaxFree FreeSpec
}

// Need decides as Nix 2.8's autoGC does, from the bytes available (avail)
// on a file system of total bytes: nothing when avail >= min-free or
// avail >= max-free (so min-free 0 never collects); otherwise collect
// max-free - avail bytes (maxFreed 0, no limit, when max-free is
// Unlimited).
func (a Auto) Need(avail, total uint64) (collect bool, maxFreed uint64) {
	minFree, maxFree := a.MinFree.Of(total), a.MaxFree.Of(total)
	if avail >= minFree || avail >= maxFree {
		return false, 0
	}
	if !a.MaxFree.IsPercent && a.MaxFree.Bytes == math.MaxUint64 {
		return true, 0
	}
	return true, maxFree - avail
}

// Check is the first step of `gc --auto`: one statfs of the store's real
// directory and the stat of db/reserved (see availWithoutReserve; reserved
// is gc-reserved-space), nothing else (no database, no lock, no roots).
// It returns the bytes available and the file system's size, and whether
// a collection is needed.
func (a Auto) Check(lay store.Layout, reserved uint64) (avail, total uint64, collect bool, err error) {
	avail, total, err = storeFreeSpace(lay, reserved)
	if err != nil {
		return 0, 0, false, err
	}
	collect, _ = a.Need(avail, total)
	return avail, total, collect, nil
}

// storeFreeSpace is the store file system's free bytes as every
// free-space decision sees them (fs.FreeSpace of the store's real
// directory, less availWithoutReserve's share; reserved is
// gc-reserved-space) and its size.
func storeFreeSpace(lay store.Layout, reserved uint64) (avail, total uint64, err error) {
	avail, total, err = fs.FreeSpace(lay.RealStoreDir)
	if err != nil {
		return 0, 0, fmt.Errorf("gc: %w", err)
	}
	return availWithoutReserve(lay, reserved, avail), total, nil
}

// availWithoutReserve is avail (the store file system's free bytes) less
// what db/reserved (Nix's gc-reserved-space, size bytes) lacks of its
// size now, when it is on the store's file system: a collection releases
// it before taking gc.lock and recreates it at its end, so the space it
// frees meanwhile is not free. Every free-space decision (gc --auto's
// first look, FreeTarget under gc.lock) sees the same number whether or
// not a collection is running.
func availWithoutReserve(lay store.Layout, size, avail uint64) uint64 {
	var db, sd unix.Stat_t
	if size == 0 || unix.Stat(lay.DBDir(), &db) != nil || unix.Stat(lay.RealStoreDir, &sd) != nil || db.Dev != sd.Dev {
		return avail
	}
	var rs unix.Stat_t
	if unix.Stat(filepath.Join(lay.DBDir(), "reserved"), &rs) == nil {
		held := uint64(rs.Blocks) * 512
		if held >= size {
			return avail
		}
		size -= held
	}
	return avail - min(avail, size)
}

// AutoLockName is the lock file that keeps two `gc --auto` runs apart, in
// storekeeper's own state directory (store.Layout.OwnStateDir).
const AutoLockName = "gc-auto.lock"

// ErrAutoRunning is wrapped by AcquireAutoLock's error when another run
// holds the lock.
var ErrAutoRunning = errors.New("gc: another automatic collection is running")

// AutoLock is a held gc-auto.lock.
type AutoLock struct{ f *os.File }

// Release releases the lock (closing its file). Idempotent; nil-safe.
func (l *AutoLock) Release() {
	if l != nil && l.f != nil {
		l.f.Close()
		l.f = nil
	}
}

// AcquireAutoLock takes <ownStateDir>/gc-auto.lock exclusively (flock)
// without waiting, creating the directory (mode 0755, its parent must
// exist) and the file (0600) as needed. The directory is opened without
// following a symbolic link (one there is refused: the error says to
// remove it) and the lock file is opened in that very directory; as root
// the directory is not created in a parent another user controls (owned
// by another user, or writable by others without the sticky bit: the
// error says to create it). A lock file that is a symbolic link or not a
// regular file is refused, never followed, and the file is never
// deleted. When another process holds it the error wraps ErrAutoRunning
// and a lock.HeldError naming the file. The kernel releases the lock when
// the process ends, however it ends, so a killed run never blocks the
// next one.
func AcquireAutoLock(ownStateDir string) (*AutoLock, error) {
	dfd, err := fs.OpenStateDir(ownStateDir)
	if err != nil {
		return nil, fmt.Errorf("gc: %w", err)
	}
	defer unix.Close(dfd)
	path := filepath.Join(ownStateDir, AutoLockName)
	// The directory opened above, not the path again: its parent's owner
	// could have put a symbolic link in its place meanwhile.
	f, err := lock.OpenLockFile(fmt.Sprintf("/proc/self/fd/%d/%s", dfd, AutoLockName), true)
	if err != nil {
		return nil, fmt.Errorf("gc: opening %s: %w", path, err)
	}
	if err := lock.Lock(context.Background(), f, lock.Exclusive, false); err != nil {
		f.Close()
		if errors.Is(err, lock.ErrWouldBlock) {
			return nil, fmt.Errorf("%w: %w", ErrAutoRunning, &lock.HeldError{Path: path, Err: err})
		}
		return nil, fmt.Errorf("gc: locking %s: %w", path, err)
	}
	return &AutoLock{f: f}, nil
}
