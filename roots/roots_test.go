package roots_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"storekeeper/lock"
	"storekeeper/roots"
	"storekeeper/store"
	"storekeeper/store/storetest"
)

func fixture(t *testing.T) (*storetest.Built, *store.Store) {
	t.Helper()
	b := storetest.MustBuild(t, storetest.Spec{Paths: 30, Seed: 4, MaxDeps: 3, Files: 1, FileSize: 50, Roots: 6, Generations: 3})
	return b, storetest.OpenRO(t, b.Layout)
}

func find(t *testing.T, s *store.Store, o roots.Options) *roots.Result {
	t.Helper()
	if o.ProcDir == "" {
		o.ProcDir = filepath.Join(t.TempDir(), "no-proc")
	}
	res, err := roots.Find(context.Background(), s, o)
	if err != nil {
		t.Fatal(err)
	}
	return res
}

func TestFindMatchesFixture(t *testing.T) {
	b, s := fixture(t)
	res := find(t, s, roots.Options{NoTemp: true})
	got := map[string]string{}
	for _, r := range res.Roots {
		got[r.Link] = r.Target
	}
	for link, target := range b.RootLinks {
		if got[link] != target {
			t.Errorf("root %s -> %s missing (got %q)", link, target, got[link])
		}
	}
	if len(got) != len(b.RootLinks) {
		t.Errorf("%d roots, want %d: %v", len(got), len(b.RootLinks), res.Roots)
	}
	kinds := map[roots.Kind]int{}
	for _, r := range res.Roots {
		kinds[r.Kind]++
	}
	if kinds[roots.Direct] == 0 || kinds[roots.Indirect] == 0 || kinds[roots.Profile] == 0 {
		t.Errorf("kinds %v", kinds)
	}
	if len(res.Stale) != 1 || res.Stale[0].Removed {
		t.Fatalf("stale %+v", res.Stale)
	}
	if _, err := os.Lstat(res.Stale[0].Link); err != nil {
		t.Fatalf("the stale link was touched: %v", err)
	}
}

func TestPruneStale(t *testing.T) {
	b, ro := fixture(t)
	if _, err := roots.Find(context.Background(), ro, roots.Options{PruneStale: true}); !errors.Is(err, roots.ErrPruneReadOnly) {
		t.Fatalf("prune on a read-only store: %v", err)
	}
	rw := storetest.Open(t, b.Layout)
	res := find(t, rw, roots.Options{PruneStale: true, NoTemp: true})
	if len(res.Stale) != 1 || !res.Stale[0].Removed {
		t.Fatalf("stale %+v", res.Stale)
	}
	if _, err := os.Lstat(res.Stale[0].Link); !os.IsNotExist(err) {
		t.Fatalf("stale link still there: %v", err)
	}
	if res2 := find(t, rw, roots.Options{NoTemp: true}); len(res2.Stale) != 0 || len(res2.Roots) != len(res.Roots) {
		t.Fatalf("second run: %+v", res2)
	}
}

// TestOddRoots: the corner cases of Nix's findRoots.
func TestOddRoots(t *testing.T) {
	b, s := fixture(t)
	gc := b.Layout.GCRootsDir()
	valid := b.Outputs[3]["out"]
	valid2 := b.Outputs[4]["out"]
	invalid := "/nix/store/00000000000000000000000000000000-not-registered"
	sub := filepath.Join(gc, "per-user", "alice")
	os.MkdirAll(sub, 0o755)
	mk := func(target, link string) {
		if err := os.Symlink(target, link); err != nil {
			t.Fatal(err)
		}
	}
	mk(valid+"/bin/f0", filepath.Join(sub, "into-a-path"))                  // below a store path
	mk(invalid, filepath.Join(gc, "invalid"))                               // not valid: skipped
	mk("loop-b", filepath.Join(gc, "loop-a"))                               // a loop
	mk("loop-a", filepath.Join(gc, "loop-b"))                               //
	mk("/etc", filepath.Join(gc, "to-a-dir"))                               // a directory elsewhere: not followed
	mk(valid2, filepath.Join(gc, "new\nline and space"))                    // hostile name
	mk("/nix/store/../../etc/passwd", filepath.Join(gc, "dotdot"))          // not a store path
	mk("/nix/store/"+strings.Repeat("x", 40), filepath.Join(gc, "badhash")) // malformed
	os.WriteFile(filepath.Join(gc, filepath.Base(b.Drvs[0])), nil, 0o644)   // a file named after a valid path
	os.WriteFile(filepath.Join(gc, "plain-file"), nil, 0o644)               // ignored
	res := find(t, s, roots.Options{NoTemp: true})
	got := map[string]string{}
	for _, r := range res.Roots {
		got[r.Link] = r.Target
	}
	want := map[string]string{
		filepath.Join(sub, "into-a-path"):           valid,
		filepath.Join(gc, "new\nline and space"):    valid2,
		filepath.Join(gc, filepath.Base(b.Drvs[0])): b.Drvs[0],
	}
	for l, tgt := range want {
		if got[l] != tgt {
			t.Errorf("%q -> %q missing (got %q)", l, tgt, got[l])
		}
	}
	for _, l := range []string{"invalid", "loop-a", "loop-b", "to-a-dir", "dotdot", "badhash", "plain-file"} {
		if tgt, ok := got[filepath.Join(gc, l)]; ok {
			t.Errorf("%s is not a root but gave %s", l, tgt)
		}
	}
	noted := false
	for _, n := range res.Notes {
		noted = noted || (n.Target == invalid && strings.Contains(n.Message, "invalid"))
	}
	if !noted {
		t.Errorf("the invalid root was not noted: %+v", res.Notes)
	}
}

func TestTempRoots(t *testing.T) {
	b, s := fixture(t)
	tr, err := lock.OpenTempRoots(b.Layout.StateDir)
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	unregistered := "/nix/store/11111111111111111111111111111111-being-built"
	for _, p := range []string{b.Outputs[0]["out"], unregistered} {
		if err := tr.Add(context.Background(), p); err != nil {
			t.Fatal(err)
		}
	}
	res := find(t, s, roots.Options{})
	link := fmt.Sprintf("{temp:%d}", os.Getpid())
	n := 0
	for _, r := range res.Roots {
		if r.Kind == roots.Temp {
			n++
			if r.Link != link || r.PID != os.Getpid() {
				t.Errorf("temp root %+v", r)
			}
		}
	}
	// Like Nix, temp roots count whether or not the path is valid yet.
	if n != 2 {
		t.Fatalf("%d temp roots, want 2: %+v", n, res.Roots)
	}
}

// TestRuntimeRootsFakeProc: every place Nix looks in /proc.
func TestRuntimeRootsFakeProc(t *testing.T) {
	b, s := fixture(t)
	proc := t.TempDir()
	p := func(i int) string { return b.Outputs[i]["out"] }
	pd := filepath.Join(proc, "4242")
	os.MkdirAll(filepath.Join(pd, "fd"), 0o755)
	os.MkdirAll(filepath.Join(proc, "sys/kernel"), 0o755)
	os.MkdirAll(filepath.Join(proc, "self"), 0o755)
	os.Symlink(p(1)+"/bin/f0", filepath.Join(pd, "exe"))
	os.Symlink(p(2), filepath.Join(pd, "cwd"))
	os.Symlink(p(3)+"/share/x (deleted)", filepath.Join(pd, "fd", "3"))
	os.Symlink("socket:[1234]", filepath.Join(pd, "fd", "4"))
	os.WriteFile(filepath.Join(pd, "maps"), []byte(
		"7f0000000000-7f0000001000 r-xp 00000000 08:01 1234      "+p(4)+"/lib/libx.so\n"+
			"7f0000001000-7f0000002000 rw-p 00000000 00:00 0 \n"), 0o644)
	os.WriteFile(filepath.Join(pd, "environ"), []byte("PATH="+p(5)+"/bin:/usr/bin\x00HOME=/root\x00"), 0o644)
	os.WriteFile(filepath.Join(pd, "cmdline"), []byte("myprog\x00--flag\x00"), 0o644)
	os.WriteFile(filepath.Join(proc, "sys/kernel/modprobe"), []byte(p(6)+"/bin/modprobe\n"), 0o644)
	res := find(t, s, roots.Options{NoTemp: true, ProcDir: proc})
	want := map[string]string{
		pd + "/exe":                   p(1),
		pd + "/cwd":                   p(2),
		pd + "/fd/3":                  p(3),
		pd + "/maps":                  p(4),
		pd + "/environ":               p(5),
		proc + "/sys/kernel/modprobe": p(6),
	}
	got := map[string]roots.Root{}
	for _, r := range res.Roots {
		if r.Kind == roots.Runtime {
			got[r.Link] = r
		}
	}
	for link, target := range want {
		r, ok := got[link]
		if !ok || r.Target != target {
			t.Errorf("%s -> %s missing (got %+v)", link, target, r)
			continue
		}
		if link != proc+"/sys/kernel/modprobe" && (r.PID != 4242 || r.Command != "myprog --flag") {
			t.Errorf("%s: pid %d command %q", link, r.PID, r.Command)
		}
	}
	if len(got) != len(want) {
		t.Errorf("%d runtime roots, want %d: %+v", len(got), len(want), got)
	}
}

// TestRootsCancelled: a cancelled context stops Find with its error.
func TestRootsCancelled(t *testing.T) {
	_, s := fixture(t)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := roots.Find(ctx, s, roots.Options{}); !errors.Is(err, context.Canceled) {
		t.Fatalf("got %v", err)
	}
}
