package fs

import (
	"errors"
	"fmt"

	"golang.org/x/sys/unix"

	"storekeeper/internal/sys"
)

// ExchangeTempPrefix starts the temporary name Exchange's fallback gives
// the new tree in the destination directory: like SwapTempPrefix, no
// store path name starts with '.', and RecoverExchange finds it from the
// destination's name.
const ExchangeTempPrefix = ".exchange-"

// ExchangeTemp is the temporary name of the new tree for to in the
// destination directory (Exchange's fallback).
func ExchangeTemp(to string) string { return ExchangeTempPrefix + to }

// testForceExchangeFallback, set by tests, makes Exchange and PutNew take
// their fallbacks as if the file system lacked renameat2's flags.
var testForceExchangeFallback bool

// ForceExchangeFallbackForTest makes Exchange and PutNew take their
// fallbacks (as on a file system without renameat2's flags) until the
// returned function is called. For tests of other packages only; not
// safe to call while an Exchange runs.
func ForceExchangeFallbackForTest() (restore func()) {
	testForceExchangeFallback = true
	return func() { testForceExchangeFallback = false }
}

// testHookExchangeStep, set by tests, runs before each step of
// Exchange's fallback (0: before the new tree is moved in, 1: after it is
// moved in, before SwapByRenames (whose own hook runs within), 2: after
// the swap, before the old tree is moved out).
var testHookExchangeStep func(step int)

// unsupported reports whether a renameat2 error means the file system (or
// kernel) lacks the flag.
func unsupported(err error) bool {
	return errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOSYS) || errors.Is(err, unix.EOPNOTSUPP)
}

// Exchange exchanges the entry from of the open directory fromDir (the
// new tree, e.g. in a trash run directory) with the entry to of toDir
// (the old tree, e.g. a store path), both on one file system, so that to
// holds the new tree and from the old one; neither is followed if it is a
// symlink. It is repair's swap across two directories: Swap is the same
// within one.
//
// It uses renameat2(RENAME_EXCHANGE): one atomic step, so at every
// instant, whatever kill -9 or power cut comes, to is the old or the new
// tree, complete. Where the file system lacks it (EINVAL, ENOSYS,
// EOPNOTSUPP: NFS, older ZFS, FUSE) it falls back to:
//
//  1. from -> ExchangeTemp(to) in toDir (the new tree beside the old);
//  2. Swap(toDir, to, ExchangeTemp(to)), by SwapByRenames (see there);
//  3. ExchangeTemp(to) -> from (the old tree out).
//
// A kill -9 in the fallback leaves, in toDir, to whole (old or new), or,
// inside step 2's window of a directory swap, to missing with the old tree
// whole at SwapTemp(to); RecoverExchange, which Exchange runs first and a
// later run calls for every path it repairs, puts that right and moves
// any leftover ExchangeTemp(to) (the unused new tree, or the old tree)
// into the directory it is given. A Nix collector deletes every name in
// the store directory that is not a store path: callers hold gc.lock
// shared while a leftover can exist, and the window in which to is
// missing exists only on file systems without RENAME_EXCHANGE.
//
// Concurrency: the caller keeps other writers away from to (repair holds
// its PathLock) and owns from. The mtimes of both directories change.
func Exchange(fromDir int, from string, toDir int, to string) error {
	if err := RecoverExchange(toDir, to, fromDir); err != nil {
		return err
	}
	if !testForceExchangeFallback {
		err := unix.Renameat2(fromDir, from, toDir, to, unix.RENAME_EXCHANGE)
		if err == nil {
			return nil
		}
		if !unsupported(err) {
			return fmt.Errorf("exchanging %s with the new copy: %w", to, err)
		}
	}
	tmp := ExchangeTemp(to)
	step := func(n int) {
		if testHookExchangeStep != nil {
			testHookExchangeStep(n)
		}
	}
	step(0)
	if err := renameNoReplace(fromDir, from, toDir, tmp); err != nil {
		return fmt.Errorf("exchanging %s with the new copy: moving the new copy to %s: %w", to, tmp, err)
	}
	step(1)
	if err := SwapByRenames(toDir, to, tmp); err != nil {
		// RecoverSwap (in SwapByRenames) left to whole; the new tree
		// goes back to from if it is still at tmp.
		if rerr := RecoverExchange(toDir, to, fromDir); rerr != nil {
			return fmt.Errorf("exchanging %s with the new copy: %w (and cleaning up: %w)", to, err, rerr)
		}
		return fmt.Errorf("exchanging %s with the new copy: %w", to, err)
	}
	step(2)
	if err := renameNoReplace(toDir, tmp, fromDir, from); err != nil {
		return fmt.Errorf("exchanging %s with the new copy: moving the old copy %s out: %w", to, tmp, err)
	}
	return nil
}

// RecoverExchange puts right what an interrupted Exchange fallback left
// for to in toDir (see Exchange): it finishes or undoes the swap
// (RecoverSwap of to and ExchangeTemp(to)), so that to is whole, and then
// moves ExchangeTemp(to), if there, into the directory outDir (with
// MoveInto's naming) for the caller to delete: the old tree, or a new one
// that was never swapped in. Without leftovers it does two lstats and
// changes nothing.
func RecoverExchange(toDir int, to string, outDir int) error {
	tmp := ExchangeTemp(to)
	if err := RecoverSwap(toDir, to, tmp); err != nil {
		return err
	}
	var st unix.Stat_t
	if err := sys.LstatAt(toDir, tmp, &st); err != nil {
		if errors.Is(err, unix.ENOENT) {
			return nil
		}
		return fmt.Errorf("recovering the exchange of %s: %w", to, err)
	}
	if _, err := MoveInto(toDir, tmp, outDir); err != nil && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("recovering the exchange of %s: moving %s out: %w", to, tmp, err)
	}
	return nil
}

// PutNew renames from of fromDir to to of toDir only if to does not exist
// (renameat2 RENAME_NOREPLACE, atomic): a missing store path put back. It
// fails with an error satisfying errors.Is(err, unix.EEXIST) when to
// exists (the caller exchanges instead). Where the file system lacks the
// flag it checks that to is absent and renames; the caller's lock (the
// path's PathLock) keeps others from creating to meanwhile.
func PutNew(fromDir int, from string, toDir int, to string) error {
	if !testForceExchangeFallback {
		err := unix.Renameat2(fromDir, from, toDir, to, unix.RENAME_NOREPLACE)
		if err == nil || !unsupported(err) {
			return err
		}
	}
	return renameNoReplace(fromDir, from, toDir, to)
}

// renameNoReplace renames without RENAME_NOREPLACE: EEXIST when to exists
// (a directory would otherwise replace an empty one, a file a file).
func renameNoReplace(fromDir int, from string, toDir int, to string) error {
	var st unix.Stat_t
	err := sys.LstatAt(toDir, to, &st)
	if err == nil {
		return unix.EEXIST
	}
	if !errors.Is(err, unix.ENOENT) {
		return err
	}
	return unix.Renameat(fromDir, from, toDir, to)
}
