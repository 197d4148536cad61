package graph

// Liveness is which valid paths are alive: everything the roots keep
// through the Edges. It is computed by breadth-first search from all the
// roots at once, recording for each live path the path and the kind of
// edge that reached it first, so that Chain reads back a shortest chain
// root → … → path.
//
// Use: AddRoot for every root, then Propagate; MarkRoot adds a root later
// (its new paths get chains from it, shortest among the paths it newly
// keeps). Liveness is for one goroutine at a time: a caller that adds
// roots from several goroutines guards it with its own mutex.
type Liveness struct {
	e      *Edges
	alive  []bool
	parent []PathID   // the path that made it alive (NoPath for a root)
	kind   []EdgeKind // the kind of the edge from parent
	rootOf map[PathID]string
	// queue holds the paths marked alive; head is the first not yet
	// expanded. Every path enters it at most once, so its capacity of
	// Len() never grows.
	queue []PathID
	head  int
}

// NewLiveness starts with nothing alive.
func NewLiveness(e *Edges) *Liveness {
	n := e.g.Len()
	return &Liveness{e: e, alive: make([]bool, n), parent: make([]PathID, n), kind: make([]EdgeKind, n),
		rootOf: map[PathID]string{}, queue: make([]PathID, 0, n)}
}

// Edges are the edges the liveness follows.
func (l *Liveness) Edges() *Edges { return l.e }

// Alive reports whether id is alive.
func (l *Liveness) Alive(id PathID) bool { return l.alive[id] }

// AliveSet is the alive flag of every path, by PathID; it aliases the
// Liveness and changes with it: do not modify it.
func (l *Liveness) AliveSet() []bool { return l.alive }

// AddRoot makes id a root, named by reason ("LINK -> PATH", "{temp:PID}",
// ...; the first reason given for a path is kept). What it keeps alive is
// marked by the next Propagate. It reports whether id was not alive yet.
func (l *Liveness) AddRoot(id PathID, reason string) bool {
	if _, ok := l.rootOf[id]; !ok {
		l.rootOf[id] = reason
	}
	if l.alive[id] {
		return false
	}
	l.alive[id] = true
	l.parent[id] = NoPath
	l.kind[id] = Root
	l.queue = append(l.queue, id)
	return true
}

// Propagate marks alive everything the roots added since the last
// Propagate keep, breadth first, and returns the number of paths it
// marked (the new roots not counted).
func (l *Liveness) Propagate() int {
	g, e := l.e.g, l.e
	n := 0
	for ; l.head < len(l.queue); l.head++ {
		u := l.queue[l.head]
		for _, v := range g.References(u) {
			if !l.alive[v] {
				l.visit(u, v, Reference)
				n++
			}
		}
		if e.keepDerivations {
			if d, ok := e.keepDerivEdge(u); ok && !l.alive[d] {
				l.visit(u, d, KeepDerivations)
				n++
			}
		}
		if e.keepOutputs {
			for _, o := range g.Outputs(u) {
				if o.ID != NoPath && !l.alive[o.ID] {
					l.visit(u, o.ID, KeepOutputs)
					n++
				}
			}
		}
	}
	return n
}

func (l *Liveness) visit(u, v PathID, k EdgeKind) {
	l.alive[v] = true
	l.parent[v] = u
	l.kind[v] = k
	l.queue = append(l.queue, v)
}

// MarkRoot is AddRoot and Propagate: it makes id alive with everything it
// keeps alive, and returns the number of paths newly marked.
func (l *Liveness) MarkRoot(id PathID, reason string) int {
	if !l.AddRoot(id, reason) {
		return 0
	}
	return 1 + l.Propagate()
}

// Step is one path of a chain and the kind of the edge from the step
// before it (Root for the first step).
type Step struct {
	ID   PathID
	Edge EdgeKind
}

// Chain explains why id is alive: the reason of the root that keeps it,
// and the paths from that root down to id, each kept by the one before
// through Step.Edge. After one Propagate over all the roots it is a
// shortest such chain. ok is false when id is not alive.
func (l *Liveness) Chain(id PathID) (root string, chain []Step, ok bool) {
	if !l.alive[id] {
		return "", nil, false
	}
	for cur := id; ; {
		chain = append(chain, Step{cur, l.kind[cur]})
		if l.parent[cur] == NoPath || len(chain) > len(l.alive) {
			root = l.rootOf[cur]
			break
		}
		cur = l.parent[cur]
	}
	for i, j := 0, len(chain)-1; i < j; i, j = i+1, j-1 {
		chain[i], chain[j] = chain[j], chain[i]
	}
	return root, chain, true
}

// DeadFrom returns the valid paths Nix's collector finds dead when it
// scans the store directory: every path that keeps (through the edges)
// some present, non-alive path. starts are the valid paths present in
// the store directory. A valid path missing from disk that keeps no
// present dead path is left alone, as Nix leaves it.
func (l *Liveness) DeadFrom(starts []PathID) []bool {
	n := l.e.g.Len()
	dead := make([]bool, n)
	var stack []PathID
	push := func(u PathID, _ EdgeKind) {
		if !dead[u] && !l.alive[u] {
			dead[u] = true
			stack = append(stack, u)
		}
	}
	for _, s := range starts {
		if l.alive[s] || dead[s] {
			continue
		}
		dead[s] = true
		stack = append(stack, s)
		for len(stack) > 0 {
			v := stack[len(stack)-1]
			stack = stack[:len(stack)-1]
			l.e.Backward(v, push)
		}
	}
	return dead
}
