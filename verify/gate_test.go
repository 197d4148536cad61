package verify

import (
	"errors"
	"math"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"storekeeper/graph"
)

func TestJobGateAdjust(t *testing.T) {
	// One gate on 2 cores with at most 32 workers, fed a sequence of
	// samples (cores busy); the limit after each.
	steps := []struct {
		busy float64
		want int
	}{
		{1.95, 2},  // saturated with as many workers as cores: stays
		{1.99, 2},  // and again: never below the cores
		{1.2, 4},   // idle cores: workers are waiting, double
		{1.5, 8},   // still idle
		{1.7, 8},   // between 80% and 95%: stays
		{1.1, 16},  // idle
		{0.2, 32},  // idle
		{0.1, 32},  // never above max
		{1.95, 32}, // saturated once: not yet
		{1.5, 32},  // the streak is broken
		{1.95, 32}, // saturated once more
		{2.0, 16},  // twice in a row: halve
		{1.96, 16}, // a new streak starts after halving
		{1.97, 8},
		{1.9, 8}, // 95% of 2 is 1.9: saturated
		{1.9, 4},
		{1.99, 4},
		{1.99, 2},
		{1.99, 2},
		{1.99, 2},
	}
	g := newJobGate(2, 32)
	for i, s := range steps {
		g.adjust(s.busy)
		if got := g.current(); got != s.want {
			t.Fatalf("step %d (busy %.2f): limit %d, want %d", i, s.busy, got, s.want)
		}
	}
	if g := newJobGate(64, 16); g.current() != 16 {
		t.Errorf("more cores than workers: limit %d, want 16", g.current())
	}
	if g := newJobGate(0, 16); g.current() != 1 {
		t.Errorf("no cores: limit %d, want 1", g.current())
	}
}

func TestJobGateEnterWaitsAndStopReleases(t *testing.T) {
	g := newJobGate(2, 8)
	var entered atomic.Int32
	var wg sync.WaitGroup
	results := make([]bool, 8)
	for i := 0; i < 8; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			results[i] = g.enter(i)
			if results[i] {
				entered.Add(1)
			}
		}()
	}
	// Workers 0 and 1 enter; the other six wait.
	waitFor(t, func() bool { return entered.Load() == 2 })
	time.Sleep(20 * time.Millisecond)
	if n := entered.Load(); n != 2 {
		t.Fatalf("%d workers entered with a limit of 2", n)
	}
	g.adjust(0.5) // idle: 4 may run
	waitFor(t, func() bool { return entered.Load() == 4 })
	g.stop()
	wg.Wait()
	if n := entered.Load(); n != 4 {
		t.Fatalf("%d workers entered; want the 4 let in before stop", n)
	}
	for i := 4; i < 8; i++ {
		if results[i] {
			t.Errorf("worker %d entered after stop", i)
		}
	}
	if g.enter(0) {
		t.Error("enter after stop returned true")
	}
	g.stop() // idempotent
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not reached in 10 s")
		}
		time.Sleep(time.Millisecond)
	}
}

func TestBigFirst(t *testing.T) {
	// Sizes by PathID; ids in disk order.
	size := []uint64{10, 5000, 20, 30, 9000, 0, 40, 5000}
	ids := []graph.PathID{3, 1, 0, 6, 4, 2, 7, 5}
	// total 19100; 1 core, 4 jobs: big from 19100/16 = 1193 bytes.
	bigFirst(ids, size, 4, 1)
	want := []graph.PathID{4, 1, 7, 3, 0, 6, 2, 5} // 9000, then the two 5000s in disk order; the rest as they were
	if !slices.Equal(ids, want) {
		t.Errorf("order %v, want %v", ids, want)
	}
	// Many even paths (each under a quarter of one job's share): nothing
	// moves.
	even := []uint64{100, 100, 100, 100, 100, 100, 100, 100, 150}
	ids = []graph.PathID{2, 0, 3, 1, 8, 7, 6, 5, 4}
	bigFirst(ids, even, 1, 1)
	if want := []graph.PathID{2, 0, 3, 1, 8, 7, 6, 5, 4}; !slices.Equal(ids, want) {
		t.Errorf("even sizes reordered: %v", ids)
	}
}

// simulate feeds a gate samples from a model of the run, busy as a
// function of the limit at each sample, and returns the limits after each.
func simulate(g *jobGate, samples int, busy func(sample, limit int) float64) []int {
	out := make([]int, samples)
	for i := range out {
		g.adjust(busy(i, g.current()))
		out[i] = g.current()
	}
	return out
}

// TestJobGateDoesNotSwing: a run the cores keep busy with 4 workers but
// not with 2 (the cores idle at 75%) must settle near 4, not swing
// between 2 and 4 every third sample (a third of the run at 75%).
func TestJobGateDoesNotSwing(t *testing.T) {
	g := newJobGate(2, 32)
	limits := simulate(g, 200, func(_, limit int) float64 {
		if limit <= 2 {
			return 1.5
		}
		return 1.99
	})
	at2 := 0
	for _, l := range limits {
		if l == 2 {
			at2++
		}
	}
	if at2 > len(limits)/8 {
		t.Errorf("%d of %d samples at the limit that leaves the cores idle: %v", at2, len(limits), limits)
	}
	if limits[len(limits)-1] > 4 {
		t.Errorf("ended at %d, want at most 4", limits[len(limits)-1])
	}
}

// TestJobGateComesDown: a cold start (the cores idle: up to max), then
// the page cache: the cores saturated whatever the limit. The limit comes
// down to the cores, also after halvings that an idle sample right after
// seemed to contradict, and goes up again when the disk is cold again.
func TestJobGateComesDown(t *testing.T) {
	for _, blips := range []int{0, 1, 3} {
		g := newJobGate(2, 32)
		prev, left := 0, blips
		limits := simulate(g, 150, func(i, limit int) float64 {
			halved := limit < prev
			prev = limit
			switch {
			case i < 6:
				return 0.3
			case halved && left > 0:
				left--
				return 0.3
			}
			return 1.99
		})
		if limits[5] != 32 {
			t.Errorf("%d blips: cold start reached %d, want 32: %v", blips, limits[5], limits)
		}
		if left > 0 {
			t.Errorf("%d blips: only %d after a halving: %v", blips, blips-left, limits)
		}
		if l := limits[len(limits)-1]; l != 2 {
			t.Errorf("%d blips: saturated cores left the limit at %d, want 2: %v", blips, l, limits)
		}
		if l := simulate(g, 5, func(int, int) float64 { return 0.5 }); l[4] != 32 {
			t.Errorf("%d blips: cold again: %v, want 32", blips, l)
		}
	}
}

// fakeClock gives run its ticks, CPU readings and wall clock: each tick
// reads cpu[i] and wall[i] (index 0: the readings when run starts).
type fakeClock struct {
	cpu  []time.Duration
	err  []error
	wall []time.Duration
	i, j int
}

func (c *fakeClock) readCPU() (time.Duration, error) {
	i := c.i
	c.i++
	if i < len(c.err) && c.err[i] != nil {
		return 0, c.err[i]
	}
	return c.cpu[i], nil
}

func (c *fakeClock) now() time.Time {
	j := c.j
	c.j++
	return time.Unix(0, 0).Add(c.wall[j])
}

// runGate runs g.run over ticks carrying the times in ticks (as a
// time.Ticker's would: when each was due), then stops it.
func runGate(t *testing.T, g *jobGate, c *fakeClock, ticks []time.Duration) {
	t.Helper()
	done, tick, ended := make(chan struct{}), make(chan time.Time), make(chan struct{})
	go func() {
		defer close(ended)
		g.run(done, tick, c.readCPU, c.now)
	}()
	for _, d := range ticks {
		select {
		case tick <- time.Unix(0, 0).Add(d):
		case <-ended: // run returned (its clock failed)
		}
	}
	close(done)
	<-ended
}

// TestJobGateRunMeasuresWhenItReads: a sampler scheduled 25 ms late on
// saturated cores reads the CPU time of 125 ms after the first tick and
// of 75 ms after the second; both are 2 cores busy. Taking the ticks'
// own times as the spans (100 ms each) makes the second sample 1.5 cores
// busy, below 80%, and the limit would double.
func TestJobGateRunMeasuresWhenItReads(t *testing.T) {
	g := newJobGate(2, 32)
	ms := time.Millisecond
	c := &fakeClock{cpu: []time.Duration{0, 250 * ms, 400 * ms}, wall: []time.Duration{0, 125 * ms, 200 * ms}}
	runGate(t, g, c, []time.Duration{100 * ms, 200 * ms})
	if c.i != 3 {
		t.Fatalf("%d CPU readings, want 3", c.i)
	}
	if g.current() != 2 {
		t.Errorf("limit %d after two samples of 2 cores busy, want 2", g.current())
	}
}

// TestJobGateRunClockFaults: CPU time going backwards is no sample (and
// not an idle one), and a CPU clock that fails opens the gate to every
// worker, at the start or later.
func TestJobGateRunClockFaults(t *testing.T) {
	ms := time.Millisecond
	g := newJobGate(2, 32)
	c := &fakeClock{cpu: []time.Duration{500 * ms, 400 * ms, 600 * ms}, wall: []time.Duration{0, 100 * ms, 200 * ms}}
	runGate(t, g, c, []time.Duration{100 * ms, 200 * ms})
	if g.current() != 2 {
		t.Errorf("backwards CPU time: limit %d, want 2", g.current())
	}
	fail := errors.New("getrusage: EFAULT")
	for _, at := range []int{0, 1, 2} {
		g := newJobGate(2, 32)
		c := &fakeClock{cpu: []time.Duration{0, 200 * ms, 400 * ms, 600 * ms}, err: make([]error, 4), wall: []time.Duration{0, 100 * ms, 200 * ms, 300 * ms}}
		c.err[at] = fail
		runGate(t, g, c, []time.Duration{100 * ms, 200 * ms, 300 * ms})
		if g.current() != 32 {
			t.Errorf("CPU clock failing at reading %d: limit %d, want all 32", at, g.current())
		}
		if c.i != at+1 {
			t.Errorf("CPU clock failing at reading %d: read %d times after, want run to stop", at, c.i-at-1)
		}
	}
	if _, err := processCPU(); err != nil {
		t.Errorf("processCPU: %v", err)
	}
}

// TestJobGateSampleStops: the sampler's stop returns only once its
// goroutine has ended.
func TestJobGateSampleStops(t *testing.T) {
	old := gateInterval
	gateInterval = time.Millisecond
	defer func() { gateInterval = old }()
	g := newJobGate(2, 32)
	stop := g.sample()
	time.Sleep(20 * time.Millisecond)
	stop()
	if gs := gateGoroutines(); len(gs) > 0 {
		t.Errorf("after stop: %v", gs)
	}
}

func TestBigFirstExtremes(t *testing.T) {
	// Sizes whose sum overflows 64 bits: the total saturates, so the
	// huge one alone is big and the others keep their order (a wrapped
	// total of 59 would make the 100-byte path big too, ahead of the
	// 10-byte one).
	size := []uint64{math.MaxUint64 - 50, 10, 100}
	ids := []graph.PathID{1, 2, 0}
	bigFirst(ids, size, 1, 1)
	if want := []graph.PathID{0, 1, 2}; !slices.Equal(ids, want) {
		t.Errorf("overflowing sizes: %v, want %v", ids, want)
	}
	// jobs*cores*4 overflowing an int (to 0 here) is no division by
	// zero: each job's share is 0 bytes, every path is big.
	ids = []graph.PathID{1, 2, 0}
	bigFirst(ids, []uint64{5, 6, 7}, 1<<61, 2)
	if want := []graph.PathID{2, 1, 0}; !slices.Equal(ids, want) {
		t.Errorf("huge jobs: %v, want %v", ids, want)
	}
	// Unknown sizes (0) are never big; equal sizes keep their order.
	ids = []graph.PathID{0, 1, 2, 3}
	bigFirst(ids, []uint64{0, 0, 0, 0}, 1, 1)
	if want := []graph.PathID{0, 1, 2, 3}; !slices.Equal(ids, want) {
		t.Errorf("unknown sizes: %v", ids)
	}
	ids = []graph.PathID{3, 0, 2, 1}
	bigFirst(ids, []uint64{7, 7, 0, 7}, 1, 1)
	if want := []graph.PathID{3, 0, 1, 2}; !slices.Equal(ids, want) {
		t.Errorf("equal sizes: %v, want %v", ids, want)
	}
	bigFirst(nil, nil, 4, 2)
}
