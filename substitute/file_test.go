package substitute

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"storekeeper/nix/storepath"
)

// TestFileCacheSpecialFiles: a file:// cache whose narinfo, NAR or
// nix-cache-info is a fifo (or a symlink to one, or to a device) fails
// the look-up or the download at once with an error naming the file;
// before, opening a fifo with no writer blocked forever, and no timeout
// or cancellation ended it. Symlinks to regular files are still
// followed, as Nix reads a local binary cache.
func TestFileCacheSpecialFiles(t *testing.T) {
	f := newFixture(t)
	fifo := filepath.Join(t.TempDir(), "fifo")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	nifo := opaquePath("narinfo-fifo")
	if err := syscall.Mkfifo(filepath.Join(f.dir, storepath.HashPart(filepath.Base(nifo))+".narinfo"), 0o600); err != nil {
		t.Fatal(err)
	}
	ndev := opaquePath("narinfo-device")
	if err := os.Symlink("/dev/zero", filepath.Join(f.dir, storepath.HashPart(filepath.Base(ndev))+".narinfo")); err != nil {
		t.Fatal(err)
	}
	e := f.add("nar-fifo", "nar-fifo", "none", nil, nil, true)
	if err := os.Remove(filepath.Join(f.dir, e.ni.URL)); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(fifo, filepath.Join(f.dir, e.ni.URL)); err != nil {
		t.Fatal(err)
	}
	linked := f.add("linked", "linked", "none", nil, nil, true)
	elsewhere := filepath.Join(t.TempDir(), "nar")
	if err := os.Rename(filepath.Join(f.dir, linked.ni.URL), elsewhere); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(elsewhere, filepath.Join(f.dir, linked.ni.URL)); err != nil {
		t.Fatal(err)
	}

	s := mustNew(t, f.url(), testOptions())
	done := make(chan struct{})
	go func() {
		defer close(done)
		for _, p := range []string{nifo, ndev} {
			_, err := s.Lookup(context.Background(), Want{Path: p})
			if err == nil || errors.Is(err, ErrNotFound) || !contains(err, "not a regular file") {
				t.Errorf("%s: %v, want an error saying the narinfo is not a regular file", p, err)
			}
		}
		o, err := s.Lookup(context.Background(), e.want)
		if err != nil {
			t.Errorf("Lookup: %v", err)
			return
		}
		if _, err := readAll(context.Background(), s, o); err == nil || !contains(err, "not a regular file") {
			t.Errorf("a NAR that is a fifo: %v, want an error saying it is not a regular file", err)
		}
		o, err = s.Lookup(context.Background(), linked.want)
		if err != nil {
			t.Errorf("Lookup of a NAR behind a symlink: %v", err)
			return
		}
		if data, err := readAll(context.Background(), s, o); err != nil || string(data) != string(linked.nar) {
			t.Errorf("a NAR behind a symlink: %v", err)
		}
	}()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		// Unblock the opens so the test ends.
		for _, p := range []string{fifo, filepath.Join(f.dir, storepath.HashPart(filepath.Base(nifo))+".narinfo")} {
			if w, err := os.OpenFile(p, os.O_WRONLY|syscall.O_NONBLOCK, 0); err == nil {
				w.Close()
			}
		}
		t.Fatal("a fifo in a file:// cache blocked the look-up or the download")
	}
}
