package repair

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"runtime"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"storekeeper/internal/sys"
	"storekeeper/lock"
	"storekeeper/nix/nar"
	"storekeeper/report"
	"storekeeper/store"
	"storekeeper/store/db"
	"storekeeper/store/fs"
	"storekeeper/substitute"
)

// Test hooks, set by tests: testHookStaged runs in the swapper after a
// path's new tree is staged and checked, before its PathLock is taken;
// testHookBeforeSwap after the lock and the database check, just before
// the exchange; testHookSwapped after the exchange.
var (
	// testForceCanonicalise makes every staged tree go through
	// fs.Canonicalise.
	testForceCanonicalise bool
	testHookStaged        func(path string)
	testHookBeforeSwap    func(path string)
	testHookSwapped       func(path string)
)

// Substitute carries out the plan on s (opened read-write): for every
// planned path with an offer it fetches the NAR, unpacks it into a
// staging directory inside the store (a locked run directory of the
// store's trash, on the same file system), and only when the NAR's hash
// and size are the database's, exchanges the staged tree with the path,
// then deletes the old copy. Never is anything deleted before its
// replacement is in place, and never a live path.
//
// In detail:
//
//   - It takes gc.lock shared for the whole run (as verify --repair and
//     gc's deletion do), so that no collector runs while staged trees and
//     old copies exist (Nix's deletes every name of the store directory
//     that is not a store path); it first deletes what killed runs left
//     in the trash (fs.Trash.ClaimAbandoned), then makes its own run
//     directory.
//   - Paths are staged by o.Jobs workers (see SubstituteOptions), admitted in plan order while the
//     NAR bytes staged and not yet swapped stay within o.Budget (a path
//     larger than the budget alone): offer.Source.Open, nar.Unpack with
//     limits of the NAR size (hostile archives fail there), the hash and
//     size compared with the database's (else the staged tree is removed
//     and the path fails with substitute.ErrMismatch). The tree is
//     canonical as Nix makes it (mode 0444/0555, mtime 1, owner the store
//     directory's): nar.Unpack sets modes and mtimes as it writes, and
//     fs.Canonicalise does the rest where the owner is not this process
//     or the run directory passes on extended attributes. Then, still
//     before the swap, the .links entries that are files of the path's
//     damaged copy are removed (see dropDamagedLinks; it reads only
//     files with several links, and an unreadable one counts as
//     damaged). Progress: phase "downloading", bytes of NAR unpacked and
//     hashed.
//   - One goroutine swaps, in plan order (references before referrers):
//     under the path's PathLock (the lock file Nix uses, waited for,
//     bounded by ctx), after checking in the database that the path is
//     still registered with the id and hash planned (otherwise it is
//     left alone, ErrChanged), the staged tree is exchanged with the path
//     (fs.Exchange: renameat2 RENAME_EXCHANGE, atomic), or moved into
//     place with RENAME_NOREPLACE when the path is missing (fs.PutNew).
//     The old copy, now in the run directory, is deleted; it is only
//     moved and unlinked, so an unreadable (EIO) old copy does not stop
//     the repair.
//
// Crashes: a kill -9 at any instant leaves each path whole, the old copy
// or the new one (RENAME_EXCHANGE is one step; see fs.Exchange for file
// systems without it, whose leftovers the next run puts right before it
// touches the path); staged trees and old copies are only ever inside the
// run directory, which the next gc or repair deletes. The database is
// never written. Like Nix (fsync-store-paths is off by default) nothing
// is fsynced: a power cut, unlike a kill, may lose recently written
// contents.
//
// Cancellation: once ctx is done no new path is started, a swap in
// progress is finished, staged trees are removed and the locks released;
// the outcomes of the paths not done say ErrInterrupted, and the error
// wraps ctx.Err().
//
// The error is otherwise non-nil only when repair could not run at all
// (ErrReadOnly, gc.lock, the store directory or the trash unusable):
// each path's failure is its outcome's Err, and the other paths are
// repaired.
func Substitute(ctx context.Context, s *store.Store, p *SubstitutionPlan, o SubstituteOptions) (*SubstitutionResult, error) {
	if s.ReadOnly {
		return nil, ErrReadOnly
	}
	res := &SubstitutionResult{Paths: make([]PathOutcome, len(p.Paths))}
	var todo []int
	for i := range p.Paths {
		pp := &p.Paths[i]
		out := &res.Paths[i]
		*out = PathOutcome{Path: pp.Path, NarSize: pp.Want.NarSize, Tried: pp.Tried, Files: pp.Files}
		switch {
		case pp.Err != nil:
			out.Err = pp.Err
		case pp.Offer == nil:
			out.Err = noSubstituteError(pp)
		default:
			out.From, out.Trust, out.NarSize = pp.Offer.Source.URL(), pp.Offer.Trust, pp.Offer.NarSize
			todo = append(todo, i)
		}
	}
	if len(todo) == 0 {
		return res, nil
	}
	r, err := newRun(ctx, s, o)
	if err != nil {
		return nil, err
	}
	defer r.close()
	r.run(ctx, p, res, todo)
	for i := range res.Paths {
		res.Downloaded += res.Paths[i].Downloaded
	}
	if err := ctx.Err(); err != nil {
		return res, fmt.Errorf("repair: %w", err)
	}
	return res, nil
}

// noSubstituteError is the outcome of a path no source offered.
func noSubstituteError(pp *PlannedPath) error {
	if len(pp.Tried) == 0 {
		return fmt.Errorf("'%s' was not repaired: %w (no substituter is configured: pass --substituter URL or set substituters in nix.conf)", pp.Path, ErrNoSubstitute)
	}
	var why []error
	for _, t := range pp.Tried {
		why = append(why, t)
	}
	return fmt.Errorf("'%s' was not repaired: %w with the database's hash %s; add a substituter that has it (--substituter URL), or a trusted key: %w",
		pp.Path, ErrNoSubstitute, pp.Want.NarHash, errors.Join(why...))
}

// subRun is one Substitute run's state.
type subRun struct {
	s        *store.Store
	o        SubstituteOptions
	pr       report.Progress
	gcLock   *lock.FileLock
	storeDir *os.File // the physical store directory
	storeFd  int
	uid, gid int // the canonical owner
	// canon: staged trees need fs.Canonicalise after nar.Unpack (which
	// sets modes and mtimes itself): the owner is not this process's
	// euid, or the run directory passes on extended attributes (a
	// default ACL).
	canon    bool
	trash    *fs.TrashRun
	linksFd  int // <store>/.links, -1 until needed or when missing
	linksErr error
	links    sync.Once

	mu     sync.Mutex
	cond   *sync.Cond
	staged int64 // NAR bytes admitted and not yet swapped
}

func newRun(ctx context.Context, s *store.Store, o SubstituteOptions) (*subRun, error) {
	lay := s.Layout
	r := &subRun{s: s, o: o, pr: o.progress(), storeFd: -1, linksFd: -1}
	r.cond = sync.NewCond(&r.mu)
	var err error
	r.gcLock, err = lock.AcquireGCLock(ctx, lay.StateDir, lock.Shared, true, func() {
		r.pr.Info(fmt.Sprintf("waiting for the garbage collector lock %s...", report.Name(lay.GCLockPath())))
	})
	if err != nil {
		return nil, fmt.Errorf("repair: taking the GC lock %s: %w", lay.GCLockPath(), err)
	}
	fd, err := unix.Open(lay.RealStoreDir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		r.close()
		return nil, fmt.Errorf("repair: opening the store directory %s: %w", lay.RealStoreDir, err)
	}
	r.storeDir = os.NewFile(uintptr(fd), lay.RealStoreDir)
	r.storeFd = fd
	if r.uid, r.gid, err = fs.StoreOwner(fd); err != nil {
		r.close()
		return nil, fmt.Errorf("repair: %s: %w", lay.RealStoreDir, err)
	}
	trash := fs.Trash{Path: lay.TrashDir()}
	if err := r.emptyAbandoned(ctx, trash); err != nil {
		r.close()
		return nil, err
	}
	r.trash, err = trash.NewRun()
	if err != nil {
		r.close()
		return nil, fmt.Errorf("repair: staging directory: %w", err)
	}
	r.canon = r.uid != os.Geteuid() || inheritsXattrs(r.trash.Fd) || testForceCanonicalise
	return r, nil
}

// inheritsXattrs reports whether the directory open at fd has extended
// attributes other than the ones canonicalisation keeps (a default ACL,
// which new entries inherit), or cannot say.
func inheritsXattrs(fd int) bool {
	buf := make([]byte, 4096)
	n, err := unix.Flistxattr(fd, buf)
	if errors.Is(err, unix.ENOTSUP) {
		return false
	}
	if err != nil {
		return true
	}
	for _, a := range strings.Split(string(buf[:n]), "\x00") {
		if a != "" && a != "security.selinux" {
			return true
		}
	}
	return false
}

// emptyAbandoned deletes what killed or interrupted runs (of gc or
// repair) left in the trash: their staged trees and old copies. It runs
// under gc.lock shared.
func (r *subRun) emptyAbandoned(ctx context.Context, trash fs.Trash) error {
	if _, err := trash.EmptyAbandoned(ctx, func(n int) {
		r.pr.Info(fmt.Sprintf("emptying the trash left by an interrupted run (%d entries)", n))
	}); err != nil {
		return fmt.Errorf("repair: %w", err)
	}
	return nil
}

// close deletes what is left in the run directory (staged trees of paths
// not swapped, old copies), removes it and releases the locks.
func (r *subRun) close() {
	if r.trash != nil {
		items, err := fs.Entries([]*fs.TrashRun{r.trash})
		if err == nil && len(items) > 0 {
			_, _, err = fs.DeleteEntries(context.Background(), items, 2*runtime.GOMAXPROCS(0), nil)
		}
		if err != nil {
			r.pr.Warn(fmt.Sprintf("repair: deleting the old copies in %s: %s (the next storekeeper gc or repair deletes them)", report.Name(r.trash.Path), report.Text(err.Error())), "")
		}
		r.trash.Close(err == nil)
		r.trash = nil
	}
	if r.linksFd >= 0 {
		unix.Close(r.linksFd)
		r.linksFd = -1
	}
	if r.storeDir != nil {
		r.storeDir.Close()
		r.storeDir = nil
	}
	if r.gcLock != nil {
		r.gcLock.Release()
		r.gcLock = nil
	}
}

// item is a path being staged: the swapper waits for done.
type item struct {
	idx  int // in the plan
	pp   *PlannedPath
	name string // the staged tree's name in the run directory ("" when nothing is staged)
	size int64  // admitted bytes
	err  error  // staging failed
	nar  int64  // NAR bytes read
	done chan struct{}
	sent bool // handed to a worker: it holds size bytes of the budget until released
	// linksChecked: the old copy's .links entries were checked while it
	// was staged (or need no check); false when the path was missing then.
	linksChecked bool
}

// run stages the paths todo in parallel and swaps them in plan order.
func (r *subRun) run(ctx context.Context, p *SubstitutionPlan, res *SubstitutionResult, todo []int) {
	budget := r.o.Budget
	if budget <= 0 {
		budget = DefaultBudget
	}
	lo, hi := r.o.Jobs, r.o.Jobs
	if lo <= 0 {
		hi = MaxAdaptiveJobs
		if r.o.LookupJobs > 0 {
			hi = min(hi, r.o.LookupJobs)
		}
		lo = min(DefaultJobs, hi)
	}
	items := make([]*item, len(todo))
	var total int64
	for k, i := range todo {
		pp := &p.Paths[i]
		// A database without narSize (old stores) takes the offer's
		// size, which may be anything: never a negative share.
		size := int64(min(pp.Offer.NarSize, math.MaxInt64/2))
		items[k] = &item{idx: i, pp: pp, size: size, done: make(chan struct{})}
		total = min(total, math.MaxInt64-size) + size
	}
	r.pr.Phase("downloading", total, true)
	stop := context.AfterFunc(ctx, func() {
		r.mu.Lock()
		r.cond.Broadcast()
		r.mu.Unlock()
	})
	defer stop()

	work := make(chan *item)
	pool := runAdaptive(work, min(lo, len(items)), min(hi, len(items)), func(it *item) time.Duration {
		waited := r.stage(ctx, it)
		close(it.done)
		return waited
	})
	// The dispatcher admits items in plan order within the budget.
	go func() {
		defer close(work)
		for _, it := range items {
			r.mu.Lock()
			for r.staged > 0 && r.staged+it.size > budget && ctx.Err() == nil {
				r.cond.Wait()
			}
			cancelled := ctx.Err() != nil
			if !cancelled {
				r.staged += it.size
				it.sent = true
			}
			r.mu.Unlock()
			if cancelled {
				return
			}
			work <- it
		}
	}()
	// The old copies are deleted beside the swaps.
	olds := make(chan oldCopy, 64)
	var owg sync.WaitGroup
	owg.Add(1)
	go func() {
		defer owg.Done()
		for oc := range olds {
			r.deleteOld(oc)
		}
	}()
	// The swapper, in plan order, a batch of staged paths at a time.
	for k := 0; k < len(items); {
		it := items[k]
		select {
		case <-it.done:
		case <-ctx.Done():
			// Not started, or being staged: wait for the worker only
			// if it has the item (it stops promptly: its reads fail).
			select {
			case <-it.done:
			default:
				if !r.started(it) {
					res.Paths[it.idx].Err = fmt.Errorf("'%s' was not repaired: %w", it.pp.Path, ErrInterrupted)
					k++
					continue
				}
				<-it.done
			}
		}
		batch := []*item{it}
		for k++; k < len(items) && len(batch) < maxSwapBatch; k++ {
			select {
			case <-items[k].done:
				batch = append(batch, items[k])
				continue
			default:
			}
			break
		}
		r.swapBatch(ctx, batch, res, olds)
		for _, it := range batch {
			r.release(it)
		}
	}
	close(olds)
	owg.Wait()
	pool.wait()
}

// maxSwapBatch bounds the paths locked and swapped together.
const maxSwapBatch = 64

// started reports whether the dispatcher handed it to a worker (which
// then closes it.done promptly); after a cancellation it hands out no
// more.
func (r *subRun) started(it *item) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return it.sent
}

// release gives back it's share of the budget.
func (r *subRun) release(it *item) {
	r.mu.Lock()
	if it.sent {
		r.staged -= it.size
		it.sent = false
	}
	r.cond.Broadcast()
	r.mu.Unlock()
}

// countingReader counts the NAR bytes read into the progress.
type countingReader struct {
	r  io.Reader
	n  int64
	pr report.Progress
}

func (c *countingReader) Read(b []byte) (int, error) {
	n, err := c.r.Read(b)
	c.n += int64(n)
	c.pr.Add(int64(n))
	return n, err
}

// stage fetches, unpacks, checks and canonicalises it's path into the
// run directory under its base name, and returns how long the source
// took to answer Open.
func (r *subRun) stage(ctx context.Context, it *item) (waited time.Duration) {
	if ctx.Err() != nil {
		it.err = fmt.Errorf("'%s' was not repaired: %w", it.pp.Path, ErrInterrupted)
		return 0
	}
	pp := it.pp
	off := pp.Offer
	name := baseName(pp.Path)
	t0 := time.Now()
	rc, err := off.Source.Open(ctx, off)
	waited = time.Since(t0)
	if err != nil {
		it.err = fmt.Errorf("'%s' was not repaired: fetching it from %s: %w", pp.Path, off.Where, err)
		return waited
	}
	cr := &countingReader{r: rc, pr: r.pr}
	lim := nar.Limits{}
	if pp.Want.NarSize > 0 {
		lim.MaxBytes = int64(pp.Want.NarSize)
	}
	h, n, err := nar.Unpack(cr, r.trash.Fd, name, nar.UnpackOptions{Limits: lim, Mtime: fs.Nix.Mtime})
	rc.Close()
	it.nar = cr.n
	display := r.trash.Path + "/" + name
	if err == nil && (h != pp.Want.NarHash || pp.Want.NarSize > 0 && uint64(n) != pp.Want.NarSize) {
		err = fmt.Errorf("%w: the NAR hashes to %s (%d bytes), the database records %s (%d bytes)",
			substitute.ErrMismatch, h, n, pp.Want.NarHash, pp.Want.NarSize)
	}
	if err == nil && r.canon {
		err = fs.Canonicalise(r.trash.Fd, name, fs.CanonicaliseOptions{BuildUID: fs.NoBuildUser, UID: r.uid, GID: r.gid, Display: display})
	}
	if err != nil {
		if _, rerr := fs.RemoveTree(r.trash.Fd, name, display); rerr != nil && !errors.Is(rerr, unix.ENOENT) {
			err = fmt.Errorf("%w (and removing the staged copy: %w)", err, rerr)
		}
		if ctx.Err() != nil {
			err = fmt.Errorf("%w: %w", ErrInterrupted, err)
		}
		it.err = fmt.Errorf("'%s' was not repaired (it is as it was): the copy from %s: %w", pp.Path, off.Where, err)
		return waited
	}
	// Before the swap, so that no kill -9 leaves a damaged .links entry
	// behind the repaired path (see dropDamagedLinks). Once cancelled, no
	// path is swapped any more: the walk is not needed.
	if ctx.Err() == nil {
		it.linksChecked = r.dropLinks(pp.Path, name)
	}
	it.name = name
	return waited
}

// dropLinks removes the damaged .links entries of the old copy of path
// (at its base name in the store directory, if there) against the staged
// tree name (see dropDamagedLinks); a failure is a warning, not the
// path's: the repair goes on. It reports whether the old copy was
// checked or needs no check (no .links entries); false when the path was
// missing, so that an old copy found there at the swap (put back
// meanwhile, or by the recovery of a killed run's exchange) is checked
// after it (deleteOld).
func (r *subRun) dropLinks(path, name string) bool {
	base := baseName(path)
	if lfd, err := r.linksDir(); err == nil && lfd < 0 {
		return true
	} else if err == nil {
		var st unix.Stat_t
		if err := sys.LstatAt(r.storeFd, base, &st); errors.Is(err, unix.ENOENT) {
			return false
		}
	}
	removed, err := r.dropDamagedLinks(r.storeFd, base, r.trash.Fd, name)
	r.linksReport(path, removed, err)
	return true
}

// linksReport says what dropDamagedLinks did for path.
func (r *subRun) linksReport(path string, removed []string, err error) {
	if err != nil {
		r.pr.Warn(fmt.Sprintf("repair: checking the .links entries of the old copy of %s: %s (run 'storekeeper verify --check-contents' to find damaged ones)", report.Name(path), report.Text(err.Error())), path)
	}
	for _, l := range removed {
		r.pr.Verbose(fmt.Sprintf("removed the damaged link %s", report.Name(l)))
	}
}

// baseName is a full store path's base name.
func baseName(p string) string {
	for i := len(p) - 1; i >= 0; i-- {
		if p[i] == '/' {
			return p[i+1:]
		}
	}
	return p
}

// oldCopy is an old copy in the run directory, to delete.
type oldCopy struct {
	name string // in the run directory, and the path's base name
	path string
	// checkLinks: its .links entries were not checked before the swap
	// (see item.linksChecked).
	checkLinks bool
}

// swapBatch puts the staged trees of batch in place (see Substitute), in
// order, and records the outcomes: the paths' PathLocks are taken
// together (sorted, as Nix takes a set of them, so no deadlock with it;
// one at a time if one of them cannot be taken), their rows read again
// in one query, then each is swapped.
func (r *subRun) swapBatch(ctx context.Context, batch []*item, res *SubstitutionResult, olds chan<- oldCopy) {
	var staged []*item
	var names []string
	for _, it := range batch {
		pp := it.pp
		out := &res.Paths[it.idx]
		out.Downloaded = pp.Offer.DownloadSize
		if out.Downloaded == 0 || it.err != nil {
			out.Downloaded = uint64(it.nar)
		}
		if it.err != nil {
			out.Err = it.err
			continue
		}
		if testHookStaged != nil {
			testHookStaged(pp.Path)
		}
		if ctx.Err() != nil {
			r.fail(it, out, fmt.Errorf("'%s' was not repaired: %w", pp.Path, ErrInterrupted))
			continue
		}
		staged = append(staged, it)
		names = append(names, it.name)
	}
	if len(staged) == 0 {
		return
	}
	r.lockAndSwap(ctx, staged, names, res, olds)
}

// lockAndSwap takes the PathLocks of staged (their staged trees' names
// are names) together, reads their rows again and swaps each. When the
// locks cannot be taken together for another reason than ctx (one lock
// file unusable), each path is locked and swapped alone, so that only
// the path whose lock failed fails.
func (r *subRun) lockAndSwap(ctx context.Context, staged []*item, names []string, res *SubstitutionResult, olds chan<- oldCopy) {
	pl, err := lock.LockPathsAt(ctx, r.storeDir, r.s.Layout.RealStoreDir, names, true, func(p string) {
		r.pr.Info(fmt.Sprintf("waiting for the lock on %s...", report.Name(p)))
	})
	if err != nil && ctx.Err() == nil && len(staged) > 1 {
		for i, it := range staged {
			r.lockAndSwap(ctx, []*item{it}, names[i:i+1], res, olds)
		}
		return
	}
	if err != nil {
		if ctx.Err() != nil {
			err = fmt.Errorf("%w: %w", ErrInterrupted, err)
		}
		for _, it := range staged {
			r.fail(it, &res.Paths[it.idx], fmt.Errorf("'%s' was not repaired: taking its lock: %w", it.pp.Path, err))
		}
		return
	}
	defer pl.Unlock(true)
	paths := make([]string, len(staged))
	for i, it := range staged {
		paths[i] = it.pp.Path
	}
	rows, err := r.s.DB.PathRows(ctx, paths)
	if err != nil && ctx.Err() != nil {
		err = fmt.Errorf("%w: %w", ErrInterrupted, err)
	}
	for _, it := range staged {
		out := &res.Paths[it.idx]
		if err != nil {
			r.fail(it, out, fmt.Errorf("'%s' was not repaired: reading its database row again: %w", it.pp.Path, err))
			continue
		}
		if ctx.Err() != nil { // no new swap once cancelled
			r.fail(it, out, fmt.Errorf("'%s' was not repaired: %w", it.pp.Path, ErrInterrupted))
			continue
		}
		if err := stillPlanned(it.pp, rows[it.pp.Path]); err != nil {
			r.fail(it, out, err)
			continue
		}
		r.swapLocked(it, out, olds)
	}
}

// fail records err as it's outcome and removes its staged tree.
func (r *subRun) fail(it *item, out *PathOutcome, err error) {
	out.Err = err
	display := r.trash.Path + "/" + it.name
	if _, rerr := fs.RemoveTree(r.trash.Fd, it.name, display); rerr != nil && !errors.Is(rerr, unix.ENOENT) {
		r.pr.Warn(fmt.Sprintf("repair: removing the staged copy %s: %s", report.Name(display), report.Text(rerr.Error())), it.pp.Path)
	}
}

// swapLocked puts it's staged tree in place, under its PathLock: exchanged
// with the path, or moved there if the path is missing.
func (r *subRun) swapLocked(it *item, out *PathOutcome, olds chan<- oldCopy) {
	pp := it.pp
	base := it.name
	// What a killed run on a file system without RENAME_EXCHANGE left.
	if err := fs.RecoverExchange(r.storeFd, base, r.trash.Fd); err != nil {
		r.fail(it, out, fmt.Errorf("'%s' was not repaired: %w", pp.Path, err))
		return
	}
	if testHookBeforeSwap != nil {
		testHookBeforeSwap(pp.Path)
	}
	var st unix.Stat_t
	present := true
	if err := sys.LstatAt(r.storeFd, base, &st); errors.Is(err, unix.ENOENT) {
		present = false
	} else if err != nil && !errors.Is(err, unix.EIO) {
		r.fail(it, out, fmt.Errorf("'%s' was not repaired: %w", pp.Path, err))
		return
	}
	if !present {
		err := fs.PutNew(r.trash.Fd, it.name, r.storeFd, base)
		if errors.Is(err, unix.EEXIST) {
			present = true // back meanwhile: exchanged instead
		} else if err != nil {
			r.fail(it, out, fmt.Errorf("'%s' was not repaired: putting it in place: %w", pp.Path, err))
			return
		}
	}
	if present {
		if err := fs.Exchange(r.trash.Fd, it.name, r.storeFd, base); err != nil {
			r.fail(it, out, fmt.Errorf("'%s' was not repaired: %w", pp.Path, err))
			return
		}
	}
	out.Done = true
	out.Err = nil
	if testHookSwapped != nil {
		testHookSwapped(pp.Path)
	}
	if present {
		olds <- oldCopy{name: it.name, path: pp.Path, checkLinks: !it.linksChecked} // at it.name in the run directory
	}
}

// deleteOld deletes an old copy (what is left is deleted at the end of
// the run); its damaged .links entries were dropped before the swap, or
// are now if the path was missing then.
func (r *subRun) deleteOld(oc oldCopy) {
	if oc.checkLinks {
		removed, err := r.dropDamagedLinks(r.trash.Fd, oc.name, r.storeFd, baseName(oc.path))
		r.linksReport(oc.path, removed, err)
	}
	display := r.trash.Path + "/" + oc.name
	if _, err := fs.RemoveTree(r.trash.Fd, oc.name, display); err != nil && !errors.Is(err, unix.ENOENT) {
		r.pr.Verbose(fmt.Sprintf("deleting the old copy %s: %s (deleted at the end of the run, or by the next gc)", report.Name(display), report.Text(err.Error())))
	}
}

// stillPlanned checks, under the path's lock, that pp is registered
// (row, nil if not valid) with the id and hash the plan read.
func stillPlanned(pp *PlannedPath, row *db.PathRow) error {
	switch {
	case row == nil:
		return fmt.Errorf("'%s' was left alone: %w since the plan (it is no longer valid)", pp.Path, ErrChanged)
	case pp.ID != 0 && row.ID != pp.ID:
		return fmt.Errorf("'%s' was left alone: %w since the plan (registered again)", pp.Path, ErrChanged)
	case row.NarHash != pp.Want.NarHash:
		return fmt.Errorf("'%s' was left alone: %w since the plan (its hash is now %s)", pp.Path, ErrChanged, row.NarHash)
	}
	return nil
}
