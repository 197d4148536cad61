package db

import (
	"context"
	"errors"
	"fmt"
	"math"
	"path/filepath"
	"sort"
	"strings"
	"time"

	sqlite3 "modernc.org/sqlite/lib"

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
	// Others counts the further paths the batch refers to that are not
	// valid.
	Others int
}

func (e *ReferenceError) Error() string {
	more := ""
	if e.Others > 0 {
		more = fmt.Sprintf(" (and %d more paths the batch refers to are not valid)", e.Others)
	}
	return fmt.Sprintf("%v: path '%s', a reference of '%s', is neither valid nor in the batch%s; nothing was registered: register it first or in the same batch",
		ErrNotValidReference, e.Reference, e.Referrer, more)
}

func (e *ReferenceError) Unwrap() error { return ErrNotValidReference }

// Register makes the paths of regs valid, writing exactly the rows Nix
// 2.8's registerValidPaths writes (local-store.cc), in one BEGIN
// IMMEDIATE transaction:
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
// Rows are written in Nix's order (paths sorted, as its std::map of
// ValidPathInfos; each path's references sorted), so that a batch
// registered into an empty database gets the ValidPaths ids Nix gives
// it. A cycle among the batch's references refuses it (ErrCycle, naming
// the paths), as Nix's topological sort of the batch does; a path may
// refer to itself. A reference outside the batch must be valid: all of
// them are looked up in one query per 500 paths inside the
// transaction, so a path another process invalidated meanwhile is seen;
// otherwise the batch is refused with a *ReferenceError.
//
// On Guix's schema (7) the ultimate, sigs and ca columns do not exist and
// are not written (DB.HasUltimate, HasSigs, HasCA). Other tables (Nix's
// ca-derivations Realisations) are not touched. Register does not look at
// the file system: the caller (register.Register) has checked,
// canonicalised and hashed the trees and checked a .drv's outputs.
//
// The transaction runs on a connection of its own straight to SQLite
// (rawWriter), without SQLite's foreign key enforcement unless the schema
// has foreign keys other than Refs' and DerivationOutputs' into
// ValidPaths: every id the Refs and DerivationOutputs rows name is one
// Register read in the transaction or inserted, which is what those keys
// check.
//
// All or nothing: on any error (bad input, a refusal, SQLite's, ctx
// cancelled while the transaction runs) the transaction is rolled back
// and nothing is written; a kill -9 at any instant leaves the database
// with all of the batch or none of it (SQLite's atomic commit), so a
// reader never sees a valid path whose references are not valid. The
// write lock is taken up front (waiting up to the busy timeout; cancelling ends the wait at once), so a concurrent nix-daemon
// cannot make it fail half-way.
func (d *DB) Register(ctx context.Context, regs []Registration, o RegisterOptions) error {
	if len(regs) == 0 {
		return nil
	}
	if d.ReadOnly {
		return fmt.Errorf("%w: %s is open read-only; cannot register paths", ErrDBAccess, d.Path)
	}
	if d.bigLock == nil {
		// Closed: its own connection would write without the big-lock.
		return fmt.Errorf("%w: %s is closed; cannot register paths", ErrDBAccess, d.Path)
	}
	b, err := d.planRegistration(regs)
	if err != nil {
		return err
	}
	err = d.registerRaw(ctx, b, o)
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

// regBatch is a checked batch: regs in Nix's order with their references
// coded as indexes.
type regBatch struct {
	d     *DB
	regs  []Registration
	order []int32 // indexes into regs, sorted by path
	// refs[i]: regs[i]'s references, each once, sorted by path: k >= 0
	// is regs[k], k < 0 is external[-k-1].
	refs     [][]int32
	external []string // references outside the batch, each once
	// caErr[i]: regs[i]'s CA does not give its path (refused only when
	// it is inserted, as Nix does).
	caErr map[int32]error
}

// planRegistration checks regs without the database: store paths of one
// store dir, each once; no cycle. It sorts the batch.
func (d *DB) planRegistration(regs []Registration) (*regBatch, error) {
	storeDir := filepath.Dir(regs[0].Path)
	checkPath := func(p, what string, i int) error {
		// Clean: "/nix/store/x-y/" or "/nix/./store/x-y" would be
		// written as they are, rows no lookup ever finds.
		if filepath.Dir(p) != storeDir || storepath.ValidateBaseName(filepath.Base(p)) != nil || !filepath.IsAbs(p) || filepath.Clean(p) != p {
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
	b := &regBatch{d: d, regs: regs, refs: make([][]int32, len(regs)), caErr: map[int32]error{}}
	adj := make([][]int32, len(regs)) // in-batch references, self excluded
	ext := map[string]int32{}
	for i := range regs {
		r := &regs[i]
		refs := r.References
		if !sortedUnique(refs) {
			refs = append([]string(nil), refs...)
			sort.Strings(refs)
			refs = dedupSorted(refs)
		}
		codes := make([]int32, len(refs))
		for k, ref := range refs {
			if j, ok := index[ref]; ok {
				codes[k] = j
				if j != int32(i) {
					adj[i] = append(adj[i], j)
				}
				continue
			}
			e, ok := ext[ref]
			if !ok {
				if err := checkPath(ref, "reference", i); err != nil {
					return nil, err
				}
				e = int32(len(b.external))
				ext[ref] = e
				b.external = append(b.external, ref)
			}
			codes[k] = -e - 1
		}
		b.refs[i] = codes
		if r.CA != "" && d.HasCA {
			got, err := storepath.ContentAddressedPath(storeDir, r.Path, r.CA, storepath.NamePart(filepath.Base(r.Path)), refs)
			if err != nil || got != r.Path {
				why := fmt.Sprintf("it gives '%s'", got)
				if err != nil {
					why = err.Error()
				}
				b.caErr[int32(i)] = fmt.Errorf("%w: cannot add '%s' to the store: its content address %q does not give its path (%s); nothing was registered", ErrNotContentAddressed, r.Path, r.CA, why)
			}
		}
	}
	if err := checkCycles(regs, adj); err != nil {
		return nil, err
	}
	b.order = make([]int32, len(regs))
	for i := range b.order {
		b.order[i] = int32(i)
	}
	sort.Slice(b.order, func(x, y int) bool { return regs[b.order[x]].Path < regs[b.order[y]].Path })
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

// checkCycles returns ErrCycle naming a cycle of regs' references (adj:
// in-batch references, self-references left out), as Nix's topoSort of
// the batch; nil when there is none. A depth-first search without
// recursion.
func checkCycles(regs []Registration, adj [][]int32) error {
	const (
		white = iota
		grey  // on the search's stack
		black // done
	)
	colour := make([]uint8, len(regs))
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
				// The stack from j to the top is the cycle, in reference
				// order: j refers to the next, ..., the top refers to j.
				k := len(stack) - 1
				for stack[k].node != j {
					k--
				}
				var names []string
				for ; k < len(stack); k++ {
					names = append(names, "'"+regs[stack[k].node].Path+"'")
				}
				return fmt.Errorf("%w: %s refers to %s; nothing was registered (a path may refer to itself, but paths may not refer to each other in a circle)",
					ErrCycle, strings.Join(names, ", which refers to "), names[0])
			}
		}
	}
	return nil
}

// registerRaw runs the batch in one transaction on a rawWriter: all of
// it is committed, or nothing.
func (d *DB) registerRaw(ctx context.Context, b *regBatch, o RegisterOptions) error {
	w, err := d.openRawWriter(ctx)
	if err != nil {
		return err
	}
	defer w.close()
	if err := w.beginImmediate(ctx, d.busyMillis); err != nil {
		return err
	}
	err = b.write(ctx, w, o, time.Now().Unix())
	if err == nil && testHookBeforeCommit != nil {
		testHookBeforeCommit()
	}
	if err == nil {
		// ctx's interrupt stops a running statement only: SQLite drops
		// one sent while none runs (the next statement clears it).
		err = ctx.Err()
	}
	if err == nil {
		err = w.c.exec("commit")
	}
	if err != nil {
		w.rollback() // if interrupted too, closing the connection rolls back
		if ctx.Err() != nil && ResultCode(err)&0xff == sqlite3.SQLITE_INTERRUPT {
			return fmt.Errorf("%w (%w)", ctx.Err(), err)
		}
		return err
	}
	return nil
}

// testHookBeforeCommit, set by tests, runs after a batch's rows are
// written, before the commit.
var testHookBeforeCommit func()

// write writes the batch in w's transaction.
func (b *regBatch) write(ctx context.Context, w *rawWriter, o RegisterOptions, now int64) error {
	regs := b.regs
	look := make([]string, 0, len(regs)+len(b.external))
	for i := range regs {
		look = append(look, regs[i].Path)
	}
	look = append(look, b.external...)
	valid, err := w.pathIDs(look)
	if err != nil {
		return err
	}
	// ids[k]: regs[k]'s id, once valid; extIDs: the external references'.
	ids := make([]int64, len(regs))
	var already []string
	for _, i := range b.order {
		if id, ok := valid[regs[i].Path]; ok {
			ids[i] = id
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
	extIDs := make([]int64, len(b.external))
	for e, p := range b.external {
		extIDs[e] = valid[p] // 0: not valid
	}
	if err := b.checkExternal(extIDs); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
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
	ins, err := w.prepare("insert into ValidPaths (" + cols + ") values (" + vals + ")")
	if err != nil {
		return err
	}
	defer ins.close()
	var upd, outs *rawWriteStmt
	defer func() {
		for _, s := range []*rawWriteStmt{upd, outs} {
			if s != nil {
				s.close()
			}
		}
	}()
	args := make([]any, 0, 8)
	var names []string
	// Rows first, then the references, as Nix.
	for _, i := range b.order {
		r := &regs[i]
		hash := "sha256:" + r.NarHash.Hex()
		var size any
		if r.NarSize != 0 {
			size = int64(r.NarSize)
		}
		var extra [3]any
		n := 0
		if d.HasUltimate {
			extra[n] = nullIf(r.Ultimate, int64(1))
			n++
		}
		if d.HasSigs {
			extra[n] = nullIf(len(r.Sigs) > 0, joinSigs(r.Sigs))
			n++
		}
		if d.HasCA {
			extra[n] = nullIf(r.CA != "", r.CA)
			n++
		}
		if ids[i] != 0 {
			if upd == nil {
				if upd, err = w.prepare("update ValidPaths set " + set + " where path = ?"); err != nil {
					return err
				}
			}
			args = append(append(append(args[:0], size, hash), extra[:n]...), r.Path)
			if err := upd.exec(args...); err != nil {
				return fmt.Errorf("updating the row of %s: %w", r.Path, err)
			}
			continue
		}
		if err := b.caErr[i]; err != nil {
			return err
		}
		t := r.RegistrationTime
		if t == 0 {
			t = now
		}
		args = append(append(args[:0], r.Path, hash, t, nullIf(r.Deriver != "", r.Deriver), size), extra[:n]...)
		if err := ins.exec(args...); err != nil {
			return fmt.Errorf("inserting the row of %s: %w", r.Path, err)
		}
		ids[i] = w.lastInsertID()
		if len(r.Outputs) > 0 {
			if outs == nil {
				if outs, err = w.prepare("insert or replace into DerivationOutputs (drv, id, path) values (?, ?, ?)"); err != nil {
					return err
				}
			}
			names = names[:0]
			for name := range r.Outputs {
				names = append(names, name)
			}
			sort.Strings(names)
			for _, name := range names {
				if err := outs.exec(ids[i], name, r.Outputs[name]); err != nil {
					return fmt.Errorf("registering output %s of %s: %w", name, r.Path, err)
				}
			}
		}
	}
	ref, err := w.prepare("insert or replace into Refs (referrer, reference) values (?, ?)")
	if err != nil {
		return err
	}
	defer ref.close()
	for _, i := range b.order {
		for _, k := range b.refs[i] {
			var refID int64
			if k >= 0 {
				refID = ids[k]
			} else {
				refID = extIDs[-k-1]
			}
			if err := ref.exec(ids[i], refID); err != nil {
				return fmt.Errorf("registering a reference of %s: %w", regs[i].Path, err)
			}
		}
	}
	return nil
}

// checkExternal refuses the batch when a reference outside it is not
// valid (extIDs[e] == 0), naming the first in the batch's order.
func (b *regBatch) checkExternal(extIDs []int64) error {
	bad := 0
	for _, id := range extIDs {
		if id == 0 {
			bad++
		}
	}
	if bad == 0 {
		return nil
	}
	for _, i := range b.order {
		for _, k := range b.refs[i] {
			if k < 0 && extIDs[-k-1] == 0 {
				return &ReferenceError{Referrer: b.regs[i].Path, Reference: b.external[-k-1], Others: bad - 1}
			}
		}
	}
	return nil // not reached: every external reference is some path's
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

// pathIDsQuery is the query of n paths' ids.
func pathIDsQuery(n int) string {
	return "select id, path from ValidPaths where path in (" + placeholders(n) + ")"
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
		rows, err := q.QueryContext(ctx, pathIDsQuery(len(part)), args...)
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
