package verify

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"storekeeper/graph"
)

func TestLedgerCoverage(t *testing.T) {
	b := graph.NewBuilder("/nix/store", 4)
	names := []string{"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-a", "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb-b", "cccccccccccccccccccccccccccccccc-c", "dddddddddddddddddddddddddddddddd-d"}
	for i, n := range names {
		if _, err := b.AddPath(int64(i+1), []byte(n)); err != nil {
			t.Fatal(err)
		}
	}
	b.BeginRefs(0)
	g := b.Finish()
	now := time.Unix(2_000_000_000, 0)
	recent, old := now.Add(-time.Hour).Unix(), now.Add(-8*24*time.Hour).Unix()
	dir := t.TempDir()

	// No ledger: nothing verified.
	c, err := LedgerCoverage(dir, g, now)
	if err != nil {
		t.Fatal(err)
	}
	if c.ValidPaths != 4 || c.Recent != 0 || c.Unverified != 4 || c.Ratio() != 0 || c.Oldest != 0 || c.Newest != 0 {
		t.Errorf("empty ledger: %+v", c)
	}

	// The snapshot, then the log of a run (a later line wins), a record
	// of a path no longer valid, a torn last line.
	snap := fmt.Sprintf("%d ok %s\n%d ok %s\n%d ok gone-path\n", old, names[0], old, names[1], recent)
	log := fmt.Sprintf("%d damaged %s\n%d ok %s\n%d ok %s", recent, names[1], recent, names[2], recent, names[3])
	os.WriteFile(filepath.Join(dir, ledgerName), []byte(snap), 0o644)
	os.WriteFile(filepath.Join(dir, ledgerLogName), []byte(log), 0o644)
	c, err = LedgerCoverage(dir, g, now)
	if err != nil {
		t.Fatal(err)
	}
	want := Coverage{ValidPaths: 4, Recent: 2, Unverified: 1, Since: now.Add(-CoverageWindow).Unix(), Oldest: old, Newest: recent}
	if c != want || c.Ratio() != 0.5 {
		t.Errorf("got %+v (ratio %v), want %+v (0.5)", c, c.Ratio(), want)
	}

	// An empty store is fully covered; an unreadable ledger is an error.
	if (Coverage{}).Ratio() != 1 {
		t.Errorf("empty store: ratio %v", (Coverage{}).Ratio())
	}
	os.Remove(filepath.Join(dir, ledgerName))
	os.Mkdir(filepath.Join(dir, ledgerName), 0o755)
	if _, err := LedgerCoverage(dir, g, now); err == nil {
		t.Errorf("a ledger that is a directory: no error")
	}
}

// TestLedgerCoverageReregistered: a record older than the path's
// registration is of contents that were deleted (a collection) and
// registered again since: the contents now in the store were never
// checked, so the path counts as never verified.
func TestLedgerCoverageReregistered(t *testing.T) {
	b := graph.NewBuilder("/nix/store", 2)
	names := []string{"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-a", "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb-b"}
	now := time.Unix(2_000_000_000, 0)
	verified := now.Add(-2 * time.Hour).Unix()
	for i, n := range names {
		if _, err := b.AddPath(int64(i+1), []byte(n)); err != nil {
			t.Fatal(err)
		}
	}
	// a: registered before its check; b: registered again after it.
	b.Graph().RegTime = append(b.Graph().RegTime, verified-60, verified+60)
	b.BeginRefs(0)
	g := b.Finish()
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, ledgerName), []byte(fmt.Sprintf("%d ok %s\n%d ok %s\n", verified, names[0], verified, names[1])), 0o644)
	c, err := LedgerCoverage(dir, g, now)
	if err != nil {
		t.Fatal(err)
	}
	want := Coverage{ValidPaths: 2, Recent: 1, Unverified: 1, Since: now.Add(-CoverageWindow).Unix(), Oldest: verified, Newest: verified}
	if c != want {
		t.Errorf("got %+v, want %+v", c, want)
	}
}

// BenchmarkLedgerCoverage: the ledger of a 315k-path store (the size of
// the bench store s150k), every path recorded: what it adds to
// `storekeeper metrics` and to verify's result.
func BenchmarkLedgerCoverage(b *testing.B) {
	const n = 315_000
	gb := graph.NewBuilder("/nix/store", n)
	var led strings.Builder
	now := time.Unix(2_000_000_000, 0)
	for i := 0; i < n; i++ {
		name := fmt.Sprintf("%016x%016x-package", uint64(i)*0x9E3779B97F4A7C15, i) // hash parts differ from the first byte, as real ones
		if _, err := gb.AddPath(int64(i+1), []byte(name)); err != nil {
			b.Fatal(err)
		}
		gb.Graph().RegTime = append(gb.Graph().RegTime, now.Unix()-int64(30*24*3600))
		fmt.Fprintf(&led, "%d ok %s\n", now.Unix()-int64(i%(14*24*3600)), name)
	}
	gb.BeginRefs(0)
	g := gb.Finish()
	dir := b.TempDir()
	os.WriteFile(filepath.Join(dir, ledgerName), []byte(led.String()), 0o644)
	b.Run("LedgerCoverage", func(b *testing.B) {
		for i := 0; i < b.N; i++ {
			c, err := LedgerCoverage(dir, g, now)
			if err != nil || c.ValidPaths != n || c.Unverified != 0 {
				b.Fatalf("%+v %v", c, err)
			}
		}
	})
	// Through the ledger's map of every record, as a verify run has it.
	b.Run("map", func(b *testing.B) {
		for i := 0; i < b.N; i++ {
			l, err := loadLedger(dir)
			if err != nil {
				b.Fatal(err)
			}
			c := coverageOf(g, now, func(id graph.PathID) (int64, bool) { e, ok := l.entries[g.Name(id)]; return e.Time, ok })
			if c.ValidPaths != n || c.Unverified != 0 {
				b.Fatalf("%+v", c)
			}
		}
	})
}

// TestResultCoverageNotRecorded: a run that records nothing (--no-record,
// or a state dir it cannot write) reports the coverage of the ledger as
// it is on disk, not as if its own checks were in it: the next
// `storekeeper metrics` and the next budgeted run know only the ledger.
func TestResultCoverageNotRecorded(t *testing.T) {
	f := newFixture(t, smallSpec())
	state := t.TempDir()
	n := len(f.b.Valid)
	res := f.verify(Options{CheckContents: true, NoRecord: true, StateDir: state})
	if c := res.Coverage; c == nil || c.Recent != 0 || c.Unverified != c.ValidPaths {
		t.Errorf("--no-record: coverage %+v, want nothing verified (the ledger is empty)", c)
	}
	res = f.verify(Options{CheckContents: true, StateDir: state})
	if c := res.Coverage; c == nil || c.Recent != n || c.Unverified != 0 {
		t.Errorf("recording run: coverage %+v, want all %d verified", c, n)
	}
	res = f.verify(Options{CheckContents: true, NoRecord: true, StateDir: state})
	if c := res.Coverage; c == nil || c.Recent != n {
		t.Errorf("--no-record after a recording run: coverage %+v, want the ledger's %d", c, n)
	}
}
