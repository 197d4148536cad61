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
//     ownership and hard-link checks) on EVERY path before any is
//     changed: a rejected path changes nothing in any path of the batch
//     (in Partial mode, it is left out and the others go on).
//  4. In parallel (o.Jobs), each path canonicalised (owner: the store
//     directory's, fs.StoreOwner), then dumped once as a NAR into the
//     SHA-256 and, with o.Scan, the reference scanner: each file is read
//     once. A given hash and size are compared (*MismatchError); a .drv
//     must hash to the bytes whose outputs were checked (ErrChanged).
//  5. db.Register of every path that passed, in one transaction.
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
// (fs.ErrTreeChanged) or the hash mismatch, never register a tree other
// than the one hashed.
func Register(ctx context.Context, s *store.Store, inputs []Input, o Options) (*Result, error) {
	if s.ReadOnly {
		return nil, fmt.Errorf("register: %w; nothing was registered", ErrReadOnly)
	}
	r := &run{s: s, o: o, pr: o.Progress, printer: o.Printer, sd: s.Layout.StoreDir,
		res: &Result{Paths: make([]PathResult, len(inputs))}, byPath: make(map[string]*item, len(inputs))}
	if r.pr == nil {
		r.pr = report.Discard
	}
	if r.printer == nil {
		r.printer = r.pr
	}
	if r.o.Jobs <= 0 {
		r.o.Jobs = runtime.GOMAXPROCS(0)
	}
	for i := range inputs {
		r.res.Paths[i].Path = inputs[i].Path
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

	l := o.Locked
	if l == nil {
		l, err = LockWait(ctx, s, r.alivePaths(), func(p string) {
			r.printer.Info(fmt.Sprintf("waiting for the lock on %s...", report.Name(p)))
		})
		if err != nil {
			return r.res, r.stopped(err)
		}
		defer l.Close()
	} else {
		for _, it := range r.items {
			if !it.failed && !l.Holds(it.path) {
				r.fail(it, fmt.Errorf("'%s' is not among the paths locked for this batch: %w", it.path, ErrBadInput))
			}
		}
		if err := r.settle(); err != nil {
			return r.res, err
		}
	}
	if err := l.addRoots(ctx, r.external); err != nil {
		return r.res, r.stopped(err)
	}
	if err := r.checkValidity(ctx); err != nil {
		return r.res, r.stopped(err)
	}
	if err := r.settle(); err != nil {
		return r.res, err
	}

	if err := r.checkTrees(ctx); err != nil {
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
	if err := r.hashAll(ctx, set); err != nil {
		return r.res, r.stopped(err)
	}
	if err := r.settle(); err != nil {
		return r.res, err
	}
	return r.res, r.register(ctx)
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
func (r *run) alive() []*item {
	out := make([]*item, 0, len(r.items))
	for _, it := range r.items {
		if !it.failed {
			out = append(out, it)
		}
	}
	return out
}

func (r *run) alivePaths() []string {
	var out []string
	for _, it := range r.alive() {
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
		var st unix.Stat_t
		if err := sys.LstatAt(r.storeFd, base, &st); err != nil {
			if err == unix.ENOENT {
				r.fail(it, fmt.Errorf("'%s' %w %s: %w; put its tree there first", it.path, ErrMissing, r.s.Layout.RealStoreDir, err))
			} else {
				r.fail(it, fmt.Errorf("'%s': %w", it.path, err))
			}
			continue
		}
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	// .drv files, once the batch is known (an input derivation may be
	// one of its paths).
	dc := newDrvChecker(r.sd, r.storeFd)
	for _, it := range r.items {
		if it.failed || !it.isDrv {
			continue
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		outs, h, err := dc.check(it.path, it.base)
		if err != nil {
			r.fail(it, err)
			continue
		}
		it.outputs, it.drvHash = outs, h
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
	if err := r.checkValidity(ctx); err != nil {
		return err
	}
	r.pr.Add(int64(len(inputs)))
	return nil
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
func (r *run) checkValidity(ctx context.Context) error {
	alive := r.alive()
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
		if valid[it.path] && !r.o.Reregister {
			r.fail(it, fmt.Errorf("'%s' %w: pass --reregister (Options.Reregister) to update its row, or leave it out", it.path, db.ErrAlreadyValid))
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
func (r *run) checkTrees(ctx context.Context) error {
	items := r.alive()
	return r.parallel(ctx, items, func(it *item) error {
		err := fs.Canonicalise(r.storeFd, it.base, fs.CanonicaliseOptions{BuildUID: r.o.BuildUID, Display: it.path, CheckOnly: true})
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
	return fmt.Errorf("'%s': %w", it.path, err)
}

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

// hashAll canonicalises and hashes every path that passed the checks
// (step 4), in parallel.
func (r *run) hashAll(ctx context.Context, set *refscan.Set) error {
	uid, gid, err := fs.StoreOwner(r.storeFd)
	if err != nil {
		return err
	}
	items := r.alive()
	total := int64(0)
	for _, it := range items {
		if !it.in.HashGiven || it.in.NarSize == 0 {
			total = -1
			break
		}
		total += int64(min(it.in.NarSize, 1<<62))
	}
	r.pr.Phase("hashing", total, true)
	hashes, _ := r.pr.(Hashes)
	var warnMu sync.Mutex
	return r.parallel(ctx, items, func(it *item) error {
		if err := fs.Canonicalise(r.storeFd, it.base, fs.CanonicaliseOptions{BuildUID: r.o.BuildUID, UID: uid, GID: gid, Display: it.path}); err != nil {
			return r.treeError(it, err)
		}
		h := sha256.New()
		var w io.Writer = h
		var sc *refscan.Scanner
		if set != nil {
			sc = set.Scanner()
			w = io.MultiWriter(h, sc)
		}
		n, _, err := nar.DumpPathAt(w, r.storeFd, it.base, it.path)
		if err != nil {
			return fmt.Errorf("'%s': hashing: %w", it.path, err)
		}
		h.Sum(it.hash[:0])
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
func (r *run) register(ctx context.Context) error {
	items := r.alive()
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
