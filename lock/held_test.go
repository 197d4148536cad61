package lock

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestParseLocks: holders of the inode are read from /proc/locks lines,
// waiters ("->") and other inodes are not.
func TestParseLocks(t *testing.T) {
	in := `1: FLOCK  ADVISORY  WRITE 1234 08:01:5678 0 EOF
1: -> FLOCK  ADVISORY  WRITE 999 08:01:5678 0 EOF
2: POSIX  ADVISORY  READ 42 fd:01:5678 0 EOF
3: OFDLCK ADVISORY  READ -1 08:01:5678 0 EOF
4: FLOCK  ADVISORY  READ 7 08:01:5679 0 EOF
garbage
`
	hs, err := parseLocks(strings.NewReader(in), 8, 1, 5678)
	if err != nil {
		t.Fatal(err)
	}
	want := []Holder{{PID: 1234, Type: "FLOCK", Mode: "WRITE"}, {PID: 0, Type: "OFDLCK", Mode: "READ"}}
	if len(hs) != len(want) || hs[0] != want[0] || hs[1] != want[1] {
		t.Errorf("got %+v, want %+v", hs, want)
	}
}

// TestHeldErrorNamesTheLockAndItsHolder: a busy lock's error is a
// HeldError naming the file, and Holders finds this process holding it
// through another open file description; a cancelled wait keeps both.
func TestHeldErrorNamesTheLockAndItsHolder(t *testing.T) {
	dir := t.TempDir()
	held, err := AcquireGCLock(context.Background(), dir, Exclusive, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer held.Release()
	path := filepath.Join(dir, "gc.lock")

	_, err = AcquireGCLock(context.Background(), dir, Exclusive, false, nil)
	var he *HeldError
	if !errors.As(err, &he) || he.Path != path || !errors.Is(err, ErrWouldBlock) {
		t.Fatalf("busy lock: %v, want a HeldError for %s wrapping ErrWouldBlock", err, path)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	_, err = AcquireGCLock(ctx, dir, Shared, true, nil)
	if !errors.As(err, &he) || he.Path != path || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("cancelled wait: %v, want a HeldError for %s wrapping the context's error", err, path)
	}

	if _, err := os.Stat("/proc/locks"); err != nil {
		t.Skip("no /proc/locks")
	}
	hs, err := Holders("", path)
	if err != nil {
		t.Fatal(err)
	}
	if len(hs) != 1 || hs[0].PID != unix.Getpid() || hs[0].Type != "FLOCK" || hs[0].Mode != "WRITE" || hs[0].Command == "" {
		t.Errorf("holders %+v, want this process (%d) with an exclusive flock", hs, unix.Getpid())
	}
}

// TestHoldersOnBtrfsSubvolume: /proc/locks names a btrfs file by its file
// system's device, stat by the subvolume's; Holders (the hint of every
// lock-held error) found nobody there.
func TestHoldersOnBtrfsSubvolume(t *testing.T) {
	if _, err := os.Stat("/proc/locks"); err != nil {
		t.Skip("no /proc/locks")
	}
	dir := btrfsSubvolume(t)
	held, err := AcquireGCLock(context.Background(), dir, Exclusive, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer held.Release()
	hs, err := Holders("", filepath.Join(dir, "gc.lock"))
	if err != nil {
		t.Fatal(err)
	}
	if len(hs) != 1 || hs[0].PID != unix.Getpid() {
		t.Errorf("holders of a gc.lock in a btrfs subvolume: %+v, want this process (%d)", hs, unix.Getpid())
	}
}
