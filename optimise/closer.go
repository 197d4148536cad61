package optimise

import (
	"sync"

	"golang.org/x/sys/unix"

	"storekeeper/internal/sys"
)

// Replacing a duplicate by a link leaves its old inode with no name; it
// is freed when the descriptor held across the rename, its last
// reference, is closed. Freeing is the slow part of a first run: ext4
// returns the blocks and, on a file system mounted with -o discard,
// waits for the device to discard them (63k-path store: a third of the
// workers' time was that wait). The frees are independent, so many
// waits can overlap while the hashers go on with the next files.
//
// Where io_uring can close (store.AsyncCloser), the closes run in kernel
// threads: a goroutine blocked in close(2) keeps its Go P until the
// scheduler notices, and with 16 of them on 2 cores a core sat idle a
// tenth of the run. Otherwise a pool of closer goroutines does it.
const (
	closers     = 16 // concurrent closes (each blocks one OS thread while it waits)
	closeQueued = 64 // descriptors waiting for a closer; a full queue makes hashers wait
)

// closePool closes descriptors in the background. At most
// closers+closeQueued descriptors are held at once by the goroutine
// pool; the io_uring closer bounds its own.
type closePool struct {
	async *sys.AsyncCloser
	q     chan int
	wg    sync.WaitGroup
}

func newClosePool() *closePool {
	if a, err := sys.NewAsyncCloser(); err == nil {
		return &closePool{async: a}
	}
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
	if p.async != nil {
		p.async.Wait()
		return
	}
	close(p.q)
	p.wg.Wait()
}

// closeLater closes fd in the background (see closePool), or at once when
// the run has no pool.
func (r *run) closeLater(fd int) {
	switch {
	case r.closer == nil:
		unix.Close(fd)
	case r.closer.async != nil:
		r.closer.async.Close(fd)
	default:
		r.closer.q <- fd
	}
}
