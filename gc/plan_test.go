package gc_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"testing"

	"storekeeper/gc"
	"storekeeper/lock"
	"storekeeper/store/storetest"
)

// TestPlanThenExecute: a dry-run plan lists what --print-dead lists and
// measures it, and executing it changes nothing; a deleting plan holds
// gc.lock exclusively until Execute, which deletes exactly the dead set
// and releases the lock; Close releases a plan without deleting, and a
// plan runs once.
func TestPlanThenExecute(t *testing.T) {
	b := build(t, storetest.Spec{Paths: 50, Seed: 17, MaxDeps: 3, Files: 1, FileSize: 4096, Roots: 3, Generations: 1})
	ro := openStore(t, b.Layout, true)
	proc := t.TempDir()
	dead := collect(t, ro, gc.Options{Action: gc.PrintDead}).Dead
	if len(dead) == 0 {
		t.Fatal("the fixture has no garbage")
	}

	dry, err := gc.NewPlan(context.Background(), ro, gc.Options{Action: gc.Delete, DryRun: true, ProcDir: proc}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(dry.Dead) != fmt.Sprint(dead) || dry.BytesFreed == 0 || dry.Graph == nil || dry.Roots == nil || len(dry.Roots.Roots) == 0 {
		t.Fatalf("dry-run plan: %d dead (want %d), %d bytes", len(dry.Dead), len(dead), dry.BytesFreed)
	}
	if res, err := gc.Execute(context.Background(), dry); err != nil || res.PathsDeleted != 0 || res.BytesFreed != dry.BytesFreed {
		t.Fatalf("executing a dry run: %+v, %v", res, err)
	}
	for _, p := range dead {
		if _, err := os.Lstat(b.Layout.RealPath(p)); err != nil {
			t.Fatalf("the dry run deleted %s: %v", p, err)
		}
	}

	rw := openStore(t, b.Layout, false)
	pl, err := gc.NewPlan(context.Background(), rw, gc.Options{Action: gc.Delete, ProcDir: proc}, nil)
	if err != nil {
		t.Fatal(err)
	}
	pl.Close()
	pl.Close()
	if _, err := gc.Execute(context.Background(), pl); !errors.Is(err, gc.ErrPlanDone) {
		t.Fatalf("a closed plan was executed: %v", err)
	}
	l, err := lock.AcquireGCLock(context.Background(), b.Layout.StateDir, lock.Exclusive, false, nil)
	if err != nil {
		t.Fatalf("Close left gc.lock held: %v", err)
	}
	l.Release()
	for _, p := range dead {
		if _, err := os.Lstat(b.Layout.RealPath(p)); err != nil {
			t.Fatalf("a closed plan deleted %s: %v", p, err)
		}
	}

	pl, err = gc.NewPlan(context.Background(), rw, gc.Options{Action: gc.Delete, ProcDir: proc}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := lock.AcquireGCLock(context.Background(), b.Layout.StateDir, lock.Shared, false, nil); !errors.Is(err, lock.ErrWouldBlock) {
		t.Fatalf("gc.lock is not held exclusively by a deleting plan: %v", err)
	}
	res, err := gc.Execute(context.Background(), pl)
	if err != nil {
		t.Fatal(err)
	}
	if res.PathsDeleted+res.EntriesDeleted != len(dead) {
		t.Errorf("deleted %d+%d, want %d", res.PathsDeleted, res.EntriesDeleted, len(dead))
	}
	want := map[string]bool{}
	for _, p := range dead {
		want[p] = true
	}
	checkSurvivors(t, rw, b, want)
	if _, err := gc.Execute(context.Background(), pl); !errors.Is(err, gc.ErrPlanDone) {
		t.Errorf("a plan was executed twice: %v", err)
	}
	l, err = lock.AcquireGCLock(context.Background(), b.Layout.StateDir, lock.Exclusive, false, nil)
	if err != nil {
		t.Fatalf("Execute left gc.lock held: %v", err)
	}
	l.Release()
}
