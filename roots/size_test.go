package roots_test

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"storekeeper/lock"
	"storekeeper/report"
	"storekeeper/roots"
)

// infoRecorder is a Progress that keeps the Info messages.
type infoRecorder struct {
	report.Progress
	mu    sync.Mutex
	infos []string
}

func (r *infoRecorder) Info(msg string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.infos = append(r.infos, msg)
}

func (r *infoRecorder) said(sub string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, m := range r.infos {
		if strings.Contains(m, sub) {
			return true
		}
	}
	return false
}

// TestSizeWaitsForCollectorAndSaysSo: while a collector holds gc.lock,
// Size waits for it (it reads nothing a collection may be deleting) and
// says that it is waiting, as gc does, instead of hanging silently; once
// the lock is released it finishes.
func TestSizeWaitsForCollectorAndSaysSo(t *testing.T) {
	_, s := fixture(t)
	ctx := context.Background()
	held, err := lock.AcquireGCLock(ctx, s.Layout.StateDir, lock.Exclusive, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	rec := &infoRecorder{Progress: report.Discard}
	done := make(chan error, 1)
	go func() {
		_, err := roots.Size(ctx, s, roots.SizeOptions{Roots: roots.Options{NoRuntime: true, NoTemp: true}, Progress: rec})
		done <- err
	}()
	deadline := time.Now().Add(5 * time.Second)
	for !rec.said("garbage collector lock") && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	select {
	case err := <-done:
		held.Release()
		t.Fatalf("Size finished while a collector held gc.lock: %v", err)
	default:
	}
	if !rec.said("garbage collector lock") {
		t.Errorf("Size waited for gc.lock without saying so: %q", rec.infos)
	}
	held.Release()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("Size did not finish once gc.lock was released")
	}
}
