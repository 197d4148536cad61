package register

import (
	"context"
	"errors"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"storekeeper/lock"
	"storekeeper/nix/derivation"
	"storekeeper/nix/nar"
	"storekeeper/report"
	"storekeeper/store/db"
	"storekeeper/store/fs"
	"storekeeper/store/storetest"
)

// TestRoundTrip: the rows of every path removed and registered again (in
// a shuffled order, hash computed or given) are the rows that were
// there: ValidPaths (hash, time, deriver, size, ultimate, sigs, ca),
// Refs and the .drv files' DerivationOutputs; on Nix's schema and
// Guix's.
func TestRoundTrip(t *testing.T) {
	for _, c := range []struct {
		name            string
		guix, hashGiven bool
	}{{"nix", false, false}, {"nix-hash-given", false, true}, {"guix", true, false}} {
		t.Run(c.name, func(t *testing.T) {
			b, s := testStore(t, c.guix)
			before := rowDump(t, s, b.Valid)
			if len(before) < len(b.Valid) {
				t.Fatalf("only %d rows for %d paths", len(before), len(b.Valid))
			}
			paths := slices.Clone(b.Valid)
			rand.New(rand.NewPCG(1, 2)).Shuffle(len(paths), func(i, j int) { paths[i], paths[j] = paths[j], paths[i] })
			in := inputsOf(t, s, paths, c.hashGiven)
			removeRows(t, s, b.Valid)
			if v := validAmong(t, s, b.Valid); len(v) != 0 {
				t.Fatalf("still valid: %v", v)
			}
			res, err := Register(context.Background(), s, in, Options{BuildUID: fs.NoBuildUser})
			if err != nil {
				t.Fatal(err)
			}
			if res.Registered != len(paths) {
				t.Fatalf("registered %d of %d", res.Registered, len(paths))
			}
			var bytes uint64
			for i, pr := range res.Paths {
				if pr.Path != paths[i] || !pr.Registered || pr.Err != nil || pr.NarSize == 0 {
					t.Fatalf("result %d: %+v", i, pr)
				}
				bytes += pr.NarSize
			}
			if res.Bytes != bytes {
				t.Errorf("Bytes %d, the paths' sizes add up to %d", res.Bytes, bytes)
			}
			after := rowDump(t, s, b.Valid)
			if !slices.Equal(before, after) {
				t.Errorf("rows differ:\n%s", lineDiff(before, after))
			}
		})
	}
}

func lineDiff(a, b []string) string {
	var out []string
	for _, l := range a {
		if !slices.Contains(b, l) {
			out = append(out, "- "+l)
		}
	}
	for _, l := range b {
		if !slices.Contains(a, l) {
			out = append(out, "+ "+l)
		}
	}
	if len(out) > 20 {
		out = out[:20]
	}
	return strings.Join(out, "\n")
}

// TestHashMismatch: a given hash (or size) that is not the tree's refuses
// the batch with *MismatchError (expected and got in sha256:base32, the
// NAR size) and registers nothing.
func TestHashMismatch(t *testing.T) {
	b, s := testStore(t, false)
	paths := topPaths(b, 4)
	in := inputsOf(t, s, paths, true)
	removeRows(t, s, paths)
	good := in[2].NarHash
	in[2].NarHash[0] ^= 1
	_, err := Register(context.Background(), s, in, Options{BuildUID: fs.NoBuildUser})
	var me *MismatchError
	if !errors.Is(err, ErrHashMismatch) || !errors.As(err, &me) {
		t.Fatalf("got %v, want a *MismatchError", err)
	}
	if me.Path != paths[2] || me.Got != good || me.Expected != in[2].NarHash {
		t.Errorf("mismatch error %+v", me)
	}
	for _, want := range []string{paths[2], good.String(), in[2].NarHash.String(), "NAR size", "nothing was registered"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not say %q", err, want)
		}
	}
	if v := validAmong(t, s, paths); len(v) != 0 {
		t.Errorf("registered despite the mismatch: %v", v)
	}
	// A wrong size alone.
	in[2].NarHash = good
	in[2].NarSize++
	_, err = Register(context.Background(), s, in, Options{BuildUID: fs.NoBuildUser})
	if !errors.As(err, &me) || me.ExpectedSize != me.GotSize+1 || !strings.Contains(err.Error(), "NAR size expected") {
		t.Fatalf("wrong size: got %v", err)
	}
	if v := validAmong(t, s, paths); len(v) != 0 {
		t.Errorf("registered despite the size mismatch: %v", v)
	}
}

// TestBadInput: an invalid reference, a path outside the store, a path
// given twice, a missing tree: each refuses the batch naming the path,
// and nothing is registered.
func TestBadInput(t *testing.T) {
	b, s := testStore(t, false)
	paths := topPaths(b, 3)
	base := inputsOf(t, s, paths, false)
	removeRows(t, s, paths)
	ghost := newPath(b, "ghost")
	for _, c := range []struct {
		name   string
		mutate func(in []Input) []Input
		is     error
		says   string
	}{
		{"invalid reference", func(in []Input) []Input {
			in[1].References = append(slices.Clone(in[1].References), ghost)
			return in
		}, db.ErrNotValidReference, ghost},
		{"outside the store", func(in []Input) []Input {
			in[0].Path = "/tmp/x\nforged"
			return in
		}, ErrNotInStore, `/tmp/x\nforged`},
		{"twice", func(in []Input) []Input { return append(in, in[0]) }, ErrBadInput, "given twice"},
		{"missing", func(in []Input) []Input {
			in = append(in, Input{Registration: db.Registration{Path: ghost}})
			return in
		}, ErrMissing, ghost},
		{"bad deriver", func(in []Input) []Input {
			in[2].Deriver = "/nix/store/short"
			return in
		}, ErrBadInput, "deriver"},
	} {
		t.Run(c.name, func(t *testing.T) {
			in := c.mutate(slices.Clone(base))
			res, err := Register(context.Background(), s, in, Options{BuildUID: fs.NoBuildUser})
			if !errors.Is(err, c.is) || !strings.Contains(err.Error(), c.says) || !strings.Contains(err.Error(), "nothing was registered") {
				t.Fatalf("got %v, want %v saying %q", err, c.is, c.says)
			}
			failed := 0
			for _, pr := range res.Paths {
				if pr.Registered {
					t.Errorf("%s registered", pr.Path)
				}
				if pr.Err != nil {
					failed++
				}
			}
			if failed != 1 {
				t.Errorf("%d paths have an error, want 1", failed)
			}
			if v := validAmong(t, s, paths); len(v) != 0 {
				t.Errorf("registered: %v", v)
			}
		})
	}
}

// TestAlreadyValid: a valid path is refused (naming --reregister) unless
// Reregister, which updates its row (hash, size, sigs) and keeps its old
// references, as Nix.
func TestAlreadyValid(t *testing.T) {
	b, s := testStore(t, false)
	p := topPaths(b, 1)[0]
	in := inputsOf(t, s, []string{p}, false)
	before := rowDump(t, s, []string{p})
	_, err := Register(context.Background(), s, in, Options{BuildUID: fs.NoBuildUser})
	if !errors.Is(err, db.ErrAlreadyValid) || !strings.Contains(err.Error(), "--reregister") || !strings.Contains(err.Error(), p) {
		t.Fatalf("got %v, want ErrAlreadyValid naming the path and --reregister", err)
	}
	if after := rowDump(t, s, []string{p}); !slices.Equal(before, after) {
		t.Fatalf("rows changed:\n%s", lineDiff(before, after))
	}
	in[0].Sigs = []string{"test:c2ln"}
	in[0].References = nil
	res, err := Register(context.Background(), s, in, Options{BuildUID: fs.NoBuildUser, Reregister: true})
	if err != nil || res.Registered != 1 {
		t.Fatalf("reregister: %v, %+v", err, res)
	}
	after := rowDump(t, s, []string{p})
	var refsBefore, refsAfter []string
	for _, l := range before {
		if strings.HasPrefix(l, "R ") {
			refsBefore = append(refsBefore, l)
		}
	}
	for _, l := range after {
		if strings.HasPrefix(l, "R ") {
			refsAfter = append(refsAfter, l)
		}
		if strings.HasPrefix(l, "V ") && !strings.Contains(l, "test:c2ln") {
			t.Errorf("row not updated: %s", l)
		}
	}
	if !slices.Equal(refsBefore, refsAfter) {
		t.Errorf("references changed: %v -> %v", refsBefore, refsAfter)
	}
}

// TestOwnershipRejected: with a build user, a path holding a file of
// another uid, or a hard link to a file outside it (ln /etc/shadow), is
// rejected naming the file and its owner, and nothing changes in ANY
// path of the batch (owners, modes, mtimes), the foreign file included;
// nothing is registered.
func TestOwnershipRejected(t *testing.T) {
	needRoot(t)
	const buildUID, otherUID = 30001, 30002
	for _, c := range []struct {
		name  string
		plant func(t *testing.T, root string) string // returns the foreign file
		kind  fs.RejectKind
	}{
		{"other user's file", func(t *testing.T, root string) string {
			p := filepath.Join(root, "share", "theirs")
			if err := os.WriteFile(p, []byte("x"), 0o4755); err != nil {
				t.Fatal(err)
			}
			if err := os.Lchown(p, otherUID, otherUID); err != nil {
				t.Fatal(err)
			}
			if err := unix.Chmod(p, 0o4755); err != nil { // after the chown, which clears it
				t.Fatal(err)
			}
			return p
		}, fs.RejectOwner},
		{"hard link outside", func(t *testing.T, root string) string {
			secret := filepath.Join(filepath.Dir(filepath.Dir(root)), "shadow") // beside the store, same file system
			if err := os.WriteFile(secret, []byte("root:secret"), 0o600); err != nil {
				t.Fatal(err)
			}
			if err := os.Lchown(secret, buildUID, buildUID); err != nil { // even owned by the build user
				t.Fatal(err)
			}
			if err := os.Link(secret, filepath.Join(root, "share", "foo")); err != nil {
				t.Fatal(err)
			}
			return secret
		}, fs.RejectHardLink},
	} {
		t.Run(c.name, func(t *testing.T) {
			b, s := testStore(t, false)
			a, bad, z := newPath(b, "a-ok"), newPath(b, "b-bad"), newPath(b, "z-ok")
			var roots []string
			for _, p := range []string{a, bad, z} {
				roots = append(roots, tree(t, b, p, buildUID, map[string]string{"bin/x": "#!/bin/sh\n", "share/": ""}))
			}
			if err := unix.Chmod(filepath.Join(roots[0], "bin/x"), 0o4755); err != nil {
				t.Fatal(err)
			}
			foreign := c.plant(t, roots[1])
			before := map[string]meta{}
			for _, r := range roots {
				for k, v := range metaTree(t, r) {
					before[k] = v
				}
			}
			before[foreign] = metaOf(t, foreign)
			in := []Input{{Registration: db.Registration{Path: a}}, {Registration: db.Registration{Path: bad}}, {Registration: db.Registration{Path: z}}}
			// One job: without the check of every path first, a-ok
			// would be canonicalised before b-bad is looked at.
			_, err := Register(context.Background(), s, in, Options{BuildUID: buildUID, Jobs: 1})
			var rej *fs.RejectedError
			if !errors.As(err, &rej) || rej.Kind != c.kind {
				t.Fatalf("got %v, want a %s rejection", err, c.kind)
			}
			if !strings.Contains(err.Error(), bad) || !strings.Contains(err.Error(), "nothing") {
				t.Errorf("error %q does not name the path or say nothing changed", err)
			}
			for p, m := range before {
				if got := metaOf(t, p); got != m {
					t.Errorf("%s changed: %+v -> %+v", p, m, got)
				}
			}
			if v := validAmong(t, s, []string{a, bad, z}); len(v) != 0 {
				t.Errorf("registered: %v", v)
			}
		})
	}
}

// TestCanonicalised: with the build user, a tree with internal hard links
// is accepted, setuid bits are cleared, and every node gets the store's
// owner, mode 0444/0555 and mtime 1; the NAR hash is the canonical tree's.
func TestCanonicalised(t *testing.T) {
	needRoot(t)
	const buildUID = 30001
	b, s := testStore(t, false)
	p := newPath(b, "linked")
	root := tree(t, b, p, buildUID, map[string]string{"bin/tool": "#!/bin/sh\necho hi\n", "lib/data": "data"})
	if err := os.Link(filepath.Join(root, "lib/data"), filepath.Join(root, "lib/data2")); err != nil {
		t.Fatal(err)
	}
	if err := unix.Chmod(filepath.Join(root, "bin/tool"), 0o6755); err != nil {
		t.Fatal(err)
	}
	if m := metaOf(t, filepath.Join(root, "bin/tool")); m.mode&0o7000 != 0o6000 {
		t.Fatalf("setup: mode %o", m.mode)
	}
	if err := os.Symlink("lib/data", filepath.Join(root, "link")); err != nil {
		t.Fatal(err)
	}
	os.Lchown(filepath.Join(root, "link"), buildUID, buildUID)
	res, err := Register(context.Background(), s, []Input{{Registration: db.Registration{Path: p}}}, Options{BuildUID: buildUID})
	if err != nil {
		t.Fatal(err)
	}
	for node, m := range metaTree(t, root) {
		want := uint32(0o444)
		switch {
		case m.mode&unix.S_IFMT == unix.S_IFDIR || strings.HasSuffix(node, "tool"):
			want = 0o555
		case m.mode&unix.S_IFMT == unix.S_IFLNK:
			continue
		}
		if m.mode&0o7777 != want || m.uid != 0 || m.mtime.Sec != 1 {
			t.Errorf("%s: mode %o uid %d mtime %d, want %o uid 0 mtime 1", node, m.mode&0o7777, m.uid, m.mtime.Sec, want)
		}
	}
	h, n, err := nar.HashPath(root)
	if err != nil {
		t.Fatal(err)
	}
	if res.Paths[0].NarHash != h || res.Paths[0].NarSize != uint64(n) {
		t.Errorf("registered %s/%d, the tree hashes to %s/%d", res.Paths[0].NarHash, res.Paths[0].NarSize, h, n)
	}
	rows, err := s.DB.PathRows(context.Background(), []string{p})
	if err != nil || rows[p] == nil || rows[p].NarHash != h {
		t.Fatalf("row: %v %+v", err, rows[p])
	}
}

// TestFIFORejected: a FIFO in one path of the batch rejects it (also
// without a build user) and nothing of the batch is changed or registered.
func TestFIFORejected(t *testing.T) {
	b, s := testStore(t, false)
	ok, bad := newPath(b, "fine"), newPath(b, "fifo")
	okRoot := tree(t, b, ok, os.Geteuid(), map[string]string{"f": "x"})
	badRoot := tree(t, b, bad, os.Geteuid(), map[string]string{"f": "x"})
	if err := unix.Mkfifo(filepath.Join(badRoot, "pipe"), 0o644); err != nil {
		t.Fatal(err)
	}
	before := metaTree(t, okRoot)
	_, err := Register(context.Background(), s, []Input{{Registration: db.Registration{Path: ok}}, {Registration: db.Registration{Path: bad}}}, Options{BuildUID: fs.NoBuildUser})
	var rej *fs.RejectedError
	if !errors.As(err, &rej) || rej.Kind != fs.RejectType || !strings.Contains(err.Error(), "pipe") {
		t.Fatalf("got %v, want a type rejection naming the FIFO", err)
	}
	if after := metaTree(t, okRoot); len(after) != len(before) {
		t.Fatal("tree changed")
	} else {
		for k, v := range before {
			if after[k] != v {
				t.Errorf("%s changed", k)
			}
		}
	}
	if v := validAmong(t, s, []string{ok, bad}); len(v) != 0 {
		t.Errorf("registered: %v", v)
	}
}

// TestScan: the scanner finds exactly the references the store has for
// its outputs (their hash parts are in the files), with every valid path
// as candidates or with a closure given; differing given references are
// replaced, with a warning.
func TestScan(t *testing.T) {
	for _, restricted := range []bool{false, true} {
		b, s := testStore(t, false)
		var outs []string
		for _, o := range b.Outputs {
			for _, p := range o {
				outs = append(outs, p)
			}
		}
		slices.Sort(outs)
		// Every output and what refers to them: referrers of outputs are
		// outputs only, so the outputs are closed under referrers.
		in := inputsOf(t, s, outs, false)
		want := map[string][]string{}
		for i := range in {
			want[in[i].Path] = in[i].References
		}
		in[0].References = nil
		if len(in[1].References) > 0 {
			in[1].References = in[1].References[:len(in[1].References)-1]
		} else {
			in[1].References = []string{in[2].Path}
		}
		removeRows(t, s, outs)
		o := Options{BuildUID: fs.NoBuildUser, Scan: true, Progress: &report.Log{}}
		if restricted {
			o.Candidates = []string{}
		}
		res, err := Register(context.Background(), s, in, o)
		if err != nil {
			t.Fatal(err)
		}
		for _, pr := range res.Paths {
			if !slices.Equal(pr.References, want[pr.Path]) {
				t.Errorf("restricted %v: %s: scanned %v, want %v", restricted, pr.Path, pr.References, want[pr.Path])
			}
		}
		warns := o.Progress.(*report.Log).Texts(report.LevelWarning)
		if len(warns) != 1 || !strings.Contains(warns[0], in[1].Path) {
			t.Errorf("warnings %q, want one about %s", warns, in[1].Path)
		}
	}
}

// TestScanCandidates: a candidate neither valid nor in the batch is bad
// input.
func TestScanCandidates(t *testing.T) {
	b, s := testStore(t, false)
	p := topPaths(b, 1)[0]
	in := inputsOf(t, s, []string{p}, false)
	removeRows(t, s, []string{p})
	_, err := Register(context.Background(), s, in, Options{BuildUID: fs.NoBuildUser, Scan: true, Candidates: []string{newPath(b, "nope")}})
	if !errors.Is(err, ErrBadInput) || !strings.Contains(err.Error(), "candidate") {
		t.Fatalf("got %v", err)
	}
}

// TestPartial: in Partial mode the paths that pass are registered, a
// mismatching one and the paths referring to it are left out with their
// errors, and Register returns no error.
func TestPartial(t *testing.T) {
	b, s := testStore(t, false)
	// A chain inside the batch: an output, and a path referring to it.
	var dep, referrer string
	for p, refs := range b.Refs {
		for _, r := range refs {
			if r != p && !strings.HasSuffix(p, ".drv") {
				dep, referrer = r, p
			}
		}
	}
	if dep == "" {
		t.Fatal("no reference in the store")
	}
	// Remove the closure of referrers of dep (all of them).
	set := map[string]bool{dep: true}
	for changed := true; changed; {
		changed = false
		for p, refs := range b.Refs {
			if set[p] {
				continue
			}
			for _, r := range refs {
				if set[r] {
					set[p], changed = true, true
					break
				}
			}
		}
	}
	var paths []string
	for p := range set {
		paths = append(paths, p)
	}
	slices.Sort(paths)
	in := inputsOf(t, s, paths, true)
	removeRows(t, s, paths)
	extra := newPath(b, "extra")
	tree(t, b, extra, os.Geteuid(), map[string]string{"f": "x"})
	in = append(in, Input{Registration: db.Registration{Path: extra}})
	var depIdx int
	for i := range in {
		if in[i].Path == dep {
			depIdx = i
			in[i].NarHash[3] ^= 0xff
		}
	}
	res, err := Register(context.Background(), s, in, Options{BuildUID: fs.NoBuildUser, Partial: true})
	if err != nil {
		t.Fatal(err)
	}
	if !errors.Is(res.Paths[depIdx].Err, ErrHashMismatch) || res.Paths[depIdx].Registered {
		t.Errorf("dep: %+v", res.Paths[depIdx])
	}
	for i, pr := range res.Paths {
		if i == depIdx || pr.Path == extra {
			continue
		}
		if pr.Registered || !errors.Is(pr.Err, ErrReferenceFailed) {
			t.Errorf("%s (refers to the failed path, directly or not): %+v", pr.Path, pr)
		}
	}
	if last := res.Paths[len(res.Paths)-1]; !last.Registered || last.Err != nil || res.Registered != 1 {
		t.Errorf("extra: %+v; registered %d", last, res.Registered)
	}
	if v := validAmong(t, s, append(paths, extra)); !slices.Equal(v, []string{extra}) {
		t.Errorf("valid: %v, want only %s", v, extra)
	}
	_ = referrer
}

// TestDerivationOutputs: a .drv whose output path is not the one Nix
// computes is refused, naming the output and the right path.
func TestDerivationOutputs(t *testing.T) {
	b, s := testStore(t, false)
	drv := b.Drvs[len(b.Drvs)-1]
	data, err := os.ReadFile(b.Layout.RealPath(drv))
	if err != nil {
		t.Fatal(err)
	}
	d, err := derivation.Parse(data, b.Layout.StoreDir)
	if err != nil {
		t.Fatal(err)
	}
	right := d.Outputs[0].Path
	wrong := newPath(b, "wrong-out")
	d.Outputs[0].Path = wrong
	for i := range d.Env {
		if d.Env[i].Name == d.Outputs[0].Name {
			d.Env[i].Value = wrong
		}
	}
	bad := newPath(b, "bad.drv")
	if err := os.WriteFile(b.Layout.RealPath(bad), []byte(d.String()), 0o444); err != nil {
		t.Fatal(err)
	}
	in := inputsOf(t, s, []string{drv}, false)
	in[0].Path = bad
	_, err = Register(context.Background(), s, in, Options{BuildUID: fs.NoBuildUser})
	if !errors.Is(err, ErrBadDerivation) || !strings.Contains(err.Error(), wrong) || !strings.Contains(err.Error(), "should be") {
		t.Fatalf("got %v", err)
	}
	// The name changes the output paths: the right ones for the original
	// name are wrong here too.
	_ = right
	if v := validAmong(t, s, []string{bad}); len(v) != 0 {
		t.Error("registered")
	}
	// A malformed .drv.
	if err := os.WriteFile(b.Layout.RealPath(newPath(b, "junk.drv")), []byte("Derive(["), 0o444); err != nil {
		t.Fatal(err)
	}
	in[0].Path = newPath(b, "junk.drv")
	_, err = Register(context.Background(), s, in, Options{BuildUID: fs.NoBuildUser})
	if !errors.Is(err, ErrBadDerivation) || !errors.Is(err, derivation.ErrBadDerivation) {
		t.Fatalf("malformed: got %v", err)
	}
}

// fakeLimits replaces the rlimit system calls for a test: the limit
// starts at cur/max, a raise of the hard limit past max fails with EPERM
// (no CAP_SYS_RESOURCE), and every set is recorded.
func fakeLimits(t *testing.T, cur, max, nrOpen uint64) *[]syscall.Rlimit {
	saved := rlimits
	t.Cleanup(func() { rlimits = saved })
	var set []syscall.Rlimit
	now := syscall.Rlimit{Cur: cur, Max: max}
	rlimits.get = func(r *syscall.Rlimit) error { *r = now; return nil }
	rlimits.set = func(r *syscall.Rlimit) error {
		set = append(set, *r)
		if r.Max > max {
			return syscall.EPERM
		}
		now = *r
		return nil
	}
	rlimits.nrOpen = func() (uint64, error) { return nrOpen, nil }
	return &set
}

// TestFileLimit: a batch that needs more lock files than the open-file
// limit allows, which cannot be raised enough for even one path beside
// the reserve, is refused with ErrTooMany before anything changes; one
// that fits under the hard limit raises the soft limit.
func TestFileLimit(t *testing.T) {
	b, s := testStore(t, false)
	paths := topPaths(b, 3)
	in := inputsOf(t, s, paths, false)
	removeRows(t, s, paths)
	set := fakeLimits(t, 100, 500, 1<<20)
	_, err := Register(context.Background(), s, in, Options{BuildUID: fs.NoBuildUser})
	if !errors.Is(err, ErrTooMany) || !strings.Contains(err.Error(), "limit is 100") || !strings.Contains(err.Error(), "smaller batches") {
		t.Fatalf("got %v", err)
	}
	if len(*set) != 2 || (*set)[0] != (syscall.Rlimit{Cur: 500, Max: 500}) || (*set)[1].Max != (*set)[1].Cur || (*set)[1].Cur < 3 {
		t.Errorf("setrlimit calls %v, want the soft limit raised to the hard one, then a try at the hard one", *set)
	}
	if v := validAmong(t, s, paths); len(v) != 0 {
		t.Errorf("registered: %v", v)
	}
	// Past the kernel's ceiling: no attempt at the hard limit.
	set = fakeLimits(t, 100, 500, 200)
	if _, err := Register(context.Background(), s, in, Options{BuildUID: fs.NoBuildUser}); !errors.Is(err, ErrTooMany) || len(*set) != 1 {
		t.Fatalf("over nr_open: %v, set %v", err, *set)
	}
	// With Scan, a batch that does not fit is refused too (references
	// are only known once hashed, so no dependency order for chunks).
	set = fakeLimits(t, fileReserve+2, fileReserve+2, 1<<20)
	if _, err := Register(context.Background(), s, in, Options{BuildUID: fs.NoBuildUser, Scan: true}); !errors.Is(err, ErrTooMany) {
		t.Fatalf("scan: %v", err)
	}
	// Under the hard limit: the soft limit goes up to it.
	set = fakeLimits(t, 100, 1<<16, 1<<20)
	if _, err := Register(context.Background(), s, in, Options{BuildUID: fs.NoBuildUser}); err != nil {
		t.Fatal(err)
	}
	if len(*set) != 1 || (*set)[0].Cur != 1<<16 || (*set)[0].Max != 1<<16 {
		t.Errorf("setrlimit calls %v, want the soft limit raised to the hard one", *set)
	}
}

// TestChunked: a batch larger than the locks the open-file limit allows
// at once is registered in chunks in dependency order, with the same rows
// as one transaction gives; in all-or-nothing mode a failure in a later
// chunk undoes the earlier ones, so nothing is left registered.
func TestChunked(t *testing.T) {
	b, s, before, in, bad := chunkedMismatch(t)
	log := &report.Log{}
	res, err := Register(context.Background(), s, in, Options{BuildUID: fs.NoBuildUser, Progress: log})
	if !errors.Is(err, ErrHashMismatch) || res.Registered != 0 {
		t.Fatalf("got %v, %d registered", err, res.Registered)
	}
	if v := validAmong(t, s, b.Valid); len(v) != 0 {
		t.Fatalf("%d paths left valid after the undo: %v", len(v), v[:min(3, len(v))])
	}
	if info := log.Texts(report.LevelInfo); len(info) != 2 || !strings.Contains(info[0], "chunks of at most 10") || !strings.Contains(info[1], "invalid again") {
		t.Errorf("info %q, want the chunks and the undo", info)
	}
	for i := range in {
		if in[i].Path == bad {
			in[i].NarHash[0] ^= 1
		}
	}
	res, err = Register(context.Background(), s, in, Options{BuildUID: fs.NoBuildUser})
	if err != nil || res.Registered != len(in) {
		t.Fatalf("%v, %d registered", err, res.Registered)
	}
	if after := rowDump(t, s, b.Valid); !slices.Equal(before, after) {
		t.Errorf("rows differ:\n%s", lineDiff(before, after))
	}
}

// TestLocked: Register under Locks the caller holds (copy's way) leaves
// them held; a path the Locks do not hold is bad input. Register's own
// locks and temporary roots are gone when it returns.
func TestLocked(t *testing.T) {
	b, s := testStore(t, false)
	paths := topPaths(b, 3)
	in := inputsOf(t, s, paths, false)
	removeRows(t, s, paths)
	l, err := Lock(context.Background(), s, paths[:2])
	if err != nil {
		t.Fatal(err)
	}
	_, err = Register(context.Background(), s, in, Options{BuildUID: fs.NoBuildUser, Locked: l})
	if !errors.Is(err, ErrBadInput) || !strings.Contains(err.Error(), paths[2]) {
		t.Fatalf("got %v", err)
	}
	res, err := Register(context.Background(), s, in[:2], Options{BuildUID: fs.NoBuildUser, Locked: l})
	if err != nil || res.Registered != 2 {
		t.Fatalf("%v %+v", err, res)
	}
	// Still held: another locker would block.
	if _, err := lock.LockPaths(context.Background(), []string{b.Layout.RealPath(paths[0])}, false, nil); !errors.Is(err, lock.ErrWouldBlock) {
		t.Errorf("lock not held after Register with Locked: %v", err)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	res, err = Register(context.Background(), s, in[2:], Options{BuildUID: fs.NoBuildUser})
	if err != nil || res.Registered != 1 {
		t.Fatalf("%v %+v", err, res)
	}
	pl, err := lock.LockPaths(context.Background(), []string{b.Layout.RealPath(paths[0]), b.Layout.RealPath(paths[2])}, false, nil)
	if err != nil {
		t.Fatalf("locks left held: %v", err)
	}
	pl.Unlock(true)
	ents, _ := os.ReadDir(b.Layout.TempRootsDir())
	for _, e := range ents {
		if e.Name() == strconv.Itoa(os.Getpid()) {
			t.Errorf("temporary roots file left: %s", e.Name())
		}
	}
}

// TestCancelled: a cancelled context stops the batch with an error
// wrapping it; nothing is registered and the locks are released.
func TestCancelled(t *testing.T) {
	b, s := testStore(t, false)
	paths := topPaths(b, 3)
	in := inputsOf(t, s, paths, false)
	removeRows(t, s, paths)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err := Register(ctx, s, in, Options{BuildUID: fs.NoBuildUser})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("got %v", err)
	}
	if v := validAmong(t, s, paths); len(v) != 0 {
		t.Errorf("registered: %v", v)
	}
	pl, err := lock.LockPaths(context.Background(), []string{b.Layout.RealPath(paths[0])}, false, nil)
	if err != nil {
		t.Fatalf("locks left held: %v", err)
	}
	pl.Unlock(true)
}

// TestReadOnly: a read-only store is refused at once.
func TestReadOnly(t *testing.T) {
	b := storetest.MustBuild(t, storetest.DefaultSpec())
	s := storetest.OpenRO(t, b.Layout)
	if _, err := Register(context.Background(), s, []Input{{Registration: db.Registration{Path: b.Valid[0]}}}, Options{}); !errors.Is(err, ErrReadOnly) {
		t.Fatalf("got %v", err)
	}
}

// TestCanonicalTop: trees whose top is canonical are read first with
// their nodes checked: one with a non-canonical file inside or an
// extended attribute is still canonicalised (attribute removed), one
// with a FIFO inside is rejected before the batch's other, non-canonical
// tree is changed at all.
func TestCanonicalTop(t *testing.T) {
	b, s := testStore(t, false)
	canonTop := func(root string) {
		t.Helper()
		if err := unix.Chmod(root, 0o555); err != nil {
			t.Fatal(err)
		}
		if err := unix.UtimesNano(root, []unix.Timespec{{Sec: 1}, {Sec: 1}}); err != nil {
			t.Fatal(err)
		}
	}
	inner, attr, other := newPath(b, "inner"), newPath(b, "attr"), newPath(b, "other")
	innerRoot := tree(t, b, inner, 0, map[string]string{"f": "x"})
	attrRoot := tree(t, b, attr, 0, map[string]string{"f": "y"})
	otherRoot := tree(t, b, other, 0, map[string]string{"f": "z"})
	if err := storetest.Canonicalise(attrRoot); err != nil {
		t.Fatal(err)
	}
	if err := unix.Lsetxattr(filepath.Join(attrRoot, "f"), "user.x", []byte("1"), 0); err != nil {
		t.Skipf("no user xattrs: %v", err)
	}
	canonTop(innerRoot)
	in := []Input{{Registration: db.Registration{Path: inner}}, {Registration: db.Registration{Path: attr}}}
	if _, err := Register(context.Background(), s, in, Options{BuildUID: fs.NoBuildUser}); err != nil {
		t.Fatal(err)
	}
	if m := metaOf(t, filepath.Join(innerRoot, "f")); m.mode&0o7777 != 0o444 || m.mtime.Sec != 1 {
		t.Errorf("inner file not canonicalised: %+v", m)
	}
	if n, err := unix.Llistxattr(filepath.Join(attrRoot, "f"), make([]byte, 64)); err != nil || n != 0 {
		t.Errorf("attribute left: %d, %v", n, err)
	}
	// A FIFO under a canonical top, with a non-canonical tree in the batch.
	fifo := newPath(b, "fifo")
	fifoRoot := tree(t, b, fifo, 0, map[string]string{"f": "w"})
	if err := unix.Mkfifo(filepath.Join(fifoRoot, "p"), 0o444); err != nil {
		t.Fatal(err)
	}
	canonTop(fifoRoot)
	before := metaTree(t, otherRoot)
	in = []Input{{Registration: db.Registration{Path: other}}, {Registration: db.Registration{Path: fifo}}}
	_, err := Register(context.Background(), s, in, Options{BuildUID: fs.NoBuildUser, Jobs: 1})
	var rej *fs.RejectedError
	if !errors.As(err, &rej) || rej.Kind != fs.RejectType {
		t.Fatalf("got %v, want a type rejection", err)
	}
	for p, m := range before {
		if got := metaOf(t, p); got != m {
			t.Errorf("%s changed: %+v -> %+v", p, m, got)
		}
	}
	if v := validAmong(t, s, []string{other, fifo}); len(v) != 0 {
		t.Errorf("registered: %v", v)
	}
}
