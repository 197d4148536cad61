package graph_test

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"storekeeper/graph"
)

// spec is a small graph: names (a ".drv" suffix makes a derivation),
// references in the order given, derivers and outputs.
type spec struct {
	names   []string
	refs    [][2]string // from, to
	deriver map[string]string
	outputs map[string][]string // drv -> outputs
}

func name(n string) string { return fmt.Sprintf("%032d-%s", len(n), n) }

func build(t *testing.T, s spec) *graph.Graph {
	t.Helper()
	b := graph.NewBuilder("/nix/store", len(s.names))
	for i, n := range s.names {
		if _, err := b.AddPath(int64(10+2*i), []byte(name(n))); err != nil {
			t.Fatal(err)
		}
	}
	g := b.Graph()
	id := func(n string) graph.PathID {
		v, ok := g.Lookup(name(n))
		if !ok {
			t.Fatalf("no path %s", n)
		}
		return v
	}
	b.BeginRefs(len(s.refs))
	for _, r := range s.refs {
		if err := b.AddRef(id(r[0]), id(r[1])); err != nil {
			t.Fatal(err)
		}
	}
	g.Deriver = make([]graph.PathID, len(s.names))
	for i := range g.Deriver {
		g.Deriver[i] = graph.NoPath
	}
	for out, drv := range s.deriver {
		g.Deriver[id(out)] = id(drv)
	}
	for _, drv := range s.names {
		for _, o := range s.outputs[drv] {
			if err := b.AddOutput(id(drv), graph.DrvOutput{Name: "out", Path: "/nix/store/" + name(o), ID: id(o)}); err != nil {
				t.Fatal(err)
			}
		}
	}
	return b.Finish()
}

// chainOf renders the chain of n as "a -kind-> b ...", or "dead".
func chainOf(t *testing.T, g *graph.Graph, l *graph.Liveness, n string) string {
	t.Helper()
	id, ok := g.Lookup("/nix/store/" + name(n))
	if !ok {
		t.Fatalf("no path %s", n)
	}
	root, chain, alive := l.Chain(id)
	if !alive {
		return "dead"
	}
	var sb strings.Builder
	sb.WriteString(root + ":")
	for _, st := range chain {
		if st.Edge != graph.Root {
			sb.WriteString(" -" + st.Edge.String() + "->")
		}
		sb.WriteString(" " + g.Name(st.ID)[33:])
	}
	return sb.String()
}

func live(t *testing.T, g *graph.Graph, keepOutputs, keepDerivations bool, roots ...string) *graph.Liveness {
	t.Helper()
	l := graph.NewLiveness(graph.NewEdges(g, keepOutputs, keepDerivations))
	for _, r := range roots {
		id, ok := g.Lookup(name(r))
		if !ok {
			t.Fatalf("no root %s", r)
		}
		l.AddRoot(id, "root "+r)
	}
	l.Propagate()
	return l
}

// TestChainIsShortest: the chain to a path is a shortest one, where a
// depth-first walk (the collector's stack before) finds a longer one
// first: from one root (r's first reference leads the long way, its last
// the short way, and a stack pops the last pushed first), and across
// roots (the first root reaches t the long way, the second directly).
func TestChainIsShortest(t *testing.T) {
	g := build(t, spec{
		names: []string{"r", "s", "a", "b", "c", "t", "r2", "u"},
		refs: [][2]string{
			{"r", "s"}, {"r", "a"}, {"s", "t"}, {"a", "b"}, {"b", "c"}, {"c", "t"},
			{"t", "t"}, {"r2", "u"},
		},
	})
	l := live(t, g, false, false, "r")
	if got, want := chainOf(t, g, l, "t"), "root r: r -reference-> s -reference-> t"; got != want {
		t.Errorf("chain of t:\n got %s\nwant %s", got, want)
	}
	if got := chainOf(t, g, l, "u"); got != "dead" {
		t.Errorf("u: %s, want dead", got)
	}

	// Two roots: r reaches d in four steps, q refers to it directly.
	g = build(t, spec{
		names: []string{"r", "a", "b", "c", "d", "q"},
		refs:  [][2]string{{"r", "a"}, {"a", "b"}, {"b", "c"}, {"c", "d"}, {"q", "d"}},
	})
	l = live(t, g, false, false, "r", "q")
	if got, want := chainOf(t, g, l, "d"), "root q: q -reference-> d"; got != want {
		t.Errorf("chain of d:\n got %s\nwant %s", got, want)
	}
	if got, want := chainOf(t, g, l, "r"), "root r: r"; got != want {
		t.Errorf("chain of a root:\n got %s\nwant %s", got, want)
	}
	// A root added later keeps the chains already found.
	l2 := graph.NewLiveness(graph.NewEdges(g, false, false))
	rid, _ := g.Lookup(name("r"))
	qid, _ := g.Lookup(name("q"))
	if n := l2.MarkRoot(rid, "root r"); n != 5 {
		t.Errorf("MarkRoot(r) marked %d, want 5", n)
	}
	if n := l2.MarkRoot(qid, "root q"); n != 1 {
		t.Errorf("MarkRoot(q) marked %d, want 1 (d is alive already)", n)
	}
	if got, want := chainOf(t, g, l2, "d"), "root r: r -reference-> a -reference-> b -reference-> c -reference-> d"; got != want {
		t.Errorf("chain of d after MarkRoot:\n got %s\nwant %s", got, want)
	}
}

// TestChainEdgeKinds: keep-derivations (an output keeps its deriver, if
// the deriver is a .drv listing it) and keep-outputs (a derivation keeps
// its outputs) edges are followed only when set, and named in the chain.
func TestChainEdgeKinds(t *testing.T) {
	s := spec{
		names: []string{"src", "dep.drv", "foo.drv", "foo", "foo-dev", "env", "bar", "bar.drv", "other"},
		refs: [][2]string{
			{"foo.drv", "dep.drv"}, {"foo.drv", "src"}, {"env", "foo"}, {"bar.drv", "src"},
		},
		deriver: map[string]string{"foo": "foo.drv", "foo-dev": "foo.drv", "bar": "bar.drv", "other": "foo.drv"},
		outputs: map[string][]string{"foo.drv": {"foo", "foo-dev"}, "bar.drv": {"bar"}},
	}
	g := build(t, s)

	l := live(t, g, false, false, "env")
	for _, n := range []string{"foo.drv", "src", "foo-dev"} {
		if got := chainOf(t, g, l, n); got != "dead" {
			t.Errorf("no keep-*: %s is alive: %s", n, got)
		}
	}

	l = live(t, g, false, true, "env")
	for n, want := range map[string]string{
		"foo":     "root env: env -reference-> foo",
		"foo.drv": "root env: env -reference-> foo -keep-derivations-> foo.drv",
		"src":     "root env: env -reference-> foo -keep-derivations-> foo.drv -reference-> src",
		"foo-dev": "dead", // keep-outputs is off
		"other":   "dead", // other is not among foo.drv's outputs
	} {
		if got := chainOf(t, g, l, n); got != want {
			t.Errorf("keep-derivations, %s:\n got %s\nwant %s", n, got, want)
		}
	}

	l = live(t, g, true, false, "bar.drv", "foo.drv")
	for n, want := range map[string]string{
		"bar":     "root bar.drv: bar.drv -keep-outputs-> bar",
		"foo-dev": "root foo.drv: foo.drv -keep-outputs-> foo-dev",
		"src":     "root bar.drv: bar.drv -reference-> src",
		"env":     "dead",
	} {
		if got := chainOf(t, g, l, n); got != want {
			t.Errorf("keep-outputs, %s:\n got %s\nwant %s", n, got, want)
		}
	}

	// Both: from an output, its deriver, then its sibling output.
	l = live(t, g, true, true, "env")
	if got, want := chainOf(t, g, l, "foo-dev"), "root env: env -reference-> foo -keep-derivations-> foo.drv -keep-outputs-> foo-dev"; got != want {
		t.Errorf("both, foo-dev:\n got %s\nwant %s", got, want)
	}
}

// TestDeadAndOrder: the dead set is what keeps a present dead path, and
// the deletion order puts referrers before references with a cycle in
// one component.
func TestDeadAndOrder(t *testing.T) {
	g := build(t, spec{
		names: []string{"keep", "lib", "x", "y", "z", "gone"},
		refs:  [][2]string{{"keep", "lib"}, {"x", "y"}, {"y", "z"}, {"z", "y"}, {"z", "lib"}, {"gone", "x"}},
	})
	l := live(t, g, false, false, "keep")
	id := func(n string) graph.PathID { v, _ := g.Lookup(name(n)); return v }
	// gone is missing from disk: it is dead only because it keeps x.
	dead := l.DeadFrom([]graph.PathID{id("keep"), id("lib"), id("x"), id("y"), id("z")})
	for _, n := range []string{"x", "y", "z", "gone"} {
		if !dead[id(n)] {
			t.Errorf("%s is not dead", n)
		}
	}
	if dead[id("keep")] || dead[id("lib")] {
		t.Error("a live path is dead")
	}
	pos := map[graph.PathID]int{}
	comps := graph.DeletionOrder(g, dead)
	for i, c := range comps {
		for _, v := range c {
			pos[v] = i
		}
	}
	if len(pos) != 4 || len(comps) != 3 {
		t.Fatalf("components %v", comps)
	}
	if pos[id("y")] != pos[id("z")] {
		t.Error("the cycle y <-> z is split")
	}
	if !(pos[id("gone")] < pos[id("x")] && pos[id("x")] < pos[id("y")]) {
		t.Errorf("not referrers first: %v", comps)
	}
}

// TestBuilderRefusesDisorder: ids must ascend and references come grouped
// by referrer; otherwise the CSR arrays would be wrong.
func TestBuilderRefusesDisorder(t *testing.T) {
	b := graph.NewBuilder("/nix/store", 0)
	if _, err := b.AddPath(5, []byte(name("a"))); err != nil {
		t.Fatal(err)
	}
	if _, err := b.AddPath(5, []byte(name("b"))); !errors.Is(err, graph.ErrBuild) {
		t.Errorf("a repeated id: %v", err)
	}
	if _, err := b.AddPath(7, []byte(name("b"))); err != nil {
		t.Fatal(err)
	}
	if err := b.AddRef(1, 0); err != nil {
		t.Fatal(err)
	}
	if err := b.AddRef(0, 1); !errors.Is(err, graph.ErrBuild) {
		t.Errorf("references out of order: %v", err)
	}
	if err := b.AddRef(1, 2); !errors.Is(err, graph.ErrBuild) {
		t.Errorf("a reference to no path: %v", err)
	}
	if _, err := b.AddPath(9, []byte(name("c"))); !errors.Is(err, graph.ErrBuild) {
		t.Errorf("a path after the references: %v", err)
	}
	if b.ByDBID(7) != 1 || b.ByDBID(6) != graph.NoPath {
		t.Error("ByDBID wrong")
	}
	g := b.Finish()
	if g.Len() != 2 || len(g.References(0)) != 0 || len(g.References(1)) != 1 || g.Deriver[0] != graph.NoPath {
		t.Errorf("graph: %d paths, refs %v %v", g.Len(), g.References(0), g.References(1))
	}
}

// TestInvalidOutputs: a DerivationOutputs row whose path is not valid
// (never built, or collected) is no edge, either way: keep-outputs keeps
// only the valid outputs, and the derivation is not among the
// derivations of anything through it; a deriver that is not valid is none.
func TestInvalidOutputs(t *testing.T) {
	b := graph.NewBuilder("/nix/store", 3)
	for i, n := range []string{"foo.drv", "foo", "bar"} {
		if _, err := b.AddPath(int64(i+1), []byte(name(n))); err != nil {
			t.Fatal(err)
		}
	}
	g := b.Graph()
	g.Deriver = []graph.PathID{graph.NoPath, 0, graph.NoPath}
	for _, o := range []graph.DrvOutput{
		{Name: "dev", Path: "/nix/store/" + name("foo-dev"), ID: graph.NoPath},
		{Name: "out", Path: "/nix/store/" + name("foo"), ID: 1},
	} {
		if err := b.AddOutput(0, o); err != nil {
			t.Fatal(err)
		}
	}
	g = b.Finish()
	if d := g.DerivationsOf(1); len(d) != 1 || d[0] != 0 || len(g.DerivationsOf(2)) != 0 {
		t.Errorf("derivations of foo %v, of bar %v", g.DerivationsOf(1), g.DerivationsOf(2))
	}
	for _, keep := range [][2]bool{{true, false}, {true, true}, {false, true}} {
		l := live(t, g, keep[0], keep[1], "foo.drv")
		if got, want := chainOf(t, g, l, "foo"), "root foo.drv: foo.drv -keep-outputs-> foo"; (got == want) != keep[0] || keep[0] == false && got != "dead" {
			t.Errorf("keep %v: foo %s", keep, got)
		}
		if got := chainOf(t, g, l, "bar"); got != "dead" {
			t.Errorf("keep %v: bar %s", keep, got)
		}
		dead := l.DeadFrom([]graph.PathID{0, 1, 2})
		if dead[0] || dead[1] != !keep[0] || !dead[2] {
			t.Errorf("keep %v: dead %v", keep, dead)
		}
	}
}
