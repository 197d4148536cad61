package roots

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sort"
	"strings"

	"storekeeper/graph"
	"storekeeper/lock"
	"storekeeper/report"
	"storekeeper/store"
	"storekeeper/store/db"
	"storekeeper/store/usage"
)

// ErrNotValid is wrapped by Why's error for a store path that is not a
// valid path of the store.
var ErrNotValid = errors.New("roots: not a valid path")

// Explanation answers "why is this path still alive?".
type Explanation struct {
	Path  string `json:"path"`
	Alive bool   `json:"alive"`
	// Root is the root that keeps Path alive (the first, in Find's order,
	// of the roots whose target starts Chain), and Chain a shortest chain
	// of paths from that root's target down to Path (no root is nearer),
	// each kept alive by the one before it through the edge it names.
	Root  *Root  `json:"root,omitempty"`
	Chain []Link `json:"chain,omitempty"`
	// Roots (WhyOptions.All) is every root that keeps Path alive, each
	// with a shortest chain from its own target: shortest chains first,
	// then by the root's "LINK -> TARGET".
	Roots []RootChain `json:"roots,omitempty"`
	// For a dead path: DeadWith counts the other paths a collection
	// deletes with it (the dead paths that keep it, through references
	// and the keep-* edges: Nix's collector deletes them together, and
	// 'gc --delete' needs them all), NarBytes is the sum of the NAR sizes
	// of the path and of those, and FreedBytes what deleting them all
	// frees on disk, counting hard links as gc does (a file also linked
	// from a path that stays frees nothing). All 0 for a live path.
	DeadWith   int    `json:"dead_with"`
	NarBytes   uint64 `json:"nar_bytes"`
	FreedBytes uint64 `json:"freed_bytes"`
}

// RootChain is one root that keeps a path alive and a shortest chain from
// its target to the path.
type RootChain struct {
	Root  Root   `json:"root"`
	Chain []Link `json:"chain"`
}

// Link is one path of a chain and the edge through which the path before
// it keeps it alive: "root" for the first (the root's target),
// "reference", "keep-outputs" (a derivation keeps its output) or
// "keep-derivations" (an output keeps its derivation).
type Link struct {
	Path string         `json:"path"`
	Edge graph.EdgeKind `json:"edge"`
}

// WhyOptions control Why.
type WhyOptions struct {
	// Roots chooses the roots considered (Strict and PruneStale are
	// ignored: Why changes nothing).
	Roots Options
	// KeepOutputs / KeepDerivations: nix.conf's keep-outputs and
	// keep-derivations, which add their edges to the references.
	KeepOutputs, KeepDerivations bool
	// All lists every root that keeps the path (Explanation.Roots).
	All bool
	// Jobs is the number of parallel walks measuring a dead path's bytes
	// (0: GOMAXPROCS).
	Jobs int
	// Progress receives WhyPaths' messages (nil: report.Discard): Info
	// when it starts waiting for a running collector (a collection can
	// take hours), and a Warn for each thing that may hide roots from
	// this user, so that a path it reports dead may be alive for the
	// collector (see WhyPaths).
	Progress report.Progress
}

// Why explains why path is alive; it is WhyPaths for one path, returning
// that path's error.
func Why(ctx context.Context, s *store.Store, path string, o WhyOptions) (*Explanation, error) {
	es, errs, err := WhyPaths(ctx, s, []string{path}, o)
	if err != nil {
		return nil, err
	}
	if errs[0] != nil {
		return nil, errs[0]
	}
	return es[0], nil
}

// WhyPaths explains why each of paths is alive: a store path, a path
// below one (which stands for its store path) or a symlink to either,
// read as nix-store -q --roots reads its argument
// (store.Layout.FollowLinksToStorePath). It finds the roots and loads
// the reference graph once for all of them, and computes the collector's
// liveness once (graph.Liveness, breadth first from every root at once,
// through the references and the keep-* edges): each live path gets a
// shortest chain from the nearest root; with o.All, one backward search
// from the path (graph.Reach) gives every root that keeps it its own
// shortest chain. A valid path no root keeps is reported dead, with the
// dead paths deleted with it and the bytes deleting them all frees
// (store/usage: hard links counted as gc counts them). A path that is
// not valid yet but that temporary roots name (being built or copied)
// is alive, kept by them, as the collector keeps it.
//
// Find may not see every root (see hiddenRoots): run by a user other
// than root, or with o.Roots leaving out runtime or temporary roots. Each
// potential root it could not read is a Warn on o.Progress, and, when
// some path is reported dead, one more Warn says why it may be alive for
// the collector.
//
// The result has, for each path in order, its explanation or its error
// (errs[i], wrapping ErrNotValid or storepath.ErrBadStorePath for a
// path that is not a valid store path, or the error measuring a dead
// path's files): one path failing does not stop the others. err is set
// only when nothing could be explained (the roots, the database).
//
// Concurrency: it holds gc.lock shared while it reads (when the store
// lets it take the lock), so it waits for a running collector (saying
// so through o.Progress's Info) and no collector deletes anything under it; roots and
// the graph are each one consistent snapshot (read at the same time, in
// two goroutines, both ended before it returns). It changes nothing. Cancellation: ctx stops
// it, holding nothing.
func WhyPaths(ctx context.Context, s *store.Store, paths []string, o WhyOptions) (es []*Explanation, errs []error, err error) {
	lay := s.Layout
	pr := o.Progress
	if pr == nil {
		pr = report.Discard
	}
	gcLock, err := readGCLock(ctx, lay, pr)
	if err != nil {
		return nil, nil, err
	}
	defer gcLock.Release()

	ro := o.Roots
	ro.PruneStale, ro.Strict = false, false
	// The roots' search (mostly system calls: /proc, gcroots) runs while
	// the graph loads (mostly CPU); each stops on ctx.
	type found struct {
		rr  *Result
		err error
	}
	fc := make(chan found, 1)
	go func() {
		rr, err := Find(ctx, s, ro)
		fc <- found{rr, err}
	}()
	g, gerr := s.LoadGraph(ctx, db.GraphOptions{})
	f := <-fc
	if f.err != nil {
		return nil, nil, f.err
	}
	if gerr != nil {
		return nil, nil, gerr
	}
	rr := f.rr
	unread, unseen := hiddenRoots(lay, rr, o.Roots)
	for _, n := range unread {
		pr.Warn(fmt.Sprintf("%s: '%s'; a path kept only by roots there may be reported dead", n.Message, report.Name(n.Link)), n.Link)
	}
	x := newExplainer(g, rr.Roots, o)
	es, errs = make([]*Explanation, len(paths)), make([]error, len(paths))
	// The dead paths' sets are measured together once explained: each
	// entry once, however many sets it is in, in one parallel walk.
	type deadSet struct {
		i   int   // the argument
		idx []int // into names
	}
	var sets []deadSet
	var names []string
	nameIdx := map[graph.PathID]int{}
	for i, p := range paths {
		if err := ctx.Err(); err != nil {
			return nil, nil, err
		}
		sp, err := lay.FollowLinksToStorePath(p)
		if err != nil {
			errs[i] = fmt.Errorf("roots: %w", err)
			continue
		}
		id, ok := g.Lookup(sp)
		if !ok {
			if e := x.notYetValid(sp); e != nil {
				es[i] = e
				continue
			}
			errs[i] = fmt.Errorf("%w: %s is not registered in the store's database (collected already, or never built): nothing keeps it", ErrNotValid, sp)
			continue
		}
		e, dead := x.explain(id)
		if dead != nil {
			ds := deadSet{i: i, idx: make([]int, len(dead))}
			for k, v := range dead {
				j, ok := nameIdx[v]
				if !ok {
					j = len(names)
					nameIdx[v] = j
					names = append(names, g.Name(v))
				}
				ds.idx[k] = j
			}
			sets = append(sets, ds)
		}
		es[i] = e
	}
	if len(sets) > 0 {
		links, err := usage.LinkInodes(lay.LinksDir())
		if err != nil {
			return nil, nil, fmt.Errorf("roots: reading the store's .links: %w", err)
		}
		us, merr := usage.Measure(ctx, lay.RealStoreDir, names, o.Jobs, nil)
		if merr != nil && ctx.Err() != nil {
			return nil, nil, ctx.Err()
		}
		for _, ds := range sets {
			sub := make([]usage.Usage, len(ds.idx))
			var err error = merr
			if merr == nil {
				for k, j := range ds.idx {
					sub[k] = us[j]
				}
			} else { // which sets fail: each measured alone
				own := make([]string, len(ds.idx))
				for k, j := range ds.idx {
					own[k] = names[j]
				}
				if sub, err = usage.Measure(ctx, lay.RealStoreDir, own, o.Jobs, nil); err != nil && ctx.Err() != nil {
					return nil, nil, ctx.Err()
				}
			}
			if err != nil {
				errs[ds.i] = fmt.Errorf("roots: measuring what deleting %s frees: %w", es[ds.i].Path, err)
				es[ds.i] = nil
				continue
			}
			es[ds.i].FreedBytes, _ = usage.Freed(sub, links)
		}
	}
	if len(unseen) > 0 {
		for _, e := range es {
			if e != nil && !e.Alive {
				pr.Warn("a path reported dead may still be kept by a root not seen here ("+strings.Join(unseen, "; ")+
					"): run 'roots why' as root, with runtime and temporary roots, for the collector's answer", "")
				break
			}
		}
	}
	return es, errs, nil
}

// readGCLock takes the big garbage collector lock shared, read-only,
// waiting (and saying so on p, as gc does) while a collection runs; an
// error only when ctx is done. Without access to the lock it is nil: a
// snapshot, like any read.
func readGCLock(ctx context.Context, lay store.Layout, p report.Progress) (*lock.FileLock, error) {
	onWait := func() { p.Info("waiting for the big garbage collector lock...") }
	gcLock, err := lock.AcquireGCLockReadOnly(ctx, lay.StateDir, lock.Shared, true, onWait)
	if err != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, nil
	}
	return gcLock, nil
}

// hiddenRoots says what may have hidden roots from Find's result, so
// that a path reported dead may be alive for the collector (run as
// root, it sees every root): unread are Find's notes on the potential
// roots it could not read (a symlink in a private home directory that a
// gcroots/auto link names, a temp-roots file), and unseen the reasons,
// as phrases: those roots, for a user other than root looking for
// runtime roots the other users' processes (the kernel shows no one
// else's open files, maps or environment; Find skips them silently, as
// Nix does), and the kinds of roots o left out.
func hiddenRoots(lay store.Layout, rr *Result, o Options) (unread []Note, unseen []string) {
	for _, n := range rr.Notes {
		if hidesRoots(lay, n) {
			unread = append(unread, n)
		}
	}
	if len(unread) > 0 {
		unseen = append(unseen, fmt.Sprintf("%d potential roots could not be read", len(unread)))
	}
	if uid := os.Geteuid(); uid != 0 && !o.NoRuntime {
		unseen = append(unseen, fmt.Sprintf("running as %s, not root: the processes of other users cannot be inspected for runtime roots", report.Name(UserName(uint32(uid)))))
	}
	if o.NoRuntime {
		unseen = append(unseen, "runtime roots were not looked for")
	}
	if o.NoTemp {
		unseen = append(unseen, "temporary roots were not read")
	}
	return unread, unseen
}

// unreadRoot reports whether n is Find's note on a potential root it
// could not read (roots.go's "cannot read potential root: ...").
func unreadRoot(n Note) bool { return strings.HasPrefix(n.Message, "cannot read potential root") }

// hidesRoots reports whether n says roots may have gone unseen: a
// potential root Find could not read, or a temp-roots file or directory
// it could not read (a build's paths it would keep).
func hidesRoots(lay store.Layout, n Note) bool {
	return unreadRoot(n) || n.Link == lay.TempRootsDir()
}

// explainer is what WhyPaths computes once for all its paths.
type explainer struct {
	g        *graph.Graph
	roots    []Root
	byTarget map[graph.PathID][]int // indices into roots, in Find's order
	live     *graph.Liveness
	edges    *graph.Edges
	all      bool         // WhyOptions.All
	reach    *graph.Reach // for All and dead paths' keepers; made on first use
}

// newExplainer computes the liveness of g under roots (in Find's order):
// O(paths + edges).
func newExplainer(g *graph.Graph, roots []Root, o WhyOptions) *explainer {
	e := graph.NewEdges(g, o.KeepOutputs, o.KeepDerivations)
	x := &explainer{g: g, roots: roots, byTarget: map[graph.PathID][]int{}, live: graph.NewLiveness(e), edges: e}
	for i, r := range roots {
		if rid, ok := g.Lookup(r.Target); ok {
			x.byTarget[rid] = append(x.byTarget[rid], i)
			x.live.AddRoot(rid, r.String())
		}
	}
	x.live.Propagate()
	if o.All {
		x.all, x.reach = true, graph.NewReach(e)
	}
	return x
}

// reacher is the explainer's Reach, made on first use (O(paths) memory,
// once).
func (x *explainer) reacher() *graph.Reach {
	if x.reach == nil {
		x.reach = graph.NewReach(x.edges)
	}
	return x.reach
}

// explain explains id; for a dead path it also returns the dead paths a
// collection deletes with it, id first (to measure).
func (x *explainer) explain(id graph.PathID) (*Explanation, []graph.PathID) {
	g := x.g
	e := &Explanation{Path: g.Path(id)}
	_, chain, alive := x.live.Chain(id)
	if !alive {
		// Its keepers, all dead as it is: one backward search, O(what
		// they are and their edges) with the Reach's arrays reused (and
		// the reverse index built once in O(edges)), never O(paths) per
		// dead path.
		r := x.reacher()
		r.To(id)
		dead := append([]graph.PathID(nil), r.Visited()...)
		e.DeadWith = len(dead) - 1
		for _, v := range dead {
			e.NarBytes += g.NarSize[v]
		}
		return e, dead
	}
	e.Alive = true
	r := x.roots[x.byTarget[chain[0].ID][0]]
	e.Root, e.Chain = &r, x.links(chain)
	if x.all {
		x.reach.ToAmong(id, x.live.AliveSet()) // a chain from a root holds live paths only
		for rid, idx := range x.byTarget {
			if _, ok := x.reach.Dist(rid); !ok {
				continue
			}
			c := x.links(x.reach.Chain(rid))
			for _, i := range idx {
				e.Roots = append(e.Roots, RootChain{Root: x.roots[i], Chain: c})
			}
		}
		sort.Slice(e.Roots, func(i, j int) bool {
			a, b := e.Roots[i], e.Roots[j]
			if len(a.Chain) != len(b.Chain) {
				return len(a.Chain) < len(b.Chain)
			}
			return a.Root.String() < b.Root.String()
		})
	}
	return e, nil
}

// notYetValid explains sp, a path that is not valid, when temporary
// roots name it (a build, substitution or copy is putting it in the
// store: the collector keeps it, and what it will refer to is not known
// yet): alive, kept by the first such root in Find's order, its chain
// the path alone; with All, every such root. Nil when no root names it.
func (x *explainer) notYetValid(sp string) *Explanation {
	var e *Explanation
	for _, r := range x.roots {
		if r.Target != sp {
			continue
		}
		c := []Link{{Path: sp, Edge: graph.Root}}
		if e == nil {
			r := r
			e = &Explanation{Path: sp, Alive: true, Root: &r, Chain: c}
		}
		if x.all {
			e.Roots = append(e.Roots, RootChain{Root: r, Chain: c})
		}
	}
	if e != nil {
		sort.Slice(e.Roots, func(i, j int) bool { return e.Roots[i].Root.String() < e.Roots[j].Root.String() })
	}
	return e
}

func (x *explainer) links(steps []graph.Step) []Link {
	out := make([]Link, len(steps))
	for i, st := range steps {
		out[i] = Link{Path: x.g.Path(st.ID), Edge: st.Edge}
	}
	return out
}
