package lock

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"storekeeper/internal/procfs"
	"storekeeper/internal/sys"
	"storekeeper/nix/storepath"

	"golang.org/x/sys/unix"
)

// ErrPruneAccess is wrapped by Prune's refusal to run without the right
// to delete in either directory it prunes (it also wraps
// fs.ErrPermission).
var ErrPruneAccess = fmt.Errorf("no right to delete lock files: %w", fs.ErrPermission)

// PruneOptions tune Prune.
type PruneOptions struct {
	// DryRun: test each file's lock (taken and released at once) and
	// report what would be removed; nothing is unlinked or written.
	DryRun  bool
	ProcDir string // "" means /proc: /proc/locks (holders) and the pid check
	// ValidPath reports whether the store path with base name name is
	// valid (registered in the store's database). Required when the
	// store directory exists: a store path may itself be named NAME.lock
	// and hold nothing or just "d" (nix-store --add of such a file), and
	// only the database tells it from a lock file.
	ValidPath func(name string) (bool, error)
}

// What Prune did with a file (PruneFile.Action).
const (
	PruneRemoved     = "removed"      // stale, unlinked and marked "d"
	PruneWouldRemove = "would-remove" // stale (DryRun)
	PruneKept        = "kept"         // not stale, or not a lock file: left as it is
	PruneFailed      = "failed"       // stale (or not checkable), but could not be removed
)

// Why Prune kept a file, or failed to remove it (PruneFile.Reason).
const (
	PruneHeld       = "held"          // a process holds a lock on it
	PrunePIDRunning = "pid-running"   // temp-roots: nobody holds it, but a process with its pid runs
	PruneSymlink    = "symlink"       // a symbolic link: neither followed nor removed
	PruneNotRegular = "not-regular"   // a FIFO, directory, socket or device
	PruneLinks      = "links"         // a regular file with other hard links: not a lock file
	PruneNotLock    = "not-lock-file" // path lock: holds data other than Nix's stale mark "d"
	PruneBadName    = "name"          // temp-roots: the name is not a pid; store: not <store path>.lock
	PruneStorePath  = "store-path"    // path lock: a valid store path named NAME.lock, or one being added (its own NAME.lock exists)
	PruneReplaced   = "replaced"      // the name was removed or replaced while it was checked
	PrunePermission = "permission"    // we may not delete it (failed)
	PruneError      = "error"         // another error (failed)
)

// PruneFile is one file Prune looked at, and what it did.
type PruneFile struct {
	Path   string `json:"path"`
	Kind   string `json:"kind"`   // "temp-roots" or "path-lock"
	Action string `json:"action"` // removed, would-remove, kept, failed
	Reason string `json:"reason,omitempty"`
	// Detail says why in words (an error's message, the owner of a file
	// we may not delete, ...).
	Detail string `json:"detail,omitempty"`
	// Holders are the processes /proc/locks showed holding a held file
	// (empty when it could not tell: the lock was taken after it was
	// read, or by a process in another PID namespace).
	Holders []LockUser `json:"holders,omitempty"`
}

// PruneReport is what Prune did.
type PruneReport struct {
	DryRun       bool   `json:"dry_run"`
	TempRootsDir string `json:"temp_roots_dir"`
	StoreDir     string `json:"store_dir"`
	// Files lists every temp-roots file and every <path>.lock file in the
	// store directory it looked at, sorted by path within each kind
	// (temp-roots first), but for store paths named NAME.lock that are a
	// directory or a file holding more than "d" (a fetched Cargo.lock),
	// which are left out.
	Files []PruneFile `json:"files"`
	// Removed counts the files removed (DryRun: that would be), also
	// split by kind.
	Removed          int `json:"removed"`
	TempRootsRemoved int `json:"temp_roots_removed"`
	PathLocksRemoved int `json:"path_locks_removed"`
	// Kept counts the files left as they are, Held those of them a
	// process held.
	Kept int `json:"kept"`
	Held int `json:"held"`
	// Failed counts the files that were stale, or could not be checked,
	// and were not removed (permission, errors).
	Failed int `json:"failed"`
}

// Kinds of files Prune handles (PruneFile.Kind).
const (
	KindTempRoots = "temp-roots"
	KindPathLock  = "path-lock"
)

// testHookPruneLocked, when set, runs after Prune took a file's lock and
// before it checks the name is still that file (tests replace the file
// there).
var testHookPruneLocked func(path string)

// Prune removes the stale temp-roots files (<stateDir>/temproots/PID) and
// the stale path-lock files (<store path>.lock in storeDir, the physical
// store directory) of a store, following Nix's protocols, and never a
// file a process holds. It touches nothing else (not gc.lock, db/big-lock
// or the gc socket).
//
// For each candidate it opens the name relative to its directory with
// O_NOFOLLOW|O_NONBLOCK (a symbolic link is reported and never followed,
// a FIFO, directory, socket or device reported and never opened for I/O;
// neither is removed) and tries a non-blocking exclusive flock(2), as
// Nix's collector does with temp-roots files (gc.cc, findTempRoots). If a
// process holds the file, shared or exclusive, the try fails and the
// file is kept. If it succeeds, nobody held it: then, still holding the
// lock, Prune checks the file (below) and that the name is still the
// file it locked (same device and inode, a single link), unlinks the name and writes "d" into
// the file (only if its link count fell to 0), and closes it, which
// releases the lock. The name is checked last, just before the unlink.
// A path-lock file must be empty or hold just "d" (Nix writes nothing
// else into one), and must not be a store path itself: a store path may
// be named NAME.lock and hold nothing or "d" (nix-store --add of such a
// file), so a file whose own lock NAME.lock exists (a path being added or
// built) or that o.ValidPath says is valid is kept (reason "store-path");
// a temp-roots file's name must be a
// pid, and it is kept while a process with that pid runs (/proc/PID
// exists: the owner's pid was reused, and such a process could be about
// to replace the file, see below).
//
// Concurrency: a Nix process (or storekeeper) that creates or locks one
// of these files while Prune runs either holds its lock, and then Prune
// saw it held and kept it, or locks after Prune released its lock, and
// then finds its file deleted: Nix's PathLocks and addTempRoot fstat the
// file once locked and start over with a fresh file when its size is not
// 0, which the "d" guarantees for a process that opened the file before
// Prune unlinked it; a process that opens the name after the unlink
// creates a fresh file. Prune holds the lock from its check to its
// unlink, so no locker can take the file in between; only a process that
// removes and recreates the name without locking it could put a new file
// there between the final check and the unlink (no Nix locker does: a
// temp-roots file is replaced only by the process whose pid is its name,
// which is checked not to run (left: a process given that pid again, in
// the microseconds between the check and the unlink, that unlinks the
// stale file and creates its own then; Nix's collector, which checks no
// pid, has that window too), and a path-lock file only by a holder of
// its lock or by Nix's own collector, which already deletes lock files
// by name without any check). Several Prune runs, and Nix's collector
// removing stale temp-roots files, exclude each other through the same
// lock: whoever takes it second finds the file unlinked and leaves it.
//
// The two directories are opened without following a symbolic link in a
// directory another user controls (see openTrustedDir: such a user could
// otherwise point them at a directory of root's), and listed through the
// descriptors opened.
//
// Permission: a file is deleted only where lock files may be deleted
// (see PathLocks.Unlock): in a directory that is ours (owned by the
// effective uid, writable by nobody else), or, for a file we own, in a
// sticky directory we own (Nix's /nix/store, 1775 root:nixbld, as root).
// A stale file elsewhere is reported as failed (reason "permission") and
// left as it is; so is one we may not open. If neither directory allows
// any deletion, Prune refuses to run (an error wrapping ErrPruneAccess
// and fs.ErrPermission) and changes nothing.
//
// DryRun takes and releases each lock, as the collector's test does, and
// unlinks and writes nothing.
//
// Crashes: the kernel releases Prune's lock when it dies. It unlinks
// before it marks, as Nix's collector and PathLocks do, so a kill never
// leaves a linked file marked "d" (on which Nix's lockers would spin);
// killed between the unlink and the mark, a process that opened the file
// before the unlink and locks it after could hold an unlinked file, the
// window Nix's own deletion has. Prune takes no context: each file costs
// a few system calls and nothing is waited for.
//
// The report is returned with a nil error when both directories could be
// listed (or do not exist); per-file failures are only counted in it.
func Prune(stateDir, storeDir string, o PruneOptions) (*PruneReport, error) {
	if o.ProcDir == "" {
		o.ProcDir = "/proc"
	}
	p := &pruner{o: o, devs: sbDevs{}, pc: &procCache{dir: o.ProcDir, start: map[int]time.Time{}, cmd: map[int]string{}}}
	r := &PruneReport{DryRun: o.DryRun, TempRootsDir: TempRootsDir(stateDir), StoreDir: storeDir, Files: []PruneFile{}}
	p.r = r

	if o.ValidPath == nil {
		if _, err := os.Lstat(storeDir); err == nil {
			return nil, errors.New("lock.Prune: PruneOptions.ValidPath is nil, so a path lock cannot be told from a store path named NAME.lock")
		}
	}
	tr, err := openPruneDir(r.TempRootsDir)
	if err != nil {
		return nil, fmt.Errorf("opening the temporary roots directory: %w", err)
	}
	defer tr.close()
	sd, err := openPruneDir(storeDir)
	if err != nil {
		return nil, fmt.Errorf("opening the store directory: %w", err)
	}
	defer sd.close()
	if (tr == nil || !tr.mayDelete()) && (sd == nil || !sd.mayDelete()) && (tr != nil || sd != nil) {
		return nil, pruneAccessError(tr, sd)
	}

	var errs []error
	if tr != nil {
		if err := p.pruneDir(tr, KindTempRoots, func(name string) bool { return !strings.HasPrefix(name, ".") }); err != nil {
			errs = append(errs, fmt.Errorf("listing temporary roots: %w", err))
		}
	}
	if sd != nil {
		if err := p.pruneDir(sd, KindPathLock, func(name string) bool {
			return strings.HasSuffix(name, ".lock") && !strings.HasPrefix(name, ".")
		}); err != nil {
			errs = append(errs, fmt.Errorf("listing path locks: %w", err))
		}
	}
	return r, errors.Join(errs...)
}

// openPruneDir opens dir as a lockDir, through openTrustedDir; nil (and
// no error) if it does not exist.
func openPruneDir(dir string) (*lockDir, error) {
	fd, err := openTrustedDir(dir)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, nil
		}
		return nil, err
	}
	return newLockDir(fd, dir)
}

// maxPathLinks bounds the symbolic links openTrustedDir follows (as
// Linux's 40).
const maxPathLinks = 40

// openTrustedDir opens the directory path component by component, never
// following a symbolic link that sits in a directory another user
// controls. A link is followed only where the directory holding it is
// owned by root or the effective uid and writable by nobody else, or,
// for a link owned by root or the effective uid, is sticky (others can
// neither remove nor replace it there): so the way to the directory is
// root's (or ours), and a user who controls a store's state directory (a
// single-user install, a store in a home directory) cannot point
// temproots, or the store directory, at a directory of root's and have
// root delete files there that look like temp-roots or lock files.
// Otherwise the error names the link and wraps fs.ErrPermission.
func openTrustedDir(path string) (int, error) {
	start := "."
	if strings.HasPrefix(path, "/") {
		start = "/"
	}
	fd, err := openDirAt(unix.AT_FDCWD, start, 0)
	if err != nil {
		return -1, &os.PathError{Op: "open", Path: start, Err: err}
	}
	cur := start // the directory fd is, for messages
	comps := strings.Split(path, "/")
	links := 0
	for len(comps) > 0 {
		c := comps[0]
		comps = comps[1:]
		if c == "" || c == "." {
			continue
		}
		nfd, err := openDirAt(fd, c, unix.O_NOFOLLOW)
		if err == nil {
			unix.Close(fd)
			fd, cur = nfd, filepath.Join(cur, c)
			continue
		}
		var lst unix.Stat_t
		if err != unix.ELOOP && err != unix.ENOTDIR || sys.LstatAt(fd, c, &lst) != nil || lst.Mode&unix.S_IFMT != unix.S_IFLNK {
			unix.Close(fd)
			return -1, &os.PathError{Op: "open", Path: filepath.Join(cur, c), Err: err}
		}
		link := filepath.Join(cur, c)
		var dst unix.Stat_t
		if err := unix.Fstat(fd, &dst); err != nil {
			unix.Close(fd)
			return -1, &os.PathError{Op: "stat", Path: cur, Err: err}
		}
		euid := uint32(unix.Geteuid())
		trusted := func(uid uint32) bool { return uid == 0 || uid == euid }
		if !(trusted(dst.Uid) && dst.Mode&0o022 == 0 || dst.Mode&unix.S_ISVTX != 0 && trusted(dst.Uid) && trusted(lst.Uid)) {
			unix.Close(fd)
			return -1, fmt.Errorf("refusing to follow the symbolic link %s on the way to %s: it is in %s (owner uid %d, mode %04o), which another user controls; pass the directory it points to, or run as that user: %w",
				link, path, cur, dst.Uid, dst.Mode&0o7777, fs.ErrPermission)
		}
		if links++; links > maxPathLinks {
			unix.Close(fd)
			return -1, &os.PathError{Op: "open", Path: path, Err: unix.ELOOP}
		}
		target, err := sys.ReadlinkAt(fd, c)
		if err != nil {
			unix.Close(fd)
			return -1, &os.PathError{Op: "readlink", Path: link, Err: err}
		}
		if strings.HasPrefix(target, "/") {
			nfd, err := openDirAt(unix.AT_FDCWD, "/", 0)
			if err != nil {
				unix.Close(fd)
				return -1, &os.PathError{Op: "open", Path: "/", Err: err}
			}
			unix.Close(fd)
			fd, cur = nfd, "/"
		}
		comps = append(strings.Split(target, "/"), comps...)
	}
	return fd, nil
}

// mayDelete reports whether some lock file in d may be deleted by us:
// d is ours, or a sticky directory we own (where our own files may be).
func (d *lockDir) mayDelete() bool { return d.ours() || d.ownSticky() }

// mayDeleteFile reports whether the file with fstat st in d may be
// deleted by us (see Prune).
func (d *lockDir) mayDeleteFile(st *unix.Stat_t) bool {
	return d.ours() || d.ownSticky() && int(st.Uid) == unix.Geteuid()
}

// pruneAccessError says which directories Prune may not delete in, and
// what to do.
func pruneAccessError(ds ...*lockDir) error {
	var parts []string
	for _, d := range ds {
		if d != nil {
			parts = append(parts, fmt.Sprintf("%s (owner uid %d, mode %04o)", d.path, d.st.Uid, d.st.Mode&0o7777))
		}
	}
	return fmt.Errorf("%w: running as uid %d, lock prune may delete nothing in %s: run it as the store's owner (root for a multi-user Nix); 'lock status' lists the stale files without write access",
		ErrPruneAccess, unix.Geteuid(), strings.Join(parts, " or "))
}

// pruner is one Prune run.
type pruner struct {
	o  PruneOptions
	r  *PruneReport
	pc *procCache
	// devs: the file systems' devices, as /proc/locks names files by.
	devs sbDevs
	// locks is /proc/locks, read when a held file is first met and again
	// (at most maxLocksRereads times) when a held file is not in it.
	locks    map[inodeKey][]lockEntry
	rereads  int
	locksErr error
}

const maxLocksRereads = 3

// pruneDir handles every name in d that want accepts, in sorted order.
func (p *pruner) pruneDir(d *lockDir, kind string, want func(string) bool) error {
	// Listed through d's descriptor: the directory opened, not whatever
	// its path names now.
	fd, err := openDirAt(d.fd, ".", 0)
	if err != nil {
		return &os.PathError{Op: "open", Path: d.path, Err: err}
	}
	f := os.NewFile(uintptr(fd), d.path)
	defer f.Close()
	var names []string
	for {
		batch, rerr := f.Readdirnames(1024)
		for _, n := range batch {
			if want(n) {
				names = append(names, n)
			}
		}
		if rerr == io.EOF || len(batch) == 0 {
			break
		}
		if rerr != nil {
			return rerr
		}
	}
	sort.Strings(names)
	for _, n := range names {
		if pf, ok := p.pruneFile(d, kind, n); ok {
			p.add(pf)
		}
	}
	return nil
}

func (p *pruner) add(pf PruneFile) {
	r := p.r
	r.Files = append(r.Files, pf)
	switch pf.Action {
	case PruneRemoved, PruneWouldRemove:
		r.Removed++
		if pf.Kind == KindTempRoots {
			r.TempRootsRemoved++
		} else {
			r.PathLocksRemoved++
		}
	case PruneKept:
		r.Kept++
		if pf.Reason == PruneHeld {
			r.Held++
		}
	case PruneFailed:
		r.Failed++
	}
}

// pruneFile handles the file name in d; ok is false when it vanished
// before it was looked at, or is store contents, not a lock file (see
// storeContents: a directory, or a file holding more than "d"; lock
// status leaves these out too).
func (p *pruner) pruneFile(d *lockDir, kind, name string) (pf PruneFile, ok bool) {
	pf = PruneFile{Path: filepath.Join(d.path, name), Kind: kind}
	kept := func(reason, detail string) (PruneFile, bool) {
		pf.Action, pf.Reason, pf.Detail = PruneKept, reason, detail
		return pf, true
	}
	failed := func(reason, detail string) (PruneFile, bool) {
		pf.Action, pf.Reason, pf.Detail = PruneFailed, reason, detail
		return pf, true
	}
	var pid int
	switch kind {
	case KindTempRoots:
		n, err := strconv.Atoi(name)
		if err != nil || n <= 0 || strconv.Itoa(n) != name {
			return kept(PruneBadName, "the name is not a process id, so this is not a temp-roots file (Nix's collector stops on it: remove it by hand)")
		}
		pid = n
	case KindPathLock:
		if err := storepath.ValidateBaseName(strings.TrimSuffix(name, ".lock")); err != nil {
			return kept(PruneBadName, "not a store path's lock file: "+err.Error())
		}
	}

	var lst unix.Stat_t
	if err := sys.LstatAt(d.fd, name, &lst); err != nil {
		if err == unix.ENOENT {
			return pf, false
		}
		return failed(PruneError, (&os.PathError{Op: "stat", Path: pf.Path, Err: err}).Error())
	}
	if kind == KindPathLock && storeContents(&lst) {
		return pf, false // a store path named NAME.lock: not reported
	}
	switch lst.Mode & unix.S_IFMT {
	case unix.S_IFREG:
	case unix.S_IFLNK:
		return kept(PruneSymlink, "a symbolic link: neither followed nor removed")
	default:
		return kept(PruneNotRegular, "not a regular file: neither opened nor removed")
	}

	// Opened read-write only to delete it; a lock test needs no more than
	// reading.
	may := d.mayDeleteFile(&lst)
	flag := unix.O_RDONLY
	if may && !p.o.DryRun {
		flag = unix.O_RDWR
	}
	f, st, err := d.open(name, flag)
	if err != nil {
		switch {
		case errors.Is(err, fs.ErrNotExist):
			return pf, false
		case errors.Is(err, ErrNotRegular):
			if lst.Mode&unix.S_IFMT == unix.S_IFLNK {
				return kept(PruneSymlink, "replaced by a symbolic link while it was checked: neither followed nor removed")
			}
			return kept(PruneNotRegular, "replaced by a special file while it was checked: neither opened nor removed")
		case errors.Is(err, fs.ErrPermission):
			return failed(PrunePermission, fmt.Sprintf("cannot open it to test its lock (%v); it belongs to uid %d, mode %04o", err, lst.Uid, lst.Mode&0o7777))
		}
		return failed(PruneError, err.Error())
	}
	defer f.Close()
	if st.Nlink != 1 {
		return kept(PruneLinks, fmt.Sprintf("a regular file with %d links, not a lock file: left as it is", st.Nlink))
	}

	if err := tryLock(f, unix.LOCK_EX); err != nil {
		if errors.Is(err, ErrWouldBlock) {
			pf.Holders = p.holders(pf.Path, &st)
			return kept(PruneHeld, "")
		}
		return failed(PruneError, err.Error())
	}
	// Nobody held it, and now we do: nobody else can lock it until we
	// close it.
	if testHookPruneLocked != nil {
		testHookPruneLocked(pf.Path)
	}
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		return failed(PruneError, (&os.PathError{Op: "fstat", Path: pf.Path, Err: err}).Error())
	}
	if st.Nlink == 0 {
		return kept(PruneReplaced, "removed by another process while it was checked")
	}
	if st.Nlink != 1 {
		return kept(PruneLinks, fmt.Sprintf("a regular file with %d links, not a lock file: left as it is", st.Nlink))
	}
	switch kind {
	case KindPathLock:
		if !staleMarkOnly(f, st.Size) {
			return kept(PruneNotLock, fmt.Sprintf("holds %d bytes, and Nix writes nothing but the stale mark \"d\" into a lock file: left as it is", st.Size))
		}
		if why, err := p.storePath(d, name); err != nil {
			return failed(PruneError, fmt.Sprintf("could not tell whether it is a store path rather than a lock file: %v; run 'storekeeper verify' or check the store's database", err))
		} else if why != "" {
			return kept(PruneStorePath, why)
		}
	case KindTempRoots:
		if running(p.o.ProcDir, pid) {
			return kept(PrunePIDRunning, fmt.Sprintf("nobody holds it, but a process with pid %d runs (the pid was reused, or its owner is about to replace the file): left for the collector", pid))
		}
	}
	if !may {
		return failed(PrunePermission, fmt.Sprintf("stale, but not ours to delete: it belongs to uid %d in %s (owner uid %d, mode %04o); run as its owner", st.Uid, d.path, d.st.Uid, d.st.Mode&0o7777))
	}
	// Checked last, just before the unlink: the name is still the file
	// locked and checked above.
	if !stillLinked(d.fd, name, &st) {
		return kept(PruneReplaced, "removed or replaced by another process while it was checked: the new file is left as it is")
	}
	if p.o.DryRun {
		pf.Action = PruneWouldRemove
		return pf, true
	}
	if err := unlinkAt(d.fd, name); err != nil {
		if err == unix.ENOENT {
			return kept(PruneReplaced, "removed by another process while it was checked")
		}
		reason := PruneError
		if err == unix.EACCES || err == unix.EPERM {
			reason = PrunePermission
		}
		return failed(reason, (&os.PathError{Op: "unlink", Path: pf.Path, Err: err}).Error())
	}
	// Mark it stale for a process that opened it before the unlink and
	// locks it after us; only a file no name links to any more.
	if err := unix.Fstat(int(f.Fd()), &st); err == nil && st.Nlink == 0 {
		if _, err := f.Write([]byte("d")); err != nil {
			pf.Detail = fmt.Sprintf("unlinked, but marking it stale failed: %v", err)
		}
	}
	pf.Action = PruneRemoved
	return pf, true
}

// storePath says why the file name in the store directory d, empty or
// holding just "d", is a store path rather than a path lock ("" if it is
// not one): its own lock file name.lock exists (a store path being added
// or built: Nix holds NAME.lock from before it writes NAME until NAME is
// registered, and deletes it only then), or name is a valid path in the
// database. The lock file is looked at first and the database second, so
// that a path registered meanwhile is seen by one or the other.
func (p *pruner) storePath(d *lockDir, name string) (string, error) {
	var st unix.Stat_t
	switch err := sys.LstatAt(d.fd, name+".lock", &st); err {
	case nil:
		return "its own lock file " + name + ".lock exists: a store path being added or built (or left by one), not a lock file", nil
	case unix.ENOENT:
	default:
		return "", &os.PathError{Op: "stat", Path: filepath.Join(d.path, name+".lock"), Err: err}
	}
	valid, err := p.o.ValidPath(name)
	if err != nil {
		return "", err
	}
	if valid {
		return "a valid store path (registered in the database), not a lock file", nil
	}
	return "", nil
}

// staleMarkOnly reports whether the locked file f of size bytes is empty
// or holds just "d" (a lock file a holder marked but could not unlink).
func staleMarkOnly(f *os.File, size int64) bool {
	switch size {
	case 0:
		return true
	case 1:
		var b [1]byte
		n, err := f.ReadAt(b[:], 0)
		return n == 1 && err == nil && b[0] == 'd'
	}
	return false
}

// running reports whether a process with pid exists (procDir/PID).
func running(procDir string, pid int) bool {
	var st unix.Stat_t
	err := unix.Stat(procfs.Dir(procDir, pid), &st)
	return err == nil || err != unix.ENOENT
}

// holders returns who /proc/locks says holds the file with fstat st.
func (p *pruner) holders(path string, st *unix.Stat_t) []LockUser {
	key := p.devs.key(path, st, false)
	stale := p.locks != nil && len(p.locks[key]) == 0 && p.rereads < maxLocksRereads
	if p.locks == nil && p.locksErr == nil || stale {
		if stale {
			p.rereads++
		}
		locks, _, err := readAllLocks(p.o.ProcDir)
		if err != nil {
			p.locksErr = err
			return nil
		}
		p.locks = locks
	}
	var out []LockUser
	for _, e := range p.locks[key] {
		if !e.waiting {
			out = append(out, p.pc.user(e))
		}
	}
	return out
}

func unlinkAt(dirfd int, name string) error {
	for {
		err := unix.Unlinkat(dirfd, name, 0)
		if err != unix.EINTR {
			return err
		}
	}
}
