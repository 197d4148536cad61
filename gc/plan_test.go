package gc_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

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
	b := storetest.MustBuild(t, storetest.Spec{Paths: 50, Seed: 17, MaxDeps: 3, Files: 1, FileSize: 4096, Roots: 3, Generations: 1})
	ro := storetest.OpenRO(t, b.Layout)
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

	rw := storetest.Open(t, b.Layout)
	pl, err := gc.NewPlan(context.Background(), rw, gc.Options{Action: gc.Delete, ProcDir: proc}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if c, err := lock.DialUnix(context.Background(), b.Layout.GCSocketPath()); err != nil {
		t.Fatalf("a deleting plan does not serve the gc socket: %v", err)
	} else {
		c.Close()
	}
	pl.Close()
	pl.Close()
	if c, err := lock.DialUnix(context.Background(), b.Layout.GCSocketPath()); err == nil {
		c.Close()
		t.Error("Close left the gc socket served")
	}
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

// TestPlanHonoursSocketRootsBeforeExecute: a temporary root a client
// registers through the gc socket after NewPlan (the plan lists the path
// dead) and before Execute is answered at once, and Execute spares the
// path and what it references; the rest of the dead set goes, and Close
// stops serving the socket.
func TestPlanHonoursSocketRootsBeforeExecute(t *testing.T) {
	b := storetest.MustBuild(t, storetest.Spec{Paths: 50, Seed: 17, MaxDeps: 3, Files: 1, FileSize: 4096, Roots: 3, Generations: 1})
	rw := storetest.Open(t, b.Layout)
	m := loadModel(t, b.Layout.DBPath())
	pl, err := gc.NewPlan(context.Background(), rw, gc.Options{Action: gc.PrintDead, ProcDir: t.TempDir()}, nil)
	if err != nil {
		t.Fatal(err)
	}
	dead := map[string]bool{}
	for _, p := range pl.Dead {
		dead[p] = true
	}
	// A dead path with a dead reference: the root must keep both.
	var x, y string
	for _, p := range pl.Dead {
		for _, r := range m.refs[p] {
			if r != p && dead[r] && x == "" {
				x, y = p, r
			}
		}
	}
	if x == "" {
		t.Fatal("no dead path refers to another: the fixture shows little")
	}

	pl, err = gc.NewPlan(context.Background(), rw, gc.Options{Action: gc.Delete, ProcDir: t.TempDir()}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer pl.Close()
	conn, err := lock.DialUnix(context.Background(), b.Layout.GCSocketPath())
	if err != nil {
		t.Fatalf("the plan does not serve the gc socket: %v", err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := conn.Write([]byte(x + "\n")); err != nil {
		t.Fatal(err)
	}
	ans := make([]byte, 1)
	if _, err := io.ReadFull(conn, ans); err != nil || ans[0] != '1' {
		t.Fatalf("the socket answered %q, %v", ans, err)
	}
	res, err := gc.Execute(context.Background(), pl)
	if err != nil {
		t.Fatal(err)
	}
	spared := map[string]bool{}
	for _, p := range res.Spared {
		spared[p] = true
	}
	if !spared[x] || !spared[y] {
		t.Errorf("spared %v; want %s and %s among them", res.Spared, x, y)
	}
	delete(dead, x)
	delete(dead, y)
	for p := range spared {
		delete(dead, p)
	}
	if len(dead) == 0 {
		t.Fatal("nothing else was dead: the fixture shows little")
	}
	checkSurvivors(t, rw, b, dead)
	if c, err := lock.DialUnix(context.Background(), b.Layout.GCSocketPath()); err == nil {
		c.Close()
		t.Error("the gc socket is still served after Execute")
	}
}

// TestDeleteSpecificNamesTheEdge: --delete refusing a dead path that
// something outside the set keeps names that path, the path of the set it
// keeps (not always the one asked for: it may keep it through another
// path of the set) and the kind of edge: "Z refers to Y" for a
// reference, the keep-derivations edge of an output to its derivation.
func TestDeleteSpecificNamesTheEdge(t *testing.T) {
	b := storetest.MustBuild(t, storetest.Spec{Paths: 60, Seed: 5, MaxDeps: 3, Files: 1, FileSize: 32, Multi: 0.3, Roots: 2, Generations: 1})
	rw := storetest.Open(t, b.Layout)
	m := loadModel(t, b.Layout.DBPath())
	deadSet := func(o gc.Options) map[string]bool {
		dead := map[string]bool{}
		for _, p := range collect(t, rw, o).Dead {
			dead[p] = true
		}
		return dead
	}
	// Z -> Y -> X, all dead, Y the only referrer of X: deleting X and Y
	// (references alone) is refused because of Z, which refers to Y.
	o := gc.Options{Action: gc.PrintDead}
	dead := deadSet(o)
	onlyReferrer := func(p string) string {
		var only string
		for _, q := range m.referrers[p] {
			switch {
			case q == p:
			case only == "":
				only = q
			default:
				return ""
			}
		}
		return only
	}
	var x, y, z string
	for p := range dead {
		q := onlyReferrer(p)
		for _, r := range m.referrers[q] {
			if x == "" && q != "" && q != r && r != p && dead[q] && dead[r] {
				x, y, z = p, q, r
			}
		}
	}
	if x == "" {
		t.Fatal("no chain of three dead paths: the fixture shows little")
	}
	o.Action, o.Paths, o.ProcDir = gc.DeleteSpecific, []string{x, y}, t.TempDir()
	_, err := gc.Collect(context.Background(), rw, o, nil)
	named := false
	for _, r := range m.referrers[y] {
		named = named || (!dead[r] || r != x && r != y) && err != nil && strings.Contains(err.Error(), r+" refers to "+y+";")
	}
	if !errors.Is(err, gc.ErrAlive) || !named {
		t.Errorf("deleting %s and %s: %v; want an error saying a referrer of %s outside them (%s, ...) refers to it", x, y, err, y, z)
	}
	// A dead derivation nothing refers to, with a dead output it built:
	// kept by that output under keep-derivations.
	o = gc.Options{Action: gc.PrintDead, KeepDerivations: true}
	dead = deadSet(o)
	var drv, out string
	for d, outs := range m.drvOutputs {
		for _, p := range outs {
			if drv == "" && dead[d] && dead[p] && m.deriver[p] == d && len(m.referrers[d]) == 0 && p != d {
				drv, out = d, p
			}
		}
	}
	if drv == "" {
		t.Fatal("no dead derivation with a dead output: the fixture shows little")
	}
	o.Action, o.Paths, o.ProcDir = gc.DeleteSpecific, []string{drv}, t.TempDir()
	_, err = gc.Collect(context.Background(), rw, o, nil)
	named = false
	for _, p := range m.drvOutputs[drv] {
		named = named || err != nil && m.deriver[p] == drv && strings.Contains(err.Error(), p+", an output built by "+drv+", keeps it (keep-derivations)")
	}
	if !errors.Is(err, gc.ErrAlive) || !named || strings.Contains(err.Error(), "refers to") {
		t.Errorf("deleting %s, built %s: %v; want an error naming an output it built and keep-derivations", drv, out, err)
	}
	for _, p := range []string{x, y, drv} {
		if _, err := os.Lstat(b.Layout.RealPath(p)); err != nil {
			t.Errorf("a refused --delete deleted %s: %v", p, err)
		}
	}
}

// TestDeleteSpecificQuotesTheRoot: --delete refusing a path a root keeps
// names the root with its link quoted (a newline in a link's name cannot
// forge a line of the error) and the chain with each edge's kind.
func TestDeleteSpecificQuotesTheRoot(t *testing.T) {
	b := storetest.MustBuild(t, storetest.Spec{Paths: 30, Seed: 5, MaxDeps: 3, Files: 1, FileSize: 32, Roots: 2, Generations: 1})
	rw := storetest.Open(t, b.Layout)
	m := loadModel(t, b.Layout.DBPath())
	dead := collect(t, rw, gc.Options{Action: gc.PrintDead}).Dead
	var top, ref string
	for _, p := range dead {
		for _, r := range m.refs[p] {
			if r != p && top == "" {
				top, ref = p, r
			}
		}
	}
	if top == "" {
		t.Fatal("no dead path with a reference: the fixture shows little")
	}
	link := filepath.Join(b.Layout.GCRootsDir(), "evil\nstorekeeper: forged line")
	if err := os.Symlink(top, link); err != nil {
		t.Fatal(err)
	}
	_, err := gc.Collect(context.Background(), rw, gc.Options{Action: gc.DeleteSpecific, Paths: []string{ref}, ProcDir: t.TempDir()}, nil)
	if !errors.Is(err, gc.ErrAlive) || strings.Contains(err.Error(), "\n") || !strings.Contains(err.Error(), `evil\nstorekeeper`) ||
		!strings.Contains(err.Error(), top+" -> "+ref+" (reference)") {
		t.Errorf("deleting %s, kept by the root %q: %v", ref, link, err)
	}
}
