package repair

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"storekeeper/lock"
	"storekeeper/nix/nar"
	"storekeeper/store"
	sfs "storekeeper/store/fs"
	"storekeeper/store/storetest"
	"storekeeper/substitute"
	"storekeeper/verify"
	"storekeeper/verify/finding"
)

// fakeSource is an in-memory binary cache: the NARs of intact copies,
// dumped with nar.DumpPath. send overrides what Open streams for a path.
type fakeSource struct {
	url  string
	mu   sync.Mutex
	nars map[string][]byte
	send map[string][]byte
	// openHook runs in Open (tests cancel or block there).
	openHook func(ctx context.Context, path string)
	lookups  int
}

func newFakeSource(t *testing.T, url string, lay store.Layout, paths []string) *fakeSource {
	t.Helper()
	f := &fakeSource{url: url, nars: map[string][]byte{}, send: map[string][]byte{}}
	for _, p := range paths {
		var b bytes.Buffer
		if _, err := nar.DumpPath(&b, lay.RealPath(p)); err != nil {
			t.Fatal(err)
		}
		f.nars[p] = b.Bytes()
	}
	return f
}

func (f *fakeSource) URL() string                      { return f.url }
func (f *fakeSource) Priority(ctx context.Context) int { return 50 }
func (f *fakeSource) Init(ctx context.Context) error   { return nil }

func (f *fakeSource) Lookup(ctx context.Context, w substitute.Want) (*substitute.Offer, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.lookups++
	b, ok := f.nars[w.Path]
	if !ok {
		return nil, fmt.Errorf("%s: %s: %w", f.url, w.Path, substitute.ErrNotFound)
	}
	h := nar.Hash(sha256Sum(b))
	if h != w.NarHash || uint64(len(b)) != w.NarSize {
		return nil, fmt.Errorf("%s: %s: %w", f.url, w.Path, substitute.ErrMismatch)
	}
	return &substitute.Offer{Source: f, Path: w.Path, NarHash: h, NarSize: uint64(len(b)), DownloadSize: uint64(len(b)),
		Compression: "none", Where: f.url + "/" + filepath.Base(w.Path) + ".nar", Trust: "the test's say-so"}, nil
}

func (f *fakeSource) Open(ctx context.Context, o *substitute.Offer) (io.ReadCloser, error) {
	if f.openHook != nil {
		f.openHook(ctx, o.Path)
	}
	f.mu.Lock()
	b, ok := f.send[o.Path]
	if !ok {
		b = f.nars[o.Path]
	}
	f.mu.Unlock()
	return io.NopCloser(&ctxReader{ctx: ctx, r: bytes.NewReader(b)}), nil
}

func sha256Sum(b []byte) [32]byte { return sha256.Sum256(b) }

type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c *ctxReader) Read(b []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(b)
}

// subFixture is a store, a source holding every valid path intact, and
// helpers to damage paths and check them.
type subFixture struct {
	*fixture
	src *fakeSource
}

func newSubFixture(t *testing.T, spec storetest.Spec) *subFixture {
	f := newFixture(t, spec)
	return &subFixture{fixture: f, src: newFakeSource(t, "file:///test-cache", f.b.Layout, f.b.Valid)}
}

func (f *subFixture) open() *store.Store { return storetest.Open(f.t, f.b.Layout) }

// dirs are the valid paths that are directories holding a regular file,
// with that file (relative).
func (f *subFixture) dirs() map[string]string {
	out := map[string]string{}
	for _, p := range f.b.Valid {
		filepath.WalkDir(f.real(p), func(q string, d fs.DirEntry, err error) error {
			if err == nil && d.Type().IsRegular() && q != f.real(p) {
				if _, ok := out[p]; !ok {
					rel, _ := filepath.Rel(f.real(p), q)
					out[p] = rel
				}
				return filepath.SkipAll
			}
			return nil
		})
	}
	return out
}

// modify changes a file of p in place (same inode).
func (f *subFixture) modify(p, rel string) {
	f.t.Helper()
	q := filepath.Join(f.real(p), rel)
	if err := os.Chmod(q, 0o644); err != nil {
		f.t.Fatal(err)
	}
	fh, err := os.OpenFile(q, os.O_WRONLY, 0)
	if err != nil {
		f.t.Fatal(err)
	}
	if _, err := fh.WriteAt([]byte("DAMAGED"), 0); err != nil {
		f.t.Fatal(err)
	}
	fh.Close()
	os.Chmod(q, 0o444)
}

// remove deletes p from disk.
func (f *subFixture) remove(p string) { removeStorePaths(f.t, f.fixture, []string{p}) }

// checkIntact fails unless p hashes to its source NAR's hash and every
// node is canonical (fs.Nix modes, mtime 1, the store directory's owner).
func (f *subFixture) checkIntact(p string) {
	f.t.Helper()
	h, _, err := nar.HashPath(f.real(p))
	if err != nil {
		f.t.Fatal(err)
	}
	if want := nar.Hash(sha256Sum(f.src.nars[p])); h != want {
		f.t.Fatalf("%s hashes to %s, not %s", p, h, want)
	}
	var sst unix.Stat_t
	if err := unix.Stat(f.b.Layout.RealStoreDir, &sst); err != nil {
		f.t.Fatal(err)
	}
	filepath.WalkDir(f.real(p), func(q string, d fs.DirEntry, err error) error {
		if err != nil {
			f.t.Fatal(err)
		}
		var st unix.Stat_t
		if err := unix.Lstat(q, &st); err != nil {
			f.t.Fatal(err)
		}
		if st.Mode&unix.S_IFMT != unix.S_IFLNK && st.Mode&0o7777 != sfs.Nix.Want(st.Mode) {
			f.t.Errorf("%s: mode %o", q, st.Mode&0o7777)
		}
		if !sfs.Nix.MtimeOK(&st) {
			f.t.Errorf("%s: mtime %d.%d", q, st.Mtim.Sec, st.Mtim.Nsec)
		}
		if st.Uid != sst.Uid {
			f.t.Errorf("%s: owner %d", q, st.Uid)
		}
		return nil
	})
}

// checkNoStaging fails if anything is left in the trash or a temporary
// name in the store directory.
func (f *subFixture) checkNoStaging() {
	f.t.Helper()
	filepath.WalkDir(f.b.Layout.TrashDir(), func(q string, d fs.DirEntry, err error) error {
		if err == nil && q != f.b.Layout.TrashDir() && !strings.HasPrefix(d.Name(), sfs.TrashRunPrefix) {
			f.t.Errorf("left in the trash: %s", q)
		}
		return nil
	})
	ents, err := os.ReadDir(f.b.Layout.RealStoreDir)
	if err != nil {
		f.t.Fatal(err)
	}
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), sfs.SwapTempPrefix) || strings.HasPrefix(e.Name(), sfs.ExchangeTempPrefix) {
			f.t.Errorf("left in the store directory: %s", e.Name())
		}
	}
}

// snapshot is a path's top inode and NAR hash, to check it unchanged.
type snapshot struct {
	ino  uint64
	hash nar.Hash
}

func (f *subFixture) snap(p string) snapshot {
	f.t.Helper()
	var st unix.Stat_t
	if err := unix.Lstat(f.real(p), &st); err != nil {
		f.t.Fatal(err)
	}
	h, _, err := nar.HashPath(f.real(p))
	if err != nil {
		f.t.Fatal(err)
	}
	return snapshot{st.Ino, h}
}

func (f *subFixture) repair(targets []Target, o SubstituteOptions) (*SubstitutionPlan, *SubstitutionResult, error) {
	f.t.Helper()
	s := f.open()
	if o.Sources == nil {
		o.Sources = []substitute.Source{f.src}
	}
	ctx := context.Background()
	plan, err := PlanSubstitution(ctx, s, targets, o)
	if err != nil {
		f.t.Fatal(err)
	}
	res, err := Substitute(ctx, s, plan, o)
	return plan, res, err
}

func outcome(r *SubstitutionResult, p string) *PathOutcome {
	for i := range r.Paths {
		if r.Paths[i].Path == p {
			return &r.Paths[i]
		}
	}
	return nil
}

// TestSubstituteModifiedAndMissing: a modified path and a missing one are
// put back with the database's hash and canonical metadata; nothing is
// left staged; the audit afterwards is clean and MarkSubstituted marks
// its findings repaired.
func TestSubstituteModifiedAndMissing(t *testing.T) {
	f := newSubFixture(t, smallSpec())
	dirs := f.dirs()
	var mod, gone string
	for _, p := range f.b.Valid {
		if _, ok := dirs[p]; ok && mod == "" {
			mod = p
		} else if gone == "" {
			gone = p
		}
	}
	f.modify(mod, dirs[mod])
	f.remove(gone)
	audit := f.verify(verify.Options{CheckContents: true})
	if len(audit.Findings) == 0 {
		t.Fatal("the audit found nothing")
	}
	// During each swap the path's PathLock and gc.lock (shared) are held.
	checked := 0
	testHookBeforeSwap = func(p string) {
		checked++
		if _, err := lock.LockPaths(context.Background(), []string{f.real(p)}, false, nil); !errors.Is(err, lock.ErrWouldBlock) {
			t.Errorf("the PathLock of %s is not held during its swap: %v", p, err)
		}
		if _, err := lock.AcquireGCLock(context.Background(), f.b.Layout.StateDir, lock.Exclusive, false, nil); !errors.Is(err, lock.ErrWouldBlock) {
			t.Errorf("gc.lock is not held during the swap of %s: %v", p, err)
		}
	}
	defer func() { testHookBeforeSwap = nil }()
	plan, res, err := f.repair([]Target{{Path: mod, Files: []string{dirs[mod]}}, {Path: gone, Missing: true}}, SubstituteOptions{})
	if checked != 2 {
		t.Errorf("%d swaps checked", checked)
	}
	if err != nil {
		t.Fatal(err)
	}
	if plan.DownloadSize() != uint64(len(f.src.nars[mod])+len(f.src.nars[gone])) {
		t.Errorf("download size %d", plan.DownloadSize())
	}
	for _, p := range []string{mod, gone} {
		o := outcome(res, p)
		if o == nil || !o.Done || o.Err != nil || o.From != f.src.url || o.NarSize != uint64(len(f.src.nars[p])) {
			t.Fatalf("%s: %+v", p, o)
		}
		f.checkIntact(p)
	}
	f.checkNoStaging()
	if res.Downloaded != plan.DownloadSize() {
		t.Errorf("downloaded %d", res.Downloaded)
	}
	after := f.verify(verify.Options{CheckContents: true})
	for _, fd := range after.Findings {
		t.Errorf("after the repair: %+v", fd)
	}
	MarkSubstituted(audit.Findings, res)
	for _, fd := range audit.Findings {
		if fd.Remedy != nil && (fd.Remedy.Action == finding.RemedyRepairPath || fd.Kind == finding.KindDisappeared) && !fd.Repaired {
			t.Errorf("not marked repaired: %+v", fd)
		}
		if fd.Repaired && !strings.Contains(fd.Message, f.src.url) {
			t.Errorf("message %q", fd.Message)
		}
	}
}

// TestSubstituteBadNARs: a NAR of another hash, a truncated one and an
// oversized one each fail their path with the damaged copy exactly as it
// was (same inode, same contents) and nothing staged left, while the
// other paths of the run are repaired; a path no source has and one that
// is not valid are reported too.
func TestSubstituteBadNARs(t *testing.T) {
	f := newSubFixture(t, smallSpec())
	dirs := f.dirs()
	var ps []string
	for _, p := range f.b.Valid {
		if _, ok := dirs[p]; ok {
			ps = append(ps, p)
		}
	}
	if len(ps) < 8 {
		t.Fatalf("only %d directory paths", len(ps))
	}
	for _, p := range ps[:6] {
		f.modify(p, dirs[p])
	}
	other, short, long, absent := ps[0], ps[1], ps[2], ps[3]
	f.src.send[other] = f.src.nars[ps[4]]
	f.src.send[short] = f.src.nars[short][:len(f.src.nars[short])/2]
	// Oversized: a valid NAR larger than the database's narSize.
	for _, p := range f.b.Valid {
		if len(f.src.nars[p]) > len(f.src.nars[long])+1000 {
			f.src.send[long] = f.src.nars[p]
			break
		}
	}
	if f.src.send[long] == nil {
		t.Fatal("no NAR larger than", long)
	}
	trailing := ps[5]
	f.src.send[trailing] = append(append([]byte(nil), f.src.nars[trailing]...), make([]byte, 64)...)
	delete(f.src.nars, absent)
	before := map[string]snapshot{}
	for _, p := range ps[:6] {
		before[p] = f.snap(p)
	}
	targets := []Target{{Path: "/nix/store/00000000000000000000000000000000-not-valid"}}
	for _, p := range ps[:8] {
		targets = append(targets, Target{Path: p})
	}
	for _, p := range ps[6:8] {
		f.modify(p, dirs[p])
	}
	_, res, err := f.repair(targets, SubstituteOptions{Jobs: 3})
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{other, short, long, absent, trailing} {
		o := outcome(res, p)
		if o.Done || o.Err == nil || !strings.Contains(o.Err.Error(), p) {
			t.Errorf("%s: %+v", p, o)
		}
		if got := f.snap(p); got != before[p] {
			t.Errorf("%s changed: %+v -> %+v", p, before[p], got)
		}
	}
	if o := outcome(res, other); !errors.Is(o.Err, substitute.ErrMismatch) {
		t.Errorf("another NAR: %v", o.Err)
	}
	if o := outcome(res, short); !errors.Is(o.Err, io.ErrUnexpectedEOF) && !errors.Is(o.Err, nar.ErrBadNAR) {
		t.Errorf("a truncated NAR: %v", o.Err)
	}
	if o := outcome(res, long); !errors.Is(o.Err, nar.ErrLimit) {
		t.Errorf("an oversized NAR: %v", o.Err)
	}
	if o := outcome(res, trailing); !errors.Is(o.Err, nar.ErrBadNAR) {
		t.Errorf("a NAR with data after its end: %v", o.Err)
	}
	if o := outcome(res, absent); !errors.Is(o.Err, ErrNoSubstitute) || len(o.Tried) != 1 || !errors.Is(o.Tried[0].Err, substitute.ErrNotFound) {
		t.Errorf("a path no source has: %+v", o)
	}
	if o := outcome(res, targets[0].Path); !errors.Is(o.Err, ErrNotValid) {
		t.Errorf("a path that is not valid: %+v", o)
	}
	for _, p := range []string{ps[4], ps[6], ps[7]} {
		if o := outcome(res, p); !o.Done {
			t.Errorf("%s not repaired: %+v", p, o)
		}
		f.checkIntact(p)
	}
	f.checkNoStaging()
	t.Logf("mismatch: %v\ntruncated: %v\noversized: %v\nabsent: %v", outcome(res, other).Err, outcome(res, short).Err, outcome(res, long).Err, outcome(res, absent).Err)
}

// TestSubstituteSourcesInOrder: the first source that has the path with
// the right hash serves it; why the others did not is in Tried.
func TestSubstituteSourcesInOrder(t *testing.T) {
	f := newSubFixture(t, smallSpec())
	p := f.b.Valid[0]
	empty := &fakeSource{url: "file:///empty", nars: map[string][]byte{}, send: map[string][]byte{}}
	wrong := &fakeSource{url: "file:///wrong", nars: map[string][]byte{p: f.src.nars[f.b.Valid[1]]}, send: map[string][]byte{}}
	f.remove(p)
	_, res, err := f.repair([]Target{{Path: p}}, SubstituteOptions{Sources: []substitute.Source{empty, wrong, f.src}})
	if err != nil {
		t.Fatal(err)
	}
	o := outcome(res, p)
	if !o.Done || o.From != f.src.url || len(o.Tried) != 2 || !errors.Is(o.Tried[0].Err, substitute.ErrNotFound) || !errors.Is(o.Tried[1].Err, substitute.ErrMismatch) {
		t.Fatalf("%+v", o)
	}
	f.checkIntact(p)
}

// TestSubstituteDependencyOrder: the plan puts references before their
// referrers, and the swaps happen in that order.
func TestSubstituteDependencyOrder(t *testing.T) {
	f := newSubFixture(t, smallSpec())
	// Every path with a reference among the valid paths, in reverse.
	var targets []Target
	for i := len(f.b.Valid) - 1; i >= 0; i-- {
		targets = append(targets, Target{Path: f.b.Valid[i]})
	}
	var order []string
	testHookSwapped = func(p string) { order = append(order, p) }
	defer func() { testHookSwapped = nil }()
	plan, res, err := f.repair(targets, SubstituteOptions{Jobs: 4, Budget: 1})
	if err != nil {
		t.Fatal(err)
	}
	pos := map[string]int{}
	for i, p := range order {
		pos[p] = i
	}
	if len(order) != len(f.b.Valid) || res.Repaired() != len(f.b.Valid) {
		t.Fatalf("%d swaps, %d repaired of %d", len(order), res.Repaired(), len(f.b.Valid))
	}
	edges := 0
	for p, refs := range f.b.Refs {
		for _, r := range refs {
			if r != p {
				edges++
				if pos[r] > pos[p] {
					t.Errorf("%s swapped before its reference %s", p, r)
				}
			}
		}
	}
	if edges == 0 {
		t.Fatal("no references in the store")
	}
	for i := range plan.Paths {
		if plan.Paths[i].Path != order[i] {
			t.Fatalf("swap %d is %s, plan says %s", i, order[i], plan.Paths[i].Path)
		}
	}
	f.checkNoStaging()
}

// TestSubstituteRowChanged: a path whose row changes between the plan and
// its swap (another hash, invalidated) is left alone, saying so.
func TestSubstituteRowChanged(t *testing.T) {
	f := newSubFixture(t, smallSpec())
	lone := f.pick(func(p string, fi os.FileInfo, refs int) bool { return refs == 0 && len(f.b.Refs[p]) == 0 })
	if len(lone) < 2 {
		t.Skipf("only %d paths without references and referrers", len(lone))
	}
	a, b := lone[0], lone[1]
	s := f.open()
	ctx := context.Background()
	o := SubstituteOptions{Sources: []substitute.Source{f.src}}
	plan, err := PlanSubstitution(ctx, s, []Target{{Path: a}, {Path: b}}, o)
	if err != nil {
		t.Fatal(err)
	}
	before := f.snap(a)
	execDB(t, f.fixture, "update ValidPaths set hash = ? where path = ?", "sha256:"+strings.Repeat("ab", 32), a)
	execDB(t, f.fixture, "delete from ValidPaths where path = ?", b)
	res, err := Substitute(ctx, s, plan, o)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{a, b} {
		if o := outcome(res, p); o.Done || !errors.Is(o.Err, ErrChanged) {
			t.Errorf("%s: %+v", p, o)
		}
	}
	if f.snap(a) != before {
		t.Error("the re-registered path changed")
	}
	f.checkNoStaging()
}

// TestSubstituteRefusesReadOnly: a read-only store is refused.
func TestSubstituteRefusesReadOnly(t *testing.T) {
	f := newSubFixture(t, smallSpec())
	s := storetest.OpenRO(t, f.b.Layout)
	o := SubstituteOptions{Sources: []substitute.Source{f.src}}
	plan, err := PlanSubstitution(context.Background(), s, []Target{{Path: f.b.Valid[0]}}, o)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Substitute(context.Background(), s, plan, o); !errors.Is(err, ErrReadOnly) {
		t.Fatalf("read-only store: %v", err)
	}
}

// TestSubstituteFallback: on a file system without RENAME_EXCHANGE and
// RENAME_NOREPLACE (forced), paths are put back all the same, and the
// leftovers of a run stopped at each step of the fallback (the process
// killed there: nothing after it ran) are put right by the next run,
// which repairs the path.
func TestSubstituteFallback(t *testing.T) {
	f := newSubFixture(t, smallSpec())
	defer sfs.ForceExchangeFallbackForTest()()
	testForceCanonicalise = true
	defer func() { testForceCanonicalise = false }()
	dirs := f.dirs()
	var ps []string
	for p := range dirs {
		ps = append(ps, p)
	}
	sort.Strings(ps)
	for _, p := range ps[:2] {
		f.modify(p, dirs[p])
	}
	f.remove(ps[2])
	// A run killed inside the fallback's directory swap of ps[3] left it
	// missing, its old copy at .swap-NAME and the new one at
	// .exchange-NAME; one killed before the swap of ps[4] left the new
	// copy at .exchange-NAME beside the old.
	sd := f.b.Layout.RealStoreDir
	b3, b4 := filepath.Base(ps[3]), filepath.Base(ps[4])
	f.modify(ps[3], dirs[ps[3]])
	if err := os.Rename(f.real(ps[3]), filepath.Join(sd, sfs.SwapTemp(b3))); err != nil {
		t.Fatal(err)
	}
	for _, b := range []string{b3, b4} {
		if err := os.MkdirAll(filepath.Join(sd, sfs.ExchangeTemp(b), "junk"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	_, res, err := f.repair([]Target{{Path: ps[0]}, {Path: ps[1]}, {Path: ps[2]}, {Path: ps[3], Missing: true}, {Path: ps[4]}}, SubstituteOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range ps[:5] {
		if o := outcome(res, p); !o.Done {
			t.Fatalf("%s: %+v", p, o)
		}
		f.checkIntact(p)
	}
	f.checkNoStaging()
}

// TestSubstituteLinks: in an optimised store, a file damaged in place
// shares its inode with .links/X: after the repair X is gone (optimise
// makes it again), while the entry of an intact shared file stays.
func TestSubstituteLinks(t *testing.T) {
	f := newSubFixture(t, smallSpec())
	var p string
	var files []string
	for _, q := range f.b.Valid {
		files = files[:0]
		filepath.WalkDir(f.real(q), func(x string, d fs.DirEntry, err error) error {
			if err == nil && d.Type().IsRegular() && x != f.real(q) {
				files = append(files, x)
			}
			return nil
		})
		if len(files) >= 2 {
			p = q
			break
		}
	}
	if p == "" {
		t.Fatal("no path with two files")
	}
	links := f.b.Layout.LinksDir()
	os.MkdirAll(links, 0o755)
	var names []string
	for _, x := range files[:2] {
		h, _, err := nar.HashPath(x)
		if err != nil {
			t.Fatal(err)
		}
		name := filepath.Join(links, h.Base32())
		if err := os.Link(x, name); err != nil {
			t.Fatal(err)
		}
		names = append(names, name)
	}
	rel, _ := filepath.Rel(f.real(p), files[0])
	f.modify(p, rel)
	_, res, err := f.repair([]Target{{Path: p}}, SubstituteOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if o := outcome(res, p); !o.Done {
		t.Fatalf("%+v", o)
	}
	f.checkIntact(p)
	if _, err := os.Lstat(names[0]); !os.IsNotExist(err) {
		t.Errorf("the damaged entry %s is still there: %v", names[0], err)
	}
	h, _, err := nar.HashPath(names[1])
	if err != nil || h.Base32() != filepath.Base(names[1]) {
		t.Errorf("the intact entry %s: %v %s", names[1], err, h.Base32())
	}
	f.checkNoStaging()
}

// TestSubstituteLinksDroppedBeforeSwap: the damaged .links entry of a
// file damaged in place is gone by the time the path is swapped, so that
// a kill -9 right after the swap (before the old copy is deleted) cannot
// leave it for optimise, which would link the intact new file (same
// name, same size) to the damaged inode again.
func TestSubstituteLinksDroppedBeforeSwap(t *testing.T) {
	f := newSubFixture(t, smallSpec())
	p, entry := f.damagedLinked()
	var atSwap error
	testHookSwapped = func(q string) {
		if q == p {
			_, atSwap = os.Lstat(entry)
		}
	}
	defer func() { testHookSwapped = nil }()
	_, res, err := f.repair([]Target{{Path: p}}, SubstituteOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if o := outcome(res, p); !o.Done {
		t.Fatalf("%+v", o)
	}
	if !os.IsNotExist(atSwap) {
		t.Errorf("the damaged entry %s was still there when %s was swapped (a kill -9 then leaves it): %v", entry, p, atSwap)
	}
	if _, err := os.Lstat(entry); !os.IsNotExist(err) {
		t.Errorf("the damaged entry %s is still there: %v", entry, err)
	}
	f.checkIntact(p)
	f.checkNoStaging()
}

// TestSubstituteLinksPathBackAtSwap: a path missing while it was staged
// (so its old copy could not be checked then) but back at the swap (put
// back meanwhile, or by the recovery of a killed run's exchange) has its
// old copy checked after the swap: its damaged .links entry goes too.
func TestSubstituteLinksPathBackAtSwap(t *testing.T) {
	f := newSubFixture(t, smallSpec())
	p, entry := f.damagedLinked()
	aside := filepath.Join(filepath.Dir(f.b.Layout.RealStoreDir), "aside")
	if err := os.Rename(f.real(p), aside); err != nil {
		t.Fatal(err)
	}
	testHookStaged = func(q string) {
		if q == p {
			if err := os.Rename(aside, f.real(p)); err != nil {
				t.Error(err)
			}
		}
	}
	defer func() { testHookStaged = nil }()
	_, res, err := f.repair([]Target{{Path: p}}, SubstituteOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if o := outcome(res, p); !o.Done {
		t.Fatalf("%+v", o)
	}
	if _, err := os.Lstat(entry); !os.IsNotExist(err) {
		t.Errorf("the damaged entry %s is still there: %v", entry, err)
	}
	f.checkIntact(p)
	f.checkNoStaging()
}

// TestSubstituteOneLockUnusable: a path whose lock file cannot be used
// (a directory in its place) fails alone; the paths swapped in the same
// batch are still repaired.
func TestSubstituteOneLockUnusable(t *testing.T) {
	f := newSubFixture(t, smallSpec())
	dirs := f.dirs()
	var ps []string
	for p := range dirs {
		ps = append(ps, p)
	}
	sort.Strings(ps)
	ps = ps[:5]
	var targets []Target
	for _, p := range ps {
		f.modify(p, dirs[p])
		targets = append(targets, Target{Path: p})
	}
	s := f.open()
	o := SubstituteOptions{Sources: []substitute.Source{f.src}, Jobs: 8}
	ctx := context.Background()
	plan, err := PlanSubstitution(ctx, s, targets, o)
	if err != nil {
		t.Fatal(err)
	}
	// The first path in plan order is staged last, so that the swapper
	// finds the others staged and takes them in one batch with it.
	first := plan.Paths[0].Path
	f.src.openHook = func(ctx context.Context, p string) {
		if p == first {
			time.Sleep(300 * time.Millisecond)
		}
	}
	bad := plan.Paths[2].Path
	if err := os.Mkdir(f.real(bad)+".lock", 0o755); err != nil {
		t.Fatal(err)
	}
	before := f.snap(bad)
	res, err := Substitute(ctx, s, plan, o)
	if err != nil {
		t.Fatal(err)
	}
	for _, o := range res.Paths {
		if o.Path == bad {
			if o.Done || o.Err == nil || !strings.Contains(o.Err.Error(), "lock") {
				t.Errorf("%s, whose lock file is a directory: %+v", o.Path, o)
			}
			if f.snap(bad) != before {
				t.Errorf("%s changed", bad)
			}
			continue
		}
		if !o.Done {
			t.Errorf("%s, swapped in the batch of a path whose lock is unusable, was not repaired: %v", o.Path, o.Err)
			continue
		}
		f.checkIntact(o.Path)
	}
	f.checkNoStaging()
}

// TestSubstituteCancel: cancelled in the middle of a run, Substitute
// stops, leaves every path old or new, nothing staged, and says which
// paths were not done.
func TestSubstituteCancel(t *testing.T) {
	for _, during := range []string{"swaps", "downloads"} {
		t.Run(during, func(t *testing.T) { testSubstituteCancel(t, during) })
	}
}

func testSubstituteCancel(t *testing.T, during string) {
	f := newSubFixture(t, smallSpec())
	dirs := f.dirs()
	var ps []string
	for p := range dirs {
		ps = append(ps, p)
	}
	sort.Strings(ps)
	var targets []Target
	before := map[string]snapshot{}
	for _, p := range ps {
		f.modify(p, dirs[p])
		before[p] = f.snap(p)
		targets = append(targets, Target{Path: p})
	}
	s := f.open()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	o := SubstituteOptions{Sources: []substitute.Source{f.src}, Jobs: 2}
	plan, err := PlanSubstitution(ctx, s, targets, o)
	if err != nil {
		t.Fatal(err)
	}
	var n atomic.Int32
	if during == "swaps" {
		testHookSwapped = func(string) {
			if n.Add(1) == 2 {
				cancel()
			}
		}
		defer func() { testHookSwapped = nil }()
	} else {
		f.src.openHook = func(ctx context.Context, p string) {
			if n.Add(1) == 5 {
				cancel()
			}
		}
	}
	res, err := Substitute(ctx, s, plan, o)
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled run: %v", err)
	}
	done := 0
	for _, o := range res.Paths {
		if o.Done {
			done++
			f.checkIntact(o.Path)
		} else {
			if !errors.Is(o.Err, ErrInterrupted) {
				t.Errorf("%s: %v", o.Path, o.Err)
			}
			if f.snap(o.Path) != before[o.Path] {
				t.Errorf("%s changed but is not done", o.Path)
			}
		}
	}
	if during == "swaps" && done != 2 || done > 4 {
		t.Errorf("%d paths done after a cancellation during the %s", done, during)
	}
	t.Logf("%d of %d paths done", done, len(ps))
	f.checkNoStaging()
}

// TestSubstituteEmptiesAbandonedTrash: a killed run's run directory (its
// lock released) is emptied by the next run.
func TestSubstituteEmptiesAbandonedTrash(t *testing.T) {
	f := newSubFixture(t, smallSpec())
	run, err := sfs.Trash{Path: f.b.Layout.TrashDir()}.NewRun()
	if err != nil {
		t.Fatal(err)
	}
	staged := filepath.Join(run.Path, filepath.Base(f.b.Valid[0]))
	if err := os.MkdirAll(filepath.Join(staged, "sub"), 0o755); err != nil {
		t.Fatal(err)
	}
	exec.Command("chmod", "-R", "a-w", staged).Run()
	run.Close(false) // as a kill releases it
	p := f.b.Valid[1]
	f.remove(p)
	if _, res, err := f.repair([]Target{{Path: p}}, SubstituteOptions{}); err != nil || !res.Paths[0].Done {
		t.Fatal(err, res)
	}
	if _, err := os.Lstat(staged); !os.IsNotExist(err) {
		t.Fatalf("the abandoned staged tree is still there: %v", err)
	}
	f.checkNoStaging()
}

// TestMarkSubstituted: only the findings whose path was put back are
// marked repaired (the repair-path remedies, and a disappeared path's),
// with where it came from; a failed path's keep their remedy, and so do
// findings of other remedies.
func TestMarkSubstituted(t *testing.T) {
	a, b, c := "/nix/store/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-a", "/nix/store/bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb-b", "/nix/store/cccccccccccccccccccccccccccccccc-c"
	fs := []finding.Finding{
		{Kind: finding.KindModified, Path: a, Message: "path '" + a + "' was modified!", Remedy: finding.NewRemedy(finding.RemedyRepairPath, a)},
		{Kind: finding.KindFileChanged, Path: a, File: "bin/x", Remedy: finding.NewRemedy(finding.RemedyRepairPath, a)},
		{Kind: finding.KindUntrusted, Path: a, Remedy: finding.NewRemedy(finding.RemedySign, a)},
		{Kind: finding.KindModified, Path: b, Remedy: finding.NewRemedy(finding.RemedyRepairPath, b)},
		{Kind: finding.KindDisappeared, Path: c, Remedy: finding.NewRemedy(finding.RemedyInvalidate, c)},
		{Kind: finding.KindIOError, Path: b, Remedy: finding.NewRemedy(finding.RemedyCheckDiskThenRepairPath, b)},
	}
	r := &SubstitutionResult{Paths: []PathOutcome{
		{Path: a, Done: true, From: "file:///cache"},
		{Path: b, Err: errors.New("no")},
		{Path: c, Done: true, From: "https://cache"},
	}}
	MarkSubstituted(fs, r)
	for i, want := range []bool{true, true, false, false, true, false} {
		f := fs[i]
		if f.Repaired != want || want && (f.Remedy != nil || !strings.Contains(f.Message, "from '")) || !want && f.Remedy == nil {
			t.Errorf("finding %d: %+v", i, f)
		}
	}
	if !strings.HasPrefix(fs[0].Message, "path '"+a+"' was modified!\n") {
		t.Errorf("message %q", fs[0].Message)
	}
}

// TestAdaptivePool: a pool whose work waits long grows to its bound; one
// whose work answers at once stays at its start.
func TestAdaptivePool(t *testing.T) {
	for _, slow := range []bool{false, true} {
		in := make(chan int)
		var done atomic.Int32
		p := runAdaptive(in, startWorkers, 25, func(int) time.Duration {
			done.Add(1)
			if slow {
				time.Sleep(2 * time.Millisecond) // a far source's answer, scaled down
				return 50 * time.Millisecond
			}
			return time.Millisecond
		})
		for i := 0; i < 200; i++ {
			in <- i
		}
		close(in)
		p.wait()
		if done.Load() != 200 {
			t.Fatalf("%d items done", done.Load())
		}
		if n := p.size(); slow && n != 25 || !slow && n != startWorkers {
			t.Errorf("slow=%v: %d workers", slow, n)
		}
	}
}

// damagedLinked takes the first path (by name) with a file, makes that
// file's intact contents a .links entry (a hard link, as optimise does),
// then damages the file in place; it returns the path and the entry.
func (f *subFixture) damagedLinked() (p, entry string) {
	f.t.Helper()
	dirs := f.dirs()
	for q := range dirs {
		if p == "" || q < p {
			p = q
		}
	}
	links := f.b.Layout.LinksDir()
	os.MkdirAll(links, 0o755)
	file := filepath.Join(f.real(p), dirs[p])
	h, _, err := nar.HashPath(file)
	if err != nil {
		f.t.Fatal(err)
	}
	entry = filepath.Join(links, h.Base32())
	if err := os.Link(file, entry); err != nil {
		f.t.Fatal(err)
	}
	f.modify(p, dirs[p])
	return p, entry
}
