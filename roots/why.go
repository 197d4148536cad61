package roots

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"storekeeper/graph"
	"storekeeper/lock"
	"storekeeper/nix/storepath"
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
// --roots reads its argument (whyTarget). It uses the roots Find finds,
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
	base, err := whyTarget(lay, path)
	if err != nil {
		return nil, err
	}
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

// FollowLinksToStorePath resolves a command-line argument naming a store
// path as whyTarget does (Nix's followLinksToStorePath, which `nix-store
// --repair-path` and `-q --roots` use): a store path, a file inside one,
// or a symlink outside the store (./result) read until it is inside it.
// It returns the full logical store path; an error wrapping
// storepath.ErrBadStorePath when the argument leads to no store path.
func FollowLinksToStorePath(lay store.Layout, arg string) (string, error) {
	base, err := whyTarget(lay, arg)
	if err != nil {
		return "", err
	}
	return lay.StorePathOf(base), nil
}

// maxWhyLinks bounds the symlinks whyTarget follows (the kernel's own
// bound for one path resolution).
const maxWhyLinks = 40

// whyTarget resolves Why's argument as Nix's followLinksToStorePath: made
// absolute (against the working directory) and canonical lexically ("a/.."
// is gone before the store path is taken, so "/nix/store/A/../B" is B and
// "/nix/store/A/.." is the store dir, no store path), then, while it is
// not inside the store, replaced by the target of the symlink it is (at
// most maxWhyLinks of them; links are only read, nothing is opened), and
// a path under the physical store dir (a chroot store seen from outside)
// read as the logical path it is. It returns the base name of the store
// path the result is in; an error wrapping storepath.ErrBadStorePath
// when it is in none.
func whyTarget(lay store.Layout, arg string) (string, error) {
	p, err := filepath.Abs(arg)
	if err != nil {
		return "", fmt.Errorf("roots: %q: %w", arg, err)
	}
	for hops := 0; ; hops++ {
		if !storepath.IsInStore(lay.StoreDir, p) && lay.RealStoreDir != lay.StoreDir && storepath.IsInStore(lay.RealStoreDir, p) {
			p = lay.StoreDir + p[len(lay.RealStoreDir):]
		}
		if storepath.IsInStore(lay.StoreDir, p) {
			break
		}
		if hops == maxWhyLinks {
			return "", fmt.Errorf("roots: %q: %w: more than %d symbolic links on the way to %s", arg, storepath.ErrBadStorePath, maxWhyLinks, lay.StoreDir)
		}
		t, err := os.Readlink(p)
		if err != nil {
			break // not a symlink (or none there): not in the store
		}
		if !filepath.IsAbs(t) {
			t = filepath.Join(filepath.Dir(p), t)
		}
		p = filepath.Clean(t)
	}
	sp, _, err := storepath.ToStorePath(lay.StoreDir, p)
	if err != nil {
		return "", fmt.Errorf("roots: %q: %w", arg, err)
	}
	return storepath.Parse(lay.StoreDir, sp)
}
