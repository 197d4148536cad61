package roots

import (
	"fmt"
	"math/rand/v2"
	"sort"
	"strings"
	"testing"

	"storekeeper/graph"
)

// synth is a small synthetic graph: path i is named "%032d-p<i>" (with a
// ".drv" suffix for derivations); refs, outputs (drv -> outputs) and
// deriver (output -> drv) as given.
type synth struct {
	n       int
	drv     map[int]bool
	refs    [][2]int
	outputs map[int][]int
	deriver map[int]int
}

func (s synth) name(i int) string {
	n := fmt.Sprintf("%032d-p%d", i, i)
	if s.drv[i] {
		n += ".drv"
	}
	return n
}

func (s synth) build(t testing.TB) *graph.Graph {
	t.Helper()
	b := graph.NewBuilder("/nix/store", s.n)
	for i := 0; i < s.n; i++ {
		if _, err := b.AddPath(int64(i+1), []byte(s.name(i))); err != nil {
			t.Fatal(err)
		}
	}
	for i := 0; i < s.n; i++ {
		b.Graph().NarSize = append(b.Graph().NarSize, uint64(1000+i))
	}
	refs := append([][2]int(nil), s.refs...)
	sort.SliceStable(refs, func(i, j int) bool { return refs[i][0] < refs[j][0] })
	b.BeginRefs(len(refs))
	for _, r := range refs {
		if err := b.AddRef(graph.PathID(r[0]), graph.PathID(r[1])); err != nil {
			t.Fatal(err)
		}
	}
	g := b.Graph()
	g.Deriver = make([]graph.PathID, s.n)
	for i := range g.Deriver {
		g.Deriver[i] = graph.NoPath
	}
	for out, d := range s.deriver {
		g.Deriver[out] = graph.PathID(d)
	}
	for d := 0; d < s.n; d++ {
		for _, o := range s.outputs[d] {
			if err := b.AddOutput(graph.PathID(d), graph.DrvOutput{Name: "out", Path: "/nix/store/" + s.name(o), ID: graph.PathID(o)}); err != nil {
				t.Fatal(err)
			}
		}
	}
	return b.Finish()
}

// model is the liveness edges of a synth, from its own rows (not from the
// graph package): u -> v with the kind of the first edge (references
// first, as in Nix's order of reasons).
func (s synth) model(keepOutputs, keepDerivations bool) map[int]map[int]graph.EdgeKind {
	e := map[int]map[int]graph.EdgeKind{}
	add := func(u, v int, k graph.EdgeKind) {
		if u == v {
			return
		}
		if e[u] == nil {
			e[u] = map[int]graph.EdgeKind{}
		}
		if _, ok := e[u][v]; !ok {
			e[u][v] = k
		}
	}
	for _, r := range s.refs {
		add(r[0], r[1], graph.Reference)
	}
	for d, outs := range s.outputs {
		for _, o := range outs {
			if dd, ok := s.deriver[o]; keepDerivations && s.drv[d] && ok && dd == d {
				add(o, d, graph.KeepDerivations)
			}
		}
	}
	for d, outs := range s.outputs {
		for _, o := range outs {
			if keepOutputs {
				add(d, o, graph.KeepOutputs)
			}
		}
	}
	return e
}

// dists is breadth-first search in the model from one path.
func dists(e map[int]map[int]graph.EdgeKind, from int) map[int]int {
	d := map[int]int{from: 0}
	q := []int{from}
	for len(q) > 0 {
		u := q[0]
		q = q[1:]
		for v := range e[u] {
			if _, ok := d[v]; !ok {
				d[v] = d[u] + 1
				q = append(q, v)
			}
		}
	}
	return d
}

func synthRoots(s synth, targets ...int) []Root {
	var rs []Root
	for k, t := range targets {
		rs = append(rs, Root{Kind: Direct, Link: fmt.Sprintf("/nix/var/nix/gcroots/r%03d", k), Target: "/nix/store/" + s.name(t)})
	}
	sort.Slice(rs, func(i, j int) bool { return rs[i].Link < rs[j].Link })
	return rs
}

// TestExplainKeepOutputsOnly: an output that nothing refers to, whose
// derivation is a root, is alive only with keep-outputs, and then
// explained by that edge (with --all too); without it, it is dead.
func TestExplainKeepOutputsOnly(t *testing.T) {
	// 0: the .drv (a root), 1: its output, 2: what the output refers to,
	// 3: another root's path, referring to nothing of these.
	s := synth{n: 4, drv: map[int]bool{0: true}, refs: [][2]int{{1, 2}}, outputs: map[int][]int{0: {1}}, deriver: map[int]int{1: 0}}
	g := s.build(t)
	rs := synthRoots(s, 0, 3)
	x := newExplainer(g, rs, WhyOptions{KeepOutputs: true, All: true})
	e, dead := x.explain(1)
	if dead != nil || !e.Alive || e.Root == nil || e.Root.Target != g.Path(0) {
		t.Fatalf("with keep-outputs: %+v, dead %v", e, dead)
	}
	want := []Link{{g.Path(0), graph.Root}, {g.Path(1), graph.KeepOutputs}}
	if fmt.Sprint(e.Chain) != fmt.Sprint(want) {
		t.Errorf("chain %v, want %v", e.Chain, want)
	}
	if len(e.Roots) != 1 || e.Roots[0].Root != *e.Root || fmt.Sprint(e.Roots[0].Chain) != fmt.Sprint(want) {
		t.Errorf("--all: %+v", e.Roots)
	}
	if e, _ := x.explain(2); !e.Alive || len(e.Chain) != 3 || e.Chain[2].Edge != graph.Reference {
		t.Errorf("the output's reference: %+v", e)
	}
	x = newExplainer(g, rs, WhyOptions{All: true})
	e, dead = x.explain(1)
	if e.Alive || e.Root != nil || len(e.Roots) != 0 || len(dead) != 1 || dead[0] != 1 || e.DeadWith != 0 {
		t.Errorf("without keep-outputs: %+v, dead %v", e, dead)
	}
}

// TestExplainAllShortest: on random graphs with every kind of edge, under
// each keep-* setting, for every path: alive exactly when some root's
// target reaches it in the model; Root and Chain a shortest chain from
// the nearest root; with All, exactly the roots whose targets reach it,
// each with a chain that is a shortest one from its own target, every
// step an edge of the model of the kind named, sorted shortest first,
// then by root; a dead path's DeadWith the model's keepers of it.
func TestExplainAllShortest(t *testing.T) {
	for seed := uint64(1); seed <= 10; seed++ {
		rng := rand.New(rand.NewPCG(seed, 5))
		s := synth{n: 150, drv: map[int]bool{}, outputs: map[int][]int{}, deriver: map[int]int{}}
		for i := 0; i < s.n; i++ {
			if rng.IntN(4) == 0 {
				s.drv[i] = true
			}
		}
		for i := 1; i < s.n; i++ {
			for k := rng.IntN(4); k > 0; k-- {
				s.refs = append(s.refs, [2]int{i, rng.IntN(i)})
			}
			if rng.IntN(20) == 0 {
				s.refs = append(s.refs, [2]int{i, i})
			}
		}
		for d := 0; d < s.n; d++ {
			if !s.drv[d] {
				continue
			}
			for k := rng.IntN(3); k > 0; k-- {
				o := rng.IntN(s.n)
				s.outputs[d] = append(s.outputs[d], o)
				if rng.IntN(3) > 0 {
					s.deriver[o] = d
				}
			}
			sort.Ints(s.outputs[d])
		}
		g := s.build(t)
		var targets []int
		for k := 0; k < 8; k++ {
			targets = append(targets, s.n/2+rng.IntN(s.n-s.n/2))
		}
		targets = append(targets, targets[0]) // two roots on one path
		rs := synthRoots(s, targets...)
		for _, keep := range [][2]bool{{false, false}, {true, false}, {false, true}, {true, true}} {
			m := s.model(keep[0], keep[1])
			from := map[int]map[int]int{}
			for _, tg := range targets {
				from[tg] = dists(m, tg)
			}
			x := newExplainer(g, rs, WhyOptions{KeepOutputs: keep[0], KeepDerivations: keep[1], All: true})
			alive, multi := 0, 0
			for p := 0; p < s.n; p++ {
				e, dead := x.explain(graph.PathID(p))
				best, reached := -1, false
				var keptBy []string
				for _, r := range rs {
					tg, _ := g.Lookup(r.Target)
					if d, ok := from[int(tg)][p]; ok {
						reached = true
						if best < 0 || d < best {
							best = d
						}
						keptBy = append(keptBy, r.String())
					}
				}
				if e.Alive != reached {
					t.Fatalf("seed %d keep %v: p%d alive=%v, the model says %v", seed, keep, p, e.Alive, reached)
				}
				check := func(what string, c []Link, dist int) {
					t.Helper()
					if len(c)-1 != dist || c[0].Edge != graph.Root || c[len(c)-1].Path != g.Path(graph.PathID(p)) {
						t.Fatalf("seed %d keep %v: p%d %s: chain %v, shortest has %d edges", seed, keep, p, what, c, dist)
					}
					for i := 1; i < len(c); i++ {
						u, _ := g.Lookup(c[i-1].Path)
						v, _ := g.Lookup(c[i].Path)
						if k, ok := m[int(u)][int(v)]; !ok || k != c[i].Edge {
							t.Fatalf("seed %d keep %v: p%d %s: step %s -%s-> %s not in the model (%v %v)", seed, keep, p, what, c[i-1].Path, c[i].Edge, c[i].Path, k, ok)
						}
					}
				}
				if !reached {
					keepers, nar := 0, uint64(1000+p)
					for u := 0; u < s.n; u++ {
						if _, ok := dists(m, u)[p]; ok && u != p {
							keepers++
							nar += uint64(1000 + u)
						}
					}
					if e.DeadWith != keepers || len(dead) != keepers+1 || dead[0] != graph.PathID(p) || len(e.Roots) != 0 || e.NarBytes != nar {
						t.Fatalf("seed %d keep %v: p%d dead with %d (%d listed, %d NAR bytes), the model says %d (%d)", seed, keep, p, e.DeadWith, len(dead), e.NarBytes, keepers, nar)
					}
					continue
				}
				alive++
				check("nearest", e.Chain, best)
				if e.Root.Target != e.Chain[0].Path {
					t.Fatalf("p%d: root %v, chain from %s", p, e.Root, e.Chain[0].Path)
				}
				var got []string
				for i, rc := range e.Roots {
					got = append(got, rc.Root.String())
					tg, _ := g.Lookup(rc.Root.Target)
					check(rc.Root.Link, rc.Chain, from[int(tg)][p])
					if i > 0 {
						a := e.Roots[i-1]
						if len(a.Chain) > len(rc.Chain) || len(a.Chain) == len(rc.Chain) && a.Root.String() >= rc.Root.String() {
							t.Fatalf("p%d: roots out of order: %v before %v", p, a.Root, rc.Root)
						}
					}
				}
				sort.Strings(got)
				sort.Strings(keptBy)
				if strings.Join(got, "\n") != strings.Join(keptBy, "\n") {
					t.Fatalf("seed %d keep %v: p%d kept by\n%v\nthe model says\n%v", seed, keep, p, got, keptBy)
				}
				if len(e.Roots) > 2 {
					multi++
				}
			}
			if alive < s.n/8 || multi == 0 {
				t.Errorf("seed %d keep %v: %d alive, %d kept by 3 roots or more: the graph shows little", seed, keep, alive, multi)
			}
		}
	}
}
