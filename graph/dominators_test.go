package graph_test

import (
	"fmt"
	"math/rand"
	"sort"
	"testing"

	"storekeeper/graph"
)

// randomGraph builds a graph of n paths with random references (cycles
// and self-references included), some derivations with outputs and
// derivers (for the keep-* edges), and random roots (several on one path,
// some on no valid path).
func randomGraph(t testing.TB, r *rand.Rand, n, refs int) (*graph.Graph, []graph.PathID) {
	b := graph.NewBuilder("/nix/store", n)
	isDrv := make([]bool, n)
	for i := 0; i < n; i++ {
		nm := fmt.Sprintf("p%d", i)
		if r.Intn(4) == 0 {
			isDrv[i] = true
			nm += ".drv"
		}
		if _, err := b.AddPath(int64(i+1), []byte(name(nm))); err != nil {
			t.Fatal(err)
		}
	}
	g := b.Graph()
	type ref struct{ from, to graph.PathID }
	var rs []ref
	for i := 0; i < refs && n > 0; i++ {
		rs = append(rs, ref{graph.PathID(r.Intn(n)), graph.PathID(r.Intn(n))})
	}
	sort.Slice(rs, func(i, j int) bool { return rs[i].from < rs[j].from })
	b.BeginRefs(len(rs))
	for _, x := range rs {
		if err := b.AddRef(x.from, x.to); err != nil {
			t.Fatal(err)
		}
	}
	g.Deriver = make([]graph.PathID, n)
	for i := range g.Deriver {
		g.Deriver[i] = graph.NoPath
	}
	for d := 0; d < n; d++ {
		if !isDrv[d] {
			continue
		}
		for k := r.Intn(3); k > 0; k-- {
			o := graph.PathID(r.Intn(n))
			if err := b.AddOutput(graph.PathID(d), graph.DrvOutput{Name: "out", Path: g.Path(o), ID: o}); err != nil {
				t.Fatal(err)
			}
			if r.Intn(2) == 0 {
				g.Deriver[o] = graph.PathID(d)
			}
		}
	}
	g = b.Finish()
	var roots []graph.PathID
	for k := r.Intn(6); k >= 0 && n > 0; k-- {
		switch r.Intn(8) {
		case 0:
			roots = append(roots, graph.NoPath)
		case 1:
			if len(roots) > 0 {
				roots = append(roots, roots[r.Intn(len(roots))]) // a second root of one path
				continue
			}
			fallthrough
		default:
			roots = append(roots, graph.PathID(r.Intn(n)))
		}
	}
	return g, roots
}

// bruteDominators computes, by definition, the set of dominators of every
// node: d dominates v when v (reached from the super-root) is not reached
// once d is taken out. Node numbering as DomTree's.
func bruteDominators(e *graph.Edges, roots []graph.PathID) (reached []bool, dom [][]bool) {
	g := e.Graph()
	nr := len(roots)
	total := 1 + nr + g.Len()
	succ := func(v int, fn func(int)) {
		switch {
		case v == 0:
			for i := range roots {
				fn(1 + i)
			}
		case v <= nr:
			if roots[v-1] != graph.NoPath {
				fn(1 + nr + int(roots[v-1]))
			}
		default:
			e.Forward(graph.PathID(v-1-nr), func(w graph.PathID, _ graph.EdgeKind) { fn(1 + nr + int(w)) })
		}
	}
	reach := func(without int) []bool {
		seen := make([]bool, total)
		if without == 0 {
			return seen
		}
		seen[0] = true
		stack := []int{0}
		for len(stack) > 0 {
			v := stack[len(stack)-1]
			stack = stack[:len(stack)-1]
			succ(v, func(w int) {
				if w != without && !seen[w] {
					seen[w] = true
					stack = append(stack, w)
				}
			})
		}
		return seen
	}
	reached = reach(-1)
	dom = make([][]bool, total)
	for v := range dom {
		dom[v] = make([]bool, total)
	}
	for d := 0; d < total; d++ {
		if !reached[d] {
			continue
		}
		without := reach(d)
		for v := 0; v < total; v++ {
			if reached[v] && !without[v] {
				dom[v][d] = true
			}
		}
	}
	return reached, dom
}

// checkAgainstBrute compares a DomTree with the brute-force dominators:
// the same nodes reached, every node's dominators exactly its ancestors
// in the tree, Dominates and Sum agreeing, and LCA the deepest common
// dominator.
func checkAgainstBrute(t *testing.T, e *graph.Edges, roots []graph.PathID, r *rand.Rand) {
	t.Helper()
	dt := graph.Dominators(e, roots)
	reached, dom := bruteDominators(e, roots)
	total := dt.Len()
	if total != len(reached) {
		t.Fatalf("Len %d, want %d", total, len(reached))
	}
	if len(dt.Order()) == 0 || dt.Order()[0] != graph.SuperRoot {
		t.Fatalf("Order does not start at the super-root: %v", dt.Order())
	}
	pos := make([]int, total)
	for i := range pos {
		pos[i] = -1
	}
	for i, n := range dt.Order() {
		pos[n] = i
	}
	ones := make([]uint64, total)
	for v := 0; v < total; v++ {
		n := graph.Node(v)
		if dt.Reached(n) != reached[v] {
			t.Fatalf("node %d: Reached %v, want %v", v, dt.Reached(n), reached[v])
		}
		if !reached[v] {
			if pos[v] >= 0 || dt.Idom(n) != graph.NoNode {
				t.Fatalf("node %d not reached but in Order or with an idom", v)
			}
			continue
		}
		ones[v] = 1
		if v != 0 && pos[dt.Idom(n)] >= pos[v] {
			t.Fatalf("node %d comes before its idom %d in Order", v, dt.Idom(n))
		}
		anc := make([]bool, total)
		for x := n; x != graph.NoNode; x = dt.Idom(x) {
			anc[x] = true
		}
		for d := 0; d < total; d++ {
			if anc[d] != dom[v][d] {
				t.Fatalf("node %d: tree says %d dominates it: %v, brute force: %v (roots %v)", v, d, anc[d], dom[v][d], roots)
			}
			if reached[d] && dt.Dominates(graph.Node(d), n) != dom[v][d] {
				t.Fatalf("Dominates(%d, %d) = %v, want %v", d, v, !dom[v][d], dom[v][d])
			}
		}
	}
	for d := 0; d < total; d++ {
		if !reached[d] {
			continue
		}
		var got []int
		dt.Dominated(graph.Node(d), func(v graph.Node) { got = append(got, int(v)) })
		if len(got) == 0 || got[0] != d {
			t.Fatalf("Dominated(%d) does not start with itself: %v", d, got)
		}
		sort.Ints(got)
		var want []int
		for v := 0; v < total; v++ {
			if dom[v][d] {
				want = append(want, v)
			}
		}
		if fmt.Sprint(got) != fmt.Sprint(want) {
			t.Fatalf("Dominated(%d) = %v, want %v", d, got, want)
		}
	}
	dt.Sum(ones)
	for d := 0; d < total; d++ {
		if !reached[d] {
			if ones[d] != 0 {
				t.Fatalf("Sum gave unreached node %d %d", d, ones[d])
			}
			continue
		}
		want := uint64(0)
		for v := 0; v < total; v++ {
			if dom[v][d] {
				want++
			}
		}
		if ones[d] != want {
			t.Fatalf("Sum: node %d dominates %d nodes, want %d", d, ones[d], want)
		}
	}
	order := dt.Order()
	for i := 0; i < 50 && len(order) > 0; i++ {
		a, b := order[r.Intn(len(order))], order[r.Intn(len(order))]
		l := dt.LCA(a, b)
		// The deepest common dominator: it dominates both, and every
		// common dominator dominates it.
		if !dom[a][l] || !dom[b][l] {
			t.Fatalf("LCA(%d, %d) = %d does not dominate both", a, b, l)
		}
		for d := 0; d < total; d++ {
			if dom[a][d] && dom[b][d] && !dom[l][d] {
				t.Fatalf("LCA(%d, %d) = %d, but %d dominates both and not it", a, b, l, d)
			}
		}
	}
	for i := range roots {
		if n, ok := dt.Root(dt.RootNode(i)); !ok || n != i {
			t.Fatalf("Root(RootNode(%d)) = %d, %v", i, n, ok)
		}
	}
	for id := 0; id < e.Graph().Len(); id++ {
		if p, ok := dt.Path(dt.PathNode(graph.PathID(id))); !ok || p != graph.PathID(id) {
			t.Fatalf("Path(PathNode(%d)) = %d, %v", id, p, ok)
		}
	}
}

// TestDominatorsRandom compares the tree with the brute-force dominators
// on random graphs of every density, with every combination of the
// keep-* edges.
func TestDominatorsRandom(t *testing.T) {
	r := rand.New(rand.NewSource(1))
	for i := 0; i < 400; i++ {
		n := 1 + r.Intn(40)
		g, roots := randomGraph(t, r, n, r.Intn(3*n+1))
		e := graph.NewEdges(g, i%2 == 1, i%4 >= 2)
		checkAgainstBrute(t, e, roots, r)
	}
}

// TestDominatorsShapes: the cases the root size rule rests on.
func TestDominatorsShapes(t *testing.T) {
	// a -> c, b -> c, c -> d; roots: a, b, b again, e.
	g := build(t, spec{names: []string{"a", "b", "c", "d", "e"}, refs: [][2]string{{"a", "c"}, {"b", "c"}, {"c", "d"}}})
	id := func(n string) graph.PathID { v, _ := g.Lookup(name(n)); return v }
	roots := []graph.PathID{id("a"), id("b"), id("b"), id("e")}
	dt := graph.Dominators(graph.NewEdges(g, false, false), roots)
	if got := dt.Idom(dt.PathNode(id("a"))); got != dt.RootNode(0) {
		t.Errorf("a: idom %d, want its root %d", got, dt.RootNode(0))
	}
	if got := dt.Idom(dt.PathNode(id("b"))); got != graph.SuperRoot {
		t.Errorf("b (two root links): idom %d, want the super-root", got)
	}
	if got := dt.Idom(dt.PathNode(id("c"))); got != graph.SuperRoot {
		t.Errorf("c (shared by a and b): idom %d, want the super-root", got)
	}
	if got := dt.Idom(dt.PathNode(id("d"))); got != dt.PathNode(id("c")) {
		t.Errorf("d: idom %d, want c", got)
	}
	if dt.Reached(dt.PathNode(id("e"))) != true || dt.Idom(dt.PathNode(id("e"))) != dt.RootNode(3) {
		t.Errorf("e: reached %v idom %d", dt.Reached(dt.PathNode(id("e"))), dt.Idom(dt.PathNode(id("e"))))
	}
	if got := dt.LCA(dt.PathNode(id("a")), dt.PathNode(id("d"))); got != graph.SuperRoot {
		t.Errorf("LCA(a, d) = %d, want the super-root", got)
	}
}

// TestDominatorsDeepChain: a chain of a million paths (and a cycle back
// to its start) is handled without recursion.
func TestDominatorsDeepChain(t *testing.T) {
	const n = 1 << 20
	b := graph.NewBuilder("/nix/store", n)
	for i := 0; i < n; i++ {
		if _, err := b.AddPath(int64(i+1), []byte(fmt.Sprintf("%032d-x", i))); err != nil {
			t.Fatal(err)
		}
	}
	b.BeginRefs(n)
	for i := 0; i < n; i++ {
		if err := b.AddRef(graph.PathID(i), graph.PathID((i+1)%n)); err != nil {
			t.Fatal(err)
		}
	}
	g := b.Finish()
	dt := graph.Dominators(graph.NewEdges(g, false, false), []graph.PathID{0})
	for i := 1; i < n; i++ {
		if dt.Idom(dt.PathNode(graph.PathID(i))) != dt.PathNode(graph.PathID(i-1)) {
			t.Fatalf("idom of %d is %d", i, dt.Idom(dt.PathNode(graph.PathID(i))))
		}
	}
	last := dt.PathNode(n - 1)
	if got := dt.LCA(last, dt.PathNode(n/2)); got != dt.PathNode(n/2) {
		t.Fatalf("LCA on the chain: %d", got)
	}
	sizes := make([]uint64, dt.Len())
	for _, v := range dt.Order() {
		sizes[v] = 1
	}
	dt.Sum(sizes)
	if sizes[dt.RootNode(0)] != n+1 {
		t.Fatalf("the root dominates %d nodes, want %d", sizes[dt.RootNode(0)], n+1)
	}
}

// byteSource is a rand.Source that plays back the fuzzer's bytes (then
// zeros), so that every choice randomGraph makes comes from the input.
type byteSource struct {
	data []byte
	i    int
}

func (s *byteSource) Int63() int64 {
	var v int64
	for k := 0; k < 8; k++ {
		var c byte
		if s.i < len(s.data) {
			c = s.data[s.i]
			s.i++
		}
		v = v<<8 | int64(c)
	}
	return v & (1<<63 - 1)
}

func (s *byteSource) Seed(int64) {}

// FuzzDominators: any graph the bytes describe gets the brute-force
// dominators.
func FuzzDominators(f *testing.F) {
	f.Add([]byte{3, 0, 1, 1, 2, 2, 0})
	f.Add([]byte{9, 1, 2, 3, 4, 5, 6, 7, 8, 8, 1, 200, 3, 17, 99, 4, 0, 0, 0, 0, 0, 0, 0, 3})
	f.Fuzz(func(t *testing.T, data []byte) {
		if len(data) < 2 || len(data) > 4096 {
			return
		}
		n := 1 + int(data[0])%24
		r := rand.New(&byteSource{data: data[2:]})
		g, roots := randomGraph(t, r, n, (len(data)-2)/2)
		checkAgainstBrute(t, graph.NewEdges(g, data[1]&1 == 1, data[1]&2 == 2), roots, r)
	})
}
