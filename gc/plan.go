package gc

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"storekeeper/graph"
	"storekeeper/internal/sys"
	"storekeeper/lock"
	"storekeeper/nix/storepath"
	"storekeeper/report"
	"storekeeper/roots"
	"storekeeper/store"
	"storekeeper/store/db"
)

// trashName is the directory in the store dir where dead paths wait for
// deletion. It is not a store path name, so Nix's own collector would
// delete it, which is what it is for.
const trashName = "trash"

// Plan is what one collection finds before it changes anything: the
// roots, the reference graph, which paths are alive and which are dead
// (with Nix's semantics: see the package documentation), the order in
// which the dead ones would be invalidated and, as the action needs them,
// the sizes. It is computed by NewPlan, in one pass; Execute deletes what
// it says.
//
// A Plan for a deleting action (Delete or DeleteSpecific, without DryRun)
// holds gc.lock exclusively and serves the gc socket from NewPlan until
// Execute or Close: temporary roots that Nix clients register meanwhile
// make their paths alive in the plan (Execute re-checks every batch
// against them right before invalidating it). Other plans hold gc.lock
// shared while NewPlan runs (when its file can be opened), and nothing
// once it returns. Its fields are read-only for the caller; a Plan is for one
// goroutine.
type Plan struct {
	// Roots are the permanent and runtime roots (temporary roots are
	// matched by hash part, as Nix does, and not listed here).
	Roots *roots.Result
	// Graph is the store's reference graph as loaded.
	Graph *graph.Graph
	// Dead lists, sorted, the full paths the action deletes: valid dead
	// paths and other entries of the store directory (invalid leftovers,
	// stale lock files). Set for PrintDead and DryRun.
	Dead []string
	// Live lists, sorted, the live paths as Nix's --print-live does. Set
	// for PrintLive.
	Live []string
	// BytesFreed is what deleting Dead would free, counting hard links
	// (blocks of files whose last link is among them). Set for DryRun.
	BytesFreed uint64

	c    *collector
	p    *plan
	done bool
}

// NewPlan computes the plan of a collection of s with options o (the
// action decides which of Plan's lists and sizes are filled), reporting
// to prog (nil: report.Discard). For a deleting action it first empties
// the trash of collections that did not finish and releases db/reserved,
// then takes gc.lock exclusively and serves the gc socket; the caller
// must then Execute or Close the plan.
//
// Cancellation: ctx aborts the planning; nothing is held afterwards and
// nothing was deleted but abandoned trash.
func NewPlan(ctx context.Context, s *store.Store, o Options, prog report.Progress) (*Plan, error) {
	c, err := newCollector(s, o, prog)
	if err != nil {
		return nil, err
	}
	pl, err := c.newPlan(ctx)
	if err != nil || !c.deleting {
		c.close()
	}
	if err != nil {
		return nil, err
	}
	if !c.deleting {
		c.startPhase("", 0)
		c.res.TotalSeconds = time.Since(c.start).Seconds()
	}
	return pl, nil
}

// Result is the Result of the collection so far: after NewPlan, what the
// plan says (Dead, Live, BytesFreed, the phases' times); after Execute,
// what it did.
func (pl *Plan) Result() *Result { return pl.c.res }

// Close releases what the plan holds (the socket, gc.lock) without
// deleting anything. It may be called more than once, and after Execute.
func (pl *Plan) Close() {
	if !pl.done {
		pl.done = true
		pl.c.close()
	}
}

// ErrPlanDone is Execute's error for a plan already executed or closed:
// a plan runs once (its locks and the socket are released by then).
var ErrPlanDone = errors.New("gc: the plan was already executed or closed")

// Execute deletes what pl says, as Collect does after its plan: dead
// paths, referrers first, each strongly connected component in one
// transaction, in batches; each batch is re-checked under the lock
// against the temporary roots registered since the plan (those paths are
// spared and listed in Result.Spared); then, with gc.lock held shared,
// the trash is deleted and unused .links entries removed. It releases
// everything the plan held. A plan that deletes nothing (PrintDead,
// PrintLive, DryRun) deletes nothing and returns its Result.
//
// Crash safety and cancellation: see Collect.
func Execute(ctx context.Context, pl *Plan) (*Result, error) {
	if pl.done {
		return pl.c.res, ErrPlanDone
	}
	pl.done = true
	c := pl.c
	var err error
	if c.deleting {
		err = c.execute(ctx, pl.p)
	}
	c.close()
	c.startPhase("", 0)
	c.res.TotalSeconds = time.Since(c.start).Seconds()
	return c.res, err
}

// collect is Collect's run: the plan, then, for a deleting action, its
// execution.
func (c *collector) collect(ctx context.Context) error {
	defer c.close()
	pl, err := c.newPlan(ctx)
	if err != nil || !c.deleting {
		return err
	}
	return c.execute(ctx, pl.p)
}

// addCleanup registers f to run at close, before the ones registered
// earlier.
func (c *collector) addCleanup(f func()) { c.cleanups = append(c.cleanups, f) }

// close runs the cleanups, the last registered first: the socket stops,
// the trash run is closed, gc.lock downgraded then released, db/reserved
// recreated.
func (c *collector) close() {
	for i := len(c.cleanups) - 1; i >= 0; i-- {
		c.cleanups[i]()
	}
	c.cleanups = nil
}

// newPlan prepares the store for the action (abandoned trash, reserved
// space, gc.lock, the gc socket) and computes the plan.
func (c *collector) newPlan(ctx context.Context) (*Plan, error) {
	onWait := func() { c.progress.Info("waiting for the big garbage collector lock...") }
	if c.deleting {
		// Runs that did not finish leave their trash: empty it first (it
		// was invalidated before it was moved).
		if err := c.emptyAbandonedTrash(ctx, onWait); err != nil {
			return nil, err
		}
		// Free the reserved space first (callers should already have, with
		// ReleaseReserved, before opening the DB), so that a full disk
		// cannot stop SQLite from committing the invalidations.
		if err := ReleaseReserved(c.lay); err != nil {
			c.warn("%v", err)
		}
		c.addCleanup(c.recreateReserved)
	}

	c.startPhase("lock", -1)
	var gcLock *lock.FileLock
	var err error
	if c.deleting {
		gcLock, err = lock.AcquireGCLock(ctx, c.lay.StateDir, lock.Exclusive, true, onWait)
		if err != nil {
			return nil, fmt.Errorf("gc: taking %s: %w", c.lay.GCLockPath(), err)
		}
	} else {
		// A query takes gc.lock shared, so that no collector changes the
		// store under it, but it needs no write access: without one it
		// runs unlocked (a snapshot, like any read).
		gcLock, err = lock.AcquireGCLockReadOnly(ctx, c.lay.StateDir, lock.Shared, true, onWait)
		if err != nil {
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			gcLock = nil
		}
	}
	c.gcLock = gcLock
	c.addCleanup(func() { gcLock.Release() })
	c.lockedAt = time.Now()
	c.exclusive = c.deleting
	c.addCleanup(c.endExclusive)
	c.addCleanup(c.closeTrash)

	if c.deleting && c.o.FreeTarget != nil {
		avail, total, err := storeFreeSpace(c.lay, c.s.Settings.GCReservedSpace)
		if err != nil {
			return nil, err
		}
		c.res.FreeBytes = &avail
		collect, max := c.o.FreeTarget(avail, total)
		if !collect {
			c.enough, c.res.EnoughFree = true, true
			return &Plan{c: c, p: &plan{limit: -1}}, nil
		}
		if max > 0 && (c.o.MaxFreed == 0 || max < c.o.MaxFreed) {
			c.o.MaxFreed = max
		}
	}

	if c.deleting {
		c.srv, err = startServer(c, c.lay.GCSocketPath())
		if err != nil {
			return nil, fmt.Errorf("gc: serving %s: %w", c.lay.GCSocketPath(), err)
		}
		c.addCleanup(c.stopServer)
	}

	p, err := c.computePlan(ctx)
	if err != nil {
		return nil, err
	}
	c.tallyStore(p)
	pl := &Plan{Roots: p.roots, Graph: c.g, c: c, p: p}
	switch {
	case c.o.Action == PrintDead:
		pl.Dead = p.names(c)
		c.res.Dead = pl.Dead
	case c.o.Action == PrintLive:
		pl.Live = c.liveNames(p)
		c.res.Live = pl.Live
	case c.o.DryRun:
		pl.Dead = p.names(c)
		c.res.Dead = pl.Dead
		c.startPhase("size", int64(len(pl.Dead)))
		pl.BytesFreed, err = c.measure(ctx, p)
		c.res.BytesFreed = pl.BytesFreed
		if err != nil {
			return nil, err
		}
	case c.o.MaxFreed > 0:
		c.startPhase("size", -1)
		if err := c.limit(ctx, p); err != nil {
			return nil, err
		}
	}
	return pl, nil
}

// stopServer stops serving the gc socket (once).
func (c *collector) stopServer() {
	if c.srv != nil {
		c.srv.stop()
		c.srv = nil
	}
}

// endExclusive downgrades gc.lock to shared once the store is no longer
// changed: another collector (ours or Nix's) still waits until the trash
// is deleted, Nix clients registering roots go on.
func (c *collector) endExclusive() {
	if !c.exclusive {
		return
	}
	c.exclusive = false
	if err := c.gcLock.Downgrade(); err != nil {
		// Cannot happen on Linux (nothing conflicts with a lock held
		// exclusively). Without gc.lock the deletion is still correct,
		// but a Nix collector starting now may stumble on the trash.
		c.warn("downgrading %s: %v; releasing it", c.lay.GCLockPath(), err)
		c.gcLock.Release()
	}
	c.res.LockHeldSeconds = time.Since(c.lockedAt).Seconds()
}

// execute deletes what p says; newPlan has taken gc.lock exclusively and
// started the socket server.
func (c *collector) execute(ctx context.Context, p *plan) error {
	if c.enough {
		return nil
	}
	ierr := c.invalidateAndMove(ctx, p)
	c.stopServer()
	c.endExclusive()
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
	id    graph.PathID // valid path, or graph.NoPath
	isSP  bool         // parses as a store path
	valid bool
}

// plan is what a collection would delete.
type plan struct {
	roots   *roots.Result
	dead    []bool         // valid paths, by PathID
	deadIDs []graph.PathID // the same, in deletion order
	comps   [][]graph.PathID
	others  []entry // invalid or non-store-path entries to delete, sorted
	present []bool  // valid paths present in the store directory
	// protected: present invalid entries kept by temporary roots.
	protected []string
	// limit: with MaxFreed, only comps[:limit] are deleted (-1: all).
	limit int
}

// tallyStore records in the result the valid paths and the dead ones
// the plan found, with their NAR sizes; deletion subtracts what it
// invalidates (deleteBatches' mover).
func (c *collector) tallyStore(p *plan) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.res.PathsValid, c.res.ValidNarBytes = c.g.Len(), 0
	c.res.PathsDeadLeft, c.res.DeadNarBytesLeft = 0, 0
	for id := 0; id < c.g.Len(); id++ {
		c.res.ValidNarBytes += c.g.NarSize[id]
		if p.dead[id] {
			c.res.PathsDeadLeft++
			c.res.DeadNarBytesLeft += c.g.NarSize[id]
		}
	}
}

func (p *plan) names(c *collector) []string {
	var out []string
	for _, name := range p.entryNames(c) {
		out = append(out, c.lay.StoreDir+"/"+name)
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
		if c.live.Alive(graph.PathID(id)) {
			out = append(out, c.g.Path(graph.PathID(id)))
		}
	}
	for _, e := range p.protected {
		out = append(out, c.lay.StoreDir+"/"+e)
	}
	sort.Strings(out)
	return out
}

// computePlan finds the roots, loads the graph, computes liveness and
// returns what to delete. It runs with gc.lock held.
func (c *collector) computePlan(ctx context.Context) (*plan, error) {
	// The store dir listing and the roots do not depend on the graph:
	// read them while the DB is read. (Listing before the graph is as
	// safe as after: a name listed but registered after the graph was
	// loaded is protected by the temporary root its builder registers
	// through our socket first, as Nix's protocol requires.)
	type listing struct {
		names []string
		err   error
	}
	listed := make(chan listing, 1)
	go func() {
		names, err := readStoreDir(c.lay.RealStoreDir)
		listed <- listing{names, err}
	}()
	type found struct {
		rr   *roots.Result
		temp lock.TempRootsScan
		err  error
	}
	rootsFound := make(chan found, 1)
	go func() {
		// Strict: a root it may not read stops a deleting collection
		// (Nix skips it and deletes what it roots).
		rr, err := roots.Find(ctx, c.s, roots.Options{NoTemp: true, ProcDir: c.o.ProcDir, Strict: c.deleting})
		if err != nil {
			rootsFound <- found{err: fmt.Errorf("gc: finding roots: %w (nothing was deleted)", err)}
			return
		}
		// Like Nix's collector, remove stale temp-roots files of dead
		// processes, but only when we are the (exclusive) collector.
		temp, err := lock.ReadTempRoots(c.lay.StateDir, c.deleting)
		if err != nil {
			rootsFound <- found{err: fmt.Errorf("gc: reading temporary roots: %w", err)}
			return
		}
		rootsFound <- found{rr: rr, temp: temp}
	}()

	c.startPhase("roots", -1)
	f := <-rootsFound
	if f.err != nil {
		return nil, f.err
	}
	rr, temp := f.rr, f.temp
	for _, n := range rr.Notes {
		if strings.HasPrefix(n.Message, "cannot read") {
			c.progress.Info(n.Message + ": '" + report.Name(n.Link) + "'")
		}
	}
	if len(temp.Errors) > 0 && c.deleting {
		return nil, fmt.Errorf("%w: %w (nothing was deleted)", ErrRootsUnknown, errors.Join(temp.Errors...))
	}

	c.startPhase("graph", -1)
	g, err := c.s.LoadGraph(ctx, db.GraphOptions{})
	if err != nil {
		return nil, err
	}
	c.g = g

	c.startPhase("liveness", int64(g.Len()))
	c.mu.Lock()
	defer c.mu.Unlock()
	// Every root first, then one breadth-first propagation: each live
	// path's chain is a shortest one from some root.
	c.live = graph.NewLiveness(graph.NewEdges(g, c.o.KeepOutputs, c.o.KeepDerivations))
	for _, r := range rr.Roots {
		if c.o.IgnoreRoots[r.Link] {
			continue
		}
		if id, ok := g.Lookup(r.Target); ok {
			c.live.AddRoot(id, r.String())
		}
	}
	for _, f := range temp.Files {
		for _, r := range f.Roots {
			base, err := storepath.Parse(c.lay.StoreDir, r)
			if err != nil {
				continue
			}
			c.tempHash[storepath.HashPart(base)] = true
		}
	}
	if len(c.tempHash) > 0 {
		for id := 0; id < g.Len(); id++ {
			name := g.Name(graph.PathID(id))
			if len(name) >= storepath.HashLen && c.tempHash[name[:storepath.HashLen]] {
				c.live.AddRoot(graph.PathID(id), "temporary root")
			}
		}
	}
	if c.o.KeepRecent > 0 {
		cutoff := c.o.Now.Add(-c.o.KeepRecent).Unix()
		for id := 0; id < g.Len(); id++ {
			if g.RegTime[id] >= cutoff {
				c.live.AddRoot(graph.PathID(id), fmt.Sprintf("registered within --keep-recent %s", c.o.KeepRecent))
			}
		}
	}
	c.live.Propagate()
	c.progress.Add(int64(g.Len()))

	c.startPhase("scan", -1)
	l := <-listed
	if l.err != nil {
		return nil, l.err
	}
	ents := l.names
	p := &plan{roots: rr, present: make([]bool, g.Len()), limit: -1}
	var starts []graph.PathID
	var candidates []entry
	for _, name := range ents {
		if name == ".links" || name == trashName {
			continue
		}
		e := entry{name: name, id: graph.NoPath}
		if storepath.ValidateBaseName(name) == nil {
			e.isSP = true
			if id, ok := g.Lookup(name); ok {
				e.id, e.valid = id, true
				p.present[id] = true
				starts = append(starts, id)
				continue
			}
			if c.tempHash[storepath.HashPart(name)] {
				p.protected = append(p.protected, name)
				continue
			}
		}
		candidates = append(candidates, e)
	}
	if c.deleting {
		// Valid paths registered and none on disk: the store's file
		// system is not mounted. That is no garbage.
		if err := store.CheckPresence(c.lay, store.Presence{Valid: g.Len(), Missing: g.Len() - len(starts), Names: ents}); err != nil {
			return nil, fmt.Errorf("gc: %w Nothing was deleted: mount the store's file system and run again; if its paths are really gone, drop their rows first with 'storekeeper verify --repair --allow-mass-drop'.", err)
		}
	}

	if c.o.Action == DeleteSpecific {
		if err := c.planSpecific(p, candidates); err != nil {
			return nil, err
		}
	} else {
		p.dead = c.live.DeadFrom(starts)
		p.others = candidates
	}
	p.comps = graph.DeletionOrder(g, p.dead)
	for _, comp := range p.comps {
		p.deadIDs = append(p.deadIDs, comp...)
	}
	sort.Slice(p.others, func(i, j int) bool { return p.others[i].name < p.others[j].name })
	return p, nil
}

// planSpecific implements --delete PATH...: like Nix, a path is deleted
// only if nothing outside the given set keeps it (no root, no live path,
// no referrer that is not also being deleted).
func (c *collector) planSpecific(p *plan, candidates []entry) error {
	want := map[string]bool{}
	byName := map[string]entry{}
	for _, e := range candidates {
		byName[e.name] = e
	}
	var ids []graph.PathID
	for _, path := range c.o.Paths {
		base, err := storepath.Parse(c.lay.StoreDir, path)
		if err != nil {
			return fmt.Errorf("%w: %q: %w", ErrNotInStore, path, err)
		}
		want[base] = true
		if id, ok := c.g.Lookup(base); ok {
			ids = append(ids, id)
			continue
		}
		if e, ok := byName[base]; ok {
			p.others = append(p.others, e)
			continue
		}
		if c.tempHash[storepath.HashPart(base)] {
			return fmt.Errorf("%w: %s is a temporary root of a running process", ErrAlive, path)
		}
		return fmt.Errorf("%w: %s is neither a valid path nor present in %s", ErrNotInStore, path, c.lay.RealStoreDir)
	}
	p.dead = make([]bool, c.g.Len())
	for _, id := range ids {
		if c.live.Alive(id) {
			return c.aliveError(id)
		}
		// Everything that keeps id must be in the set too.
		stack := []graph.PathID{id}
		seen := map[graph.PathID]bool{id: true}
		for len(stack) > 0 {
			v := stack[len(stack)-1]
			stack = stack[:len(stack)-1]
			var bad graph.PathID = graph.NoPath
			var badKind graph.EdgeKind
			c.live.Edges().Backward(v, func(u graph.PathID, k graph.EdgeKind) {
				if seen[u] {
					return
				}
				seen[u] = true
				if !want[c.g.Name(u)] && bad == graph.NoPath {
					bad, badKind = u, k
				}
				stack = append(stack, u)
			})
			if bad != graph.NoPath {
				return c.keptError(id, v, bad, badKind)
			}
		}
		for v := range seen {
			p.dead[v] = true
		}
	}
	return nil
}

// keptError is planSpecific's refusal of id: u, outside the set, keeps v
// (id, or a path of the set that keeps id) through an edge of kind k.
func (c *collector) keptError(id, v, u graph.PathID, k graph.EdgeKind) error {
	var why string
	switch k {
	case graph.KeepOutputs:
		why = fmt.Sprintf("%s, a derivation that lists %s as an output, keeps it (keep-outputs)", c.g.Path(u), c.g.Path(v))
	case graph.KeepDerivations:
		why = fmt.Sprintf("%s, an output built by %s, keeps it (keep-derivations)", c.g.Path(u), c.g.Path(v))
	default:
		why = fmt.Sprintf("%s refers to %s", c.g.Path(u), c.g.Path(v))
	}
	return fmt.Errorf("%w: cannot delete %s since it is still alive: %s; %s is not among the paths to delete (add it, or see what keeps it with 'storekeeper roots --why %s')",
		ErrAlive, c.g.Path(id), why, c.g.Path(u), c.g.Path(u))
}

// aliveError names the root that keeps id alive (quoted: a root's link
// is any user's file name) and a shortest chain from it, each edge with
// its kind.
func (c *collector) aliveError(id graph.PathID) error {
	root, chain, _ := c.live.Chain(id)
	var sb strings.Builder
	for i, st := range chain {
		if i > 0 {
			sb.WriteString(" -> ")
		}
		sb.WriteString(c.g.Path(st.ID))
		if st.Edge != graph.Root {
			sb.WriteString(" (" + st.Edge.String() + ")")
		}
	}
	return fmt.Errorf("%w: cannot delete %s since it is still alive: root %s keeps it alive through %s",
		ErrAlive, c.g.Path(id), report.Name(root), sb.String())
}

// readStoreDir lists the store directory's names, unsorted.
func readStoreDir(dir string) ([]string, error) {
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("gc: opening %s: %w", dir, err)
	}
	defer unix.Close(fd)
	ents, err := sys.ReadDirents(fd, nil)
	if err != nil {
		return nil, fmt.Errorf("gc: reading %s: %w", dir, err)
	}
	names := make([]string, len(ents))
	for i, e := range ents {
		names[i] = e.Name
	}
	return names, nil
}

// addTempRoot is called by the socket server for a new temporary root: it
// protects the path by hash part (so its .lock and other companions are
// protected too) and everything it keeps alive, then waits while any of
// that is being deleted right now. When it returns, nothing the root
// keeps alive will be deleted.
func (c *collector) addTempRoot(base string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	hash := storepath.HashPart(base)
	c.tempHash[hash] = true
	var marked []graph.PathID
	if c.live != nil {
		if id, ok := c.g.Lookup(base); ok {
			marked = c.markCollect(id, "temporary root (gc socket)")
		}
	}
	for c.pendingHash[hash] || c.anyPending(marked) {
		c.cond.Wait()
	}
}

// markCollect marks id alive and returns everything it keeps alive (the
// paths already alive too: one of them may be in the batch being deleted
// for a root that arrived just before), or nil if id was alive already.
func (c *collector) markCollect(id graph.PathID, reason string) []graph.PathID {
	var out []graph.PathID
	if c.live.Alive(id) {
		return nil
	}
	c.live.MarkRoot(id, reason)
	stack := []graph.PathID{id}
	seen := map[graph.PathID]bool{id: true}
	for len(stack) > 0 {
		v := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		out = append(out, v)
		c.live.Edges().Forward(v, func(w graph.PathID, _ graph.EdgeKind) {
			if !seen[w] {
				seen[w] = true
				stack = append(stack, w)
			}
		})
	}
	return out
}

func (c *collector) anyPending(ids []graph.PathID) bool {
	if len(c.pendingID) == 0 {
		return false
	}
	for _, id := range ids {
		if c.pendingID[id] {
			return true
		}
	}
	return false
}

// trashDir is where this store's dead directories wait for deletion.
func (c *collector) trashDir() string { return filepath.Join(c.lay.RealStoreDir, trashName) }
