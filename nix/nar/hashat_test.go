//go:build linux && amd64

package nar

import (
	"fmt"
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
