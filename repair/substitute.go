package repair

import (
	"container/heap"
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"storekeeper/nix/nar"
	"storekeeper/nix/storepath"
	"storekeeper/report"
	"storekeeper/store"
	"storekeeper/substitute"
	"storekeeper/verify/finding"
)

// Sentinel errors of substitution, wrapped by PlannedPath.Err and
// PathOutcome.Err (with the path and what to do).
var (
	// ErrNotValid: the target is not a valid path (no ValidPaths row, or
	// a row without a usable hash): there is nothing to check a
	// substitute against.
	ErrNotValid = errors.New("not a valid path with a known NAR hash")
	// ErrNoSubstitute: no source offered a trusted copy with the
	// database's hash (PathOutcome.Tried says why each did not).
	ErrNoSubstitute = errors.New("no substituter has it")
	// ErrChanged: the path's registration changed since the audit or the
	// plan (registered again, invalidated, another hash): it was left
	// alone.
	ErrChanged = errors.New("its registration changed")
	// ErrInterrupted: the run was cancelled before the path was put back.
	ErrInterrupted = errors.New("interrupted before it was repaired")
)

// Defaults of SubstituteOptions.
const (
	DefaultLookupJobs = 25
	DefaultJobs       = 4
	DefaultBudget     = 1 << 30
	// MaxAdaptiveJobs bounds the downloads a default Jobs grows to for a
	// slow source (each holds a decompressor's window, 8 MiB for zstd).
	MaxAdaptiveJobs = 25
)

// Target is a path to put back from a substitute.
type Target struct {
	Path string // the full store path (logical)
	// ID is the ValidPaths id the audit read (0: unknown): only that
	// registration is repaired.
	ID int64
	// Missing: the audit found the path absent from disk.
	Missing bool
	// Files are what the audit found changed, added or removed (relative
	// to Path), for messages.
	Files []string
}

// SubstituteOptions control PlanSubstitution and Substitute.
type SubstituteOptions struct {
	// Sources are asked in this order for each path; the first trusted
	// offer wins (substitute.Sort orders them by priority first).
	Sources []substitute.Source
	// LookupJobs: look-ups at once, at most (default DefaultLookupJobs).
	// Look-ups start 4 at a time, and more run at once only while the
	// sources are slow to answer (a far cache: requests in flight hide
	// its latency), so that a near server, which answers faster than
	// more connections help, is not flooded (a small server's listen
	// queue overflows, and each dropped SYN costs a second).
	LookupJobs int
	// Jobs: paths downloaded and unpacked at once. 0: DefaultJobs, and
	// more (up to MaxAdaptiveJobs, and LookupJobs) while the sources are
	// slow to answer, as for look-ups; set, exactly that many.
	Jobs int
	// Budget bounds the NAR bytes staged and not yet swapped in (default
	// DefaultBudget); a path larger than the budget is staged alone.
	Budget int64
	// Progress gets the phases "looking up" (items) and "downloading"
	// (bytes of NAR unpacked and hashed), and the messages; nil: none.
	Progress report.Progress
}

func (o SubstituteOptions) progress() report.Progress {
	if o.Progress == nil {
		return report.Discard
	}
	return o.Progress
}

// SourceError is why one source did not serve a path.
type SourceError struct {
	Source string // the source's URL
	Err    error
}

func (e SourceError) Error() string {
	msg := e.Err.Error()
	if strings.Contains(msg, e.Source) {
		return msg // the source's errors name it already
	}
	return e.Source + ": " + msg
}

// PlannedPath is a target as the plan has it: its Want (from the
// database row) and the offer that will be fetched.
type PlannedPath struct {
	Target
	Want  substitute.Want
	Offer *substitute.Offer // nil: no source has it (Tried says why), or Err
	Tried []SourceError     // the sources asked before the offer, and why each did not serve it
	Err   error             // why the path cannot be planned (not valid, ...); nil when Offer or Tried say it
}

// SubstitutionPlan is what Substitute does, as data.
type SubstitutionPlan struct {
	// Paths in dependency order: a path's references (among the
	// targets) before it.
	Paths []PlannedPath
}

// DownloadSize is what fetching the plan's offers transfers: each
// offer's DownloadSize, or its NAR size where the source does not say.
func (p *SubstitutionPlan) DownloadSize() uint64 {
	var n uint64
	for i := range p.Paths {
		if o := p.Paths[i].Offer; o != nil {
			if o.DownloadSize > 0 {
				n += o.DownloadSize
			} else {
				n += o.NarSize
			}
		}
	}
	return n
}

// NarSize is the NAR bytes the plan's offers unpack to.
func (p *SubstitutionPlan) NarSize() uint64 {
	var n uint64
	for i := range p.Paths {
		if o := p.Paths[i].Offer; o != nil {
			n += o.NarSize
		}
	}
	return n
}

// PlanSubstitution reads the database rows of targets (ValidPaths id,
// NAR hash and size, references: a few batched queries in one read
// transaction, never one per path), makes each Want, and asks the
// sources for each path in parallel (o.LookupJobs at once; for each path
// the sources in order, the first trusted offer wins, and why each
// earlier source did not serve it is kept in Tried). A target that is not
// valid, whose hash the database lacks, or whose registration is not the
// audit's (Target.ID) gets Err and no look-up. Paths are ordered
// references first (among the targets; self-references ignored).
// Duplicate targets are merged.
//
// It changes nothing and takes no lock: `repair --dry-run` stops here.
// The error is non-nil only when the database cannot be read or ctx is
// done (then no plan is returned).
func PlanSubstitution(ctx context.Context, s *store.Store, targets []Target, o SubstituteOptions) (*SubstitutionPlan, error) {
	var paths []PlannedPath
	idx := map[string]int{}
	for _, t := range targets {
		if i, ok := idx[t.Path]; ok {
			pp := &paths[i]
			pp.Files = mergeFiles(pp.Files, t.Files)
			pp.Missing = pp.Missing || t.Missing
			if pp.ID == 0 {
				pp.ID = t.ID
			}
			continue
		}
		idx[t.Path] = len(paths)
		paths = append(paths, PlannedPath{Target: t})
	}
	var names []string
	for i := range paths {
		pp := &paths[i]
		if err := checkStorePath(s.Layout, pp.Path); err != nil {
			pp.Err = err
			continue
		}
		names = append(names, pp.Path)
	}
	rows, err := s.DB.PathRows(ctx, names)
	if err != nil {
		return nil, fmt.Errorf("repair: reading the database rows of the paths to repair: %w", err)
	}
	var look []int
	for i := range paths {
		pp := &paths[i]
		if pp.Err != nil {
			continue
		}
		r := rows[pp.Path]
		switch {
		case r == nil:
			pp.Err = fmt.Errorf("'%s' is %w: it is not registered in the database, so there is nothing to repair it to (a path is only repaired to the contents its database row records)", pp.Path, ErrNotValid)
		case pp.ID != 0 && r.ID != pp.ID:
			pp.Err = fmt.Errorf("'%s' was left alone: %w since the audit (registered again under another id); run the audit again", pp.Path, ErrChanged)
		case r.HashErr != nil || r.NarHash == (nar.Hash{}):
			cause := r.HashErr
			if cause == nil {
				cause = errors.New("the database records no hash")
			}
			pp.Err = fmt.Errorf("'%s' is not %w: %w; 'storekeeper verify --check-contents --repair' records the hash of intact contents", pp.Path, ErrNotValid, cause)
		default:
			pp.ID = r.ID
			pp.Want = substitute.Want{Path: pp.Path, NarHash: r.NarHash, NarSize: r.NarSize, References: r.References}
			look = append(look, i)
		}
	}
	if err := lookUp(ctx, paths, look, o); err != nil {
		return nil, err
	}
	return &SubstitutionPlan{Paths: dependencyOrder(paths)}, nil
}

// checkStorePath checks that p is a store path of the store (not a file
// inside one, not another store's).
func checkStorePath(lay store.Layout, p string) error {
	base, err := storepath.Parse(lay.StoreDir, p)
	if err != nil {
		return fmt.Errorf("%s is %w: %w", report.Name(p), ErrNotValid, err)
	}
	if p != lay.StoreDir+"/"+base {
		return fmt.Errorf("%s is %w: write it as %s", report.Name(p), ErrNotValid, report.Name(lay.StoreDir+"/"+base))
	}
	return nil
}

func mergeFiles(a, b []string) []string {
	seen := map[string]bool{}
	for _, f := range a {
		seen[f] = true
	}
	for _, f := range b {
		if !seen[f] {
			a = append(a, f)
			seen[f] = true
		}
	}
	return a
}

// lookUp asks the sources for paths[look...] with up to o.LookupJobs
// workers (see SubstituteOptions.LookupJobs).
func lookUp(ctx context.Context, paths []PlannedPath, look []int, o SubstituteOptions) error {
	if len(look) == 0 {
		return nil
	}
	pr := o.progress()
	pr.Phase("looking up", int64(len(look)), false)
	jobs := o.LookupJobs
	if jobs <= 0 {
		jobs = DefaultLookupJobs
	}
	work := make(chan int)
	pool := runAdaptive(work, startWorkers, jobs, func(i int) time.Duration {
		t0 := time.Now()
		lookUpOne(ctx, &paths[i], o.Sources)
		pr.Add(1)
		return time.Since(t0)
	})
feed:
	for _, i := range look {
		select {
		case work <- i:
		case <-ctx.Done():
			break feed
		}
	}
	close(work)
	pool.wait()
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("repair: looking up substitutes: %w", err)
	}
	return nil
}

// lookUpOne asks each source in turn for pp.
func lookUpOne(ctx context.Context, pp *PlannedPath, srcs []substitute.Source) {
	for _, src := range srcs {
		if ctx.Err() != nil {
			return
		}
		off, err := src.Lookup(ctx, pp.Want)
		if err == nil && off != nil {
			if off.NarHash != pp.Want.NarHash || pp.Want.NarSize != 0 && off.NarSize != pp.Want.NarSize {
				// The contract says a source never offers this; a
				// source that does is not trusted with the path.
				err = fmt.Errorf("%w: it offered %s (%d bytes), the database records %s (%d bytes)",
					substitute.ErrMismatch, off.NarHash, off.NarSize, pp.Want.NarHash, pp.Want.NarSize)
			} else {
				pp.Offer = off
				return
			}
		}
		if err == nil {
			err = substitute.ErrNotFound
		}
		pp.Tried = append(pp.Tried, SourceError{Source: src.URL(), Err: err})
	}
}

// dependencyOrder orders paths so that each comes after its references
// among them (Kahn's algorithm, ties in the given order); a cycle, which
// valid paths cannot form but for self-references, is broken in the given
// order.
func dependencyOrder(paths []PlannedPath) []PlannedPath {
	idx := make(map[string]int, len(paths))
	for i := range paths {
		idx[paths[i].Path] = i
	}
	pending := make([]int, len(paths))     // references not yet placed
	referrers := make([][]int, len(paths)) // who waits for i
	for i := range paths {
		for _, r := range paths[i].Want.References {
			if j, ok := idx[r]; ok && j != i {
				pending[i]++
				referrers[j] = append(referrers[j], i)
			}
		}
	}
	out := make([]PlannedPath, 0, len(paths))
	placed := make([]bool, len(paths))
	ready := &intHeap{} // the smallest index first: ties in the given order
	for i := range paths {
		if pending[i] == 0 {
			heap.Push(ready, i)
		}
	}
	next := 0 // no index below it is unplaced (the cycle breaker's scan)
	for len(out) < len(paths) {
		if ready.Len() == 0 { // a cycle: take the first not placed
			for placed[next] {
				next++
			}
			heap.Push(ready, next)
		}
		i := heap.Pop(ready).(int)
		if placed[i] {
			continue
		}
		placed[i] = true
		out = append(out, paths[i])
		for _, k := range referrers[i] {
			pending[k]--
			if pending[k] == 0 && !placed[k] {
				heap.Push(ready, k)
			}
		}
	}
	return out
}

// intHeap is a min-heap of ints (container/heap).
type intHeap []int

func (h intHeap) Len() int           { return len(h) }
func (h intHeap) Less(i, j int) bool { return h[i] < h[j] }
func (h intHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *intHeap) Push(x any)        { *h = append(*h, x.(int)) }
func (h *intHeap) Pop() any {
	old := *h
	x := old[len(old)-1]
	*h = old[:len(old)-1]
	return x
}

// PathOutcome is what Substitute did about one path.
type PathOutcome struct {
	Path string
	// Done: the path now holds the substitute's contents (hash checked).
	Done bool
	// From is the source it came from (its URL), Trust why it was
	// trusted.
	From, Trust string
	// Downloaded is what was transferred (the offer's download size, or
	// the NAR bytes read); NarSize the NAR's size.
	Downloaded, NarSize uint64
	// Err: why the path was not repaired; it names the path and what to
	// do. Nil with !Done only for a path the run never reached (see the
	// result's error).
	Err error
	// Tried: why each source asked did not serve it.
	Tried []SourceError
	// Files: what the audit found changed (Target.Files).
	Files []string
}

// SubstitutionResult is what Substitute did, a PathOutcome per path of
// the plan, in the plan's order.
type SubstitutionResult struct {
	Paths      []PathOutcome
	Downloaded uint64 // the sum of the outcomes' Downloaded
}

// Repaired reports how many paths were put back.
func (r *SubstitutionResult) Repaired() int {
	n := 0
	for i := range r.Paths {
		if r.Paths[i].Done {
			n++
		}
	}
	return n
}

// Failed lists the outcomes of the paths not put back.
func (r *SubstitutionResult) Failed() []PathOutcome {
	var out []PathOutcome
	for _, o := range r.Paths {
		if !o.Done {
			out = append(out, o)
		}
	}
	return out
}

// MarkSubstituted marks the findings whose path r put back Repaired: those
// whose remedy is finding.RemedyRepairPath or
// finding.RemedyCheckDiskThenRepairPath (for every path of the remedy),
// and those of a disappeared path (its row was kept and the path is back);
// the message says where the path came from. The others keep their
// remedy.
func MarkSubstituted(fs []finding.Finding, r *SubstitutionResult) {
	if r == nil {
		return
	}
	done := map[string]*PathOutcome{}
	for i := range r.Paths {
		if r.Paths[i].Done {
			done[r.Paths[i].Path] = &r.Paths[i]
		}
	}
	for i := range fs {
		f := &fs[i]
		if f.Repaired || f.Remedy == nil {
			continue
		}
		switch f.Remedy.Action {
		case finding.RemedyRepairPath, finding.RemedyCheckDiskThenRepairPath:
			ok := len(f.Remedy.Paths) > 0
			for _, p := range f.Remedy.Paths {
				ok = ok && done[p] != nil
			}
			if !ok {
				continue
			}
		case finding.RemedyInvalidate:
			if f.Kind != finding.KindDisappeared || done[f.Path] == nil {
				continue
			}
		default:
			continue
		}
		o := done[f.Path]
		if o == nil {
			o = done[f.Remedy.Paths[0]]
		}
		msg := fmt.Sprintf("repaired: copied path '%s' from '%s'", o.Path, o.From)
		if f.Message == "" {
			f.Message = msg
		} else if !strings.HasSuffix(f.Message, msg) {
			f.Message += "\n" + msg
		}
		f.Remedy = nil
		f.Repaired = true
	}
}
