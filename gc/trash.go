package gc

import (
	"context"
	"errors"
	"fmt"
	"runtime"

	"golang.org/x/sys/unix"

	"storekeeper/lock"
	"storekeeper/store/fs"
)

// The trash: <store>/trash (trashName) holds one locked run directory per
// collection, into which that collection renames what it invalidated and
// from which its workers delete it after gc.lock is no longer held
// exclusively. The mechanism (run directories, their locks, claiming the
// abandoned ones, parallel deletion) is fs.Trash's; this file is gc's
// policy: when to empty what, under which lock, and what to report.
//
// Deleting happens under gc.lock held shared: Nix's collector (which
// takes it exclusively) deletes every entry of the store dir that is not
// a store path, <store>/trash included, and fails when an entry
// disappears under it, so it must not run while we delete. Under the
// shared lock it waits for us, as it waits for another Nix collector.
// Entries that disappear under us anyway are skipped (fs.RemoveTree).

// trashRun is a run directory of the trash, open and locked.
type trashRun = fs.TrashRun

func (c *collector) trashOf() fs.Trash { return fs.Trash{Path: c.trashDir()} }

// newTrashRun creates and locks a run directory of this collection.
func (c *collector) newTrashRun() (*trashRun, error) {
	r, err := c.trashOf().NewRun()
	if err != nil {
		return nil, fmt.Errorf("gc: %w", err)
	}
	return r, nil
}

// closeTrash releases this collection's own run directory, if it made
// one, removing it if it is empty.
func (c *collector) closeTrash() {
	if c.trash != nil {
		c.trash.Close(true)
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
	trash := c.trashOf()
	parent, err := trash.Open()
	if errors.Is(err, unix.ENOENT) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("gc: %w", err)
	}
	if testHookTrashOpened != nil {
		testHookTrashOpened()
	}
	empty, err := fs.IsEmptyDir(parent)
	unix.Close(parent)
	if errors.Is(err, unix.ENOENT) {
		return nil // removed since it was opened: another collector emptied it
	}
	if err != nil {
		return fmt.Errorf("gc: reading %s: %w", c.trashDir(), err)
	}
	if empty {
		trash.RemoveIfEmpty()
		return nil
	}

	gcLock, err := lock.AcquireGCLock(ctx, c.lay.StateDir, lock.Shared, true, onWait)
	if err != nil {
		return fmt.Errorf("gc: taking %s: %w", c.lay.GCLockPath(), err)
	}
	defer gcLock.Release()
	parent, err = trash.Open()
	if errors.Is(err, unix.ENOENT) {
		return nil // a Nix collector deleted it while we waited
	}
	if err != nil {
		return fmt.Errorf("gc: %w", err)
	}
	defer unix.Close(parent)
	runs, legacy, err := trash.ClaimAbandoned(parent)
	if errors.Is(err, unix.ENOENT) {
		return nil // removed since it was opened
	} else if err != nil {
		return fmt.Errorf("gc: %w", err)
	}
	if len(legacy) > 0 {
		own, err := c.newTrashRun()
		if err != nil {
			for _, r := range runs {
				r.Close(false)
			}
			return err
		}
		mv := &mover{c: c, fromFd: parent, toFd: own.Fd, from: c.trashDir(), to: own.Path}
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
		r.Close(err == nil)
	}
	return err
}

// deleteTrash deletes every entry of the run directories runs with
// parallel workers (the directories themselves stay, for Close) and
// returns how many entries it deleted. leftover says the entries are
// what earlier collections left. The bytes freed are added to the
// result: those of the files it unlinked itself. It stops early when ctx
// is done, leaving the rest.
func (c *collector) deleteTrash(ctx context.Context, runs []*trashRun, leftover bool) (int, error) {
	items, err := fs.Entries(runs)
	if err != nil {
		return 0, fmt.Errorf("gc: %w", err)
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
	deleted, freed, firstErr := fs.DeleteEntries(ctx, items, workers, func() { c.progress.Add(1) })
	c.mu.Lock()
	c.res.BytesFreed += freed
	c.mu.Unlock()
	if firstErr != nil {
		return deleted, fmt.Errorf("gc: deleting the trash: %w (run storekeeper gc again to retry)", firstErr)
	}
	return deleted, ctx.Err()
}
