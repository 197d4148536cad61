package store

import (
	"context"
	"database/sql/driver"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"sort"
	"strings"
	"sync"
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
	NarHash    []NarHash
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
	base := strings.TrimPrefix(p, g.StoreDir+"/")
	if strings.Contains(base, "/") {
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
	conn, err := d.SQL.Conn(ctx)
	if err != nil {
		return nil, classifyDBError(d.Path, err)
	}
	defer conn.Close()
	g := &Graph{StoreDir: storeDir}
	err = conn.Raw(func(dc any) error {
		c, ok := dc.(interface {
			driver.ConnBeginTx
			driver.QueryerContext
		})
		if !ok {
			return fmt.Errorf("store: sqlite driver lacks BeginTx/QueryContext")
		}
		tx, err := c.BeginTx(ctx, driver.TxOptions{ReadOnly: true})
		if err != nil {
			return err
		}
		defer tx.Rollback()
		return d.loadGraph(ctx, c, g, o)
	})
	if err != nil {
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

func (d *DB) loadGraph(ctx context.Context, c driver.QueryerContext, g *Graph, o GraphOptions) error {
	prefix := g.StoreDir + "/"
	cols := "id, path, registrationTime, narSize, deriver"
	extra := 0
	if o.Hashes {
		cols += ", hash"
		extra++
	}
	wantSigs := o.Sigs && d.HasSigs
	if wantSigs {
		cols += ", sigs"
		extra++
	}
	wantCA := o.CA && d.HasCA
	if wantCA {
		cols += ", ca"
		extra++
	}
	if d.HasUltimate {
		cols += ", ultimate"
		extra++
	}
	// Capacity hints: ids grow monotonically, so max(id) bounds the
	// number of rows (an O(1) query) unless many paths were deleted.
	hint := func(q string) int {
		r, err := c.QueryContext(ctx, q, nil)
		if err != nil {
			return 0
		}
		defer r.Close()
		v := make([]driver.Value, 1)
		if r.Next(v) != nil {
			return 0
		}
		n, _ := v[0].(int64)
		return int(min(max(n, 0), 4<<20))
	}
	nHint := hint("select max(id) from ValidPaths")
	g.dbID = make([]int64, 0, nHint)
	g.nameOff = make([]uint32, 1, nHint+1)
	g.names = make([]byte, 0, nHint*48)
	g.RegTime = make([]int64, 0, nHint)
	g.NarSize = make([]uint64, 0, nHint)
	derivers := make([]string, 0, nHint)

	rows, err := c.QueryContext(ctx, "select "+cols+" from ValidPaths order by id", nil)
	if err != nil {
		return err
	}
	dest := make([]driver.Value, 5+extra)
	for {
		if err := rows.Next(dest); err != nil {
			rows.Close()
			if err == io.EOF {
				break
			}
			return err
		}
		id, _ := dest[0].(int64)
		p := asString(dest[1])
		if !strings.HasPrefix(p, prefix) {
			rows.Close()
			return fmt.Errorf("%w: ValidPaths row %d holds %q, which is not in the store dir %s (wrong --store-dir?)", ErrGraph, id, p, g.StoreDir)
		}
		g.dbID = append(g.dbID, id)
		g.names = append(g.names, p[len(prefix):]...)
		g.nameOff = append(g.nameOff, uint32(len(g.names)))
		rt, _ := dest[2].(int64)
		g.RegTime = append(g.RegTime, rt)
		ns, _ := dest[3].(int64)
		g.NarSize = append(g.NarSize, uint64(ns))
		derivers = append(derivers, asString(dest[4]))
		k := 5
		if o.Hashes {
			ht := asString(dest[k])
			h, err := parseDBHash(ht)
			g.NarHash = append(g.NarHash, h)
			if err != nil {
				if g.HashText == nil {
					g.HashText = make([]string, len(g.dbID)-1, cap(g.dbID))
				}
				g.HashText = append(g.HashText, ht)
			} else if g.HashText != nil {
				g.HashText = append(g.HashText, "")
			}
			k++
		}
		if wantSigs {
			g.Sigs = append(g.Sigs, asString(dest[k]))
			k++
		}
		if wantCA {
			g.CA = append(g.CA, asString(dest[k]))
			k++
		}
		if d.HasUltimate {
			u, _ := dest[k].(int64)
			g.Ultimate = append(g.Ultimate, u != 0)
			k++
		}
		if len(g.dbID)&0xfff == 0 {
			if err := ctx.Err(); err != nil {
				rows.Close()
				return err
			}
		}
	}
	if g.HashText != nil && len(g.HashText) < len(g.dbID) {
		g.HashText = append(g.HashText, make([]string, len(g.dbID)-len(g.HashText))...)
	}
	if uint64(len(g.names)) > uint64(^uint32(0)) {
		return fmt.Errorf("%w: store path names exceed 4 GiB", ErrGraph)
	}
	n := len(g.dbID)
	idm := newIDMapper(g.dbID)

	// Refs: read all pairs, then counting-sort into CSR.
	rows, err = c.QueryContext(ctx, "select referrer, reference from Refs", nil)
	if err != nil {
		return err
	}
	eHint := hint("select max(rowid) from Refs")
	from, to := make([]PathID, 0, eHint), make([]PathID, 0, eHint)
	dest = dest[:2]
	for {
		if err := rows.Next(dest); err != nil {
			rows.Close()
			if err == io.EOF {
				break
			}
			return err
		}
		a, _ := dest[0].(int64)
		b, _ := dest[1].(int64)
		fa, tb := idm.get(a), idm.get(b)
		if fa == NoPath || tb == NoPath {
			g.Problems.DanglingRefs++
			continue
		}
		from = append(from, fa)
		to = append(to, tb)
		if len(from)&0xffff == 0 {
			if err := ctx.Err(); err != nil {
				rows.Close()
				return err
			}
		}
	}
	g.refOff = make([]uint32, n+1)
	for _, f := range from {
		g.refOff[f+1]++
	}
	for i := 0; i < n; i++ {
		g.refOff[i+1] += g.refOff[i]
	}
	g.refs = make([]PathID, len(from))
	pos := make([]uint32, n)
	copy(pos, g.refOff[:n])
	for i, f := range from {
		g.refs[pos[f]] = to[i]
		pos[f]++
	}
	from, to = nil, nil
	for i := 0; i < n; i++ {
		r := g.refs[g.refOff[i]:g.refOff[i+1]]
		sort.Slice(r, func(a, b int) bool { return r[a] < r[b] })
	}

	// Derivers, resolved through the name index.
	g.Deriver = make([]PathID, n)
	for i, dv := range derivers {
		g.Deriver[i] = NoPath
		if dv == "" {
			continue
		}
		if id, ok := g.Lookup(dv); ok {
			g.Deriver[i] = id
			continue
		}
		if g.DeriverRaw == nil {
			g.DeriverRaw = make([]string, n)
		}
		g.DeriverRaw[i] = dv
	}

	// DerivationOutputs, grouped by derivation.
	rows, err = c.QueryContext(ctx, "select drv, id, path from DerivationOutputs", nil)
	if err != nil {
		return err
	}
	type row struct {
		drv PathID
		out DrvOutput
	}
	var outs []row
	names := map[string]string{}
	dest = dest[:3]
	for {
		if err := rows.Next(dest); err != nil {
			rows.Close()
			if err == io.EOF {
				break
			}
			return err
		}
		dbDrv, _ := dest[0].(int64)
		drv := idm.get(dbDrv)
		if drv == NoPath {
			g.Problems.DanglingDrvOutputs++
			continue
		}
		name := asString(dest[1])
		if s, ok := names[name]; ok {
			name = s
		} else {
			names[name] = name
		}
		p := asString(dest[2])
		id, _ := g.Lookup(p)
		outs = append(outs, row{drv, DrvOutput{Name: name, Path: p, ID: id}})
	}
	sort.SliceStable(outs, func(a, b int) bool {
		if outs[a].drv != outs[b].drv {
			return outs[a].drv < outs[b].drv
		}
		return outs[a].out.Name < outs[b].out.Name
	})
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

func asString(v driver.Value) string {
	switch s := v.(type) {
	case string:
		return s
	case []byte:
		return string(s)
	}
	return ""
}

// parseDBHash parses the DB's hash column: "sha256:" + 64 hex digits (Nix
// and Guix both write base16 there), falling back to the other forms.
func parseDBHash(s string) (NarHash, error) {
	var h NarHash
	if len(s) == 7+64 && strings.HasPrefix(s, "sha256:") {
		if _, err := hex.Decode(h[:], []byte(s[7:])); err == nil {
			return h, nil
		}
	}
	return ParseNarHash(s)
}
