package transfer

import (
	"context"
	"crypto/sha256"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"golang.org/x/sys/unix"

	"storekeeper/graph"
	"storekeeper/nix/nar"
	"storekeeper/nix/nixconf"
	"storekeeper/nix/storepath"
	"storekeeper/register"
	"storekeeper/report"
	"storekeeper/store"
	"storekeeper/store/db"
	"storekeeper/store/storetest"
)

// fixture is a source store built by storetest and an empty target
// store created beside it (same file system).
type fixture struct {
	b        *storetest.Built
	from, to *store.Store
	toRoot   string
}

func newFixture(t *testing.T, spec storetest.Spec) *fixture {
	t.Helper()
	b := storetest.MustBuild(t, spec)
	f := &fixture{b: b, from: storetest.OpenRO(t, b.Layout)}
	f.toRoot = t.TempDir()
	f.to = createStore(t, f.toRoot)
	return f
}

// createStore makes a new, empty store under root.
func createStore(t *testing.T, root string) *store.Store {
	t.Helper()
	lay, err := store.ResolveLayout(store.LayoutOptions{StoreURI: "local?root=" + root})
	if err != nil {
		t.Fatal(err)
	}
	s, err := store.Create(context.Background(), store.Options{Layout: lay, Settings: nixconf.Default(true)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// closureOf walks the fixture's references.
func closureOf(b *storetest.Built, paths ...string) []string {
	seen := map[string]bool{}
	var walk func(string)
	walk = func(p string) {
		if seen[p] {
			return
		}
		seen[p] = true
		for _, r := range b.Refs[p] {
			walk(r)
		}
	}
	for _, p := range paths {
		walk(p)
	}
	var out []string
	for p := range seen {
		out = append(out, p)
	}
	sort.Strings(out)
	return out
}

// checkTarget: exactly want is valid in s, each with the source's hash,
// size and references, and its tree hashes to them.
func checkTarget(t *testing.T, from, s *store.Store, want []string) {
	t.Helper()
	g, err := s.LoadGraph(context.Background(), db.GraphOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if g.Len() != len(want) {
		t.Fatalf("%d valid paths in the target, want %d", g.Len(), len(want))
	}
	src, err := from.DB.PathRows(context.Background(), want)
	if err != nil {
		t.Fatal(err)
	}
	got, err := s.DB.PathRows(context.Background(), want)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range want {
		a, b := src[p], got[p]
		if b == nil {
			t.Fatalf("%s is not valid in the target", p)
		}
		if a.NarHash != b.NarHash || a.NarSize != b.NarSize || !reflect.DeepEqual(a.References, b.References) {
			t.Fatalf("%s: target row %+v, source %+v", p, b, a)
		}
		h, n, err := nar.HashPath(s.Layout.RealPath(p))
		if err != nil || h != a.NarHash || uint64(n) != a.NarSize {
			t.Fatalf("%s: the copy hashes to %s (%d bytes, %v), want %s", p, h, n, err, a.NarHash)
		}
	}
}

// TestCopyClosure: Copy copies exactly the closure, in dependency order,
// registered with the source's rows (deriver and registration time too);
// a second run skips everything and changes nothing.
func TestCopyClosure(t *testing.T) {
	f := newFixture(t, storetest.Spec{Paths: 40, Seed: 3, MaxDeps: 4, Files: 3, FileSize: 3000, Multi: 0.2})
	roots := []string{f.b.Outputs[39]["out"], f.b.Outputs[30]["out"]}
	want := closureOf(f.b, roots...)
	var log report.Log
	res, err := Copy(context.Background(), f.from, f.to, roots, Options{Progress: &log})
	if err != nil {
		t.Fatal(err)
	}
	if res.Copied != len(want) || res.Skipped != 0 || len(res.Paths) != len(want) {
		t.Fatalf("copied %d, skipped %d of %d; want %d", res.Copied, res.Skipped, len(res.Paths), len(want))
	}
	pos := map[string]int{}
	for i, p := range res.Paths {
		pos[p.Path] = i
		if !p.Copied || p.Err != nil || p.Bytes == 0 {
			t.Fatalf("%+v", p)
		}
	}
	for _, p := range res.Paths {
		for _, r := range f.b.Refs[p.Path] {
			if r != p.Path && pos[r] > pos[p.Path] {
				t.Fatalf("%s comes before its reference %s", p.Path, r)
			}
		}
	}
	checkTarget(t, f.from, f.to, want)
	rows, _, err := f.to.DB.Closure(context.Background(), want)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range want {
		if rows[p].Deriver != f.b.Deriver[p] || rows[p].RegistrationTime < 1700000000 || rows[p].Ultimate {
			t.Errorf("%s: deriver %q (want %q), registration time %d, ultimate %v", p, rows[p].Deriver, f.b.Deriver[p], rows[p].RegistrationTime, rows[p].Ultimate)
		}
	}
	// Nothing is left in the trash.
	if _, err := os.Lstat(f.to.Layout.TrashDir()); !os.IsNotExist(err) {
		t.Errorf("the trash is left: %v", err)
	}
	res, err = Copy(context.Background(), f.from, f.to, roots, Options{})
	if err != nil || res.Skipped != len(want) || res.Copied != 0 {
		t.Fatalf("second run: %+v %v", res, err)
	}
	// Not valid in the source: an error, nothing done.
	bad := f.b.Layout.StoreDir + "/" + strings.Repeat("0", 32) + "-nothere"
	if _, err := Copy(context.Background(), f.from, f.to, []string{bad}, Options{}); !errors.Is(err, ErrNotValid) || !strings.Contains(err.Error(), bad) {
		t.Fatalf("a path not valid in the source: %v", err)
	}
}

// inode returns the inode number of p.
func inode(t *testing.T, p string) uint64 {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Lstat(p, &st); err != nil {
		t.Fatal(err)
	}
	return st.Ino
}

// regularFiles lists the regular files under p (relative).
func regularFiles(t *testing.T, p string) []string {
	t.Helper()
	var out []string
	filepath.Walk(p, func(q string, fi os.FileInfo, err error) error {
		if err == nil && fi.Mode().IsRegular() {
			rel, _ := filepath.Rel(p, q)
			out = append(out, rel)
		}
		return nil
	})
	return out
}

// TestCopyMethods: each method on this machine's file system: copy makes
// new inodes, hardlink shares the source's (its files are canonical),
// auto reflinks where the file system can and otherwise hard-links; a
// forced reflink on a file system that cannot clone fails at once,
// naming the method, with nothing copied.
func TestCopyMethods(t *testing.T) {
	spec := storetest.Spec{Paths: 12, Seed: 5, MaxDeps: 3, Files: 3, FileSize: 2000}
	b := storetest.MustBuild(t, spec)
	from := storetest.OpenRO(t, b.Layout)
	root := []string{b.Outputs[11]["out"]}
	want := closureOf(b, root...)
	probeDir, err := unix.Open(t.TempDir(), unix.O_RDONLY|unix.O_DIRECTORY, 0)
	if err != nil {
		t.Fatal(err)
	}
	canClone := probeReflink(probeDir) == nil
	unix.Close(probeDir)
	t.Logf("this file system can clone: %v", canClone)
	for _, m := range []Method{MethodCopy, MethodHardlink, MethodAuto, MethodReflink} {
		t.Run(string(m), func(t *testing.T) {
			to := createStore(t, t.TempDir())
			res, err := Copy(context.Background(), from, to, root, Options{Method: m})
			if m == MethodReflink && !canClone {
				if !errors.Is(err, ErrMethodUnsupported) || !strings.Contains(err.Error(), "--method reflink") {
					t.Fatalf("a forced reflink where the file system cannot clone: %v", err)
				}
				if n := len(validIn(t, to)); n != 0 {
					t.Fatalf("%d paths valid after the refusal", n)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			checkTarget(t, from, to, want)
			wantMethod := m
			if m == MethodAuto {
				wantMethod = MethodHardlink
				if canClone {
					wantMethod = MethodReflink
				}
			}
			files := 0
			for _, pr := range res.Paths {
				src, dst := b.Layout.RealPath(pr.Path), to.Layout.RealPath(pr.Path)
				rf := regularFiles(t, src)
				if len(rf) > 0 && pr.Method != wantMethod {
					t.Errorf("%s: method %s, want %s", pr.Path, pr.Method, wantMethod)
				}
				for _, f := range rf {
					files++
					same := inode(t, filepath.Join(src, f)) == inode(t, filepath.Join(dst, f))
					if same != (wantMethod == MethodHardlink) {
						t.Fatalf("%s/%s: same inode %v with method %s", pr.Path, f, same, wantMethod)
					}
				}
			}
			if files == 0 {
				t.Fatal("no regular file was copied")
			}
		})
	}
}

func validIn(t *testing.T, s *store.Store) []string {
	t.Helper()
	g, err := s.LoadGraph(context.Background(), db.GraphOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for i := 0; i < g.Len(); i++ {
		out = append(out, g.Path(graph.PathID(i)))
	}
	return out
}

// addPath adds a path to the source store s (opened read-write here):
// build makes its tree at the given physical directory name; it is
// registered with its hash and refs.
func addPath(t *testing.T, lay store.Layout, name string, refs []string, build func(p string)) string {
	t.Helper()
	p := storepath.MakeTextPath(lay.StoreDir, sha256.Sum256([]byte(name)), name, nil)
	real := lay.RealPath(p)
	build(real)
	if err := storetest.Canonicalise(real); err != nil {
		t.Fatal(err)
	}
	h, n, err := nar.HashPath(real)
	if err != nil {
		t.Fatal(err)
	}
	s := storetest.Open(t, lay)
	if err := s.DB.Register(context.Background(), []db.Registration{{Path: p, NarHash: h, NarSize: uint64(n), References: refs}}, db.RegisterOptions{}); err != nil {
		t.Fatal(err)
	}
	s.Close()
	return p
}

// TestCopySymlinksNotFollowed: symlinks in a source path (to a file
// outside the store, to a directory, dangling, the top of a path itself)
// are recreated as symlinks with their targets, never followed.
func TestCopySymlinksNotFollowed(t *testing.T) {
	b := storetest.MustBuild(t, storetest.Spec{Paths: 2, Seed: 8, Files: 1, FileSize: 100})
	outside := filepath.Join(t.TempDir(), "secret")
	if err := os.WriteFile(outside, []byte("not to be copied"), 0o600); err != nil {
		t.Fatal(err)
	}
	links := map[string]string{"to-outside": outside, "to-dir": "sub", "dangling": "/nonexistent/x", "to-etc": "/etc"}
	tree := addPath(t, b.Layout, "links", nil, func(p string) {
		os.MkdirAll(filepath.Join(p, "sub"), 0o755)
		os.WriteFile(filepath.Join(p, "sub", "f"), []byte("f"), 0o644)
		for name, target := range links {
			os.Symlink(target, filepath.Join(p, name))
		}
	})
	top := addPath(t, b.Layout, "toplink", nil, func(p string) { os.Symlink(outside, p) })
	from := storetest.OpenRO(t, b.Layout)
	to := createStore(t, t.TempDir())
	if _, err := Copy(context.Background(), from, to, []string{tree, top}, Options{}); err != nil {
		t.Fatal(err)
	}
	checkTarget(t, from, to, []string{top, tree})
	for name, target := range links {
		got, err := os.Readlink(filepath.Join(to.Layout.RealPath(tree), name))
		if err != nil || got != target {
			t.Errorf("%s: %q %v, want a symlink to %q", name, got, err, target)
		}
	}
	if got, err := os.Readlink(to.Layout.RealPath(top)); err != nil || got != outside {
		t.Errorf("the top symlink: %q %v", got, err)
	}
}

// TestCopyDamagedSource: a source path whose contents no longer match
// its database hash is not registered in the target and is named with
// the mismatch; the paths referring to it (directly or not) are not
// registered either, and named; the rest of the closure is; no tree of a
// path not registered is left in the target's store directory.
func TestCopyDamagedSource(t *testing.T) {
	b := storetest.MustBuild(t, storetest.Spec{Paths: 30, Seed: 11, MaxDeps: 3, Files: 2, FileSize: 500})
	// A path with referrers in the closure of the last output.
	last := b.Outputs[29]["out"]
	cl := closureOf(b, last)
	var victim string
	for _, p := range cl {
		if p != last && len(regularFiles(t, b.Layout.RealPath(p))) > 0 && !strings.HasSuffix(p, ".drv") {
			for _, q := range cl {
				for _, r := range b.Refs[q] {
					if r == p && q != p && victim == "" {
						victim = p
					}
				}
			}
		}
	}
	if victim == "" {
		t.Fatal("no referenced path in the closure")
	}
	vf := filepath.Join(b.Layout.RealPath(victim), regularFiles(t, b.Layout.RealPath(victim))[0])
	os.Chmod(vf, 0o644)
	if err := os.WriteFile(vf, []byte("damaged"), 0o644); err != nil {
		t.Fatal(err)
	}
	from := storetest.OpenRO(t, b.Layout)
	to := createStore(t, t.TempDir())
	res, err := Copy(context.Background(), from, to, []string{last}, Options{Method: MethodCopy})
	if err != nil {
		t.Fatal(err)
	}
	bad := map[string]bool{victim: true}
	for changed := true; changed; {
		changed = false
		for _, q := range cl {
			for _, r := range b.Refs[q] {
				if bad[r] && !bad[q] {
					bad[q], changed = true, true
				}
			}
		}
	}
	var good []string
	for _, pr := range res.Paths {
		switch {
		case pr.Path == victim:
			if pr.Copied || !errors.Is(pr.Err, register.ErrHashMismatch) || !strings.Contains(pr.Err.Error(), victim) {
				t.Errorf("the damaged path: %+v", pr)
			}
		case bad[pr.Path]:
			if pr.Copied || pr.Err == nil {
				t.Errorf("a referrer of the damaged path: %+v", pr)
			}
		default:
			if !pr.Copied {
				t.Errorf("%+v was not copied", pr)
			}
			good = append(good, pr.Path)
		}
		if !pr.Copied {
			if _, err := os.Lstat(to.Layout.RealPath(pr.Path)); !os.IsNotExist(err) {
				t.Errorf("%s is not valid and left in the store dir: %v", pr.Path, err)
			}
		}
	}
	if len(bad) < 2 || len(good) == 0 {
		t.Fatalf("bad %d good %d", len(bad), len(good))
	}
	sort.Strings(good)
	checkTarget(t, from, to, good)
}

// cancelAfter is a Progress that cancels once n bytes were added.
type cancelAfter struct {
	report.Log
	n      atomic.Int64
	cancel context.CancelFunc
}

func (c *cancelAfter) Add(n int64) {
	if c.n.Add(-n) <= 0 {
		c.cancel()
	}
}

// TestCopyCancelled: a Copy cancelled while trees are being copied
// returns an error wrapping context.Canceled, every path not copied says
// ErrInterrupted, what is valid in the target is whole, nothing else is
// left in its store directory (no staged or unregistered tree, no trash),
// and a second run copies the rest.
func TestCopyCancelled(t *testing.T) {
	f := newFixture(t, storetest.Spec{Paths: 60, Seed: 21, MaxDeps: 4, Files: 4, FileSize: 4000})
	root := []string{f.b.Outputs[59]["out"], f.b.Outputs[45]["out"]}
	want := closureOf(f.b, root...)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	pr := &cancelAfter{cancel: cancel}
	pr.n.Store(20000)
	res, err := Copy(ctx, f.from, f.to, root, Options{Progress: pr, Jobs: 1, Method: MethodCopy})
	if !errors.Is(err, context.Canceled) || res == nil {
		t.Fatalf("cancelled: %v", err)
	}
	valid := map[string]bool{}
	for _, p := range validIn(t, f.to) {
		valid[p] = true
	}
	notCopied := 0
	for _, p := range res.Paths {
		if p.Copied != valid[p.Path] {
			t.Fatalf("%s: copied %v, valid %v", p.Path, p.Copied, valid[p.Path])
		}
		if !p.Copied {
			notCopied++
			if !errors.Is(p.Err, ErrInterrupted) {
				t.Errorf("%s: %v", p.Path, p.Err)
			}
		}
	}
	if notCopied == 0 {
		t.Fatal("the cancellation came too late")
	}
	var got []string
	for p := range valid {
		got = append(got, p)
	}
	sort.Strings(got)
	checkTarget(t, f.from, f.to, got)
	ents, err := os.ReadDir(f.to.Layout.RealStoreDir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		if n := e.Name(); n != ".links" && !strings.HasSuffix(n, ".lock") && !valid[f.to.Layout.StorePathOf(n)] {
			t.Errorf("%s is left in the target's store directory", n)
		}
	}
	if _, err := Copy(context.Background(), f.from, f.to, root, Options{}); err != nil {
		t.Fatal(err)
	}
	checkTarget(t, f.from, f.to, want)
}

// closeDBOnAdd closes a store's database at the first bytes copied.
type closeDBOnAdd struct {
	report.Log
	once sync.Once
	s    *store.Store
}

func (c *closeDBOnAdd) Add(int64) { c.once.Do(func() { c.s.DB.Close() }) }

// TestCopyRegisterFails: when the target's database fails under a batch
// (here: closed while its trees are copied), Copy stops with that error
// (the command's exit 2, not a list of path failures), every path says
// why it was not copied, and no tree is left at a store name.
func TestCopyRegisterFails(t *testing.T) {
	f := newFixture(t, storetest.Spec{Paths: 10, Seed: 22, MaxDeps: 3, Files: 2, FileSize: 500})
	root := []string{f.b.Outputs[9]["out"]}
	res, err := Copy(context.Background(), f.from, f.to, root, Options{Progress: &closeDBOnAdd{s: f.to}})
	if err == nil || !strings.Contains(err.Error(), "registering in the target") || !strings.Contains(err.Error(), "database is closed") || res == nil {
		t.Fatalf("Copy: %v", err)
	}
	for _, p := range res.Paths {
		if p.Copied || p.Err == nil {
			t.Errorf("%+v", p)
		}
	}
	ents, _ := os.ReadDir(f.to.Layout.RealStoreDir)
	for _, e := range ents {
		if n := e.Name(); n != ".links" && !strings.HasSuffix(n, ".lock") {
			t.Errorf("%s is left in the target's store directory", n)
		}
	}
}
