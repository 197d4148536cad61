//go:build linux && amd64

package sys

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

// TestSmallFileReader: files read whole get their contents (across
// several submissions, the earlier ones copied out of the arena); a
// vanished file, a symlink, a directory, a file whose size is not the
// one given and a file bigger than SmallFileMax get none.
func TestSmallFileReader(t *testing.T) {
	sr, err := NewSmallFileReader()
	if errors.Is(err, ErrNoIOURing) {
		t.Skip(err)
	}
	if err != nil {
		t.Fatal(err)
	}
	defer sr.Close()
	dir := t.TempDir()
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)

	var files []SmallFile
	want := map[int][]byte{}
	for i := range 150 {
		data := bytes.Repeat([]byte{byte(i)}, i*97%SmallFileMax)
		name := fmt.Sprintf("f%03d", i)
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o444); err != nil {
			t.Fatal(err)
		}
		want[len(files)] = data
		files = append(files, SmallFile{Dirfd: fd, Name: name, Size: int64(len(data))})
	}
	os.WriteFile(filepath.Join(dir, "grew"), []byte("12345"), 0o444)
	os.WriteFile(filepath.Join(dir, "big"), make([]byte, SmallFileMax+1), 0o444)
	os.Symlink("f001", filepath.Join(dir, "link"))
	os.Mkdir(filepath.Join(dir, "sub"), 0o755)
	bad := []SmallFile{
		{Dirfd: fd, Name: "vanished", Size: 3},
		{Dirfd: fd, Name: "grew", Size: 4},
		{Dirfd: fd, Name: "big", Size: SmallFileMax + 1},
		{Dirfd: fd, Name: "link", Size: 4},
		{Dirfd: fd, Name: "sub", Size: 0},
	}
	// Interleave the bad ones with the good.
	all := append(append(files[:70:70], bad...), files[70:]...)
	if err := sr.ReadFiles(all); err != nil {
		t.Fatal(err)
	}
	for i, f := range all {
		isBad := i >= 70 && i < 70+len(bad)
		switch {
		case isBad && f.Data != nil:
			t.Errorf("%s: got %d bytes, want none", f.Name, len(f.Data))
		case !isBad:
			k := i
			if i >= 70 {
				k = i - len(bad)
			}
			if f.Data == nil || !bytes.Equal(f.Data, want[k]) {
				t.Errorf("%s: got %d bytes (nil: %v), want %d", f.Name, len(f.Data), f.Data == nil, len(want[k]))
			}
		}
	}
	// Reused: a second call reads again.
	again := []SmallFile{{Dirfd: fd, Name: "f002", Size: int64(len(want[2]))}}
	if err := sr.ReadFiles(again); err != nil || !bytes.Equal(again[0].Data, want[2]) {
		t.Errorf("second call: %v, %d bytes", err, len(again[0].Data))
	}
}
