// Command readfloor reads every regular file under DIR once, with N
// readers (default 2) that each reuse one buffer, and prints the bytes
// and the time taken: the cost of just reading a store's contents, the
// floor for `storekeeper verify --check-contents` (bench/versus.sh).
//
// It exists because the floor, `find -type f | xargs -P2 cat`,
// measures cat more than the disk where unmapping cat's per-file buffer
// is expensive (a TLB shootdown across the CPUs of a virtual machine).
//
//	go run ./bench/readfloor [-j N] DIR
package main

import (
	"flag"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

func main() {
	jobs := flag.Int("j", 2, "parallel readers")
	flag.Parse()
	if flag.NArg() != 1 {
		fmt.Fprintln(os.Stderr, "usage: readfloor [-j N] DIR")
		os.Exit(2)
	}
	start := time.Now()
	t := readTree(flag.Arg(0), *jobs)
	fmt.Printf("%d files, %d bytes in %.2f s (%d unreadable)\n", t.files, t.bytes, time.Since(start).Seconds(), t.failed)
}

type totals struct{ files, bytes, failed int64 }

// readTree reads every regular file under root once, with jobs readers;
// failed counts the files and directories that could not be read.
func readTree(root string, jobs int) totals {
	paths := make(chan string, 4096)
	var files, bytes, failed atomic.Int64
	var wg sync.WaitGroup
	for range max(1, jobs) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, 1<<20)
			for p := range paths {
				n, err := readAll(p, buf)
				bytes.Add(n)
				files.Add(1)
				if err != nil {
					failed.Add(1)
				}
			}
		}()
	}
	filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			failed.Add(1)
		} else if d.Type().IsRegular() {
			paths <- p
		}
		return nil
	})
	close(paths)
	wg.Wait()
	return totals{files.Load(), bytes.Load(), failed.Load()}
}

// readAll reads the file at p to its end through buf.
func readAll(p string, buf []byte) (int64, error) {
	fd, err := unix.Open(p, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return 0, err
	}
	defer unix.Close(fd)
	var total int64
	for {
		n, err := unix.Read(fd, buf)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return total, err
		}
		if n == 0 {
			return total, nil
		}
		total += int64(n)
	}
}
