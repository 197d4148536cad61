package verify

import (
	"fmt"
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
// would do as well. The process's CPU time cannot tell a core idle
// because workers wait from one taken by another process, so on a busy
// machine the limit rises (towards max: the default before the gate).
//
// Concurrency: enter, stop, open and adjust may be called from any
// goroutine. After stop, enter returns false at once and for ever, so
// workers parked in it leave; stop is idempotent. A worker i < limit
// never waits in enter, and limit never drops below cores (at least 1),
// so worker 0 never waits: a pool whose workers call stop when they
// leave cannot be left with all of them parked.
type jobGate struct {
	mu         sync.Mutex
	cond       *sync.Cond
	limit      int
	cores, max int
	saturated  int  // consecutive samples with the cores saturated
	need       int  // saturated samples in a row that halve the limit
	halved     bool // the previous sample halved the limit
	stopped    bool
}

// Saturated samples in a row that halve the limit: at first, and at most
// after halvings that left the cores idle.
const (
	gateNeed    = 2
	gateMaxNeed = 16
)

// newJobGate returns a gate letting cores workers (at least 1, at most
// max) take work at first.
func newJobGate(cores, most int) *jobGate {
	most = max(1, most)
	cores = min(max(1, cores), most)
	g := &jobGate{limit: cores, cores: cores, max: most, need: gateNeed}
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

// open lets every worker work from now on: the gate's answer when it
// cannot measure.
func (g *jobGate) open() {
	g.mu.Lock()
	g.limit = g.max
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
// disk most likely. At 95% or more for need samples in a row with more
// workers than cores, it halves (down to cores). In between it stays, so
// it does not swing with noise. need is 2; a halving followed by a
// sample below 80% was one too many, and each such one doubles need (up
// to 16 samples), so that a run the cores keep busy at 2L workers but
// not at L does not swing between the two every third sample: it spends
// fewer and fewer samples at L, and the limit still comes down, more
// slowly, when the cores stay saturated. A halving followed by any other
// sample sets need back to 2.
func (g *jobGate) adjust(busy float64) {
	g.mu.Lock()
	old := g.limit
	halved := g.halved
	g.halved = false
	switch c := float64(g.cores); {
	case busy < 0.8*c:
		g.saturated = 0
		if halved {
			g.need = min(gateMaxNeed, 2*g.need)
		}
		g.limit = min(g.max, 2*g.limit)
	case busy >= 0.95*c:
		if halved {
			g.need = gateNeed
		}
		g.saturated++
		if g.saturated >= g.need && g.limit > g.cores {
			g.limit = max(g.cores, g.limit/2)
			g.saturated = 0
			g.halved = true
		}
	default:
		if halved {
			g.need = gateNeed
		}
		g.saturated = 0
	}
	raised := g.limit > old
	g.mu.Unlock()
	if raised {
		g.cond.Broadcast()
	}
}

// gateInterval is how often the gate samples the process's CPU time (a
// variable for the tests).
var gateInterval = 100 * time.Millisecond

// sample starts sampling the process's CPU time every gateInterval and
// adjusting the limit. The function it returns stops the sampler and
// returns once its goroutine has ended; call it once.
func (g *jobGate) sample() (stop func()) {
	done, ended := make(chan struct{}), make(chan struct{})
	t := time.NewTicker(gateInterval)
	go func() {
		defer close(ended)
		defer t.Stop()
		g.run(done, t.C, processCPU, time.Now)
	}()
	return func() {
		close(done)
		<-ended
	}
}

// run adjusts the limit at each tick by the CPU time cpu and the wall
// time now say passed since the previous one, until done is closed. Both
// are read when the tick is taken, not at the time the tick carries: a
// sampler scheduled late on busy cores would otherwise divide CPU time
// over one span by the length of another. A sample where cpu went
// backwards is skipped. When cpu fails the gate opens (every worker
// works, as without it) and run returns.
func (g *jobGate) run(done <-chan struct{}, tick <-chan time.Time, cpu func() (time.Duration, error), now func() time.Time) {
	lastCPU, err := cpu()
	lastWall := now()
	if err != nil {
		g.open()
		return
	}
	for {
		select {
		case <-done:
			return
		case <-tick:
		}
		c, err := cpu()
		w := now()
		if err != nil {
			g.open()
			return
		}
		if wall := w.Sub(lastWall); wall > 0 && c >= lastCPU {
			g.adjust(float64(c-lastCPU) / float64(wall))
		}
		lastCPU, lastWall = c, w
	}
}

// processCPU returns the user and system CPU time the process has used.
func processCPU() (time.Duration, error) {
	var ru unix.Rusage
	if err := unix.Getrusage(unix.RUSAGE_SELF, &ru); err != nil {
		return 0, fmt.Errorf("getrusage: %w", err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()), nil
}
