package sys

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// listDir lists dir with ReadDirentsMarked and counts the getdents64
// calls it made.
func listDir(t *testing.T, dir string, marked bool) ([]string, int) {
	t.Helper()
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	calls := 0
	getdents = func(fd int, b []byte) (int, error) { calls++; return unix.Getdents(fd, b) }
	defer func() { getdents = unix.Getdents }()
	ents, err := ReadDirentsMarked(fd, marked, nil)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name)
	}
	slices.Sort(names)
	return names, calls
}

// TestReadDirentsMarked: on a file system that marks the end of a listing
// (ext4) one getdents64 call reads a small directory; a directory larger
// than the buffer still comes out whole; elsewhere nothing changes.
func TestReadDirentsMarked(t *testing.T) {
	root := t.TempDir()
	fd, err := unix.Open(root, unix.O_RDONLY|unix.O_DIRECTORY, 0)
	if err != nil {
		t.Fatal(err)
	}
	var st unix.Stat_t
	unix.Fstat(fd, &st)
	marked := DirEndMarked(fd, st.Dev)
	unix.Close(fd)

	for _, n := range []int{0, 1, 7, 3000} {
		dir := filepath.Join(root, fmt.Sprint(n))
		os.Mkdir(dir, 0o755)
		var want []string
		for i := range n {
			// Long names: 3000 entries take several 64 KiB buffers.
			name := fmt.Sprintf("%05d-%s", i, strings.Repeat("x", 40))
			if err := os.WriteFile(filepath.Join(dir, name), nil, 0o644); err != nil {
				t.Fatal(err)
			}
			want = append(want, name)
		}
		slices.Sort(want)
		plain, plainCalls := listDir(t, dir, false)
		got, calls := listDir(t, dir, marked)
		if !slices.Equal(got, want) || !slices.Equal(plain, want) {
			t.Fatalf("%d entries: marked listing has %d, plain %d", n, len(got), len(plain))
		}
		if plainCalls < 2 {
			t.Errorf("%d entries: the plain listing made %d getdents64 calls, want the final empty one too", n, plainCalls)
		}
		if marked && n > 0 && n < 100 && calls != 1 {
			t.Errorf("%d entries on a file system that marks the end: %d getdents64 calls, want 1", n, calls)
		}
		if !marked && calls != plainCalls {
			t.Errorf("%d entries, end not marked: %d calls, want %d as without the shortcut", n, calls, plainCalls)
		}
	}
	t.Logf("end marked: %v", marked)
}
