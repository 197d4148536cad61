package graph

// DeletionOrder orders the dead paths so that every path comes before the
// paths it references (referrers first, as the Refs foreign keys
// require), with each strongly connected component of the reference
// graph kept together: comps[i] is one component, to be invalidated in
// the same transaction. It uses Tarjan's algorithm, iteratively.
func DeletionOrder(g *Graph, dead []bool) [][]PathID {
	n := g.Len()
	const unvisited = -1
	index := make([]int32, n)
	low := make([]int32, n)
	for i := range index {
		index[i] = unvisited
	}
	onStack := make([]bool, n)
	var stack []PathID
	var comps [][]PathID
	type frame struct {
		v PathID
		i int
	}
	var call []frame
	next := int32(0)
	for s := 0; s < n; s++ {
		if !dead[s] || index[s] != unvisited {
			continue
		}
		call = append(call, frame{PathID(s), 0})
		index[s], low[s] = next, next
		next++
		stack = append(stack, PathID(s))
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
				var comp []PathID
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
func newestFirst(g *Graph, dead []bool, comps [][]PathID) [][]PathID {
	compOf := make([]int32, g.Len())
	key := make([]PathID, len(comps))
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
	out := make([][]PathID, 0, len(comps))
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
	key []PathID
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
