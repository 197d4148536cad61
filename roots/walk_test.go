package roots_test

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"storekeeper/roots"
	"storekeeper/store"
)

// deepDir makes depth directories, each named name inside the last, under
// dir, through descriptors (so the tree may be deeper than any path the
// kernel accepts), and returns an open descriptor of the deepest one
// (closed at cleanup) and its full path.
func deepDir(t *testing.T, dir string, depth int, name string) (int, string) {
	t.Helper()
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	return deepDirAt(t, fd, dir, depth, name)
}

// deepDirAt is deepDir under the directory open at dirfd, whose full path
// is dir.
func deepDirAt(t *testing.T, dirfd int, dir string, depth int, name string) (int, string) {
	t.Helper()
	fd, err := unix.Dup(dirfd)
	if err != nil {
		t.Fatal(err)
	}
	path := dir
	for i := 0; i < depth; i++ {
		if err := unix.Mkdirat(fd, name, 0o755); err != nil {
			t.Fatalf("mkdir at depth %d: %v", i, err)
		}
		next, err := unix.Openat(fd, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		unix.Close(fd)
		if err != nil {
			t.Fatalf("open at depth %d: %v", i, err)
		}
		fd, path = next, path+"/"+name
	}
	t.Cleanup(func() { unix.Close(fd) })
	return fd, path
}

// TestDeepRoot: a root at any depth under gcroots/ is found and printed
// with its full path, also where that path is longer than the kernel
// accepts (PATH_MAX): 1500 levels of "level" are 9000 bytes.
func TestDeepRoot(t *testing.T) {
	for _, depth := range []int{200, 1500} {
		t.Run(fmt.Sprint(depth), func(t *testing.T) {
			b, s := fixture(t)
			target := b.Outputs[2]["out"]
			fd, dir := deepDir(t, b.Layout.GCRootsDir(), depth, "level")
			if err := unix.Symlinkat(target, fd, "result"); err != nil {
				t.Fatal(err)
			}
			if depth == 1500 && len(dir) <= unix.PathMax {
				t.Fatalf("the tree is only %d bytes deep: it tests nothing beyond PATH_MAX", len(dir))
			}
			res := find(t, s, roots.Options{NoTemp: true})
			link := dir + "/result"
			found := false
			for _, r := range res.Roots {
				if r.Link == link {
					found = true
					if r.Target != target || r.Kind != roots.Direct {
						t.Errorf("deep root %+v, want direct -> %s", r, target)
					}
				}
			}
			if !found {
				t.Fatalf("the root %d directories deep was not found; notes: %+v", depth, res.Notes)
			}
		})
	}
}

// hasRoot reports whether res lists link -> target.
func hasRoot(res *roots.Result, link, target string) bool {
	for _, r := range res.Roots {
		if r.Link == link && r.Target == target {
			return true
		}
	}
	return false
}

// findErr runs Find and returns its error, failing if there is none.
func findErr(t *testing.T, s *store.Store, o roots.Options) error {
	t.Helper()
	o.ProcDir = filepath.Join(t.TempDir(), "no-proc")
	res, err := roots.Find(context.Background(), s, o)
	if err == nil {
		t.Fatalf("Find succeeded with %d roots; want an error", len(res.Roots))
	}
	if res != nil {
		t.Errorf("Find returned a result with its error: %+v", res)
	}
	return err
}

// TestDeepLimit: roots are found down to the depth limit (4096 levels,
// each an open descriptor); one level deeper is an error wrapping
// ErrRootsUnreadable that names the directory, not a root dropped.
func TestDeepLimit(t *testing.T) {
	limit := roots.MaxWalkDepth()
	b, s := fixture(t)
	target := b.Outputs[2]["out"]
	fd, dir := deepDir(t, b.Layout.GCRootsDir(), limit, "d")
	if err := unix.Symlinkat(target, fd, "result"); err != nil {
		t.Fatal(err)
	}
	if res := find(t, s, roots.Options{NoTemp: true}); !hasRoot(res, dir+"/result", target) {
		t.Fatalf("the root %d directories deep was not found; notes: %+v", limit, res.Notes)
	}
	if err := unix.Mkdirat(fd, "d", 0o755); err != nil {
		t.Fatal(err)
	}
	err := findErr(t, s, roots.Options{NoTemp: true})
	if !errors.Is(err, roots.ErrRootsUnreadable) || !strings.Contains(err.Error(), dir+"/d:") || !strings.Contains(err.Error(), "nested more than") {
		t.Fatalf("one level past the limit: %v", err)
	}
}

// TestTooManyEntries: more entries under gcroots/ and profiles/ than the
// walk lists is an error wrapping ErrRootsUnreadable, not a part of them
// searched.
func TestTooManyEntries(t *testing.T) {
	b, s := fixture(t)
	all := len(find(t, s, roots.Options{NoTemp: true}).Roots)
	for i := 0; i < 20; i++ {
		if err := os.WriteFile(filepath.Join(b.Layout.GCRootsDir(), fmt.Sprintf("junk-%d", i)), nil, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	defer roots.SetWalkLimits(roots.MaxWalkDepth(), 20)()
	err := findErr(t, s, roots.Options{NoTemp: true})
	if !errors.Is(err, roots.ErrRootsUnreadable) || !strings.Contains(err.Error(), "more than 20 entries") {
		t.Fatalf("over the entry limit: %v", err)
	}
	roots.SetWalkLimits(roots.MaxWalkDepth(), 1000)
	if n := len(find(t, s, roots.Options{NoTemp: true}).Roots); n != all {
		t.Fatalf("%d roots under the limit, want %d", n, all)
	}
}

// TestDeepIndirectRoot: a relative symlink deep in gcroots/ whose target
// goes up through its ancestors ("../../via/result") names, as for Nix,
// the full path of that target cleaned lexically, and when that names a
// symlink into the store, it is an indirect root, also where the full
// paths are longer than PATH_MAX. ("via" is a symlink to a directory
// outside gcroots/: the walk does not enter it, so result is found only
// through the indirect root.)
func TestDeepIndirectRoot(t *testing.T) {
	b, s := fixture(t)
	target := b.Outputs[5]["out"]
	outside := t.TempDir()
	if err := os.Symlink(target, filepath.Join(outside, "result")); err != nil {
		t.Fatal(err)
	}
	top, topPath := deepDir(t, b.Layout.GCRootsDir(), 700, "upper")
	if err := unix.Symlinkat(outside, top, "via"); err != nil {
		t.Fatal(err)
	}
	fd, _ := deepDirAt(t, top, topPath, 800, "lower")
	if err := unix.Symlinkat(strings.Repeat("../", 800)+"./via/result", fd, "indirect"); err != nil {
		t.Fatal(err)
	}
	if len(topPath) <= unix.PathMax {
		t.Fatalf("the tree is only %d bytes deep: it tests nothing beyond PATH_MAX", len(topPath))
	}
	res := find(t, s, roots.Options{NoTemp: true})
	want := topPath + "/via/result"
	for _, r := range res.Roots {
		if r.Link == want {
			if r.Target != target || r.Kind != roots.Indirect {
				t.Fatalf("deep indirect root %s -> %s (%s), want -> %s (indirect)", r.Link, r.Target, r.Kind, target)
			}
			return
		}
	}
	t.Fatalf("the deep indirect root was not found; notes: %+v", res.Notes)
}

// onPrivateThread runs fn on an OS thread of its own that is thrown away
// afterwards, so that fn may change the thread's mount namespace or file
// system uid without affecting the rest of the test binary.
func onPrivateThread(t *testing.T, fn func()) {
	t.Helper()
	done := make(chan struct{})
	go func() {
		defer close(done)
		runtime.LockOSThread() // never unlocked: the thread exits with the goroutine
		fn()
	}()
	<-done
}

// TestBindMountLoop: a directory under gcroots/ that is gcroots/ again (a
// bind mount) is an error wrapping ErrRootsUnreadable naming both, not a
// tree searched in part (or forever). Needs root: mounts in a private
// mount namespace of one thread.
func TestBindMountLoop(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to bind-mount")
	}
	_, s := fixture(t)
	gcroots := s.Layout.GCRootsDir()
	inner := filepath.Join(gcroots, "loop", "inner")
	if err := os.MkdirAll(inner, 0o755); err != nil {
		t.Fatal(err)
	}
	var err error
	proc := filepath.Join(t.TempDir(), "no-proc")
	onPrivateThread(t, func() {
		if e := unix.Unshare(unix.CLONE_NEWNS | unix.CLONE_FS); e != nil {
			err = fmt.Errorf("unshare: %w", e)
			return
		}
		if e := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); e != nil {
			err = fmt.Errorf("making mounts private: %w", e)
			return
		}
		if e := unix.Mount(gcroots, inner, "", unix.MS_BIND, ""); e != nil {
			err = fmt.Errorf("bind mount: %w", e)
			return
		}
		_, err = roots.Find(context.Background(), s, roots.Options{NoTemp: true, ProcDir: proc})
		if err == nil {
			err = errors.New("no error")
		}
	})
	if !errors.Is(err, roots.ErrRootsUnreadable) || !strings.Contains(err.Error(), inner+" is "+gcroots+" again") {
		t.Fatalf("a bind-mount loop under gcroots: %v", err)
	}
}

// TestUnreadableRootStrict: a directory under gcroots/ that Find may not
// read is skipped with a note, as Nix skips it, but with Options.Strict
// (a deleting collection) it is an error naming it. Needs root, to drop
// to another file system uid on one thread.
func TestUnreadableRootStrict(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to change the file system uid")
	}
	b, s := fixture(t)
	target := b.Outputs[3]["out"]
	private := filepath.Join(b.Layout.GCRootsDir(), "private")
	if err := os.Mkdir(private, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(target, filepath.Join(private, "result")); err != nil {
		t.Fatal(err)
	}
	// The file system uid must reach the store, but not into private.
	for d := b.Root; d != filepath.Dir(os.TempDir()) && d != "/"; d = filepath.Dir(d) {
		if strings.HasPrefix(d, os.TempDir()+"/") {
			if err := os.Chmod(d, 0o755); err != nil {
				t.Fatal(err)
			}
		}
	}
	var lax *roots.Result
	var laxErr, strictErr error
	proc := filepath.Join(b.Root, "no-proc")
	onPrivateThread(t, func() {
		unix.Setfsuid(65534) // drops CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH on this thread
		if _, err := os.ReadDir(private); err == nil {
			laxErr = errors.New("setfsuid did not take away the permission to read " + private)
			return
		}
		lax, laxErr = roots.Find(context.Background(), s, roots.Options{NoTemp: true, ProcDir: proc})
		_, strictErr = roots.Find(context.Background(), s, roots.Options{NoTemp: true, ProcDir: proc, Strict: true})
	})
	if laxErr != nil || lax == nil {
		t.Fatalf("Find without Strict: %v", laxErr)
	}
	if hasRoot(lax, filepath.Join(private, "result"), target) {
		t.Fatal("the unreadable root was read: the test tests nothing")
	}
	noted := false
	for _, n := range lax.Notes {
		noted = noted || (n.Link == private && strings.Contains(n.Message, "cannot read potential root"))
	}
	if !noted {
		t.Errorf("the unreadable directory was not noted: %+v", lax.Notes)
	}
	if !errors.Is(strictErr, roots.ErrRootsUnreadable) || !errors.Is(strictErr, fs.ErrPermission) || !strings.Contains(fmt.Sprint(strictErr), private) {
		t.Fatalf("Strict, an unreadable directory under gcroots: %v", strictErr)
	}
}
