package db

import (
	"context"
	"storekeeper/nix/nar"

	"encoding/hex"
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync"
	"unsafe"
)

// PathID identifies a valid path inside one Graph: a dense index 0..Len()-1
// in ValidPaths id order. It means nothing outside the Graph it came from.
type PathID = uint32

// NoPath marks an absent PathID (an invalid deriver, an output that is not
// valid).
const NoPath = ^PathID(0)

// GraphOptions choose the optional columns LoadGraph reads.
type GraphOptions struct {
	Hashes bool // the NAR hash of every path (verify)
	Sigs   bool // the sigs column (verify --sigs-needed)
	CA     bool // the ca column
	// PathsOnly reads the valid paths alone: the graph has no
	// references, no derivers and no derivation outputs (optimise).
	PathsOnly bool
}

// DrvOutput is one DerivationOutputs row of a derivation.
type DrvOutput struct {
	Name string // "out", "dev", ...
	Path string // full store path as registered (may not be valid)
	ID   PathID // the output's PathID, or NoPath if it is not valid
}

// Graph is the whole store's reference graph in compact form: integer ids,
// CSR adjacency arrays and one byte arena for the names. It is immutable
// after LoadGraph and safe for concurrent readers; the lazily built
// reverse index and name index are guarded internally.
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
	Problems GraphProblems

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

// idMapper maps ValidPaths ids to PathIDs: a dense table when ids are
// compact, binary search over the ascending id list otherwise.
type idMapper struct {
	ids   []int64
	dense []PathID
	minID int64
}

func newIDMapper(ids []int64) idMapper {
	m := idMapper{ids: ids}
	if len(ids) == 0 {
		return m
	}
	m.minID = ids[0]
	span := ids[len(ids)-1] - ids[0] + 1
	if span <= int64(4*len(ids)+1024) {
		m.dense = make([]PathID, span)
		for i := range m.dense {
			m.dense[i] = NoPath
		}
		for i, id := range ids {
			m.dense[id-m.minID] = PathID(i)
		}
	}
	return m
}

func (m *idMapper) get(id int64) PathID {
	if m.dense != nil {
		if id < m.minID || id-m.minID >= int64(len(m.dense)) {
			return NoPath
		}
		return m.dense[id-m.minID]
	}
	i := sort.Search(len(m.ids), func(i int) bool { return m.ids[i] >= id })
	if i < len(m.ids) && m.ids[i] == id {
		return PathID(i)
	}
	return NoPath
}

// ErrGraph wraps inconsistencies found while loading the graph.
var ErrGraph = errors.New("store: inconsistent database")

// LoadGraph reads ValidPaths, Refs and DerivationOutputs once, in one read
// transaction (one consistent snapshot, even while a nix-daemon writes),
// into a Graph. It issues three queries in all, whatever the store's size.
//
// Rows that break the schema's own invariants (a Refs row naming an id
// that is not in ValidPaths, a path outside storeDir) are not fatal: they
// are counted in Graph.Problems so verify can report them.
//
// Cancellation: ctx aborts the transaction; nothing is held afterwards.
func (d *DB) LoadGraph(ctx context.Context, storeDir string, o GraphOptions) (*Graph, error) {
	c, err := openRaw(d.rawURI, d.busyMillis)
	if err != nil {
		return nil, classifyDBError(d.Path, err)
	}
	defer c.close()
	// No mmap: the mapped file would count in the process's peak RSS
	// (the DB of a 315k-path store is ~170 MB), for a few percent of speed.
	// One read transaction: the three tables are read from one snapshot.
	if err := c.exec("begin"); err != nil {
		return nil, classifyDBError(d.Path, err)
	}
	defer c.exec("rollback")
	g := &Graph{StoreDir: storeDir}
	if err := d.loadGraph(ctx, c, g, o); err != nil {
		if errors.Is(err, ErrGraph) {
			return nil, err
		}
		return nil, classifyDBError(d.Path, err)
	}
	return g, nil
}

// GraphProblems records rows that break invariants.
type GraphProblems struct {
	DanglingRefs       int // Refs rows naming a missing ValidPaths id
	DanglingDrvOutputs int // DerivationOutputs rows naming a missing derivation
}

// rawQuery prepares sql and calls row for each result row.
func rawQuery(ctx context.Context, c *rawConn, sql string, row func(st *rawStmt) error) error {
	st, err := c.prepare(sql)
	if err != nil {
		return err
	}
	defer st.close()
	for n := 1; ; n++ {
		ok, err := st.next()
		if err != nil || !ok {
			return err
		}
		if err := row(st); err != nil {
			return err
		}
		if n&0xffff == 0 {
			if err := ctx.Err(); err != nil {
				return err
			}
		}
	}
}

// bytesView returns b as a string without copying; only for use before
// b's memory changes (the next step of its statement).
func bytesView(b []byte) string { return unsafe.String(unsafe.SliceData(b), len(b)) }

func (d *DB) loadGraph(ctx context.Context, c *rawConn, g *Graph, o GraphOptions) error {
	prefix := g.StoreDir + "/"
	cols := "id, path, registrationTime, narSize, deriver"
	k := 5
	hashCol, sigsCol, caCol, ultCol := -1, -1, -1, -1
	if o.Hashes {
		cols += ", hash"
		hashCol, k = k, k+1
	}
	if o.Sigs && d.HasSigs {
		cols += ", sigs"
		sigsCol, k = k, k+1
	}
	if o.CA && d.HasCA {
		cols += ", ca"
		caCol, k = k, k+1
	}
	if d.HasUltimate {
		cols += ", ultimate"
		ultCol = k
	}
	// Capacity hints: ids grow monotonically, so max(id) bounds the
	// number of rows (an O(1) query) unless many paths were deleted.
	hint := func(q string) int {
		n := int64(0)
		rawQuery(ctx, c, q, func(st *rawStmt) error { n = st.int64(0); return nil })
		return int(min(max(n, 0), 4<<20))
	}
	nHint := hint("select max(id) from ValidPaths")
	g.dbID = make([]int64, 0, nHint)
	g.nameOff = make([]uint32, 1, nHint+1)
	g.names = make([]byte, 0, nHint*48)
	g.RegTime = make([]int64, 0, nHint)
	g.NarSize = make([]uint64, 0, nHint)
	// The deriver column, as one arena: resolved once the name index
	// exists.
	drvOff := make([]uint32, 1, nHint+1)
	drvNames := make([]byte, 0, nHint*16)

	err := rawQuery(ctx, c, "select "+cols+" from ValidPaths order by id", func(st *rawStmt) error {
		id := st.int64(0)
		p := st.text(1)
		if len(p) <= len(prefix) || string(p[:len(prefix)]) != prefix {
			return fmt.Errorf("%w: ValidPaths row %d holds %q, which is not in the store dir %s (wrong --store-dir?)", ErrGraph, id, p, g.StoreDir)
		}
		g.dbID = append(g.dbID, id)
		g.names = append(g.names, p[len(prefix):]...)
		g.nameOff = append(g.nameOff, uint32(len(g.names)))
		g.RegTime = append(g.RegTime, st.int64(2))
		g.NarSize = append(g.NarSize, uint64(st.int64(3)))
		drvNames = append(drvNames, st.text(4)...)
		drvOff = append(drvOff, uint32(len(drvNames)))
		if hashCol >= 0 {
			ht := st.text(hashCol)
			h, err := parseDBHash(bytesView(ht))
			g.NarHash = append(g.NarHash, h)
			if err != nil {
				if g.HashText == nil {
					g.HashText = make([]string, len(g.dbID)-1, cap(g.dbID))
				}
				g.HashText = append(g.HashText, string(ht))
			} else if g.HashText != nil {
				g.HashText = append(g.HashText, "")
			}
		}
		if sigsCol >= 0 {
			g.Sigs = append(g.Sigs, string(st.text(sigsCol)))
		}
		if caCol >= 0 {
			g.CA = append(g.CA, string(st.text(caCol)))
		}
		if ultCol >= 0 {
			g.Ultimate = append(g.Ultimate, st.int64(ultCol) != 0)
		}
		return nil
	})
	if err != nil {
		return err
	}
	if g.HashText != nil && len(g.HashText) < len(g.dbID) {
		g.HashText = append(g.HashText, make([]string, len(g.dbID)-len(g.HashText))...)
	}
	if uint64(len(g.names)) > uint64(^uint32(0)) || uint64(len(drvNames)) > uint64(^uint32(0)) {
		return fmt.Errorf("%w: store path names exceed 4 GiB", ErrGraph)
	}
	n := len(g.dbID)
	if o.PathsOnly {
		g.refOff = make([]uint32, n+1)
		g.drvOutOff = make([]uint32, n+1)
		g.Deriver = make([]PathID, n)
		for i := range g.Deriver {
			g.Deriver[i] = NoPath
		}
		return nil
	}
	idm := newIDMapper(g.dbID)

	// Refs, in (referrer, reference) order, which is PathID order (ids
	// map to PathIDs monotonically): the CSR arrays fill in one pass.
	// SQLite reads the primary key's index for it, no sort.
	eHint := hint("select max(rowid) from Refs")
	from, to := make([]PathID, 0, eHint), make([]PathID, 0, eHint)
	err = rawQuery(ctx, c, "select referrer, reference from Refs order by referrer, reference", func(st *rawStmt) error {
		fa, tb := idm.get(st.int64(0)), idm.get(st.int64(1))
		if fa == NoPath || tb == NoPath {
			g.Problems.DanglingRefs++
			return nil
		}
		from = append(from, fa)
		to = append(to, tb)
		return nil
	})
	if err != nil {
		return err
	}
	g.refOff = make([]uint32, n+1)
	for _, f := range from {
		g.refOff[f+1]++
	}
	for i := 0; i < n; i++ {
		g.refOff[i+1] += g.refOff[i]
	}
	g.refs = to
	from, to = nil, nil

	// Derivers, resolved through the name index.
	g.Deriver = make([]PathID, n)
	for i := range n {
		g.Deriver[i] = NoPath
		dv := drvNames[drvOff[i]:drvOff[i+1]]
		if len(dv) == 0 {
			continue
		}
		if id, ok := g.Lookup(bytesView(dv)); ok {
			g.Deriver[i] = id
			continue
		}
		if g.DeriverRaw == nil {
			g.DeriverRaw = make([]string, n)
		}
		g.DeriverRaw[i] = string(dv)
	}

	// DerivationOutputs, grouped by derivation, outputs by name (the
	// primary key's order, so again no sort).
	type row struct {
		drv PathID
		out DrvOutput
	}
	var outs []row
	names := map[string]string{}
	err = rawQuery(ctx, c, "select drv, id, path from DerivationOutputs order by drv, id", func(st *rawStmt) error {
		drv := idm.get(st.int64(0))
		if drv == NoPath {
			g.Problems.DanglingDrvOutputs++
			return nil
		}
		nb := st.text(1)
		name, ok := names[bytesView(nb)]
		if !ok {
			name = string(nb)
			names[name] = name
		}
		p := string(st.text(2))
		id, _ := g.Lookup(p)
		outs = append(outs, row{drv, DrvOutput{Name: name, Path: p, ID: id}})
		return nil
	})
	if err != nil {
		return err
	}
	g.drvOutOff = make([]uint32, n+1)
	g.drvOuts = make([]DrvOutput, len(outs))
	for i, r := range outs {
		g.drvOutOff[r.drv+1]++
		g.drvOuts[i] = r.out
	}
	for i := 0; i < n; i++ {
		g.drvOutOff[i+1] += g.drvOutOff[i]
	}
	return nil
}

// parseDBHash parses the DB's hash column: "sha256:" + 64 hex digits (Nix
// and Guix both write base16 there), falling back to the other forms.
func parseDBHash(s string) (nar.Hash, error) {
	var h nar.Hash
	if len(s) == 7+64 && strings.HasPrefix(s, "sha256:") {
		if _, err := hex.Decode(h[:], []byte(s[7:])); err == nil {
			return h, nil
		}
	}
	return nar.ParseHash(s)
}
