// Package transfer copies closures of store paths from one local store
// into another (`storekeeper copy`): nixos-install's and Guix's
// `system init` copy step, without a chroot. Trees are built in the
// target's trash (reflinked, hard-linked or copied, never following a
// symlink), put at their store names under the paths' locks, and
// registered by package register with the source's hashes given, so that
// register's hash check proves each copy before it becomes valid.
package transfer

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"sync"

	"golang.org/x/sys/unix"

	"storekeeper/internal/sys"
	"storekeeper/lock"
	"storekeeper/nix/storepath"
	"storekeeper/register"
	"storekeeper/report"
	"storekeeper/store"
	"storekeeper/store/db"
	"storekeeper/store/fs"
)

// Method is how regular files are copied.
type Method string

const (
	// MethodAuto reflinks where the file systems can clone, else
	// hard-links a canonical source file on the target's file system,
	// else copies.
	MethodAuto Method = "auto"
	// MethodReflink only clones (FICLONE); the run fails at once where
	// the target's file system cannot.
	MethodReflink Method = "reflink"
	// MethodHardlink only hard-links: both stores on one file system,
	// every source file canonical; a path with a file that is not fails.
	MethodHardlink Method = "hardlink"
	// MethodCopy copies the bytes (copy_file_range).
	MethodCopy Method = "copy"
)

// ParseMethod checks a --method value.
func ParseMethod(s string) (Method, error) {
	switch m := Method(s); m {
	case MethodAuto, MethodReflink, MethodHardlink, MethodCopy:
		return m, nil
	case "":
		return MethodAuto, nil
	}
	return "", fmt.Errorf("%w: method %q: expected auto, reflink, hardlink or copy", ErrBadOptions, s)
}

// Errors of Copy, each wrapped with the path or store it is about.
var (
	ErrBadOptions = errors.New("transfer: bad options")
	// ErrNotValid: a path asked for is not valid in the source.
	ErrNotValid = errors.New("not valid in the source store")
	// ErrStoreDirMismatch: the stores have different logical store
	// directories (a path cannot keep its name).
	ErrStoreDirMismatch = errors.New("transfer: the stores have different store directories")
	ErrReadOnly         = errors.New("transfer: the target store is opened read-only")
	// ErrNotOwner: the target store directory belongs to another user,
	// or it or the database directory is reached through a symlink or a
	// directory another user could change (CheckTarget).
	ErrNotOwner = errors.New("transfer: the target is not this user's to write into")
	// ErrMethodUnsupported: the method asked for cannot be used here.
	ErrMethodUnsupported = errors.New("the method cannot be used here")
	// ErrBadSourceTree: a source path holds a node a store path may not
	// (a device, FIFO or socket).
	ErrBadSourceTree = errors.New("not a regular file, directory or symlink")
	// ErrReferenceFailed: a path was not copied because a path it refers
	// to was not.
	ErrReferenceFailed = errors.New("a path it refers to was not copied")
	ErrInterrupted     = errors.New("interrupted")
	// ErrMissingInTarget: a path valid in the target's database is not in
	// its store directory.
	ErrMissingInTarget = errors.New("missing from the target's store directory")
	// ErrBadSourceRow: the source's row of a path cannot be used (its
	// hash column does not parse).
	ErrBadSourceRow = errors.New("the source's database row cannot be used")
)

// Options control Copy.
type Options struct {
	Method Method // "" is MethodAuto
	// DryRun: compute the closure and what is already in the target,
	// change nothing. The target's DB may then be nil (a store that does
	// not exist yet: nothing is valid there).
	DryRun   bool
	Jobs     int // paths copied at once (0: 2 x GOMAXPROCS)
	Progress report.Progress
	Printer  report.Printer
}

// PathResult is the outcome of one path of the closure.
type PathResult struct {
	Path    string
	Skipped bool // already valid in the target
	Copied  bool // copied and registered in the target
	Method  Method
	Bytes   uint64 // the path's NAR size (as the source records it)
	Err     error
}

// Result is what Copy did.
type Result struct {
	Paths           []PathResult // the closure, in dependency order (references first)
	Copied, Skipped int
	Bytes           uint64 // NAR bytes copied (dry run: to copy)
}

// batchSize bounds the paths locked, staged and registered together (each
// PathLock holds a descriptor); a var for tests.
var batchSize = 2048

// Copy copies the closure (under references) of paths, valid in from,
// into to, skipping what is valid there already.
//
// In detail: the closure and every row of it are read from from's
// database in one read transaction (db.Closure); a path asked for that is
// not valid there is an error wrapping ErrNotValid, and nothing is done.
// The paths valid in to are skipped (never touched); one valid there but
// missing from to's store directory fails with ErrMissingInTarget, and
// when every such path is missing the target looks unmounted and Copy
// refuses (store.ErrStoreLooksUnmounted), doing nothing. The others are
// handled in dependency order, in batches: register.Lock takes their temp
// roots and PathLocks in to; paths that became valid meanwhile are
// skipped; each remaining one is built by o.Jobs workers in this run's
// locked directory of to's trash (fs.Trash: on to's file system, deleted
// by the next run or gc after a kill), then put at its store name with
// RENAME_NOREPLACE (fs.PutNew), or exchanged with an invalid leftover
// there (fs.Exchange; the leftover deleted after); then register.Register
// registers the batch in one transaction with the source's hash, size,
// references, deriver, signatures, content address and registration time
// given (HashGiven; ultimate false, as Nix's copies), Partial: a path
// whose tree does not hash to the source's hash (a damaged source) is not
// registered, nor is anything referring to it, and the rest is. The tree
// of a path not registered is moved out of the store and deleted, unless
// register found it already valid (registered meanwhile by a process
// that takes no PathLock, as nix-store --register-validity): it is then
// skipped, its tree left in place.
//
// Files (o.Method): see Method. A tree never follows a symlink, in the
// source or the target (copyTree); a source node that is not a regular
// file, directory or symlink fails its path. Files are hard-linked only
// when canonical for the target (owner the target's canonical owner,
// 0444/0555, mtime 1, no extended attribute Nix removes), so the target's
// canonicalisation never changes the source's inode.
//
// Ownership: the target store directory must belong to this process's
// user (ErrNotOwner otherwise): nothing is created in a directory another
// user controls. The target is held with gc.lock shared for the run, as
// repair does, so that no collector deletes the trash's staged trees.
//
// Crashes: a kill -9 at any instant leaves each path of to valid with the
// right hash and references (register's one transaction), or not valid:
// staged trees are in the trash (deleted by the next run or gc), a tree
// put at its name but not registered is an invalid leftover, replaced by
// the next run. Nothing in from is ever written.
//
// Cancellation: no new path is started once ctx is done; what was put in
// place and not registered is moved out again; the error wraps ctx.Err()
// and the paths not done say ErrInterrupted.
//
// The error is non-nil when Copy could not run (bad paths, a store it
// cannot use, a lock, the target's database); each path's own failure is
// its PathResult's Err, and the others are copied.
func Copy(ctx context.Context, from, to *store.Store, paths []string, o Options) (*Result, error) {
	if o.Method == "" {
		o.Method = MethodAuto
	}
	if _, err := ParseMethod(string(o.Method)); err != nil {
		return nil, err
	}
	if o.Progress == nil {
		o.Progress = report.Discard
	}
	if o.Printer == nil {
		o.Printer = o.Progress
	}
	if o.Jobs <= 0 {
		o.Jobs = 2 * runtime.GOMAXPROCS(0)
	}
	if err := CheckTarget(from.Layout, to.Layout); err != nil {
		return nil, err
	}
	want, err := checkPaths(from, paths)
	if err != nil {
		return nil, err
	}
	rows, missing, err := from.DB.Closure(ctx, want)
	if err != nil {
		return nil, fmt.Errorf("transfer: reading the closure in the source store: %w", err)
	}
	if len(missing) > 0 {
		return nil, notValidError(from, missing[0])
	}
	order := dependencyOrder(rows)
	res := &Result{Paths: make([]PathResult, len(order))}
	var valid map[string]bool
	if to.DB != nil {
		valid, err = to.DB.ValidAmong(ctx, order)
		if err != nil {
			return nil, fmt.Errorf("transfer: reading the target store's database: %w", err)
		}
	}
	if err := checkPresent(to, order, valid, res); err != nil {
		return nil, err
	}
	var todo []int
	var total int64
	for i, p := range order {
		r := rows[p]
		res.Paths[i].Path, res.Paths[i].Bytes = p, r.NarSize
		if res.Paths[i].Err != nil {
			continue // valid there but missing (checkPresent)
		}
		if valid[p] {
			res.Paths[i].Skipped = true
			res.Skipped++
			continue
		}
		todo = append(todo, i)
		total += int64(r.NarSize)
	}
	if o.DryRun {
		for _, i := range todo {
			res.Bytes += res.Paths[i].Bytes
		}
		return res, nil
	}
	if to.ReadOnly || to.DB == nil {
		if len(todo) == 0 {
			return res, nil
		}
		return nil, ErrReadOnly
	}
	if len(todo) == 0 {
		// Nothing to copy: only what killed runs left in the trash.
		if _, err := os.Lstat(to.Layout.TrashDir()); err == nil {
			if err := emptyTrash(ctx, to, o.Progress); err != nil {
				return res, err
			}
		}
		return res, nil
	}
	r, err := newRun(ctx, from, to, o)
	if err != nil {
		return nil, err
	}
	defer r.close()
	o.Progress.Phase("copying", total, true)
	failed := map[string]error{}
	for start := 0; start < len(todo); start += batchSize {
		batch := todo[start:min(start+batchSize, len(todo))]
		if err := r.batch(ctx, rows, res, batch, failed); err != nil {
			why := err
			if ctx.Err() != nil {
				why = ErrInterrupted
			}
			for _, i := range todo[start:] {
				if pr := &res.Paths[i]; !pr.Copied && !pr.Skipped && pr.Err == nil {
					pr.Err = fmt.Errorf("'%s' was not copied: %w", pr.Path, why)
				}
			}
			count(res)
			return res, err
		}
	}
	count(res)
	if err := ctx.Err(); err != nil {
		return res, fmt.Errorf("transfer: %w", err)
	}
	return res, nil
}

// checkPresent checks that each path of order valid in to is in its
// store directory (lstat, never followed): one that is not is not
// "already there". When none of them is, the target's store directory
// looks unmounted (store.CheckPresence: it is refused, nothing is done,
// so that nothing is copied into the mount point); otherwise the
// missing ones fail with ErrMissingInTarget in res (not copied: the
// target's database says they are valid), and the rest goes on.
func checkPresent(to *store.Store, order []string, valid map[string]bool, res *Result) error {
	checked := 0
	var gone []int
	for i, p := range order {
		if !valid[p] {
			continue
		}
		checked++
		var st unix.Stat_t
		if err := unix.Lstat(to.Layout.RealPath(p), &st); errors.Is(err, unix.ENOENT) {
			gone = append(gone, i)
		}
	}
	if len(gone) == 0 {
		return nil
	}
	var names []string
	if len(gone) == checked {
		if ents, err := os.ReadDir(to.Layout.RealStoreDir); err == nil {
			names = make([]string, 0, len(ents))
			for _, e := range ents {
				names = append(names, e.Name())
			}
		}
	}
	if err := store.CheckPresence(to.Layout, store.Presence{Valid: checked, Missing: len(gone), Names: names}); err != nil {
		return fmt.Errorf("transfer: the target: %w (of the %d paths of the closure valid in its database; nothing was copied)", err, checked)
	}
	for _, i := range gone {
		p := order[i]
		res.Paths[i].Err = fmt.Errorf("'%s' is valid in the target's database but %w %s: it was not copied; check the target with storekeeper verify (--store as --to), repair it, then run copy again",
			p, ErrMissingInTarget, to.Layout.RealStoreDir)
	}
	return nil
}

// CheckTarget checks, before anything is opened or created there, that
// a store at to can take paths of from: the same logical store directory
// (ErrStoreDirMismatch), and a store directory of this process's user,
// or, when it does not exist yet, a directory to create it in of this
// process's user or root (ErrNotOwner: nothing is created in a directory
// another user controls); and neither the store directory nor the
// database directory is reached through a symlink or through a directory
// another user could change (see checkChain; ErrNotOwner too).
func CheckTarget(from, to store.Layout) error {
	if from.StoreDir != to.StoreDir {
		return fmt.Errorf("%w: the source's is %s, the target's %s (give the target's with --to 'local?root=DIR&store=%s')",
			ErrStoreDirMismatch, from.StoreDir, to.StoreDir, from.StoreDir)
	}
	for _, dir := range []string{to.RealStoreDir, to.DBDir()} {
		if d, src := filepath.Clean(dir), filepath.Clean(from.RealStoreDir); strings.HasPrefix(d, src+"/") {
			// Creating it would change a path of the source store.
			return fmt.Errorf("%w: the target's %s is inside the source's store directory %s: give a target outside it (nothing was copied)", ErrBadOptions, dir, src)
		}
		if err := checkChain(dir, dir == to.RealStoreDir); err != nil {
			return err
		}
	}
	// The store directory, when it exists, must be ours (its parents and
	// the directory a new one is created in were checked above).
	var st unix.Stat_t
	if err := unix.Stat(to.RealStoreDir, &st); err == nil && int(st.Uid) != os.Geteuid() {
		return notOwnerError(to.RealStoreDir, st.Uid)
	}
	return nil
}

// checkChain checks dir (absolute) and each of its existing parents, up
// to /: none may be a symlink (as Nix refuses for the store directory
// and its parents: a store created or written through one writes where
// the link points, chmod and chown included), and none may be a
// directory that a user other than root and this process's could
// change: owned by another user, or writable by others without the
// sticky bit (the store directory itself, 1775 root:nixbld in Nix's
// multi-user stores, is checked by its owner only, by the caller).
// Directories that do not exist yet are created later under a checked
// parent.
func checkChain(dir string, isStoreDir bool) error {
	euid := os.Geteuid()
	for d := filepath.Clean(dir); ; d = filepath.Dir(d) {
		var st unix.Stat_t
		err := unix.Lstat(d, &st)
		switch {
		case errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ENOTDIR):
			// Not there yet (or not a directory: reported by what opens it).
		case err != nil:
			return fmt.Errorf("transfer: checking the target's directory %s: %w", d, err)
		case st.Mode&unix.S_IFMT == unix.S_IFLNK:
			return fmt.Errorf("%w: %s is a symlink, and the target's store and database directories are reached through no symlink (as Nix requires; it would write where the link points): give the real directory with --to (nothing was copied)",
				ErrNotOwner, d)
		case st.Mode&unix.S_IFMT != unix.S_IFDIR:
		case isStoreDir && d == filepath.Clean(dir):
			// Its owner is checked by the caller; 1775 is Nix's.
		case int(st.Uid) != euid && st.Uid != 0:
			return fmt.Errorf("%w: the target's %s is under %s, which belongs to uid %d, and storekeeper runs as uid %d: that user could swap what storekeeper writes into; give the directory to uid %d or root, or copy as its owner (nothing was copied)",
				ErrNotOwner, dir, d, st.Uid, euid, euid)
		case st.Mode&0o022 != 0 && st.Mode&unix.S_ISVTX == 0:
			return fmt.Errorf("%w: the target's %s is under %s, which others can write into (mode %#o, no sticky bit): they could swap what storekeeper writes into; make it writable by its owner only (chmod go-w) (nothing was copied)",
				ErrNotOwner, dir, d, st.Mode&0o7777)
		}
		if d == "/" || d == "." {
			return nil
		}
	}
}

func notOwnerError(dir string, uid uint32) error {
	return fmt.Errorf("%w: %s belongs to uid %d, and storekeeper runs as uid %d: copy into it as its owner (nothing was copied)", ErrNotOwner, dir, uid, os.Geteuid())
}

// CheckPaths checks that paths are store paths valid in from, as Copy
// does first: a caller that prepares the target (creates a store) checks
// its input before. The error wraps ErrNotValid or
// storepath.ErrBadStorePath and names the path.
func CheckPaths(ctx context.Context, from *store.Store, paths []string) error {
	want, err := checkPaths(from, paths)
	if err != nil {
		return err
	}
	valid, err := from.DB.ValidAmong(ctx, want)
	if err != nil {
		return fmt.Errorf("transfer: reading the source store's database: %w", err)
	}
	for _, p := range want {
		if !valid[p] {
			return notValidError(from, p)
		}
	}
	return nil
}

// checkPaths parses paths as store paths of from, each once.
func checkPaths(from *store.Store, paths []string) ([]string, error) {
	seen := map[string]bool{}
	var want []string
	for _, p := range paths {
		if _, err := storepath.Parse(from.Layout.StoreDir, p); err != nil {
			return nil, fmt.Errorf("transfer: '%s': %w", report.Name(p), err)
		}
		if !seen[p] {
			seen[p] = true
			want = append(want, p)
		}
	}
	return want, nil
}

func notValidError(from *store.Store, p string) error {
	return fmt.Errorf("transfer: '%s' is %w %s (nothing was copied; check the path, or the source given with --from)", report.Name(p), ErrNotValid, from.Layout.StoreDir)
}

// count fills the totals of res.
func count(res *Result) {
	res.Copied, res.Skipped, res.Bytes = 0, 0, 0
	for _, p := range res.Paths {
		switch {
		case p.Skipped:
			res.Skipped++
		case p.Copied:
			res.Copied++
			res.Bytes += p.Bytes
		}
	}
}

// dependencyOrder sorts the closure references first (Kahn's algorithm,
// ties by path; self-references ignored). Paths in a cycle, which Nix
// never registers, come last in path order (register refuses them).
func dependencyOrder(rows map[string]*db.PathInfo) []string {
	paths := make([]string, 0, len(rows))
	for p := range rows {
		paths = append(paths, p)
	}
	sort.Strings(paths)
	pending := make(map[string]int, len(rows))
	referrers := map[string][]string{}
	for _, p := range paths {
		for _, ref := range rows[p].References {
			if ref == p || rows[ref] == nil {
				continue
			}
			pending[p]++
			referrers[ref] = append(referrers[ref], p)
		}
	}
	out := make([]string, 0, len(paths))
	var ready []string
	for _, p := range paths {
		if pending[p] == 0 {
			ready = append(ready, p)
		}
	}
	done := map[string]bool{}
	for len(ready) > 0 {
		next := ready
		ready = nil
		for _, p := range next {
			out = append(out, p)
			done[p] = true
			for _, q := range referrers[p] {
				if pending[q]--; pending[q] == 0 {
					ready = append(ready, q)
				}
			}
		}
		sort.Strings(ready)
	}
	for _, p := range paths {
		if !done[p] {
			out = append(out, p)
		}
	}
	return out
}

// run is one Copy's state in the target.
type run struct {
	from, to *store.Store
	o        Options
	gcLock   *lock.FileLock
	srcFd    int // the source's physical store directory
	storeFd  int // the target's
	trash    *fs.TrashRun
	cp       *copier
}

func newRun(ctx context.Context, from, to *store.Store, o Options) (*run, error) {
	r := &run{from: from, to: to, o: o, srcFd: -1, storeFd: -1}
	lay := to.Layout
	var err error
	r.srcFd, err = unix.Open(from.Layout.RealStoreDir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("transfer: opening the source store directory %s: %w", from.Layout.RealStoreDir, err)
	}
	r.storeFd, err = unix.Open(lay.RealStoreDir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		r.close()
		return nil, fmt.Errorf("transfer: opening the target store directory %s: %w", lay.RealStoreDir, err)
	}
	var st unix.Stat_t
	if err := unix.Fstat(r.storeFd, &st); err != nil {
		r.close()
		return nil, fmt.Errorf("transfer: %s: %w", lay.RealStoreDir, err)
	}
	if int(st.Uid) != os.Geteuid() {
		r.close()
		return nil, notOwnerError(lay.RealStoreDir, st.Uid)
	}
	var sst unix.Stat_t
	if err := unix.Fstat(r.srcFd, &sst); err == nil && sst.Dev == st.Dev && sst.Ino == st.Ino {
		// Two databases for one store directory: a path valid in the
		// source only would look like an invalid leftover in the target,
		// to be replaced.
		r.close()
		return nil, fmt.Errorf("%w: the source and the target have the same store directory %s but different databases (nothing was copied)", ErrBadOptions, lay.RealStoreDir)
	}
	uid, _, err := fs.StoreOwner(r.storeFd)
	if err != nil {
		r.close()
		return nil, fmt.Errorf("transfer: %s: %w", lay.RealStoreDir, err)
	}
	r.gcLock, err = lock.AcquireGCLock(ctx, lay.StateDir, lock.Shared, true, func() {
		o.Progress.Info(fmt.Sprintf("waiting for the garbage collector lock %s...", report.Name(lay.GCLockPath())))
	})
	if err != nil {
		r.close()
		return nil, fmt.Errorf("transfer: taking the GC lock %s: %w", lay.GCLockPath(), err)
	}
	trash := fs.Trash{Path: lay.TrashDir()}
	if err := emptyAbandoned(ctx, trash, o.Progress); err != nil {
		r.close()
		return nil, err
	}
	r.trash, err = trash.NewRun()
	if err != nil {
		r.close()
		return nil, fmt.Errorf("transfer: staging directory: %w", err)
	}
	var tst unix.Stat_t
	if err := unix.Fstat(r.trash.Fd, &tst); err != nil {
		r.close()
		return nil, fmt.Errorf("transfer: %s: %w", r.trash.Path, err)
	}
	r.cp = &copier{method: o.Method, uid: uid, dstDev: uint64(tst.Dev), pr: o.Progress}
	switch o.Method {
	case MethodReflink:
		if err := probeReflink(r.trash.Fd); err != nil {
			r.close()
			return nil, fmt.Errorf("transfer: --method reflink: the target %s cannot clone files: %w (nothing was copied)", lay.RealStoreDir, err)
		}
		var sst unix.Stat_t
		if err := unix.Fstat(r.srcFd, &sst); err == nil && sst.Dev != tst.Dev {
			r.close()
			return nil, fmt.Errorf("transfer: --method reflink: %w: the source %s and the target %s are on different file systems, and files are cloned only within one; use --method auto or copy (nothing was copied)",
				ErrMethodUnsupported, from.Layout.RealStoreDir, lay.RealStoreDir)
		}
	case MethodHardlink:
		var sst unix.Stat_t
		if err := unix.Fstat(r.srcFd, &sst); err == nil && sst.Dev != tst.Dev {
			r.close()
			return nil, fmt.Errorf("transfer: --method hardlink: %w: the source %s and the target %s are on different file systems; use --method auto or copy (nothing was copied)",
				ErrMethodUnsupported, from.Layout.RealStoreDir, lay.RealStoreDir)
		}
	}
	return r, nil
}

// emptyTrash takes gc.lock shared and empties what killed runs left in
// to's trash (emptyAbandoned).
func emptyTrash(ctx context.Context, to *store.Store, pr report.Progress) error {
	gcLock, err := lock.AcquireGCLock(ctx, to.Layout.StateDir, lock.Shared, true, func() {
		pr.Info(fmt.Sprintf("waiting for the garbage collector lock %s...", report.Name(to.Layout.GCLockPath())))
	})
	if err != nil {
		return fmt.Errorf("transfer: taking the GC lock %s: %w", to.Layout.GCLockPath(), err)
	}
	defer gcLock.Release()
	return emptyAbandoned(ctx, fs.Trash{Path: to.Layout.TrashDir()}, pr)
}

// emptyAbandoned deletes what killed or interrupted runs (of gc, repair or
// copy) left in the trash; the caller holds gc.lock shared (as repair
// does), so that no collector runs meanwhile.
func emptyAbandoned(ctx context.Context, trash fs.Trash, pr report.Progress) error {
	n, err := trash.EmptyAbandoned(ctx, func(n int) {
		pr.Info(fmt.Sprintf("emptying the trash left by an interrupted run (%d entries)", n))
	})
	if err != nil {
		return fmt.Errorf("transfer: %w", err)
	}
	if n == 0 {
		trash.RemoveIfEmpty()
	}
	return nil
}

// close deletes what is left in the run directory and releases the
// locks.
func (r *run) close() {
	if r.trash != nil {
		items, err := fs.Entries([]*fs.TrashRun{r.trash})
		if err == nil && len(items) > 0 {
			_, _, err = fs.DeleteEntries(context.Background(), items, 2*runtime.GOMAXPROCS(0), nil)
		}
		if err != nil {
			r.o.Progress.Warn(fmt.Sprintf("copy: deleting the staged trees in %s: %s (the next storekeeper gc, repair or copy deletes them)", report.Name(r.trash.Path), report.Text(err.Error())), "")
		}
		r.trash.Close(err == nil)
		r.trash = nil
	}
	for _, fd := range []*int{&r.srcFd, &r.storeFd} {
		if *fd >= 0 {
			unix.Close(*fd)
			*fd = -1
		}
	}
	if r.gcLock != nil {
		r.gcLock.Release()
		r.gcLock = nil
	}
}

// placed is a path of a batch put at its store name, to register.
type placed struct {
	idx  int
	info *db.PathInfo
}

// batch copies and registers the paths res.Paths[batch] (see Copy);
// failed holds the paths that failed so far, with why. The error is
// non-nil when the batch could not be done at all (its locks, the
// database); per-path failures are in res.
func (r *run) batch(ctx context.Context, rows map[string]*db.PathInfo, res *Result, batch []int, failed map[string]error) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("transfer: %w", err)
	}
	paths := make([]string, len(batch))
	for k, i := range batch {
		paths[k] = res.Paths[i].Path
	}
	locks, err := register.LockWait(ctx, r.to, paths, func(p string) {
		r.o.Progress.Info(fmt.Sprintf("waiting for the lock on %s...", report.Name(p)))
	})
	if err != nil {
		return fmt.Errorf("transfer: locking the paths in the target: %w", err)
	}
	defer locks.Close()
	valid, err := r.to.DB.ValidAmong(ctx, paths)
	if err != nil {
		return fmt.Errorf("transfer: reading the target store's database: %w", err)
	}
	var work []int
	for _, i := range batch {
		pr := &res.Paths[i]
		info := rows[pr.Path]
		switch {
		case valid[pr.Path]:
			pr.Skipped = true // registered by someone else meanwhile
			continue
		case info.HashErr != nil:
			pr.Err = fmt.Errorf("'%s' was not copied: %w: %w", pr.Path, ErrBadSourceRow, info.HashErr)
			failed[pr.Path] = pr.Err
			continue
		}
		if ref := failedRef(info, failed); ref != "" {
			pr.Err = fmt.Errorf("'%s' was not copied: %w ('%s')", pr.Path, ErrReferenceFailed, ref)
			failed[pr.Path] = pr.Err
			continue
		}
		work = append(work, i)
	}

	// Build and place the trees, o.Jobs at a time.
	var mu sync.Mutex
	var done []placed
	ch := make(chan int)
	var wg sync.WaitGroup
	for w := 0; w < min(r.o.Jobs, len(work)); w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range ch {
				pr := &res.Paths[i]
				info := rows[pr.Path]
				err := r.place(ctx, pr, info)
				mu.Lock()
				if err != nil {
					pr.Err = err
					failed[pr.Path] = err
				} else {
					done = append(done, placed{i, info})
				}
				mu.Unlock()
			}
		}()
	}
	for _, i := range work {
		if ctx.Err() != nil {
			break
		}
		ch <- i
	}
	close(ch)
	wg.Wait()
	if len(done) == 0 {
		return ctx.Err()
	}
	sort.Slice(done, func(a, b int) bool { return done[a].idx < done[b].idx })
	if testHookPlaced != nil {
		testHookPlaced(r.to, done[0].info.Path)
	}

	// Register them, each checked against the source's hash.
	inputs := make([]register.Input, len(done))
	for k, d := range done {
		info := d.info
		inputs[k] = register.Input{HashGiven: true, Registration: db.Registration{
			Path: info.Path, NarHash: info.NarHash, NarSize: info.NarSize, Deriver: info.Deriver,
			References: info.References, RegistrationTime: info.RegistrationTime,
			Sigs: info.Sigs, CA: info.CA,
		}}
	}
	rr, rerr := register.Register(ctx, r.to, inputs, register.Options{
		BuildUID: fs.NoBuildUser, Partial: true, Locked: locks, Jobs: r.o.Jobs,
		Progress: quiet{r.o.Progress}, Printer: r.o.Printer,
	})
	registered := map[string]bool{}
	why := map[string]error{}
	if rr != nil {
		for k, p := range rr.Paths {
			if pr := &res.Paths[done[k].idx]; pr.Bytes == 0 {
				pr.Bytes = p.NarSize // an old source row without narSize
			}
			if p.Registered {
				registered[p.Path] = true
			} else if p.Err != nil {
				why[p.Path] = p.Err
			}
		}
	}
	for _, d := range done {
		pr := &res.Paths[d.idx]
		if registered[pr.Path] {
			pr.Copied = true
			continue
		}
		err := why[pr.Path]
		if errors.Is(err, db.ErrAlreadyValid) {
			// Registered meanwhile by a process that takes no PathLock
			// (nix-store --register-validity, --load-db): valid, so its
			// tree stays where it is.
			pr.Skipped, pr.Method = true, ""
			continue
		}
		switch {
		case err == nil && rerr != nil:
			err = rerr
		case err == nil:
			err = errors.New("register did not register it")
		}
		if ctx.Err() != nil && !errors.Is(err, ErrInterrupted) {
			err = fmt.Errorf("%w: %w", ErrInterrupted, err)
		}
		pr.Err = fmt.Errorf("'%s' was not copied: %w", pr.Path, err)
		failed[pr.Path] = pr.Err
		// Not valid: its tree leaves the store (under its lock).
		r.remove(pr.Path)
	}
	if rerr != nil && ctx.Err() == nil {
		// In Partial mode register fails only when the batch could not
		// be registered at all (the database, the locks): the run stops.
		return fmt.Errorf("transfer: registering in the target: %w", rerr)
	}
	return ctx.Err()
}

// failedRef returns a reference of info that failed, or "".
func failedRef(info *db.PathInfo, failed map[string]error) string {
	for _, ref := range info.References {
		if ref != info.Path && failed[ref] != nil {
			return ref
		}
	}
	return ""
}

// place builds pr's tree in the run directory and puts it at its store
// name: RENAME_NOREPLACE, or exchanged with an invalid leftover there
// (the caller holds the path's lock and checked that it is not valid),
// which is then deleted.
func (r *run) place(ctx context.Context, pr *PathResult, info *db.PathInfo) error {
	if ctx.Err() != nil {
		return fmt.Errorf("'%s' was not copied: %w", pr.Path, ErrInterrupted)
	}
	base := pr.Path[len(r.to.Layout.StoreDir)+1:]
	staged := r.trash.Path + "/" + base
	st, err := r.cp.copyTree(ctx, r.srcFd, base, r.from.Layout.RealPath(pr.Path), r.trash.Fd, base)
	if err == nil {
		movable(r.trash.Fd, base)
		err = fs.PutNew(r.trash.Fd, base, r.storeFd, base)
		if errors.Is(err, unix.EEXIST) {
			// An invalid leftover (a killed run's, a failed build's).
			movable(r.storeFd, base)
			err = fs.Exchange(r.trash.Fd, base, r.storeFd, base)
			if err == nil {
				if _, rerr := fs.RemoveTree(r.trash.Fd, base, staged); rerr != nil && !errors.Is(rerr, unix.ENOENT) {
					r.o.Progress.Verbose(fmt.Sprintf("deleting the leftover %s: %s (deleted at the end of the run)", report.Name(staged), report.Text(rerr.Error())))
				}
			}
		}
	}
	if err != nil {
		if _, rerr := fs.RemoveTree(r.trash.Fd, base, staged); rerr != nil && !errors.Is(rerr, unix.ENOENT) {
			err = fmt.Errorf("%w (and removing the staged copy: %w)", err, rerr)
		}
		if ctx.Err() != nil {
			err = fmt.Errorf("%w: %w", ErrInterrupted, err)
		}
		return fmt.Errorf("'%s' was not copied: %w", pr.Path, err)
	}
	pr.Method = st.method()
	if os.Geteuid() != 0 {
		// movable's mode back: 0555, mtime 1.
		if fd, err := sys.OpenAt(r.storeFd, base, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC); err == nil {
			unix.Fchmod(fd, fs.Nix.Dir)
			futimens(fd)
			unix.Close(fd)
		}
	}
	return nil
}

// movable makes the directory name of dirfd (never followed) writable by
// its owner, when this process is not root and owns it: the kernel moves
// a directory to another parent only for a process that may write into
// it (its ".." entry changes), which root always may and the owner of a
// 0555 directory may not. place gives a placed tree its mode back;
// anything else moved is deleted.
func movable(dirfd int, name string) {
	if os.Geteuid() == 0 {
		return
	}
	fd, err := sys.OpenAt(dirfd, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC)
	if err != nil {
		return // not a directory (or gone): nothing to do
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if unix.Fstat(fd, &st) == nil && int(st.Uid) == os.Geteuid() && st.Mode&0o200 == 0 {
		unix.Fchmod(fd, st.Mode&0o7777|0o200)
	}
}

// remove moves the tree at path's store name (put there by place, not
// registered) into the run directory, to be deleted; the caller holds
// its lock.
func (r *run) remove(path string) {
	base := path[len(r.to.Layout.StoreDir)+1:]
	var st unix.Stat_t
	if err := sys.LstatAt(r.storeFd, base, &st); err != nil {
		return
	}
	movable(r.storeFd, base)
	name, err := fs.MoveInto(r.storeFd, base, r.trash.Fd)
	if err != nil {
		r.o.Progress.Warn(fmt.Sprintf("copy: moving the unregistered copy of %s out of the store: %s (it is not valid; gc deletes it)", report.Name(path), report.Text(err.Error())), path)
		return
	}
	fs.RemoveTree(r.trash.Fd, name, r.trash.Path+"/"+name)
}

// testHookPlaced, set by tests, runs after a batch's trees are placed at
// their store names, before they are registered (with one of them).
var testHookPlaced func(to *store.Store, path string)

// quiet passes register's messages on, not its phases and counts: the
// run's bar is the copy's.
type quiet struct{ report.Progress }

func (quiet) Phase(string, int64, bool) {}
func (quiet) Add(int64)                 {}
