package roots

import (
	"context"
	"testing"

	"storekeeper/graph"
	"storekeeper/store/db"
	"storekeeper/store/storetest"
)

// load300k opens the ~315k-path store, loads its graph with the reverse
// index built (once per graph) and finds its roots (without the runtime
// and temporary ones): the setup of the 300k benchmarks.
func load300k(b *testing.B) (*graph.Graph, *Result) {
	s := storetest.OpenRO(b, storetest.Graph300k(b))
	ctx := context.Background()
	g, err := s.LoadGraph(ctx, db.GraphOptions{})
	if err != nil {
		b.Fatal(err)
	}
	rr, err := Find(ctx, s, Options{NoRuntime: true, NoTemp: true})
	if err != nil {
		b.Fatal(err)
	}
	g.Referrers(0)
	return g, rr
}

// BenchmarkWhyAll300k: on the ~315k-path store (200 roots, 5
// generations), the liveness once and then, for 20 paths spread over the
// store, the explanation with every root that keeps it (--all): one
// backward search per path and a chain per root. The graph's load and
// the roots' search are outside the timing (BenchmarkWhyPaths300k has
// them).
func BenchmarkWhyAll300k(b *testing.B) {
	g, rr := load300k(b)
	b.ResetTimer()
	kept := 0
	for i := 0; i < b.N; i++ {
		x := newExplainer(g, rr.Roots, WhyOptions{KeepDerivations: true, All: true})
		kept = 0
		for k := 0; k < 20; k++ {
			e, _ := x.explain(graph.PathID(k * (g.Len() / 20)))
			kept += len(e.Roots)
		}
	}
	b.ReportMetric(float64(kept), "roots/20paths")
}

// BenchmarkWhyPaths300k: `roots why --all` of 5 paths end to end but the
// process: the roots' search, the graph's load, the liveness and the
// explanations.
func BenchmarkWhyPaths300k(b *testing.B) {
	lay := storetest.Graph300k(b)
	s := storetest.OpenRO(b, lay)
	g, err := s.LoadGraph(context.Background(), db.GraphOptions{})
	if err != nil {
		b.Fatal(err)
	}
	var paths []string
	for k := 0; k < 5; k++ {
		paths = append(paths, g.Path(graph.PathID(k*(g.Len()/5))))
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		_, errs, err := WhyPaths(context.Background(), s, paths, WhyOptions{Roots: Options{NoRuntime: true, NoTemp: true}, KeepDerivations: true, All: true})
		if err != nil {
			b.Fatal(err)
		}
		for _, err := range errs {
			if err != nil {
				b.Fatal(err)
			}
		}
	}
}
