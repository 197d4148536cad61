// Package gc is storekeeper's garbage collector: Nix's semantics (the same
// dead set, the same survivors as `nix-store --gc` on the same store), on
// the in-memory reference graph, with the slow part of the work — the
// deletion of files — done outside the exclusive garbage collector lock.
//
// A collection runs in phases:
//
//  1. trash: what collections that did not finish left in <store>/trash
//     (run directories whose lock is free) is deleted, under gc.lock
//     shared (see trash.go).
//  2. lock: take gc.lock exclusively (waiting, like Nix, for another
//     collector) and serve gc-socket/socket so Nix clients can register
//     new temporary roots while we run.
//  3. roots: permanent, runtime and temporary roots (package roots).
//  4. graph: ValidPaths, Refs and DerivationOutputs in one read.
//  5. liveness: everything the roots keep alive, through references and
//     the keep-outputs / keep-derivations edges; the dead set is what
//     Nix's collector would find dead scanning the store directory.
//  6. invalidation: dead paths, referrers before references (newest
//     first), each strongly connected component in one transaction, in
//     batches of up to 65536 paths that shrink towards the end; after
//     each committed batch its directories are renamed into this run's
//     own locked directory in <store>/trash. On a nearly full disk the
//     batches are small, the WAL is checkpointed after each, and each
//     batch is deleted at once.
//  7. unlock: the socket is closed and gc.lock downgraded to shared:
//     Nix clients no longer need the socket, another collector (ours or
//     Nix's) still waits.
//  8. deletion: the run's trash is deleted by parallel workers.
//  9. links: .links entries no longer linked from anywhere are removed;
//     then gc.lock is released.
//
// Crash safety: a path is always invalidated (committed) before its
// directory leaves its place, and deleted only once it is in the trash.
// Killed at any instant, the store is one that `nix-store --verify`
// accepts: at worst invalid leftovers in the store directory (which the
// next run deletes, as Nix's collector would) and a run directory in the
// trash, whose lock the kernel released with the process (the next run
// empties it first).
//
// Concurrency: two collections never delete the same entries (each
// deletes only its own run directory and abandoned ones it locked), and
// each reports only the bytes it unlinked itself.
package gc

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"time"

	"storekeeper/lock"
	"storekeeper/report"
	"storekeeper/store"
	"storekeeper/store/db"
)

// Sentinel errors.
var (
	ErrAlive        = errors.New("gc: path is alive")
	ErrNotInStore   = errors.New("gc: not a store path")
	ErrRootsUnknown = errors.New("gc: cannot read all roots")
	ErrReadOnly     = errors.New("gc: the store was opened read-only")
)

// Action is what a collection does.
type Action int

const (
	// Delete collects all garbage.
	Delete Action = iota
	// PrintDead lists what Delete would delete and changes nothing.
	PrintDead
	// PrintLive lists the live paths and changes nothing.
	PrintLive
	// DeleteSpecific deletes Options.Paths, each only if it is dead.
	DeleteSpecific
	// Explain says why Options.Paths[0] is alive (Result.Why) and
	// changes nothing.
	Explain
)

// Explanation answers "why is this path still alive?".
type Explanation struct {
	Path  string `json:"path"`
	Alive bool   `json:"alive"`
	// Root is the root that keeps it ("LINK -> PATH", "{temp:PID}", ...),
	// and Chain the paths from that root's target down to Path, each
	// keeping the next alive (a reference, or a keep-outputs /
	// keep-derivations edge).
	Root  string   `json:"root,omitempty"`
	Chain []string `json:"chain,omitempty"`
}

// Options control a collection.
type Options struct {
	Action Action
	// Paths to delete, for DeleteSpecific: full store paths.
	Paths []string
	// DryRun with Delete or DeleteSpecific: plan, measure the bytes that
	// would really be freed, and change nothing.
	DryRun bool
	// MaxFreed stops the collection once this many bytes are freed
	// (0: no limit).
	MaxFreed uint64
	// KeepOutputs / KeepDerivations: nix.conf's keep-outputs and
	// keep-derivations.
	KeepOutputs, KeepDerivations bool
	// KeepRecent keeps every path registered within this duration.
	KeepRecent time.Duration
	// Workers deleting the trash in parallel (0: GOMAXPROCS).
	Workers int
	// BatchSize is the most paths invalidated in one transaction (0:
	// 65536); see batchSize for how the batches are cut.
	BatchSize int
	// ProcDir is /proc (tests point it elsewhere).
	ProcDir string
	// Now is the current time (tests); zero means time.Now().
	Now time.Time
	// BeforeInvalidation, if set, is called with gc.lock held and the gc
	// socket served, right before the first path is invalidated: a
	// synchronisation point for tests (like Nix's _NIX_TEST_GC_SYNC).
	BeforeInvalidation func()
}

// Deletions is an optional extension of the report.Progress passed to
// Collect: if it implements Deletions, Deleting is called with the full
// path of each store entry right before it is moved to the trash (Nix
// prints "deleting '...'" there). It is called from several goroutines at
// once and must not block long: deletion waits for it.
type Deletions interface {
	Deleting(path string)
}

// PhaseTime is how long a phase took.
type PhaseTime struct {
	Name    string  `json:"name"`
	Seconds float64 `json:"elapsed_seconds"`
}

// Result describes a collection.
type Result struct {
	// Dead (PrintDead, DryRun) and Live (PrintLive): sorted full paths.
	Dead []string `json:"dead,omitempty"`
	Live []string `json:"live,omitempty"`
	// PathsDeleted counts valid paths invalidated and removed;
	// EntriesDeleted counts other store-dir entries removed (invalid
	// leftovers, stale lock files, temporary links).
	PathsDeleted   int `json:"paths_deleted"`
	EntriesDeleted int `json:"entries_deleted"`
	// BytesFreed is what this collection's own deletions freed (blocks
	// of the last link of each file it unlinked; never what another
	// process deleted first); with DryRun, what it would free.
	BytesFreed uint64 `json:"bytes_freed"`
	// LinksDeleted counts .links entries removed; LinkSavings is what
	// hard-linking still saves (Nix's "note: currently hard linking
	// saves").
	LinksDeleted int   `json:"links_deleted"`
	LinkSavings  int64 `json:"link_savings_bytes"`
	// Why answers Explain.
	Why *Explanation `json:"why,omitempty"`
	// Spared lists dead paths kept at the last moment because a client
	// registered them as temporary roots during the run.
	Spared []string `json:"spared,omitempty"`
	// TrashEmptied counts entries left in the trash by earlier runs that
	// did not finish (killed or interrupted) and deleted now.
	TrashEmptied int `json:"trash_emptied"`
	// LockHeldSeconds is how long gc.lock was held exclusively,
	// TotalSeconds how long Collect ran.
	LockHeldSeconds float64     `json:"lock_held_seconds"`
	TotalSeconds    float64     `json:"elapsed_seconds"`
	Phases          []PhaseTime `json:"phases"`
}

// ReleaseReserved deletes db/reserved, the gc-reserved-space file Nix
// keeps so that a collection can run on a full disk. Call it before
// opening the DB read-write for a collection: on a full disk, even
// opening SQLite in WAL mode needs space. Collect recreates it at the end.
func ReleaseReserved(lay store.Layout) error {
	p := filepath.Join(lay.DBDir(), "reserved")
	if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("gc: removing %s: %w", p, err)
	}
	return nil
}

// collector is the state of one run.
type collector struct {
	s         *store.Store
	lay       store.Layout
	o         Options
	progress  report.Progress
	deletions Deletions // progress's, or nil
	res       *Result
	phase     string
	phaseAt   time.Time

	g        *db.Graph
	edg      *edges
	deleting bool
	// trash is this run's directory in the trash (see trash.go), from
	// the start of the invalidation.
	trash *trashRun

	// Guarded by mu: liveness and the temp roots may grow while the
	// socket server runs; pending is the batch being deleted.
	mu          sync.Mutex
	cond        *sync.Cond
	live        *liveness
	tempHash    map[string]bool
	pendingID   map[db.PathID]bool
	pendingHash map[string]bool
}

func (c *collector) startPhase(name string, total int64) {
	now := time.Now()
	if c.phase != "" {
		c.res.Phases = append(c.res.Phases, PhaseTime{c.phase, now.Sub(c.phaseAt).Seconds()})
	}
	c.phase, c.phaseAt = name, now
	if name != "" {
		c.progress.Phase(name, total, false)
	}
}

// warn reports a problem that did not stop the collection (the
// progress's Printer.Warn).
func (c *collector) warn(format string, a ...any) {
	c.progress.Warn(fmt.Sprintf(format, a...), "")
}

// Collect runs a collection on s. Deleting actions need a store opened
// read-write (and, on a read-only mount, made writable by the caller);
// PrintDead, PrintLive and DryRun work on a read-only store and change
// nothing.
//
// Concurrency: safe beside a running nix-daemon and Nix clients (gc.lock,
// the gc socket and temp roots are honoured exactly like Nix's collector
// does). A second collector, ours or `nix-store --gc`, waits for the
// first to finish, deletion included (gc.lock is held shared while the
// trash is deleted); it leaves alone the trash of a collection still
// running, and reports only what it freed itself.
//
// Cancellation: when ctx is cancelled the collection stops at the next
// batch boundary: the batch in flight is committed and moved to the trash,
// the socket is closed, the lock released, db/reserved recreated, and
// ctx's error is returned with the partial Result. The trash is left for
// the next run, which empties it first; cancelled during the deletion,
// the rest of the trash is left the same way. Crash safety: see the
// package documentation.
//
// p receives the progress (nil: report.Discard); if it also implements
// Deletions, each deletion is reported to it.
func Collect(ctx context.Context, s *store.Store, o Options, p report.Progress) (*Result, error) {
	if p == nil {
		p = report.Discard
	}
	d, _ := p.(Deletions)
	if o.BatchSize <= 0 {
		o.BatchSize = defaultBatchSize
	}
	if o.Now.IsZero() {
		o.Now = time.Now()
	}
	start := time.Now()
	c := &collector{s: s, lay: s.Layout, o: o, progress: p, deletions: d, res: &Result{},
		tempHash: map[string]bool{}, pendingID: map[db.PathID]bool{}, pendingHash: map[string]bool{}}
	c.cond = sync.NewCond(&c.mu)
	c.deleting = (o.Action == Delete || o.Action == DeleteSpecific) && !o.DryRun
	if c.deleting && s.ReadOnly {
		return nil, ErrReadOnly
	}
	err := c.run(ctx)
	c.startPhase("", 0)
	c.res.TotalSeconds = time.Since(start).Seconds()
	return c.res, err
}

func (c *collector) run(ctx context.Context) error {
	onWait := func() { c.progress.Info("waiting for the big garbage collector lock...") }
	if c.deleting {
		// Runs that did not finish leave their trash: empty it first (it
		// was invalidated before it was moved).
		if err := c.emptyAbandonedTrash(ctx, onWait); err != nil {
			return err
		}
		// Free the reserved space first (callers should already have, with
		// ReleaseReserved, before opening the DB), so that a full disk
		// cannot stop SQLite from committing the invalidations.
		if err := ReleaseReserved(c.lay); err != nil {
			c.warn("%v", err)
		}
		defer c.recreateReserved()
	}

	c.startPhase("lock", -1)
	var gcLock *lock.FileLock
	var err error
	if c.deleting {
		gcLock, err = lock.AcquireGCLock(ctx, c.lay.StateDir, lock.Exclusive, true, onWait)
		if err != nil {
			return fmt.Errorf("gc: taking %s: %w", c.lay.GCLockPath(), err)
		}
	} else {
		// A query takes gc.lock shared, so that no collector changes the
		// store under it, but it needs no write access: without one it
		// runs unlocked (a snapshot, like any read).
		gcLock, err = lock.AcquireGCLockReadOnly(ctx, c.lay.StateDir, lock.Shared, true, onWait)
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			gcLock = nil
		}
	}
	defer gcLock.Release()
	lockedAt := time.Now()
	exclusive := c.deleting
	// endExclusive downgrades gc.lock to shared once the store is no
	// longer changed: another collector (ours or Nix's) still waits until
	// the trash is deleted, Nix clients registering roots go on.
	endExclusive := func() {
		if !exclusive {
			return
		}
		exclusive = false
		if err := gcLock.Downgrade(); err != nil {
			// Cannot happen on Linux (nothing conflicts with a lock held
			// exclusively). Without gc.lock the deletion is still correct,
			// but a Nix collector starting now may stumble on the trash.
			c.warn("downgrading %s: %v; releasing it", c.lay.GCLockPath(), err)
			gcLock.Release()
		}
		c.res.LockHeldSeconds = time.Since(lockedAt).Seconds()
	}
	defer endExclusive()
	defer c.closeTrash()

	var srv *rootServer
	if c.deleting {
		srv, err = startServer(c, c.lay.GCSocketPath())
		if err != nil {
			return fmt.Errorf("gc: serving %s: %w", c.lay.GCSocketPath(), err)
		}
	}
	stopServer := func() {
		if srv != nil {
			srv.stop()
			srv = nil
		}
	}
	defer stopServer()

	plan, err := c.plan(ctx)
	if err != nil {
		return err
	}
	switch {
	case c.o.Action == Explain:
		return c.explain()
	case c.o.Action == PrintDead:
		c.res.Dead = plan.names(c)
		return nil
	case c.o.Action == PrintLive:
		c.res.Live = c.liveNames(plan)
		return nil
	case c.o.DryRun:
		c.res.Dead = plan.names(c)
		c.startPhase("size", int64(len(c.res.Dead)))
		c.res.BytesFreed, err = c.measure(ctx, plan)
		return err
	}

	if c.o.MaxFreed > 0 {
		c.startPhase("size", -1)
		if err := c.limit(ctx, plan); err != nil {
			return err
		}
	}
	ierr := c.invalidateAndMove(ctx, plan)
	stopServer()
	endExclusive()
	if ctx.Err() != nil {
		// Interrupted: what was invalidated is in the trash, and the store
		// is consistent; the next run empties the trash first.
		switch {
		case c.trash != nil && c.res.PathsDeleted+c.res.EntriesDeleted > 0:
			c.progress.Info("interrupted: the paths already invalidated wait in " + c.trash.Path + "; the next run deletes them")
		case c.res.PathsDeleted+c.res.EntriesDeleted == 0:
			c.progress.Info("interrupted before anything was invalidated: nothing was deleted")
		}
		return errors.Join(ierr, ctx.Err())
	}
	// The rest happens under gc.lock shared: everything in the trash is
	// already invalid.
	var derr error
	if c.trash != nil {
		_, derr = c.deleteTrash(ctx, []*trashRun{c.trash}, false)
	}
	if ierr == nil && derr == nil && ctx.Err() == nil {
		derr = c.removeUnusedLinks(ctx)
	}
	return errors.Join(ierr, derr)
}

// entry is a name in the store directory.
type entry struct {
	name  string
	id    db.PathID // valid path, or store.NoPath
	isSP  bool      // parses as a store path
	valid bool
}

// plan is what a collection would delete.
type plan struct {
	dead    []bool      // valid paths, by PathID
	deadIDs []db.PathID // the same, in deletion order
	comps   [][]db.PathID
	others  []entry // invalid or non-store-path entries to delete, sorted
	present []bool  // valid paths present in the store directory
	// protected: present invalid entries kept by temporary roots.
	protected []string
	// limit: with MaxFreed, only comps[:limit] are deleted (-1: all).
	limit int
}

func (p *plan) names(c *collector) []string {
	var out []string
	for _, id := range p.deadIDs {
		out = append(out, c.g.Path(id))
	}
	for _, e := range p.others {
		out = append(out, c.lay.StoreDir+"/"+e.name)
	}
	sort.Strings(out)
	return out
}

// liveNames lists the live paths as Nix's --print-live does: live valid
// paths present in the store directory or kept alive by a root through
// references, and present entries protected by temporary roots.
func (c *collector) liveNames(p *plan) []string {
	var out []string
	for id := 0; id < c.g.Len(); id++ {
		if c.live.alive[id] {
			out = append(out, c.g.Path(db.PathID(id)))
		}
	}
	for _, e := range p.protected {
		out = append(out, c.lay.StoreDir+"/"+e)
	}
	sort.Strings(out)
	return out
}
