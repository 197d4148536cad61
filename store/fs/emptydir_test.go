package fs

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"

	"storekeeper/internal/sys"
)

// TestIsEmptyDir: "." and ".." only is empty; one entry, or thousands,
// is not; the descriptor is back at the start afterwards, so a listing
// from it sees every entry.
func TestIsEmptyDir(t *testing.T) {
	dir := t.TempDir()
	open := func() int {
		fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY, 0)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { unix.Close(fd) })
		return fd
	}
	if empty, err := IsEmptyDir(open()); err != nil || !empty {
		t.Fatalf("empty dir: %v %v", empty, err)
	}
	for i := range 3000 {
		if err := os.WriteFile(filepath.Join(dir, fmt.Sprintf("entry-with-a-long-name-%06d", i)), nil, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	fd := open()
	if empty, err := IsEmptyDir(fd); err != nil || empty {
		t.Fatalf("3000 entries: %v %v", empty, err)
	}
	if ents, err := sys.ReadDirents(fd, nil); err != nil || len(ents) != 3000 {
		t.Fatalf("after IsEmptyDir, a listing sees %d entries (%v), want 3000", len(ents), err)
	}
}
