package register

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"storekeeper/report"
	"storekeeper/store/db"
	"storekeeper/store/fs"
)

// TestGivenCycleRefusedFirst: references given in a cycle (a -> b -> a)
// are refused in validation, before any tree of the batch is changed
// (not only by db.Register after canonicalisation).
func TestGivenCycleRefusedFirst(t *testing.T) {
	b, s := testStore(t, false)
	a, c, z := newPath(b, "a-cyc"), newPath(b, "c-cyc"), newPath(b, "z-ok")
	roots := map[string]string{}
	for _, p := range []string{a, c, z} {
		roots[p] = tree(t, b, p, 0, map[string]string{"f": "x"})
	}
	before := map[string]meta{}
	for _, r := range roots {
		for k, v := range metaTree(t, r) {
			before[k] = v
		}
	}
	in := []Input{
		{Registration: db.Registration{Path: z}},
		{Registration: db.Registration{Path: a, References: []string{c, a}}},
		{Registration: db.Registration{Path: c, References: []string{a}}},
	}
	res, err := Register(context.Background(), s, in, Options{BuildUID: fs.NoBuildUser, Jobs: 1})
	if !errors.Is(err, db.ErrCycle) || !strings.Contains(err.Error(), a) {
		t.Fatalf("got %v, want ErrCycle naming %s", err, a)
	}
	if res.Paths[0].Err != nil || res.Paths[1].Err == nil || res.Paths[2].Err == nil {
		t.Errorf("per-path errors %v / %v / %v, want the two in the cycle", res.Paths[0].Err, res.Paths[1].Err, res.Paths[2].Err)
	}
	for p, m := range before {
		if got := metaOf(t, p); got != m {
			t.Errorf("%s changed: %+v -> %+v", p, m, got)
		}
	}
	if v := validAmong(t, s, []string{a, c, z}); len(v) != 0 {
		t.Errorf("registered: %v", v)
	}
	// Partial: the cycle is left out, the rest registered.
	res, err = Register(context.Background(), s, in, Options{BuildUID: fs.NoBuildUser, Partial: true})
	if err != nil || res.Registered != 1 || !res.Paths[0].Registered || !errors.Is(res.Paths[1].Err, db.ErrCycle) {
		t.Fatalf("partial: %v, %+v", err, res)
	}
}

// TestAlreadyValidWording: the refusal of a valid path names the CLI's
// flag only, not the library's option.
func TestAlreadyValidWording(t *testing.T) {
	b, s := testStore(t, false)
	p := topPaths(b, 1)[0]
	_, err := Register(context.Background(), s, inputsOf(t, s, []string{p}, false), Options{BuildUID: fs.NoBuildUser})
	if !errors.Is(err, db.ErrAlreadyValid) || !strings.Contains(err.Error(), "--reregister") || strings.Contains(err.Error(), "Options.") {
		t.Fatalf("got %v", err)
	}
}

// TestCheckPassStoreOwner: the check pass of every tree uses the store's
// owner for the nodes an interrupted run left canonical, as the
// canonicalisation does: with a store directory owned by a user other
// than root, a tree holding a node already canonical and owned by that
// user (a rerun after a kill) is accepted, and a node canonical and
// owned by root (not the store's owner) is rejected before any tree of
// the batch is changed.
func TestCheckPassStoreOwner(t *testing.T) {
	needRoot(t)
	const buildUID, storeUID = 30001, 30007
	b, s := testStore(t, false)
	if err := os.Chown(b.Layout.RealStoreDir, storeUID, storeUID); err != nil {
		t.Fatal(err)
	}
	canonical := func(p string, uid int) {
		if err := os.Lchown(p, uid, uid); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, 0o444); err != nil {
			t.Fatal(err)
		}
		if err := unix.Lutimes(p, []unix.Timeval{{Sec: 1}, {Sec: 1}}); err != nil {
			t.Fatal(err)
		}
	}
	// A rerun: one file already canonical, owned by the store's owner.
	p := newPath(b, "rerun")
	root := tree(t, b, p, buildUID, map[string]string{"done": "a", "todo": "b"})
	canonical(filepath.Join(root, "done"), storeUID)
	if _, err := Register(context.Background(), s, []Input{{Registration: db.Registration{Path: p}}}, Options{BuildUID: buildUID}); err != nil {
		t.Fatalf("rerun: %v", err)
	}
	// A root-owned canonical file: not the store owner's; rejected
	// before the batch's other tree (first in order, one job) changes.
	ok, bad := newPath(b, "a-ok"), newPath(b, "b-root")
	okRoot := tree(t, b, ok, buildUID, map[string]string{"f": "a"})
	badRoot := tree(t, b, bad, buildUID, map[string]string{"f": "b"})
	canonical(filepath.Join(badRoot, "f"), 0)
	before := metaTree(t, okRoot)
	_, err := Register(context.Background(), s, []Input{{Registration: db.Registration{Path: ok}}, {Registration: db.Registration{Path: bad}}}, Options{BuildUID: buildUID, Jobs: 1})
	var rej *fs.RejectedError
	if !errors.As(err, &rej) || rej.Kind != fs.RejectOwner {
		t.Fatalf("got %v, want an owner rejection", err)
	}
	for n, m := range before {
		if got := metaOf(t, n); got != m {
			t.Errorf("%s changed before the rejection: %+v -> %+v", n, m, got)
		}
	}
}

// TestRejectedNameEscaped: a file name chosen by the builder (a newline,
// a terminal escape) is escaped in the rejection's text, so it cannot
// forge a line of output.
func TestRejectedNameEscaped(t *testing.T) {
	needRoot(t)
	const buildUID, otherUID = 30001, 30002
	b, s := testStore(t, false)
	p := newPath(b, "evil")
	root := tree(t, b, p, buildUID, map[string]string{"f": "a"})
	name := filepath.Join(root, "x\nregistered 1 path\x1b[2J")
	if err := os.WriteFile(name, []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Lchown(name, otherUID, otherUID); err != nil {
		t.Fatal(err)
	}
	_, err := Register(context.Background(), s, []Input{{Registration: db.Registration{Path: p}}}, Options{BuildUID: buildUID})
	var rej *fs.RejectedError
	if !errors.As(err, &rej) {
		t.Fatalf("got %v, want a rejection", err)
	}
	if strings.ContainsAny(err.Error(), "\n\x1b") {
		t.Errorf("error text holds the raw name: %q", err.Error())
	}
}

// TestSymlinksNotFollowed: a symlink at the top of a path or inside it,
// pointing at a file outside (even the build user's, with a mode and
// mtime canonicalisation would change), is registered as a symlink: the
// target is never changed.
func TestSymlinksNotFollowed(t *testing.T) {
	needRoot(t)
	const buildUID = 30001
	b, s := testStore(t, false)
	outside := filepath.Join(filepath.Dir(b.Layout.RealStoreDir), "outside")
	if err := os.WriteFile(outside, []byte("x"), 0o4755); err != nil {
		t.Fatal(err)
	}
	if err := os.Lchown(outside, buildUID, buildUID); err != nil {
		t.Fatal(err)
	}
	if err := unix.Chmod(outside, 0o4755); err != nil {
		t.Fatal(err)
	}
	before := metaOf(t, outside)
	top, in := newPath(b, "top-link"), newPath(b, "in-link")
	if err := os.Symlink(outside, b.Layout.RealPath(top)); err != nil {
		t.Fatal(err)
	}
	if err := os.Lchown(b.Layout.RealPath(top), buildUID, buildUID); err != nil {
		t.Fatal(err)
	}
	root := tree(t, b, in, buildUID, map[string]string{"f": "a"})
	if err := os.Symlink(outside, filepath.Join(root, "l")); err != nil {
		t.Fatal(err)
	}
	if err := os.Lchown(filepath.Join(root, "l"), buildUID, buildUID); err != nil {
		t.Fatal(err)
	}
	for _, o := range []Options{{BuildUID: buildUID}, {BuildUID: fs.NoBuildUser, Reregister: true}} {
		res, err := Register(context.Background(), s, []Input{{Registration: db.Registration{Path: top}}, {Registration: db.Registration{Path: in}}}, o)
		if err != nil || res.Registered != 2 {
			t.Fatalf("%+v: %v, %+v", o, err, res)
		}
		if got := metaOf(t, outside); got != before {
			t.Fatalf("%+v: the symlinks' target changed: %+v -> %+v", o, before, got)
		}
		if m := metaOf(t, b.Layout.RealPath(top)); m.mode&unix.S_IFMT != unix.S_IFLNK || m.uid != 0 {
			t.Errorf("top symlink: %+v", m)
		}
	}
}

// TestLooksCanonical: a tree canonical throughout (root's, 0444/0555,
// mtime 1) holding a hard link to a foreign root-owned file that looks
// canonical too: with a build user it is rejected (the hard-link check
// runs whatever the top looks like), nothing changed; without one it is
// only read (the fast path), and the foreign file is still unchanged.
func TestLooksCanonical(t *testing.T) {
	needRoot(t)
	const buildUID = 30001
	b, s := testStore(t, false)
	foreign := filepath.Join(filepath.Dir(b.Layout.RealStoreDir), "foreign")
	if err := os.WriteFile(foreign, []byte("secret"), 0o444); err != nil {
		t.Fatal(err)
	}
	p := newPath(b, "looks-canonical")
	root := tree(t, b, p, 0, map[string]string{"f": "a"})
	if err := os.Link(foreign, filepath.Join(root, "g")); err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{filepath.Join(root, "f"), foreign, root} {
		mode := uint32(0o444)
		if n == root {
			mode = 0o555
		}
		if err := unix.Chmod(n, mode); err != nil {
			t.Fatal(err)
		}
		if err := unix.Lutimes(n, []unix.Timeval{{Sec: 1}, {Sec: 1}}); err != nil {
			t.Fatal(err)
		}
	}
	before, treeBefore := metaOf(t, foreign), metaTree(t, root)
	in := []Input{{Registration: db.Registration{Path: p}}}
	_, err := Register(context.Background(), s, in, Options{BuildUID: buildUID})
	var rej *fs.RejectedError
	if !errors.As(err, &rej) || rej.Kind != fs.RejectHardLink {
		t.Fatalf("with a build user: %v, want a hard-link rejection", err)
	}
	for n, m := range treeBefore {
		if got := metaOf(t, n); got != m {
			t.Errorf("%s changed: %+v -> %+v", n, m, got)
		}
	}
	res, err := Register(context.Background(), s, in, Options{BuildUID: fs.NoBuildUser})
	if err != nil || res.Registered != 1 {
		t.Fatalf("without a build user: %v", err)
	}
	if got := metaOf(t, foreign); got != before {
		t.Errorf("without a build user the foreign file changed: %+v -> %+v", before, got)
	}
}

// TestConcurrentSamePaths: two Register calls of the same batch at once
// (each under the paths' PathLocks): one registers it, the other finds
// it valid under the locks and registers nothing; the rows are right.
func TestConcurrentSamePaths(t *testing.T) {
	b, s := testStore(t, false)
	before := rowDump(t, s, b.Valid)
	in := inputsOf(t, s, b.Valid, true)
	removeRows(t, s, b.Valid)
	errs := make(chan error, 2)
	for range 2 {
		go func() {
			_, err := Register(context.Background(), s, append([]Input(nil), in...), Options{BuildUID: fs.NoBuildUser})
			errs <- err
		}()
	}
	e1, e2 := <-errs, <-errs
	if (e1 == nil) == (e2 == nil) {
		t.Fatalf("want exactly one to succeed: %v / %v", e1, e2)
	}
	if err := errors.Join(e1, e2); !errors.Is(err, db.ErrAlreadyValid) {
		t.Errorf("the other: %v, want ErrAlreadyValid", err)
	}
	if after := rowDump(t, s, b.Valid); strings.Join(before, "\n") != strings.Join(after, "\n") {
		t.Errorf("rows differ:\n%s", lineDiff(before, after))
	}
}

// phaseHook is a Progress calling fn at each phase start.
type phaseHook struct {
	report.Log
	fn func(name string)
}

func (h *phaseHook) Phase(name string, total int64, bytes bool) { h.fn(name) }
func (h *phaseHook) Add(int64)                                  {}

// TestChunkedUndoReferred: in a batch registered in chunks, a later
// chunk fails after another process registered a path referring to a
// path of an earlier chunk: the undo cannot make that one invalid (its
// referrer would dangle), so the earlier chunks stay valid, every valid
// path's references valid, and the error says so. A rerun with
// Reregister completes with the rows one transaction gives.
func TestChunkedUndoReferred(t *testing.T) {
	b, s, before, in, bad := chunkedMismatch(t)
	// Once the first chunk is registered, "another process" registers a
	// path referring to one of its paths.
	other := newPath(b, "other-referrer")
	tree(t, b, other, 0, map[string]string{"f": "x"})
	registered := 0
	var firstDone string
	hook := &phaseHook{}
	hook.fn = func(name string) {
		if name == "registering" {
			registered++
			return
		}
		if name == "hashing" && registered == 1 && firstDone == "" {
			for _, p := range b.Valid {
				if v := validAmong(t, s, []string{p}); len(v) == 1 {
					firstDone = p
					break
				}
			}
			if firstDone == "" {
				t.Fatal("no path valid after the first chunk")
			}
			if _, err := Register(context.Background(), s, []Input{{Registration: db.Registration{Path: other, References: []string{firstDone}}}}, Options{BuildUID: fs.NoBuildUser}); err != nil {
				t.Fatalf("the other registration: %v", err)
			}
		}
	}
	res, err := Register(context.Background(), s, in, Options{BuildUID: fs.NoBuildUser, Progress: hook})
	if !errors.Is(err, ErrHashMismatch) || !strings.Contains(err.Error(), "could not be made invalid again") {
		t.Fatalf("got %v", err)
	}
	valid := validAmong(t, s, b.Valid)
	if len(valid) == 0 || res.Registered != len(valid) {
		t.Errorf("%d valid, result says %d registered", len(valid), res.Registered)
	}
	// Every valid path's references are valid.
	rows, missing, err := s.DB.Closure(context.Background(), append(valid, other))
	if err != nil || len(missing) > 0 {
		t.Fatalf("closure of the valid paths: %v, missing %v", err, missing)
	}
	_ = rows
	for i := range in {
		if in[i].Path == bad {
			in[i].NarHash[0] ^= 1
		}
	}
	if _, err := Register(context.Background(), s, in, Options{BuildUID: fs.NoBuildUser}); !errors.Is(err, db.ErrAlreadyValid) {
		t.Fatalf("rerun: %v, want the paths already valid refused", err)
	}
	if _, err := Register(context.Background(), s, in, Options{BuildUID: fs.NoBuildUser, Reregister: true}); err != nil {
		t.Fatalf("rerun with Reregister: %v", err)
	}
	if after := rowDump(t, s, b.Valid); strings.Join(before, "\n") != strings.Join(after, "\n") {
		t.Errorf("rows differ:\n%s", lineDiff(before, after))
	}
}

// TestSwappedAfterCanonicalised: a build user still running can rename
// entries of a directory whose children were canonicalised but which is
// not itself yet (children go first). A file of its own put there (its
// owner, mode 0644: writable by it after registration) must not be
// registered: the read after canonicalisation checks every node.
func TestSwappedAfterCanonicalised(t *testing.T) {
	needRoot(t)
	const buildUID = 30001
	b, s := testStore(t, false)
	p := newPath(b, "swapped")
	files := map[string]string{}
	const n = 3000
	for i := range n {
		files[filepath.Join("d", "f"+strconv.Itoa(i))] = "x"
	}
	root := tree(t, b, p, buildUID, files)
	dir := filepath.Join(root, "d")
	done := make(chan struct{})
	swapped := make(chan string, 1)
	go func() {
		defer close(swapped)
		for {
			select {
			case <-done:
				return
			default:
			}
			for i := range n {
				f := filepath.Join(dir, "f"+strconv.Itoa(i))
				var st unix.Stat_t
				if unix.Lstat(f, &st) != nil || st.Uid != 0 || st.Mtim.Sec != 1 {
					continue
				}
				// Changed by the canonicalisation: put a file of the
				// build user's in its place.
				tmp := filepath.Join(dir, ".new")
				if err := os.WriteFile(tmp, []byte("mine"), 0o644); err != nil {
					t.Error(err)
					return
				}
				os.Lchown(tmp, buildUID, buildUID)
				if err := os.Rename(tmp, f); err != nil {
					t.Error(err)
					return
				}
				swapped <- f
				return
			}
		}
	}()
	res, err := Register(context.Background(), s, []Input{{Registration: db.Registration{Path: p}}}, Options{BuildUID: buildUID, Jobs: 1})
	close(done)
	f, ok := <-swapped
	if !ok {
		t.Skip("the canonicalisation ended before a file could be swapped")
	}
	if err == nil {
		m := metaOf(t, f)
		t.Fatalf("registered (%d) with %s swapped in after its canonicalisation: uid %d mode %o", res.Registered, f, m.uid, m.mode&0o7777)
	}
	// (A swap by this test, which is root, during the read itself is
	// the NAR walk's "changed" error.)
	if !errors.Is(err, fs.ErrTreeChanged) && !strings.Contains(err.Error(), "changed") {
		t.Errorf("got %v, want ErrTreeChanged", err)
	}
	if v := validAmong(t, s, []string{p}); len(v) != 0 {
		t.Errorf("registered: %v", v)
	}
}

// TestTreeErrorNameEscaped: an error about a node inside a tree (here: a
// tree nested deeper than Canonicalise follows) whose path holds a
// builder's name with a newline does not carry the raw newline, which
// would forge a line of output.
func TestTreeErrorNameEscaped(t *testing.T) {
	b, s := testStore(t, false)
	p := newPath(b, "deep")
	root := tree(t, b, p, 0, map[string]string{"f": "a"})
	fd, err := unix.Open(root, unix.O_RDONLY|unix.O_DIRECTORY, 0)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 2100 {
		name := "d"
		if i == 0 {
			name = "x\nregistered 1 path"
		}
		if err := unix.Mkdirat(fd, name, 0o755); err != nil {
			t.Fatal(err)
		}
		nfd, err := unix.Openat(fd, name, unix.O_RDONLY|unix.O_DIRECTORY, 0)
		unix.Close(fd)
		if err != nil {
			t.Fatal(err)
		}
		fd = nfd
	}
	unix.Close(fd)
	_, err = Register(context.Background(), s, []Input{{Registration: db.Registration{Path: p}}}, Options{BuildUID: fs.NoBuildUser})
	if err == nil {
		t.Fatal("registered a tree nested 2100 deep")
	}
	if strings.Contains(err.Error(), "\n") {
		t.Errorf("error text holds a raw newline: %q", err.Error())
	}
}
