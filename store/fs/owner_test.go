package fs

import (
	"os"
	"testing"

	"golang.org/x/sys/unix"
)

func TestStoreOwner(t *testing.T) {
	dir := t.TempDir()
	open := func() int {
		fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { unix.Close(fd) })
		return fd
	}
	// Ours: our uid and our effective gid, whatever the directory's group.
	if os.Geteuid() == 0 {
		if err := os.Chown(dir, 0, 4242); err != nil {
			t.Fatal(err)
		}
	}
	uid, gid, err := StoreOwner(open())
	if err != nil || uid != os.Geteuid() || gid != os.Getegid() {
		t.Fatalf("own directory: got uid %d gid %d err %v, want %d %d", uid, gid, err, os.Geteuid(), os.Getegid())
	}
	if os.Geteuid() != 0 {
		t.Skip("the other-owner case needs root")
	}
	// Another user's: that user and the directory's group.
	if err := os.Chown(dir, 4243, 4244); err != nil {
		t.Fatal(err)
	}
	uid, gid, err = StoreOwner(open())
	if err != nil || uid != 4243 || gid != 4244 {
		t.Fatalf("other owner: got uid %d gid %d err %v, want 4243 4244", uid, gid, err)
	}
	// Not a directory.
	f, err := os.Create(dir + "/f")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, _, err := StoreOwner(int(f.Fd())); err == nil {
		t.Fatal("a regular file: no error")
	}
}
