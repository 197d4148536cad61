package fs

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"

	"golang.org/x/sys/unix"
)

func lstat(t *testing.T, p string) unix.Stat_t {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Lstat(p, &st); err != nil {
		t.Fatal(err)
	}
	return st
}

// TestDirWritableForAMoment: MakeWritable adds the owner's write bit for
// the renames between Acquire and Release; the last Release restores
// mode 0555 and mtime 1, not one before; the directory is in the journal
// from the first Acquire on.
func TestDirWritableForAMoment(t *testing.T) {
	root := t.TempDir()
	sub := filepath.Join(root, "p", "bin")
	if err := os.MkdirAll(sub, 0o755); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(root, "x"), nil, 0o444)
	os.WriteFile(filepath.Join(root, "y"), nil, 0o444)
	os.Chmod(sub, 0o555)
	unix.UtimesNano(sub, []unix.Timespec{{Sec: 1}, {Sec: 1}})
	j, err := OpenJournal(filepath.Join(root, "journal"), root, 4242)
	if err != nil {
		t.Fatal(err)
	}
	fd := openDir(t, sub)
	rootFd := openDir(t, root)
	d := &Dir{Fd: fd, Path: sub}
	d.Acquire(j)
	d.Acquire(j)
	if data, _ := os.ReadFile(filepath.Join(root, "journal", "4242")); string(data) != "p/bin\x00" {
		t.Fatalf("journal holds %q", data)
	}
	if !d.MakeWritable() {
		t.Fatal("MakeWritable failed")
	}
	if st := lstat(t, sub); st.Mode&0o7777 != 0o755 {
		t.Fatalf("mode %o while writable", st.Mode&0o7777)
	}
	if err := unix.Renameat(rootFd, "x", fd, "x"); err != nil {
		t.Fatal(err)
	}
	d.Release(true)
	if st := lstat(t, sub); st.Mode&0o7777 != 0o755 {
		t.Fatalf("mode %o restored while a rename is in flight", st.Mode&0o7777)
	}
	if err := unix.Renameat(rootFd, "y", fd, "y"); err != nil {
		t.Fatal(err)
	}
	d.Release(true)
	if st := lstat(t, sub); st.Mode&0o7777 != 0o555 || st.Mtim.Sec != 1 || st.Mtim.Nsec != 0 {
		t.Fatalf("after the last release: mode %o mtime %d.%09d", st.Mode&0o7777, st.Mtim.Sec, st.Mtim.Nsec)
	}
	j.Close()
	if _, err := os.Stat(filepath.Join(root, "journal", "4242")); !os.IsNotExist(err) {
		t.Fatalf("the closed journal is still there: %v", err)
	}
}

// TestReplayJournals: the journal of a dead process is replayed (its
// directories made canonical, through no symlink) and removed; the
// journal of a live process is left alone.
func TestReplayJournals(t *testing.T) {
	root := t.TempDir()
	jdir := filepath.Join(root, "journal")
	for _, p := range []string{"a/bin", "b", "elsewhere"} {
		os.MkdirAll(filepath.Join(root, p), 0o755)
	}
	os.Symlink("elsewhere", filepath.Join(root, "link"))
	cmd := exec.Command("true")
	cmd.Run()
	dead := cmd.Process.Pid // reaped: no such process (unless reused at once)
	os.MkdirAll(jdir, 0o755)
	os.WriteFile(filepath.Join(jdir, strconv.Itoa(dead)), []byte("a/bin\x00link\x00../b\x00gone\x00"), 0o644)
	os.WriteFile(filepath.Join(jdir, strconv.Itoa(os.Getppid())), []byte("b\x00"), 0o644)
	n := ReplayJournals(jdir, openDir(t, root), os.Getpid())
	if n != 1 {
		t.Errorf("%d directories restored, want 1", n)
	}
	if st := lstat(t, filepath.Join(root, "a/bin")); st.Mode&0o7777 != 0o555 || st.Mtim.Sec != 1 {
		t.Errorf("a/bin: mode %o mtime %d", st.Mode&0o7777, st.Mtim.Sec)
	}
	for _, p := range []string{"elsewhere", "b"} {
		if st := lstat(t, filepath.Join(root, p)); st.Mode&0o7777 != 0o755 || st.Mtim.Sec == 1 {
			t.Errorf("%s was changed (through a symlink, a .. or a live journal)", p)
		}
	}
	if _, err := os.Stat(filepath.Join(jdir, strconv.Itoa(dead))); !os.IsNotExist(err) {
		t.Error("the replayed journal is still there")
	}
	if _, err := os.Stat(filepath.Join(jdir, strconv.Itoa(os.Getppid()))); err != nil {
		t.Error("the live process's journal was removed")
	}
}

// TestAddOwnerBitsAt: a directory gets its owner's rwx; a symlink to a
// directory is refused and its target left alone.
func TestAddOwnerBitsAt(t *testing.T) {
	root := t.TempDir()
	os.Mkdir(filepath.Join(root, "d"), 0o500)
	os.Mkdir(filepath.Join(root, "target"), 0o500)
	os.Symlink("target", filepath.Join(root, "link"))
	fd := openDir(t, root)
	if err := AddOwnerBitsAt(fd, "d"); err != nil {
		t.Fatal(err)
	}
	if st := lstat(t, filepath.Join(root, "d")); st.Mode&0o7777 != 0o700 {
		t.Errorf("d: mode %o", st.Mode&0o7777)
	}
	if err := AddOwnerBitsAt(fd, "link"); err != unix.ENOTDIR {
		t.Errorf("through a symlink: %v, want ENOTDIR", err)
	}
	if st := lstat(t, filepath.Join(root, "target")); st.Mode&0o7777 != 0o500 {
		t.Errorf("the symlink's target was changed: mode %o", st.Mode&0o7777)
	}
}
