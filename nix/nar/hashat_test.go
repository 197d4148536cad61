//go:build linux && amd64

package nar

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

// TestHashFileBytes agrees with HashOpenFile, executable bit included.
func TestHashFileBytes(t *testing.T) {
	dir := t.TempDir()
	for _, mode := range []os.FileMode{0o444, 0o555} {
		p := filepath.Join(dir, fmt.Sprint(mode))
		data := []byte("contents of a small file\n")
		os.WriteFile(p, data, mode)
		fd, err := unix.Open(p, unix.O_RDONLY, 0)
		if err != nil {
			t.Fatal(err)
		}
		var st unix.Stat_t
		unix.Fstat(fd, &st)
		want, err := HashOpenFile(fd, &st, p)
		unix.Close(fd)
		if err != nil {
			t.Fatal(err)
		}
		got, err := HashFileBytes(data, &st)
		if err != nil || got != want {
			t.Errorf("mode %o: %v %s, want %s", mode, err, got.Base32(), want.Base32())
		}
		if _, err := HashFileBytes(data[1:], &st); !IsChanged(err) {
			t.Errorf("mode %o: size mismatch gave %v, want a changed error", mode, err)
		}
	}
}

// TestDumpPathAtFiles: the same NAR as DumpPathAt, every node visited in
// NAR order, and Listxattr sees each node's own attributes (a file's and
// a directory's through their descriptors, a symlink's through its name).
func TestDumpPathAtFiles(t *testing.T) {
	dir := t.TempDir()
	top := filepath.Join(dir, "tree")
	if err := os.MkdirAll(filepath.Join(top, "d"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(top, "d", "f"), []byte("contents"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("d/f", filepath.Join(top, "l")); err != nil {
		t.Fatal(err)
	}
	if err := unix.Setxattr(filepath.Join(top, "d", "f"), "user.test", []byte("1"), 0); err != nil {
		t.Skipf("no user xattrs here: %v", err)
	}
	if err := unix.Setxattr(filepath.Join(top, "d"), "user.dir", []byte("1"), 0); err != nil {
		t.Fatal(err)
	}
	dirfd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(dirfd)
	var plain, visited bytes.Buffer
	if _, _, err := DumpPathAt(&plain, dirfd, "tree", "tree"); err != nil {
		t.Fatal(err)
	}
	var seen []string
	_, _, err = DumpPathAtFiles(&visited, dirfd, "tree", "tree", func(n *Node) (io.Writer, error) {
		buf := make([]byte, 256)
		k, err := n.Listxattr(buf)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", n.Rel, err)
		}
		seen = append(seen, fmt.Sprintf("%s=%q", n.Rel, buf[:k]))
		return nil, nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(plain.Bytes(), visited.Bytes()) {
		t.Error("DumpPathAtFiles wrote another NAR than DumpPathAt")
	}
	want := fmt.Sprint([]string{`=""`, `d="user.dir\x00"`, `d/f="user.test\x00"`, `l=""`})
	if got := fmt.Sprint(seen); got != want {
		t.Errorf("visited %s, want %s", got, want)
	}
}
