package fs

import (
	"errors"
	"fmt"

	"golang.org/x/sys/unix"

	"storekeeper/internal/sys"
)

// SwapTempPrefix starts the temporary name SwapByRenames uses for a: no
// store path name starts with '.', and RecoverSwap finds it again from a.
const SwapTempPrefix = ".swap-"

// SwapTemp is the temporary name SwapByRenames gives a's old tree.
func SwapTemp(a string) string { return SwapTempPrefix + a }

// testHookSwapStep, set by tests, runs before each step of SwapByRenames
// (0: before anything, 1: after a moved aside, 2: after b moved to a).
var testHookSwapStep func(step int)

// Swap exchanges the entries a and b of the open directory dirfd
// (directory trees or single files, of any sizes) so that a holds what b
// held and b what a held: repair's last step, which puts a verified copy
// (b) at a store path (a) and leaves the damaged copy at b, for the
// trash. Neither is followed if it is a symlink.
//
// It uses renameat2(RENAME_EXCHANGE): one atomic step, so at every
// instant, whatever kill -9 or power cut comes, a is either the old or
// the new tree, complete. On a file system without it (EINVAL: NFS, older
// ZFS and FUSE file systems) it falls back to SwapByRenames; see there
// what a crash can leave then.
//
// Concurrency: the caller keeps other writers away from a and b (repair
// holds a's PathLock and owns b). The mtime of dirfd changes; restoring
// it is the caller's (a Dir).
func Swap(dirfd int, a, b string) error {
	if err := RecoverSwap(dirfd, a, b); err != nil {
		return err
	}
	err := unix.Renameat2(dirfd, a, dirfd, b, unix.RENAME_EXCHANGE)
	if err == nil {
		return nil
	}
	if errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOSYS) || errors.Is(err, unix.EOPNOTSUPP) {
		return SwapByRenames(dirfd, a, b)
	}
	return fmt.Errorf("exchanging %s and %s: %w", a, b, err)
}

// SwapByRenames is Swap without RENAME_EXCHANGE, in three renames within
// dirfd through the temporary name SwapTemp(a):
//
//	a -> SwapTemp(a);  b -> a;  SwapTemp(a) -> b
//
// A directory cannot be renamed over a non-empty one, so between the
// first two renames a is missing; each rename is atomic, so a kill -9 at
// any instant leaves one of these states, from which RecoverSwap (which
// Swap and SwapByRenames run first) returns to a complete a:
//
//   - nothing done: a old, b new;
//   - after step 1: a missing, SwapTemp(a) old, b new: RecoverSwap puts
//     the old tree back at a (the swap did not happen; b is still the
//     new tree, so the caller can swap again);
//   - after step 2: a new, SwapTemp(a) old, b missing: RecoverSwap
//     finishes the swap (old to b);
//   - done: a new, b old.
//
// So a is the old or the new tree whole at every instant, except between
// steps 1 and 2, when the old tree is whole at SwapTemp(a) and RecoverSwap
// puts it back. A Nix collector running in that window would delete
// SwapTemp(a) (it deletes every name in the store directory that is not a
// store path): callers in a store hold gc.lock shared, or their path's
// PathLock, as repair does.
//
// When neither a nor b is a directory, a is never missing: a is
// hard-linked to SwapTemp(a) instead of moved, and b renamed over a
// atomically.
func SwapByRenames(dirfd int, a, b string) error {
	if err := RecoverSwap(dirfd, a, b); err != nil {
		return err
	}
	var st unix.Stat_t
	if err := sys.LstatAt(dirfd, a, &st); err != nil {
		return fmt.Errorf("swapping %s and %s: %w", a, b, err)
	}
	var bst unix.Stat_t
	if err := sys.LstatAt(dirfd, b, &bst); err != nil {
		return fmt.Errorf("swapping %s and %s: %w", a, b, err)
	}
	tmp := SwapTemp(a)
	step := func(n int) {
		if testHookSwapStep != nil {
			testHookSwapStep(n)
		}
	}
	step(0)
	if st.Mode&unix.S_IFMT == unix.S_IFDIR || bst.Mode&unix.S_IFMT == unix.S_IFDIR {
		if err := unix.Renameat(dirfd, a, dirfd, tmp); err != nil {
			return fmt.Errorf("swapping %s and %s: moving %s aside: %w", a, b, a, err)
		}
	} else if err := unix.Linkat(dirfd, a, dirfd, tmp, 0); err != nil {
		return fmt.Errorf("swapping %s and %s: linking %s to %s: %w", a, b, a, tmp, err)
	}
	step(1)
	if err := unix.Renameat(dirfd, b, dirfd, a); err != nil {
		if rerr := RecoverSwap(dirfd, a, b); rerr != nil {
			return fmt.Errorf("swapping %s and %s: moving %s to %s: %w (and putting %s back: %w)", a, b, b, a, err, a, rerr)
		}
		return fmt.Errorf("swapping %s and %s: moving %s to %s: %w", a, b, b, a, err)
	}
	step(2)
	if err := unix.Renameat(dirfd, tmp, dirfd, b); err != nil {
		return fmt.Errorf("swapping %s and %s: moving the old %s (now %s) to %s: %w", a, b, a, tmp, b, err)
	}
	return nil
}

// RecoverSwap finishes or undoes a SwapByRenames of a and b in dirfd that
// was interrupted (see there): when SwapTemp(a) exists, it goes back to a
// if a is missing, or on to b if b is missing; when a non-directory a and
// its SwapTemp(a) are one inode (the swap stopped after the link), the
// link is removed. With no SwapTemp(a) it does nothing. Any other state
// (a, b and SwapTemp(a) all present and distinct) is not one a swap
// leaves, and is reported without a change.
func RecoverSwap(dirfd int, a, b string) error {
	tmp := SwapTemp(a)
	var ts, as unix.Stat_t
	if err := sys.LstatAt(dirfd, tmp, &ts); err != nil {
		if errors.Is(err, unix.ENOENT) {
			return nil
		}
		return fmt.Errorf("recovering the swap of %s: %w", a, err)
	}
	aErr := sys.LstatAt(dirfd, a, &as)
	switch {
	case errors.Is(aErr, unix.ENOENT):
		if err := unix.Renameat(dirfd, tmp, dirfd, a); err != nil {
			return fmt.Errorf("recovering the swap of %s: moving %s back: %w", a, tmp, err)
		}
		return nil
	case aErr != nil:
		return fmt.Errorf("recovering the swap of %s: %w", a, aErr)
	case as.Ino == ts.Ino && as.Dev == ts.Dev:
		if err := unix.Unlinkat(dirfd, tmp, 0); err != nil && !errors.Is(err, unix.ENOENT) {
			return fmt.Errorf("recovering the swap of %s: removing %s: %w", a, tmp, err)
		}
		return nil
	}
	if err := sys.LstatAt(dirfd, b, new(unix.Stat_t)); errors.Is(err, unix.ENOENT) {
		if err := unix.Renameat(dirfd, tmp, dirfd, b); err != nil {
			return fmt.Errorf("recovering the swap of %s: moving %s to %s: %w", a, tmp, b, err)
		}
		return nil
	}
	return fmt.Errorf("recovering the swap of %s: %s, %s and %s all exist, which no interrupted swap leaves: look at them and remove the one that is not wanted", a, a, b, tmp)
}
