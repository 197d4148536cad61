//go:build linux && amd64

package sys

import (
	"context"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"
)

const (
	iouSQEAsync              = 1 << 4 // IOSQE_ASYNC: run in a kernel worker thread, never inline
	iouRegisterIOWQMaxWorker = 19     // IORING_REGISTER_IOWQ_MAX_WORKERS (Linux 5.15)

	asyncCloseEntries = 256 // ring size and the most closes in flight
	asyncCloseBatch   = 32  // closes queued per io_uring_enter
	asyncCloseWorkers = 16  // kernel threads closing at once
)

// AsyncCloser closes file descriptors in the kernel's io_uring worker
// threads. It exists for descriptors whose close is slow because it is
// the last reference to an unlinked inode: the close frees the inode's
// blocks and, on a file system mounted with -o discard, waits for the
// device to discard them. A goroutine blocked in such a close keeps its
// Go P (processor) until the scheduler notices, so on a 2-core machine
// a pool of closing goroutines left a core idle a tenth of the time;
// here the wait happens in threads the Go scheduler does not run.
//
// Close and Wait may be called from any goroutine. Close returns when
// the close is queued in the kernel (or done, see Close); Wait returns
// when every queued close has finished.
type AsyncCloser struct {
	pmu     sync.Mutex
	pending []int // not yet handed to the kernel
	waited  bool  // Wait was called: close at once

	mu       sync.Mutex // the ring; taken after pmu, never before it
	r        *Ring
	inflight int
	broken   bool
}

// NewAsyncCloser returns an AsyncCloser, or ErrNoIOURing when the kernel
// cannot close through io_uring (before Linux 5.6, or io_uring disabled)
// or the environment sets STOREKEEPER_NO_IO_URING.
func NewAsyncCloser() (*AsyncCloser, error) {
	if os.Getenv("STOREKEEPER_NO_IO_URING") != "" {
		return nil, ErrNoIOURing
	}
	r, err := NewRing(asyncCloseEntries)
	if err != nil {
		return nil, err
	}
	// Probe: close a descriptor through the ring and wait for it.
	fd, err := unix.Open("/", unix.O_PATH|unix.O_CLOEXEC, 0)
	if err != nil {
		r.Close()
		return nil, fmt.Errorf("%w: %w", ErrNoIOURing, err)
	}
	res := []int32{-1}
	r.Push(SQE{Opcode: OpClose, FD: int32(fd), UserData: 0})
	if err := r.Submit(res); err != nil || res[0] != 0 {
		if err == nil {
			// Not understood: the descriptor is still ours.
			unix.Close(fd)
			err = unix.Errno(-res[0])
		}
		r.Close()
		return nil, fmt.Errorf("%w: close through the ring: %w", ErrNoIOURing, err)
	}
	// More kernel threads for the waits than the default (4 per CPU);
	// a kernel without the call keeps its default.
	limits := [2]uint32{asyncCloseWorkers, 0}
	unix.Syscall6(sysIOUringRegister, uintptr(r.fd), iouRegisterIOWQMaxWorker, uintptr(unsafe.Pointer(&limits[0])), 2, 0, 0)
	return &AsyncCloser{r: r}, nil
}

// Close queues the close of fd and returns without waiting for it.
// The descriptors are handed to the kernel asyncCloseBatch at a time
// (one io_uring_enter each; the rest wait for Wait); when
// asyncCloseEntries closes are already in flight, the caller that hands
// over a batch first waits for room. After Wait, or once the ring has
// failed, descriptors are closed at once. In the one case where the
// kernel's view of the queue is unknown (io_uring_enter failing with an
// unexpected error) the descriptors queued are left open, to be closed
// when the process exits, rather than risk closing one twice (its
// number may be reused).
func (c *AsyncCloser) Close(fd int) {
	c.pmu.Lock()
	if c.waited {
		c.pmu.Unlock()
		unix.Close(fd)
		return
	}
	c.pending = append(c.pending, fd)
	if len(c.pending) < asyncCloseBatch {
		c.pmu.Unlock()
		return
	}
	batch := c.pending
	c.pending = make([]int, 0, asyncCloseBatch)
	c.pmu.Unlock()
	c.mu.Lock()
	c.submit(batch)
	c.mu.Unlock()
}

// submit hands fds to the kernel; c.mu is held.
func (c *AsyncCloser) submit(fds []int) {
	if c.r == nil || c.broken {
		if !c.broken {
			for _, fd := range fds {
				unix.Close(fd)
			}
		}
		return
	}
	for c.inflight+len(fds) > asyncCloseEntries && !c.broken {
		c.enter(0, c.inflight+len(fds)-asyncCloseEntries)
	}
	if c.broken {
		return // see Close: some of them may be queued
	}
	for _, fd := range fds {
		c.r.Push(SQE{Opcode: OpClose, Flags: iouSQEAsync, FD: int32(fd)})
	}
	atomic.StoreUint32(c.r.sqTail, c.r.tail)
	c.r.queued = 0
	c.inflight += len(fds)
	c.enter(len(fds), 0)
}

// enter submits toSubmit queued closes and waits for at least wait
// completions, then counts every completion that has arrived. EAGAIN and
// EBUSY are retried after a growing pause while nothing completes, so
// they never spin; there is no context to check: closes in flight must
// be waited for.
func (c *AsyncCloser) enter(toSubmit, wait int) {
	var pause Backoff
	for {
		var flags uintptr
		if wait > 0 {
			flags = iouEnterGetevents
		}
		n, _, errno := unix.Syscall6(sysIOUringEnter, uintptr(c.r.fd), uintptr(toSubmit), uintptr(wait), flags, 0, 0)
		if errno == 0 {
			toSubmit -= int(n)
		} else if errno != unix.EINTR && errno != unix.EAGAIN && errno != unix.EBUSY {
			c.broken = true
		}
		head := atomic.LoadUint32(c.r.cqHead)
		tail := atomic.LoadUint32(c.r.cqTail)
		got := int(tail - head)
		c.inflight -= got
		wait -= got
		atomic.StoreUint32(c.r.cqHead, tail)
		if c.broken || (toSubmit <= 0 && wait <= 0) {
			return
		}
		if (errno == unix.EAGAIN || errno == unix.EBUSY) && got == 0 {
			pause.Wait(context.Background())
		}
	}
}

// Wait waits for every queued close and releases the ring; later Closes
// close at once. It is safe to call more than once.
func (c *AsyncCloser) Wait() {
	c.pmu.Lock()
	defer c.pmu.Unlock()
	c.mu.Lock()
	defer c.mu.Unlock()
	c.submit(c.pending)
	c.pending, c.waited = nil, true
	if c.r == nil {
		return
	}
	for c.inflight > 0 && !c.broken {
		c.enter(0, c.inflight)
	}
	// On a broken ring this drops what the kernel has not taken yet:
	// those descriptors stay open (see Close).
	c.r.Close()
	c.r = nil
}
