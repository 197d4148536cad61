// Command linkfloor does the least file-system work a first optimise of
// a store must do, and times it: the floor for `storekeeper optimise`
// (issue #4) on this machine, below which no implementation of Nix's
// .links protocol can go, however it hashes.
//
//	go run ./bench/linkfloor [-j N] [-c N] [-uring=false] STOREDIR
//
// It changes STOREDIR as an optimise does: run it on a copy. First,
// untimed, it lists every regular file and symlink under STOREDIR's
// entries (not .links, not temporary links, not writable files) and
// hashes each as Nix names .links entries (SHA-256 of the file's NAR).
// Then, timed, with N workers (default 2): one link(2) into .links for
// each distinct content, and for every further copy a link(2) from the
// entry to a temporary name in STOREDIR and a rename(2) of it over the
// copy, which frees the copy's inode. That is exactly the work the
// protocol needs and no more: no stat, no open, no directory listing,
// no temporary root, no reading (the hashing pass left the files in the
// page cache, so the linking pays for no reads either). It prints the
// counts (to compare with `storekeeper optimise --dry-run`), the wall
// time and the CPU time of the linking.
//
// Why: on the 2-core development VM the first optimise is bound by the
// kernel's link, rename and free work, not by reading or hashing
// (bench/readfloor); this says how far below a whole run that work is.
package main

import (
	"flag"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"storekeeper/internal/sys"
	"storekeeper/nix/nar"
)

func main() {
	jobs := flag.Int("j", 2, "parallel linkers")
	closers := flag.Int("c", 16, "parallel closers of replaced copies (0: rename frees them)")
	useRing := flag.Bool("uring", true, "close replaced copies in io_uring's kernel threads, as optimise does (else in -c goroutines)")
	flag.Parse()
	if flag.NArg() != 1 {
		fmt.Fprintln(os.Stderr, "usage: linkfloor [-j N] [-c N] [-uring=false] STOREDIR")
		os.Exit(2)
	}
	dir := flag.Arg(0)
	start := time.Now()
	p, err := plan(dir)
	if err != nil {
		fmt.Fprintln(os.Stderr, "linkfloor:", err)
		os.Exit(1)
	}
	fmt.Printf("planned %d files: %d contents, %d copies (%d bytes) in %.2f s\n",
		len(p.files), p.entries(), p.copies(), p.copyBytes, time.Since(start).Seconds())
	s, err := link(dir, p, *jobs, *closers, *useRing)
	if err != nil {
		fmt.Fprintln(os.Stderr, "linkfloor:", err)
		os.Exit(1)
	}
	fmt.Printf("linked: %d entries, %d copies replaced, %d failures in %.2f s wall, %.2f s user, %.2f s sys\n",
		s.entries, s.replaced, s.failed, s.wall.Seconds(), s.user.Seconds(), s.sys.Seconds())
}

// file is one file to link: its name relative to the store directory,
// its .links name, and whether it is the copy that becomes the entry.
type file struct {
	rel, entry string
	first      bool
}

type linkPlan struct {
	files     []file
	copyBytes int64
}

func (p *linkPlan) entries() (n int) {
	for _, f := range p.files {
		if f.first {
			n++
		}
	}
	return n
}

func (p *linkPlan) copies() int { return len(p.files) - p.entries() }

// plan lists and hashes the files under the entries of dir, in walk
// order; the first file of each content is the one that becomes its
// .links entry.
func plan(dir string) (*linkPlan, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	p := &linkPlan{}
	seen := map[string]bool{}
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), ".") {
			continue // .links, temporary links, locks
		}
		err := filepath.WalkDir(filepath.Join(dir, e.Name()), func(path string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			if !d.Type().IsRegular() && d.Type() != fs.ModeSymlink {
				return nil
			}
			info, err := d.Info()
			if err != nil {
				return err
			}
			if info.Mode().IsRegular() && info.Mode()&0o200 != 0 {
				return nil // writable: Nix leaves it alone
			}
			h, _, err := nar.HashPath(path)
			if err != nil {
				return err
			}
			name := h.Base32()
			f := file{rel: path[len(dir)+1:], entry: name, first: !seen[name]}
			seen[name] = true
			if !f.first {
				p.copyBytes += info.Size()
			}
			p.files = append(p.files, f)
			return nil
		})
		if err != nil {
			return nil, err
		}
	}
	return p, nil
}

type stats struct {
	entries, replaced, failed int64
	wall, user, sys           time.Duration
}

// link carries out p with jobs workers: first every entry, then every
// copy, each worker taking the next file in order. With closers > 0 a
// copy is held open (O_PATH) across its rename and closed afterwards, so
// that its inode is freed outside rename(2) and its locks, in parallel,
// as storekeeper optimise does: with useRing in io_uring's kernel
// threads (store.AsyncCloser, where the kernel has it), else by that
// many closer goroutines; with 0 the rename frees it (as nix-store
// --optimise does). Every descriptor is closed when link returns.
func link(dir string, p *linkPlan, jobs, closers int, useRing bool) (stats, error) {
	var s stats
	storeFd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return s, err
	}
	defer unix.Close(storeFd)
	if err := unix.Mkdirat(storeFd, ".links", 0o755); err != nil && err != unix.EEXIST {
		return s, err
	}
	linksFd, err := unix.Openat(storeFd, ".links", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return s, err
	}
	defer unix.Close(linksFd)

	var ru0, ru1 unix.Rusage
	unix.Getrusage(unix.RUSAGE_SELF, &ru0)
	start := time.Now()
	var entries, replaced, failed atomic.Int64
	var ring *sys.AsyncCloser
	if useRing && closers > 0 {
		ring, _ = sys.NewAsyncCloser()
	}
	toClose := make(chan int, 1024)
	var closeWG sync.WaitGroup
	goClosers := closers
	if ring != nil {
		goClosers = 0 // the ring closes them all
	}
	for range goClosers {
		closeWG.Add(1)
		go func() {
			defer closeWG.Done()
			for fd := range toClose {
				unix.Close(fd)
			}
		}()
	}
	pass := func(first bool) {
		var next atomic.Int64
		var wg sync.WaitGroup
		for w := range max(1, jobs) {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for {
					i := next.Add(1) - 1
					if i >= int64(len(p.files)) {
						return
					}
					f := p.files[i]
					if f.first != first {
						continue
					}
					if first {
						if unix.Linkat(storeFd, f.rel, linksFd, f.entry, 0) != nil {
							failed.Add(1)
						} else {
							entries.Add(1)
						}
						continue
					}
					tmp := fmt.Sprintf(".tmp-link-%d-%d-%d", os.Getpid(), w, i)
					if unix.Linkat(linksFd, f.entry, storeFd, tmp, 0) != nil {
						failed.Add(1)
						continue
					}
					pin := -1
					if closers > 0 {
						pin, _ = unix.Openat(storeFd, f.rel, unix.O_PATH|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
					}
					err := unix.Renameat(storeFd, tmp, storeFd, f.rel)
					if pin >= 0 {
						if ring != nil {
							ring.Close(pin)
						} else {
							toClose <- pin
						}
					}
					if err != nil {
						unix.Unlinkat(storeFd, tmp, 0)
						failed.Add(1)
						continue
					}
					replaced.Add(1)
				}
			}()
		}
		wg.Wait()
	}
	pass(true)
	pass(false)
	close(toClose)
	closeWG.Wait()
	if ring != nil {
		ring.Wait()
	}
	s.wall = time.Since(start)
	unix.Getrusage(unix.RUSAGE_SELF, &ru1)
	s.user = time.Duration(ru1.Utime.Nano() - ru0.Utime.Nano())
	s.sys = time.Duration(ru1.Stime.Nano() - ru0.Stime.Nano())
	s.entries, s.replaced, s.failed = entries.Load(), replaced.Load(), failed.Load()
	return s, nil
}
