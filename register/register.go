// Package register takes trees that are already in a store's directory
// into the store: the ownership check, canonicalisation, NAR hash and
// size (checked against given ones), references (given, or found by
// Nix's reference scanner), the .drv output check, and the registration
// of the whole batch in one database transaction, under temporary roots
// and the paths' PathLocks. It is what `storekeeper register` runs, and
// what `copy` (package transfer) runs once it has placed the trees.
package register

import (
	"context"
	"crypto/sha256"
	"database/sql"
	"errors"
	"fmt"
	"io"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"

	"storekeeper/internal/sys"
	"storekeeper/lock"
	"storekeeper/nix/derivation"
	"storekeeper/nix/nar"
	"storekeeper/nix/refscan"
	"storekeeper/nix/storepath"
	"storekeeper/report"
	"storekeeper/store"
	"storekeeper/store/db"
	"storekeeper/store/fs"
)

// Input is one path to register.
type Input struct {
	// Registration holds the path and what is recorded with it: Deriver,
	// References (ignored with Options.Scan), RegistrationTime, Ultimate,
	// Sigs, CA. NarHash and NarSize are used only when HashGiven;
	// Outputs is ignored (a .drv's outputs are read from the file).
	db.Registration
	// HashGiven: NarHash (and NarSize, unless 0) come from the input and
	// are checked against the tree on disk; a mismatch refuses the path
	// (*MismatchError wrapping ErrHashMismatch).
	HashGiven bool
}

// Options are the options of Register.
type Options struct {
	// BuildUID is the user that produced the trees (Nix's build user):
	// every inode of each tree must be that user's, or be a hard link
	// inside the same tree, or the path is rejected (*fs.RejectedError:
	// the file, its owner; nothing changed). fs.NoBuildUser (-1): no
	// ownership check (device nodes, FIFOs and sockets are still
	// refused), as `nix-store --register-validity`.
	BuildUID int
	// Reregister updates the rows of paths already valid (Nix's
	// --reregister; their old references are kept, given ones added)
	// instead of refusing them (db.ErrAlreadyValid).
	Reregister bool
	// Scan finds each path's references with Nix's reference scanner in
	// its NAR (the same read as the hash), replacing given ones; a
	// warning goes to Printer when given ones differ.
	Scan bool
	// Candidates (with Scan) are the paths whose closure (in the
	// database), with the batch, may be referred to; nil: every valid
	// path and the batch.
	Candidates []string
	// Partial registers what passes, and whose references are valid or
	// registered with it, and leaves out the rest, each with its error
	// in its PathResult (copy uses it). false: all or nothing.
	Partial bool
	// Jobs is how many paths are checked, canonicalised and hashed at
	// once (0: GOMAXPROCS).
	Jobs int
	// Locked: the caller already holds the temporary roots and
	// PathLocks of every path (Lock; copy places the trees under them).
	// nil: Register takes its own and releases them before it returns.
	Locked *Locks
	// Progress gets the phases "checking" (paths), "hashing" (NAR bytes;
	// the total is known when every hash is given) and "registering"
	// (paths), and if it implements Hashes, each path hashed.
	Progress report.Progress
	// Printer gets warnings (scanned references that differ from given
	// ones) and waits for locks; nil: Progress.
	Printer report.Printer
}

// Hashes is an optional extension of the report.Progress passed to
// Register: if it implements Hashes, Hashed is called for each path once
// its NAR is hashed (and its references scanned), from several
// goroutines at once.
type Hashes interface {
	Hashed(path string, narSize uint64)
}

// PathResult is what became of one input.
type PathResult struct {
	Path       string // as given
	Registered bool
	// NarHash, NarSize and References are the tree's, once hashed
	// (References sorted: given, or found by the scanner).
	NarHash    nar.Hash
	NarSize    uint64
	References []string
	Err        error // why it was not registered (nil when it was, or when another path stopped an all-or-nothing batch)
}

// Result is what Register did.
type Result struct {
	Paths      []PathResult // in input order
	Registered int
	Bytes      uint64 // NAR bytes of the paths registered
}

// item is an input being registered.
type item struct {
	idx   int
	in    *Input
	path  string // the canonical full store path
	base  string // its name in the store directory
	refs  []string
	isDrv bool
	// outputs and drvHash: a .drv's outputs and the NAR hash of the
	// bytes they were checked on.
	outputs map[string]string
	drvHash nar.Hash
	hash    nar.Hash
	size    uint64
	failed  bool
	drv     *derivation.Derivation // a .drv, parsed (until its outputs are checked)
	// wasValid: valid when the batch was validated (Reregister).
	wasValid bool
	top      unix.Stat_t // the lstat of the path when validated
	// needCanon: it was found not canonical while read (it is then
	// checked and canonicalised).
	needCanon bool
}

// run is one Register call's state.
type run struct {
	s       *store.Store
	o       Options
	pr      report.Progress
	printer report.Printer
	sd      string
	storeFd int
	res     *Result
	items   []*item
	byPath  map[string]*item
	// external: references outside the batch (given ones).
	external []string
}

// Register takes the trees of inputs, which must be in the store
// directory of s (opened read-write), into the store. In order:
//
//  1. Every input is validated before anything else happens: a store
//     path of s (ErrNotInStore), given once (ErrBadInput), on disk
//     (lstat relative to the store directory, never followed;
//     ErrMissing), not valid unless o.Reregister (db.ErrAlreadyValid),
//     deriver and references store paths, references valid or in the
//     batch (db.ErrNotValidReference; without o.Scan), a .drv parsed and
//     its outputs the paths Nix computes (ErrBadDerivation; input
//     derivations read from the store directory, one memo for the
//     batch). Validity is read in one query per 500 paths, never one
//     per path.
//  2. Temporary roots for the paths and the references they rely on,
//     then the paths' PathLocks (see Lock; skipped with o.Locked), then
//     validity read again under the locks.
//  3. The check pass of fs.Canonicalise (types, and with o.BuildUID the
//     ownership and hard-link checks) on EVERY path that is to be
//     changed, before any is changed: a rejected path changes nothing in
//     any path of the batch (in Partial mode, it is left out and the
//     others go on). Without a build user, a tree whose top already has
//     the canonical owner, mode and mtime (one copy placed, or one
//     registered before) is first only read, as in step 4, each node's
//     owner, mode, mtime and extended attributes checked on the way: when
//     all are canonical it needs neither the check pass (the NAR walk
//     refuses what a store path cannot hold) nor a change; otherwise it
//     is checked with the others and goes through step 4 again.
//  4. In parallel (o.Jobs), each path canonicalised (owner: the store
//     directory's, fs.StoreOwner; nodes already canonical are left as
//     they are), then dumped once as a NAR into the SHA-256 and, with
//     o.Scan, the reference scanner: each file is read once. A given
//     hash and size are compared (*MismatchError); a .drv must hash to
//     the bytes whose outputs were checked (ErrChanged).
//  5. db.Register of every path that passed, in one transaction.
//
// Large batches: the PathLocks of every path are held at once, one
// open file each; the open-file limit is raised for them (see
// raiseFileLimit). When even that is not enough (a hard limit that this
// process may not raise: root without CAP_SYS_RESOURCE, as in some
// containers), the batch is registered in chunks of what the limit
// allows, in dependency order, each under its own locks and in its own
// transaction (see chunked): every input and every tree is checked
// before the first chunk, and in all-or-nothing mode a failure in a
// later chunk makes the earlier chunks' paths invalid again. With Scan
// (references unknown until the trees are read) such a batch is refused
// with ErrTooMany.
//
// The error is non-nil when nothing was registered: in all-or-nothing
// mode the first failure in input order (typed, naming the path and what
// to do; every failing path also has its Err), or in either mode what
// stopped the batch (the locks, the open-file limit (ErrTooMany), the
// database, ctx). In Partial mode a path's failure is its PathResult.Err
// (ErrReferenceFailed for those referring to a failed path) and the
// others are registered.
//
// Cancellation: ctx is checked between paths in every phase; Register
// returns with an error wrapping ctx.Err(), nothing registered. Locks
// and temporary roots it took are released on every return.
//
// Crashes: only the database transaction makes paths valid, so a kill -9
// at any instant leaves each path valid with the right hash and
// references or not valid; trees may be left partly canonicalised
// (metadata only), which a rerun finishes. Nothing is fsynced beyond
// what SQLite does, as in Nix.
//
// Concurrency: the PathLocks keep Nix's builders and substituters and
// other registers off the paths; a garbage collector leaves them alone
// (temporary roots). A process still writing into a tree after it was
// handed to Register can make the canonicalisation fail
// (fs.ErrTreeChanged) or the hash mismatch; the hash registered is the
// one of the tree read, which no one but root can write into once it is
// canonical (unless it still holds a descriptor opened for writing
// before, as in Nix).
//
// The Result is never nil; its Paths are in input order.
func Register(ctx context.Context, s *store.Store, inputs []Input, o Options) (*Result, error) {
	r := &run{s: s, o: o, pr: o.Progress, printer: o.Printer, sd: s.Layout.StoreDir,
		res: &Result{Paths: make([]PathResult, len(inputs))}, byPath: make(map[string]*item, len(inputs))}
	for i := range inputs {
		r.res.Paths[i].Path = inputs[i].Path
	}
	if s.ReadOnly {
		return r.res, fmt.Errorf("register: %w; nothing was registered", ErrReadOnly)
	}
	if r.pr == nil {
		r.pr = report.Discard
	}
	if r.printer == nil {
		r.printer = r.pr
	}
	if r.o.Jobs <= 0 {
		r.o.Jobs = runtime.GOMAXPROCS(0)
	}
	if len(inputs) == 0 {
		return r.res, nil
	}
	dir, err := openStoreDir(s.Layout)
	if err != nil {
		return r.res, fmt.Errorf("register: %w; nothing was registered", err)
	}
	defer dir.Close()
	r.storeFd = int(dir.Fd())

	if err := r.validate(ctx, inputs); err != nil {
		return r.res, r.stopped(err)
	}
	if err := r.settle(); err != nil {
		return r.res, err
	}
	var set *refscan.Set
	if o.Scan {
		if set, err = r.candidates(ctx); err != nil {
			return r.res, r.stopped(err)
		}
	}
	waitMsg := func(p string) { r.printer.Info(fmt.Sprintf("waiting for the lock on %s...", report.Name(p))) }

	if l := o.Locked; l != nil {
		for _, it := range r.items {
			if !it.failed && !l.Holds(it.path) {
				r.fail(it, fmt.Errorf("'%s' is not among the paths locked for this batch: %w", it.path, ErrBadInput))
			}
		}
		if err := r.settle(); err != nil {
			return r.res, err
		}
		return r.res, r.chunk(ctx, l, r.alive(r.items), set)
	}
	chunks, err := r.chunks()
	if err != nil {
		return r.res, r.stopped(err)
	}
	if len(chunks) == 1 {
		l, err := LockWait(ctx, s, paths(chunks[0]), waitMsg)
		if err != nil {
			return r.res, r.stopped(err)
		}
		defer l.Close()
		return r.res, r.chunk(ctx, l, chunks[0], set)
	}
	return r.res, r.chunked(ctx, chunks, set, waitMsg)
}

// chunk registers items (alive ones) under l: validity read again under
// the locks, the check pass of every tree, then canonicalise, hash and
// scan, then the transaction.
func (r *run) chunk(ctx context.Context, l *Locks, items []*item, set *refscan.Set) error {
	if err := l.addRoots(ctx, r.external); err != nil {
		return r.stopped(err)
	}
	// Trees with a canonical top are read first (without a build user,
	// whose ownership check needs the check pass): reading changes
	// nothing, and most are canonical throughout (copied, or registered
	// before), so they need neither the check pass (the NAR walk refuses
	// what it cannot hold) nor canonicalising. Every tree that will be
	// changed is checked before any is.
	fast, slow, err := r.split(items)
	if err != nil {
		return r.stopped(err)
	}
	var recheck []*item
	steps := []func() error{
		func() error { return r.checkValidity(ctx, items) },
		func() error { return r.checkTrees(ctx, slow) },
		func() error {
			r.hashPhase(items)
			return r.hashAll(ctx, fast, set, false)
		},
		func() error {
			for _, it := range fast {
				if it.needCanon {
					recheck = append(recheck, it)
				}
			}
			return r.checkTrees(ctx, recheck)
		},
		func() error { return r.hashAll(ctx, append(slow, recheck...), set, true) },
	}
	for _, step := range steps {
		if err := step(); err != nil {
			return r.stopped(err)
		}
		if err := r.settle(); err != nil {
			return err
		}
	}
	return r.register(ctx, items)
}

// split divides items into those read first without the check pass
// (no build user, and the top canonical) and the others.
func (r *run) split(items []*item) (fast, slow []*item, err error) {
	uid, _, err := fs.StoreOwner(r.storeFd)
	if err != nil {
		return nil, nil, err
	}
	for _, it := range items {
		if r.o.BuildUID < 0 && canonicalNode(&it.top, uid) {
			fast = append(fast, it)
		} else {
			slow = append(slow, it)
		}
	}
	return fast, slow, nil
}

// chunks splits the batch's paths that passed validation into the
// chunks whose PathLocks are held at once: one chunk when the open-file
// limit allows a lock file for every path (raised as needed, see
// raiseFileLimit); otherwise chunks of what it allows, in dependency
// order (references first), so each chunk's references are valid when it
// is registered. With Scan (references unknown until hashed) a batch
// that does not fit is refused (ErrTooMany).
func (r *run) chunks() ([][]*item, error) {
	items := r.alive(r.items)
	have, limitErr := raiseFileLimit(uint64(len(items))+fileReserve, len(items))
	if limitErr == nil {
		return [][]*item{items}, nil
	}
	if r.o.Scan || have <= fileReserve || !errors.Is(limitErr, ErrTooMany) {
		return nil, limitErr
	}
	size := int(have - fileReserve)
	order, err := r.dependencyOrder(items)
	if err != nil {
		return nil, err
	}
	var out [][]*item
	for len(order) > 0 {
		k := min(size, len(order))
		out = append(out, order[:k])
		order = order[k:]
	}
	r.printer.Info(fmt.Sprintf("registering %d paths in %d chunks of at most %d, each in its own transaction: the open-file limit (%d) allows no more lock files at once and cannot be raised; if this run is killed, the chunks done stay registered: run it again with --reregister",
		len(items), len(out), size, have))
	return out, nil
}

// dependencyOrder sorts items references first (Kahn's algorithm over the
// given references inside the batch; self-references ignored). A cycle
// is refused.
func (r *run) dependencyOrder(items []*item) ([]*item, error) {
	out, stuck := r.order(items)
	if len(stuck) > 0 {
		return nil, cycleError(stuck)
	}
	return out, nil
}

// cycleError names (some of) the paths stuck in or behind a cycle.
func cycleError(stuck []*item) error {
	var cyc []string
	for _, it := range stuck[:min(5, len(stuck))] {
		cyc = append(cyc, it.path)
	}
	return fmt.Errorf("%w among %s", db.ErrCycle, strings.Join(cyc, ", "))
}

// order sorts items references first (Kahn's algorithm over the given
// references inside the batch; self-references and failed items
// ignored) and returns the items that cannot be sorted (in a cycle, or
// referring to one) as stuck, in input order.
func (r *run) order(items []*item) (out, stuck []*item) {
	pending := make(map[*item]int, len(items))
	referrers := map[*item][]*item{}
	for _, it := range items {
		pending[it] += 0
		for _, ref := range it.refs {
			if dep := r.byPath[ref]; dep != nil && dep != it && !dep.failed {
				pending[it]++
				referrers[dep] = append(referrers[dep], it)
			}
		}
	}
	var ready []*item
	for _, it := range items {
		if pending[it] == 0 {
			ready = append(ready, it)
		}
	}
	for len(ready) > 0 {
		it := ready[0]
		ready = ready[1:]
		out = append(out, it)
		for _, ref := range referrers[it] {
			if pending[ref]--; pending[ref] == 0 {
				ready = append(ready, ref)
			}
		}
	}
	for _, it := range items {
		if pending[it] > 0 {
			stuck = append(stuck, it)
		}
	}
	return out, stuck
}

// chunked registers a batch too large for its locks to be held at once:
// temporary roots for the whole batch first, the check pass of every
// tree to be changed (before any is changed, so a rejected tree changes
// nothing; without a build user, trees with a canonical top are read
// in their chunk instead, and one found holding a FIFO there stops the
// batch after the earlier chunks' trees were canonicalised, as `nix-store
// --register-validity` would have), then each chunk under its own
// PathLocks and in its own transaction. In
// all-or-nothing mode a failure in a later chunk undoes the earlier
// ones: the paths they made valid are invalidated again (in one
// transaction; the trees stay, canonical), unless a path registered
// meanwhile by another process refers to one of them, which the error
// then says. Crash: a kill -9 between chunks leaves the earlier chunks
// registered, each path with its right rows and valid references.
func (r *run) chunked(ctx context.Context, chunks [][]*item, set *refscan.Set, waitMsg func(string)) error {
	roots, err := lock.OpenTempRoots(r.s.Layout.StateDir)
	if err != nil {
		return r.stopped(fmt.Errorf("temporary roots in %s: %w", r.s.Layout.TempRootsDir(), err))
	}
	defer roots.Close()
	all := append(r.alivePaths(), r.external...)
	if err := roots.AddAll(ctx, all); err != nil {
		return r.stopped(fmt.Errorf("adding %d temporary roots: %w", len(all), err))
	}
	_, slow, err := r.split(r.alive(r.items))
	if err != nil {
		return r.stopped(err)
	}
	if err := r.checkTrees(ctx, slow); err != nil {
		return r.stopped(err)
	}
	if err := r.settle(); err != nil {
		return err
	}
	var done []*item
	for _, c := range chunks {
		c = r.alive(c)
		if len(c) == 0 {
			continue
		}
		l, err := LockWait(ctx, r.s, paths(c), waitMsg)
		if err == nil {
			err = r.chunk(ctx, l, c, set)
			l.Close()
		} else {
			err = r.stopped(err)
		}
		if err != nil {
			if !r.o.Partial && len(done) > 0 {
				return r.undo(done, err)
			}
			return err
		}
		for _, it := range c {
			if r.res.Paths[it.idx].Registered {
				done = append(done, it)
			}
		}
	}
	return nil
}

// undo invalidates the paths earlier chunks registered (those that were
// not valid before) after a later chunk failed with cause.
func (r *run) undo(done []*item, cause error) error {
	ctx := context.Background()
	var ps []string
	for _, it := range done {
		if !it.wasValid {
			ps = append(ps, it.path)
		}
	}
	rows, err := r.s.DB.PathRows(ctx, ps)
	if err == nil {
		ids := make([]int64, 0, len(rows))
		idPaths := make([]string, 0, len(rows))
		for _, p := range ps {
			if row := rows[p]; row != nil {
				ids = append(ids, row.ID)
				idPaths = append(idPaths, p)
			}
		}
		err = r.s.DB.ImmediateTx(ctx, func(c *sql.Conn) error {
			_, err := db.Invalidate(ctx, c, ids, func(i int) string { return idPaths[i] })
			return err
		})
	}
	if err != nil {
		return fmt.Errorf("%w; and the %d paths earlier chunks registered could not be made invalid again (%w): they stay valid, with their right rows", cause, len(ps), err)
	}
	r.printer.Info(fmt.Sprintf("made the %d paths of the earlier chunks invalid again", len(ps)))
	for _, it := range done {
		if !it.wasValid {
			r.res.Paths[it.idx].Registered = false
			r.res.Registered--
			r.res.Bytes -= it.size
		}
	}
	return cause
}

// paths returns the items' paths.
func paths(items []*item) []string {
	out := make([]string, len(items))
	for i, it := range items {
		out[i] = it.path
	}
	return out
}

// stopped is the error of a batch stopped as a whole.
func (r *run) stopped(err error) error {
	return fmt.Errorf("register: %w; nothing was registered", err)
}

// fail records it's failure (the first one counts).
func (r *run) fail(it *item, err error) {
	if it.failed {
		return
	}
	it.failed = true
	r.res.Paths[it.idx].Err = err
}

// settle ends a phase: in all-or-nothing mode any failure stops the
// batch (the first in input order is the error); in Partial mode the
// paths referring to a failed path of the batch fail too.
func (r *run) settle() error {
	var first error
	n := 0
	for _, it := range r.items {
		if it.failed {
			if first == nil {
				first = r.res.Paths[it.idx].Err
			}
			n++
		}
	}
	if n == 0 {
		return nil
	}
	if !r.o.Partial {
		more := ""
		if n > 1 {
			more = fmt.Sprintf(" (and %d more paths failed)", n-1)
		}
		return fmt.Errorf("register: %w%s; nothing was registered", first, more)
	}
	// Referrers of failed paths, transitively.
	referrers := map[*item][]*item{}
	for _, it := range r.items {
		for _, ref := range it.refs {
			if dep := r.byPath[ref]; dep != nil && dep != it {
				referrers[dep] = append(referrers[dep], it)
			}
		}
	}
	var queue []*item
	for _, it := range r.items {
		if it.failed {
			queue = append(queue, it)
		}
	}
	for len(queue) > 0 {
		dep := queue[0]
		queue = queue[1:]
		for _, it := range referrers[dep] {
			if !it.failed {
				r.fail(it, fmt.Errorf("'%s' was not registered: %w: '%s'", it.path, ErrReferenceFailed, dep.path))
				queue = append(queue, it)
			}
		}
	}
	return nil
}

// alive returns the items not failed.
func (r *run) alive(items []*item) []*item {
	out := make([]*item, 0, len(items))
	for _, it := range items {
		if !it.failed {
			out = append(out, it)
		}
	}
	return out
}

func (r *run) alivePaths() []string {
	var out []string
	for _, it := range r.alive(r.items) {
		out = append(out, it.path)
	}
	return out
}

// validate checks every input (step 1 of Register). Per-path problems
// are recorded; the error is for what stops the batch.
func (r *run) validate(ctx context.Context, inputs []Input) error {
	// One phase for both checks: the inputs here, the trees later.
	r.pr.Phase("checking", 2*int64(len(inputs)), false)
	for i := range inputs {
		in := &inputs[i]
		it := &item{idx: i, in: in}
		r.items = append(r.items, it)
		base, err := storepath.Parse(r.sd, in.Path)
		if err != nil {
			it.path = in.Path
			r.fail(it, fmt.Errorf("'%s' %w %s: %w; only a path directly in the store directory, with a store path's name, can be registered", report.Name(in.Path), ErrNotInStore, r.sd, err))
			continue
		}
		it.base, it.path = base, r.sd+"/"+base
		it.isDrv = strings.HasSuffix(base, ".drv")
		if prev := r.byPath[it.path]; prev != nil {
			r.fail(it, fmt.Errorf("'%s' is given twice (inputs %d and %d): %w; give each path once", it.path, prev.idx+1, i+1, ErrBadInput))
			continue
		}
		r.byPath[it.path] = it
		if in.Deriver != "" {
			if _, err := storepath.Parse(r.sd, in.Deriver); err != nil {
				r.fail(it, fmt.Errorf("'%s': its deriver '%s' is not a store path of %s: %w: %w", it.path, report.Name(in.Deriver), r.sd, ErrBadInput, err))
				continue
			}
		}
		if !r.o.Scan {
			it.refs, err = r.canonicalRefs(it)
			if err != nil {
				r.fail(it, err)
				continue
			}
		}
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	// On disk, and .drv files read and parsed: in parallel.
	var mu sync.Mutex
	forEach(ctx, r.alive(r.items), r.o.Jobs, func(it *item) {
		var err error
		if err = sys.LstatAt(r.storeFd, it.base, &it.top); err == unix.ENOENT {
			err = fmt.Errorf("'%s' %w %s: %w; put its tree there first", it.path, ErrMissing, r.s.Layout.RealStoreDir, err)
		} else if err != nil {
			err = fmt.Errorf("'%s': %w", it.path, err)
		} else if it.isDrv {
			it.drv, it.drvHash, err = parseDrv(r.storeFd, r.sd, it.path, it.base)
		}
		if err != nil {
			mu.Lock()
			r.fail(it, err)
			mu.Unlock()
		}
	})
	if err := ctx.Err(); err != nil {
		return err
	}
	// Their outputs, with one memo for the batch (an input derivation
	// may be one of its paths).
	dc := newDrvChecker(r.sd, r.storeFd)
	for _, it := range r.items {
		if !it.failed && it.drv != nil {
			dc.parsed[it.path] = it.drv
		}
	}
	for _, it := range r.items {
		if it.failed || it.drv == nil {
			continue
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		outs, err := dc.outputs(it.path, it.base, it.drv)
		if err != nil {
			r.fail(it, err)
			continue
		}
		it.outputs = outs
		it.drv = nil
	}
	// Validity of the batch and of the references outside it.
	ext := map[string]bool{}
	for _, it := range r.items {
		for _, ref := range it.refs {
			if r.byPath[ref] == nil {
				ext[ref] = true
			}
		}
	}
	r.external = make([]string, 0, len(ext))
	for p := range ext {
		r.external = append(r.external, p)
	}
	slices.Sort(r.external)
	if err := r.checkValidity(ctx, r.items); err != nil {
		return err
	}
	// A cycle in the given references (db.Register would refuse it, but
	// only after the trees were canonicalised).
	if !r.o.Scan {
		if _, stuck := r.order(r.alive(r.items)); len(stuck) > 0 {
			cause := cycleError(stuck)
			for _, it := range stuck {
				r.fail(it, fmt.Errorf("'%s' is in, or refers to, a cycle of references (%w): a path may refer to itself, but paths may not refer to each other in a circle; fix the references", it.path, cause))
			}
		}
	}
	r.pr.Add(int64(len(inputs)))
	return nil
}

// forEach runs fn on every item in jobs goroutines, until ctx is done.
func forEach(ctx context.Context, items []*item, jobs int, fn func(it *item)) {
	var next atomic.Int64
	var wg sync.WaitGroup
	for range min(jobs, len(items)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				k := int(next.Add(1)) - 1
				if k >= len(items) || ctx.Err() != nil {
					return
				}
				fn(items[k])
			}
		}()
	}
	wg.Wait()
}

// canonicalRefs returns it's given references as canonical store paths,
// each once, sorted.
func (r *run) canonicalRefs(it *item) ([]string, error) {
	refs := make([]string, 0, len(it.in.References))
	for _, ref := range it.in.References {
		base, err := storepath.Parse(r.sd, ref)
		if err != nil {
			return nil, fmt.Errorf("'%s': its reference '%s' is not a store path of %s: %w: %w", it.path, report.Name(ref), r.sd, ErrBadInput, err)
		}
		refs = append(refs, r.sd+"/"+base)
	}
	slices.Sort(refs)
	return slices.Compact(refs), nil
}

// checkValidity reads the validity of the batch and of the references
// outside it (one query per 500 paths) and fails the paths already
// valid (without Reregister) and those with a reference neither valid
// nor in the batch.
func (r *run) checkValidity(ctx context.Context, items []*item) error {
	alive := r.alive(items)
	if len(alive) == 0 {
		return nil
	}
	paths := make([]string, 0, len(alive)+len(r.external))
	for _, it := range alive {
		paths = append(paths, it.path)
	}
	paths = append(paths, r.external...)
	valid, err := r.s.DB.ValidAmong(ctx, paths)
	if err != nil {
		return fmt.Errorf("reading which paths are valid: %w", err)
	}
	for _, it := range alive {
		it.wasValid = it.wasValid || valid[it.path]
		if valid[it.path] && !r.o.Reregister {
			r.fail(it, fmt.Errorf("'%s' is already valid (%w): pass --reregister to update its row, or leave it out", it.path, db.ErrAlreadyValid))
			continue
		}
		for _, ref := range it.refs {
			if r.byPath[ref] == nil && !valid[ref] {
				r.fail(it, fmt.Errorf("'%s' refers to '%s', which is neither valid nor in the batch: %w; register it first or in the same batch", it.path, ref, db.ErrNotValidReference))
				break
			}
		}
	}
	return nil
}

// parallel runs fn on the items in o.Jobs goroutines, stopping early
// when ctx is done or, in all-or-nothing mode, after a failure. fn
// returns the item's error.
func (r *run) parallel(ctx context.Context, items []*item, fn func(it *item) error) error {
	var next atomic.Int64
	var stop atomic.Bool
	var mu sync.Mutex
	var wg sync.WaitGroup
	for range min(r.o.Jobs, len(items)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				k := int(next.Add(1)) - 1
				if k >= len(items) || stop.Load() || ctx.Err() != nil {
					return
				}
				it := items[k]
				if err := fn(it); err != nil {
					mu.Lock()
					r.fail(it, err)
					mu.Unlock()
					if !r.o.Partial {
						stop.Store(true)
					}
				}
			}
		}()
	}
	wg.Wait()
	return ctx.Err()
}

// checkTrees runs the check pass of fs.Canonicalise on every path (step
// 3): nothing is changed.
func (r *run) checkTrees(ctx context.Context, items []*item) error {
	items = r.alive(items)
	// The store's owner, as the canonicalisation gets it: the check
	// accepts nodes an interrupted run left canonical with that owner.
	uid, gid, err := fs.StoreOwner(r.storeFd)
	if err != nil {
		return err
	}
	return r.parallel(ctx, items, func(it *item) error {
		err := fs.Canonicalise(r.storeFd, it.base, fs.CanonicaliseOptions{BuildUID: r.o.BuildUID, UID: uid, GID: gid, Display: it.path, CheckOnly: true})
		r.pr.Add(1)
		if err != nil {
			return r.treeError(it, err)
		}
		return nil
	})
}

// treeError words a rejected or unreadable tree.
func (r *run) treeError(it *item, err error) error {
	var rej *fs.RejectedError
	if errors.As(err, &rej) {
		return fmt.Errorf("'%s' was rejected: %w", it.path, err)
	}
	return fmt.Errorf("'%s': %w", it.path, lineSafe{err})
}

// lineSafe is an error whose text names nodes inside a tree (from
// fs.Canonicalise or the NAR walk, which do not quote them) with every
// newline escaped: a builder's file name cannot forge a line of output
// (the printer's report.Text escapes every other control character).
type lineSafe struct{ err error }

func (e lineSafe) Error() string {
	return strings.ReplaceAll(e.err.Error(), "\n", `\n`)
}
func (e lineSafe) Unwrap() error { return e.err }

// candidates is the reference scanner's candidate set: the closure of
// o.Candidates (or every valid path) and the batch.
func (r *run) candidates(ctx context.Context) (*refscan.Set, error) {
	var all []string
	if r.o.Candidates == nil {
		rows, err := r.s.DB.SQL.QueryContext(ctx, "select path from ValidPaths")
		if err != nil {
			return nil, fmt.Errorf("reading the valid paths (the scanner's candidates): %w", err)
		}
		for rows.Next() {
			var p string
			if err := rows.Scan(&p); err != nil {
				rows.Close()
				return nil, fmt.Errorf("reading the valid paths (the scanner's candidates): %w", err)
			}
			all = append(all, p)
		}
		err = rows.Err()
		rows.Close()
		if err != nil {
			return nil, fmt.Errorf("reading the valid paths (the scanner's candidates): %w", err)
		}
	} else {
		cands := make([]string, 0, len(r.o.Candidates))
		for _, c := range r.o.Candidates {
			base, err := storepath.Parse(r.sd, c)
			if err != nil {
				return nil, fmt.Errorf("candidate '%s' is not a store path of %s: %w: %w", report.Name(c), r.sd, ErrBadInput, err)
			}
			cands = append(cands, r.sd+"/"+base)
		}
		rows, missing, err := r.s.DB.Closure(ctx, cands)
		if err != nil {
			return nil, fmt.Errorf("reading the closure of the candidates: %w", err)
		}
		for _, m := range missing {
			if r.byPath[m] == nil {
				return nil, fmt.Errorf("candidate '%s' is neither valid nor in the batch: %w; register it first, or leave it out", m, ErrBadInput)
			}
		}
		for p := range rows {
			all = append(all, p)
		}
	}
	for _, it := range r.items {
		all = append(all, it.path)
	}
	return refscan.NewSet(r.sd, all), nil
}

// hashPhase starts the "hashing" phase for items.
func (r *run) hashPhase(items []*item) {
	total := int64(0)
	for _, it := range r.alive(items) {
		if !it.in.HashGiven || it.in.NarSize == 0 {
			total = -1
			break
		}
		total += int64(min(it.in.NarSize, 1<<62))
	}
	r.pr.Phase("hashing", total, true)
}

// hashAll hashes (and scans) the trees of items in parallel (step 4).
// With canon, each is canonicalised first, as Nix does, so that the
// build user can no longer write into it once it is read. Without, each
// is only read, every node's metadata checked on the way (owner, mode,
// mtime, extended attributes: what fs.Canonicalise would change), and a
// tree that is not canonical is marked needCanon and not hashed: it
// changes nothing, so it can run before every tree is checked.
func (r *run) hashAll(ctx context.Context, items []*item, set *refscan.Set, canon bool) error {
	uid, gid, err := fs.StoreOwner(r.storeFd)
	if err != nil {
		return err
	}
	hashes, _ := r.pr.(Hashes)
	var warnMu sync.Mutex
	// Trees only read (already canonical before this run, so no process
	// of a build user can be changing them) and not scanned are hashed
	// as verify hashes: small files opened, read and closed through
	// io_uring, many per system call (nar.BatchHasher; a nil one, where
	// io_uring is missing, walks as DumpPathAtFiles does). One hasher
	// per worker, kept in a pool for the next tree.
	hashers := make(chan *nar.BatchHasher, r.o.Jobs)
	defer func() {
		close(hashers)
		for bh := range hashers {
			bh.Close()
		}
	}()
	batch := !canon && set == nil
	return r.parallel(ctx, r.alive(items), func(it *item) error {
		if canon {
			if err := fs.Canonicalise(r.storeFd, it.base, fs.CanonicaliseOptions{BuildUID: r.o.BuildUID, UID: uid, GID: gid, Display: it.path}); err != nil {
				return r.treeError(it, err)
			}
		}
		h := sha256.New()
		var w io.Writer = h
		var sc *refscan.Scanner
		if set != nil {
			sc = set.Scanner()
			w = io.MultiWriter(h, sc)
		}
		var fn nar.NodeFunc
		canonical := true
		if !canon {
			var buf []byte
			fn = func(nd *nar.Node) (io.Writer, error) {
				if canonical {
					canonical, buf = canonicalVisit(nd, uid, buf)
				}
				return nil, nil
			}
		} else {
			// Every node read must be canonical: a process of the build
			// user still running can rename entries of a directory whose
			// children were canonicalised before the directory itself
			// is; once every node read is root's (the store owner's) and
			// read-only, no one but root can change the tree.
			fn = func(nd *nar.Node) (io.Writer, error) {
				if st, err := nd.Stat(); err != nil || !canonicalNode(st, uid) {
					node := it.path
					if nd.Rel != "" {
						node += "/" + nd.Rel
					}
					return nil, fmt.Errorf("'%s' is not canonical once canonicalised (a process still writing into the tree?): %w",
						report.Name(node), fs.ErrTreeChanged)
				}
				return nil, nil
			}
		}
		var n int64
		var err error
		if batch {
			var bh *nar.BatchHasher
			select {
			case bh = <-hashers:
			default:
				bh, _ = nar.NewBatchHasher() // nil on error: hashes path by path
			}
			it.hash, n, err = bh.HashPathFiles(r.s.Layout.RealStoreDir+"/"+it.base, fn)
			select {
			case hashers <- bh:
			default:
				bh.Close()
			}
		} else {
			n, _, err = nar.DumpPathAtFiles(w, r.storeFd, it.base, it.path, fn)
		}
		if err != nil && !canon && errors.Is(err, nar.ErrUnsupportedFileType) {
			// A FIFO, socket or device: the check pass words it.
			it.needCanon = true
			return nil
		}
		if err != nil {
			return fmt.Errorf("'%s': hashing: %w", it.path, lineSafe{err})
		}
		if !canonical {
			it.needCanon = true
			return nil
		}
		if !batch {
			h.Sum(it.hash[:0])
		}
		it.size = uint64(n)
		pr := &r.res.Paths[it.idx]
		pr.NarHash, pr.NarSize = it.hash, it.size
		r.pr.Add(n)
		if hashes != nil {
			hashes.Hashed(it.path, it.size)
		}
		if it.in.HashGiven && (it.in.NarHash != it.hash || it.in.NarSize != 0 && it.in.NarSize != it.size) {
			return &MismatchError{Path: it.path, Expected: it.in.NarHash, Got: it.hash, ExpectedSize: it.in.NarSize, GotSize: it.size}
		}
		if it.isDrv && it.hash != it.drvHash {
			return fmt.Errorf("'%s' %w: the derivation hashed is not the one whose outputs were checked; register it again", it.path, ErrChanged)
		}
		if sc != nil {
			it.refs = sc.Found()
			if given := r.givenRefs(it); len(given) > 0 && !slices.Equal(given, it.refs) {
				warnMu.Lock()
				r.printer.Warn(fmt.Sprintf("'%s': the scanner found %d references where %d were given; registering the ones found (%s)",
					it.path, len(it.refs), len(given), diffRefs(given, it.refs)), it.path)
				warnMu.Unlock()
			}
		}
		pr.References = it.refs
		return nil
	})
}

// canonicalVisit reports whether the node nd of a walk is canonical
// (canonicalNode, and no extended attribute but fs.Nix.KeepXattrs); buf
// is reused for the attribute list.
func canonicalVisit(nd *nar.Node, uid int, buf []byte) (bool, []byte) {
	st, err := nd.Stat()
	if err != nil || !canonicalNode(st, uid) {
		return false, buf
	}
	n, err := nd.Listxattr(nil)
	for err == nil && n > len(buf) {
		buf = make([]byte, n)
		n, err = nd.Listxattr(buf)
		if errors.Is(err, unix.ERANGE) { // grew meanwhile
			n, err = nd.Listxattr(nil)
		}
	}
	if errors.Is(err, unix.ENOTSUP) || errors.Is(err, unix.ENODATA) || err == nil && n == 0 {
		return true, buf
	}
	if err != nil {
		return false, buf
	}
	for _, a := range strings.Split(string(buf[:n]), "\x00") {
		if a != "" && !slices.Contains(fs.Nix.KeepXattrs, a) {
			return false, buf
		}
	}
	return true, buf
}

// canonicalNode reports whether a node with lstat st already has the
// metadata fs.Canonicalise gives it: owner uid, no setuid, setgid or
// sticky bit, a canonical permission (fs.Nix.Fix changes nothing) and
// mtime.
func canonicalNode(st *unix.Stat_t, uid int) bool {
	if int(st.Uid) != uid || st.Mode&0o7000 != 0 || !fs.Nix.MtimeOK(st) {
		return false
	}
	_, change := fs.Nix.Fix(st.Mode)
	return !change
}

// givenRefs is it's given references, canonical and sorted, or nil when
// one is not a store path (the scanner's count then).
func (r *run) givenRefs(it *item) []string {
	refs, err := r.canonicalRefs(it)
	if err != nil {
		return nil
	}
	return refs
}

// diffRefs says how two sorted reference lists differ, briefly.
func diffRefs(given, found []string) string {
	var missing, extra []string
	for _, g := range given {
		if _, ok := slices.BinarySearch(found, g); !ok {
			missing = append(missing, g)
		}
	}
	for _, f := range found {
		if _, ok := slices.BinarySearch(given, f); !ok {
			extra = append(extra, f)
		}
	}
	brief := func(ps []string) string {
		if len(ps) > 3 {
			return strings.Join(ps[:3], ", ") + fmt.Sprintf(" and %d more", len(ps)-3)
		}
		return strings.Join(ps, ", ")
	}
	var parts []string
	if len(missing) > 0 {
		parts = append(parts, "not found: "+brief(missing))
	}
	if len(extra) > 0 {
		parts = append(parts, "not given: "+brief(extra))
	}
	return strings.Join(parts, "; ")
}

// register writes the rows of every path that passed (step 5).
func (r *run) register(ctx context.Context, items []*item) error {
	items = r.alive(items)
	if len(items) == 0 {
		return nil
	}
	r.pr.Phase("registering", int64(len(items)), false)
	regs := make([]db.Registration, len(items))
	for k, it := range items {
		reg := it.in.Registration
		reg.Path, reg.NarHash, reg.NarSize, reg.References, reg.Outputs = it.path, it.hash, it.size, it.refs, it.outputs
		if reg.Deriver != "" {
			base, _ := storepath.Parse(r.sd, reg.Deriver)
			reg.Deriver = r.sd + "/" + base
		}
		regs[k] = reg
	}
	if err := ctx.Err(); err != nil {
		return r.stopped(err)
	}
	if err := r.s.DB.Register(ctx, regs, db.RegisterOptions{Reregister: r.o.Reregister}); err != nil {
		return fmt.Errorf("register: %w", err)
	}
	r.pr.Add(int64(len(items)))
	for _, it := range items {
		pr := &r.res.Paths[it.idx]
		pr.Registered = true
		r.res.Registered++
		r.res.Bytes += it.size
	}
	return nil
}
