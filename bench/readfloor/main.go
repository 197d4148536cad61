// Command readfloor reads every regular file under DIR once, with N
// readers (default 2) that each reuse one buffer, and prints the bytes
// and the time taken: the cost of just reading a store's contents, the
// floor for `storekeeper verify --check-contents` (bench/versus.sh).
//
// It exists because the floor, `find -type f | xargs -P2 cat`,
// measures cat more than the disk where unmapping cat's per-file buffer
// is expensive (a TLB shootdown across the CPUs of a virtual machine).
//
// With -floor it also measures this machine's SHA-256 and BLAKE3 rates
// on one core (1 MiB writes, as verify hashes) and prints the CPU floors
// of #27: the read time plus SHA-256 of every byte on N cores, and that
// plus BLAKE3 of every byte (a run that records manifests).
//
//	go run ./bench/readfloor [-j N] [-floor] DIR
package main

import (
	"crypto/sha256"
	"flag"
	"fmt"
	"hash"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/zeebo/blake3"
	"golang.org/x/sys/unix"
)

func main() {
	jobs := flag.Int("j", 2, "parallel readers")
	floor := flag.Bool("floor", false, "also measure hash rates and print the CPU floors")
	flag.Parse()
	if flag.NArg() != 1 {
		fmt.Fprintln(os.Stderr, "usage: readfloor [-j N] [-floor] DIR")
		os.Exit(2)
	}
	start := time.Now()
	t := readTree(flag.Arg(0), *jobs)
	read := time.Since(start).Seconds()
	if *floor {
		// A floor is the best the machine does: two more rounds.
		for range 2 {
			start = time.Now()
			readTree(flag.Arg(0), *jobs)
			read = min(read, time.Since(start).Seconds())
		}
	}
	fmt.Printf("%d files, %d bytes in %.2f s (%d unreadable)\n", t.files, t.bytes, read, t.failed) // with -floor the best of three reads
	if *floor {
		sha := hashRate(sha256.New())
		b3 := hashRate(blake3.New())
		cores := float64(max(1, *jobs))
		shaS := float64(t.bytes) / sha / cores
		b3S := float64(t.bytes) / b3 / cores
		fmt.Printf("sha256 %.0f MB/s, blake3 %.0f MB/s per core\n", sha/1e6, b3/1e6)
		fmt.Printf("floor: %.2f s (read %.2f + sha256 %.2f on %d cores); recording manifests %.2f s (+ blake3 %.2f)\n",
			read+shaS, read, shaS, int(cores), read+shaS+b3S, b3S)
	}
}

// hashRate returns h's speed in bytes a second on one core, over 1 MiB
// writes, the best of five 256 MiB rounds.
func hashRate(h hash.Hash) float64 {
	buf := make([]byte, 1<<20)
	for i := range buf {
		buf[i] = byte(i * 131)
	}
	best := 0.0
	for range 5 {
		h.Reset()
		start := time.Now()
		for range 256 {
			h.Write(buf)
		}
		h.Sum(nil)
		best = max(best, 256*float64(len(buf))/time.Since(start).Seconds())
	}
	return best
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
