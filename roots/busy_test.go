package roots_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"testing"

	"storekeeper/internal/procfs"
	"storekeeper/roots"
	"storekeeper/store"
	"storekeeper/store/storetest"
)

// fakeProc is one process of a fake /proc tree.
type fakeProc struct {
	uid     int
	state   byte   // 0: S
	flags   uint64 // PF_* (0x00200000: a kernel thread)
	cmdline string
	links   map[string]string // exe, cwd, root -> target
	fds     map[string]string // fd number -> target
	maps    string
	environ string
}

// writeFakeProc writes p as proc/PID, the files Busy and Find read.
func writeFakeProc(t testing.TB, proc string, pid int, p fakeProc) {
	t.Helper()
	dir := filepath.Join(proc, fmt.Sprint(pid))
	if err := os.MkdirAll(filepath.Join(dir, "fd"), 0o755); err != nil {
		t.Fatal(err)
	}
	state := p.state
	if state == 0 {
		state = 'S'
	}
	files := map[string]string{
		"stat":    fmt.Sprintf("%d (prog) %c 1 %d %d 0 -1 %d 0 0 0 0 0 0 0 0 20 0 1 0 100 0 0\n", pid, state, pid, pid, p.flags),
		"status":  fmt.Sprintf("Name:\tprog\nUid:\t%d\t%d\t%d\t%d\n", p.uid, p.uid, p.uid, p.uid),
		"cmdline": p.cmdline,
		"maps":    p.maps,
		"environ": p.environ,
	}
	for name, data := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	for name, target := range p.links {
		if err := os.Symlink(target, filepath.Join(dir, name)); err != nil {
			t.Fatal(err)
		}
	}
	for fd, target := range p.fds {
		if err := os.Symlink(target, filepath.Join(dir, "fd", fd)); err != nil {
			t.Fatal(err)
		}
	}
}

func busy(t *testing.T, s *store.Store, proc string) *roots.BusyReport {
	t.Helper()
	r, err := roots.Busy(context.Background(), s, roots.BusyOptions{ProcDir: proc})
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// busyFixture is a store (at a root of its own: StoreDir /nix/store,
// RealStoreDir under the temp dir) and a fake /proc with hostile
// entries: every way of holding a path, a symlinked descriptor and a
// mapping outside the store, the store directory itself, .links, a
// deleted file and a deleted mapping, a path named only under the logical
// store directory (this machine's own /nix/store, not this store),
// control characters in a command line and a variable name, a kernel
// thread, a zombie and a process that vanished.
func busyFixture(t *testing.T) (b *storetest.Built, s *store.Store, proc string, p func(int) string) {
	b, s = fixture(t)
	lay := b.Layout
	if lay.RealStoreDir == lay.StoreDir {
		t.Fatalf("the fixture's store is at its logical directory %s: it should be under a root", lay.StoreDir)
	}
	p = func(i int) string { return b.Outputs[i]["out"] }
	rp := func(i int) string { return lay.RealStoreDir + strings.TrimPrefix(p(i), lay.StoreDir) }
	proc = t.TempDir()
	writeFakeProc(t, proc, 100, fakeProc{
		cmdline: "evil\x1b]0;title\x07\nprog\x00--flag\x00",
		links:   map[string]string{"exe": rp(1) + "/bin/f0", "cwd": rp(2), "root": rp(3)},
		fds: map[string]string{
			"0":  rp(4) + "/share/x",
			"1":  "socket:[1234]",
			"2":  lay.RealStoreDir + "/.links/0abc",
			"7":  "/etc/passwd", // outside the store
			"8":  lay.RealStoreDir + "/../../etc/passwd",
			"10": rp(4) + "/share/y (deleted)",
		},
		maps: "7f0000000000-7f0000001000 r-xp 00000000 08:01 1234      " + rp(5) + "/lib/libx.so\n" +
			"7f0000001000-7f0000002000 r--p 00001000 08:01 1234      " + rp(5) + "/lib/libx.so\n" +
			"7f0000002000-7f0000003000 r--p 00000000 08:01 1235      " + rp(6) + "/lib/gone.so (deleted)\n" +
			"7f0000003000-7f0000004000 r--p 00000000 08:01 1236      " + p(10) + "/lib/liby.so\n" +
			"7f0000004000-7f0000005000 r--p 00000000 08:01 1237      /usr/lib/libc.so.6\n" +
			"7f0000005000-7f0000006000 rw-p 00000000 00:00 0 \n" +
			"7f0000006000-7f0000007000 rw-p 00000000 00:00 0      [heap]\n",
		environ: "PATH=" + rp(7) + "/bin:/usr/bin:" + rp(7) + "/sbin\x00SUDO_COMMAND=" + rp(8) + "/bin/x --y\x00" +
			"EVIL\x1b[31m\n=" + rp(9) + "\x00HOME=/root\x00NOEQUALS" + rp(11) + "\x00",
	})
	writeFakeProc(t, proc, 101, fakeProc{uid: 4242424, cmdline: "sh\x00", links: map[string]string{"cwd": lay.RealStoreDir, "exe": "/bin/sh"}})
	writeFakeProc(t, proc, 102, fakeProc{flags: 0x00200000, links: map[string]string{"exe": rp(12)}})       // a kernel thread
	writeFakeProc(t, proc, 103, fakeProc{state: 'Z', cmdline: "", links: map[string]string{"cwd": rp(12)}}) // a zombie
	if err := os.Symlink("/nonexistent/104", filepath.Join(proc, "104")); err != nil {                      // vanished
		t.Fatal(err)
	}
	writeFakeProc(t, proc, 105, fakeProc{cmdline: "gone\x00", links: map[string]string{"cwd": rp(12)}})
	if err := os.Remove(filepath.Join(proc, "105", "stat")); err != nil { // exited between listing and reading
		t.Fatal(err)
	}
	os.MkdirAll(filepath.Join(proc, "self"), 0o755)
	os.MkdirAll(filepath.Join(proc, "sys", "kernel"), 0o755)
	os.WriteFile(filepath.Join(proc, "sys", "kernel", "modprobe"), []byte(rp(13)+"/bin/modprobe\n"), 0o644)
	return b, s, proc, p
}

// TestBusyFakeProc: every way a process holds a path, grouped by path,
// in order, valid or not, each with whether it makes a runtime root.
func TestBusyFakeProc(t *testing.T) {
	b, s, proc, p := busyFixture(t)
	lay := b.Layout
	rp := func(i int) string { return lay.RealStoreDir + strings.TrimPrefix(p(i), lay.StoreDir) }
	r := busy(t, s, proc)
	evil := "evil\x1b]0;title\x07\nprog --flag"
	h := func(via, link, file, env string, root bool) roots.BusyHolder {
		return roots.BusyHolder{PID: 100, User: "root", Command: evil, Via: via, Link: proc + "/100/" + link, File: file, Env: env, RuntimeRoot: root}
	}
	want := []roots.BusyPath{
		{Path: lay.StoreDir, Holders: []roots.BusyHolder{{PID: 101, User: "4242424", Command: "sh", Via: "cwd", Link: proc + "/101/cwd", File: lay.RealStoreDir}}},
		{Path: lay.StoreDir + "/.links", Holders: []roots.BusyHolder{h("fd", "fd/2", lay.RealStoreDir+"/.links/0abc", "", false)}},
		{Path: p(1), Valid: true, RuntimeRoot: true, Holders: []roots.BusyHolder{h("exe", "exe", rp(1)+"/bin/f0", "", true)}},
		{Path: p(2), Valid: true, RuntimeRoot: true, Holders: []roots.BusyHolder{h("cwd", "cwd", rp(2), "", true)}},
		{Path: p(3), Valid: true, Holders: []roots.BusyHolder{h("root", "root", rp(3), "", false)}},
		{Path: p(4), Valid: true, RuntimeRoot: true, Holders: []roots.BusyHolder{
			h("fd", "fd/0", rp(4)+"/share/x", "", true), h("fd", "fd/10", rp(4)+"/share/y (deleted)", "", true)}},
		{Path: p(5), Valid: true, RuntimeRoot: true, Holders: []roots.BusyHolder{h("maps", "maps", rp(5)+"/lib/libx.so", "", true)}},
		{Path: p(6), Valid: true, Holders: []roots.BusyHolder{h("maps", "maps", rp(6)+"/lib/gone.so (deleted)", "", false)}},
		{Path: p(7), Valid: true, RuntimeRoot: true, Holders: []roots.BusyHolder{h("environ", "environ", rp(7), "PATH", true)}},
		{Path: p(8), Valid: true, RuntimeRoot: true, Holders: []roots.BusyHolder{h("environ", "environ", rp(8), "SUDO_COMMAND", true)}},
		{Path: p(9), Valid: true, RuntimeRoot: true, Holders: []roots.BusyHolder{h("environ", "environ", rp(9), "EVIL\x1b[31m\n", true)}},
		{Path: p(11), Valid: true, RuntimeRoot: true, Holders: []roots.BusyHolder{h("environ", "environ", rp(11), "", true)}},
	}
	sort.Slice(want, func(i, j int) bool { return want[i].Path < want[j].Path })
	if len(r.Paths) != len(want) {
		t.Errorf("%d paths, want %d", len(r.Paths), len(want))
	}
	for i := range max(len(r.Paths), len(want)) {
		var got, w roots.BusyPath
		if i < len(r.Paths) {
			got = r.Paths[i]
		}
		if i < len(want) {
			w = want[i]
		}
		if !reflect.DeepEqual(got, w) {
			t.Errorf("path %d:\n got  %+v\n want %+v", i, got, w)
		}
	}
	// 100 and 101; not the kernel thread, the zombie or the vanished ones.
	if r.Processes != 2 || r.Holding != 2 || r.Uninspectable != 0 || len(r.Notes) != 0 || r.StoreDir != lay.RealStoreDir {
		t.Errorf("processes %d, holding %d, uninspectable %d, notes %q, store dir %s", r.Processes, r.Holding, r.Uninspectable, r.Notes, r.StoreDir)
	}
	// The same answer twice: deterministic.
	if again := busy(t, s, proc); !reflect.DeepEqual(again, r) {
		t.Errorf("a second run differs:\n%+v\n%+v", again, r)
	}
}

// TestBusyAgreesWithFind: a holder is a runtime root exactly when Find
// lists a runtime root with its link and target (what names the logical
// store directory only, here this machine's own store, and the kernel's
// files aside: Busy looks at the store's real directory).
func TestBusyAgreesWithFind(t *testing.T) {
	_, s, proc, p := busyFixture(t)
	res := find(t, s, roots.Options{NoTemp: true, ProcDir: proc})
	type key struct{ link, target string }
	found := map[key]roots.Root{}
	for _, x := range res.Roots {
		// Find reads every process, as Nix does; in this fake tree the
		// kernel thread, the zombie and the process gone meanwhile have
		// links a real one would not.
		if x.Kind == roots.Runtime && x.Via != "kernel" && x.Target != p(10) && x.PID < 102 {
			found[key{x.Link, x.Target}] = x
		}
	}
	if _, ok := found[key{proc + "/100/maps", p(5)}]; !ok {
		t.Fatalf("Find has no maps root for %s: %+v", p(5), res.Roots)
	}
	seen := map[key]bool{}
	for _, bp := range busy(t, s, proc).Paths {
		for _, h := range bp.Holders {
			k := key{h.Link, bp.Path}
			x, ok := found[k]
			if ok != h.RuntimeRoot {
				t.Errorf("%s %s: busy says runtime root %v, Find lists it: %v", h.Link, bp.Path, h.RuntimeRoot, ok)
			}
			if ok && !seen[k] && (x.PID != h.PID || x.User != h.User || x.Command != h.Command || x.Via != h.Via || x.Env != h.Env) {
				t.Errorf("%s %s: Find %+v, busy %+v", h.Link, bp.Path, x, h)
			}
			seen[k] = seen[k] || h.RuntimeRoot
		}
	}
	for k := range found {
		if !seen[k] {
			t.Errorf("Find's runtime root %v is no busy holder", k)
		}
	}
}

// TestRuntimeRootUserAndEnv: Find names a runtime root's user (the uid
// in decimal when it has no name) and, for environ, the first variable
// that names the path; the set of roots is Nix's (a deleted mapping and
// the root directory are none).
func TestRuntimeRootUserAndEnv(t *testing.T) {
	_, s, proc, p := busyFixture(t)
	writeFakeProc(t, proc, 200, fakeProc{uid: 4242424, cmdline: "sudo\x00x\x00",
		environ: "A=1\x00SUDO_COMMAND=" + p(14) + "/bin/x\x00PATH=" + p(14) + "/bin\x00"})
	res := find(t, s, roots.Options{NoTemp: true, ProcDir: proc})
	got := map[string]roots.Root{}
	for _, r := range res.Roots {
		if r.Kind == roots.Runtime {
			got[r.Link+" "+r.Target] = r
		}
	}
	env := got[proc+"/200/environ "+p(14)]
	if env.Env != "SUDO_COMMAND" || env.User != "4242424" || env.PID != 200 || env.Command != "sudo x" || env.Via != "environ" {
		t.Errorf("environ root %+v", env)
	}
	if r := got[proc+"/100/exe "+p(1)]; r.User != "root" || r.Env != "" {
		t.Errorf("exe root %+v", r)
	}
	for _, i := range []int{3, 6} {
		for k := range got {
			if strings.HasSuffix(k, " "+p(i)) {
				t.Errorf("%s is a runtime root (%s): Nix takes neither a root directory nor a deleted mapping", p(i), k)
			}
		}
	}
	if r := got[proc+"/sys/kernel/modprobe "+p(13)]; r.Via != "kernel" || r.User != "" {
		t.Errorf("modprobe root %+v", r)
	}
}

// TestBusyHugeFiles: a maps file of 100,000 lines with a 100 KiB line,
// and an environment past procfs.MaxEnviron: what lies within the
// bounds is found, the environment's rest is not read and a note says so
// (Busy and Find alike).
func TestBusyHugeFiles(t *testing.T) {
	b, s := fixture(t)
	lay := b.Layout
	p := func(i int) string { return b.Outputs[i]["out"] }
	rp := func(i int) string { return lay.RealStoreDir + strings.TrimPrefix(p(i), lay.StoreDir) }
	proc := t.TempDir()
	var maps strings.Builder
	for i := 0; i < 100000; i++ {
		fmt.Fprintf(&maps, "7f%010x-7f%010x r--p 00000000 08:01 %d /usr/lib/lib%d.so\n", i, i+1, i, i)
	}
	maps.WriteString("7f0-7f1 r--p 0 08:01 1 " + rp(1) + "/" + strings.Repeat("d", 100<<10) + "\n")
	maps.WriteString("7f0-7f1 r--p 0 08:01 1 " + rp(2) + "/lib/last.so\n")
	env := "A=" + rp(3) + "\x00B=" + strings.Repeat("x", procfs.MaxEnviron) + "\x00C=" + rp(4) + "\x00"
	writeFakeProc(t, proc, 300, fakeProc{cmdline: "big\x00", maps: maps.String(), environ: env})
	r := busy(t, s, proc)
	var paths []string
	for _, bp := range r.Paths {
		paths = append(paths, bp.Path)
	}
	want := []string{p(1), p(2), p(3)}
	sort.Strings(want)
	if !reflect.DeepEqual(paths, want) {
		t.Errorf("paths %v, want %v", paths, want)
	}
	if len(r.Notes) != 1 || !strings.Contains(r.Notes[0], proc+"/300/environ is longer than storekeeper reads") {
		t.Errorf("notes %q", r.Notes)
	}
	res := find(t, s, roots.Options{NoTemp: true, ProcDir: proc})
	n := 0
	for _, x := range res.Roots {
		if x.Kind == roots.Runtime {
			n++
		}
	}
	if n != 3 || len(res.Notes) != 1 || !strings.Contains(res.Notes[0].Link, "300/environ") {
		t.Errorf("Find: %d runtime roots, notes %+v", n, res.Notes)
	}
}

// TestBusyNoProc: without /proc Busy fails, naming it.
func TestBusyNoProc(t *testing.T) {
	_, s := fixture(t)
	_, err := roots.Busy(context.Background(), s, roots.BusyOptions{ProcDir: filepath.Join(t.TempDir(), "none")})
	if err == nil || !strings.Contains(err.Error(), "/proc") {
		t.Fatalf("got %v", err)
	}
}

// TestBusyCancelled: a cancelled context stops Busy with its error.
func TestBusyCancelled(t *testing.T) {
	_, s, proc, _ := busyFixture(t)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := roots.Busy(ctx, s, roots.BusyOptions{ProcDir: proc}); err != context.Canceled {
		t.Fatalf("got %v", err)
	}
}
