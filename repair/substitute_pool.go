package repair

import (
	"sync"
	"time"
)

// slowAnswer is the smoothed wait for a source's answer above which
// another worker is started: a far cache (tens of milliseconds a round
// trip) is latency-bound, and requests in flight hide the latency; a near
// one answers in a millisecond or two, faster than more connections
// help, and a small server's listen queue overflows when many arrive at
// once (the kernel then drops the SYNs, and each costs a one-second
// retransmission).
const slowAnswer = 20 * time.Millisecond

// startWorkers is how many workers an adaptive pool starts with.
const startWorkers = 4

// adaptivePool runs work on items received from in with between lo and
// hi goroutines: it starts lo, and each call of
// work reports how long it waited for the source; while the smoothed
// wait stays above slowAnswer it adds two workers (so that the number in
// flight doubles within a round trip), up to hi. wait returns
// once in is closed and drained and every worker is done.
type adaptivePool[T any] struct {
	hi   int
	work func(T) time.Duration
	in   <-chan T

	mu      sync.Mutex
	workers int
	ewma    time.Duration
	wg      sync.WaitGroup
}

func runAdaptive[T any](in <-chan T, lo, hi int, work func(T) time.Duration) *adaptivePool[T] {
	lo = max(1, min(lo, hi))
	p := &adaptivePool[T]{hi: max(lo, hi), work: work, in: in}
	for i := 0; i < lo; i++ {
		p.start()
	}
	return p
}

func (p *adaptivePool[T]) start() {
	p.workers++
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		for it := range p.in {
			waited := p.work(it)
			p.mu.Lock()
			if p.ewma == 0 {
				p.ewma = waited
			} else {
				p.ewma = (3*p.ewma + waited) / 4
			}
			// Two more each time: in flight doubles within a round trip.
			for k := 0; k < 2 && p.ewma > slowAnswer && p.workers < p.hi; k++ {
				p.start()
			}
			p.mu.Unlock()
		}
	}()
}

// size is how many workers have been started.
func (p *adaptivePool[T]) size() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.workers
}

func (p *adaptivePool[T]) wait() { p.wg.Wait() }
