// Package graph is the store's reference graph and what is computed on
// it: the compact (CSR) graph of valid paths, the liveness edges of Nix's
// collector with their kinds (references, keep-outputs, keep-derivations),
// liveness by breadth-first search from the roots with a shortest chain
// root → … → path for every live path, the dead set, and the order in
// which dead paths can be invalidated (referrers first, by strongly
// connected component).
//
// It does no I/O: store/db fills a Graph from SQLite through a Builder.
package graph

import (
	"strings"
	"sync"

	"storekeeper/nix/nar"
)

// PathID identifies a valid path inside one Graph: a dense index 0..Len()-1
// in ValidPaths id order. It means nothing outside the Graph it came from.
type PathID = uint32

// NoPath marks an absent PathID (an invalid deriver, an output that is not
// valid).
const NoPath = ^PathID(0)

// DrvOutput is one DerivationOutputs row of a derivation.
type DrvOutput struct {
	Name string // "out", "dev", ...
	Path string // full store path as registered (may not be valid)
	ID   PathID // the output's PathID, or NoPath if it is not valid
}

// Problems records rows that broke the database's invariants while the
// graph was loaded (they are left out of the graph).
type Problems struct {
	DanglingRefs       int // Refs rows naming a missing ValidPaths id
	DanglingDrvOutputs int // DerivationOutputs rows naming a missing derivation
}

// Graph is the whole store's reference graph in compact form: integer ids,
// CSR adjacency arrays and one byte arena for the names. It is immutable
// once built (Builder.Finish) and safe for concurrent readers; the lazily
// built reverse index, name index and output index are guarded
// internally.
type Graph struct {
	StoreDir string

	names   []byte   // base names, concatenated
	nameOff []uint32 // len n+1
	dbID    []int64  // PathID -> ValidPaths.id, ascending
	refOff  []uint32 // len n+1
	refs    []PathID

	// Per path, indexed by PathID.
	Deriver    []PathID // the deriver if it is a valid path, else NoPath
	DeriverRaw []string // the deriver column as written ("" for NULL); only set where Deriver is NoPath but the column is not empty
	RegTime    []int64  // registrationTime (Unix seconds)
	NarSize    []uint64 // narSize (0 where NULL)
	NarHash    []nar.Hash
	HashText   []string // the hash column where it could not be parsed (else "")
	Sigs       []string
	CA         []string
	Ultimate   []bool

	drvOutOff []uint32 // len n+1 over drvOuts, grouped by derivation
	drvOuts   []DrvOutput

	// Problems found while loading (rows breaking the schema's invariants).
	Problems Problems

	revOnce sync.Once
	revOff  []uint32
	revs    []PathID

	byNameOnce sync.Once
	byName     []PathID // open-addressing hash table of PathIDs, keyed by base name

	outOfOnce sync.Once
	outOfOff  []uint32 // reverse of DerivationOutputs: output -> derivations
	outOf     []PathID
}

// Len is the number of valid paths.
func (g *Graph) Len() int { return len(g.dbID) }

// Name is the base name of id ("<hash>-<name>").
func (g *Graph) Name(id PathID) string {
	return string(g.names[g.nameOff[id]:g.nameOff[id+1]])
}

func (g *Graph) nameBytes(id PathID) []byte { return g.names[g.nameOff[id]:g.nameOff[id+1]] }

// Path is the full logical store path of id.
func (g *Graph) Path(id PathID) string { return g.StoreDir + "/" + g.Name(id) }

// DBID is the ValidPaths.id of a path.
func (g *Graph) DBID(id PathID) int64 { return g.dbID[id] }

// References lists the paths id refers to (including itself if it refers
// to itself). The slice aliases the graph; do not modify it.
func (g *Graph) References(id PathID) []PathID { return g.refs[g.refOff[id]:g.refOff[id+1]] }

// Referrers lists the paths that refer to id. The reverse index is built
// on first use in O(edges).
func (g *Graph) Referrers(id PathID) []PathID {
	g.revOnce.Do(g.buildReverse)
	return g.revs[g.revOff[id]:g.revOff[id+1]]
}

// NumRefs is the number of reference edges.
func (g *Graph) NumRefs() int { return len(g.refs) }

// Outputs lists the DerivationOutputs rows of a derivation (none for a
// path that is not a derivation).
func (g *Graph) Outputs(drv PathID) []DrvOutput {
	if len(g.drvOutOff) == 0 {
		return nil
	}
	return g.drvOuts[g.drvOutOff[drv]:g.drvOutOff[drv+1]]
}

// DerivationsOf lists the valid derivations that have id among their
// DerivationOutputs (Nix's queryValidDerivers).
func (g *Graph) DerivationsOf(id PathID) []PathID {
	g.outOfOnce.Do(g.buildOutOf)
	return g.outOf[g.outOfOff[id]:g.outOfOff[id+1]]
}

// Lookup finds a path by its full logical path or base name. The name
// index is built on first use in O(paths).
func (g *Graph) Lookup(p string) (PathID, bool) {
	base := p
	if sd := g.StoreDir; len(p) > len(sd) && p[len(sd)] == '/' && p[:len(sd)] == sd {
		base = p[len(sd)+1:]
	}
	if strings.IndexByte(base, '/') >= 0 {
		return NoPath, false
	}
	g.byNameOnce.Do(g.buildByName)
	if len(g.byName) == 0 {
		return NoPath, false
	}
	mask := uint64(len(g.byName) - 1)
	for i := nameHash(base) & mask; ; i = (i + 1) & mask {
		id := g.byName[i]
		if id == NoPath {
			return NoPath, false
		}
		if string(g.nameBytes(id)) == base {
			return id, true
		}
	}
}

// nameHash is FNV-1a over the first 16 characters (the hash part of a
// store path is random, so they spread well) and the length.
func nameHash(s string) uint64 {
	h := uint64(14695981039346656037)
	n := min(len(s), 16)
	for i := 0; i < n; i++ {
		h ^= uint64(s[i])
		h *= 1099511628211
	}
	h ^= uint64(len(s))
	h *= 1099511628211
	return h
}

func (g *Graph) buildByName() {
	size := 1
	for size < 2*g.Len()+1 {
		size <<= 1
	}
	t := make([]PathID, size)
	for i := range t {
		t[i] = NoPath
	}
	mask := uint64(size - 1)
	for id := 0; id < g.Len(); id++ {
		i := nameHash(string(g.nameBytes(PathID(id)))) & mask
		for t[i] != NoPath {
			i = (i + 1) & mask
		}
		t[i] = PathID(id)
	}
	g.byName = t
}

func (g *Graph) buildReverse() {
	n := g.Len()
	off := make([]uint32, n+1)
	for _, r := range g.refs {
		off[r+1]++
	}
	for i := 0; i < n; i++ {
		off[i+1] += off[i]
	}
	revs := make([]PathID, len(g.refs))
	pos := make([]uint32, n)
	copy(pos, off[:n])
	for from := 0; from < n; from++ {
		for _, to := range g.References(PathID(from)) {
			revs[pos[to]] = PathID(from)
			pos[to]++
		}
	}
	g.revOff, g.revs = off, revs
}

func (g *Graph) buildOutOf() {
	n := g.Len()
	off := make([]uint32, n+1)
	for _, o := range g.drvOuts {
		if o.ID != NoPath {
			off[o.ID+1]++
		}
	}
	for i := 0; i < n; i++ {
		off[i+1] += off[i]
	}
	out := make([]PathID, off[n])
	pos := make([]uint32, n)
	copy(pos, off[:n])
	for drv := 0; drv < n && len(g.drvOutOff) > 0; drv++ {
		for _, o := range g.Outputs(PathID(drv)) {
			if o.ID != NoPath {
				out[pos[o.ID]] = PathID(drv)
				pos[o.ID]++
			}
		}
	}
	g.outOfOff, g.outOf = off, out
}
