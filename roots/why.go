package roots

import (
	"context"
	"errors"
	"fmt"

	"storekeeper/graph"
	"storekeeper/lock"
	"storekeeper/store"
	"storekeeper/store/db"
)

// ErrNotValid is wrapped by Why's error for a store path that is not a
// valid path of the store.
var ErrNotValid = errors.New("roots: not a valid path")

// Explanation answers "why is this path still alive?".
type Explanation struct {
	Path  string `json:"path"`
	Alive bool   `json:"alive"`
	// Root is the root that keeps Path alive ("LINK -> PATH",
	// "{temp:PID} -> PATH"), and Chain a shortest chain of paths from
	// that root's target down to Path, each kept alive by the one before
	// it through the edge it names.
	Root  string `json:"root,omitempty"`
	Chain []Link `json:"chain,omitempty"`
	// For a dead path: DeadWith counts the other paths a collection
	// deletes with it (the dead paths that keep it, through references
	// and the keep-* edges: Nix's collector deletes them together, and
	// 'gc --delete' needs them all), and NarBytes is the sum of the NAR
	// sizes of the path and of those: about what deleting them frees
	// (less where files are hard-linked with paths that stay).
	DeadWith int    `json:"dead_with,omitempty"`
	NarBytes uint64 `json:"nar_bytes,omitempty"`
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
}

// Why explains why path is alive: a store path, a path below one (which
// stands for its store path) or a symlink to either, read as nix-store -q
// --roots reads its argument (store.Layout.FollowLinksToStorePath). It uses the roots Find finds,
// the reference graph and the keep-* edges, the collector's liveness
// (graph.Liveness, breadth first from every root at once), and a shortest
// chain from a root to path. A valid path no root keeps is reported not
// alive.
//
// Concurrency: it holds gc.lock shared while it reads (when the store
// lets it take the lock), so it waits for a running collector and no
// collector deletes anything under it; roots and the graph are each one
// consistent snapshot. It changes nothing. Cancellation: ctx stops it,
// holding nothing.
func Why(ctx context.Context, s *store.Store, path string, o WhyOptions) (*Explanation, error) {
	lay := s.Layout
	sp, err := lay.FollowLinksToStorePath(path)
	if err != nil {
		return nil, fmt.Errorf("roots: %w", err)
	}
	base := sp[len(lay.StoreDir)+1:]
	gcLock, err := lock.AcquireGCLockReadOnly(ctx, lay.StateDir, lock.Shared, true, nil)
	if err != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		gcLock = nil // no access to the lock: a snapshot, like any read
	}
	defer gcLock.Release()

	ro := o.Roots
	ro.PruneStale, ro.Strict = false, false
	rr, err := Find(ctx, s, ro)
	if err != nil {
		return nil, err
	}
	g, err := s.LoadGraph(ctx, db.GraphOptions{})
	if err != nil {
		return nil, err
	}
	id, ok := g.Lookup(base)
	if !ok {
		return nil, fmt.Errorf("%w: %s is not registered in the store's database (collected already, or never built): nothing keeps it", ErrNotValid, lay.StorePathOf(base))
	}
	live := graph.NewLiveness(graph.NewEdges(g, o.KeepOutputs, o.KeepDerivations))
	for _, r := range rr.Roots {
		if rid, ok := g.Lookup(r.Target); ok {
			live.AddRoot(rid, r.String())
		}
	}
	live.Propagate()
	e := &Explanation{Path: g.Path(id)}
	root, chain, alive := live.Chain(id)
	if !alive {
		// Its dead keepers: O(what they are), with the reverse index
		// built in O(edges), less than the graph's load.
		for v, d := range live.DeadFrom([]graph.PathID{id}) {
			if d {
				e.DeadWith++
				e.NarBytes += g.NarSize[v]
			}
		}
		e.DeadWith--
		return e, nil
	}
	e.Alive, e.Root = true, root
	for _, st := range chain {
		e.Chain = append(e.Chain, Link{Path: g.Path(st.ID), Edge: st.Edge})
	}
	return e, nil
}
