package main

import (
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

// TestLinkFloor: two store paths with the same file, a unique file, a
// symlink and a writable file: the copies end up as one .links entry,
// the writable file is left alone, and both passes' counts add up.
func TestLinkFloor(t *testing.T) {
	for _, closers := range []int{0, 4} {
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
		s, err := link(dir, p, 2, closers)
		must(err)
		if s.entries != 3 || s.replaced != 1 || s.failed != 0 {
			t.Fatalf("link (closers %d): %+v", closers, s)
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
