package verify

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"storekeeper/report"
	"storekeeper/store/db"
	"storekeeper/verify/finding"
)

// These tests run Verify through checkPaths' pool and jobGate in every
// combination that changes how workers enter, park and leave, and check
// that it returns (a hang fails the test after 60 s, with every
// goroutine's stack) and that no selected path is hashed twice, and every
// one is unless the run is cancelled or its budget runs out.

// verifyRecorder is a Progress that counts the Verified calls per path.
// after, when set, runs after each call with the number of calls so far
// (in the collector's goroutine, as Verified).
type verifyRecorder struct {
	report.Progress
	mu    sync.Mutex
	seen  map[string]int
	order []string
	after func(n int)
}

func newRecorder() *verifyRecorder {
	return &verifyRecorder{Progress: report.Discard, seen: map[string]int{}}
}

func (r *verifyRecorder) Verified(p string, ok bool) {
	r.mu.Lock()
	r.seen[p]++
	r.order = append(r.order, p)
	n := len(r.order)
	r.mu.Unlock()
	if r.after != nil {
		r.after(n)
	}
}

// twice returns the paths verified more than once.
func (r *verifyRecorder) twice() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []string
	for p, n := range r.seen {
		if n > 1 {
			out = append(out, fmt.Sprintf("%s (%d times)", p, n))
		}
	}
	return out
}

const hangAfter = 60 * time.Second

// verifyWithin runs Verify and fails the test with every goroutine's
// stack if it has not returned in hangAfter.
func verifyWithin(t *testing.T, ctx context.Context, f *fixture, o Options, prog report.Progress) (*Result, error) {
	t.Helper()
	s := f.open(true)
	type out struct {
		res *Result
		err error
	}
	c := make(chan out, 1)
	go func() {
		res, err := Verify(ctx, s, o, prog)
		c <- out{res, err}
	}()
	select {
	case r := <-c:
		s.Close()
		return r.res, r.err
	case <-time.After(hangAfter):
		buf := make([]byte, 8<<20)
		buf = buf[:runtime.Stack(buf, true)]
		t.Fatalf("Verify(%+v) has not returned in %v: a hang\n%s", o, hangAfter, buf)
		return nil, nil
	}
}

// withGate sets GOMAXPROCS (the gate's first limit) and the gate's
// sampling interval for the rest of the test.
func withGate(t *testing.T, procs int, interval time.Duration) {
	oldProcs, oldInterval := runtime.GOMAXPROCS(procs), gateInterval
	gateInterval = interval
	t.Cleanup(func() {
		runtime.GOMAXPROCS(oldProcs)
		gateInterval = oldInterval
	})
}

// fifoPath replaces the first file of a directory output by a FIFO, so
// that hashing that path fails (an io-error finding), and returns it.
func fifoPath(t *testing.T, f *fixture) string {
	t.Helper()
	p := f.dirOutputs()[0]
	victim := f.firstFile(p)
	writable(t, filepath.Dir(victim), func() {
		os.Remove(victim)
		if err := syscallMkfifo(victim); err != nil {
			t.Fatal(err)
		}
	})
	return p
}

// emptySubset returns an n of m that selects none of the valid paths.
func emptySubset(t *testing.T, f *fixture) (int, int) {
	t.Helper()
	m := 8 * len(f.b.Valid)
	for n := 1; n <= m; n++ {
		empty := true
		for _, p := range f.b.Valid {
			if inSubset(filepath.Base(p), n, m) {
				empty = false
				break
			}
		}
		if empty {
			return n, m
		}
	}
	t.Fatal("no empty subset")
	return 0, 0
}

// checkRun checks one finished run: no path verified twice, and the paths
// verified (clean, damaged or unreadable) and those left for later runs
// are the want selected.
func checkRun(t *testing.T, name string, rec *verifyRecorder, res *Result, want int) {
	t.Helper()
	if tw := rec.twice(); len(tw) > 0 {
		t.Errorf("%s: verified more than once: %v", name, tw)
	}
	ioErrs := len(byKind(res)[finding.KindIOError])
	n := len(rec.order)
	if n != res.Summary.ContentsChecked+ioErrs {
		t.Errorf("%s: %d paths verified, but %d hashed and %d unreadable", name, n, res.Summary.ContentsChecked, ioErrs)
	}
	if n+res.Summary.Remaining != want {
		t.Errorf("%s: %d verified + %d remaining, want %d selected", name, n, res.Summary.Remaining, want)
	}
	if res.Summary.Remaining > 0 && res.Summary.Stopped == "" {
		t.Errorf("%s: %d remaining but no reason to stop", name, res.Summary.Remaining)
	}
}

func TestGateRunEveryPathOnce(t *testing.T) {
	f := newFixture(t, smallSpec())
	broken := fifoPath(t, f)
	all := len(f.b.Valid)
	total := f.totalNarSize()
	sub := 0
	for _, p := range f.b.Valid {
		if inSubset(filepath.Base(p), 2, 3) {
			sub++
		}
	}
	en, em := emptySubset(t, f)
	one := f.dirOutputs()[1]
	type variant struct {
		name string
		o    Options
		want int
	}
	var variants []variant
	for _, jobs := range []int{0, 1, 2, 3, 64} {
		j := fmt.Sprintf("j%d/", jobs)
		variants = append(variants,
			variant{j + "all", Options{CheckContents: true, Jobs: jobs}, all},
			variant{j + "metadata", Options{CheckContents: true, Metadata: true, Jobs: jobs}, all},
			variant{j + "one", Options{CheckContents: true, Jobs: jobs, Paths: []string{one}}, 1},
			variant{j + "broken", Options{CheckContents: true, Jobs: jobs, Paths: []string{broken, one}}, 2},
			variant{j + "none", Options{Jobs: jobs, SubsetN: en, SubsetM: em}, 0},
			variant{j + "subset", Options{Jobs: jobs, SubsetN: 2, SubsetM: 3}, sub},
			variant{j + "size-third", Options{Jobs: jobs, BudgetBytes: total / 3}, all},
			variant{j + "size-1", Options{Jobs: jobs, BudgetBytes: 1}, all},
			variant{j + "size-all", Options{Jobs: jobs, BudgetBytes: total * 2}, all},
			variant{j + "time-1ns", Options{Jobs: jobs, BudgetTime: time.Nanosecond}, all},
			variant{j + "time-hour", Options{Jobs: jobs, BudgetTime: time.Hour}, all},
		)
		// Deadlines that fall during the run, while most workers wait
		// in the gate.
		for _, d := range []time.Duration{time.Millisecond, 3 * time.Millisecond, 10 * time.Millisecond, 30 * time.Millisecond} {
			variants = append(variants, variant{j + "time-" + d.String(), Options{Jobs: jobs, BudgetTime: d}, all})
		}
	}
	for _, procs := range []int{1, 2, 4} {
		for _, interval := range []time.Duration{time.Millisecond, 100 * time.Millisecond} {
			t.Run(fmt.Sprintf("procs%d/every%v", procs, interval), func(t *testing.T) {
				withGate(t, procs, interval)
				for _, v := range variants {
					v.o.NoRecord = true
					rec := newRecorder()
					res, err := verifyWithin(t, t.Context(), f, v.o, rec)
					if err != nil {
						t.Fatalf("%s: %v", v.name, err)
					}
					checkRun(t, v.name, rec, res, v.want)
					if strings.HasSuffix(v.name, "/broken") && len(byKind(res)[finding.KindIOError]) != 1 {
						t.Errorf("%s: io errors %+v, want one", v.name, byKind(res)[finding.KindIOError])
					}
				}
			})
		}
	}
}

// TestGateRunEmptyStore: a database with no valid path at all.
func TestGateRunEmptyStore(t *testing.T) {
	f := newFixture(t, smallSpec())
	for _, q := range []string{"DELETE FROM Refs", "DELETE FROM DerivationOutputs", "DELETE FROM ValidPaths"} {
		execDB(t, f, q)
	}
	for _, jobs := range []int{0, 1, 5} {
		rec := newRecorder()
		res, err := verifyWithin(t, t.Context(), f, Options{CheckContents: true, Jobs: jobs, NoRecord: true}, rec)
		if err != nil {
			t.Fatalf("-j %d: %v", jobs, err)
		}
		checkRun(t, fmt.Sprintf("-j %d", jobs), rec, res, 0)
	}
}

// TestGateRunCancel cancels the context at chosen moments: before the
// run, after the k-th path (while all but GOMAXPROCS workers wait in the
// gate), and at random instants. Verify must return the context's error,
// having verified no path twice.
func TestGateRunCancel(t *testing.T) {
	f := newFixture(t, smallSpec())
	all := len(f.b.Valid)
	rng := rand.New(rand.NewPCG(27, 1))
	for _, procs := range []int{1, 2} {
		for _, interval := range []time.Duration{time.Millisecond, 100 * time.Millisecond} {
			t.Run(fmt.Sprintf("procs%d/every%v", procs, interval), func(t *testing.T) {
				withGate(t, procs, interval)
				for _, jobs := range []int{0, 1, 4} {
					for _, o := range []Options{{CheckContents: true}, {BudgetTime: time.Hour}, {BudgetBytes: 1 << 40}} {
						o.Jobs, o.NoRecord = jobs, true
						name := fmt.Sprintf("-j %d %+v", jobs, o)
						run := func(how string, rec *verifyRecorder, ctx context.Context) {
							t.Helper()
							res, err := verifyWithin(t, ctx, f, o, rec)
							if tw := rec.twice(); len(tw) > 0 {
								t.Errorf("%s, %s: verified more than once: %v", name, how, tw)
							}
							if err == nil {
								// Cancelled after the last path: a whole run.
								checkRun(t, name+", "+how, rec, res, all)
								return
							}
							if !errors.Is(err, ctx.Err()) {
								t.Errorf("%s, %s: %v, want the context's %v", name, how, err, ctx.Err())
							}
						}
						ctx, cancel := context.WithCancel(t.Context())
						cancel()
						run("cancelled before", newRecorder(), ctx)
						for _, k := range []int{1, 2, 5, all / 2, all - 1} {
							ctx, cancel := context.WithCancel(t.Context())
							rec := newRecorder()
							rec.after = func(n int) {
								if n == k {
									cancel()
								}
							}
							run(fmt.Sprintf("cancelled after %d paths", k), rec, ctx)
							cancel()
						}
						for range 4 {
							d := time.Duration(rng.Int64N(int64(20 * time.Millisecond)))
							ctx, cancel := context.WithTimeout(t.Context(), d)
							run(fmt.Sprintf("cancelled after %v", d), newRecorder(), ctx)
							cancel()
						}
					}
				}
			})
		}
	}
}

// gateGoroutines returns the stacks of goroutines running in jobGate or
// checkPaths.
func gateGoroutines() []string {
	buf := make([]byte, 8<<20)
	buf = buf[:runtime.Stack(buf, true)]
	var out []string
	for _, g := range strings.Split(string(buf), "\n\n") {
		if strings.Contains(g, "verify.(*jobGate)") || strings.Contains(g, "verify.(*verifier).checkPaths") {
			out = append(out, g)
		}
	}
	return out
}

// TestGateRunNoGoroutineLeft: once Verify has returned, whole, budgeted
// or cancelled, no goroutine of its pool or gate runs (the sampler is
// waited for; the context's AfterFunc, which only stops the gate, may
// finish just after), and the goroutine count comes back to where it was.
func TestGateRunNoGoroutineLeft(t *testing.T) {
	f := newFixture(t, smallSpec())
	withGate(t, 2, time.Millisecond)
	before := runtime.NumGoroutine()
	for i, o := range []Options{{CheckContents: true}, {BudgetTime: 2 * time.Millisecond}, {BudgetBytes: 1}, {CheckContents: true, Jobs: 3}} {
		o.NoRecord = true
		if _, err := verifyWithin(t, t.Context(), f, o, nil); err != nil {
			t.Fatal(err)
		}
		for _, g := range gateGoroutines() {
			if !strings.Contains(g, "(*jobGate).stop") {
				t.Errorf("run %d: still running after Verify returned:\n%s", i, g)
			}
		}
		ctx, cancel := context.WithCancel(t.Context())
		rec := newRecorder()
		rec.after = func(n int) {
			if n == 3 {
				cancel()
			}
		}
		if _, err := verifyWithin(t, ctx, f, o, rec); err != nil && !errors.Is(err, context.Canceled) {
			t.Fatalf("run %d, cancelled: %v", i, err)
		}
		cancel()
		for _, g := range gateGoroutines() {
			if !strings.Contains(g, "(*jobGate).stop") {
				t.Errorf("run %d, cancelled: still running after Verify returned:\n%s", i, g)
			}
		}
	}
	deadline := time.Now().Add(10 * time.Second)
	for runtime.NumGoroutine() > before {
		if time.Now().After(deadline) {
			buf := make([]byte, 8<<20)
			t.Fatalf("%d goroutines before, %d after:\n%s", before, runtime.NumGoroutine(), buf[:runtime.Stack(buf, true)])
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestBigFirstOnlyWhereOrderIsFree: a path big next to the rest goes
// first in a whole run and in the paths a size budget picked, but a time
// budget keeps least recently verified first (here, never verified: by
// name), big or not. One worker, so the order verified is the order
// taken.
func TestBigFirstOnlyWhereOrderIsFree(t *testing.T) {
	f := newFixture(t, smallSpec())
	s := f.open(true)
	g, err := s.LoadGraph(t.Context(), db.GraphOptions{})
	s.Close()
	if err != nil {
		t.Fatal(err)
	}
	var total uint64
	for i := 0; i < g.Len(); i++ {
		total += g.NarSize[i]
	}
	// The big one: last by name, so that neither order has it first by
	// chance. Its row says it is 4 times the rest (a nar-size finding,
	// which does not matter here).
	big := f.b.Valid[len(f.b.Valid)-1]
	id, _ := g.Lookup(filepath.Base(big))
	execDB(t, f, "UPDATE ValidPaths SET narSize = ? WHERE path = ?", int64(4*total), big)
	byName := slices.Clone(f.b.Valid)
	for _, c := range []struct {
		name     string
		o        Options
		bigFirst bool
	}{
		{"whole run", Options{CheckContents: true}, true},
		{"size budget", Options{BudgetBytes: int64(100 * total)}, true},
		{"time budget", Options{BudgetTime: time.Hour}, false},
	} {
		c.o.Jobs, c.o.NoRecord = 1, true
		rec := newRecorder()
		if _, err := verifyWithin(t, t.Context(), f, c.o, rec); err != nil {
			t.Fatal(err)
		}
		if len(rec.order) != len(byName) {
			t.Fatalf("%s: %d verified, want %d", c.name, len(rec.order), len(byName))
		}
		if c.bigFirst && rec.order[0] != big {
			t.Errorf("%s: %s first, want the big %s (path %d)", c.name, rec.order[0], big, id)
		}
		if !c.bigFirst && !slices.Equal(rec.order, byName) {
			t.Errorf("%s: order %v, want least recently verified (by name) %v", c.name, rec.order, byName)
		}
	}
}
