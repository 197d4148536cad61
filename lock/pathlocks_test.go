package lock

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"sync"
	"testing"
	"time"
)

func TestLockPathsSortedDedup(t *testing.T) {
	dir := t.TempDir()
	a, b, c := filepath.Join(dir, "a"), filepath.Join(dir, "a-b"), filepath.Join(dir, "c")
	var order []string
	testHookBeforeLock = func(p string) { order = append(order, p) }
	defer func() { testHookBeforeLock = nil }()
	pl, err := LockPaths(context.Background(), []string{c, a, b, a, c}, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	// Sorted by path ("a" < "a-b"), not by lock file name ("a-b.lock" < "a.lock").
	want := []string{a + ".lock", b + ".lock", c + ".lock"}
	if !reflect.DeepEqual(order, want) || !reflect.DeepEqual(pl.LockFiles(), want) {
		t.Fatalf("order %q, held %q", order, pl.LockFiles())
	}
	for _, p := range want {
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Size() != 0 || fi.Mode().Perm()&^0o600 != 0 {
			t.Errorf("%s: size %d mode %v", p, fi.Size(), fi.Mode().Perm())
		}
		if l, _ := IsLocked(p); !l {
			t.Errorf("%s not locked", p)
		}
	}
	if err := pl.Unlock(false); err != nil {
		t.Fatal(err)
	}
	for _, p := range want {
		if l, _ := IsLocked(p); l {
			t.Errorf("%s still locked", p)
		}
		if _, err := os.Stat(p); err != nil {
			t.Errorf("%s removed without deleteLockFiles", p)
		}
	}
	if err := pl.Unlock(true); err != nil { // idempotent, nothing held
		t.Fatal(err)
	}
	var nilPL *PathLocks
	nilPL.Unlock(true)
}

func holdLock(t *testing.T, p string) *os.File {
	t.Helper()
	f, err := OpenLockFile(p, true)
	if err != nil {
		t.Fatal(err)
	}
	mustLock(t, f, Exclusive)
	t.Cleanup(func() { f.Close() })
	return f
}

func TestLockPathsNoWaitReleasesTaken(t *testing.T) {
	dir := t.TempDir()
	a, b, c := filepath.Join(dir, "a"), filepath.Join(dir, "b"), filepath.Join(dir, "c")
	holdLock(t, b+".lock")
	pl, err := LockPaths(context.Background(), []string{a, b, c}, false, func(string) { t.Error("waitMsg called with wait=false") })
	if !errors.Is(err, ErrWouldBlock) || pl != nil {
		t.Fatalf("got %v %v, want ErrWouldBlock", pl, err)
	}
	if l, _ := IsLocked(a + ".lock"); l {
		t.Error("a.lock left locked after failure")
	}
	if _, err := os.Stat(c + ".lock"); !errors.Is(err, os.ErrNotExist) {
		t.Error("c.lock touched although b failed first")
	}
}

func TestLockPathsWaitAndCancel(t *testing.T) {
	dir := t.TempDir()
	a, b := filepath.Join(dir, "a"), filepath.Join(dir, "b")
	hb := holdLock(t, b+".lock")

	ctx, cancel := context.WithTimeout(context.Background(), 150*time.Millisecond)
	_, err := LockPaths(ctx, []string{b, a}, true, nil)
	cancel()
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("got %v, want DeadlineExceeded", err)
	}
	if l, _ := IsLocked(a + ".lock"); l {
		t.Error("a.lock left locked after cancellation")
	}

	var msgs []string
	var mu sync.Mutex
	got := make(chan *PathLocks, 1)
	go func() {
		pl, err := LockPaths(context.Background(), []string{b, a}, true, func(p string) {
			mu.Lock()
			msgs = append(msgs, p)
			mu.Unlock()
		})
		if err != nil {
			t.Error(err)
		}
		got <- pl
	}()
	time.Sleep(100 * time.Millisecond)
	select {
	case <-got:
		t.Fatal("LockPaths returned while b.lock was held")
	default:
	}
	Unlock(hb)
	select {
	case pl := <-got:
		defer pl.Unlock(false)
	case <-time.After(5 * time.Second):
		t.Fatal("LockPaths did not finish after release")
	}
	mu.Lock()
	defer mu.Unlock()
	if !reflect.DeepEqual(msgs, []string{b}) {
		t.Fatalf("waitMsg calls %q", msgs)
	}
}

func TestLockPathsRetriesStaleLockFile(t *testing.T) {
	dir := t.TempDir()
	a := filepath.Join(dir, "a")
	calls := 0
	testHookBeforeLock = func(p string) {
		calls++
		if calls == 1 {
			// The previous holder releases with deleteLockFiles between our
			// open and our lock.
			simulateCollector(t, p)
		}
	}
	defer func() { testHookBeforeLock = nil }()
	pl, err := LockPaths(context.Background(), []string{a}, true, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer pl.Unlock(false)
	if calls != 2 {
		t.Fatalf("open/lock loop ran %d times, want 2", calls)
	}
	if fi, err := os.Stat(a + ".lock"); err != nil || fi.Size() != 0 {
		t.Fatalf("lock file: %v", err)
	}
	if l, _ := IsLocked(a + ".lock"); !l {
		t.Fatal("new lock file not locked")
	}
}

func TestUnlockDeleteLockFiles(t *testing.T) {
	dir := t.TempDir()
	a := filepath.Join(dir, "a")
	pl, err := LockPaths(context.Background(), []string{a}, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	waiter, err := os.Open(a + ".lock") // someone about to wait on it
	if err != nil {
		t.Fatal(err)
	}
	defer waiter.Close()
	if err := pl.Unlock(true); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(a + ".lock"); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("lock file not removed: %v", err)
	}
	if fi, _ := waiter.Stat(); fi.Size() != 1 {
		t.Fatalf("waiter sees size %d, want 1 (\"d\")", fi.Size())
	}
}

// A real waiter blocked on a lock file that its holder deletes on release
// must end up holding a lock on a live file, not on the deleted one.
func TestLockPathsWaiterAfterDeletingRelease(t *testing.T) {
	dir := t.TempDir()
	a := filepath.Join(dir, "a")
	holder, err := LockPaths(context.Background(), []string{a}, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	waiting := make(chan struct{})
	got := make(chan *PathLocks, 1)
	go func() {
		pl, err := LockPaths(context.Background(), []string{a}, true, func(string) { close(waiting) })
		if err != nil {
			t.Error(err)
		}
		got <- pl
	}()
	<-waiting
	if err := holder.Unlock(true); err != nil {
		t.Fatal(err)
	}
	pl := <-got
	defer pl.Unlock(false)
	if l, _ := IsLocked(a + ".lock"); !l {
		t.Fatal("waiter does not hold the lock file that exists now")
	}
}

func TestLockPathsChildKilled(t *testing.T) {
	dir := t.TempDir()
	a, b := filepath.Join(dir, "a"), filepath.Join(dir, "b")
	h := startHelper(t, "pathlocks", b, a)
	if _, err := LockPaths(context.Background(), []string{a}, false, nil); !errors.Is(err, ErrWouldBlock) {
		t.Fatalf("got %v, want ErrWouldBlock", err)
	}
	got := make(chan error, 1)
	go func() {
		pl, err := LockPaths(context.Background(), []string{a, b}, true, nil)
		if err == nil {
			pl.Unlock(true)
		}
		got <- err
	}()
	time.Sleep(50 * time.Millisecond)
	h.kill()
	select {
	case err := <-got:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("locks of a killed child were not released")
	}
}

// TestLockPathsAtOneDirDescriptor: LockPathsAt holds one descriptor per
// lock file and one duplicate of the directory for all of them, deletes
// the files on Unlock(true) in a directory of ours, and closes all.
func TestLockPathsAtOneDirDescriptor(t *testing.T) {
	dir := t.TempDir()
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	d, err := os.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	fds := func() int {
		ents, err := os.ReadDir("/proc/self/fd")
		if err != nil {
			t.Fatal(err)
		}
		return len(ents)
	}
	var names []string
	for i := 0; i < 100; i++ {
		names = append(names, "p"+string(rune('a'+i%26))+string(rune('a'+i/26)))
	}
	before := fds()
	pl, err := LockPathsAt(context.Background(), d, dir, names, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	if got := fds() - before; got != len(names)+1 {
		t.Errorf("%d descriptors held for %d locks, want %d", got, len(names), len(names)+1)
	}
	if err := pl.Unlock(true); err != nil {
		t.Fatal(err)
	}
	if got := fds(); got != before {
		t.Errorf("%d descriptors after Unlock, want %d", got, before)
	}
	ents, _ := os.ReadDir(dir)
	if len(ents) != 0 {
		t.Errorf("%d lock files left in a directory of ours", len(ents))
	}
}
