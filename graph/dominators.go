package graph

import "sync"

// Node is a node of a DomTree: the virtual super-root (SuperRoot), a root
// (RootNode) or a valid path (PathNode).
type Node = uint32

// SuperRoot is the virtual node above every root; NoNode marks an absent
// node (the immediate dominator of SuperRoot, of a node nothing reaches).
const (
	SuperRoot Node = 0
	NoNode    Node = ^Node(0)
)

// DomTree is the dominator tree of the liveness graph (Edges) seen from a
// virtual super-root whose children are the roots: node d dominates node v
// when every way from the super-root to v goes through d. Each root (a
// gcroots link, a profile generation, a process's use, ...) is a node of
// its own with one edge to its target, so two roots of one path each
// dominate nothing but themselves, and a path is dominated by a root
// exactly when removing that root alone makes the path dead: the paths a
// root dominates are what a collection after its removal deletes.
//
// It is computed by Lengauer and Tarjan's algorithm (path compression,
// O(E log N)) on arrays indexed by depth-first number, without recursion
// (a chain of a million paths is fine) and without a map. A DomTree is
// immutable once built and safe for concurrent readers (LCA builds its
// index once, guarded).
type DomTree struct {
	nroots int
	npaths int
	idom   []Node // by node; NoNode for SuperRoot and nodes not reached
	order  []Node // the reached nodes in depth-first preorder: each after its idom

	lcaOnce sync.Once
	pre     []uint32 // by node: position in a preorder of the dominator tree
	byPre   []Node   // the reached nodes in that preorder
	size    []uint32 // by node: size of its dominator subtree
	up      [][]Node // up[k][n]: the 2^k-th dominator of n (SuperRoot past the top)
}

// Dominators computes the dominator tree of e from the super-root, whose
// children are len(rootTargets) roots, root i referring to the path
// rootTargets[i] (NoPath: a root whose target is not a valid path; it
// keeps nothing). The paths no root reaches (the dead ones) are not in
// the tree.
func Dominators(e *Edges, rootTargets []PathID) *DomTree {
	n := e.g.Len()
	t := &DomTree{nroots: len(rootTargets), npaths: n}
	total := 1 + len(rootTargets) + n

	// Depth-first search from the super-root, iteratively: a stack of
	// edges (from, to), each node numbered when it is first popped, its
	// DFS parent the node whose edge popped it. Every edge pushed is an
	// edge between reached nodes; they are kept for the predecessors.
	dfn := make([]uint32, total) // 1-based depth-first number, 0: not reached
	var vertex []Node            // by dfn-1
	var parent []uint32          // by dfn-1: the parent's dfn-1
	var edgeFrom, edgeTo []Node
	type item struct{ from, to Node }
	stack := []item{{NoNode, SuperRoot}}
	var buf []Node
	for len(stack) > 0 {
		it := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		v := it.to
		if dfn[v] != 0 {
			continue
		}
		vertex = append(vertex, v)
		dfn[v] = uint32(len(vertex))
		if it.from == NoNode {
			parent = append(parent, 0)
		} else {
			parent = append(parent, dfn[it.from]-1)
		}
		buf = t.successors(e, rootTargets, v, buf[:0])
		// Pushed in reverse, so that they are visited in order.
		for i := len(buf) - 1; i >= 0; i-- {
			w := buf[i]
			edgeFrom = append(edgeFrom, v)
			edgeTo = append(edgeTo, w)
			if dfn[w] == 0 {
				stack = append(stack, item{v, w})
			}
		}
	}
	stack = nil
	k := len(vertex)

	// Predecessors by dfn (CSR).
	predOff := make([]uint32, k+1)
	for _, w := range edgeTo {
		predOff[dfn[w]]++
	}
	for i := 0; i < k; i++ {
		predOff[i+1] += predOff[i]
	}
	preds := make([]uint32, len(edgeTo))
	pos := make([]uint32, k)
	copy(pos, predOff[:k])
	for i, w := range edgeTo {
		x := dfn[w] - 1
		preds[pos[x]] = dfn[edgeFrom[i]] - 1
		pos[x]++
	}
	edgeFrom, edgeTo = nil, nil

	// Lengauer-Tarjan over dfn-1 indices; the super-root is 0.
	const none = ^uint32(0)
	semi := pos // reused: same length
	label := make([]uint32, k)
	ancestor := make([]uint32, k)
	idom := make([]uint32, k)
	bucketHead := make([]uint32, k)
	bucketNext := make([]uint32, k)
	for i := 0; i < k; i++ {
		semi[i], label[i], ancestor[i], bucketHead[i] = uint32(i), uint32(i), none, none
	}
	var path []uint32
	eval := func(v uint32) uint32 {
		if ancestor[v] == none {
			return v
		}
		// Compress the ancestor chain of v (iteratively): from the top,
		// each node takes the smaller-semi label of its ancestor and
		// jumps to its ancestor's ancestor.
		path = path[:0]
		for x := v; ancestor[ancestor[x]] != none; x = ancestor[x] {
			path = append(path, x)
		}
		for i := len(path) - 1; i >= 0; i-- {
			x := path[i]
			a := ancestor[x]
			if semi[label[a]] < semi[label[x]] {
				label[x] = label[a]
			}
			ancestor[x] = ancestor[a]
		}
		return label[v]
	}
	for w := uint32(k - 1); w >= 1; w-- {
		for _, v := range preds[predOff[w]:predOff[w+1]] {
			if u := eval(v); semi[u] < semi[w] {
				semi[w] = semi[u]
			}
		}
		s := semi[w]
		bucketNext[w] = bucketHead[s]
		bucketHead[s] = w
		p := parent[w]
		ancestor[w] = p
		for v := bucketHead[p]; v != none; v = bucketNext[v] {
			if u := eval(v); semi[u] < semi[v] {
				idom[v] = u
			} else {
				idom[v] = p
			}
		}
		bucketHead[p] = none
	}
	for w := 1; w < k; w++ {
		if idom[w] != semi[w] {
			idom[w] = idom[idom[w]]
		}
	}

	t.idom = make([]Node, total)
	for i := range t.idom {
		t.idom[i] = NoNode
	}
	for w := 1; w < k; w++ {
		t.idom[vertex[w]] = vertex[idom[w]]
	}
	t.order = vertex
	return t
}

// successors appends the nodes v has an edge to: the super-root's are the
// roots, a root's is its target, a path's are its liveness edges (each
// once per edge; duplicates are harmless).
func (t *DomTree) successors(e *Edges, rootTargets []PathID, v Node, buf []Node) []Node {
	switch {
	case v == SuperRoot:
		for i := range rootTargets {
			buf = append(buf, t.RootNode(i))
		}
	case int(v) <= t.nroots:
		if p := rootTargets[v-1]; p != NoPath && int(p) < t.npaths {
			buf = append(buf, t.PathNode(p))
		}
	default:
		e.Forward(PathID(int(v)-1-t.nroots), func(w PathID, _ EdgeKind) {
			buf = append(buf, t.PathNode(w))
		})
	}
	return buf
}

// Len is the number of nodes: 1 + roots + paths.
func (t *DomTree) Len() int { return len(t.idom) }

// RootNode is root i's node.
func (t *DomTree) RootNode(i int) Node { return Node(1 + i) }

// PathNode is path id's node.
func (t *DomTree) PathNode(id PathID) Node { return Node(1 + t.nroots + int(id)) }

// Root reports which root n is.
func (t *DomTree) Root(n Node) (int, bool) {
	if n == SuperRoot || int(n) > t.nroots {
		return 0, false
	}
	return int(n) - 1, true
}

// Path reports which path n is.
func (t *DomTree) Path(n Node) (PathID, bool) {
	if int(n) <= t.nroots || int(n) >= len(t.idom) {
		return NoPath, false
	}
	return PathID(int(n) - 1 - t.nroots), true
}

// Reached reports whether some root reaches n (the super-root is reached).
func (t *DomTree) Reached(n Node) bool { return n == SuperRoot || t.idom[n] != NoNode }

// Idom is n's immediate dominator: NoNode for the super-root and for a
// node not reached.
func (t *DomTree) Idom(n Node) Node { return t.idom[n] }

// Order lists the reached nodes, the super-root first, each after its
// immediate dominator (so walking it backwards visits every node before
// its dominator). The slice belongs to the tree: do not modify it.
func (t *DomTree) Order() []Node { return t.order }

// Sum turns per-node values into subtree sums in place: afterwards vals[n]
// is the sum of the values of the nodes n dominates (itself included).
// vals has Len() elements; values of nodes not reached are left alone and
// added nowhere.
func (t *DomTree) Sum(vals []uint64) {
	for i := len(t.order) - 1; i >= 1; i-- {
		n := t.order[i]
		vals[t.idom[n]] += vals[n]
	}
}

// Dominates reports whether a dominates b (every node dominates itself).
// Both must be reached.
func (t *DomTree) Dominates(a, b Node) bool {
	t.lcaOnce.Do(t.buildLCA)
	return t.pre[a] <= t.pre[b] && t.pre[b] < t.pre[a]+t.size[a]
}

// Dominated calls fn for every node n dominates (n itself first), in a
// preorder of the dominator tree; n must be reached. O(what it visits)
// after the index LCA uses, built once.
func (t *DomTree) Dominated(n Node, fn func(Node)) {
	t.lcaOnce.Do(t.buildLCA)
	p := t.pre[n]
	for _, v := range t.byPre[p : p+t.size[n]] {
		fn(v)
	}
}

// LCA is the nearest common dominator of a and b (both reached): the
// deepest node that dominates both. O(log N) after an index built once in
// O(N log depth).
func (t *DomTree) LCA(a, b Node) Node {
	t.lcaOnce.Do(t.buildLCA)
	if t.Dominates(a, b) {
		return a
	}
	for k := len(t.up) - 1; k >= 0; k-- {
		if x := t.up[k][a]; !t.Dominates(x, b) {
			a = x
		}
	}
	return t.idom[a]
}

// buildLCA numbers the dominator tree in preorder with subtree sizes (for
// Dominates in O(1)) and builds the binary-lifting tables.
func (t *DomTree) buildLCA() {
	total := len(t.idom)
	// Children in CSR, in Order (so each list is in depth-first order).
	off := make([]uint32, total+1)
	for _, n := range t.order[1:] {
		off[t.idom[n]+1]++
	}
	for i := 0; i < total; i++ {
		off[i+1] += off[i]
	}
	kids := make([]Node, off[total])
	pos := make([]uint32, total)
	copy(pos, off[:total])
	for _, n := range t.order[1:] {
		p := t.idom[n]
		kids[pos[p]] = n
		pos[p]++
	}
	t.pre = make([]uint32, total)
	t.byPre = make([]Node, 0, len(t.order))
	t.size = make([]uint32, total)
	depth := make([]uint32, total)
	maxDepth := uint32(0)
	stack := []Node{SuperRoot}
	next := uint32(0)
	for len(stack) > 0 {
		n := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		t.pre[n] = next
		t.byPre = append(t.byPre, n)
		next++
		if n != SuperRoot {
			depth[n] = depth[t.idom[n]] + 1
			maxDepth = max(maxDepth, depth[n])
		}
		for i := off[n+1]; i > off[n]; i-- {
			stack = append(stack, kids[i-1])
		}
	}
	// Sizes: in reverse Order every node comes before its dominator.
	for _, n := range t.order {
		t.size[n] = 1
	}
	for i := len(t.order) - 1; i >= 1; i-- {
		n := t.order[i]
		t.size[t.idom[n]] += t.size[n]
	}
	levels := 1
	for (uint32(1) << levels) <= maxDepth {
		levels++
	}
	t.up = make([][]Node, levels)
	t.up[0] = make([]Node, total)
	for _, n := range t.order {
		if n == SuperRoot {
			t.up[0][n] = SuperRoot
		} else {
			t.up[0][n] = t.idom[n]
		}
	}
	for k := 1; k < levels; k++ {
		prev := t.up[k-1]
		cur := make([]Node, total)
		for _, n := range t.order {
			cur[n] = prev[prev[n]]
		}
		t.up[k] = cur
	}
}
