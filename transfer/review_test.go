package transfer

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"storekeeper/nix/nar"
	"storekeeper/store"
	"storekeeper/store/db"
	"storekeeper/store/storetest"
)

// layoutAt is the layout of a store under root.
func layoutAt(t *testing.T, root string) store.Layout {
	t.Helper()
	lay, err := store.ResolveLayout(store.LayoutOptions{StoreURI: "local?root=" + root})
	if err != nil {
		t.Fatal(err)
	}
	return lay
}

// TestCheckTargetChain: a target whose store directory is a symlink (a
// new store would be created, chowned and chmodded through it), whose
// store or database directory is under a directory of another user, or
// under one others can write into without the sticky bit, is refused
// with ErrNotOwner naming the directory, before anything is created;
// Copy refuses the same for an existing store, copying nothing.
func TestCheckTargetChain(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root (chown)")
	}
	b := storetest.MustBuild(t, storetest.Spec{Paths: 3, Seed: 31, Files: 1, FileSize: 100})
	from := storetest.OpenRO(t, b.Layout)

	// nix/store a symlink to a directory of root's.
	linked := t.TempDir()
	elsewhere := t.TempDir()
	os.Chmod(elsewhere, 0o700)
	os.MkdirAll(filepath.Join(linked, "nix"), 0o755)
	if err := os.Symlink(elsewhere, filepath.Join(linked, "nix", "store")); err != nil {
		t.Fatal(err)
	}
	// nix/ of another user, the store directory root's.
	foreignNix := t.TempDir()
	os.MkdirAll(filepath.Join(foreignNix, "nix", "store"), 0o755)
	os.Chown(filepath.Join(foreignNix, "nix"), 65534, 65534)
	// A new store under a root-owned directory inside another user's.
	foreignAbove := t.TempDir()
	os.MkdirAll(filepath.Join(foreignAbove, "user", "mnt"), 0o755)
	os.Chown(filepath.Join(foreignAbove, "user"), 65534, 65534)
	// nix/var writable by everyone, no sticky bit.
	openVar := t.TempDir()
	os.MkdirAll(filepath.Join(openVar, "nix", "var", "nix"), 0o755)
	os.Chmod(filepath.Join(openVar, "nix", "var"), 0o777)
	// nix/var sticky and world-writable (as /tmp): fine.
	stickyVar := t.TempDir()
	os.MkdirAll(filepath.Join(stickyVar, "nix", "var"), 0o755)
	os.Chmod(filepath.Join(stickyVar, "nix", "var"), os.ModeSticky|0o777)

	for _, c := range []struct {
		root, want string
	}{
		{linked, filepath.Join(linked, "nix", "store") + " is a symlink"},
		{foreignNix, filepath.Join(foreignNix, "nix") + ", which belongs to uid 65534"},
		{filepath.Join(foreignAbove, "user", "mnt"), filepath.Join(foreignAbove, "user") + ", which belongs to uid 65534"},
		{openVar, filepath.Join(openVar, "nix", "var") + ", which others can write into"},
	} {
		err := CheckTarget(b.Layout, layoutAt(t, c.root))
		if !errors.Is(err, ErrNotOwner) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want ErrNotOwner saying %q", c.root, err, c.want)
		}
	}
	if err := CheckTarget(b.Layout, layoutAt(t, stickyVar)); err != nil {
		t.Errorf("a sticky world-writable parent: %v", err)
	}
	var st unix.Stat_t
	if unix.Stat(elsewhere, &st) != nil || st.Mode&0o7777 != 0o700 || st.Uid != 0 {
		t.Errorf("the symlink's target changed: mode %#o uid %d", st.Mode&0o7777, st.Uid)
	}

	// An existing store whose nix/var became writable by others.
	root := t.TempDir()
	to := createStore(t, root)
	os.Chmod(filepath.Join(root, "nix", "var"), 0o777)
	_, err := Copy(context.Background(), from, to, []string{b.Outputs[2]["out"]}, Options{})
	if !errors.Is(err, ErrNotOwner) {
		t.Fatalf("Copy into a store under a world-writable directory: %v", err)
	}
	if n := len(validIn(t, to)); n != 0 {
		t.Fatalf("%d paths valid after the refusal", n)
	}
}

// TestCopyRegisteredMeanwhile: a path registered in the target by a
// process that takes no PathLock (nix-store --register-validity) after
// Copy placed its tree and before Copy registered it stays valid with
// its tree in place (Copy's register finds it already valid; the tree
// must not be moved out as an unregistered copy), and is reported
// skipped; the whole closure is valid and whole.
func TestCopyRegisteredMeanwhile(t *testing.T) {
	f := newFixture(t, storetest.Spec{Paths: 8, Seed: 32, MaxDeps: 2, Files: 2, FileSize: 300})
	root := []string{f.b.Outputs[7]["out"]}
	want := closureOf(f.b, root...)
	var hooked string
	testHookPlaced = func(to *store.Store, p string) {
		if hooked != "" {
			return
		}
		hooked = p
		rows, err := f.from.DB.PathRows(context.Background(), []string{p})
		if err != nil {
			t.Error(err)
			return
		}
		r := rows[p]
		if err := to.DB.Register(context.Background(), []db.Registration{{Path: p, NarHash: r.NarHash, NarSize: r.NarSize, References: r.References}}, db.RegisterOptions{}); err != nil {
			t.Error(err)
		}
	}
	defer func() { testHookPlaced = nil }()
	res, err := Copy(context.Background(), f.from, f.to, root, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if hooked == "" {
		t.Fatal("the hook did not run")
	}
	for _, p := range res.Paths {
		if p.Path == hooked && (!p.Skipped || p.Err != nil) {
			t.Errorf("the path registered meanwhile: %+v", p)
		}
	}
	rows, err := f.from.DB.PathRows(context.Background(), []string{hooked})
	if err != nil {
		t.Fatal(err)
	}
	if h, _, err := nar.HashPath(f.to.Layout.RealPath(hooked)); err != nil || h != rows[hooked].NarHash {
		t.Fatalf("the tree of the path registered meanwhile: %v (hash %s, want %s)", err, h, rows[hooked].NarHash)
	}
	// Its referrers in the batch were left out by register (Partial); a
	// rerun copies them.
	testHookPlaced = nil
	if _, err := Copy(context.Background(), f.from, f.to, root, Options{}); err != nil {
		t.Fatal(err)
	}
	checkTarget(t, f.from, f.to, want)
}

// TestCopyNodeNameEscaped: an error about a node inside a source tree
// names it with its control characters escaped, so a file name cannot
// forge a line of output.
func TestCopyNodeNameEscaped(t *testing.T) {
	b := storetest.MustBuild(t, storetest.Spec{Paths: 1, Seed: 33, Files: 1, FileSize: 10})
	name := "x\ncould not copy 'forged'"
	p := addPath(t, b.Layout, "hostile", nil, func(p string) {
		os.MkdirAll(p, 0o755)
		os.WriteFile(filepath.Join(p, name), []byte("f"), 0o644)
	})
	// Damaged since: the file is now a FIFO.
	dir := b.Layout.RealPath(p)
	os.Chmod(dir, 0o755)
	os.Remove(filepath.Join(dir, name))
	if err := unix.Mkfifo(filepath.Join(dir, name), 0o644); err != nil {
		t.Fatal(err)
	}
	from := storetest.OpenRO(t, b.Layout)
	to := createStore(t, t.TempDir())
	res, err := Copy(context.Background(), from, to, []string{p}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	pr := res.Paths[0]
	if pr.Copied || !errors.Is(pr.Err, ErrBadSourceTree) {
		t.Fatalf("%+v", pr)
	}
	if msg := pr.Err.Error(); strings.Contains(msg, "\n") || !strings.Contains(msg, `x\ncould not copy`) {
		t.Errorf("the message does not escape the name: %q", msg)
	}
}

// TestCopyMissingInTarget: a path valid in the target's database but not
// in its store directory is not "already there": it fails with
// ErrMissingInTarget (the rest is skipped or copied); when none of the
// closure's valid paths is there, the target looks unmounted and Copy
// refuses, copying nothing.
func TestCopyMissingInTarget(t *testing.T) {
	f := newFixture(t, storetest.Spec{Paths: 20, Seed: 34, MaxDeps: 3, Files: 2, FileSize: 300})
	var first []string
	for _, o := range f.b.Outputs[:10] {
		first = append(first, o["out"])
	}
	if _, err := Copy(context.Background(), f.from, f.to, first, Options{}); err != nil {
		t.Fatal(err)
	}
	had := closureOf(f.b, first...)
	if len(had) < 3 {
		t.Fatalf("only %d paths copied first", len(had))
	}
	gone := had[0]
	removeTree(t, f.to.Layout.RealPath(gone))

	root := append([]string{f.b.Outputs[19]["out"]}, first...)
	res, err := Copy(context.Background(), f.from, f.to, root, Options{})
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range res.Paths {
		switch {
		case p.Path == gone:
			if p.Skipped || p.Copied || !errors.Is(p.Err, ErrMissingInTarget) || !strings.Contains(p.Err.Error(), gone) {
				t.Errorf("the missing path: %+v", p)
			}
		case p.Err != nil:
			t.Errorf("%+v", p)
		}
	}

	// Every valid path gone (an unmounted store directory).
	for _, p := range validIn(t, f.to) {
		removeTree(t, f.to.Layout.RealPath(p))
	}
	all := append([]string{f.b.Outputs[18]["out"]}, first...)
	if _, err := Copy(context.Background(), f.from, f.to, all, Options{}); !errors.Is(err, store.ErrStoreLooksUnmounted) {
		t.Fatalf("a target whose valid paths are all missing: %v", err)
	}
	ents, _ := os.ReadDir(f.to.Layout.RealStoreDir)
	for _, e := range ents {
		if n := e.Name(); n != ".links" && !strings.HasSuffix(n, ".lock") {
			t.Errorf("%s was put in the target's store directory", n)
		}
	}
}

// removeTree deletes a read-only store tree.
func removeTree(t *testing.T, p string) {
	t.Helper()
	filepath.Walk(p, func(q string, fi os.FileInfo, err error) error {
		if err == nil && fi.IsDir() {
			os.Chmod(q, 0o755)
		}
		return nil
	})
	if err := os.RemoveAll(p); err != nil {
		t.Fatal(err)
	}
}

// TestCopyBatches: a closure copied in many batches (batchSize made
// small), with paths already valid in the target in the middle of it and
// a damaged path whose referrers come in later batches: each batch is
// registered after the batches of its references, the referrers of the
// damaged path are named and not copied in whichever batch they are, and
// everything else is valid and whole.
func TestCopyBatches(t *testing.T) {
	defer func(n int) { batchSize = n }(batchSize)
	batchSize = 3
	f := newFixture(t, storetest.Spec{Paths: 40, Seed: 35, MaxDeps: 4, Files: 2, FileSize: 300})
	var tops []string
	for _, o := range f.b.Outputs {
		tops = append(tops, o["out"])
	}
	cl := closureOf(f.b, tops...)
	// Already valid in the target: the closure of a path in the middle.
	mid := f.b.Outputs[20]["out"]
	pre := closureOf(f.b, mid)
	if _, err := Copy(context.Background(), f.from, f.to, []string{mid}, Options{}); err != nil {
		t.Fatal(err)
	}
	isPre := map[string]bool{}
	for _, p := range pre {
		isPre[p] = true
	}
	// A damaged path, not in the target, with referrers.
	var victim string
	for _, p := range cl {
		if isPre[p] || strings.HasSuffix(p, ".drv") || len(regularFiles(t, f.b.Layout.RealPath(p))) == 0 {
			continue
		}
		for _, q := range cl {
			for _, r := range f.b.Refs[q] {
				if r == p && q != p && victim == "" {
					victim = p
				}
			}
		}
	}
	if victim == "" {
		t.Fatal("no referenced path to damage")
	}
	vf := filepath.Join(f.b.Layout.RealPath(victim), regularFiles(t, f.b.Layout.RealPath(victim))[0])
	os.Chmod(vf, 0o644)
	if err := os.WriteFile(vf, []byte("damaged"), 0o644); err != nil {
		t.Fatal(err)
	}
	bad := map[string]bool{victim: true}
	for changed := true; changed; {
		changed = false
		for _, q := range cl {
			for _, r := range f.b.Refs[q] {
				if bad[r] && !bad[q] {
					bad[q], changed = true, true
				}
			}
		}
	}
	res, err := Copy(context.Background(), f.from, f.to, tops, Options{Method: MethodCopy})
	if err != nil {
		t.Fatal(err)
	}
	if len(cl)-len(pre) < 3*batchSize {
		t.Fatalf("only %d paths to copy: too few batches", len(cl)-len(pre))
	}
	var good []string
	for _, pr := range res.Paths {
		switch {
		case isPre[pr.Path]:
			if !pr.Skipped {
				t.Errorf("already valid: %+v", pr)
			}
		case bad[pr.Path]:
			if pr.Copied || pr.Err == nil {
				t.Errorf("damaged or referring to it: %+v", pr)
			}
			continue
		case !pr.Copied:
			t.Errorf("not copied: %+v", pr)
		}
		good = append(good, pr.Path)
	}
	if len(bad) < 2 {
		t.Fatalf("the damaged path has no referrer in the closure")
	}
	sort.Strings(good)
	checkTarget(t, f.from, f.to, good)
}

// TestCopyTargetInSource: a target inside the source's store directory
// (creating it would change a source path) and a target sharing the
// source's store directory with another database (its paths would look
// like invalid leftovers, to be replaced) are refused, the source
// unchanged.
func TestCopyTargetInSource(t *testing.T) {
	b := storetest.MustBuild(t, storetest.Spec{Paths: 3, Seed: 36, Files: 1, FileSize: 100})
	from := storetest.OpenRO(t, b.Layout)
	p := b.Outputs[2]["out"]
	inside := layoutAt(t, b.Layout.RealPath(p))
	if err := CheckTarget(b.Layout, inside); !errors.Is(err, ErrBadOptions) || !strings.Contains(err.Error(), "inside the source's store directory") {
		t.Fatalf("a target inside a source path: %v", err)
	}
	rows, err := from.DB.PathRows(context.Background(), []string{p})
	if err != nil {
		t.Fatal(err)
	}
	// The same store directory, another (new) database.
	lay, err := store.ResolveLayout(store.LayoutOptions{StoreURI: "local?store=" + b.Layout.StoreDir + "&real=" + b.Layout.RealStoreDir + "&state=" + t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	to, err := store.Create(context.Background(), store.Options{Layout: lay, Settings: from.Settings})
	if err != nil {
		t.Fatal(err)
	}
	defer to.Close()
	if _, err := Copy(context.Background(), from, to, []string{p}, Options{}); !errors.Is(err, ErrBadOptions) || !strings.Contains(err.Error(), "same store directory") {
		t.Fatalf("a target sharing the source's store directory: %v", err)
	}
	if h, _, err := nar.HashPath(b.Layout.RealPath(p)); err != nil || h != rows[p].NarHash {
		t.Fatalf("the source path changed: %v", err)
	}
}

// TestCopyAsUser: copy run by a user other than root, from a store of
// theirs into a new store of theirs (a single-user install): every
// directory tree is placed although it is 0555 (the kernel lets only a
// process that may write into a directory move it to another parent),
// with each method, and the copies are canonical (0555, mtime 1).
func TestCopyAsUser(t *testing.T) {
	if dir := os.Getenv("TRANSFER_TEST_AS_USER"); dir != "" {
		copyAsUserChild(t, dir)
		return
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root to run a child as another user")
	}
	const uid = 65534
	dir, err := os.MkdirTemp("", "copy-as-user-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	os.Chmod(dir, 0o755)
	b, err := storetest.Build(filepath.Join(dir, "src"), storetest.Spec{Paths: 10, Seed: 37, MaxDeps: 3, Files: 2, FileSize: 300})
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{"copy", "auto"} {
		os.MkdirAll(filepath.Join(dir, "dst-"+d), 0o755)
	}
	self, err := os.ReadFile(os.Args[0])
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(dir, "transfer.test"), self, 0o755)
	os.WriteFile(filepath.Join(dir, "roots"), []byte(b.Outputs[9]["out"]+"\n"+b.Outputs[6]["out"]), 0o644)
	filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
		if err == nil {
			os.Lchown(p, uid, uid)
		}
		return nil
	})
	cmd := exec.Command(filepath.Join(dir, "transfer.test"), "-test.run=^TestCopyAsUser$", "-test.count=1", "-test.v")
	cmd.Env = append(os.Environ(), "TRANSFER_TEST_AS_USER="+dir, "HOME="+dir)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uid, Gid: uid}}
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "copied as uid") {
		t.Fatalf("the copy as uid %d: %v\n%s", uid, err, out)
	}
	t.Logf("%s", out)
}

func copyAsUserChild(t *testing.T, dir string) {
	roots, err := os.ReadFile(filepath.Join(dir, "roots"))
	if err != nil {
		t.Fatal(err)
	}
	from := storetest.OpenRO(t, layoutAt(t, filepath.Join(dir, "src")))
	for _, m := range []Method{MethodCopy, MethodAuto} {
		to := createStore(t, filepath.Join(dir, "dst-"+string(m)))
		res, err := Copy(context.Background(), from, to, strings.Fields(string(roots)), Options{Method: m})
		if err != nil {
			t.Fatalf("%s: %v", m, err)
		}
		var want []string
		for _, p := range res.Paths {
			if !p.Copied {
				t.Errorf("%s: %+v", m, p)
			}
			want = append(want, p.Path)
			var st unix.Stat_t
			if err := unix.Lstat(to.Layout.RealPath(p.Path), &st); err != nil {
				t.Fatal(err)
			}
			if st.Mode&unix.S_IFMT == unix.S_IFDIR && (st.Mode&0o7777 != 0o555 || st.Mtim.Sec != 1 || int(st.Uid) != os.Geteuid()) {
				t.Errorf("%s: %s: mode %#o mtime %d uid %d", m, p.Path, st.Mode&0o7777, st.Mtim.Sec, st.Uid)
			}
		}
		sort.Strings(want)
		checkTarget(t, from, to, want)
		t.Logf("copied as uid %d with %s: %d paths", os.Geteuid(), m, len(want))
	}
}
