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
	"sync"
	"time"

	"storekeeper/graph"
	"storekeeper/lock"
	"storekeeper/report"
	"storekeeper/store"
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
)

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
	// FreeTarget, if set, decides for a deleting collection how much to
	// free from the free space of the store's file system read right
	// after gc.lock is taken exclusively (statfs: bytes available to
	// unprivileged users, total bytes). collect false means enough is
	// free: nothing is collected and Result.EnoughFree is set. Otherwise
	// maxFreed (0: no limit) becomes MaxFreed, or the smaller of the two.
	// Reading the space under the lock makes a run that waited for
	// another collector see what that one freed, so queued runs do no
	// work (gc --ensure-free, gc --auto).
	FreeTarget func(avail, total uint64) (collect bool, maxFreed uint64)
	// IgnoreRoots are root links (roots.Root.Link) treated as already
	// removed: a DryRun after keep policies that were only listed
	// reports what the collection would free once they are gone. Only
	// with DryRun (or PrintDead/PrintLive): a deleting collection with
	// IgnoreRoots set is refused.
	IgnoreRoots map[string]bool
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
	// Spared lists dead paths kept at the last moment because a client
	// registered them as temporary roots during the run.
	Spared []string `json:"spared,omitempty"`
	// FreeBytes is the free space FreeTarget was given (read under
	// gc.lock; nil when there is no FreeTarget, and 0 on a full file
	// system); EnoughFree says it was enough and nothing was collected.
	FreeBytes  *uint64 `json:"free_bytes,omitempty"`
	EnoughFree bool    `json:"enough_free,omitempty"`
	// The store as this run left it, from the graph it loaded: valid
	// paths and the sum of their NAR sizes (what it found, less what it
	// invalidated), and the dead valid paths still there (all of them
	// with PrintDead, PrintLive and DryRun; those beyond MaxFreed, or
	// spared, when deleting). Zero when no plan was made (gc --auto with
	// enough free space).
	PathsValid       int    `json:"paths_valid"`
	ValidNarBytes    uint64 `json:"valid_nar_bytes"`
	PathsDeadLeft    int    `json:"paths_dead_left"`
	DeadNarBytesLeft uint64 `json:"dead_nar_bytes_left"`
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

	g        *graph.Graph
	deleting bool
	// enough: FreeTarget found enough free space; nothing is collected.
	enough bool
	start  time.Time
	// cleanups run at close, last first (see plan.go); gcLock, srv,
	// lockedAt and exclusive are what they release.
	cleanups  []func()
	gcLock    *lock.FileLock
	srv       *rootServer
	lockedAt  time.Time
	exclusive bool
	// trash is this run's directory in the trash (see trash.go), from
	// the start of the invalidation.
	trash *trashRun

	// Guarded by mu: liveness and the temp roots may grow while the
	// socket server runs; pending is the batch being deleted.
	mu          sync.Mutex
	cond        *sync.Cond
	live        *graph.Liveness
	tempHash    map[string]bool
	pendingID   map[graph.PathID]bool
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
	c, err := newCollector(s, o, p)
	if err != nil {
		return nil, err
	}
	err = c.collect(ctx)
	c.startPhase("", 0)
	c.res.TotalSeconds = time.Since(c.start).Seconds()
	return c.res, err
}

// newCollector checks o and starts the state of one run.
func newCollector(s *store.Store, o Options, p report.Progress) (*collector, error) {
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
	c := &collector{s: s, lay: s.Layout, o: o, progress: p, deletions: d, res: &Result{}, start: time.Now(),
		tempHash: map[string]bool{}, pendingID: map[graph.PathID]bool{}, pendingHash: map[string]bool{}}
	c.cond = sync.NewCond(&c.mu)
	c.deleting = (o.Action == Delete || o.Action == DeleteSpecific) && !o.DryRun
	if c.deleting && s.ReadOnly {
		return nil, ErrReadOnly
	}
	if c.deleting && len(o.IgnoreRoots) > 0 {
		return nil, errors.New("gc: Options.IgnoreRoots is only for a dry run: a collection that deletes never ignores a root")
	}
	return c, nil
}
