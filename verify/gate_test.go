package verify

import (
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
