package repair

import (
	"fmt"
	"math/rand/v2"
	"testing"

	"storekeeper/substitute"
)

// TestDependencyOrderProperty: over a random set of paths with references
// among them (and to paths outside the set), plus a two-path cycle and a
// self-reference, dependencyOrder returns every path once, each after its
// references in the set (but for the cycle), ties in the given order.
func TestDependencyOrderProperty(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	const n = 5000
	name := func(i int) string { return fmt.Sprintf("/nix/store/%032d-p", i) }
	// Path i may refer to paths j > i (so the given order is the reverse
	// of a valid one) and to paths outside the set.
	paths := make([]PlannedPath, n)
	for i := range paths {
		var refs []string
		for k := 0; k < 3 && i+1 < n; k++ {
			refs = append(refs, name(i+1+rng.IntN(n-i-1)))
		}
		refs = append(refs, name(n+i), name(i)) // outside; self
		paths[i] = PlannedPath{Target: Target{Path: name(i)}, Want: substitute.Want{Path: name(i), References: refs}}
	}
	// A cycle: 0 -> 1 -> 0 (0 already may refer to 1).
	paths[1].Want.References = append(paths[1].Want.References, name(0))
	out := dependencyOrder(paths)
	if len(out) != n {
		t.Fatalf("%d paths out of %d", len(out), n)
	}
	pos := map[string]int{}
	for i, p := range out {
		if _, dup := pos[p.Path]; dup {
			t.Fatalf("%s twice", p.Path)
		}
		pos[p.Path] = i
	}
	for _, p := range out {
		for _, r := range p.Want.References {
			j, ok := pos[r]
			if !ok || r == p.Path || (p.Path == name(1) && r == name(0)) || (p.Path == name(0) && r == name(1)) {
				continue
			}
			if j > pos[p.Path] {
				t.Fatalf("%s at %d before its reference %s at %d", p.Path, pos[p.Path], r, j)
			}
		}
	}
	// Independent paths keep the given order.
	ind := []PlannedPath{{Target: Target{Path: name(3)}}, {Target: Target{Path: name(1)}}, {Target: Target{Path: name(2)}}}
	if got := dependencyOrder(ind); got[0].Path != name(3) || got[1].Path != name(1) || got[2].Path != name(2) {
		t.Fatalf("ties reordered: %v", []string{got[0].Path, got[1].Path, got[2].Path})
	}
}
