package roots_test

import (
	"context"
	"io/fs"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"

	"storekeeper/roots"
	"storekeeper/store/storetest"
)

// TestWhyDeadFreedBytes: a dead path that nothing keeps frees on disk
// the blocks of its files (measured here with lstat); after one of its
// files is hard-linked from a live path, that file frees nothing and the
// bytes drop by exactly its blocks; a file whose other link is in .links
// is still freed (gc deletes the .links entry too). NarBytes does not
// change.
func TestWhyDeadFreedBytes(t *testing.T) {
	b, s, es := whyEvery(t, storetest.Spec{Paths: 40, Seed: 8, MaxDeps: 3, Files: 3, FileSize: 9000, Roots: 3, Generations: 1})
	var dead, live string
	var files []string
	for _, e := range es {
		if e.Alive {
			if fi, err := os.Lstat(b.Layout.RealPath(e.Path)); err == nil && fi.IsDir() {
				live = e.Path
			}
			continue
		}
		if dead != "" || e.DeadWith != 0 {
			continue
		}
		var fs2 []string
		filepath.WalkDir(b.Layout.RealPath(e.Path), func(p string, d fs.DirEntry, err error) error {
			if err == nil && d.Type().IsRegular() {
				fs2 = append(fs2, p)
			}
			return err
		})
		if len(fs2) >= 2 {
			dead, files = e.Path, fs2
		}
	}
	if dead == "" || live == "" {
		t.Fatal("the fixture has no dead path with two files that nothing keeps, or no live directory")
	}
	blocks := func(p string) uint64 {
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			t.Fatal(err)
		}
		return uint64(st.Blocks) * 512
	}
	var want uint64
	filepath.WalkDir(b.Layout.RealPath(dead), func(p string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			want += blocks(p)
		}
		return err
	})
	why := func() *roots.Explanation {
		t.Helper()
		e, err := roots.Why(context.Background(), s, dead, roots.WhyOptions{Roots: roots.Options{NoRuntime: true, NoTemp: true}})
		if err != nil {
			t.Fatal(err)
		}
		if e.Alive {
			t.Fatalf("%s alive", dead)
		}
		return e
	}
	before := why()
	if before.FreedBytes != want || want == 0 || before.NarBytes == 0 {
		t.Fatalf("%s frees %d bytes (NAR %d), the files take %d", dead, before.FreedBytes, before.NarBytes, want)
	}
	shared, linked := files[0], files[1]
	liveDir := b.Layout.RealPath(live)
	if err := os.Chmod(liveDir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Link(shared, filepath.Join(liveDir, "shared-with-dead")); err != nil {
		t.Fatal(err)
	}
	links := b.Layout.LinksDir()
	if err := os.MkdirAll(links, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Link(linked, filepath.Join(links, "0000000000000000000000000000000000000000000000000000")); err != nil {
		t.Fatal(err)
	}
	after := why()
	if after.FreedBytes != want-blocks(shared) || after.NarBytes != before.NarBytes {
		t.Errorf("after a hard link from live %s: frees %d (NAR %d), want %d (%d minus the shared file's %d)",
			live, after.FreedBytes, after.NarBytes, want-blocks(shared), want, blocks(shared))
	}
}
