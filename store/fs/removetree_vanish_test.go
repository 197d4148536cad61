package fs

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

// TestRemoveTreeToleratesVanishing: entries deleted by someone else while
// RemoveTree works (another collector deleting the same gc trash) are not
// errors, and their bytes are not counted: only what RemoveTree unlinked
// itself.
func TestRemoveTreeToleratesVanishing(t *testing.T) {
	dir := t.TempDir()
	top := filepath.Join(dir, "top")
	data := bytes.Repeat([]byte("x"), 3*4096+1)
	var mine uint64 // blocks of the files RemoveTree itself deletes
	for _, f := range []string{"a", "b", "sub/c", "sub/d", "gone/e", "gone/deeper/f"} {
		p := filepath.Join(top, f)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, data, 0o444); err != nil {
			t.Fatal(err)
		}
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			t.Fatal(err)
		}
		if f == "a" || f == "sub/c" || f == "sub/d" {
			mine += uint64(st.Blocks) * 512
		}
	}
	os.Symlink("a", filepath.Join(top, "link"))
	vanished := map[string]bool{}
	testHookRemoving = func(p string) {
		switch p {
		case filepath.Join(top, "b"), filepath.Join(top, "link"), filepath.Join(top, "gone"):
			// Someone else deletes it between our stat (or open) and our
			// unlink (or listing).
			if err := os.RemoveAll(p); err != nil {
				t.Error(err)
			}
			vanished[p] = true
		}
	}
	defer func() { testHookRemoving = nil }()
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	n, err := RemoveTree(fd, "top", top)
	if err != nil {
		t.Fatalf("RemoveTree: %v", err)
	}
	if len(vanished) != 3 {
		t.Fatalf("the hook ran for %d of the 3 entries", len(vanished))
	}
	if n != mine {
		t.Fatalf("RemoveTree reports %d bytes freed; it deleted %d itself", n, mine)
	}
	if _, err := os.Lstat(top); !os.IsNotExist(err) {
		t.Fatalf("the tree is still there: %v", err)
	}
}
