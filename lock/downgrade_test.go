package lock

import (
	"context"
	"errors"
	"testing"
)

// TestDowngrade: after Downgrade, another Shared locker gets the lock and
// an Exclusive one still does not; after Release, it does.
func TestDowngrade(t *testing.T) {
	dir := t.TempDir()
	ctx := context.Background()
	l, err := AcquireGCLock(ctx, dir, Exclusive, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := AcquireGCLock(ctx, dir, Shared, false, nil); !errors.Is(err, ErrWouldBlock) {
		t.Fatalf("shared beside exclusive: %v", err)
	}
	if err := l.Downgrade(); err != nil {
		t.Fatal(err)
	}
	if l.Mode() != Shared {
		t.Fatalf("mode %v after Downgrade", l.Mode())
	}
	s, err := AcquireGCLock(ctx, dir, Shared, false, nil)
	if err != nil {
		t.Fatalf("shared beside a downgraded lock: %v", err)
	}
	s.Release()
	if _, err := AcquireGCLock(ctx, dir, Exclusive, false, nil); !errors.Is(err, ErrWouldBlock) {
		t.Fatalf("exclusive beside a downgraded lock: %v", err)
	}
	if err := l.Downgrade(); err != nil {
		t.Fatalf("downgrading twice: %v", err)
	}
	l.Release()
	if err := l.Downgrade(); err == nil {
		t.Fatal("downgrading a released lock works")
	}
	x, err := AcquireGCLock(ctx, dir, Exclusive, false, nil)
	if err != nil {
		t.Fatalf("exclusive after release: %v", err)
	}
	x.Release()
}
