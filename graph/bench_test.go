package graph_test

import (
	"context"
	"testing"

	"storekeeper/graph"
	"storekeeper/roots"
	"storekeeper/store/db"
	"storekeeper/store/storetest"
)

// load300k opens the ~315k-path store, loads its graph with the reverse
// index built (once per graph) and finds its roots (without the runtime
// and temporary ones): the setup of the 300k benchmarks.
func load300k(b *testing.B) (*graph.Graph, *roots.Result) {
	s := storetest.OpenRO(b, storetest.Graph300k(b))
	g, err := s.LoadGraph(context.Background(), db.GraphOptions{})
	if err != nil {
		b.Fatal(err)
	}
	rr, err := roots.Find(context.Background(), s, roots.Options{NoRuntime: true, NoTemp: true})
	if err != nil {
		b.Fatal(err)
	}
	g.Referrers(0)
	return g, rr
}

// BenchmarkLiveness300k: liveness (keep-derivations on) from the roots of
// a ~315k-path store, then the dead set with every path present and the
// deletion order of it: what the collector computes on the graph, without
// the graph's load (BenchmarkLoadGraph300k in store/db) or the roots'
// search.
func BenchmarkLiveness300k(b *testing.B) {
	g, rr := load300k(b)
	var rootIDs []graph.PathID
	for _, r := range rr.Roots {
		if id, ok := g.Lookup(r.Target); ok {
			rootIDs = append(rootIDs, id)
		}
	}
	all := make([]graph.PathID, g.Len())
	for i := range all {
		all[i] = graph.PathID(i)
	}
	b.ResetTimer()
	alive, dead := 0, 0
	for i := 0; i < b.N; i++ {
		l := graph.NewLiveness(graph.NewEdges(g, false, true))
		alive = 0
		for _, id := range rootIDs {
			if l.AddRoot(id, "root") {
				alive++
			}
		}
		alive += l.Propagate()
		d := l.DeadFrom(all)
		dead = len(graph.DeletionOrder(g, d))
	}
	b.ReportMetric(float64(alive), "alive")
	b.ReportMetric(float64(dead), "deadComps")
}
