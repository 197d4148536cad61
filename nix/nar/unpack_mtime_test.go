package nar

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

// TestUnpackMtime: with UnpackOptions.Mtime every node unpacked (files,
// directories, symlinks, the top) has that mtime, and the tree still
// dumps to the same NAR; without it the times are the creation's.
func TestUnpackMtime(t *testing.T) {
	src := filepath.Join(t.TempDir(), "src")
	narTestDir(t, filepath.Join(src, "bin"))
	narTestFile(t, filepath.Join(src, "bin", "tool"), []byte("#!/bin/sh\n"), 0o555)
	narTestFile(t, filepath.Join(src, "data"), narDetBytes(100000, 3), 0o444)
	narTestLink(t, "bin/tool", filepath.Join(src, "link"))
	var b bytes.Buffer
	if _, err := DumpPath(&b, src); err != nil {
		t.Fatal(err)
	}
	for _, mtime := range []int64{0, 1} {
		dir := t.TempDir()
		fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY, 0)
		if err != nil {
			t.Fatal(err)
		}
		_, _, err = Unpack(bytes.NewReader(b.Bytes()), fd, "out", UnpackOptions{Mtime: mtime})
		unix.Close(fd)
		if err != nil {
			t.Fatal(err)
		}
		nodes := 0
		filepath.Walk(filepath.Join(dir, "out"), func(p string, fi os.FileInfo, err error) error {
			if err != nil {
				t.Fatal(err)
			}
			nodes++
			var st unix.Stat_t
			if err := unix.Lstat(p, &st); err != nil {
				t.Fatal(err)
			}
			if got := st.Mtim.Sec == 1 && st.Mtim.Nsec == 0; got != (mtime == 1) {
				t.Errorf("Mtime %d: %s has mtime %d.%09d", mtime, p, st.Mtim.Sec, st.Mtim.Nsec)
			}
			return nil
		})
		if nodes != 5 {
			t.Fatalf("%d nodes", nodes)
		}
		var again bytes.Buffer
		if _, err := DumpPath(&again, filepath.Join(dir, "out")); err != nil || !bytes.Equal(again.Bytes(), b.Bytes()) {
			t.Fatalf("the unpacked tree dumps differently: %v", err)
		}
	}
}
