package main

import (
	"os"
	"path/filepath"
	"testing"
)

func TestReadTree(t *testing.T) {
	root := t.TempDir()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.MkdirAll(filepath.Join(root, "a/b"), 0o755))
	must(os.WriteFile(filepath.Join(root, "top"), make([]byte, 3<<20), 0o444)) // several reads
	must(os.WriteFile(filepath.Join(root, "a/b/small"), []byte("hello"), 0o444))
	must(os.WriteFile(filepath.Join(root, "a/empty"), nil, 0o444))
	must(os.Symlink("top", filepath.Join(root, "a/link"))) // not a regular file: not read
	got := readTree(root, 2)
	want := totals{files: 3, bytes: 3<<20 + 5}
	if got != want {
		t.Fatalf("readTree = %+v, want %+v", got, want)
	}
	if got := readTree(filepath.Join(root, "missing"), 1); got.failed != 1 || got.files != 0 {
		t.Fatalf("readTree of a missing directory = %+v, want one failure", got)
	}
}
