package gc_test

import (
	"context"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"storekeeper/gc"
	"storekeeper/lock"
	"storekeeper/store"
)

// setMtime sets the mtime (and atime) of the link p itself.
func setMtime(t *testing.T, p string, at time.Time) {
	t.Helper()
	ts := unix.NsecToTimespec(at.UnixNano())
	if err := unix.UtimesNanoAt(unix.AT_FDCWD, p, []unix.Timespec{ts, ts}, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		t.Fatal(err)
	}
}

func numbers(rs []gc.RemovedGeneration) []int {
	out := []int{}
	for _, r := range rs {
		out = append(out, r.Number)
	}
	return out
}

// TestKeepPolicy: generations removed by --keep N, --keep-since D and
// both (a generation either keeps stays); the current one always stays,
// also when it is old and not among the newest; --dry-run removes
// nothing and lists the same.
func TestKeepPolicy(t *testing.T) {
	day := 24 * time.Hour
	now := time.Now()
	// Generations 1..6: 40, 30, 20, 10, 3 and 1 days old; current: 2.
	ages := []time.Duration{40 * day, 30 * day, 20 * day, 10 * day, 3 * day, 1 * day}
	for _, c := range []struct {
		name      string
		keep      int
		keepSince time.Duration
		want      []int
	}{
		{"keep1", 1, 0, []int{1, 3, 4, 5}},
		{"keep3", 3, 0, []int{1, 3}},
		{"keep10", 10, 0, []int{}},
		{"since5d", 0, 5 * day, []int{1, 3, 4}},
		{"since15d", 0, 15 * day, []int{1, 3}},
		{"since1h", 0, time.Hour, []int{1, 3, 4, 5, 6}},
		{"keep1-since15d", 1, 15 * day, []int{1, 3}},
		{"keep4-since5d", 4, 5 * day, []int{1}},
	} {
		t.Run(c.name, func(t *testing.T) {
			for _, dry := range []bool{true, false} {
				dir := filepath.Join(t.TempDir(), "profiles")
				prof := profile(t, dir, "profile", ages, 2, now)
				got, err := gc.DeleteGenerations(context.Background(), dir, gc.GenerationOptions{Keep: c.keep, KeepSince: c.keepSince, DryRun: dry, Now: now})
				if err != nil {
					t.Fatal(err)
				}
				if !reflect.DeepEqual(numbers(got), c.want) {
					t.Fatalf("dry-run %v: removed %v, want %v", dry, numbers(got), c.want)
				}
				var left []int
				for g := 1; g <= 6; g++ {
					if _, err := os.Lstat(fmt.Sprintf("%s-%d-link", prof, g)); err == nil {
						left = append(left, g)
					}
				}
				wantLeft := 6
				if !dry {
					wantLeft -= len(c.want)
				}
				if len(left) != wantLeft {
					t.Fatalf("dry-run %v: left %v", dry, left)
				}
				if _, err := os.Lstat(prof + "-2-link"); err != nil {
					t.Fatalf("the current generation was removed: %v", err)
				}
			}
		})
	}
}

// TestKeepProfiles: --profile limits the run to the profiles given; a
// path that is not a profile, a generation link, or one reached through
// a symbolic link is refused before any profile is changed.
func TestKeepProfiles(t *testing.T) {
	day := 24 * time.Hour
	now := time.Now()
	ages := []time.Duration{3 * day, 2 * day, day}
	top := t.TempDir()
	a := profile(t, filepath.Join(top, "a"), "profile", ages, 3, now)
	b := profile(t, filepath.Join(top, "b"), "profile", ages, 3, now)
	got, err := gc.DeleteGenerations(context.Background(), "/nonexistent", gc.GenerationOptions{Keep: 1, Profiles: []string{a, a}, Now: now})
	if err != nil || !reflect.DeepEqual(numbers(got), []int{1, 2}) {
		t.Fatalf("--profile a: %v, %v", numbers(got), err)
	}
	if _, err := os.Lstat(b + "-1-link"); err != nil {
		t.Fatalf("profile b was touched: %v", err)
	}
	if err := os.Symlink(filepath.Join(top, "b"), filepath.Join(top, "via")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(b, filepath.Join(top, "b-alias")); err != nil {
		t.Fatal(err)
	}
	plain := filepath.Join(top, "plain")
	os.WriteFile(plain, nil, 0o644)
	for _, bad := range []string{
		filepath.Join(top, "via", "profile"), // through a symlinked directory
		b + "-1-link",                        // a generation
		filepath.Join(top, "b-alias"),        // a link to a profile
		plain,                                // not a link
		filepath.Join(top, "missing"),
		"relative/profile",
	} {
		got, err := gc.DeleteGenerations(context.Background(), "/nonexistent", gc.GenerationOptions{Keep: 1, Profiles: []string{b, bad}, Now: now})
		if !errors.Is(err, gc.ErrNotProfile) || len(got) != 0 {
			t.Errorf("--profile %s: %v, %v; want ErrNotProfile and nothing removed", bad, numbers(got), err)
		}
	}
	if _, err := os.Lstat(b + "-1-link"); err != nil {
		t.Fatalf("profile b was changed by a refused run: %v", err)
	}
	// The root directory: refused as a directory, not called a generation.
	_, err = gc.DeleteGenerations(context.Background(), "/nonexistent", gc.GenerationOptions{Keep: 1, Profiles: []string{"/"}, Now: now})
	if !errors.Is(err, gc.ErrNotProfile) || strings.Contains(err.Error(), "generation link") || !strings.Contains(err.Error(), "is a directory") {
		t.Errorf("--profile /: %v; want ErrNotProfile saying it is a directory", err)
	}
}

// TestPruneAutoRoots: only auto links whose indirect root (a symlink into
// the store) is older than the cut-off go; recent ones, stale ones,
// targets that are not symlinks or point outside the store stay; the
// user's link is never removed; --dry-run lists the same and changes
// nothing.
func TestPruneAutoRoots(t *testing.T) {
	day := 24 * time.Hour
	now := time.Now()
	for _, dry := range []bool{true, false} {
		top := t.TempDir()
		auto := filepath.Join(top, "gcroots", "auto")
		home := filepath.Join(top, "home")
		os.MkdirAll(auto, 0o755)
		os.MkdirAll(home, 0o755)
		mk := func(name, target string, age time.Duration, file bool) {
			link := filepath.Join(home, name)
			if file {
				os.WriteFile(link, nil, 0o644)
			} else if target != "" {
				if err := os.Symlink(target, link); err != nil {
					t.Fatal(err)
				}
				setMtime(t, link, now.Add(-age))
			}
			if err := os.Symlink(link, filepath.Join(auto, "auto-"+name)); err != nil {
				t.Fatal(err)
			}
		}
		mk("old", "/nix/store/00000000000000000000000000000001-a", 40*day, false)
		mk("new", "/nix/store/00000000000000000000000000000002-b", 1*day, false)
		mk("outside", "/etc/passwd", 40*day, false)
		mk("gone", "", 0, false)
		mk("file", "", 40*day, true)
		mk("profile-3-link", "/nix/store/00000000000000000000000000000003-env", 40*day, false) // a generation elsewhere
		got, err := gc.PruneAutoRoots(context.Background(), auto, gc.AutoRootOptions{Since: 30 * day, StoreDir: "/nix/store", DryRun: dry, Now: now})
		if err != nil {
			t.Fatal(err)
		}
		if len(got) != 1 || got[0].Link != filepath.Join(auto, "auto-old") || got[0].Target != filepath.Join(home, "old") ||
			got[0].StorePath != "/nix/store/00000000000000000000000000000001-a" || got[0].MTime != now.Add(-40*day).Unix() {
			t.Fatalf("dry-run %v: %+v", dry, got)
		}
		for _, n := range []string{"old", "new", "outside", "gone", "file", "profile-3-link"} {
			_, err := os.Lstat(filepath.Join(auto, "auto-"+n))
			if gone := err != nil; gone != (n == "old" && !dry) {
				t.Errorf("dry-run %v: auto-%s removed: %v", dry, n, gone)
			}
		}
		if _, err := os.Lstat(filepath.Join(home, "old")); err != nil {
			t.Errorf("the user's link was removed: %v", err)
		}
	}
	if _, err := gc.PruneAutoRoots(context.Background(), "/nonexistent/auto", gc.AutoRootOptions{Since: day, StoreDir: "/nix/store"}); err != nil {
		t.Errorf("a missing gcroots/auto: %v", err)
	}
}

// TestAutoNeed: Nix 2.8's autoGC decision.
func TestAutoNeed(t *testing.T) {
	const G = 1 << 30
	for _, c := range []struct {
		a       gc.Auto
		avail   uint64
		collect bool
		max     uint64
	}{
		{gc.Auto{MinFree: gc.FreeSpec{}, MaxFree: gc.Unlimited}, 0, false, 0},                 // min-free 0: never
		{gc.Auto{MinFree: gc.FreeSpec{Bytes: 5 * G}, MaxFree: gc.Unlimited}, 6 * G, false, 0}, // above
		{gc.Auto{MinFree: gc.FreeSpec{Bytes: 5 * G}, MaxFree: gc.Unlimited}, 5 * G, false, 0}, // equal: above
		{gc.Auto{MinFree: gc.FreeSpec{Bytes: 5 * G}, MaxFree: gc.Unlimited}, 4 * G, true, 0},  // no limit
		{gc.Auto{MinFree: gc.FreeSpec{Bytes: 5 * G}, MaxFree: gc.FreeSpec{Bytes: 8 * G}}, 4 * G, true, 4 * G},
		{gc.Auto{MinFree: gc.FreeSpec{Bytes: 5 * G}, MaxFree: gc.FreeSpec{Bytes: 3 * G}}, 4 * G, false, 0}, // above max-free
		{gc.Auto{MinFree: gc.FreeSpec{Percent: 10, IsPercent: true}, MaxFree: gc.FreeSpec{Percent: 20, IsPercent: true}}, 5 * G, true, 15 * G},
		{gc.Auto{MinFree: gc.FreeSpec{Bytes: math.MaxUint64}, MaxFree: gc.Unlimited}, 4 * G, true, 0},
	} {
		collect, max := c.a.Need(c.avail, 100*G)
		if collect != c.collect || max != c.max {
			t.Errorf("%+v avail %d: %v %d, want %v %d", c.a, c.avail, collect, max, c.collect, c.max)
		}
	}
}

// TestAutoLock: a second AcquireAutoLock fails with ErrAutoRunning while
// the first is held, and succeeds once it is released; a symlinked lock
// file is refused.
func TestAutoLock(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "storekeeper")
	l, err := gc.AcquireAutoLock(dir)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := gc.AcquireAutoLock(dir); !errors.Is(err, gc.ErrAutoRunning) {
		t.Fatalf("second lock: %v", err)
	}
	l.Release()
	l2, err := gc.AcquireAutoLock(dir)
	if err != nil {
		t.Fatalf("after release: %v", err)
	}
	l2.Release()
	l2.Release()
	dir2 := t.TempDir()
	target := filepath.Join(dir2, "target")
	os.Symlink(target, filepath.Join(dir2, gc.AutoLockName))
	if _, err := gc.AcquireAutoLock(dir2); err == nil || errors.Is(err, gc.ErrAutoRunning) {
		t.Fatalf("symlinked lock file: %v", err)
	}
	if _, err := os.Lstat(target); err == nil {
		t.Fatal("the symlink's target was created")
	}
}

// TestPruneAutoRootsWaitsForCollector: links are removed only while no
// collector can run (gc.lock held shared, as Nix's builders hold it to
// add a root): an auto link removed and put back because its root was
// re-created meanwhile is never missing while a `nix-store --gc` reads
// the roots. While another process holds gc.lock exclusively nothing is
// removed; once it is released the old root goes. --dry-run does not
// wait.
func TestPruneAutoRootsWaitsForCollector(t *testing.T) {
	day := 24 * time.Hour
	now := time.Now()
	top := t.TempDir()
	state := filepath.Join(top, "var", "nix")
	auto := filepath.Join(state, "gcroots", "auto")
	home := filepath.Join(top, "home")
	os.MkdirAll(auto, 0o755)
	os.MkdirAll(home, 0o755)
	link := filepath.Join(home, "result")
	if err := os.Symlink("/nix/store/00000000000000000000000000000001-a", link); err != nil {
		t.Fatal(err)
	}
	setMtime(t, link, now.Add(-40*day))
	autoLink := filepath.Join(auto, "x")
	if err := os.Symlink(link, autoLink); err != nil {
		t.Fatal(err)
	}
	held, err := lock.AcquireGCLock(context.Background(), state, lock.Exclusive, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	opts := gc.AutoRootOptions{Since: 30 * day, StoreDir: "/nix/store", StateDir: state, Now: now}
	dry := opts
	dry.DryRun = true
	if got, err := gc.PruneAutoRoots(context.Background(), auto, dry); err != nil || len(got) != 1 {
		t.Fatalf("dry-run with gc.lock held: %+v, %v", got, err)
	}
	done := make(chan error, 1)
	go func() {
		_, err := gc.PruneAutoRoots(context.Background(), auto, opts)
		done <- err
	}()
	select {
	case err := <-done:
		held.Release()
		t.Fatalf("PruneAutoRoots ran while a collector held gc.lock (err %v)", err)
	case <-time.After(500 * time.Millisecond):
	}
	if _, err := os.Lstat(autoLink); err != nil {
		t.Fatalf("the auto link was removed while a collector held gc.lock: %v", err)
	}
	held.Release()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("PruneAutoRoots did not go on once gc.lock was released")
	}
	if _, err := os.Lstat(autoLink); err == nil {
		t.Fatal("the old auto link was not removed once gc.lock was free")
	}
	// Cancelled while waiting: an error wrapping ctx.Err(), nothing removed.
	if err := os.Symlink(link, autoLink); err != nil {
		t.Fatal(err)
	}
	held, err = lock.AcquireGCLock(context.Background(), state, lock.Exclusive, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer held.Release()
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	if _, err := gc.PruneAutoRoots(ctx, auto, opts); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("cancelled while waiting for gc.lock: %v", err)
	}
	if _, err := os.Lstat(autoLink); err != nil {
		t.Fatalf("a cancelled run removed the auto link: %v", err)
	}
}

// TestAutoLockStateDir: the state directory is never followed when it is
// a symbolic link (the lock file is not created where it points), and as
// root it is not created in a directory another user controls.
func TestAutoLockStateDir(t *testing.T) {
	top := t.TempDir()
	elsewhere := filepath.Join(top, "elsewhere")
	os.MkdirAll(elsewhere, 0o755)
	parent := filepath.Join(top, "var")
	os.MkdirAll(parent, 0o755)
	state := filepath.Join(parent, "storekeeper")
	if err := os.Symlink(elsewhere, state); err != nil {
		t.Fatal(err)
	}
	if l, err := gc.AcquireAutoLock(state); err == nil || errors.Is(err, gc.ErrAutoRunning) {
		l.Release()
		t.Fatalf("symlinked state dir: %v", err)
	}
	if _, err := os.Lstat(filepath.Join(elsewhere, gc.AutoLockName)); err == nil {
		t.Fatal("the lock file was created where the symlinked state dir points")
	}
	if unix.Geteuid() != 0 {
		t.Skip("the rest needs root")
	}
	os.Remove(state)
	if err := os.Chown(parent, 65534, 65534); err != nil {
		t.Fatal(err)
	}
	if l, err := gc.AcquireAutoLock(state); err == nil || errors.Is(err, gc.ErrAutoRunning) {
		l.Release()
		t.Fatalf("state dir in a directory uid 65534 owns: %v", err)
	}
	if _, err := os.Lstat(state); err == nil {
		t.Fatal("root created the state dir in a directory another user owns")
	}
	// A state dir root made there beforehand is used.
	os.Chown(parent, 0, 0)
	os.Mkdir(state, 0o755)
	os.Chown(parent, 65534, 65534)
	l, err := gc.AcquireAutoLock(state)
	if err != nil {
		t.Fatalf("existing state dir: %v", err)
	}
	l.Release()
}

// TestIgnoreRootsDryRunOnly: Options.IgnoreRoots (a dry run's "as if the
// policies had removed these") is refused for a collection that deletes:
// a root it names would otherwise not keep its paths alive.
func TestIgnoreRootsDryRunOnly(t *testing.T) {
	top := t.TempDir()
	s := &store.Store{Layout: store.Layout{StoreDir: top + "/nix/store", RealStoreDir: top + "/nix/store", StateDir: top + "/nix/var/nix"}}
	for _, a := range []gc.Action{gc.Delete, gc.DeleteSpecific} {
		_, err := gc.Collect(context.Background(), s, gc.Options{Action: a, IgnoreRoots: map[string]bool{"/home/u/result": true}}, nil)
		if err == nil || !strings.Contains(err.Error(), "only for a dry run") {
			t.Errorf("action %v with IgnoreRoots, not a dry run: %v", a, err)
		}
		if _, err := gc.NewPlan(context.Background(), s, gc.Options{Action: a, IgnoreRoots: map[string]bool{"/home/u/result": true}}, nil); err == nil || !strings.Contains(err.Error(), "only for a dry run") {
			t.Errorf("NewPlan, action %v with IgnoreRoots, not a dry run: %v", a, err)
		}
	}
}
