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

// TestFileCacheOfAnotherUser: in a cache directory owned by another user,
// a narinfo that is a symlink to a private file of root's (/etc/shadow's
// kind) is refused without quoting it, while that user's own files and
// world-readable ones are read; as root, with a real uid (65534).
func TestFileCacheOfAnotherUser(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to give the cache to another user")
	}
	f := newFixture(t)
	e := f.add("theirs", "theirs", "none", nil, nil, true)
	secret := filepath.Join(t.TempDir(), "shadow")
	if err := os.WriteFile(secret, []byte("root:$6$secret-hash:19000:0:99999:7:::\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	planted := opaquePath("planted")
	if err := os.Symlink(secret, filepath.Join(f.dir, storepath.HashPart(filepath.Base(planted))+".narinfo")); err != nil {
		t.Fatal(err)
	}
	if err := filepath.Walk(f.dir, func(p string, _ os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		return os.Lchown(p, 65534, 65534)
	}); err != nil {
		t.Fatal(err)
	}
	s := mustNew(t, f.url(), testOptions())
	_, err := s.Lookup(context.Background(), Want{Path: planted})
	if err == nil || !contains(err, "refusing to read") || contains(err, "secret-hash") {
		t.Errorf("the planted symlink: %v, want a refusal that does not quote the file", err)
	}
	o, err := s.Lookup(context.Background(), e.want)
	if err != nil {
		t.Fatalf("the owner's own narinfo: %v", err)
	}
	if data, err := readAll(context.Background(), s, o); err != nil || string(data) != string(e.nar) {
		t.Errorf("the owner's own NAR: %v", err)
	}
}
