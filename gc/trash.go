package gc

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
	"storekeeper/lock"
	"storekeeper/store/fs"
)

// The trash: <store>/trash (trashName) holds one directory per collection,
// "run-<pid>-<random>", into which that collection renames what it
// invalidated and from which its workers delete it after gc.lock is no
// longer held exclusively.
//
// Each run directory is locked (flock LOCK_EX on its descriptor) by the
// collection that owns it, for as long as the directory exists. A
// collection that starts empties only the run directories whose lock it
// can take: those of collections that died (the kernel released their
// lock) or were interrupted. A run directory in use is never touched, so
// two collections never delete the same entries, and each reports only
// the bytes it unlinked itself. Entries directly in <store>/trash are
// leftovers of the layout before run directories; a collection claims
// them by renaming them into a run directory of its own (one rename
// wins), then deletes them.
//
// Deleting happens under gc.lock held shared: Nix's collector (which
// takes it exclusively) deletes every entry of the store dir that is not
// a store path, <store>/trash included, and fails when an entry
// disappears under it, so it must not run while we delete. Under the
// shared lock it waits for us, as it waits for another Nix collector.
// Entries that disappear under us anyway are skipped (store.RemoveTree).

// runPrefix starts the name of every run directory. No store path name
// starts so ('u' is not a base-32 digit), so names in the trash without
// it are leftovers of the old layout.
const runPrefix = "run-"

// trashRun is a run directory, open and locked.
type trashRun struct {
	fd     int    // the directory, holding its lock
	parent int    // <store>/trash
	name   string // the name in parent
	path   string // the full path, for messages
}

// openTrash opens <store>/trash without following a symlink and checks
// that it is a directory of the user running the collection: anything
// else there is not ours to write into or delete from. A missing trash
// yields an error satisfying errors.Is(err, fs.ErrNotExist).
func (c *collector) openTrash() (int, error) {
	dir := c.trashDir()
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		if errors.Is(err, unix.ENOTDIR) || errors.Is(err, unix.ELOOP) {
			return -1, fmt.Errorf("gc: %s is not a directory, so it is not the trash storekeeper makes (nor a store path): remove it and run again: %w", dir, err)
		}
		return -1, fmt.Errorf("gc: opening %s: %w", dir, err)
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("gc: %s: %w", dir, err)
	}
	if uid := os.Geteuid(); int(st.Uid) != uid {
		unix.Close(fd)
		return -1, fmt.Errorf("gc: %s belongs to uid %d, not to uid %d running the collection, so it is not the trash storekeeper makes (nor a store path): remove it and run again", dir, st.Uid, uid)
	}
	if st.Mode&0o022 != 0 {
		unix.Fchmod(fd, 0o700) // ours: nobody else writes into it
	}
	return fd, nil
}

// lockRunDir opens the run directory name in parent and takes its lock
// without waiting. It fails with EWOULDBLOCK when another collection
// holds the lock, and with ENOENT when the directory is gone, or was
// removed (by the collection that held it) between the open and the lock.
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

// newTrashRun creates and locks a run directory of this collection,
// creating <store>/trash first if needed. A collection that finds the new
// directory between its creation and its lock takes it for abandoned
// and removes it (it is empty); then this one tries again with another
// name, as it does when a collection that found <store>/trash empty
// removes it under us.
func (c *collector) newTrashRun() (*trashRun, error) {
	var lastErr error
	for try := 0; try < 100; try++ {
		if err := unix.Mkdir(c.trashDir(), 0o700); err != nil && !errors.Is(err, unix.EEXIST) {
			return nil, fmt.Errorf("gc: creating %s: %w", c.trashDir(), err)
		}
		parent, err := c.openTrash()
		if errors.Is(err, unix.ENOENT) {
			lastErr = err
			continue
		}
		if err != nil {
			return nil, err
		}
		name := fmt.Sprintf("%s%d-%016x", runPrefix, os.Getpid(), rand.Uint64())
		if err := unix.Mkdirat(parent, name, 0o700); err != nil {
			unix.Close(parent)
			if errors.Is(err, unix.ENOENT) || errors.Is(err, unix.EEXIST) {
				lastErr = err
				continue
			}
			return nil, fmt.Errorf("gc: creating %s/%s: %w", c.trashDir(), name, err)
		}
		fd, err := lockRunDir(parent, name)
		if err != nil {
			unix.Close(parent)
			if errors.Is(err, unix.ENOENT) || errors.Is(err, unix.EWOULDBLOCK) {
				lastErr = err
				continue
			}
			return nil, fmt.Errorf("gc: locking %s/%s: %w", c.trashDir(), name, err)
		}
		return &trashRun{fd: fd, parent: parent, name: name, path: c.trashDir() + "/" + name}, nil
	}
	return nil, fmt.Errorf("gc: cannot create a directory of its own in %s (other collections keep removing it): %w", c.trashDir(), lastErr)
}

// closeTrashRun releases r: with remove, it first removes the directory
// if it is empty (one left with entries, after an error or a
// cancellation, stays for the next collection, which can take its lock
// once it is released here), then <store>/trash if that is empty too.
func (c *collector) closeTrashRun(r *trashRun, remove bool) {
	if remove {
		unix.Unlinkat(r.parent, r.name, unix.AT_REMOVEDIR)
	}
	unix.Close(r.fd)
	unix.Close(r.parent)
	if remove {
		c.removeEmptyTrash()
	}
}

// removeEmptyTrash removes <store>/trash if it is empty. No lock is
// needed: a collection creating its run directory in it at that moment
// finds it gone and creates it again.
func (c *collector) removeEmptyTrash() {
	unix.Rmdir(c.trashDir())
}

// closeTrash releases this collection's own run directory, if it made
// one, removing it if it is empty.
func (c *collector) closeTrash() {
	if c.trash != nil {
		c.closeTrashRun(c.trash, true)
		c.trash = nil
	}
}

// testHookTrashOpened, when set, runs between opening <store>/trash and
// listing it (tests remove it there, as a concurrent collector may).
var testHookTrashOpened func()

// emptyAbandonedTrash deletes what collections that did not finish left
// in <store>/trash: the run directories whose lock it can take, and the
// entries of the old layout. It runs before the collection takes gc.lock
// exclusively (deleting invalid entries needs no lock of the store), but
// with gc.lock shared, so that no Nix collector runs meanwhile (see the
// comment at the top of this file); when there is no trash it takes no
// lock at all.
func (c *collector) emptyAbandonedTrash(ctx context.Context, onWait func()) error {
	parent, err := c.openTrash()
	if errors.Is(err, unix.ENOENT) {
		return nil
	}
	if err != nil {
		return err
	}
	if testHookTrashOpened != nil {
		testHookTrashOpened()
	}
	ents, err := sys.ReadDirents(parent, nil)
	unix.Close(parent)
	if errors.Is(err, unix.ENOENT) {
		return nil // removed since it was opened: another collector emptied it
	}
	if err != nil {
		return fmt.Errorf("gc: reading %s: %w", c.trashDir(), err)
	}
	if len(ents) == 0 {
		c.removeEmptyTrash()
		return nil
	}

	gcLock, err := lock.AcquireGCLock(ctx, c.lay.StateDir, lock.Shared, true, onWait)
	if err != nil {
		return fmt.Errorf("gc: taking %s: %w", c.lay.GCLockPath(), err)
	}
	defer gcLock.Release()
	parent, err = c.openTrash()
	if errors.Is(err, unix.ENOENT) {
		return nil // a Nix collector deleted it while we waited
	}
	if err != nil {
		return err
	}
	defer unix.Close(parent)
	if ents, err = sys.ReadDirents(parent, nil); errors.Is(err, unix.ENOENT) {
		return nil // removed since it was opened
	} else if err != nil {
		return fmt.Errorf("gc: reading %s: %w", c.trashDir(), err)
	}
	var runs []*trashRun
	var legacy []string
	for _, e := range ents {
		if !strings.HasPrefix(e.Name, runPrefix) {
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
					c.closeTrashRun(r, false)
				}
				return fmt.Errorf("gc: %w", derr)
			}
			runs = append(runs, &trashRun{fd: fd, parent: p, name: e.Name, path: c.trashDir() + "/" + e.Name})
		case errors.Is(err, unix.ENOTDIR) || errors.Is(err, unix.ELOOP):
			legacy = append(legacy, e.Name) // not a directory: not a run's
		}
		// Otherwise it is in use (EWOULDBLOCK) or gone (ENOENT).
	}
	if len(legacy) > 0 {
		own, err := c.newTrashRun()
		if err != nil {
			for _, r := range runs {
				c.closeTrashRun(r, false)
			}
			return err
		}
		mv := &mover{c: c, fromFd: parent, toFd: own.fd, from: c.trashDir(), to: own.path}
		for _, name := range legacy {
			mv.move(name) // ENOENT: another collection claimed it first
		}
		runs = append(runs, own)
	}
	if len(runs) == 0 {
		return nil
	}
	n, err := c.deleteTrash(ctx, runs, true)
	c.res.TrashEmptied += n
	for _, r := range runs {
		c.closeTrashRun(r, err == nil)
	}
	return err
}

// deleteTrash deletes every entry of the run directories runs with
// parallel workers (the directories themselves stay, for closeTrashRun)
// and returns how many entries it deleted. leftover says the entries are
// what earlier collections left. The bytes freed are added to the
// result: those of the files it unlinked itself. It stops early when ctx
// is done, leaving the rest.
func (c *collector) deleteTrash(ctx context.Context, runs []*trashRun, leftover bool) (int, error) {
	type item struct {
		dirfd         int
		name, display string
	}
	var items []item
	for _, r := range runs {
		unix.Seek(r.fd, 0, 0)
		ents, err := sys.ReadDirents(r.fd, nil)
		if errors.Is(err, unix.ENOENT) {
			continue // removed under us: nothing left to delete
		}
		if err != nil {
			return 0, fmt.Errorf("gc: reading %s: %w", r.path, err)
		}
		for _, e := range ents {
			items = append(items, item{r.fd, e.Name, r.path + "/" + e.Name})
		}
	}
	if leftover {
		if len(items) == 0 {
			return 0, nil
		}
		c.progress.Info(fmt.Sprintf("emptying the trash left by an interrupted run (%d entries)", len(items)))
		c.startPhase("trash", int64(len(items)))
	} else {
		c.startPhase("deletion", int64(len(items)))
	}
	workers := c.o.Workers
	if workers <= 0 {
		// Deleting is mostly waiting on the file system: more workers
		// than cores keep both cores busy.
		workers = 2 * runtime.GOMAXPROCS(0)
	}
	work := make(chan item, 256)
	var freed atomic.Uint64
	var deleted atomic.Int64
	var firstErr error
	var errOnce sync.Once
	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for it := range work {
				n, err := fs.RemoveTree(it.dirfd, it.name, it.display)
				freed.Add(n)
				if err != nil {
					errOnce.Do(func() { firstErr = err })
				} else {
					deleted.Add(1)
				}
				c.progress.Add(1)
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
	c.mu.Lock()
	c.res.BytesFreed += freed.Load()
	c.mu.Unlock()
	if firstErr != nil {
		return int(deleted.Load()), fmt.Errorf("gc: deleting the trash: %w (run storekeeper gc again to retry)", firstErr)
	}
	return int(deleted.Load()), ctx.Err()
}
