package fs

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"

	"storekeeper/internal/sys"
)

// Trash is a directory (<store>/trash) into which whole trees are renamed
// to be deleted later, or by someone else: gc moves what it invalidated
// there, repair the damaged copy it swapped out. It holds one directory
// per run, "run-<pid>-<random>" (a TrashRun), into which that run renames
// its entries (MoveInto) and from which it deletes them (DeleteEntries).
//
// Each run directory is locked (flock LOCK_EX on its descriptor) by the
// run that owns it, for as long as the directory exists. A run that
// starts empties only the run directories whose lock it can take
// (ClaimAbandoned): those of runs that died (the kernel released their
// lock) or were interrupted. A run directory in use is never touched, so
// two runs never delete the same entries, and each counts only the bytes
// it unlinked itself. Entries directly in the trash are leftovers of the
// layout before run directories; a run claims them by renaming them into
// a run directory of its own (one rename wins), then deletes them.
//
// Trash says nothing of when deleting is allowed: that is the caller's
// policy (gc deletes under gc.lock held shared, so that Nix's collector,
// which deletes every name of the store directory that is not a store
// path and fails when one disappears under it, is not running).
type Trash struct {
	Path string // <store>/trash, physical
}

// TrashRunPrefix starts the name of every run directory. No store path
// name starts so ('u' is not a base-32 digit), so names in the trash
// without it are leftovers of the old layout.
const TrashRunPrefix = "run-"

// TrashRun is a run directory, open and locked.
type TrashRun struct {
	Fd     int    // the directory, holding its lock
	parent int    // the trash
	name   string // the name in parent
	Path   string // the full path, for messages
	trash  Trash
}

// Open opens the trash without following a symlink and checks that it is
// a directory of the effective user: anything else there is not ours to
// write into or delete from (the error says to remove it). A missing
// trash yields an error satisfying errors.Is(err, unix.ENOENT). A trash
// that others could write into is made 0700.
func (t Trash) Open() (int, error) {
	fd, err := unix.Open(t.Path, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		if errors.Is(err, unix.ENOTDIR) || errors.Is(err, unix.ELOOP) {
			return -1, fmt.Errorf("%s is not a directory, so it is not the trash storekeeper makes (nor a store path): remove it and run again: %w", t.Path, err)
		}
		return -1, fmt.Errorf("opening %s: %w", t.Path, err)
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("%s: %w", t.Path, err)
	}
	if uid := os.Geteuid(); int(st.Uid) != uid {
		unix.Close(fd)
		return -1, fmt.Errorf("%s belongs to uid %d, not to uid %d running storekeeper, so it is not the trash storekeeper makes (nor a store path): remove it and run again", t.Path, st.Uid, uid)
	}
	if st.Mode&0o022 != 0 {
		unix.Fchmod(fd, 0o700) // ours: nobody else writes into it
	}
	return fd, nil
}

// lockRunDir opens the run directory name in parent and takes its lock
// without waiting. It fails with EWOULDBLOCK when another run holds the
// lock, and with ENOENT when the directory is gone, or was removed (by
// the run that held it) between the open and the lock.
func lockRunDir(parent int, name string) (int, error) {
	fd, err := unix.Openat(parent, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, err
	}
	for {
		err = unix.Flock(fd, unix.LOCK_EX|unix.LOCK_NB)
		if err != unix.EINTR {
			break
		}
	}
	if err != nil {
		unix.Close(fd)
		return -1, err
	}
	var a, b unix.Stat_t
	if unix.Fstat(fd, &a) != nil || unix.Fstatat(parent, name, &b, unix.AT_SYMLINK_NOFOLLOW) != nil || a.Dev != b.Dev || a.Ino != b.Ino {
		unix.Close(fd)
		return -1, unix.ENOENT
	}
	return fd, nil
}

// NewRun creates and locks a run directory of this process, creating the
// trash first if needed (0700). A run that finds the new directory
// between its creation and its lock takes it for abandoned and removes it
// (it is empty); then this one tries again with another name, as it does
// when a run that found the trash empty removes it under us.
func (t Trash) NewRun() (*TrashRun, error) {
	var lastErr error
	for try := 0; try < 100; try++ {
		if err := unix.Mkdir(t.Path, 0o700); err != nil && !errors.Is(err, unix.EEXIST) {
			return nil, fmt.Errorf("creating %s: %w", t.Path, err)
		}
		parent, err := t.Open()
		if errors.Is(err, unix.ENOENT) {
			lastErr = err
			continue
		}
		if err != nil {
			return nil, err
		}
		name := fmt.Sprintf("%s%d-%016x", TrashRunPrefix, os.Getpid(), rand.Uint64())
		if err := unix.Mkdirat(parent, name, 0o700); err != nil {
			unix.Close(parent)
			if errors.Is(err, unix.ENOENT) || errors.Is(err, unix.EEXIST) {
				lastErr = err
				continue
			}
			return nil, fmt.Errorf("creating %s/%s: %w", t.Path, name, err)
		}
		fd, err := lockRunDir(parent, name)
		if err != nil {
			unix.Close(parent)
			if errors.Is(err, unix.ENOENT) || errors.Is(err, unix.EWOULDBLOCK) {
				lastErr = err
				continue
			}
			return nil, fmt.Errorf("locking %s/%s: %w", t.Path, name, err)
		}
		return &TrashRun{Fd: fd, parent: parent, name: name, Path: t.Path + "/" + name, trash: t}, nil
	}
	return nil, fmt.Errorf("cannot create a directory of its own in %s (other runs keep removing it): %w", t.Path, lastErr)
}

// Close releases r: with remove, it first removes the directory if it is
// empty (one left with entries, after an error or a cancellation, stays
// for the next run, which can take its lock once it is released here),
// then the trash if that is empty too.
func (r *TrashRun) Close(remove bool) {
	if remove {
		unix.Unlinkat(r.parent, r.name, unix.AT_REMOVEDIR)
	}
	unix.Close(r.Fd)
	unix.Close(r.parent)
	if remove {
		r.trash.RemoveIfEmpty()
	}
}

// RemoveIfEmpty removes the trash if it is empty. No lock is needed: a
// run creating its directory in it at that moment finds it gone and
// creates it again.
func (t Trash) RemoveIfEmpty() {
	unix.Rmdir(t.Path)
}

// IsEmptyDir reports whether the directory open at fd (read from its
// current offset) has no entry but "." and "..". It stops at the first
// entry, so asking about a huge directory (.links) costs one read, and
// then moves fd back to the start. A directory removed since it was
// opened is ENOENT.
func IsEmptyDir(fd int) (bool, error) {
	defer unix.Seek(fd, 0, 0)
	buf := make([]byte, 4096)
	for {
		n, err := unix.Getdents(fd, buf)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return false, err
		}
		if n == 0 {
			return true, nil
		}
		if _, _, names := unix.ParseDirent(buf[:n], -1, nil); len(names) > 0 {
			return false, nil
		}
	}
}

// EmptyAbandoned deletes what runs that died or were interrupted left
// in their run directories (ClaimAbandoned), with parallel workers, and
// removes those directories. announce, if not nil, gets the number of
// entries before they are deleted. Entries of the layout before run
// directories are left (they are gc's to claim with MoveInto). The caller
// holds gc.lock shared, so that no collector runs meanwhile. It returns
// how many run directories it claimed; a missing trash is 0 and no error.
// Cancellation: ctx stops the deletion; what is left stays in the run
// directories, which the next run claims again.
func (t Trash) EmptyAbandoned(ctx context.Context, announce func(entries int)) (int, error) {
	parent, err := t.Open()
	if errors.Is(err, unix.ENOENT) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	defer unix.Close(parent)
	runs, _, err := t.ClaimAbandoned(parent)
	if errors.Is(err, unix.ENOENT) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	if len(runs) == 0 {
		return 0, nil
	}
	items, err := Entries(runs)
	if err == nil && len(items) > 0 {
		if announce != nil {
			announce(len(items))
		}
		_, _, err = DeleteEntries(ctx, items, 2*runtime.GOMAXPROCS(0), nil)
	}
	for _, run := range runs {
		run.Close(err == nil)
	}
	if err != nil {
		return len(runs), fmt.Errorf("emptying the trash %s: %w (run storekeeper gc to retry)", t.Path, err)
	}
	return len(runs), nil
}

// ClaimAbandoned lists the trash open at parent (from Open) and locks the
// run directories whose lock it can take (abandoned by runs that died or
// were interrupted); it returns them, and the names of entries of the old
// layout (not run directories) for the caller to claim with MoveInto. A run
// directory in use, or gone meanwhile, is skipped. A trash removed since
// it was opened is ENOENT. On an error nothing stays locked.
func (t Trash) ClaimAbandoned(parent int) (runs []*TrashRun, legacy []string, err error) {
	ents, err := sys.ReadDirents(parent, nil)
	if err != nil {
		if errors.Is(err, unix.ENOENT) {
			return nil, nil, err
		}
		return nil, nil, fmt.Errorf("reading %s: %w", t.Path, err)
	}
	for _, e := range ents {
		if !strings.HasPrefix(e.Name, TrashRunPrefix) {
			legacy = append(legacy, e.Name)
			continue
		}
		fd, err := lockRunDir(parent, e.Name)
		switch {
		case err == nil:
			p, derr := unix.Dup(parent)
			if derr != nil {
				unix.Close(fd)
				for _, r := range runs {
					r.Close(false)
				}
				return nil, nil, derr
			}
			runs = append(runs, &TrashRun{Fd: fd, parent: p, name: e.Name, Path: t.Path + "/" + e.Name, trash: t})
		case errors.Is(err, unix.ENOTDIR) || errors.Is(err, unix.ELOOP):
			legacy = append(legacy, e.Name) // not a directory: not a run's
		}
		// Otherwise it is in use (EWOULDBLOCK) or gone (ENOENT).
	}
	return runs, legacy, nil
}

// MoveInto renames name of the directory fromFd into the directory toFd
// (a TrashRun's Fd), relative to both descriptors (no path is resolved
// again, so a symlink swapped in cannot redirect it), and returns its
// new name: name, or name.<pid>-<n> when toFd already holds one. An entry
// already gone (deleted, or claimed by another run) is ENOENT. A
// directory that cannot be moved for lack of its own write permission
// (not root: rename writes its "..") gets its owner's bits first
// (AddOwnerBitsAt: it is on its way to deletion).
func MoveInto(fromFd int, name string, toFd int) (string, error) {
	dst := name
	chmodded := false
	for seq := 0; seq < 100; {
		err := unix.Renameat(fromFd, name, toFd, dst)
		switch {
		case err == nil:
			return dst, nil
		case errors.Is(err, unix.EEXIST), errors.Is(err, unix.ENOTEMPTY):
			seq++
			dst = fmt.Sprintf("%s.%d-%d", name, os.Getpid(), seq)
			continue
		case (errors.Is(err, unix.EACCES) || errors.Is(err, unix.EPERM)) && !chmodded:
			chmodded = true
			if AddOwnerBitsAt(fromFd, name) == nil {
				continue
			}
		}
		return "", err
	}
	return "", unix.EEXIST
}

// TrashEntry is an entry of a run directory, to delete.
type TrashEntry struct {
	Dirfd   int    // its run directory
	Name    string // its name there
	Display string // its full path, for messages
}

// Entries lists the entries of the run directories runs (from the start,
// whatever was read before). A run directory removed under us has none.
func Entries(runs []*TrashRun) ([]TrashEntry, error) {
	var items []TrashEntry
	for _, r := range runs {
		unix.Seek(r.Fd, 0, 0)
		ents, err := sys.ReadDirents(r.Fd, nil)
		if errors.Is(err, unix.ENOENT) {
			continue // removed under us: nothing left to delete
		}
		if err != nil {
			return nil, fmt.Errorf("reading %s: %w", r.Path, err)
		}
		for _, e := range ents {
			items = append(items, TrashEntry{r.Fd, e.Name, r.Path + "/" + e.Name})
		}
	}
	return items, nil
}

// DeleteEntries deletes items with workers parallel RemoveTree calls
// (deleting is mostly waiting on the file system: callers use more
// workers than cores) and returns how many it deleted, the bytes freed
// (the blocks of the files whose last link it removed itself) and the
// first error; done, when not nil, runs after each entry, from the
// workers. It stops handing out entries when ctx is done, leaving the
// rest; concurrent deletion of the same entries by another process is
// harmless (see RemoveTree).
func DeleteEntries(ctx context.Context, items []TrashEntry, workers int, done func()) (int, uint64, error) {
	work := make(chan TrashEntry, 256)
	var freed atomic.Uint64
	var deleted atomic.Int64
	var firstErr error
	var errOnce sync.Once
	var wg sync.WaitGroup
	for w := 0; w < max(1, workers); w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for it := range work {
				n, err := RemoveTree(it.Dirfd, it.Name, it.Display)
				freed.Add(n)
				if err != nil {
					errOnce.Do(func() { firstErr = err })
				} else {
					deleted.Add(1)
				}
				if done != nil {
					done()
				}
			}
		}()
	}
	for _, it := range items {
		if ctx.Err() != nil {
			break
		}
		work <- it
	}
	close(work)
	wg.Wait()
	return int(deleted.Load()), freed.Load(), firstErr
}
