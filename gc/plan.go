package gc

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"sort"
	"strings"

	"golang.org/x/sys/unix"

	"storekeeper/internal/sys"
	"storekeeper/lock"
	"storekeeper/nix/storepath"
	"storekeeper/roots"
	"storekeeper/store"
	"storekeeper/store/db"
)

// trashName is the directory in the store dir where dead paths wait for
// deletion. It is not a store path name, so Nix's own collector would
// delete it, which is what it is for.
const trashName = "trash"

// plan finds the roots, loads the graph, computes liveness and returns
// what to delete. It runs with gc.lock held.
func (c *collector) plan(ctx context.Context) (*plan, error) {
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
			c.progress.Info(n.Message + ": " + n.Link)
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
	c.edg = newEdges(g, c.o.KeepOutputs, c.o.KeepDerivations)

	c.startPhase("liveness", int64(g.Len()))
	c.mu.Lock()
	defer c.mu.Unlock()
	c.live = newLiveness(c.edg)
	for _, r := range rr.Roots {
		if id, ok := g.Lookup(r.Target); ok {
			c.live.markRoot(id, r.String())
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
			name := g.Name(db.PathID(id))
			if len(name) >= storepath.HashLen && c.tempHash[name[:storepath.HashLen]] {
				c.live.markRoot(db.PathID(id), "temporary root")
			}
		}
	}
	if c.o.KeepRecent > 0 {
		cutoff := c.o.Now.Add(-c.o.KeepRecent).Unix()
		for id := 0; id < g.Len(); id++ {
			if g.RegTime[id] >= cutoff {
				c.live.markRoot(db.PathID(id), fmt.Sprintf("registered within --keep-recent %s", c.o.KeepRecent))
			}
		}
	}
	c.progress.Add(int64(g.Len()))

	c.startPhase("scan", -1)
	l := <-listed
	if l.err != nil {
		return nil, l.err
	}
	ents := l.names
	p := &plan{present: make([]bool, g.Len()), limit: -1}
	var starts []db.PathID
	var candidates []entry
	for _, name := range ents {
		if name == ".links" || name == trashName {
			continue
		}
		e := entry{name: name, id: db.NoPath}
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
		p.dead = c.live.deadFrom(starts)
		p.others = candidates
	}
	p.comps = deletionOrder(g, p.dead)
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
	var ids []db.PathID
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
		if c.live.alive[id] {
			return c.aliveError(id)
		}
		// Everything that keeps id must be in the set too.
		stack := []db.PathID{id}
		seen := map[db.PathID]bool{id: true}
		for len(stack) > 0 {
			v := stack[len(stack)-1]
			stack = stack[:len(stack)-1]
			var bad db.PathID = db.NoPath
			c.edg.backward(v, func(u db.PathID) {
				if seen[u] {
					return
				}
				seen[u] = true
				if !want[c.g.Name(u)] && bad == db.NoPath {
					bad = u
				}
				stack = append(stack, u)
			})
			if bad != db.NoPath {
				return fmt.Errorf("%w: cannot delete %s since it is still alive: %s refers to it (delete both, or find out why it is alive with 'storekeeper roots')",
					ErrAlive, c.g.Path(id), c.g.Path(bad))
			}
		}
		for v := range seen {
			p.dead[v] = true
		}
	}
	return nil
}

// explain fills Result.Why for Options.Paths[0].
func (c *collector) explain() error {
	if len(c.o.Paths) != 1 {
		return fmt.Errorf("gc: explain takes one path")
	}
	base, err := storepath.Parse(c.lay.StoreDir, c.o.Paths[0])
	if err != nil {
		// A path below a store path explains its store path.
		sp, _, err2 := storepath.ToStorePath(c.lay.StoreDir, c.o.Paths[0])
		if err2 != nil {
			return fmt.Errorf("%w: %q: %w", ErrNotInStore, c.o.Paths[0], err)
		}
		base, _ = storepath.Parse(c.lay.StoreDir, sp)
	}
	id, ok := c.g.Lookup(base)
	if !ok {
		return fmt.Errorf("%w: %s is not a valid path", ErrNotInStore, c.lay.StorePathOf(base))
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	e := &Explanation{Path: c.g.Path(id), Alive: c.live.alive[id]}
	if e.Alive {
		root, chain := c.live.chain(id)
		e.Root = root
		for _, v := range chain {
			e.Chain = append(e.Chain, c.g.Path(v))
		}
	}
	c.res.Why = e
	return nil
}

// aliveError names the root that keeps id alive and the chain to it.
func (c *collector) aliveError(id db.PathID) error {
	root, chain := c.live.chain(id)
	var names []string
	for _, v := range chain {
		names = append(names, c.g.Path(v))
	}
	return fmt.Errorf("%w: cannot delete %s since it is still alive: root %s keeps it alive through %s",
		ErrAlive, c.g.Path(id), root, strings.Join(names, " -> "))
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
	var marked []db.PathID
	if c.live != nil {
		if id, ok := c.g.Lookup(base); ok {
			marked = c.markCollect(id, "temporary root (gc socket)")
		}
	}
	for c.pendingHash[hash] || c.anyPending(marked) {
		c.cond.Wait()
	}
}

// markCollect marks id alive and returns the paths newly marked.
func (c *collector) markCollect(id db.PathID, reason string) []db.PathID {
	var out []db.PathID
	if c.live.alive[id] {
		return nil
	}
	c.live.markRoot(id, reason)
	// markRoot does not return the set; recompute it cheaply from why[]
	// is not possible, so walk the forward closure once more.
	stack := []db.PathID{id}
	seen := map[db.PathID]bool{id: true}
	for len(stack) > 0 {
		v := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		out = append(out, v)
		c.edg.forward(v, func(w db.PathID) {
			if !seen[w] {
				seen[w] = true
				stack = append(stack, w)
			}
		})
	}
	return out
}

func (c *collector) anyPending(ids []db.PathID) bool {
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
