package db

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"math"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"storekeeper/nix/nar"
	"storekeeper/nix/storepath"
)

// Registration is one path's row for Register: what Nix 2.8's
// registerValidPaths takes as a ValidPathInfo.
type Registration struct {
	Path    string // the full store path
	NarHash nar.Hash
	NarSize uint64 // 0: unknown (the column is NULL, as Nix writes it)
	Deriver string // the full store path of the deriver; "" none
	// References are full store paths, in any order (duplicates count
	// once); the path itself may be one of them.
	References []string
	// RegistrationTime is in Unix seconds; 0 means now.
	RegistrationTime int64
	Ultimate         bool     // built locally (Nix's "ultimately trusted")
	Sigs             []string // signatures, written sorted and each once, as Nix's set
	CA               string   // the content address ("" none), as Nix renders it
	// Outputs are a .drv's outputs whose paths are known, name -> full
	// store path: its DerivationOutputs rows. nil for other paths.
	Outputs map[string]string
}

// RegisterOptions are the options of Register.
type RegisterOptions struct {
	// Reregister updates the rows of paths already valid (as Nix's
	// --reregister) instead of refusing the batch with ErrAlreadyValid.
	Reregister bool
}

var (
	// ErrNotValidReference is wrapped by *ReferenceError.
	ErrNotValidReference = errors.New("store: reference is not valid")
	// ErrCycle: the references of the batch's paths form a cycle (a path
	// referring to itself is no cycle).
	ErrCycle = errors.New("store: references form a cycle")
	// ErrAlreadyValid: a path of the batch is valid already and
	// RegisterOptions.Reregister is not set.
	ErrAlreadyValid = errors.New("store: path is already valid")
	// ErrNotContentAddressed: a registration's CA does not give its path
	// (Nix's "claims to be content-addressed but isn't").
	ErrNotContentAddressed = errors.New("store: path claims to be content-addressed but is not")
	// ErrBadRegistration: a registration is malformed (not a store path,
	// a path twice in the batch, paths of several store dirs, a NAR size
	// too large, Outputs on a path that is not a .drv).
	ErrBadRegistration = errors.New("store: malformed registration")
)

// ReferenceError is Register's refusal of a batch in which a path refers
// to a path that is neither valid nor in the batch. It wraps
// ErrNotValidReference.
type ReferenceError struct {
	Referrer, Reference string
	// Others counts the batch's further references that are not valid.
	Others int
}

func (e *ReferenceError) Error() string {
	more := ""
	if e.Others > 0 {
		more = fmt.Sprintf(" (and %d more references of the batch are not valid)", e.Others)
	}
	return fmt.Sprintf("%v: path '%s', a reference of '%s', is neither valid nor in the batch%s; nothing was registered: register it first or in the same batch",
		ErrNotValidReference, e.Reference, e.Referrer, more)
}

func (e *ReferenceError) Unwrap() error { return ErrNotValidReference }

// Register makes the paths of regs valid, writing exactly the rows Nix
// 2.8's registerValidPaths writes (local-store.cc), in one BEGIN
// IMMEDIATE transaction (ImmediateTx):
//
//   - a path not valid yet: "insert into ValidPaths (path, hash,
//     registrationTime, deriver, narSize, ultimate, sigs, ca)" with hash
//     "sha256:" and 64 lowercase hex digits, registrationTime the given
//     one or now, and NULL for no deriver, a NarSize of 0, Ultimate
//     false, no Sigs (otherwise space-separated, sorted, each once) and
//     no CA; and, for a .drv, "insert or replace into DerivationOutputs"
//     for each of its Outputs. A CA that does not give the path refuses
//     the batch (ErrNotContentAddressed), as in Nix.
//   - a path already valid: with o.Reregister, "update ValidPaths set
//     narSize, hash, ultimate, sigs, ca where path = ?" (its deriver,
//     registrationTime and DerivationOutputs rows are left as they are,
//     as Nix leaves them); otherwise the batch is refused with
//     ErrAlreadyValid (Nix skips such a path silently).
//   - then every path's references: "insert or replace into Refs". A
//     re-registered path keeps the references it had; the given ones are
//     added (Nix only adds).
//
// On Guix's schema (7) the ultimate, sigs and ca columns do not exist and
// are not written (DB.HasUltimate, HasSigs, HasCA). Other tables (Nix's
// ca-derivations Realisations) are not touched.
//
// Paths are written in dependency order (references before referrers:
// ValidPaths ids grow that way); a cycle among the batch's references
// refuses it (ErrCycle, naming the paths). A reference outside the batch
// must be valid: all of them are looked up in one query per 500 paths,
// inside the transaction, so a path another process invalidates
// meanwhile is seen; otherwise the batch is refused with a
// *ReferenceError. Register does not look at the file system: the caller
// (register.Register) has checked, canonicalised and hashed the trees
// and checked a .drv's outputs.
//
// All or nothing: on any error (bad input, a refusal, SQLite's, ctx
// cancelled while the transaction runs) the transaction is rolled back
// and nothing is written; a kill -9 at any instant leaves the database
// with all of the batch or none of it (SQLite's atomic commit), so a
// reader never sees a valid path whose references are not valid. The
// write lock is taken up front (waiting up to the busy timeout, under
// ctx), so a concurrent nix-daemon cannot make it fail half-way.
func (d *DB) Register(ctx context.Context, regs []Registration, o RegisterOptions) error {
	if len(regs) == 0 {
		return nil
	}
	if d.ReadOnly {
		return fmt.Errorf("%w: %s is open read-only; cannot register paths", ErrDBAccess, d.Path)
	}
	b, err := d.planRegistration(regs)
	if err != nil {
		return err
	}
	now := time.Now().Unix()
	err = d.ImmediateTx(ctx, func(c *sql.Conn) error { return b.write(ctx, c, o, now) })
	if err == nil {
		return nil
	}
	var re *ReferenceError
	if errors.As(err, &re) || errors.Is(err, ErrAlreadyValid) || errors.Is(err, ErrNotContentAddressed) {
		return err
	}
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("registering %d paths: nothing was registered: %w", len(regs), err)
	}
	return fmt.Errorf("registering %d paths (nothing was registered): %w", len(regs), classifyDBError(d.Path, err))
}

// regBatch is a checked batch: regs with their order and the paths
// outside the batch they refer to.
type regBatch struct {
	d     *DB
	regs  []Registration
	order []int32 // indexes into regs, references first
	// refs[i]: regs[i]'s references, each once.
	refs     [][]string
	external []string // references outside the batch, each once
	// caErr[i]: regs[i]'s CA does not give its path (checked only when
	// it is inserted, as Nix does).
	caErr map[int]error
}

// planRegistration checks regs without the database: store paths of one
// store dir, each once; no cycle. It sorts the batch.
func (d *DB) planRegistration(regs []Registration) (*regBatch, error) {
	storeDir := filepath.Dir(regs[0].Path)
	checkPath := func(p, what string, i int) error {
		if filepath.Dir(p) != storeDir || storepath.ValidateBaseName(filepath.Base(p)) != nil || !filepath.IsAbs(p) {
			return fmt.Errorf("%w: the %s %q of registration %d (%q) is not a store path of %s", ErrBadRegistration, what, p, i+1, regs[i].Path, storeDir)
		}
		return nil
	}
	index := make(map[string]int32, len(regs))
	for i := range regs {
		r := &regs[i]
		if err := checkPath(r.Path, "path", i); err != nil {
			return nil, err
		}
		if j, dup := index[r.Path]; dup {
			return nil, fmt.Errorf("%w: '%s' is registered twice in the batch (registrations %d and %d)", ErrBadRegistration, r.Path, j+1, i+1)
		}
		index[r.Path] = int32(i)
		if r.Deriver != "" {
			if err := checkPath(r.Deriver, "deriver", i); err != nil {
				return nil, err
			}
		}
		if r.NarSize > math.MaxInt64 {
			return nil, fmt.Errorf("%w: the NAR size %d of '%s' is too large", ErrBadRegistration, r.NarSize, r.Path)
		}
		if len(r.Outputs) > 0 && !strings.HasSuffix(r.Path, ".drv") {
			return nil, fmt.Errorf("%w: derivation outputs given for '%s', which is not a .drv", ErrBadRegistration, r.Path)
		}
		for name, p := range r.Outputs {
			if name == "" {
				return nil, fmt.Errorf("%w: an output of '%s' has no name", ErrBadRegistration, r.Path)
			}
			if err := checkPath(p, "output "+name, i); err != nil {
				return nil, err
			}
		}
	}
	b := &regBatch{d: d, regs: regs, refs: make([][]string, len(regs)), caErr: map[int]error{}}
	adj := make([][]int32, len(regs)) // in-batch references, self excluded
	seenExt := map[string]bool{}
	for i := range regs {
		r := &regs[i]
		refs := r.References
		if !sortedUnique(refs) {
			refs = append([]string(nil), refs...)
			sort.Strings(refs)
			refs = dedupSorted(refs)
		}
		b.refs[i] = refs
		for _, ref := range refs {
			if j, ok := index[ref]; ok {
				if j != int32(i) {
					adj[i] = append(adj[i], j)
				}
				continue
			}
			if err := checkPath(ref, "reference", i); err != nil {
				return nil, err
			}
			if !seenExt[ref] {
				seenExt[ref] = true
				b.external = append(b.external, ref)
			}
		}
		if r.CA != "" && d.HasCA {
			got, err := storepath.ContentAddressedPath(storeDir, r.Path, r.CA, storepath.NamePart(filepath.Base(r.Path)), refs)
			if err != nil || got != r.Path {
				why := fmt.Sprintf("it gives '%s'", got)
				if err != nil {
					why = err.Error()
				}
				b.caErr[i] = fmt.Errorf("%w: cannot add '%s' to the store: its content address %q does not give its path (%s); nothing was registered", ErrNotContentAddressed, r.Path, r.CA, why)
			}
		}
	}
	order, err := topoOrder(regs, adj)
	if err != nil {
		return nil, err
	}
	b.order = order
	return b, nil
}

func sortedUnique(s []string) bool {
	for i := 1; i < len(s); i++ {
		if s[i-1] >= s[i] {
			return false
		}
	}
	return true
}

func dedupSorted(s []string) []string {
	out := s[:0]
	for i, x := range s {
		if i == 0 || x != s[i-1] {
			out = append(out, x)
		}
	}
	return out
}

// topoOrder returns the indexes of regs with every path after the paths
// it refers to (adj: in-batch references), or ErrCycle naming a cycle.
// It is Nix's topoSort, without recursion.
func topoOrder(regs []Registration, adj [][]int32) ([]int32, error) {
	const (
		white = iota
		grey  // on the DFS stack
		black // done
	)
	colour := make([]uint8, len(regs))
	order := make([]int32, 0, len(regs))
	type frame struct{ node, next int32 }
	var stack []frame
	for start := range regs {
		if colour[start] != white {
			continue
		}
		colour[start] = grey
		stack = append(stack[:0], frame{int32(start), 0})
		for len(stack) > 0 {
			f := &stack[len(stack)-1]
			if int(f.next) == len(adj[f.node]) {
				colour[f.node] = black
				order = append(order, f.node)
				stack = stack[:len(stack)-1]
				continue
			}
			j := adj[f.node][f.next]
			f.next++
			switch colour[j] {
			case white:
				colour[j] = grey
				stack = append(stack, frame{j, 0})
			case grey:
				// The stack from j to the top is the cycle.
				var names []string
				for k := len(stack) - 1; k >= 0; k-- {
					names = append(names, "'"+regs[stack[k].node].Path+"'")
					if stack[k].node == j {
						break
					}
				}
				// names runs from the top of the stack down to j; print it
				// in reference order: j refers to ..., which refers to j.
				for l, r := 0, len(names)-1; l < r; l, r = l+1, r-1 {
					names[l], names[r] = names[r], names[l]
				}
				return nil, fmt.Errorf("%w: %s refers to %s; nothing was registered (a path may refer to itself, but paths may not refer to each other in a circle)",
					ErrCycle, strings.Join(names, ", which refers to "), names[0])
			}
		}
	}
	return order, nil
}

// write runs the batch in the transaction on c.
func (b *regBatch) write(ctx context.Context, c *sql.Conn, o RegisterOptions, now int64) error {
	regs := b.regs
	look := make([]string, 0, len(regs)+len(b.external))
	for i := range regs {
		look = append(look, regs[i].Path)
	}
	look = append(look, b.external...)
	ids, err := pathIDs(ctx, c, look)
	if err != nil {
		return err
	}
	var already []string
	for i := range regs {
		if _, ok := ids[regs[i].Path]; ok {
			already = append(already, regs[i].Path)
		}
	}
	if len(already) > 0 && !o.Reregister {
		more := ""
		if len(already) > 1 {
			more = fmt.Sprintf(" (and %d more paths of the batch)", len(already)-1)
		}
		return fmt.Errorf("%w: '%s'%s; nothing was registered (re-registering updates the rows of valid paths)", ErrAlreadyValid, already[0], more)
	}
	if err := b.checkExternal(ids); err != nil {
		return err
	}

	d := b.d
	cols, vals := "path, hash, registrationTime, deriver, narSize", "?, ?, ?, ?, ?"
	set := "narSize = ?, hash = ?"
	for _, c := range []struct {
		has  bool
		name string
	}{{d.HasUltimate, "ultimate"}, {d.HasSigs, "sigs"}, {d.HasCA, "ca"}} {
		if c.has {
			cols += ", " + c.name
			vals += ", ?"
			set += ", " + c.name + " = ?"
		}
	}
	ins, err := c.PrepareContext(ctx, "insert into ValidPaths ("+cols+") values ("+vals+")")
	if err != nil {
		return err
	}
	defer ins.Close()
	var upd, outs *sql.Stmt
	args := make([]any, 0, 8)
	// Rows first, in dependency order, then the references, as Nix.
	for _, i := range b.order {
		r := &regs[i]
		hash := "sha256:" + r.NarHash.Hex()
		var size any
		if r.NarSize != 0 {
			size = int64(r.NarSize)
		}
		extra := args[:0]
		if d.HasUltimate {
			extra = append(extra, nullIf(r.Ultimate, int64(1)))
		}
		if d.HasSigs {
			extra = append(extra, nullIf(len(r.Sigs) > 0, joinSigs(r.Sigs)))
		}
		if d.HasCA {
			extra = append(extra, nullIf(r.CA != "", r.CA))
		}
		if _, valid := ids[r.Path]; valid {
			if upd == nil {
				if upd, err = c.PrepareContext(ctx, "update ValidPaths set "+set+" where path = ?"); err != nil {
					return err
				}
				defer upd.Close()
			}
			if _, err := upd.ExecContext(ctx, append(append([]any{size, hash}, extra...), r.Path)...); err != nil {
				return fmt.Errorf("updating the row of %s: %w", r.Path, err)
			}
			continue
		}
		if err := b.caErr[int(i)]; err != nil {
			return err
		}
		t := r.RegistrationTime
		if t == 0 {
			t = now
		}
		res, err := ins.ExecContext(ctx, append([]any{r.Path, hash, t, nullIf(r.Deriver != "", r.Deriver), size}, extra...)...)
		if err != nil {
			return fmt.Errorf("inserting the row of %s: %w", r.Path, err)
		}
		id, err := res.LastInsertId()
		if err != nil {
			return err
		}
		ids[r.Path] = id
		if len(r.Outputs) > 0 {
			if outs == nil {
				if outs, err = c.PrepareContext(ctx, "insert or replace into DerivationOutputs (drv, id, path) values (?, ?, ?)"); err != nil {
					return err
				}
				defer outs.Close()
			}
			names := make([]string, 0, len(r.Outputs))
			for name := range r.Outputs {
				names = append(names, name)
			}
			sort.Strings(names)
			for _, name := range names {
				if _, err := outs.ExecContext(ctx, id, name, r.Outputs[name]); err != nil {
					return fmt.Errorf("registering output %s of %s: %w", name, r.Path, err)
				}
			}
		}
	}
	ref, err := c.PrepareContext(ctx, "insert or replace into Refs (referrer, reference) values (?, ?)")
	if err != nil {
		return err
	}
	defer ref.Close()
	for _, i := range b.order {
		referrer := ids[regs[i].Path]
		for _, p := range b.refs[i] {
			if _, err := ref.ExecContext(ctx, referrer, ids[p]); err != nil {
				return fmt.Errorf("registering the reference of %s to %s: %w", regs[i].Path, p, err)
			}
		}
	}
	return nil
}

// checkExternal refuses the batch when a reference outside it is not
// valid (ids: the valid ones), naming the first in the batch's order.
func (b *regBatch) checkExternal(ids map[string]int64) error {
	var first *ReferenceError
	bad := map[string]bool{}
	for _, p := range b.external {
		if _, ok := ids[p]; !ok {
			bad[p] = true
		}
	}
	if len(bad) == 0 {
		return nil
	}
	for i := range b.regs {
		for _, p := range b.refs[i] {
			if bad[p] {
				if first == nil {
					first = &ReferenceError{Referrer: b.regs[i].Path, Reference: p}
				} else if p != first.Reference {
					first.Others++
				}
			}
		}
	}
	return first
}

// nullIf is v, or NULL when !ok.
func nullIf(ok bool, v any) any {
	if !ok {
		return nil
	}
	return v
}

// joinSigs is Nix's concatStringsSep(" ", sigs) of a std::set: sorted,
// each once.
func joinSigs(sigs []string) string {
	s := append([]string(nil), sigs...)
	sort.Strings(s)
	return strings.Join(dedupSorted(s), " ")
}

// pathIDs returns the ValidPaths ids of those of paths (full store paths)
// that are valid as q sees them, with one query per invalidateChunk
// paths.
func pathIDs(ctx context.Context, q Querier, paths []string) (map[string]int64, error) {
	out := make(map[string]int64, len(paths))
	for i := 0; i < len(paths); i += invalidateChunk {
		part := paths[i:min(i+invalidateChunk, len(paths))]
		args := make([]any, len(part))
		for j, p := range part {
			args[j] = p
		}
		rows, err := q.QueryContext(ctx, "select id, path from ValidPaths where path in ("+placeholders(len(part))+")", args...)
		if err != nil {
			return nil, err
		}
		for rows.Next() {
			var id int64
			var p string
			if err := rows.Scan(&id, &p); err != nil {
				rows.Close()
				return nil, err
			}
			out[p] = id
		}
		err = rows.Err()
		rows.Close()
		if err != nil {
			return nil, err
		}
	}
	return out, nil
}
