package graph

import (
	"errors"
	"fmt"
	"sort"
)

// ErrBuild is wrapped by every error a Builder returns: the rows given to
// it break the order or the bounds the compact form needs.
var ErrBuild = errors.New("graph: cannot build the reference graph")

// Builder fills a Graph in phases, in this order:
//
//  1. paths: AddPath for every valid path, in ascending ValidPaths id;
//     the caller fills the per-path columns (Graph().RegTime, NarSize,
//     ...) alongside, one entry per path;
//  2. references: BeginRefs, then AddRef grouped by referrer in PathID
//     order (the order of `order by referrer` on ValidPaths ids);
//  3. derivation outputs: AddOutput grouped by derivation in PathID order;
//  4. Finish.
//
// Once the paths are added, Graph().Lookup and ByDBID work (to resolve
// derivers and output paths). A graph that skips phases 2 and 3 has no
// references and no outputs. A Builder is for one goroutine; the Graph
// Finish returns is immutable and safe for concurrent readers.
type Builder struct {
	g        *Graph
	ids      idMapper
	idsBuilt bool
	inRefs   bool
	inOuts   bool
	lastFrom PathID
	lastDrv  PathID
}

// NewBuilder starts a graph of the store paths under storeDir, with room
// for about hint paths.
func NewBuilder(storeDir string, hint int) *Builder {
	hint = max(hint, 0)
	g := &Graph{StoreDir: storeDir}
	g.dbID = make([]int64, 0, hint)
	g.nameOff = make([]uint32, 1, hint+1)
	g.names = make([]byte, 0, hint*48)
	g.RegTime = make([]int64, 0, hint)
	g.NarSize = make([]uint64, 0, hint)
	return &Builder{g: g}
}

// Graph is the graph under construction: its exported per-path columns
// are the caller's to fill, and once every path is added its names and
// Lookup may be read. Use the value Finish returns as the result.
func (b *Builder) Graph() *Graph { return b.g }

// AddPath adds the valid path with ValidPaths id dbID and base name name
// (the bytes are copied) and returns its PathID. Ids must ascend.
func (b *Builder) AddPath(dbID int64, name []byte) (PathID, error) {
	g := b.g
	if b.inRefs || b.inOuts {
		return NoPath, fmt.Errorf("%w: path %d added after the references", ErrBuild, dbID)
	}
	if n := len(g.dbID); n > 0 && dbID <= g.dbID[n-1] {
		return NoPath, fmt.Errorf("%w: ValidPaths id %d after %d (ids must ascend)", ErrBuild, dbID, g.dbID[n-1])
	}
	if uint64(len(g.names))+uint64(len(name)) > uint64(^uint32(0)) {
		return NoPath, fmt.Errorf("%w: store path names exceed 4 GiB", ErrBuild)
	}
	if uint64(len(g.dbID)) >= uint64(NoPath) {
		return NoPath, fmt.Errorf("%w: more than %d valid paths", ErrBuild, NoPath-1)
	}
	g.dbID = append(g.dbID, dbID)
	g.names = append(g.names, name...)
	g.nameOff = append(g.nameOff, uint32(len(g.names)))
	return PathID(len(g.dbID) - 1), nil
}

// ByDBID maps a ValidPaths id to its PathID (NoPath if no path added has
// it). Call it once every path is added.
func (b *Builder) ByDBID(id int64) PathID {
	if !b.idsBuilt {
		b.ids = newIDMapper(b.g.dbID)
		b.idsBuilt = true
	}
	return b.ids.get(id)
}

// BeginRefs ends the paths and starts the references, with room for
// about hint of them.
func (b *Builder) BeginRefs(hint int) {
	if b.inRefs {
		return
	}
	b.inRefs = true
	b.g.refOff = make([]uint32, b.g.Len()+1)
	b.g.refs = make([]PathID, 0, max(hint, 0))
}

// AddRef adds the reference from -> to. References come grouped by
// referrer, in ascending PathID order.
func (b *Builder) AddRef(from, to PathID) error {
	if !b.inRefs {
		b.BeginRefs(0)
	}
	g := b.g
	n := PathID(g.Len())
	if from >= n || to >= n {
		return fmt.Errorf("%w: reference %d -> %d outside the %d paths", ErrBuild, from, to, n)
	}
	if from < b.lastFrom {
		return fmt.Errorf("%w: references of %s after those of %s (they must be grouped by referrer)", ErrBuild, g.Path(from), g.Path(b.lastFrom))
	}
	if uint64(len(g.refs)) >= uint64(^uint32(0)) {
		return fmt.Errorf("%w: more than 4 Gi references", ErrBuild)
	}
	b.lastFrom = from
	g.refs = append(g.refs, to)
	g.refOff[from+1]++
	return nil
}

// AddOutput adds a DerivationOutputs row of drv. Rows come grouped by
// derivation, in ascending PathID order.
func (b *Builder) AddOutput(drv PathID, o DrvOutput) error {
	if !b.inRefs {
		b.BeginRefs(0)
	}
	g := b.g
	if !b.inOuts {
		b.inOuts = true
		g.drvOutOff = make([]uint32, g.Len()+1)
	}
	n := PathID(g.Len())
	if drv >= n || (o.ID != NoPath && o.ID >= n) {
		return fmt.Errorf("%w: output %s of path %d outside the %d paths", ErrBuild, o.Path, drv, n)
	}
	if drv < b.lastDrv {
		return fmt.Errorf("%w: outputs of %s after those of %s (they must be grouped by derivation)", ErrBuild, g.Path(drv), g.Path(b.lastDrv))
	}
	b.lastDrv = drv
	g.drvOuts = append(g.drvOuts, o)
	g.drvOutOff[drv+1]++
	return nil
}

// Finish completes the graph and returns it; the Builder must not be used
// afterwards. Per-path columns the caller did not fill are empty, but
// Deriver, which is NoPath for every path where it is not set.
func (b *Builder) Finish() *Graph {
	g := b.g
	n := g.Len()
	if !b.inRefs {
		g.refOff = make([]uint32, n+1)
	}
	for i := 0; i < n; i++ {
		g.refOff[i+1] += g.refOff[i]
	}
	if !b.inOuts {
		g.drvOutOff = make([]uint32, n+1)
	}
	if cap(g.drvOuts) > len(g.drvOuts)+len(g.drvOuts)/16 {
		// append's spare room: the rows stay for the graph's lifetime.
		g.drvOuts = append([]DrvOutput(nil), g.drvOuts...)
	}
	if cap(g.refs) > len(g.refs)+len(g.refs)/16 {
		g.refs = append([]PathID(nil), g.refs...)
	}
	for i := 0; i < n; i++ {
		g.drvOutOff[i+1] += g.drvOutOff[i]
	}
	if g.Deriver == nil {
		g.Deriver = make([]PathID, n)
		for i := range g.Deriver {
			g.Deriver[i] = NoPath
		}
	}
	b.g = nil
	return g
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
