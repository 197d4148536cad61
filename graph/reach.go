package graph

// Reach answers "which paths keep this one alive, and by how short a
// chain?" for one path at a time: a breadth-first search backwards along
// the Edges (referrers, and the keep-* edges reversed) from the path,
// giving every path that keeps it the length of its shortest chain to it.
// Chain then reads a shortest chain from any such path forwards, along
// edges whose distance decreases, so that the chains of every root to
// one path cost one search, O(paths + edges), plus the chains' lengths,
// never a search per root.
//
// A Reach reuses its arrays from one To to the next (resetting only what
// the last search visited). It is for one goroutine at a time; the Edges
// it reads may be shared.
type Reach struct {
	e       *Edges
	dist    []int32 // -1: does not reach the target
	visited []PathID
	to      PathID
}

// NewReach prepares searches on e's graph (O(paths) memory, once).
func NewReach(e *Edges) *Reach {
	d := make([]int32, e.g.Len())
	for i := range d {
		d[i] = -1
	}
	return &Reach{e: e, dist: d, to: NoPath}
}

// To computes, for every path, the length of its shortest chain of edges
// to the path to (0 for to itself). It replaces the previous search.
func (r *Reach) To(to PathID) { r.ToAmong(to, nil) }

// ToAmong is To searching only through the paths u with among[u] (to
// itself always; nil: every path): the chains found, and so Dist and
// Chain, use no other path. Given the live set (Liveness.AliveSet) and a
// live path, it finds every root's shortest chain as To does, since
// every path on a chain from a root is alive, without visiting the
// dead paths that keep it (on a store never collected, most of them).
func (r *Reach) ToAmong(to PathID, among []bool) {
	for _, v := range r.visited {
		r.dist[v] = -1
	}
	r.visited = r.visited[:0]
	r.to = to
	r.dist[to] = 0
	r.visited = append(r.visited, to)
	for head := 0; head < len(r.visited); head++ {
		v := r.visited[head]
		d := r.dist[v] + 1
		r.e.Backward(v, func(u PathID, _ EdgeKind) {
			if r.dist[u] < 0 && (among == nil || among[u]) {
				r.dist[u] = d
				r.visited = append(r.visited, u)
			}
		})
	}
}

// Dist is the length of a shortest chain from u to the target of the last
// To (0 for the target itself); ok is false when u does not keep it.
func (r *Reach) Dist(u PathID) (int, bool) {
	if d := r.dist[u]; d >= 0 {
		return int(d), true
	}
	return 0, false
}

// Keepers is the number of paths that keep the target alive, the target
// included (the paths To visited).
func (r *Reach) Keepers() int { return len(r.visited) }

// Visited lists the paths that keep the target of the last To alive, the
// target first, then by distance (breadth-first order). It aliases the
// Reach and is valid until the next To: do not modify it.
func (r *Reach) Visited() []PathID { return r.visited }

// Chain is a shortest chain from u to the target of the last To: u first
// (its Edge is Root), then each path with the kind of the edge from the
// one before, the target last; nil when u does not keep the target.
// Where several edges lead one step closer, the first in Forward's order
// is taken (a reference before a keep-* edge), so the chain is the same
// every time for the same graph.
func (r *Reach) Chain(u PathID) []Step {
	d := r.dist[u]
	if d < 0 {
		return nil
	}
	chain := make([]Step, 0, d+1)
	chain = append(chain, Step{u, Root})
	for cur := u; d > 0; d-- {
		next, kind := NoPath, Root
		r.e.Forward(cur, func(v PathID, k EdgeKind) {
			if next == NoPath && r.dist[v] == d-1 {
				next, kind = v, k
			}
		})
		if next == NoPath { // cannot happen: a path at distance d has an edge to one at d-1
			return nil
		}
		chain = append(chain, Step{next, kind})
		cur = next
	}
	return chain
}
