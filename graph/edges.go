package graph

import "strings"

// EdgeKind says why one path keeps another alive.
type EdgeKind uint8

const (
	// Root: no edge, the path is a root (the first step of a chain).
	Root EdgeKind = iota
	// Reference: the path refers to the next one (Refs).
	Reference
	// KeepOutputs: a derivation keeps its valid outputs alive
	// (keep-outputs = true).
	KeepOutputs
	// KeepDerivations: an output keeps the derivation that built it alive
	// (keep-derivations = true).
	KeepDerivations
)

// String is the kind's name: "root", "reference", "keep-outputs" or
// "keep-derivations" (the nix.conf setting that makes the edge).
func (k EdgeKind) String() string {
	switch k {
	case Root:
		return "root"
	case Reference:
		return "reference"
	case KeepOutputs:
		return "keep-outputs"
	case KeepDerivations:
		return "keep-derivations"
	}
	return "unknown"
}

// MarshalText makes an EdgeKind its name in JSON.
func (k EdgeKind) MarshalText() ([]byte, error) { return []byte(k.String()), nil }

// Edges are the liveness edges of Nix's (2.8) collector on a Graph: u -> v
// means "if u is alive, v is alive". They are the references (without
// self-references) and, with keep-derivations, output -> its deriver
// (when the deriver lists it as an output and is a .drv), and with
// keep-outputs, derivation -> its valid outputs. Nix's collector walks
// these edges backwards from each store entry; walking them forwards from
// the roots gives the same live set in one pass over the graph.
//
// Edges is immutable and safe for concurrent readers.
type Edges struct {
	g               *Graph
	keepOutputs     bool
	keepDerivations bool
	isDrv           []bool
}

// NewEdges gives g's liveness edges under nix.conf's keep-outputs and
// keep-derivations.
func NewEdges(g *Graph, keepOutputs, keepDerivations bool) *Edges {
	e := &Edges{g: g, keepOutputs: keepOutputs, keepDerivations: keepDerivations}
	if keepDerivations {
		e.isDrv = make([]bool, g.Len())
		for id := 0; id < g.Len(); id++ {
			e.isDrv[id] = strings.HasSuffix(g.Name(PathID(id)), ".drv")
		}
	}
	return e
}

// Graph is the graph the edges are on.
func (e *Edges) Graph() *Graph { return e.g }

// keepDerivEdge reports whether output u keeps its deriver d alive.
func (e *Edges) keepDerivEdge(u PathID) (PathID, bool) {
	d := e.g.Deriver[u]
	if d == NoPath || !e.isDrv[d] {
		return 0, false
	}
	for _, o := range e.g.Outputs(d) {
		if o.ID == u {
			return d, true
		}
	}
	return 0, false
}

// Forward calls fn for every v with an edge u -> v, with the edge's kind.
// A v may come more than once (a reference that is also an output).
func (e *Edges) Forward(u PathID, fn func(v PathID, k EdgeKind)) {
	for _, v := range e.g.References(u) {
		if v != u {
			fn(v, Reference)
		}
	}
	if e.keepDerivations {
		if d, ok := e.keepDerivEdge(u); ok {
			fn(d, KeepDerivations)
		}
	}
	if e.keepOutputs {
		for _, o := range e.g.Outputs(u) {
			if o.ID != NoPath && o.ID != u {
				fn(o.ID, KeepOutputs)
			}
		}
	}
}

// Backward calls fn for every u with an edge u -> v, with the edge's kind.
func (e *Edges) Backward(v PathID, fn func(u PathID, k EdgeKind)) {
	for _, u := range e.g.Referrers(v) {
		if u != v {
			fn(u, Reference)
		}
	}
	if e.keepDerivations && e.isDrv[v] {
		for _, o := range e.g.Outputs(v) {
			if o.ID != NoPath && o.ID != v && e.g.Deriver[o.ID] == v {
				fn(o.ID, KeepDerivations)
			}
		}
	}
	if e.keepOutputs {
		for _, d := range e.g.DerivationsOf(v) {
			if d != v {
				fn(d, KeepOutputs)
			}
		}
	}
}
