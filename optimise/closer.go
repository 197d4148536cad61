package optimise

import (
	"sync"

	"golang.org/x/sys/unix"
)

// Replacing a duplicate by a link leaves its old inode with no name; it
// is freed when processRegular's descriptor, its last reference, is
// closed. Freeing is the slow part of a first run: ext4 returns the
// blocks and, on a file system mounted with -o discard, waits for the
// device to discard them (63k-path store: a third of the workers' time
// was that wait). The frees are independent, so a pool of closers lets
// many waits overlap while the hashers go on with the next files.
const (
	closers     = 16 // concurrent closes (each blocks one OS thread while it waits)
	closeQueued = 64 // descriptors waiting for a closer; a full queue makes hashers wait
)

// closePool closes descriptors in the background. At most
// closers+closeQueued descriptors are held at once.
type closePool struct {
	q  chan int
	wg sync.WaitGroup
}

func newClosePool() *closePool {
	p := &closePool{q: make(chan int, closeQueued)}
	for range closers {
		p.wg.Add(1)
		go func() {
			defer p.wg.Done()
			for fd := range p.q {
				unix.Close(fd)
			}
		}()
	}
	return p
}

// wait closes every descriptor handed over and stops the closers. It is
// called once, after the last closeLater.
func (p *closePool) wait() {
	close(p.q)
	p.wg.Wait()
}

// closeLater closes fd in the background (see closePool), or at once when
// the run has no pool.
func (r *run) closeLater(fd int) {
	if r.closer == nil {
		unix.Close(fd)
		return
	}
	r.closer.q <- fd
}
