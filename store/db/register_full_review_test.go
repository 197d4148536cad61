package db_test

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"storekeeper/store/db"
	"storekeeper/store/fs"
	"storekeeper/store/storetest"
)

// TestRegisterDiskFull: a batch that does not fit on the disk holding the
// database fails with an error wrapping fs.ErrDiskFull (what the command
// line turns into its "disk-full" kind), and nothing is registered. The
// database is on a small tmpfs in a mount namespace of a child process.
func TestRegisterDiskFull(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("needs root to mount a tmpfs")
	}
	dir := t.TempDir()
	cmd := exec.Command(os.Args[0], "-test.run=^TestRegisterDiskFullChild$", "-test.count=1", "-test.v")
	cmd.Env = append(os.Environ(), "STOREKEEPER_TEST_FULL="+dir)
	cmd.SysProcAttr = &syscall.SysProcAttr{Unshareflags: syscall.CLONE_NEWNS}
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil || !strings.Contains(out.String(), "--- PASS: TestRegisterDiskFullChild") {
		t.Fatalf("child: %v\n%s", err, out.String())
	}
}

// TestRegisterDiskFullChild is TestRegisterDiskFull's child.
func TestRegisterDiskFullChild(t *testing.T) {
	dir := os.Getenv("STOREKEEPER_TEST_FULL")
	if dir == "" {
		t.Skip("run by TestRegisterDiskFull")
	}
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount("tmpfs", dir, "tmpfs", 0, "size=16m"); err != nil {
		t.Fatal(err)
	}
	b, err := storetest.Build(filepath.Join(dir, "root"), storetest.Spec{Paths: 5, Seed: 3, MaxDeps: 3, DBOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	d, err := db.Open(context.Background(), b.Layout.DBDir(), nixDefaults)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	before := dumpDB(t, d.SQL, true, true)
	// Fill the disk but for 256 KiB.
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		t.Fatal(err)
	}
	filler := make([]byte, int64(st.Bavail)*st.Bsize-256<<10)
	if err := os.WriteFile(filepath.Join(dir, "filler"), filler, 0o600); err != nil {
		t.Fatal(err)
	}
	err = d.Register(context.Background(), killBatch(10, 20000, b.Valid[0]), db.RegisterOptions{})
	if !errors.Is(err, fs.ErrDiskFull) {
		t.Errorf("a batch too big for the disk: %v, want fs.ErrDiskFull", err)
	} else {
		t.Log(err)
	}
	sameDump(t, "after a full disk", before, dumpDB(t, d.SQL, true, true))
}
