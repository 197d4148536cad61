package roots

import (
	"runtime"
	"testing"
)

// TestExplainDeadAllocatesByKeepers: explaining a dead path costs what
// its keepers are, not the store: on a 40k-path graph, a dead path kept
// by one other allocates a tenth of a byte per path at most (a search that
// allocated a flag per path made 'roots why' of a few thousand dead
// paths, as 'gc --print-dead' lists them, take seconds per thousand).
func TestExplainDeadAllocatesByKeepers(t *testing.T) {
	const n = 40_000 // synth's names share their first characters: more makes its name index slow to build
	// 0 <- 1 (1 refers to 0), both dead; 2 a root alone.
	s := synth{n: n, refs: [][2]int{{1, 0}}}
	g := s.build(t)
	x := newExplainer(g, synthRoots(s, 2), WhyOptions{})
	e, dead := x.explain(0) // warm: the reverse index is built once
	if e.Alive || e.DeadWith != 1 || len(dead) != 2 {
		t.Fatalf("%+v, dead %v", e, dead)
	}
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	const runs = 20
	for i := 0; i < runs; i++ {
		if e, _ := x.explain(0); e.Alive || e.DeadWith != 1 {
			t.Fatalf("%+v", e)
		}
	}
	runtime.ReadMemStats(&after)
	if per := (after.TotalAlloc - before.TotalAlloc) / runs; per > n/10 {
		t.Errorf("explaining a dead path with one keeper allocates %d bytes on a %d-path graph", per, n)
	}
}
