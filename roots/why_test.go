package roots_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"

	"storekeeper/graph"
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
// any root (a breadth-first search over the fixture's own model).
func TestWhyShortestChains(t *testing.T) {
	b := storetest.MustBuild(t, storetest.Spec{Paths: 60, Seed: 21, MaxDeps: 4, Files: 1, FileSize: 16, Multi: 0.3, Roots: 4, Generations: 2})
	s := open(t, b, true)
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
			longest, kinds := 0, map[graph.EdgeKind]int{}
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
					if e.Root != "" || len(e.Chain) != 0 {
						t.Errorf("%s: dead with a chain %+v", p, e)
					}
					continue
				}
				if len(e.Chain)-1 != d {
					t.Errorf("%s: chain of %d edges, the shortest has %d: %+v", p, len(e.Chain)-1, d, e.Chain)
				}
				first, last := e.Chain[0], e.Chain[len(e.Chain)-1]
				if !targets[first.Path] || first.Edge != graph.Root || !strings.HasSuffix(e.Root, " -> "+first.Path) || last.Path != p {
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
			if longest < 3 {
				t.Errorf("the longest chain has %d paths: the test shows little", longest)
			}
			// (keep-outputs alone keeps nothing more: no derivation is
			// alive without keep-derivations in this fixture.)
			if keep[1] && kinds[graph.KeepDerivations] == 0 || keep[0] && keep[1] && kinds[graph.KeepOutputs] == 0 {
				t.Errorf("no keep-* edge in any chain: %v", kinds)
			}
		})
	}
}

// TestWhyBadPaths: a path below a store path explains its store path; a
// path outside the store and a store path that is not valid are errors
// that say so (and keep their causes).
func TestWhyBadPaths(t *testing.T) {
	b := storetest.MustBuild(t, storetest.Spec{Paths: 8, Seed: 3, MaxDeps: 2, Files: 1, FileSize: 16, Roots: 1, Generations: 1})
	s := open(t, b, true)
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
