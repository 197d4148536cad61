package verify

import (
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// jobGate decides how many of a pool's workers may take work: the first
// limit of them, limit moving between cores and max by how busy the
// process keeps the cores.
//
// Why: hashing from the page cache is CPU work, and more hashers than
// cores only share the cores out, so a big path hashed beside thirty
// others crawls and then finishes alone while the other cores idle (on a
// 2-core machine, a store of real binaries took 2.8-3.2 s with 32 workers
// and 2.4-2.5 s with 2-4). Hashing from a cold disk waits instead, and
// there a deep queue of reads is what makes it fast. Which one a run is
// (often both: part of a store cached, part not) shows in the process's
// CPU time: cores idle while work is left means workers are waiting, so
// more may run; cores saturated by more workers than cores means fewer
// would do as well.
//
// Concurrency: enter, stop and adjust may be called from any goroutine.
// After stop, enter returns false at once and for ever, so workers parked
// in it leave; stop is idempotent.
type jobGate struct {
	mu         sync.Mutex
	cond       *sync.Cond
	limit      int
	cores, max int
	saturated  int // consecutive samples with the cores saturated
	stopped    bool
}

// newJobGate returns a gate letting cores workers (at least 1, at most
// max) take work at first.
func newJobGate(cores, most int) *jobGate {
	cores = min(max(1, cores), most)
	g := &jobGate{limit: cores, cores: cores, max: most}
	g.cond = sync.NewCond(&g.mu)
	return g
}

// enter waits until worker i (0-based) may take work and returns true,
// or returns false once the gate is stopped.
func (g *jobGate) enter(i int) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	for i >= g.limit && !g.stopped {
		g.cond.Wait()
	}
	return !g.stopped
}

// stop releases every waiting worker for good.
func (g *jobGate) stop() {
	g.mu.Lock()
	g.stopped = true
	g.mu.Unlock()
	g.cond.Broadcast()
}

// current returns the limit now.
func (g *jobGate) current() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.limit
}

// adjust moves the limit for one sample: busy is how many cores the
// process kept busy on average since the previous sample. Below 80% of
// the cores the limit doubles (up to max): workers are waiting, for the
// disk most likely. At 95% or more for two samples in a row with more
// workers than cores, it halves (down to cores). In between it stays, so
// it does not swing with noise.
func (g *jobGate) adjust(busy float64) {
	g.mu.Lock()
	old := g.limit
	switch c := float64(g.cores); {
	case busy < 0.8*c:
		g.saturated = 0
		g.limit = min(g.max, 2*g.limit)
	case busy >= 0.95*c:
		g.saturated++
		if g.saturated >= 2 && g.limit > g.cores {
			g.limit = max(g.cores, g.limit/2)
			g.saturated = 0
		}
	default:
		g.saturated = 0
	}
	raised := g.limit > old
	g.mu.Unlock()
	if raised {
		g.cond.Broadcast()
	}
}

// gateInterval is how often the gate samples the process's CPU time.
const gateInterval = 100 * time.Millisecond

// run samples the process's CPU time every gateInterval and adjusts the
// limit until done is closed.
func (g *jobGate) run(done <-chan struct{}) {
	t := time.NewTicker(gateInterval)
	defer t.Stop()
	lastCPU, lastWall := processCPU(), time.Now()
	for {
		select {
		case <-done:
			return
		case now := <-t.C:
			cpu := processCPU()
			if wall := now.Sub(lastWall); wall > 0 && cpu >= lastCPU {
				g.adjust(float64(cpu-lastCPU) / float64(wall))
			}
			lastCPU, lastWall = cpu, now
		}
	}
}

// processCPU returns the user and system CPU time the process has used.
func processCPU() time.Duration {
	var ru unix.Rusage
	if unix.Getrusage(unix.RUSAGE_SELF, &ru) != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
