package fs

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

// TestTrashRuns: a damaged tree moved aside into a run (as repair does
// after a swap) keeps a unique name; another process's run that is still
// locked is not claimed, and once its lock is gone (its process died) it
// is claimed, emptied with the bytes of its files counted, and removed
// with the trash.
func TestTrashRuns(t *testing.T) {
	store := t.TempDir()
	tr := Trash{Path: filepath.Join(store, "trash")}
	mine, err := tr.NewRun()
	if err != nil {
		t.Fatal(err)
	}
	storeFd := openDir(t, store)
	for i := 0; i < 2; i++ {
		p := filepath.Join(store, "x-damaged")
		os.MkdirAll(filepath.Join(p, "bin"), 0o755)
		os.WriteFile(filepath.Join(p, "bin", "f"), make([]byte, 8192), 0o444)
		os.Chmod(p, 0o555)
		dst, err := MoveInto(storeFd, "x-damaged", mine.Fd)
		if err != nil {
			t.Fatal(err)
		}
		if (i == 0) != (dst == "x-damaged") {
			t.Fatalf("move %d named %q", i, dst)
		}
	}
	if _, err := MoveInto(storeFd, "x-damaged", mine.Fd); err != unix.ENOENT {
		t.Fatalf("moving a missing entry: %v, want ENOENT", err)
	}

	// Another process's run: locked, then abandoned.
	fd, err := tr.Open()
	if err != nil {
		t.Fatal(err)
	}
	runs, legacy, err := tr.ClaimAbandoned(fd)
	unix.Close(fd)
	if err != nil || len(runs) != 0 || len(legacy) != 0 {
		t.Fatalf("claimed %d runs and %v of a trash in use (%v)", len(runs), legacy, err)
	}
	// mine's lock is held by this process through mine.Fd; flock locks
	// belong to the open file, so a second open cannot take it. Release
	// it as a dying process would (without removing the directory).
	path := mine.Path
	mine.Close(false)
	fd, _ = tr.Open()
	runs, _, err = tr.ClaimAbandoned(fd)
	unix.Close(fd)
	if err != nil || len(runs) != 1 || runs[0].Path != path {
		t.Fatalf("claimed %d runs (%v), want %s", len(runs), err, path)
	}
	items, err := Entries(runs)
	if err != nil || len(items) != 2 {
		t.Fatalf("entries %v (%v), want 2", items, err)
	}
	done := 0
	n, freed, err := DeleteEntries(context.Background(), items, 3, func() { done++ })
	if err != nil || n != 2 || done != 2 || freed < 2*8192 {
		t.Fatalf("deleted %d (%d reported), freed %d: %v", n, done, freed, err)
	}
	runs[0].Close(true)
	if _, err := os.Lstat(tr.Path); !os.IsNotExist(err) {
		t.Fatalf("the empty trash is still there: %v", err)
	}
}

// TestTrashRefusesForeign: a trash that is a symlink, or another user's
// directory, is not opened; the error says to remove it.
func TestTrashRefusesForeign(t *testing.T) {
	store := t.TempDir()
	tr := Trash{Path: filepath.Join(store, "trash")}
	os.Mkdir(filepath.Join(store, "elsewhere"), 0o700)
	os.Symlink("elsewhere", tr.Path)
	if _, err := tr.NewRun(); err == nil {
		t.Fatal("a symlinked trash was used")
	}
	if ents, _ := os.ReadDir(filepath.Join(store, "elsewhere")); len(ents) != 0 {
		t.Fatal("a run was made through the symlink")
	}
	if os.Geteuid() == 0 {
		os.Remove(tr.Path)
		os.Mkdir(tr.Path, 0o755)
		os.Chown(tr.Path, 65534, 65534)
		if _, err := tr.Open(); err == nil {
			t.Fatal("another user's trash was opened")
		}
	}
}
