package lock

import (
	"context"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func openTwo(t *testing.T) (string, *os.File, *os.File) {
	t.Helper()
	p := filepath.Join(t.TempDir(), "x.lock")
	f1, err := OpenLockFile(p, true)
	if err != nil {
		t.Fatal(err)
	}
	f2, err := OpenLockFile(p, false)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f1.Close(); f2.Close() })
	return p, f1, f2
}

func mustLock(t *testing.T, f *os.File, m Mode) {
	t.Helper()
	if err := Lock(context.Background(), f, m, false); err != nil {
		t.Fatalf("lock %v: %v", m, err)
	}
}

func mustWouldBlock(t *testing.T, f *os.File, m Mode) {
	t.Helper()
	if err := Lock(context.Background(), f, m, false); !errors.Is(err, ErrWouldBlock) {
		t.Fatalf("lock %v: got %v, want ErrWouldBlock", m, err)
	}
}

func TestOpenLockFile(t *testing.T) {
	p := filepath.Join(t.TempDir(), "a.lock")
	if _, err := OpenLockFile(p, false); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("create=false on missing file: %v", err)
	}
	f, err := OpenLockFile(p, true)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	fi, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm()&^0o600 != 0 {
		t.Errorf("mode %v, want at most 0600", fi.Mode().Perm())
	}
	fd := int(f.Fd())
	if fl, _ := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0); fl&unix.FD_CLOEXEC == 0 {
		t.Error("lock file not close-on-exec")
	}
	if fl, _ := unix.FcntlInt(uintptr(fd), unix.F_GETFL, 0); fl&unix.O_ACCMODE != unix.O_RDWR {
		t.Error("lock file not opened O_RDWR")
	}
}

func TestLockModes(t *testing.T) {
	_, f1, f2 := openTwo(t)
	mustLock(t, f1, Shared)
	mustLock(t, f2, Shared) // shared + shared
	if err := Unlock(f2); err != nil {
		t.Fatal(err)
	}
	mustWouldBlock(t, f2, Exclusive) // exclusive vs shared
	if err := Unlock(f1); err != nil {
		t.Fatal(err)
	}
	mustLock(t, f2, Exclusive)
	mustWouldBlock(t, f1, Shared) // shared vs exclusive
	mustWouldBlock(t, f1, Exclusive)
	if err := Unlock(f2); err != nil {
		t.Fatal(err)
	}
	mustLock(t, f1, Exclusive)
	if err := Unlock(f1); err != nil {
		t.Fatal(err)
	}
	if err := Unlock(f1); err != nil { // unlocking an unlocked file is fine
		t.Fatal(err)
	}
	if err := Lock(context.Background(), f1, Mode(0), false); err == nil {
		t.Fatal("invalid mode accepted")
	}
	if Shared.String() != "shared" || Exclusive.String() != "exclusive" {
		t.Error("Mode.String")
	}
}

func TestLockWaitsUntilReleased(t *testing.T) {
	for _, name := range []string{"background", "cancellable"} {
		t.Run(name, func(t *testing.T) {
			_, f1, f2 := openTwo(t)
			mustLock(t, f1, Exclusive)
			ctx := context.Background()
			if name == "cancellable" {
				var cancel context.CancelFunc
				ctx, cancel = context.WithTimeout(ctx, 10*time.Second)
				defer cancel()
			}
			got := make(chan error, 1)
			go func() { got <- Lock(ctx, f2, Shared, true) }()
			select {
			case err := <-got:
				t.Fatalf("Lock returned %v while the lock was held", err)
			case <-time.After(100 * time.Millisecond):
			}
			Unlock(f1)
			select {
			case err := <-got:
				if err != nil {
					t.Fatal(err)
				}
			case <-time.After(5 * time.Second):
				t.Fatal("Lock did not return after release")
			}
			mustWouldBlock(t, f1, Exclusive)
		})
	}
}

func TestLockCancel(t *testing.T) {
	p, f1, f2 := openTwo(t)
	mustLock(t, f1, Exclusive)
	ctx, cancel := context.WithTimeout(context.Background(), 150*time.Millisecond)
	defer cancel()
	start := time.Now()
	err := Lock(ctx, f2, Exclusive, true)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("got %v, want DeadlineExceeded", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("cancellation took %v", d)
	}
	Unlock(f1)
	// Nothing may hold the lock on behalf of the cancelled call, now or later.
	time.Sleep(250 * time.Millisecond)
	f3, err := OpenLockFile(p, false)
	if err != nil {
		t.Fatal(err)
	}
	defer f3.Close()
	mustLock(t, f3, Exclusive)

	// Already-cancelled context.
	Unlock(f3)
	ctx2, cancel2 := context.WithCancel(context.Background())
	cancel2()
	if err := Lock(ctx2, f2, Exclusive, true); !errors.Is(err, context.Canceled) {
		t.Fatalf("got %v, want Canceled", err)
	}
}

func TestIsLocked(t *testing.T) {
	p, f1, _ := openTwo(t)
	if l, err := IsLocked(filepath.Join(t.TempDir(), "missing.lock")); l || err != nil {
		t.Fatalf("missing file: %v %v", l, err)
	}
	if l, err := IsLocked(p); l || err != nil {
		t.Fatalf("free file: %v %v", l, err)
	}
	mustLock(t, f1, Exclusive) // the probe must not have left a lock behind
	if l, err := IsLocked(p); !l || err != nil {
		t.Fatalf("exclusively held: %v %v", l, err)
	}
	Unlock(f1)
	mustLock(t, f1, Shared)
	if l, err := IsLocked(p); !l || err != nil {
		t.Fatalf("shared held: %v %v", l, err)
	}
}

func TestAcquireGCLock(t *testing.T) {
	dir := t.TempDir()
	l, err := AcquireGCLock(context.Background(), dir, Exclusive, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	if l.Path() != filepath.Join(dir, "gc.lock") || l.Mode() != Exclusive {
		t.Fatalf("path %s mode %v", l.Path(), l.Mode())
	}
	if _, err := AcquireGCLock(context.Background(), dir, Shared, false, nil); !errors.Is(err, ErrWouldBlock) {
		t.Fatalf("got %v, want ErrWouldBlock", err)
	}
	var waits atomic.Int32
	waiting := make(chan struct{}, 10)
	got := make(chan error, 1)
	go func() {
		l2, err := AcquireGCLock(context.Background(), dir, Shared, true, func() { waits.Add(1); waiting <- struct{}{} })
		if err == nil {
			l2.Release()
		}
		got <- err
	}()
	<-waiting
	time.Sleep(50 * time.Millisecond)
	if err := l.Release(); err != nil {
		t.Fatal(err)
	}
	if err := l.Release(); err != nil { // idempotent
		t.Fatal(err)
	}
	if err := <-got; err != nil {
		t.Fatal(err)
	}
	if n := waits.Load(); n != 1 {
		t.Fatalf("onWait called %d times", n)
	}
	// No wait when free.
	l3, err := AcquireGCLock(context.Background(), dir, Exclusive, true, func() { t.Error("onWait called for a free lock") })
	if err != nil {
		t.Fatal(err)
	}
	l3.Release()
	var nilLock *FileLock
	if err := nilLock.Release(); err != nil {
		t.Fatal(err)
	}
}

func TestAcquireGCLockHeldByChild(t *testing.T) {
	dir := t.TempDir()
	h := startHelper(t, "hold", filepath.Join(dir, "gc.lock"), "exclusive")
	if _, err := AcquireGCLock(context.Background(), dir, Shared, false, nil); !errors.Is(err, ErrWouldBlock) {
		t.Fatalf("got %v, want ErrWouldBlock", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	_, err := AcquireGCLock(ctx, dir, Shared, true, nil)
	cancel()
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("got %v, want DeadlineExceeded", err)
	}
	waited := make(chan struct{})
	got := make(chan error, 1)
	go func() {
		l, err := AcquireGCLock(context.Background(), dir, Exclusive, true, func() { close(waited) })
		if err == nil {
			l.Release()
		}
		got <- err
	}()
	<-waited
	h.stop(t)
	select {
	case err := <-got:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("lock not acquired after child released it")
	}
}

func TestChildKilledReleasesLock(t *testing.T) {
	p := filepath.Join(t.TempDir(), "x.lock")
	h := startHelper(t, "hold", p, "shared")
	if l, err := IsLocked(p); !l || err != nil {
		t.Fatalf("IsLocked while child holds it: %v %v", l, err)
	}
	f, err := OpenLockFile(p, false)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	mustLock(t, f, Shared)
	Unlock(f)
	mustWouldBlock(t, f, Exclusive)
	h.kill()
	if l, err := IsLocked(p); l || err != nil {
		t.Fatalf("IsLocked after SIGKILL: %v %v", l, err)
	}
	mustLock(t, f, Exclusive)
}

func TestAcquireBigLock(t *testing.T) {
	dir := t.TempDir()
	ctx := context.Background()
	if _, err := AcquireBigLock(ctx, dir, Shared, true); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("read-only on missing big-lock: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "big-lock")); !errors.Is(err, fs.ErrNotExist) {
		t.Fatal("read-only acquire created big-lock")
	}
	rw, err := AcquireBigLock(ctx, dir, Shared, false)
	if err != nil {
		t.Fatal(err)
	}
	defer rw.Release()
	ro, err := AcquireBigLock(ctx, dir, Shared, true)
	if err != nil {
		t.Fatal(err)
	}
	if fl, _ := unix.FcntlInt(ro.f.Fd(), unix.F_GETFL, 0); fl&unix.O_ACCMODE != unix.O_RDONLY {
		t.Error("read-only big-lock not opened O_RDONLY")
	}
	// The read-only descriptor really holds a shared lock.
	f, _ := OpenLockFile(filepath.Join(dir, "big-lock"), false)
	defer f.Close()
	rw.Release()
	mustWouldBlock(t, f, Exclusive)
	ro.Release()
	mustLock(t, f, Exclusive)
	// An exclusive holder makes AcquireBigLock wait until ctx ends.
	ctx2, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
	defer cancel()
	if _, err := AcquireBigLock(ctx2, dir, Shared, true); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("got %v, want DeadlineExceeded", err)
	}
}
