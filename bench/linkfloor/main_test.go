package main

import (
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

// TestLinkFloor: two store paths with the same file, a unique file, a
// symlink and a writable file: the copies end up as one .links entry,
// the writable file is left alone, both passes' counts add up, and no
// descriptor is left open, whichever way the copies are freed.
func TestLinkFloor(t *testing.T) {
	for _, c := range []struct {
		closers int
		ring    bool
	}{{0, false}, {4, false}, {4, true}} {
		closers := c.closers
		dir := t.TempDir()
		must := func(err error) {
			t.Helper()
			if err != nil {
				t.Fatal(err)
			}
		}
		for _, p := range []string{"aaa-one", "bbb-two/sub"} {
			must(os.MkdirAll(filepath.Join(dir, p), 0o755))
			must(os.WriteFile(filepath.Join(dir, p, "same"), []byte("same contents"), 0o444))
		}
		must(os.WriteFile(filepath.Join(dir, "aaa-one/unique"), []byte("only here"), 0o444))
		must(os.WriteFile(filepath.Join(dir, "aaa-one/writable"), []byte("same contents"), 0o644))
		must(os.Symlink("unique", filepath.Join(dir, "aaa-one/link")))
		p, err := plan(dir)
		must(err)
		if len(p.files) != 4 || p.entries() != 3 || p.copies() != 1 || p.copyBytes != 13 {
			t.Fatalf("plan: %d files, %d entries, %d copies, %d bytes; want 4, 3, 1, 13",
				len(p.files), p.entries(), p.copies(), p.copyBytes)
		}
		fds := openFds(t)
		s, err := link(dir, p, 2, closers, c.ring)
		must(err)
		if s.entries != 3 || s.replaced != 1 || s.failed != 0 {
			t.Fatalf("link (closers %d, ring %v): %+v", closers, c.ring, s)
		}
		if n := openFds(t); n != fds {
			t.Fatalf("link (closers %d, ring %v): %d descriptors open before, %d after", closers, c.ring, fds, n)
		}
		var a, b, w unix.Stat_t
		must(unix.Lstat(filepath.Join(dir, "aaa-one/same"), &a))
		must(unix.Lstat(filepath.Join(dir, "bbb-two/sub/same"), &b))
		must(unix.Lstat(filepath.Join(dir, "aaa-one/writable"), &w))
		if a.Ino != b.Ino || a.Nlink != 3 || w.Nlink != 1 {
			t.Fatalf("copies not linked to one entry: inodes %d/%d, links %d; writable has %d links", a.Ino, b.Ino, a.Nlink, w.Nlink)
		}
		ents, err := os.ReadDir(dir)
		must(err)
		if len(ents) != 3 { // .links, aaa-one, bbb-two: no temporary link left
			t.Fatalf("store directory has %d entries, want 3", len(ents))
		}
	}
}

// openFds counts the test process's open file descriptors.
func openFds(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Skipf("cannot count descriptors: %v", err)
	}
	return len(ents)
}
