package lock

import (
	"context"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// pruneFixture is a state directory with temproots/ and a store
// directory, both ours.
type pruneFixture struct {
	state, store, tr string
}

func newPruneFixture(t *testing.T) pruneFixture {
	t.Helper()
	root := t.TempDir()
	f := pruneFixture{state: filepath.Join(root, "var"), store: filepath.Join(root, "store")}
	f.tr = TempRootsDir(f.state)
	for _, d := range []string{f.tr, f.store} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return f
}

// deadPID is a pid no process has (none in /proc), as a stale temp-roots
// file's name.
func deadPID(t *testing.T, skip ...int) int {
	t.Helper()
	for pid := 4194000; pid > 300000; pid-- {
		if _, err := os.Stat("/proc/" + strconv.Itoa(pid)); errors.Is(err, fs.ErrNotExist) {
			taken := false
			for _, s := range skip {
				taken = taken || s == pid
			}
			if !taken {
				return pid
			}
		}
	}
	t.Fatal("no free pid")
	return 0
}

func writeFile(t *testing.T, p, data string) {
	t.Helper()
	if err := os.WriteFile(p, []byte(data), 0o600); err != nil {
		t.Fatal(err)
	}
}

// holdFile locks p exclusively through an open file description of its
// own (another process, as far as flock is concerned) until the test ends.
func holdFile(t *testing.T, p string, m Mode) {
	t.Helper()
	f, err := OpenLockFile(p, false)
	if err != nil {
		t.Fatal(err)
	}
	if err := Lock(context.Background(), f, m, false); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
}

func byPath(r *PruneReport) map[string]PruneFile {
	m := map[string]PruneFile{}
	for _, f := range r.Files {
		m[f.Path] = f
	}
	return m
}

func exists(p string) bool {
	_, err := os.Lstat(p)
	return err == nil
}

const lockHash = "0123456789abcdfghijklmnpqrsvwxyz"

// TestPruneHeldAndStale: held files (exclusive or shared) are kept and
// their holder named; stale ones are removed and marked "d" for whoever
// opened them before; files that are not lock files are left alone.
func TestPruneHeldAndStale(t *testing.T) {
	f := newPruneFixture(t)
	d1 := deadPID(t)
	d2 := deadPID(t, d1)
	d3 := deadPID(t, d1, d2)
	heldTR := filepath.Join(f.tr, strconv.Itoa(d1))
	sharedTR := filepath.Join(f.tr, strconv.Itoa(d3))
	staleTR := filepath.Join(f.tr, strconv.Itoa(d2))
	runningTR := filepath.Join(f.tr, strconv.Itoa(os.Getpid()))
	badTR := filepath.Join(f.tr, "0012")
	hiddenTR := filepath.Join(f.tr, ".keep")
	writeFile(t, heldTR, "/nix/store/"+lockHash+"-a\x00")
	writeFile(t, sharedTR, "")
	writeFile(t, staleTR, "/nix/store/"+lockHash+"-b\x00")
	writeFile(t, runningTR, "")
	writeFile(t, badTR, "")
	writeFile(t, hiddenTR, "")
	holdFile(t, heldTR, Exclusive)
	holdFile(t, sharedTR, Shared)

	heldPL := filepath.Join(f.store, lockHash+"-held.lock")
	stalePL := filepath.Join(f.store, lockHash+"-stale.lock")
	markedPL := filepath.Join(f.store, lockHash+"-marked.lock")
	dataPL := filepath.Join(f.store, lockHash+"-data.lock")
	badPL := filepath.Join(f.store, "notastorepath.lock")
	path := filepath.Join(f.store, lockHash+"-stale")
	for _, p := range []string{heldPL, stalePL, badPL} {
		writeFile(t, p, "")
	}
	writeFile(t, markedPL, "d")
	writeFile(t, dataPL, "precious")
	writeFile(t, path, "a store path")
	holdFile(t, heldPL, Exclusive)

	// Opened before the prune, as a Nix process that has not locked yet.
	early, err := os.Open(stalePL)
	if err != nil {
		t.Fatal(err)
	}
	defer early.Close()

	r, err := Prune(f.state, f.store, PruneOptions{ValidPath: noneValid})
	if err != nil {
		t.Fatal(err)
	}
	got := byPath(r)
	want := map[string][2]string{
		heldTR:    {PruneKept, PruneHeld},
		sharedTR:  {PruneKept, PruneHeld},
		staleTR:   {PruneRemoved, ""},
		runningTR: {PruneKept, PrunePIDRunning},
		badTR:     {PruneKept, PruneBadName},
		heldPL:    {PruneKept, PruneHeld},
		stalePL:   {PruneRemoved, ""},
		markedPL:  {PruneRemoved, ""},
		badPL:     {PruneKept, PruneBadName},
	}
	// A file holding more than "d" is store contents (a fetched
	// Cargo.lock or flake.lock), left out of the report as lock status
	// leaves it out.
	if g, ok := got[dataPL]; ok {
		t.Errorf("a store path holding data is reported: %+v", g)
	}
	if len(got) != len(want) {
		t.Errorf("report lists %d files, want %d: %+v", len(got), len(want), r.Files)
	}
	for p, w := range want {
		g, ok := got[p]
		if !ok || g.Action != w[0] || g.Reason != w[1] {
			t.Errorf("%s: %+v, want %s %s", p, g, w[0], w[1])
		}
		if gone := !exists(p); gone != (w[0] == PruneRemoved) {
			t.Errorf("%s: removed %v, action %s", p, gone, w[0])
		}
	}
	for _, p := range []string{heldTR, sharedTR, heldPL} {
		hs := got[p].Holders
		if len(hs) == 0 || hs[0].PID != os.Getpid() {
			t.Errorf("%s: holders %+v, want pid %d", p, hs, os.Getpid())
		}
	}
	if !exists(hiddenTR) || !exists(path) {
		t.Error("a hidden temp-roots file or a store path was removed")
	}
	if b, _ := os.ReadFile(dataPL); string(b) != "precious" {
		t.Errorf("a lock file holding data was changed: %q", b)
	}
	b := make([]byte, 8)
	if n, _ := early.ReadAt(b, 0); string(b[:n]) != "d" {
		t.Errorf("the removed lock file holds %q, want the stale mark \"d\"", b[:n])
	}
	if r.Removed != 3 || r.TempRootsRemoved != 1 || r.PathLocksRemoved != 2 || r.Held != 3 || r.Kept != 6 || r.Failed != 0 {
		t.Errorf("totals %+v", r)
	}
	// A second run finds nothing more to remove.
	r2, err := Prune(f.state, f.store, PruneOptions{ValidPath: noneValid})
	if err != nil || r2.Removed != 0 || r2.Held != 3 {
		t.Errorf("second run: %+v, %v", r2, err)
	}
}

// TestPruneSymlinkAndSpecial: a symbolic link at a temp-roots or
// path-lock name is neither followed nor removed, whatever it points to
// (a stale lock file, a precious file); a FIFO is not opened (the run
// does not block) nor removed.
func TestPruneSymlinkAndSpecial(t *testing.T) {
	f := newPruneFixture(t)
	outside := filepath.Join(t.TempDir(), "precious")
	writeFile(t, outside, "")
	before, _ := os.Stat(outside)
	pid := deadPID(t)
	fifoPID := deadPID(t, pid)
	linkTR := filepath.Join(f.tr, strconv.Itoa(pid))
	linkPL := filepath.Join(f.store, lockHash+"-link.lock")
	fifoTR := filepath.Join(f.tr, strconv.Itoa(fifoPID))
	dirPL := filepath.Join(f.store, lockHash+"-dir.lock")
	if err := os.Symlink(outside, linkTR); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(outside, linkPL); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mkfifo(fifoTR, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(dirPL, 0o755); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	var r *PruneReport
	var err error
	go func() { r, err = Prune(f.state, f.store, PruneOptions{ValidPath: noneValid}); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("prune blocked on a FIFO")
	}
	if err != nil {
		t.Fatal(err)
	}
	got := byPath(r)
	if g, ok := got[dirPL]; ok || !exists(dirPL) {
		t.Errorf("a directory named NAME.lock (a store path) is reported or removed: %+v", g)
	}
	for p, reason := range map[string]string{linkTR: PruneSymlink, linkPL: PruneSymlink, fifoTR: PruneNotRegular} {
		if got[p].Action != PruneKept || got[p].Reason != reason {
			t.Errorf("%s: %+v, want kept %s", p, got[p], reason)
		}
		if !exists(p) {
			t.Errorf("%s was removed", p)
		}
	}
	after, err := os.Stat(outside)
	if err != nil || after.Size() != 0 || !after.ModTime().Equal(before.ModTime()) {
		t.Errorf("the symlink's target changed: %v %v", after, err)
	}
	if r.Removed != 0 || r.Failed != 0 {
		t.Errorf("totals %+v", r)
	}
}

// TestPruneHardLinked: a file with a second link (say, to a file of
// someone else's) is not a lock file: not marked, not removed.
func TestPruneHardLinked(t *testing.T) {
	f := newPruneFixture(t)
	other := filepath.Join(f.state, "other")
	writeFile(t, other, "")
	p := filepath.Join(f.store, lockHash+"-linked.lock")
	if err := os.Link(other, p); err != nil {
		t.Fatal(err)
	}
	r, err := Prune(f.state, f.store, PruneOptions{ValidPath: noneValid})
	if err != nil {
		t.Fatal(err)
	}
	if g := byPath(r)[p]; g.Action != PruneKept || g.Reason != PruneLinks || !exists(p) {
		t.Errorf("%+v", g)
	}
	if b, _ := os.ReadFile(other); len(b) != 0 {
		t.Errorf("the other link's file was written: %q", b)
	}
}

// TestPruneReplacedWhileChecked: a file replaced after prune took the
// lock of the old one and before it unlinks: the new file is left, not
// unlinked and not marked.
func TestPruneReplacedWhileChecked(t *testing.T) {
	f := newPruneFixture(t)
	pid := deadPID(t)
	tr := filepath.Join(f.tr, strconv.Itoa(pid))
	pl := filepath.Join(f.store, lockHash+"-x.lock")
	writeFile(t, tr, "")
	writeFile(t, pl, "")
	testHookPruneLocked = func(p string) {
		tmp := p + ".new"
		writeFile(t, tmp, "")
		if err := os.Rename(tmp, p); err != nil {
			t.Error(err)
		}
	}
	defer func() { testHookPruneLocked = nil }()
	r, err := Prune(f.state, f.store, PruneOptions{ValidPath: noneValid})
	if err != nil {
		t.Fatal(err)
	}
	got := byPath(r)
	for _, p := range []string{tr, pl} {
		if got[p].Action != PruneKept || got[p].Reason != PruneReplaced {
			t.Errorf("%s: %+v, want kept replaced", p, got[p])
		}
		if st, err := os.Stat(p); err != nil || st.Size() != 0 {
			t.Errorf("%s: the new file was removed or marked: %v %v", p, st, err)
		}
	}
}

func treeState(t *testing.T, dirs ...string) []string {
	t.Helper()
	var out []string
	for _, d := range dirs {
		filepath.WalkDir(d, func(p string, e fs.DirEntry, err error) error {
			if err != nil {
				return nil
			}
			var st unix.Stat_t
			if unix.Lstat(p, &st) == nil {
				b, _ := os.ReadFile(p)
				out = append(out, p+" "+strconv.FormatUint(st.Ino, 10)+" "+strconv.FormatInt(st.Mtim.Nano(), 10)+" "+strconv.Quote(string(b)))
			}
			return nil
		})
	}
	sort.Strings(out)
	return out
}

// TestPruneDryRun: the report says what would go, nothing changes, and
// every lock taken was released.
func TestPruneDryRun(t *testing.T) {
	f := newPruneFixture(t)
	pid := deadPID(t)
	held := deadPID(t, pid)
	tr := filepath.Join(f.tr, strconv.Itoa(pid))
	hr := filepath.Join(f.tr, strconv.Itoa(held))
	pl := filepath.Join(f.store, lockHash+"-x.lock")
	writeFile(t, tr, "/nix/store/"+lockHash+"-b\x00")
	writeFile(t, hr, "")
	writeFile(t, pl, "")
	holdFile(t, hr, Exclusive)
	before := treeState(t, f.state, f.store)
	r, err := Prune(f.state, f.store, PruneOptions{DryRun: true, ValidPath: noneValid})
	if err != nil {
		t.Fatal(err)
	}
	got := byPath(r)
	if !r.DryRun || got[tr].Action != PruneWouldRemove || got[pl].Action != PruneWouldRemove || got[hr].Reason != PruneHeld || r.Removed != 2 {
		t.Errorf("dry run report %+v", r)
	}
	if after := treeState(t, f.state, f.store); strings.Join(before, "\n") != strings.Join(after, "\n") {
		t.Errorf("dry run changed files:\n%v\n%v", before, after)
	}
	for _, p := range []string{tr, pl} {
		if locked, err := IsLocked(p); err != nil || locked {
			t.Errorf("%s still locked after the dry run: %v %v", p, locked, err)
		}
	}
}

// TestPruneNotOurs: a directory another user owns allows no deletion:
// its stale files are reported as failed and left; with neither
// directory ours, prune refuses and changes nothing.
func TestPruneNotOurs(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to give a directory to another user")
	}
	f := newPruneFixture(t)
	pid := deadPID(t)
	tr := filepath.Join(f.tr, strconv.Itoa(pid))
	pl := filepath.Join(f.store, lockHash+"-x.lock")
	writeFile(t, tr, "")
	writeFile(t, pl, "")
	for _, p := range []string{f.tr, tr} {
		if err := os.Chown(p, 65534, 65534); err != nil {
			t.Fatal(err)
		}
	}
	r, err := Prune(f.state, f.store, PruneOptions{ValidPath: noneValid})
	if err != nil {
		t.Fatal(err)
	}
	got := byPath(r)
	if got[tr].Action != PruneFailed || got[tr].Reason != PrunePermission || !exists(tr) {
		t.Errorf("temp-roots file in another user's directory: %+v", got[tr])
	}
	if got[pl].Action != PruneRemoved || r.Failed != 1 {
		t.Errorf("report %+v", r)
	}

	// The store directory sticky and ours, the lock file another user's:
	// not ours to delete. With the temp-roots directory not ours either,
	// nothing may be deleted at all: refused.
	writeFile(t, pl, "")
	if err := os.Chown(f.store, 65534, 0); err != nil {
		t.Fatal(err)
	}
	before := treeState(t, f.state, f.store)
	r, err = Prune(f.state, f.store, PruneOptions{ValidPath: noneValid})
	if !errors.Is(err, ErrPruneAccess) || !errors.Is(err, fs.ErrPermission) || r != nil {
		t.Fatalf("want a refusal, got %+v, %v", r, err)
	}
	if !strings.Contains(err.Error(), f.store) || !strings.Contains(err.Error(), f.tr) {
		t.Errorf("the refusal does not name the directories: %v", err)
	}
	if after := treeState(t, f.state, f.store); strings.Join(before, "\n") != strings.Join(after, "\n") {
		t.Errorf("a refused prune changed files")
	}

	if err := os.Chown(f.store, 0, 0); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(f.store, os.ModeSticky|0o775); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(pl, 65534, 65534); err != nil {
		t.Fatal(err)
	}
	mine := filepath.Join(f.store, lockHash+"-mine.lock")
	writeFile(t, mine, "")
	r, err = Prune(f.state, f.store, PruneOptions{ValidPath: noneValid})
	if err != nil {
		t.Fatal(err)
	}
	got = byPath(r)
	if got[pl].Action != PruneFailed || got[pl].Reason != PrunePermission || !exists(pl) || got[mine].Action != PruneRemoved || exists(mine) {
		t.Errorf("sticky store: %+v", r.Files)
	}
}

// TestPruneAgainstPathLocks: a goroutine takes and releases a path lock
// over and over with LockPathsAt (Nix's PathLocks protocol) while prune
// runs in a loop: whenever the locker holds its lock, the file it holds
// is the one linked at the name (never one prune unlinked), and prune
// did remove the file between rounds.
func TestPruneAgainstPathLocks(t *testing.T) {
	f := newPruneFixture(t)
	name := lockHash + "-busy"
	lockPath := filepath.Join(f.store, name+".lock")
	dir, err := os.Open(f.store)
	if err != nil {
		t.Fatal(err)
	}
	defer dir.Close()
	ctx := context.Background()
	var stop atomic.Bool
	var rounds, removed atomic.Int64
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for !stop.Load() {
			r, err := Prune(f.state, f.store, PruneOptions{ValidPath: noneValid})
			if err != nil {
				t.Error(err)
				return
			}
			removed.Add(int64(r.PathLocksRemoved))
		}
	}()
	deadline := time.Now().Add(3 * time.Second)
	for time.Now().Before(deadline) || removed.Load() < 20 {
		if time.Now().After(deadline.Add(20 * time.Second)) {
			break
		}
		pl, err := LockPathsAt(ctx, dir, f.store, []string{name}, true, nil)
		if err != nil {
			t.Fatal(err)
		}
		held := pl.held[0]
		var cur unix.Stat_t
		if err := unix.Stat(lockPath, &cur); err != nil || cur.Ino != held.st.Ino || cur.Dev != held.st.Dev {
			t.Errorf("round %d: holding inode %d, but the name is %v (%v)", rounds.Load(), held.st.Ino, cur.Ino, err)
		}
		var now unix.Stat_t
		if err := unix.Fstat(int(held.f.Fd()), &now); err != nil || now.Nlink != 1 || now.Size != 0 {
			t.Errorf("round %d: the held file has %d links and %d bytes", rounds.Load(), now.Nlink, now.Size)
		}
		pl.Unlock(false)
		rounds.Add(1)
	}
	stop.Store(true)
	wg.Wait()
	if removed.Load() == 0 {
		t.Errorf("prune never removed the lock file in %d rounds: the race was not exercised", rounds.Load())
	}
	t.Logf("%d rounds, %d removals", rounds.Load(), removed.Load())
}

// BenchmarkPrune10k: one run over 10,000 stale path locks and 1,000
// stale temp-roots files (all removed) beside 10,000 store entries that
// are not lock files.
func BenchmarkPrune10k(b *testing.B) {
	root := b.TempDir()
	state, store := filepath.Join(root, "var"), filepath.Join(root, "store")
	tr := TempRootsDir(state)
	for _, d := range []string{tr, store} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			b.Fatal(err)
		}
	}
	for i := 0; i < 10000; i++ {
		if err := os.WriteFile(filepath.Join(store, lockHash+"-p"+strconv.Itoa(i)), nil, 0o644); err != nil {
			b.Fatal(err)
		}
	}
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		for j := 0; j < 10000; j++ {
			if err := os.WriteFile(filepath.Join(store, lockHash+"-p"+strconv.Itoa(j)+".lock"), nil, 0o600); err != nil {
				b.Fatal(err)
			}
		}
		for j := 0; j < 1000; j++ {
			if err := os.WriteFile(filepath.Join(tr, strconv.Itoa(3000000+j)), nil, 0o600); err != nil {
				b.Fatal(err)
			}
		}
		b.StartTimer()
		r, err := Prune(state, store, PruneOptions{ValidPath: noneValid})
		if err != nil || r.Removed != 11000 {
			b.Fatalf("%v removed %d", err, r.Removed)
		}
	}
}

// noneValid is PruneOptions.ValidPath for a store with no valid path
// named like a lock file.
func noneValid(string) (bool, error) { return false, nil }

// TestPruneKeepsStorePaths: a store path named NAME.lock that holds
// nothing or "d" is store contents, not a lock file: one the database
// says is valid, and one being added (its own NAME.lock exists, even
// unheld), are kept (reason store-path), untouched; one whose validity
// cannot be told fails and stays; without ValidPath Prune refuses to run.
// A stale path lock beside them goes.
func TestPruneKeepsStorePaths(t *testing.T) {
	f := newPruneFixture(t)
	validPL := filepath.Join(f.store, lockHash+"-empty.lock")
	markPL := filepath.Join(f.store, lockHash+"-d.lock")
	addingPL := filepath.Join(f.store, lockHash+"-adding.lock")
	unknownPL := filepath.Join(f.store, lockHash+"-unknown.lock")
	stalePL := filepath.Join(f.store, lockHash+"-stale.lock")
	for _, p := range []string{validPL, addingPL, unknownPL, stalePL, addingPL + ".lock"} {
		writeFile(t, p, "")
	}
	writeFile(t, markPL, "d")
	holdFile(t, addingPL+".lock", Exclusive)
	var asked []string
	valid := func(name string) (bool, error) {
		asked = append(asked, name)
		switch name {
		case filepath.Base(validPL), filepath.Base(markPL):
			return true, nil
		case filepath.Base(unknownPL):
			return false, errors.New("database is locked")
		}
		return false, nil
	}
	if _, err := Prune(f.state, f.store, PruneOptions{}); err == nil || !strings.Contains(err.Error(), "ValidPath") {
		t.Fatalf("Prune without ValidPath: %v", err)
	}
	for _, dry := range []bool{true, false} {
		r, err := Prune(f.state, f.store, PruneOptions{ValidPath: valid, DryRun: dry})
		if err != nil {
			t.Fatal(err)
		}
		got := byPath(r)
		for _, p := range []string{validPL, markPL, addingPL} {
			if g := got[p]; g.Action != PruneKept || g.Reason != PruneStorePath {
				t.Errorf("dry run %v: %s: %+v, want kept store-path", dry, p, g)
			}
		}
		if g := got[unknownPL]; g.Action != PruneFailed || g.Reason != PruneError || !strings.Contains(g.Detail, "database is locked") {
			t.Errorf("dry run %v: %s: %+v, want failed error", dry, unknownPL, g)
		}
		want := PruneRemoved
		if dry {
			want = PruneWouldRemove
		}
		if g := got[stalePL]; g.Action != want {
			t.Errorf("dry run %v: stale path lock: %+v", dry, g)
		}
	}
	for _, p := range []string{validPL, markPL, addingPL, unknownPL} {
		if !exists(p) {
			t.Errorf("%s was removed", p)
		}
	}
	if b, _ := os.ReadFile(validPL); len(b) != 0 {
		t.Errorf("a valid store path was written: %q", b)
	}
	if exists(stalePL) {
		t.Error("the stale path lock is still there")
	}
	for _, n := range asked {
		if n == filepath.Base(addingPL) {
			t.Error("the database was asked about a path being added (its lock file says enough)")
		}
	}
}

// TestPruneNoSymlinkInOthersDirectory: as root, on a store whose state
// directory another user controls (a single-user install, a store under
// a user's home), that user can point temproots (or the store directory)
// at any directory of root's by a symbolic link: Prune must not follow it
// and delete root's files there whose names look like pids (or lock
// files). It refuses, names the link, and changes nothing. A symbolic
// link in a directory only root controls is followed (/nix -> /data/nix).
func TestPruneNoSymlinkInOthersDirectory(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	root := t.TempDir()
	victim := filepath.Join(root, "root-owned")
	if err := os.MkdirAll(victim, 0o755); err != nil {
		t.Fatal(err)
	}
	pidFile := filepath.Join(victim, strconv.Itoa(deadPID(t)))
	lockFile := filepath.Join(victim, lockHash+"-x.lock")
	writeFile(t, pidFile, "root's data")
	writeFile(t, lockFile, "")

	user := filepath.Join(root, "user")
	state := filepath.Join(user, "state")
	store := filepath.Join(user, "store")
	if err := os.MkdirAll(state, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(victim, filepath.Join(state, "temproots")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(victim, store); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{user, state} {
		if err := os.Chown(p, 12345, 12345); err != nil {
			t.Fatal(err)
		}
	}
	for _, dry := range []bool{true, false} {
		r, err := Prune(state, store, PruneOptions{ValidPath: noneValid, DryRun: dry})
		if err == nil || !strings.Contains(err.Error(), "symbolic link") {
			t.Errorf("dry run %v: Prune through another user's symlink: err %v, report %+v", dry, err, r)
		}
	}
	if !exists(pidFile) || !exists(lockFile) {
		t.Fatal("Prune followed another user's symbolic link and deleted root's files")
	}

	// A link in a directory of root's is followed.
	trusted := filepath.Join(root, "trusted")
	if err := os.MkdirAll(filepath.Join(trusted, "real", "temproots"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(filepath.Join(trusted, "real", "store"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("real", filepath.Join(trusted, "link")); err != nil {
		t.Fatal(err)
	}
	stale := filepath.Join(trusted, "real", "temproots", strconv.Itoa(deadPID(t)))
	writeFile(t, stale, "")
	r, err := Prune(filepath.Join(trusted, "link"), filepath.Join(trusted, "link", "store"), PruneOptions{ValidPath: noneValid})
	if err != nil || r.Removed != 1 || exists(stale) {
		t.Errorf("through root's own link: %v %+v", err, r)
	}
}
