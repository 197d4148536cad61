package gc

import (
	"strings"

	"storekeeper/store/db"
)

// edges gives the liveness edges of Nix's collector on a Graph: u -> v
// means "if u is alive, v is alive". They are the references (without
// self-references) and, with keep-derivations, output -> its deriver
// (when the deriver lists it as an output and is a .drv), and with
// keep-outputs, derivation -> its valid outputs. Nix's collector walks
// these edges backwards from each store entry; walking them forwards
// from the roots gives the same live set in one pass over the graph.
type edges struct {
	g               *db.Graph
	keepOutputs     bool
	keepDerivations bool
	isDrv           []bool
}

func newEdges(g *db.Graph, keepOutputs, keepDerivations bool) *edges {
	e := &edges{g: g, keepOutputs: keepOutputs, keepDerivations: keepDerivations}
	if keepDerivations {
		e.isDrv = make([]bool, g.Len())
		for id := 0; id < g.Len(); id++ {
			e.isDrv[id] = strings.HasSuffix(g.Name(db.PathID(id)), ".drv")
		}
	}
	return e
}

// keepDerivEdge reports whether output u keeps its deriver d alive.
func (e *edges) keepDerivEdge(u db.PathID) (db.PathID, bool) {
	d := e.g.Deriver[u]
	if d == db.NoPath || !e.isDrv[d] {
		return 0, false
	}
	for _, o := range e.g.Outputs(d) {
		if o.ID == u {
			return d, true
		}
	}
	return 0, false
}

// forward calls fn for every v with an edge u -> v.
func (e *edges) forward(u db.PathID, fn func(db.PathID)) {
	for _, v := range e.g.References(u) {
		if v != u {
			fn(v)
		}
	}
	if e.keepDerivations {
		if d, ok := e.keepDerivEdge(u); ok {
			fn(d)
		}
	}
	if e.keepOutputs {
		for _, o := range e.g.Outputs(u) {
			if o.ID != db.NoPath && o.ID != u {
				fn(o.ID)
			}
		}
	}
}

// backward calls fn for every u with an edge u -> v.
func (e *edges) backward(v db.PathID, fn func(db.PathID)) {
	for _, u := range e.g.Referrers(v) {
		if u != v {
			fn(u)
		}
	}
	if e.keepDerivations && e.isDrv[v] {
		for _, o := range e.g.Outputs(v) {
			if o.ID != db.NoPath && o.ID != v && e.g.Deriver[o.ID] == v {
				fn(o.ID)
			}
		}
	}
	if e.keepOutputs {
		for _, d := range e.g.DerivationsOf(v) {
			if d != v {
				fn(d)
			}
		}
	}
}

// liveness is the collector's view of which valid paths are alive. It is
// safe for use by one goroutine at a time; the collector guards it with
// its mutex while the socket server adds roots.
type liveness struct {
	e     *edges
	alive []bool
	// why[v] is the path that made v alive (NoPath for a root); rootOf
	// names the root of a path that is one.
	why    []db.PathID
	rootOf map[db.PathID]string
	queue  []db.PathID
}

func newLiveness(e *edges) *liveness {
	n := e.g.Len()
	l := &liveness{e: e, alive: make([]bool, n), why: make([]db.PathID, n), rootOf: map[db.PathID]string{}}
	return l
}

// markRoot makes id alive with everything it keeps alive; reason names
// the root ("LINK -> PATH", "{temp:PID}", "registered within --keep-recent").
// It returns the number of paths newly marked.
func (l *liveness) markRoot(id db.PathID, reason string) int {
	if _, ok := l.rootOf[id]; !ok {
		l.rootOf[id] = reason
	}
	if l.alive[id] {
		return 0
	}
	l.alive[id] = true
	l.why[id] = db.NoPath
	n := 1
	l.queue = append(l.queue[:0], id)
	for len(l.queue) > 0 {
		u := l.queue[len(l.queue)-1]
		l.queue = l.queue[:len(l.queue)-1]
		l.e.forward(u, func(v db.PathID) {
			if !l.alive[v] {
				l.alive[v] = true
				l.why[v] = u
				n++
				l.queue = append(l.queue, v)
			}
		})
	}
	return n
}

// chain explains why id is alive: the root, then each path down to id.
func (l *liveness) chain(id db.PathID) (root string, path []db.PathID) {
	for cur := id; ; {
		path = append(path, cur)
		if l.why[cur] == db.NoPath {
			root = l.rootOf[cur]
			break
		}
		cur = l.why[cur]
		if len(path) > l.e.g.Len() {
			break
		}
	}
	for i, j := 0, len(path)-1; i < j; i, j = i+1, j-1 {
		path[i], path[j] = path[j], path[i]
	}
	return root, path
}

// deadFrom returns the valid paths Nix's collector finds dead when it
// scans the store directory: every path that keeps (through the edges)
// some present, non-alive path. starts are the valid paths present in
// the store directory. A valid path missing from disk that keeps no
// present dead path is left alone, as Nix leaves it.
func (l *liveness) deadFrom(starts []db.PathID) []bool {
	n := l.e.g.Len()
	dead := make([]bool, n)
	var stack []db.PathID
	for _, s := range starts {
		if l.alive[s] || dead[s] {
			continue
		}
		dead[s] = true
		stack = append(stack, s)
		for len(stack) > 0 {
			v := stack[len(stack)-1]
			stack = stack[:len(stack)-1]
			l.e.backward(v, func(u db.PathID) {
				if !dead[u] && !l.alive[u] {
					dead[u] = true
					stack = append(stack, u)
				}
			})
		}
	}
	return dead
}

// deletionOrder orders the dead paths so that every path comes before the
// paths it references (referrers first, as the Refs foreign keys
// require), with each strongly connected component of the reference
// graph kept together: comps[i] is one component, to be invalidated in
// the same transaction. It uses Tarjan's algorithm, iteratively.
func deletionOrder(g *db.Graph, dead []bool) [][]db.PathID {
	n := g.Len()
	const unvisited = -1
	index := make([]int32, n)
	low := make([]int32, n)
	for i := range index {
		index[i] = unvisited
	}
	onStack := make([]bool, n)
	var stack []db.PathID
	var comps [][]db.PathID
	type frame struct {
		v db.PathID
		i int
	}
	var call []frame
	next := int32(0)
	for s := 0; s < n; s++ {
		if !dead[s] || index[s] != unvisited {
			continue
		}
		call = append(call, frame{db.PathID(s), 0})
		index[s], low[s] = next, next
		next++
		stack = append(stack, db.PathID(s))
		onStack[s] = true
		for len(call) > 0 {
			f := &call[len(call)-1]
			refs := g.References(f.v)
			if f.i < len(refs) {
				w := refs[f.i]
				f.i++
				if !dead[w] || w == f.v {
					continue
				}
				if index[w] == unvisited {
					index[w], low[w] = next, next
					next++
					stack = append(stack, w)
					onStack[w] = true
					call = append(call, frame{w, 0})
				} else if onStack[w] && index[w] < low[f.v] {
					low[f.v] = index[w]
				}
				continue
			}
			v := f.v
			call = call[:len(call)-1]
			if len(call) > 0 {
				p := call[len(call)-1].v
				if low[v] < low[p] {
					low[p] = low[v]
				}
			}
			if low[v] == index[v] {
				var comp []db.PathID
				for {
					w := stack[len(stack)-1]
					stack = stack[:len(stack)-1]
					onStack[w] = false
					comp = append(comp, w)
					if w == v {
						break
					}
				}
				comps = append(comps, comp)
			}
		}
	}
	return newestFirst(g, dead, comps)
}

// newestFirst orders the components referrers first (Kahn's algorithm on
// the graph of components), taking among the ready ones the component
// with the newest path (the highest DB id) first. Nix registers a path
// after its references, so this mostly deletes in descending id order:
// the rows of one batch then sit together in the ValidPaths and Refs
// B-trees, and a transaction rewrites far fewer pages than one that
// deletes in graph-walk order.
func newestFirst(g *db.Graph, dead []bool, comps [][]db.PathID) [][]db.PathID {
	compOf := make([]int32, g.Len())
	key := make([]db.PathID, len(comps))
	for ci, comp := range comps {
		for _, v := range comp {
			compOf[v] = int32(ci)
			key[ci] = max(key[ci], v)
		}
	}
	// waiting[c]: edges from other components into c not yet released.
	waiting := make([]int32, len(comps))
	for ci, comp := range comps {
		for _, v := range comp {
			for _, w := range g.References(v) {
				if dead[w] && compOf[w] != int32(ci) {
					waiting[compOf[w]]++
				}
			}
		}
	}
	h := compHeap{key: key}
	for ci := range comps {
		if waiting[ci] == 0 {
			h.push(int32(ci))
		}
	}
	out := make([][]db.PathID, 0, len(comps))
	for len(h.c) > 0 {
		ci := h.pop()
		out = append(out, comps[ci])
		for _, v := range comps[ci] {
			for _, w := range g.References(v) {
				if dead[w] && compOf[w] != ci {
					if waiting[compOf[w]]--; waiting[compOf[w]] == 0 {
						h.push(compOf[w])
					}
				}
			}
		}
	}
	return out
}

// compHeap is a max-heap of component indexes by key.
type compHeap struct {
	c   []int32
	key []db.PathID
}

func (h *compHeap) less(i, j int) bool { return h.key[h.c[i]] > h.key[h.c[j]] }

func (h *compHeap) push(ci int32) {
	h.c = append(h.c, ci)
	for i := len(h.c) - 1; i > 0; {
		p := (i - 1) / 2
		if !h.less(i, p) {
			break
		}
		h.c[i], h.c[p] = h.c[p], h.c[i]
		i = p
	}
}

func (h *compHeap) pop() int32 {
	top := h.c[0]
	last := len(h.c) - 1
	h.c[0] = h.c[last]
	h.c = h.c[:last]
	for i := 0; ; {
		l, r, m := 2*i+1, 2*i+2, i
		if l < last && h.less(l, m) {
			m = l
		}
		if r < last && h.less(r, m) {
			m = r
		}
		if m == i {
			break
		}
		h.c[i], h.c[m] = h.c[m], h.c[i]
		i = m
	}
	return top
}
