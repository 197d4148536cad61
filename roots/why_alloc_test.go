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

// TestExplainAllSearchesLivePathsOnly: --all's backward search from a
// live path stays among the live paths (a chain from a root has only
// live paths on it): a path a root keeps, referred to also by 1,000 dead
// paths, is searched through its root's target alone, and gets the same
// answer.
func TestExplainAllSearchesLivePathsOnly(t *testing.T) {
	const n = 1002
	// 0 <- 1 (the root's target), 0 <- 2..1001 (dead).
	s := synth{n: n, refs: [][2]int{{1, 0}}}
	for i := 2; i < n; i++ {
		s.refs = append(s.refs, [2]int{i, 0})
	}
	g := s.build(t)
	x := newExplainer(g, synthRoots(s, 1), WhyOptions{All: true})
	e, dead := x.explain(0)
	if dead != nil || !e.Alive || len(e.Roots) != 1 || len(e.Roots[0].Chain) != 2 || e.Roots[0].Chain[0].Path != g.Path(1) {
		t.Fatalf("%+v, dead %v", e, dead)
	}
	if k := x.reach.Keepers(); k != 2 {
		t.Errorf("the search from a live path visited %d paths, want 2 (itself and its root's target)", k)
	}
	if e, dead := x.explain(2); e.Alive || e.DeadWith != 0 || len(dead) != 1 {
		t.Errorf("a dead referrer: %+v, dead %v", e, dead)
	}
	if e, dead := x.explain(0); !e.Alive || len(e.Roots) != 1 || dead != nil || x.reach.Keepers() != 2 {
		t.Errorf("again after a dead path: %+v, %d visited", e, x.reach.Keepers())
	}
}
