package roots_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"storekeeper/lock"
	"storekeeper/report"
	"storekeeper/roots"
	"storekeeper/store/storetest"
)

// waitProgress signals each Info on a channel.
type waitProgress struct {
	report.Log
	infos chan string
}

func (w *waitProgress) Info(msg string) { w.infos <- msg }

// TestWhyWaitsForCollectorSaysSo: while a collector holds gc.lock
// exclusively, WhyPaths waits for it, and says so first through
// WhyOptions.Progress's Info (else a 'roots why' during a long
// collection hangs without a word); once the collector is done it
// answers. Without a collector, nothing is said.
func TestWhyWaitsForCollectorSaysSo(t *testing.T) {
	b := storetest.MustBuild(t, storetest.Spec{Paths: 8, Seed: 3, MaxDeps: 2, Files: 1, FileSize: 16, Roots: 1, Generations: 1})
	s := storetest.OpenRO(t, b.Layout)
	ctx := context.Background()
	waited := make(chan string, 1)
	o := roots.WhyOptions{Roots: roots.Options{NoRuntime: true, NoTemp: true}, Progress: &waitProgress{infos: waited}}

	if _, err := roots.Why(ctx, s, b.Valid[0], o); err != nil {
		t.Fatal(err)
	}
	select {
	case m := <-waited:
		t.Fatalf("%q with no collector running", m)
	default:
	}

	gc, err := lock.AcquireGCLock(ctx, b.Layout.StateDir, lock.Exclusive, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer gc.Release()
	done := make(chan error, 1)
	go func() {
		_, err := roots.Why(ctx, s, b.Valid[0], o)
		done <- err
	}()
	select {
	case m := <-waited:
		if !strings.Contains(m, "waiting for the big garbage collector lock") {
			t.Errorf("said %q", m)
		}
	case err := <-done:
		t.Fatalf("Why returned (%v) while the collector held gc.lock", err)
	case <-time.After(20 * time.Second):
		t.Fatal("Why neither answered nor said it waits for the collector")
	}
	select {
	case err := <-done:
		t.Fatalf("Why returned (%v) while the collector held gc.lock", err)
	case <-time.After(100 * time.Millisecond):
	}
	gc.Release()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("Why did not answer after the collector released gc.lock")
	}
}
