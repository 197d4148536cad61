package roots

import (
	"testing"

	"storekeeper/graph"
	"storekeeper/store/usage"
)

// BenchmarkSize300k: on the ~315k-path store (200 roots, 5 generations;
// built without files, so every path gets a synthetic usage: a
// single-link file and a file shared by the paths of neighbouring ids,
// with a .links entry), what Size computes after the files are measured:
// the dominator tree, the attribution of every file to the nearest common
// dominator of its live holders, the subtree sums and every root's
// closure. The graph's load, the roots' search and the file walk are
// outside the timing.
func BenchmarkSize300k(b *testing.B) {
	g, rr := load300k(b)
	us := make([]usage.Usage, g.Len())
	links := map[uint64]bool{}
	for id := range us {
		ino := uint64(1 + id/3)
		us[id] = usage.Usage{Single: 4096, Multi: []usage.Inode{{Ino: ino, Nlink: 4, Seen: 1, Blocks: 8192}}}
		links[ino] = true
	}
	targets := make([]graph.PathID, len(rr.Roots))
	for i, r := range rr.Roots {
		targets[i], _ = g.Lookup(r.Target)
	}
	b.ResetTimer()
	var rep *SizeReport
	for i := 0; i < b.N; i++ {
		e := graph.NewEdges(g, false, true)
		dt := graph.Dominators(e, targets)
		rep = newSizer(g, e, dt, us, links, true).report(rr, targets, 0, false)
	}
	b.ReportMetric(float64(rep.Totals.LivePaths), "live")
	b.ReportMetric(float64(len(rep.Roots)), "roots")
}
