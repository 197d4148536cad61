package db

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"unsafe"

	"storekeeper/graph"
	"storekeeper/nix/nar"
)

// GraphOptions choose the optional columns LoadGraph reads.
type GraphOptions struct {
	Hashes bool // the NAR hash of every path (verify)
	Sigs   bool // the sigs column (verify --sigs-needed)
	CA     bool // the ca column
	// PathsOnly reads the valid paths alone: the graph has no
	// references, no derivers and no derivation outputs (optimise).
	PathsOnly bool
}

// ErrGraph wraps inconsistencies found while loading the graph.
var ErrGraph = errors.New("store: inconsistent database")

// LoadGraph reads ValidPaths, Refs and DerivationOutputs once, in one read
// transaction (one consistent snapshot, even while a nix-daemon writes),
// into a graph.Graph (built through graph.Builder). It issues three queries in all, whatever the store's size.
//
// Rows that break the schema's own invariants (a Refs row naming an id
// that is not in ValidPaths, a path outside storeDir) are not fatal: they
// are counted in graph.Graph.Problems so verify can report them.
//
// Cancellation: ctx aborts the transaction; nothing is held afterwards.
func (d *DB) LoadGraph(ctx context.Context, storeDir string, o GraphOptions) (*graph.Graph, error) {
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
	g, err := d.loadGraph(ctx, c, storeDir, o)
	if err != nil {
		if errors.Is(err, ErrGraph) {
			return nil, err
		}
		return nil, classifyDBError(d.Path, err)
	}
	return g, nil
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

func (d *DB) loadGraph(ctx context.Context, c *rawConn, storeDir string, o GraphOptions) (*graph.Graph, error) {
	prefix := storeDir + "/"
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
	b := graph.NewBuilder(storeDir, nHint)
	g := b.Graph()
	// The deriver column, as one arena: resolved once the name index
	// exists.
	drvOff := make([]uint32, 1, nHint+1)
	drvNames := make([]byte, 0, nHint*16)

	err := rawQuery(ctx, c, "select "+cols+" from ValidPaths order by id", func(st *rawStmt) error {
		id := st.int64(0)
		p := st.text(1)
		if len(p) <= len(prefix) || string(p[:len(prefix)]) != prefix {
			return fmt.Errorf("%w: ValidPaths row %d holds %q, which is not in the store dir %s (wrong --store-dir?)", ErrGraph, id, p, storeDir)
		}
		if _, err := b.AddPath(id, p[len(prefix):]); err != nil {
			return fmt.Errorf("%w: %w", ErrGraph, err)
		}
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
					g.HashText = make([]string, len(g.NarHash)-1, cap(g.NarHash))
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
		return nil, err
	}
	n := g.Len()
	if g.HashText != nil && len(g.HashText) < n {
		g.HashText = append(g.HashText, make([]string, n-len(g.HashText))...)
	}
	if uint64(len(drvNames)) > uint64(^uint32(0)) {
		return nil, fmt.Errorf("%w: store path names exceed 4 GiB", ErrGraph)
	}
	if o.PathsOnly {
		return b.Finish(), nil
	}

	// Refs, in (referrer, reference) order, which is PathID order (ids
	// map to PathIDs monotonically): the CSR arrays fill in one pass.
	// SQLite reads the primary key's index for it, no sort.
	b.BeginRefs(hint("select max(rowid) from Refs"))
	err = rawQuery(ctx, c, "select referrer, reference from Refs order by referrer, reference", func(st *rawStmt) error {
		fa, tb := b.ByDBID(st.int64(0)), b.ByDBID(st.int64(1))
		if fa == graph.NoPath || tb == graph.NoPath {
			g.Problems.DanglingRefs++
			return nil
		}
		if err := b.AddRef(fa, tb); err != nil {
			return fmt.Errorf("%w: %w", ErrGraph, err)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}

	// Derivers, resolved through the name index.
	g.Deriver = make([]graph.PathID, n)
	for i := range n {
		g.Deriver[i] = graph.NoPath
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
	names := map[string]string{}
	err = rawQuery(ctx, c, "select drv, id, path from DerivationOutputs order by drv, id", func(st *rawStmt) error {
		drv := b.ByDBID(st.int64(0))
		if drv == graph.NoPath {
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
		if err := b.AddOutput(drv, graph.DrvOutput{Name: name, Path: p, ID: id}); err != nil {
			return fmt.Errorf("%w: %w", ErrGraph, err)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return b.Finish(), nil
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
