//go:build linux && amd64

package sys

import (
	"errors"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"golang.org/x/sys/unix"
)

// TestAsyncCloser: descriptors handed over from several goroutines, more
// than the ring holds and not a whole number of batches, are all closed
// when Wait returns, the last reference to an unlinked file among them;
// after Wait, Close closes at once.
func TestAsyncCloser(t *testing.T) {
	c, err := NewAsyncCloser()
	if errors.Is(err, ErrNoIOURing) {
		t.Skip(err)
	}
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	gone := filepath.Join(dir, "unlinked")
	if err := os.WriteFile(gone, make([]byte, 1<<20), 0o444); err != nil {
		t.Fatal(err)
	}
	held, err := unix.Open(gone, unix.O_PATH|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(gone); err != nil {
		t.Fatal(err)
	}

	const workers, each = 4, 2*asyncCloseEntries/4 + 7 // 4*135 = 540 > 256, 540 % 32 != 0
	fds := make([][]int, workers)
	for w := range fds {
		for range each {
			fd, err := unix.Open(dir, unix.O_PATH|unix.O_CLOEXEC, 0)
			if err != nil {
				t.Fatal(err)
			}
			fds[w] = append(fds[w], fd)
		}
	}
	fds[0] = append(fds[0], held)
	var wg sync.WaitGroup
	for w := range fds {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for _, fd := range fds[w] {
				c.Close(fd)
			}
		}()
	}
	wg.Wait()
	c.Wait()
	open := 0
	for _, list := range fds {
		for _, fd := range list {
			if _, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0); err != unix.EBADF {
				open++
			}
		}
	}
	if open != 0 {
		t.Fatalf("%d of %d descriptors still open after Wait", open, workers*each+1)
	}
	c.Wait() // a second Wait is harmless

	fd, err := unix.Open(dir, unix.O_PATH|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	c.Close(fd)
	if _, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0); err != unix.EBADF {
		t.Fatalf("Close after Wait left descriptor %d open", fd)
	}
}

func TestAsyncCloserDisabled(t *testing.T) {
	t.Setenv("STOREKEEPER_NO_IO_URING", "1")
	if _, err := NewAsyncCloser(); !errors.Is(err, ErrNoIOURing) {
		t.Fatalf("NewAsyncCloser with STOREKEEPER_NO_IO_URING = %v, want ErrNoIOURing", err)
	}
}
