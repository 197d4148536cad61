package verify

import (
	"bytes"
	"database/sql"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"storekeeper/store/db"
)

// ledgerTimes reads the ledger as a test sees it: name -> time.
func ledgerTimes(t *testing.T, dir string) map[string]int64 {
	t.Helper()
	l, err := loadLedger(dir)
	if err != nil {
		t.Fatal(err)
	}
	m := map[string]int64{}
	for n, e := range l.entries {
		m[n] = e.Time
	}
	return m
}

// totalNarSize returns the sum of the fixture's valid paths' NAR sizes
// in its database.
func (f *fixture) totalNarSize() int64 {
	f.t.Helper()
	s := f.open(true)
	g, err := s.LoadGraph(f.t.Context(), db.GraphOptions{})
	s.Close()
	if err != nil {
		f.t.Fatal(err)
	}
	var total int64
	for i := 0; i < g.Len(); i++ {
		total += int64(g.NarSize[i])
	}
	return total
}

func TestBudgetCoversStoreOldestFirst(t *testing.T) {
	f := newFixture(t, smallSpec())
	state := f.b.Layout.OwnStateDir()
	total := f.totalNarSize()
	// Runs an hour apart, after the paths were registered (a record from
	// before a path's registration is of other contents).
	base := time.Now().Unix()
	clock := base
	now := func() time.Time { return time.Unix(clock, 0) }
	seen := map[string]int{}
	for run := 1; run <= 3; run++ {
		clock = base + int64(run*3600)
		res := f.verify(Options{BudgetBytes: total / 3, Now: now})
		if res.Problems() {
			t.Fatalf("run %d: %+v", run, res.Findings)
		}
		times := ledgerTimes(t, state)
		n := 0
		var again []string
		for name, tm := range times {
			if tm == clock {
				n++
				if seen[name] != 0 {
					again = append(again, name)
					continue
				}
				seen[name] = run
			}
		}
		// Oldest first: a path verified in an earlier run comes again
		// only once every never-verified path has been done.
		if len(again) > 0 && len(seen) != len(f.b.Valid) {
			t.Errorf("run %d verified %v again before the rest of the store", run, again)
		}
		if n != res.Summary.ContentsChecked {
			t.Errorf("run %d: %d ledger entries, %d checked", run, n, res.Summary.ContentsChecked)
		}
		if run < 3 && res.Summary.Remaining == 0 {
			t.Errorf("run %d: nothing remaining", run)
		}
	}
	if len(seen) != len(f.b.Valid) {
		t.Fatalf("three runs covered %d of %d paths", len(seen), len(f.b.Valid))
	}
	// The fourth run starts again with the oldest: run 1's paths.
	clock = base + 4*3600
	f.verify(Options{BudgetBytes: 1, Now: now})
	for name, tm := range ledgerTimes(t, state) {
		if tm == clock && seen[name] != 1 {
			t.Errorf("run 4 verified %s from run %d, not one of the oldest", name, seen[name])
		}
	}

	// A path registered again since its last check (collected, then
	// rebuilt or substituted) holds contents never checked: it comes
	// first, before run 1's and run 4's paths.
	var again string
	for name, r := range seen {
		if r == 3 && (again == "" || name < again) {
			again = name
		}
	}
	sdb, err := sql.Open("sqlite", "file:"+f.b.Layout.DBPath())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := sdb.Exec("UPDATE ValidPaths SET registrationTime = ? WHERE path = ?", base+4*3600+60, f.b.Layout.StorePathOf(again)); err != nil {
		t.Fatal(err)
	}
	sdb.Close()
	clock = base + 5*3600
	f.verify(Options{BudgetBytes: 1, Now: now})
	var run5 []string
	for name, tm := range ledgerTimes(t, state) {
		if tm == clock {
			run5 = append(run5, name)
		}
	}
	if len(run5) != 1 || run5[0] != again {
		t.Errorf("after %s was registered again, a budget of 1 byte verified %v, want it alone", again, run5)
	}
}

func TestBudgetTime(t *testing.T) {
	f := newFixture(t, smallSpec())
	res := f.verify(Options{BudgetTime: time.Nanosecond})
	if res.Summary.ContentsChecked >= len(f.b.Valid) || res.Summary.Remaining == 0 || res.Summary.Stopped == "" {
		t.Errorf("a 1ns budget checked %d paths, %d remaining, stopped %q", res.Summary.ContentsChecked, res.Summary.Remaining, res.Summary.Stopped)
	}
	res = f.verify(Options{BudgetTime: time.Hour})
	if res.Summary.ContentsChecked != len(f.b.Valid) || res.Summary.Remaining != 0 {
		t.Errorf("a 1h budget checked %d of %d", res.Summary.ContentsChecked, len(f.b.Valid))
	}
}

func TestSubsetsPartitionTheStore(t *testing.T) {
	f := newFixture(t, smallSpec())
	total := 0
	for n := 1; n <= 3; n++ {
		res := f.verify(Options{SubsetN: n, SubsetM: 3, NoRecord: true})
		total += res.Summary.ContentsChecked
		again := f.verify(Options{SubsetN: n, SubsetM: 3, NoRecord: true})
		if again.Summary.ContentsChecked != res.Summary.ContentsChecked {
			t.Errorf("slice %d/3 not deterministic", n)
		}
	}
	if total != len(f.b.Valid) {
		t.Errorf("slices cover %d of %d paths", total, len(f.b.Valid))
	}
	if _, err := f.tryVerify(Options{SubsetN: 4, SubsetM: 3}); err == nil {
		t.Error("4/3 accepted")
	}
}

func TestNoRecordAndUnwritableState(t *testing.T) {
	f := newFixture(t, smallSpec())
	res := f.verify(Options{CheckContents: true, NoRecord: true})
	if _, err := os.Stat(f.b.Layout.OwnStateDir()); !os.IsNotExist(err) {
		t.Errorf("--no-record created the state dir")
	}
	if res.Summary.Recording == "yes" {
		t.Error("recording said yes")
	}
	// A state dir that cannot be created: the audit runs anyway.
	blocker := filepath.Join(t.TempDir(), "file")
	os.WriteFile(blocker, nil, 0o444)
	res = f.verify(Options{CheckContents: true, StateDir: filepath.Join(blocker, "state")})
	if res.Problems() || res.Summary.ContentsChecked != len(f.b.Valid) || res.Summary.Recording == "yes" {
		t.Errorf("unwritable state: %+v", res.Summary)
	}
}

// TestSymlinkedStateDirNotFollowed: a state directory that is a symbolic
// link (whoever controls its parent could point it anywhere) is never
// followed: the audit runs without recording and writes nothing where it
// points.
func TestSymlinkedStateDirNotFollowed(t *testing.T) {
	f := newFixture(t, smallSpec())
	elsewhere := t.TempDir()
	state := filepath.Join(t.TempDir(), "state")
	if err := os.Symlink(elsewhere, state); err != nil {
		t.Fatal(err)
	}
	res := f.verify(Options{CheckContents: true, StateDir: state})
	if res.Problems() || res.Summary.ContentsChecked != len(f.b.Valid) {
		t.Errorf("audit with a symlinked state dir: %+v", res.Summary)
	}
	if !strings.Contains(res.Summary.Recording, "symbolic link") {
		t.Errorf("recording: %q, want it to name the symbolic link", res.Summary.Recording)
	}
	if ents, _ := os.ReadDir(elsewhere); len(ents) != 0 {
		t.Errorf("verify wrote %d entries where the symlinked state dir points", len(ents))
	}
}

func TestLedgerTornLineAndLogFold(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, ledgerName), []byte("10 ok a\n20 ok b\n"), 0o644)
	os.WriteFile(filepath.Join(dir, ledgerLogName), []byte("30 ok a\n40 damaged c\n50 ok d-tor"), 0o644)
	l, err := loadLedger(dir)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]LedgerEntry{"a": {30, "ok"}, "b": {20, "ok"}, "c": {40, "damaged"}}
	if len(l.entries) != 3 {
		t.Fatalf("%+v", l.entries)
	}
	for k, v := range want {
		if l.entries[k] != v {
			t.Errorf("%s: %+v", k, l.entries[k])
		}
	}
	if err := l.openLog(); err != nil {
		t.Fatal(err)
	}
	l.record("e", 60, "ok")
	l.flush()
	l2, _ := loadLedger(dir)
	if l2.entries["e"].Time != 60 {
		t.Error("entry after a torn line lost")
	}
	if err := l.commit(nil); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, ledgerLogName)); !os.IsNotExist(err) {
		t.Error("log not removed after commit")
	}
	b, _ := os.ReadFile(filepath.Join(dir, ledgerName))
	lines := bytes.Split(bytes.TrimSpace(b), []byte("\n"))
	last := func(l []byte) []byte { f := bytes.Fields(l); return f[len(f)-1] }
	if len(lines) != 4 || !sort.SliceIsSorted(lines, func(i, j int) bool { return bytes.Compare(last(lines[i]), last(lines[j])) < 0 }) {
		t.Errorf("snapshot: %q", b)
	}
}
