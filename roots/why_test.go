package roots_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"strings"
	"testing"

	"storekeeper/graph"
	"storekeeper/nix/nar"
	"storekeeper/nix/storepath"
	"storekeeper/roots"
	"storekeeper/store/storetest"
)

// whyModel is the liveness edges of a fixture, from what it registered
// (not from the graph package): u -> v with the kind of the edge.
func whyModel(b *storetest.Built, keepOutputs, keepDerivations bool) map[string]map[string]graph.EdgeKind {
	e := map[string]map[string]graph.EdgeKind{}
	add := func(u, v string, k graph.EdgeKind) {
		if u == v {
			return
		}
		if e[u] == nil {
			e[u] = map[string]graph.EdgeKind{}
		}
		if _, ok := e[u][v]; !ok {
			e[u][v] = k
		}
	}
	for p, refs := range b.Refs {
		for _, r := range refs {
			add(p, r, graph.Reference)
		}
	}
	for i, drv := range b.Drvs {
		for _, out := range b.Outputs[i] {
			if keepOutputs {
				add(drv, out, graph.KeepOutputs)
			}
			if keepDerivations && b.Deriver[out] == drv && strings.HasSuffix(drv, ".drv") {
				add(out, drv, graph.KeepDerivations)
			}
		}
	}
	return e
}

// TestWhyShortestChains: for every valid path of a fixture, under each
// keep-* setting, Why says alive exactly when the roots reach the path,
// and then gives a chain from a root's target whose every step is an edge
// of the kind it names (a reference first, where an edge is also a
// keep-* edge) and whose length is the shortest distance from
// any root (a breadth-first search over the fixture's own model); for a
// dead path, it counts the paths that keep it (which die with it) and
// sums their NAR sizes and its own.
func TestWhyShortestChains(t *testing.T) {
	b := storetest.MustBuild(t, storetest.Spec{Paths: 60, Seed: 21, MaxDeps: 4, Files: 1, FileSize: 16, Multi: 0.3, Roots: 4, Generations: 2})
	s := storetest.OpenRO(t, b.Layout)
	ro := roots.Options{NoRuntime: true, NoTemp: true}
	targets := map[string]bool{}
	for _, r := range find(t, s, ro).Roots {
		targets[r.Target] = true
	}
	for _, keep := range [][2]bool{{false, false}, {false, true}, {true, false}, {true, true}} {
		t.Run(fmt.Sprintf("keep-outputs=%v,keep-derivations=%v", keep[0], keep[1]), func(t *testing.T) {
			edges := whyModel(b, keep[0], keep[1])
			dist := map[string]int{}
			var queue []string
			for p := range targets {
				dist[p] = 0
				queue = append(queue, p)
			}
			for len(queue) > 0 {
				u := queue[0]
				queue = queue[1:]
				for v := range edges[u] {
					if _, ok := dist[v]; !ok {
						dist[v] = dist[u] + 1
						queue = append(queue, v)
					}
				}
			}
			// keepers(p): every path with a chain of edges to p.
			keepers := func(p string) map[string]bool {
				seen, stack := map[string]bool{}, []string{p}
				for len(stack) > 0 {
					v := stack[len(stack)-1]
					stack = stack[:len(stack)-1]
					for u, out := range edges {
						if _, ok := out[v]; ok && !seen[u] && u != p {
							seen[u] = true
							stack = append(stack, u)
						}
					}
				}
				return seen
			}
			longest, deadWith, kinds := 0, 0, map[graph.EdgeKind]int{}
			for _, p := range b.Valid {
				e, err := roots.Why(context.Background(), s, p, roots.WhyOptions{Roots: ro, KeepOutputs: keep[0], KeepDerivations: keep[1]})
				if err != nil {
					t.Fatal(err)
				}
				d, reached := dist[p]
				if e.Path != p || e.Alive != reached {
					t.Fatalf("%s: alive=%v, the model says %v", p, e.Alive, reached)
				}
				if !e.Alive {
					if e.Root != nil || len(e.Chain) != 0 {
						t.Errorf("%s: dead with a chain %+v", p, e)
					}
					// The paths that keep p (all dead, since p is) go
					// with it; their NAR sizes, read from the disk.
					with, size := keepers(p), narSize(t, b, p)
					for u := range with {
						size += narSize(t, b, u)
					}
					if e.DeadWith != len(with) || e.NarBytes != size {
						t.Errorf("%s: dead with %d paths, %d NAR bytes; the model says %d, %d", p, e.DeadWith, e.NarBytes, len(with), size)
					}
					deadWith = max(deadWith, e.DeadWith)
					continue
				}
				if len(e.Chain)-1 != d {
					t.Errorf("%s: chain of %d edges, the shortest has %d: %+v", p, len(e.Chain)-1, d, e.Chain)
				}
				first, last := e.Chain[0], e.Chain[len(e.Chain)-1]
				if !targets[first.Path] || first.Edge != graph.Root || e.Root == nil || e.Root.Target != first.Path || last.Path != p {
					t.Fatalf("%s: root %q, chain %+v", p, e.Root, e.Chain)
				}
				for i := 1; i < len(e.Chain); i++ {
					u, v := e.Chain[i-1].Path, e.Chain[i]
					if k, ok := edges[u][v.Path]; !ok || k != v.Edge {
						t.Fatalf("%s: step %s -%s-> %s is not an edge of that kind (model: %v, %v)", p, u, v.Edge, v.Path, k, ok)
					}
					kinds[v.Edge]++
				}
				longest = max(longest, len(e.Chain))
			}
			if longest < 3 || deadWith == 0 {
				t.Errorf("the longest chain has %d paths, the most dead paths deleted with one %d: the test shows little", longest, deadWith)
			}
			// (keep-outputs alone keeps nothing more: no derivation is
			// alive without keep-derivations in this fixture.)
			if keep[1] && kinds[graph.KeepDerivations] == 0 || keep[0] && keep[1] && kinds[graph.KeepOutputs] == 0 {
				t.Errorf("no keep-* edge in any chain: %v", kinds)
			}
		})
	}
}

// narSize is the NAR size of p as on disk.
func narSize(t *testing.T, b *storetest.Built, p string) uint64 {
	t.Helper()
	_, n, err := nar.HashPath(b.Layout.RealPath(p))
	if err != nil {
		t.Fatal(err)
	}
	return uint64(n)
}

// TestWhyBadPaths: a path below a store path explains its store path; a
// path outside the store and a store path that is not valid are errors
// that say so (and keep their causes).
func TestWhyBadPaths(t *testing.T) {
	b := storetest.MustBuild(t, storetest.Spec{Paths: 8, Seed: 3, MaxDeps: 2, Files: 1, FileSize: 16, Roots: 1, Generations: 1})
	s := storetest.OpenRO(t, b.Layout)
	ro := roots.WhyOptions{Roots: roots.Options{NoRuntime: true, NoTemp: true}}
	p := b.Valid[0]
	e, err := roots.Why(context.Background(), s, p+"/some/file", ro)
	if err != nil || e.Path != p {
		t.Fatalf("below %s: %+v, %v", p, e, err)
	}
	if _, err := roots.Why(context.Background(), s, "/etc/passwd", ro); !errors.Is(err, storepath.ErrBadStorePath) {
		t.Errorf("/etc/passwd: %v", err)
	}
	missing := b.Layout.StoreDir + "/00000000000000000000000000000000-nope"
	if _, err := roots.Why(context.Background(), s, missing, ro); !errors.Is(err, roots.ErrNotValid) || !strings.Contains(err.Error(), missing) {
		t.Errorf("%s: %v", missing, err)
	}
}

// TestWhyArgumentAsNix: Why reads its argument as nix-store -q --roots
// does (followLinksToStorePath): made absolute and canonical lexically
// first ("/nix/store/a/../b" is b, not a), then symlinks outside the
// store followed to the store path they name (./result); a symlink loop
// or one leading out of the store is an error naming the path.
func TestWhyArgumentAsNix(t *testing.T) {
	b := storetest.MustBuild(t, storetest.Spec{Paths: 8, Seed: 3, MaxDeps: 2, Files: 1, FileSize: 16, Roots: 1, Generations: 1})
	s := storetest.OpenRO(t, b.Layout)
	ro := roots.WhyOptions{Roots: roots.Options{NoRuntime: true, NoTemp: true}}
	p, q := b.Valid[0], b.Valid[1]
	why := func(arg string) (*roots.Explanation, error) {
		return roots.Why(context.Background(), s, arg, ro)
	}
	if e, err := why(p + "/../" + path.Base(q)); err != nil || e.Path != q {
		t.Errorf("%s/../%s: %+v, %v; want %s explained", p, path.Base(q), e, err, q)
	}
	if e, err := why(p + "/../" + path.Base(q) + "/some/file"); err != nil || e.Path != q {
		t.Errorf("%s/../%s/some/file: %+v, %v; want %s explained", p, path.Base(q), e, err, q)
	}
	if real := b.Layout.RealPath(p); real != p {
		if e, err := why(real + "/some/file"); err != nil || e.Path != p {
			t.Errorf("physical %s/some/file: %+v, %v; want %s explained", real, e, err, p)
		}
	} else {
		t.Error("the fixture's store has no separate physical store dir: its case is not tested")
	}
	if _, err := why(p + "/.."); !errors.Is(err, storepath.ErrBadStorePath) {
		t.Errorf("%s/..: %v, want the store dir refused as a bad store path", p, err)
	}
	dir := t.TempDir()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.Symlink(p, filepath.Join(dir, "result")))
	must(os.Symlink("result", filepath.Join(dir, "again")))
	must(os.Symlink(p+"/some/file", filepath.Join(dir, "inside")))
	must(os.Symlink("loop", filepath.Join(dir, "loop")))
	must(os.Symlink("/etc", filepath.Join(dir, "out")))
	for _, name := range []string{"result", "again", "inside"} {
		if e, err := why(filepath.Join(dir, name)); err != nil || e.Path != p {
			t.Errorf("symlink %s: %+v, %v; want %s explained", name, e, err, p)
		}
	}
	wd, err := os.Getwd()
	must(err)
	must(os.Chdir(dir))
	e, err := why("again")
	must(os.Chdir(wd))
	if err != nil || e.Path != p {
		t.Errorf("relative symlink: %+v, %v; want %s explained", e, err, p)
	}
	for _, name := range []string{"loop", "out"} {
		arg := filepath.Join(dir, name)
		if _, err := why(arg); !errors.Is(err, storepath.ErrBadStorePath) || !strings.Contains(err.Error(), arg) {
			t.Errorf("symlink %s: %v, want a bad store path error naming it", name, err)
		}
	}
}
