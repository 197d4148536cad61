package roots

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"

	"storekeeper/graph"
	"storekeeper/report"
	"storekeeper/store"
	"storekeeper/store/db"
	"storekeeper/store/usage"
)

// RootSize is what one root keeps and what removing it alone frees.
type RootSize struct {
	Root
	// The root's closure: every path it keeps alive (through references
	// and the keep-* edges nix.conf enables), their NAR sizes, and their
	// bytes on disk (each file counted once, however many links it has).
	ClosurePaths    int    `json:"closure_paths"`
	ClosureNarBytes uint64 `json:"closure_nar_bytes"`
	ClosureBytes    uint64 `json:"closure_bytes"`
	// What a collection deletes once this root alone is removed: the
	// paths it dominates (no other root keeps them), their NAR sizes, and
	// the bytes that frees on disk, hard links counted as gc counts them.
	// Dead paths are not included (see SizeReport.DeadBytes).
	FreedPaths    int    `json:"freed_paths"`
	FreedNarBytes uint64 `json:"freed_nar_bytes"`
	FreedBytes    uint64 `json:"freed_bytes"`
	// Freed lists those paths, sorted (only with SizeOptions.ListFreed).
	Freed []string `json:"freed,omitempty"`
	// Profile generations: the profile (its full path), the generation's
	// number, and whether it is the profile's current generation.
	Profile    string `json:"profile,omitempty"`
	Generation int    `json:"generation,omitempty"`
	Current    bool   `json:"current,omitempty"`
}

// ProfileSize groups the generations of one profile.
type ProfileSize struct {
	Profile string `json:"profile"`
	// Current is the number of the current generation (0 if the
	// profile's link names none of them).
	Current     int              `json:"current"`
	Generations []GenerationSize `json:"generations"`
}

// GenerationSize is one generation of a profile: its root's sizes.
type GenerationSize struct {
	Generation   int    `json:"generation"`
	Current      bool   `json:"current,omitempty"`
	Link         string `json:"link"`
	ClosurePaths int    `json:"closure_paths"`
	ClosureBytes uint64 `json:"closure_bytes"`
	FreedPaths   int    `json:"freed_paths"`
	FreedBytes   uint64 `json:"freed_bytes"`
}

// SharedSize is a top node of the dominator tree that is no root's: a
// live path two or more roots keep, with what it dominates (the paths
// only it, through those roots, keeps alive). Removing every root that
// keeps it frees these bytes; removing one of them frees none of it.
type SharedSize struct {
	Path       string `json:"path"`
	Paths      int    `json:"paths"`
	NarBytes   uint64 `json:"nar_bytes"`
	FreedBytes uint64 `json:"freed_bytes"`
	// Roots are the indices in SizeReport.Roots of the roots whose
	// closure holds it.
	Roots []int `json:"roots"`
}

// SizeReport is what every root costs.
type SizeReport struct {
	// Roots, largest FreedBytes first (then largest closure, then by
	// link).
	Roots []RootSize `json:"roots"`
	// Profiles: the generations of each profile, by number.
	Profiles []ProfileSize `json:"profiles,omitempty"`
	// Shared: the largest shared top nodes (at most SizeOptions.MaxShared),
	// largest FreedBytes first; SharedTotal counts them all.
	Shared      []SharedSize `json:"shared,omitempty"`
	SharedTotal int          `json:"shared_total"`
	// The dead paths (valid paths no root keeps), and with
	// SizeOptions.MeasureDead (DeadMeasured) what deleting them all, and
	// the .links entries nothing links to any more, frees on disk now:
	// what a collection frees before any root is removed, but for the
	// store entries that are not valid paths (a failed build's
	// leftovers), which a collection deletes too and which are not
	// measured here ('storekeeper gc --dry-run' counts them).
	DeadPaths    int        `json:"dead_paths"`
	DeadNarBytes uint64     `json:"dead_nar_bytes"`
	DeadBytes    uint64     `json:"dead_bytes"`
	DeadMeasured bool       `json:"dead_measured"`
	Totals       SizeTotals `json:"totals"`
	// Notes from the roots' search (roots that could not be read, roots
	// of invalid paths).
	Notes []Note `json:"notes,omitempty"`
	// Warnings say what makes the freed numbers possibly too high: roots
	// that could not be read, and, when not run as root, other users'
	// processes not searched for runtime roots (a path only they keep is
	// counted as freed here, but the collector keeps it).
	Warnings []string `json:"warnings,omitempty"`
}

// sizeRuntimeWarning is the warning of a run by a user other than root
// that searched the processes for runtime roots.
const sizeRuntimeWarning = "not running as root: other users' processes were not searched for runtime roots; " +
	"a path only they hold counts here as freed, but the collector keeps it"

// SizeTotals sums up the store.
type SizeTotals struct {
	Roots int `json:"roots"`
	// Paths is every valid path, live or dead.
	Paths int `json:"paths"`
	// The live paths (what the roots keep together), their NAR sizes and
	// bytes on disk (each file once).
	LivePaths    int    `json:"live_paths"`
	LiveNarBytes uint64 `json:"live_nar_bytes"`
	LiveBytes    uint64 `json:"live_bytes"`
	// What the roots free each alone, added up (a root's freed bytes are
	// counted once; what several roots share is in none of them).
	FreedPaths int    `json:"freed_paths"`
	FreedBytes uint64 `json:"freed_bytes"`
}

// SizeOptions control Size.
type SizeOptions struct {
	// Roots chooses the roots considered (Strict and PruneStale are
	// ignored: Size changes nothing).
	Roots Options
	// KeepOutputs / KeepDerivations: nix.conf's keep-outputs and
	// keep-derivations, which add their edges to the references.
	KeepOutputs, KeepDerivations bool
	// Jobs is the number of parallel walks measuring the paths' files
	// (0: GOMAXPROCS).
	Jobs int
	// MaxShared bounds SizeReport.Shared (0: 50; negative: none).
	MaxShared int
	// ListFreed fills in RootSize.Freed, the paths each root frees.
	ListFreed bool
	// MeasureDead measures the dead paths' files too (DeadBytes), and
	// counts their links among those that go: a file a root's path shares
	// with a dead path is then counted as freed with the root (the dead
	// path goes in the same collection). Without it only the live paths
	// are measured (on a store never collected, a small part of it), and
	// such a file counts as staying.
	MeasureDead bool
	// Progress receives the phases and a step per path measured (nil:
	// report.Discard).
	Progress report.Progress
}

// genLinkName is a profile generation's link name: PROFILE-N-link.
var genLinkName = regexp.MustCompile(`^(.*)-([0-9]+)-link$`)

// Size says, for every root Find finds (each link its own root: two
// links to one path each free nothing of it), its closure and what
// removing that root alone would free: the paths it dominates in the
// liveness graph seen from all the roots (graph.Dominators), and their
// bytes on disk, counting hard links exactly as the collector does: a
// file with several links frees its blocks only when every one of its
// links is in a path that goes, in .links, or (with o.MeasureDead) in a
// dead path; a file also linked from a path that stays (or from outside
// the store) frees nothing. For each such file, its blocks are counted at
// the nearest common dominator of the live paths holding it, and a
// root's freed bytes are the sum over the nodes it dominates; so a file
// shared by two roots' paths is freed by neither alone.
//
// Dead paths are reported once (DeadPaths; with o.MeasureDead DeadBytes,
// what deleting them frees now) and never attributed to a root; a
// collection after removing root r frees DeadBytes + r.FreedBytes (with
// o.MeasureDead; without it, at least r.FreedBytes besides the dead
// paths' own), plus what it deletes that is no valid path (leftovers;
// and without o.MeasureDead, unused .links entries). Bytes are files' and symlinks' allocated
// blocks, as the collector counts what it frees; the directories' own
// blocks, which the file system also gets back, are not counted. Every live path's files (with o.MeasureDead every valid
// path's) are measured once, in parallel (store/usage), and the roots'
// closures are read from the graph loaded once.
//
// Concurrency: it holds gc.lock shared while it reads (when the store
// lets it take the lock), so it waits for a running collector (saying
// so through o.Progress's Info) and no
// collector deletes anything under it; roots, the graph and the files are
// each read once, and a build or optimise running meanwhile may make the
// numbers slightly stale. It changes nothing and needs no write access.
// Cancellation: ctx stops it, holding nothing.
func Size(ctx context.Context, s *store.Store, o SizeOptions) (*SizeReport, error) {
	p := o.Progress
	if p == nil {
		p = report.Discard
	}
	lay := s.Layout
	gcLock, err := readGCLock(ctx, lay, p)
	if err != nil {
		return nil, err
	}
	defer gcLock.Release()

	p.Phase("finding roots", -1, false)
	ro := o.Roots
	ro.PruneStale, ro.Strict = false, false
	rr, err := Find(ctx, s, ro)
	if err != nil {
		return nil, err
	}
	p.Phase("loading the graph", -1, false)
	g, err := s.LoadGraph(ctx, db.GraphOptions{})
	if err != nil {
		return nil, err
	}
	e := graph.NewEdges(g, o.KeepOutputs, o.KeepDerivations)
	targets := make([]graph.PathID, len(rr.Roots))
	for i, r := range rr.Roots {
		id, ok := g.Lookup(r.Target)
		if !ok {
			id = graph.NoPath // gone since Find checked it
		}
		targets[i] = id
	}
	dt := graph.Dominators(e, targets)

	n := g.Len()
	var names []string
	var ids []graph.PathID
	for id := 0; id < n; id++ {
		if o.MeasureDead || dt.Reached(dt.PathNode(graph.PathID(id))) {
			names = append(names, g.Name(graph.PathID(id)))
			ids = append(ids, graph.PathID(id))
		}
	}
	p.Phase("measuring paths", int64(len(names)), false)
	measured, err := usage.Measure(ctx, lay.RealStoreDir, names, o.Jobs, func() { p.Add(1) })
	if err != nil {
		return nil, fmt.Errorf("roots: measuring the store's paths: %w", err)
	}
	us := make([]usage.Usage, n)
	for k, id := range ids {
		us[id] = measured[k]
	}
	names, measured = nil, nil
	links, err := usage.LinkInodes(lay.LinksDir())
	if err != nil {
		return nil, fmt.Errorf("roots: reading the store's .links: %w", err)
	}
	// With the dead paths: the .links entries nothing else links to any
	// more, which the collector removes too.
	var unusedLinks uint64
	if o.MeasureDead {
		unusedLinks, err = usage.UnusedLinks(ctx, lay.LinksDir())
		if err != nil {
			return nil, fmt.Errorf("roots: measuring the store's .links: %w", err)
		}
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	p.Phase("adding up", -1, false)
	a := newSizer(g, e, dt, us, links, o.MeasureDead)
	rep := a.report(rr, targets, o.MaxShared, o.ListFreed)
	rep.DeadBytes += unusedLinks
	rep.Warnings = sizeWarnings(lay, rr.Notes, !ro.NoRuntime && os.Geteuid() != 0)
	return rep, ctx.Err()
}

// sizeWarnings lists what may make the freed numbers too high: each root
// or temp-roots file Find could not read (its note), and with partialRuntime the runtime
// roots of other users' processes, not searched.
func sizeWarnings(lay store.Layout, notes []Note, partialRuntime bool) []string {
	var out []string
	for _, n := range notes {
		if hidesRoots(lay, n) {
			out = append(out, n.Link+": "+n.Message+": a path only this root keeps counts here as freed, but the collector keeps it")
		}
	}
	if partialRuntime {
		out = append(out, sizeRuntimeWarning)
	}
	return out
}

// sizer holds what Size computes on the graph and the measured files.
type sizer struct {
	g  *graph.Graph
	e  *graph.Edges
	dt *graph.DomTree
	us []usage.Usage

	// Per node: the bytes freed, paths and NAR bytes, summed over the
	// dominator tree.
	bytes, paths, nar []uint64

	// The files with several links, densely numbered: their blocks, and
	// per path (CSR) the numbers of those it holds.
	inoBlocks []uint64
	inoOff    []uint32
	inoIdx    []uint32

	deadPaths    int
	deadNar      uint64
	deadBytes    uint64
	deadMeasured bool
	liveNar      uint64
	livePaths    int
	liveBytesAll uint64
}

// newSizer attributes every live path's and every file's bytes to their
// node of the dominator tree and sums them up the tree.
//
// us has a Usage per path; without measuredDead the dead paths' are empty.
func newSizer(g *graph.Graph, e *graph.Edges, dt *graph.DomTree, us []usage.Usage, links map[uint64]bool, measuredDead bool) *sizer {
	n := g.Len()
	z := &sizer{g: g, e: e, dt: dt, us: us}
	total := dt.Len()
	z.bytes, z.paths, z.nar = make([]uint64, total), make([]uint64, total), make([]uint64, total)

	// Every multi-link file: its links seen in the store's paths (live
	// and dead), and the nearest common dominator of the live paths
	// holding it.
	type file struct {
		nlink, seen uint64
		blocks      uint64
		lca         graph.Node
	}
	fileOf := map[uint64]uint32{} // inode -> its number
	var files []file
	var dead []usage.Usage
	z.inoOff = make([]uint32, n+1)
	for id := 0; id < n; id++ {
		node := dt.PathNode(graph.PathID(id))
		live := dt.Reached(node)
		u := us[id]
		if !live {
			z.deadPaths++
			z.deadNar += g.NarSize[id]
			dead = append(dead, u)
		} else {
			z.livePaths++
			z.liveNar += g.NarSize[id]
			z.bytes[node] += u.Single
			z.paths[node] = 1
			z.nar[node] = g.NarSize[id]
			z.liveBytesAll += u.Single
		}
		for _, m := range u.Multi {
			k, ok := fileOf[m.Ino]
			if !ok {
				k = uint32(len(files))
				fileOf[m.Ino] = k
				files = append(files, file{lca: graph.NoNode})
			}
			f := &files[k]
			f.nlink, f.blocks = m.Nlink, m.Blocks
			f.seen += m.Seen
			if live {
				if f.lca == graph.NoNode {
					f.lca = node
				} else {
					f.lca = dt.LCA(f.lca, node)
				}
				z.inoIdx = append(z.inoIdx, k)
			}
		}
		z.inoOff[id+1] = uint32(len(z.inoIdx))
	}
	z.inoBlocks = make([]uint64, len(files))
	for ino, k := range fileOf {
		f := &files[k]
		z.inoBlocks[k] = f.blocks
		if f.lca == graph.NoNode {
			continue // only in dead paths: DeadBytes has it
		}
		z.liveBytesAll += f.blocks
		accounted := f.seen
		if links[ino] {
			accounted++
		}
		if accounted >= f.nlink {
			z.bytes[f.lca] += f.blocks
		}
	}
	if measuredDead {
		z.deadBytes, _ = usage.Freed(dead, links)
		z.deadMeasured = true
	}
	dt.Sum(z.bytes)
	dt.Sum(z.paths)
	dt.Sum(z.nar)
	return z
}

// closure is the closure of one path: its paths, NAR bytes and disk
// bytes (each file once).
type closure struct {
	paths int
	nar   uint64
	bytes uint64
}

// closureWalker reads closures from the graph, reusing its marks: stamp
// per path and per file, so a walk costs what its closure holds.
type closureWalker struct {
	z        *sizer
	epoch    uint32
	seen     []uint32 // by path
	fileSeen []uint32 // by file number
	queue    []graph.PathID
	push     func(graph.PathID, graph.EdgeKind)
	// sharedAt is, by path, the index of the shared node it is in
	// SizeReport.Shared, or -1.
	sharedAt []int32
}

func newClosureWalker(z *sizer, sharedAt []int32) *closureWalker {
	w := &closureWalker{z: z, seen: make([]uint32, z.g.Len()), fileSeen: make([]uint32, len(z.inoBlocks)), sharedAt: sharedAt}
	w.push = func(x graph.PathID, _ graph.EdgeKind) {
		if w.seen[x] != w.epoch {
			w.seen[x] = w.epoch
			w.queue = append(w.queue, x)
		}
	}
	return w
}

// walk reads start's closure, and appends to shared the shared nodes in
// it.
func (w *closureWalker) walk(start graph.PathID, shared []int) (closure, []int) {
	z := w.z
	w.epoch++
	var c closure
	w.queue = append(w.queue[:0], start)
	w.seen[start] = w.epoch
	for i := 0; i < len(w.queue); i++ {
		v := w.queue[i]
		c.paths++
		c.nar += z.g.NarSize[v]
		c.bytes += z.us[v].Single
		for _, f := range z.inoIdx[z.inoOff[v]:z.inoOff[v+1]] {
			if w.fileSeen[f] != w.epoch {
				w.fileSeen[f] = w.epoch
				c.bytes += z.inoBlocks[f]
			}
		}
		if k := w.sharedAt[v]; k >= 0 {
			shared = append(shared, int(k))
		}
		z.e.Forward(v, w.push)
	}
	return c, shared
}

// report builds the SizeReport: each root's sizes, the profiles' groups,
// the largest shared nodes.
func (z *sizer) report(rr *Result, targets []graph.PathID, maxShared int, listFreed bool) *SizeReport {
	g, dt := z.g, z.dt
	rep := &SizeReport{Notes: rr.Notes, DeadPaths: z.deadPaths, DeadNarBytes: z.deadNar, DeadBytes: z.deadBytes, DeadMeasured: z.deadMeasured,
		Totals: SizeTotals{Roots: len(rr.Roots), Paths: g.Len(), LivePaths: z.livePaths, LiveNarBytes: z.liveNar, LiveBytes: z.liveBytesAll}}

	// The shared top nodes: paths whose immediate dominator is the
	// super-root (two or more roots keep them).
	var shared []graph.Node
	for _, v := range dt.Order() {
		if _, ok := dt.Path(v); ok && dt.Idom(v) == graph.SuperRoot {
			shared = append(shared, v)
		}
	}
	rep.SharedTotal = len(shared)
	sort.Slice(shared, func(i, j int) bool {
		if z.bytes[shared[i]] != z.bytes[shared[j]] {
			return z.bytes[shared[i]] > z.bytes[shared[j]]
		}
		return shared[i] < shared[j]
	})
	switch {
	case maxShared == 0:
		maxShared = 50
	case maxShared < 0:
		maxShared = 0
	}
	shared = shared[:min(len(shared), maxShared)]
	sharedAt := make([]int32, g.Len())
	for i := range sharedAt {
		sharedAt[i] = -1
	}
	for i, v := range shared {
		id, _ := dt.Path(v)
		sharedAt[id] = int32(i)
		rep.Shared = append(rep.Shared, SharedSize{Path: g.Path(id), Paths: int(z.paths[v]), NarBytes: z.nar[v], FreedBytes: z.bytes[v], Roots: []int{}})
	}

	// Closures, one walk per distinct target.
	w := newClosureWalker(z, sharedAt)
	type tclosure struct {
		c      closure
		shared []int
	}
	byTarget := map[graph.PathID]*tclosure{}
	out := make([]RootSize, len(rr.Roots))
	for i, r := range rr.Roots {
		rs := RootSize{Root: r}
		node := dt.RootNode(i)
		rs.FreedBytes, rs.FreedNarBytes = z.bytes[node], z.nar[node]
		rs.FreedPaths = int(z.paths[node])
		if listFreed && rs.FreedPaths > 0 {
			dt.Dominated(node, func(v graph.Node) {
				if id, ok := dt.Path(v); ok {
					rs.Freed = append(rs.Freed, g.Path(id))
				}
			})
			sort.Strings(rs.Freed)
		}
		if t := targets[i]; t != graph.NoPath {
			tc := byTarget[t]
			if tc == nil {
				tc = &tclosure{}
				tc.c, tc.shared = w.walk(t, nil)
				byTarget[t] = tc
			}
			rs.ClosurePaths, rs.ClosureNarBytes, rs.ClosureBytes = tc.c.paths, tc.c.nar, tc.c.bytes
		}
		out[i] = rs
		rep.Totals.FreedPaths += rs.FreedPaths
		rep.Totals.FreedBytes += rs.FreedBytes
	}
	generations(out)

	// Largest freed first; the shared nodes name the roots by their
	// index in the sorted list.
	perm := make([]int, len(out))
	for i := range perm {
		perm[i] = i
	}
	sort.SliceStable(perm, func(a, b int) bool {
		x, y := &out[perm[a]], &out[perm[b]]
		switch {
		case x.FreedBytes != y.FreedBytes:
			return x.FreedBytes > y.FreedBytes
		case x.ClosureBytes != y.ClosureBytes:
			return x.ClosureBytes > y.ClosureBytes
		case x.Link != y.Link:
			return x.Link < y.Link
		}
		return x.Target < y.Target
	})
	rep.Roots = make([]RootSize, len(out))
	for newIdx, old := range perm {
		rep.Roots[newIdx] = out[old]
		if t := targets[old]; t != graph.NoPath {
			for _, k := range byTarget[t].shared {
				rep.Shared[k].Roots = append(rep.Shared[k].Roots, newIdx)
			}
		}
	}
	for k := range rep.Shared {
		sort.Ints(rep.Shared[k].Roots)
	}
	rep.Profiles = profiles(rep.Roots)
	return rep
}

// generations fills in Profile, Generation and Current for the profile
// roots whose link is a generation's (PROFILE-N-link): the profile is
// PROFILE beside it, and the generation is current when the profile's
// symlink names it (read, not followed).
func generations(rs []RootSize) {
	current := map[string]string{} // profile -> the link name it names
	for i := range rs {
		r := &rs[i]
		if r.Kind != Profile {
			continue
		}
		dir, base := filepath.Split(r.Link)
		m := genLinkName.FindStringSubmatch(base)
		if m == nil {
			continue
		}
		num, err := strconv.Atoi(m[2])
		if err != nil {
			continue
		}
		profile := filepath.Join(dir, m[1])
		cur, ok := current[profile]
		if !ok {
			if t, err := os.Readlink(profile); err == nil {
				cur = filepath.Base(t)
			}
			current[profile] = cur
		}
		r.Profile, r.Generation, r.Current = profile, num, cur == base
	}
}

// profiles groups the generations by profile, profiles by name,
// generations by number.
func profiles(rs []RootSize) []ProfileSize {
	idx := map[string]int{}
	var out []ProfileSize
	for _, r := range rs {
		if r.Profile == "" {
			continue
		}
		k, ok := idx[r.Profile]
		if !ok {
			k = len(out)
			idx[r.Profile] = k
			out = append(out, ProfileSize{Profile: r.Profile})
		}
		ps := &out[k]
		ps.Generations = append(ps.Generations, GenerationSize{Generation: r.Generation, Current: r.Current, Link: r.Link,
			ClosurePaths: r.ClosurePaths, ClosureBytes: r.ClosureBytes, FreedPaths: r.FreedPaths, FreedBytes: r.FreedBytes})
		if r.Current {
			ps.Current = r.Generation
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Profile < out[j].Profile })
	for k := range out {
		sort.Slice(out[k].Generations, func(i, j int) bool { return out[k].Generations[i].Generation < out[k].Generations[j].Generation })
	}
	return out
}
