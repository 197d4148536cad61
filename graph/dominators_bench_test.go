package graph_test

import (
	"fmt"
	"math/rand"
	"testing"

	"storekeeper/graph"
)

// BenchmarkDominators300k: the dominator tree of a ~315k-path store from
// its roots (keep-derivations on, each root its own node), then subtree
// sums and an LCA per path (what roots size computes on the graph),
// without the graph's load or the roots' search.
func BenchmarkDominators300k(b *testing.B) {
	g, rr := load300k(b)
	var targets []graph.PathID
	for _, r := range rr.Roots {
		id, ok := g.Lookup(r.Target)
		if !ok {
			id = graph.NoPath
		}
		targets = append(targets, id)
	}
	benchDominators(b, graph.NewEdges(g, false, true), targets)
}

// BenchmarkDominatorsSynthetic300k: the same on a synthetic 300k-path
// graph every path of which is alive: each path refers to up to 6 older
// ones (mostly recent, some far back, as a store's closures), and every
// path nothing refers to is a root, plus 2000 roots on random paths.
func BenchmarkDominatorsSynthetic300k(b *testing.B) {
	const n = 300000
	r := rand.New(rand.NewSource(7))
	bl := graph.NewBuilder("/nix/store", n)
	for i := 0; i < n; i++ {
		if _, err := bl.AddPath(int64(i+1), []byte(fmt.Sprintf("%032d-p", i))); err != nil {
			b.Fatal(err)
		}
	}
	bl.BeginRefs(3 * n)
	referred := make([]bool, n)
	for i := 1; i < n; i++ {
		for k := r.Intn(7); k > 0; k-- {
			j := i - 1 - r.Intn(min(i, 200))
			if r.Intn(10) == 0 {
				j = r.Intn(i)
			}
			referred[j] = true
			if err := bl.AddRef(graph.PathID(i), graph.PathID(j)); err != nil {
				b.Fatal(err)
			}
		}
	}
	g := bl.Finish()
	var targets []graph.PathID
	for i := range referred {
		if !referred[i] {
			targets = append(targets, graph.PathID(i))
		}
	}
	for k := 0; k < 2000; k++ {
		targets = append(targets, graph.PathID(r.Intn(n)))
	}
	benchDominators(b, graph.NewEdges(g, false, false), targets)
}

// benchDominators times, b.N times, the dominator tree of e from the
// roots targets, a subtree sum and an LCA per reached node.
func benchDominators(b *testing.B, e *graph.Edges, targets []graph.PathID) {
	b.ResetTimer()
	reached := 0
	for i := 0; i < b.N; i++ {
		dt := graph.Dominators(e, targets)
		vals := make([]uint64, dt.Len())
		for _, v := range dt.Order() {
			vals[v] = 1
		}
		dt.Sum(vals)
		reached = len(dt.Order())
		prev := dt.Order()[len(dt.Order())-1]
		for _, v := range dt.Order() {
			prev = dt.LCA(prev, v)
		}
	}
	b.ReportMetric(float64(reached), "reached")
	b.ReportMetric(float64(len(targets)), "roots")
}
