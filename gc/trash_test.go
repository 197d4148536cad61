package gc_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"storekeeper/gc"
	"storekeeper/store"
	"storekeeper/store/storetest"
)

// TestTrashOfARunningCollectionIsLeft: a run directory in the trash whose
// lock another collection holds (it is deleting it right now) is not
// touched; once that lock is free (its collection was killed) the next
// run empties and removes it, and the trash with it.
func TestTrashOfARunningCollectionIsLeft(t *testing.T) {
	b := storetest.MustBuild(t, storetest.Spec{Paths: 10, Seed: 7, MaxDeps: 2, Files: 1, FileSize: 32, Roots: 2, Generations: 1})
	lay := b.Layout
	other := filepath.Join(lay.RealStoreDir, "trash", "run-1-00000000000000aa")
	file := filepath.Join(other, "00000000000000000000000000000000-old", "sub", "f")
	if err := os.MkdirAll(filepath.Dir(file), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(file, make([]byte, 10000), 0o444); err != nil {
		t.Fatal(err)
	}
	var st syscall.Stat_t
	if err := syscall.Stat(file, &st); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(other)
	if err != nil {
		t.Fatal(err)
	}
	if err := lockExclusive(f); err != nil {
		t.Fatal(err)
	}
	rw := storetest.Open(t, lay)
	res := collect(t, rw, gc.Options{Action: gc.Delete})
	if _, err := os.Stat(file); err != nil {
		t.Fatalf("the trash of a running collection was deleted under it: %v", err)
	}
	if res.TrashEmptied != 0 {
		t.Fatalf("trash emptied: %d, want 0", res.TrashEmptied)
	}
	f.Close() // its collection is gone: the directory is abandoned
	res = collect(t, rw, gc.Options{Action: gc.Delete})
	if res.TrashEmptied != 1 {
		t.Fatalf("trash emptied: %d, want 1", res.TrashEmptied)
	}
	if res.BytesFreed < uint64(st.Blocks)*512 {
		t.Fatalf("%d bytes freed, less than the abandoned file's %d", res.BytesFreed, st.Blocks*512)
	}
	if _, err := os.Lstat(filepath.Join(lay.RealStoreDir, "trash")); err == nil {
		t.Fatal("the trash is still there")
	}
}

// regularFiles maps the inode of every regular file under dir to its
// blocks in bytes.
func regularFiles(t *testing.T, dir string) map[uint64]uint64 {
	t.Helper()
	out := map[uint64]uint64{}
	err := filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		if fi.Mode().IsRegular() {
			st := fi.Sys().(*syscall.Stat_t)
			out[st.Ino] = uint64(st.Blocks) * 512
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// waitNotice signals once a collection reports waiting for gc.lock.
type waitNotice struct {
	once    sync.Once
	waiting chan struct{}
}

func (w *waitNotice) Info(msg string) {
	if strings.Contains(msg, "waiting for the big garbage collector lock") {
		w.once.Do(func() { close(w.waiting) })
	}
}
func (*waitNotice) Phase(string, int64, bool) {}
func (*waitNotice) Add(int64)                 {}
func (*waitNotice) Warn(string, string)       {}
func (*waitNotice) Verbose(string)            {}

// pauseAtDeletion blocks a collection when its deletion phase starts
// (gc.lock no longer held exclusively, its trash full) until resume is
// closed.
type pauseAtDeletion struct {
	deleting, resume chan struct{}
}

func (p *pauseAtDeletion) Phase(name string, _ int64, _ bool) {
	if name == "deletion" {
		close(p.deleting)
		<-p.resume
	}
}
func (*pauseAtDeletion) Info(string)         {}
func (*pauseAtDeletion) Add(int64)           {}
func (*pauseAtDeletion) Warn(string, string) {}
func (*pauseAtDeletion) Verbose(string)      {}

// freedSince is what the regular files of before that are gone from dir
// occupied.
func freedSince(t *testing.T, dir string, before map[uint64]uint64) uint64 {
	t.Helper()
	var freed uint64
	after := regularFiles(t, dir)
	for ino, n := range before {
		if _, ok := after[ino]; !ok {
			freed += n
		}
	}
	return freed
}

// TestSecondCollectionWaitsForTheFirst: a collection started while
// another deletes its trash waits for gc.lock until that deletion is
// done (as a second Nix collector would), leaves the other's trash alone,
// and the bytes they report add up to exactly what was freed.
func TestSecondCollectionWaitsForTheFirst(t *testing.T) {
	b := storetest.MustBuild(t, storetest.Spec{Paths: 100, Seed: 41, MaxDeps: 3, Files: 4, FileSize: 3000, Roots: 3, Generations: 2, Invalid: 3})
	lay := b.Layout
	want := map[string]bool{}
	for _, p := range collect(t, storetest.OpenRO(t, lay), gc.Options{Action: gc.PrintDead}).Dead {
		want[p] = true
	}
	before := regularFiles(t, lay.RealStoreDir)
	first, second := storetest.Open(t, lay), storetest.Open(t, lay)
	procDir := t.TempDir()
	pause := &pauseAtDeletion{deleting: make(chan struct{}), resume: make(chan struct{})}
	type outcome struct {
		res *gc.Result
		err error
	}
	firstDone, secondDone := make(chan outcome, 1), make(chan outcome, 1)
	go func() {
		res, err := gc.Collect(context.Background(), first, gc.Options{Action: gc.Delete, ProcDir: procDir}, pause)
		firstDone <- outcome{res, err}
	}()
	resumed := false
	defer func() {
		if !resumed {
			close(pause.resume)
		}
	}()
	select {
	case <-pause.deleting:
	case <-time.After(30 * time.Second):
		t.Fatal("the first collection did not reach its deletion")
	}
	notice := &waitNotice{waiting: make(chan struct{})}
	go func() {
		res, err := gc.Collect(context.Background(), second, gc.Options{Action: gc.Delete, ProcDir: procDir}, notice)
		secondDone <- outcome{res, err}
	}()
	select {
	case <-notice.waiting:
	case o := <-secondDone:
		t.Fatalf("the second collection ran while the first was deleting its trash (error %v)", o.err)
	case <-time.After(30 * time.Second):
		t.Fatal("the second collection neither ran nor waited for gc.lock")
	}
	select {
	case o := <-secondDone:
		t.Fatalf("the second collection ran while the first was deleting its trash (error %v)", o.err)
	case <-time.After(200 * time.Millisecond):
	}
	close(pause.resume)
	resumed = true
	o1, o2 := <-firstDone, <-secondDone
	if o1.err != nil || o2.err != nil {
		t.Fatalf("first: %v; second: %v", o1.err, o2.err)
	}
	if o2.res.TrashEmptied != 0 || o2.res.PathsDeleted != 0 {
		t.Errorf("the second collection deleted %d paths and %d trash entries; the first had deleted everything", o2.res.PathsDeleted, o2.res.TrashEmptied)
	}
	checkSurvivors(t, first, b, want)
	if got, freed := o1.res.BytesFreed+o2.res.BytesFreed, freedSince(t, lay.RealStoreDir, before); got != freed {
		t.Fatalf("the collections report %d + %d = %d bytes freed; %d were", o1.res.BytesFreed, o2.res.BytesFreed, got, freed)
	}
}

// TestTwoCollectionsAtOnce: two collections started together on one store
// (each with its own gc.lock descriptor, as two processes) both succeed,
// leave the survivors one collection leaves, and the bytes they report
// add up to exactly what was freed.
func TestTwoCollectionsAtOnce(t *testing.T) {
	for trial := 0; trial < 3; trial++ {
		b := storetest.MustBuild(t, storetest.Spec{Paths: 120, Seed: uint64(50 + trial), MaxDeps: 3, Files: 4, FileSize: 3000, Roots: 3, Generations: 2, Invalid: 3})
		lay := b.Layout
		want := map[string]bool{}
		for _, p := range collect(t, storetest.OpenRO(t, lay), gc.Options{Action: gc.PrintDead}).Dead {
			want[p] = true
		}
		before := regularFiles(t, lay.RealStoreDir)
		stores := [2]*store.Store{storetest.Open(t, lay), storetest.Open(t, lay)}
		procDir := t.TempDir()
		var results [2]*gc.Result
		var errs [2]error
		var wg sync.WaitGroup
		start := make(chan struct{})
		for i := range stores {
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-start
				results[i], errs[i] = gc.Collect(context.Background(), stores[i], gc.Options{Action: gc.Delete, ProcDir: procDir}, nil)
			}()
		}
		close(start)
		wg.Wait()
		for i, err := range errs {
			if err != nil {
				t.Fatalf("trial %d: collection %d: %v", trial, i, err)
			}
		}
		checkSurvivors(t, stores[0], b, want)
		if got, freed := results[0].BytesFreed+results[1].BytesFreed, freedSince(t, lay.RealStoreDir, before); got != freed {
			t.Fatalf("trial %d: the collections report %d + %d = %d bytes freed; %d were", trial, results[0].BytesFreed, results[1].BytesFreed, got, freed)
		}
	}
}

// TestForeignTrashIsRefused: a <store>/trash that storekeeper did not make
// (a symlink, a file, a directory of another user) is neither followed,
// written into nor emptied: the collection fails before changing
// anything, with a message naming it and saying what to do.
func TestForeignTrashIsRefused(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to give the trash to another user")
	}
	for _, kind := range []string{"symlink", "file", "other user's"} {
		t.Run(kind, func(t *testing.T) {
			b := storetest.MustBuild(t, storetest.Spec{Paths: 10, Seed: 7, MaxDeps: 2, Files: 1, FileSize: 32, Roots: 2, Generations: 1, Invalid: 1})
			lay := b.Layout
			trash := filepath.Join(lay.RealStoreDir, "trash")
			elsewhere := filepath.Join(t.TempDir(), "elsewhere")
			victim := filepath.Join(elsewhere, "00000000000000000000000000000000-victim")
			if err := os.MkdirAll(victim, 0o755); err != nil {
				t.Fatal(err)
			}
			switch kind {
			case "symlink":
				os.Symlink(elsewhere, trash)
			case "file":
				os.WriteFile(trash, []byte("x"), 0o644)
			default:
				os.Mkdir(trash, 0o755)
				os.Mkdir(filepath.Join(trash, "00000000000000000000000000000000-victim"), 0o755)
				os.Chown(trash, 65534, 65534)
			}
			deadBefore := fmt.Sprint(collect(t, storetest.OpenRO(t, lay), gc.Options{Action: gc.PrintDead}).Dead)
			rw := storetest.Open(t, lay)
			_, err := gc.Collect(context.Background(), rw, gc.Options{Action: gc.Delete, ProcDir: t.TempDir()}, nil)
			if err == nil || !strings.Contains(err.Error(), trash) || !strings.Contains(err.Error(), "remove it") {
				t.Fatalf("got %v; want an error naming %s and saying to remove it", err, trash)
			}
			if _, err := os.Stat(victim); err != nil {
				t.Fatalf("the symlink's target was emptied: %v", err)
			}
			if kind == "other user's" {
				if _, err := os.Stat(filepath.Join(trash, "00000000000000000000000000000000-victim")); err != nil {
					t.Fatalf("the other user's directory was emptied: %v", err)
				}
			}
			if dead := fmt.Sprint(collect(t, storetest.OpenRO(t, lay), gc.Options{Action: gc.PrintDead}).Dead); dead != deadBefore || dead == "[]" {
				t.Fatalf("the failed collection deleted something: dead before %s, after %s", deadBefore, dead)
			}
		})
	}
}

// TestTrashRemovedWhileOpened: a trash directory that another collector
// removes between this run's open and its listing (the kernel then lists
// it with ENOENT) is no error: the collection goes on and succeeds.
func TestTrashRemovedWhileOpened(t *testing.T) {
	b := storetest.MustBuild(t, storetest.Spec{Paths: 10, Seed: 7, MaxDeps: 2, Files: 1, FileSize: 32, Roots: 2, Generations: 1})
	lay := b.Layout
	trash := filepath.Join(lay.RealStoreDir, "trash")
	if err := os.Mkdir(trash, 0o700); err != nil {
		t.Fatal(err)
	}
	removed := false
	gc.SetTestHookTrashOpened(func() {
		if !removed {
			removed = os.Remove(trash) == nil
		}
	})
	defer gc.SetTestHookTrashOpened(nil)
	rw := storetest.Open(t, lay)
	collect(t, rw, gc.Options{Action: gc.Delete})
	if !removed {
		t.Fatal("the hook did not remove the trash")
	}
}
