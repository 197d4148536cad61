package gc_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync/atomic"
	"testing"

	"storekeeper/gc"
	"storekeeper/graph"
	"storekeeper/nix/nar"
	"storekeeper/nix/storepath"
	"storekeeper/report"
	"storekeeper/store"
	"storekeeper/store/db"
	"storekeeper/store/storetest"
)

// model is an independent view of the DB, read with plain per-path SQL,
// for the reference implementation below.
type model struct {
	valid         map[string]bool
	refs          map[string][]string
	referrers     map[string][]string
	drvOutputs    map[string][]string
	deriver       map[string]string
	validDerivers map[string][]string
}

func loadModel(t *testing.T, dbPath string) *model {
	t.Helper()
	db, err := sql.Open("sqlite", "file:"+dbPath+"?mode=ro")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	m := &model{valid: map[string]bool{}, refs: map[string][]string{}, referrers: map[string][]string{},
		drvOutputs: map[string][]string{}, deriver: map[string]string{}, validDerivers: map[string][]string{}}
	rows, err := db.Query("select path, coalesce(deriver, '') from ValidPaths")
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var p, d string
		rows.Scan(&p, &d)
		m.valid[p] = true
		m.deriver[p] = d
	}
	rows.Close()
	rows, err = db.Query("select a.path, b.path from Refs r join ValidPaths a on a.id = r.referrer join ValidPaths b on b.id = r.reference")
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var a, b string
		rows.Scan(&a, &b)
		m.refs[a] = append(m.refs[a], b)
		m.referrers[b] = append(m.referrers[b], a)
	}
	rows.Close()
	rows, err = db.Query("select v.path, d.path from DerivationOutputs d join ValidPaths v on v.id = d.drv")
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var drv, out string
		rows.Scan(&drv, &out)
		m.drvOutputs[drv] = append(m.drvOutputs[drv], out)
		m.validDerivers[out] = append(m.validDerivers[out], drv)
	}
	rows.Close()
	return m
}

// nixDead is a literal transcription of Nix 2.8's collector loop (for each
// store entry, search its referrers closure; if no root is met, all of it
// is dead), used as the reference the fast implementation must match.
func nixDead(m *model, storeDir string, entries []string, roots map[string]bool, keepOut, keepDrv bool) map[string]bool {
	alive, dead := map[string]bool{}, map[string]bool{}
	closure := func(p string) {
		stack := []string{p}
		for len(stack) > 0 {
			x := stack[len(stack)-1]
			stack = stack[:len(stack)-1]
			if alive[x] && x != p {
				continue
			}
			alive[x] = true
			for _, r := range m.refs[x] {
				if !alive[r] {
					stack = append(stack, r)
				}
			}
		}
	}
	for _, name := range entries {
		if storepath.ValidateBaseName(name) != nil {
			dead[storeDir+"/"+name] = true // Nix deletes non-path entries
			continue
		}
		start := storeDir + "/" + name
		visited := map[string]bool{start: true}
		order := []string{start}
		isAlive := false
		for i := 0; i < len(order); i++ {
			p := order[i]
			if alive[p] {
				alive[start] = true
				isAlive = true
				break
			}
			if dead[p] {
				continue
			}
			if roots[p] {
				alive[start] = true
				closure(p)
				isAlive = true
				break
			}
			enqueue := func(q string) {
				if !visited[q] {
					visited[q] = true
					order = append(order, q)
				}
			}
			if m.valid[p] {
				for _, r := range m.referrers[p] {
					enqueue(r)
				}
				if keepDrv && strings.HasSuffix(p, ".drv") {
					for _, o := range m.drvOutputs[p] {
						if m.valid[o] && m.deriver[o] == p {
							enqueue(o)
						}
					}
				}
				if keepOut {
					for _, d := range m.validDerivers[p] {
						enqueue(d)
					}
				}
			}
		}
		if !isAlive {
			for p := range visited {
				dead[p] = true
			}
		}
	}
	return dead
}

func storeEntries(t *testing.T, dir string) []string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range ents {
		if e.Name() != ".links" && e.Name() != "trash" {
			out = append(out, e.Name())
		}
	}
	return out
}

func collect(t *testing.T, s *store.Store, o gc.Options) *gc.Result {
	t.Helper()
	return collectWith(t, s, nil, o)
}

// collectWith is collect reporting to p.
func collectWith(t *testing.T, s *store.Store, p report.Progress, o gc.Options) *gc.Result {
	t.Helper()
	if o.ProcDir == "" {
		o.ProcDir = t.TempDir() // no runtime roots from this machine
	}
	res, err := gc.Collect(context.Background(), s, o, p)
	if err != nil {
		t.Fatal(err)
	}
	return res
}

// TestDeadSetMatchesReference: on random stores (multiple outputs,
// self-references, leftovers), with every keep-outputs/keep-derivations
// combination, --print-dead equals the reference transcription of Nix's
// algorithm, and a full collection leaves exactly the survivors, with a
// consistent DB and intact contents.
func TestDeadSetMatchesReference(t *testing.T) {
	for seed := uint64(1); seed <= 6; seed++ {
		for _, keep := range [][2]bool{{false, true}, {true, true}, {true, false}, {false, false}} {
			t.Run(fmt.Sprintf("seed%d-out%v-drv%v", seed, keep[0], keep[1]), func(t *testing.T) {
				b := storetest.MustBuild(t, storetest.Spec{Paths: 40 + int(seed)*10, Seed: seed, MaxDeps: 4, Files: 1, FileSize: 64,
					Roots: 4, Generations: 2, Multi: 0.3, Invalid: 2})
				lay := b.Layout
				m := loadModel(t, lay.DBPath())
				roots := map[string]bool{}
				for _, r := range b.RootLinks {
					roots[r] = true
				}
				want := nixDead(m, lay.StoreDir, storeEntries(t, lay.RealStoreDir), roots, keep[0], keep[1])
				var wantList []string
				for p := range want {
					wantList = append(wantList, p)
				}
				sort.Strings(wantList)

				ro := storetest.OpenRO(t, lay)
				res := collect(t, ro, gc.Options{Action: gc.PrintDead, KeepOutputs: keep[0], KeepDerivations: keep[1]})
				if fmt.Sprint(res.Dead) != fmt.Sprint(wantList) {
					t.Fatalf("dead set differs from the reference\n got %d %v\nwant %d %v", len(res.Dead), res.Dead, len(wantList), wantList)
				}
				if len(want) == 0 {
					t.Fatal("nothing dead: the fixture does not test anything")
				}
				ro.Close()

				rw := storetest.Open(t, lay)
				res = collect(t, rw, gc.Options{Action: gc.Delete, KeepOutputs: keep[0], KeepDerivations: keep[1]})
				if res.PathsDeleted+res.EntriesDeleted != len(want) {
					t.Errorf("deleted %d+%d, want %d", res.PathsDeleted, res.EntriesDeleted, len(want))
				}
				checkSurvivors(t, rw, b, want)
			})
		}
	}
}

// checkSurvivors: every path not in dead is valid, present and intact;
// every dead one is gone from the DB and the disk; the DB has no orphan
// rows; the trash is gone.
func checkSurvivors(t *testing.T, s *store.Store, b *storetest.Built, dead map[string]bool) {
	t.Helper()
	lay := b.Layout
	g, err := s.LoadGraph(context.Background(), db.GraphOptions{Hashes: true})
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range b.Valid {
		id, ok := g.Lookup(p)
		if dead[p] {
			if ok {
				t.Errorf("dead path %s still valid", p)
			}
			if _, err := os.Lstat(lay.RealPath(p)); err == nil {
				t.Errorf("dead path %s still on disk", p)
			}
			continue
		}
		if !ok {
			t.Fatalf("live path %s was invalidated", p)
		}
		h, size, err := nar.HashPath(lay.RealPath(p))
		if err != nil {
			t.Fatalf("live path %s: %v", p, err)
		}
		if h != g.NarHash[id] || uint64(size) != g.NarSize[id] {
			t.Fatalf("live path %s changed", p)
		}
	}
	for _, e := range b.Leftovers {
		if _, err := os.Lstat(filepath.Join(lay.RealStoreDir, e)); err == nil && dead[lay.StoreDir+"/"+e] {
			t.Errorf("leftover %s not deleted", e)
		}
	}
	var n int
	if err := s.DB.SQL.QueryRow("select count(*) from pragma_foreign_key_check").Scan(&n); err != nil {
		t.Fatal(err)
	}
	if n != 0 {
		t.Fatalf("%d foreign key violations after gc", n)
	}
	if err := s.DB.SQL.QueryRow("select count(*) from DerivationOutputs where drv not in (select id from ValidPaths)").Scan(&n); err != nil || n != 0 {
		t.Fatalf("orphan DerivationOutputs rows: %d %v", n, err)
	}
	if _, err := os.Lstat(filepath.Join(lay.RealStoreDir, "trash")); err == nil {
		t.Error("the trash directory is left")
	}
}

// TestCyclesDieTogether: dead paths that reference each other (a cycle
// the DB allows) are invalidated in one transaction with foreign keys on.
func TestCyclesDieTogether(t *testing.T) {
	b := storetest.MustBuild(t, storetest.Spec{Paths: 30, Seed: 3, MaxDeps: 3, Files: 1, FileSize: 32, Roots: 2, Generations: 1})
	lay := b.Layout
	ro := storetest.OpenRO(t, lay)
	dead := collect(t, ro, gc.Options{Action: gc.PrintDead, KeepDerivations: true}).Dead
	ro.Close()
	var outs []string
	for _, p := range dead {
		if !strings.HasSuffix(p, ".drv") && !strings.Contains(p, "leftover") {
			outs = append(outs, p)
		}
	}
	if len(outs) < 3 {
		t.Fatalf("need 3 dead outputs, have %v", outs)
	}
	db, err := sql.Open("sqlite", lay.DBPath())
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 3; i++ {
		a, c := outs[i], outs[(i+1)%3]
		if _, err := db.Exec("insert or ignore into Refs (referrer, reference) select a.id, b.id from ValidPaths a, ValidPaths b where a.path = ? and b.path = ?", a, c); err != nil {
			t.Fatal(err)
		}
	}
	db.Close()
	rw := storetest.Open(t, lay)
	res := collect(t, rw, gc.Options{Action: gc.Delete, KeepDerivations: true})
	want := map[string]bool{}
	for _, p := range dead {
		want[p] = true
	}
	if res.PathsDeleted+res.EntriesDeleted != len(dead) {
		t.Fatalf("deleted %d+%d of %d", res.PathsDeleted, res.EntriesDeleted, len(dead))
	}
	checkSurvivors(t, rw, b, want)
}

func TestTempRootsAndKeepRecent(t *testing.T) {
	b := storetest.MustBuild(t, storetest.Spec{Paths: 30, Seed: 8, MaxDeps: 3, Files: 1, FileSize: 32, Roots: 2, Generations: 1, Invalid: 2})
	lay := b.Layout
	ro := storetest.OpenRO(t, lay)
	dead := collect(t, ro, gc.Options{Action: gc.PrintDead, KeepDerivations: true}).Dead
	ro.Close()
	if len(dead) < 4 {
		t.Fatal("too little garbage")
	}
	// A temp root by hash part protects an invalid leftover and the
	// ".lock" companion of a dead path.
	leftover := b.Leftovers[0]
	victim := ""
	for _, p := range dead {
		if !strings.Contains(p, "leftover") && !strings.HasSuffix(p, ".drv") {
			victim = p
		}
	}
	os.WriteFile(lay.RealPath(victim)+".lock", nil, 0o600)
	tr := filepath.Join(lay.TempRootsDir(), "999999999")
	// A temp-roots file whose owner is alive: hold its lock ourselves.
	f, err := os.OpenFile(tr, os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := lockExclusive(f); err != nil {
		t.Fatal(err)
	}
	f.WriteString(lay.StoreDir + "/" + leftover + "\x00" + victim + "\x00")
	rw := storetest.Open(t, lay)
	res := collect(t, rw, gc.Options{Action: gc.Delete, KeepDerivations: true})
	for _, p := range []string{filepath.Join(lay.RealStoreDir, leftover), lay.RealPath(victim), lay.RealPath(victim) + ".lock"} {
		if _, err := os.Lstat(p); err != nil {
			t.Errorf("%s is protected by a temp root but was deleted (%+v)", p, res)
		}
	}
	// Everything else dead is gone; a second run with --keep-recent keeps
	// what is young.
	res = collect(t, rw, gc.Options{Action: gc.PrintDead, KeepDerivations: true, KeepRecent: 1 << 62})
	if len(res.Dead) != 0 {
		// only non-valid entries could be dead under an infinite grace period
		for _, p := range res.Dead {
			if _, ok := b.Refs[p]; ok {
				t.Errorf("%s registered within --keep-recent is dead", p)
			}
		}
	}
}

// TestDeleteSpecific: --delete refuses live paths naming the root, refuses
// a path a dead path outside the set refers to, and deletes dead ones.
func TestDeleteSpecific(t *testing.T) {
	b := storetest.MustBuild(t, storetest.Spec{Paths: 30, Seed: 5, MaxDeps: 3, Files: 1, FileSize: 32, Roots: 2, Generations: 1})
	lay := b.Layout
	rw := storetest.Open(t, lay)
	var root string
	for _, r := range b.RootLinks {
		root = r
	}
	_, err := gc.Collect(context.Background(), rw, gc.Options{Action: gc.DeleteSpecific, Paths: []string{root}, ProcDir: t.TempDir()}, nil)
	if !errors.Is(err, gc.ErrAlive) || !strings.Contains(err.Error(), "root ") {
		t.Fatalf("deleting a root: %v", err)
	}
	_, err = gc.Collect(context.Background(), rw, gc.Options{Action: gc.DeleteSpecific, Paths: []string{"/etc/passwd"}, ProcDir: t.TempDir()}, nil)
	if !errors.Is(err, gc.ErrNotInStore) {
		t.Fatalf("deleting /etc/passwd: %v", err)
	}
	dead := collect(t, rw, gc.Options{Action: gc.PrintDead}).Dead
	// A dead path with a dead referrer: refused alone.
	m := loadModel(t, lay.DBPath())
	var target, referrer string
	for _, p := range dead {
		for _, r := range m.referrers[p] {
			if r != p {
				target, referrer = p, r
			}
		}
	}
	if target == "" {
		t.Fatal("no dead path with a referrer")
	}
	_, err = gc.Collect(context.Background(), rw, gc.Options{Action: gc.DeleteSpecific, Paths: []string{target}, ProcDir: t.TempDir()}, nil)
	if !errors.Is(err, gc.ErrAlive) || !strings.Contains(err.Error(), referrer) {
		t.Fatalf("deleting %s with referrer %s: %v", target, referrer, err)
	}
	// A dead path nothing refers to: deleted.
	var lone string
	for _, p := range dead {
		if len(m.referrers[p]) == 0 && m.valid[p] && !strings.HasSuffix(p, ".drv") {
			lone = p
		}
	}
	if lone == "" {
		t.Skip("no dead path without referrers in this fixture")
	}
	res := collect(t, rw, gc.Options{Action: gc.DeleteSpecific, Paths: []string{lone}})
	if res.PathsDeleted != 1 {
		t.Fatalf("deleted %d", res.PathsDeleted)
	}
	if _, err := os.Lstat(lay.RealPath(lone)); err == nil {
		t.Fatal("still on disk")
	}
}

func TestDryRunChangesNothingAndMaxFreed(t *testing.T) {
	b := storetest.MustBuild(t, storetest.Spec{Paths: 60, Seed: 6, MaxDeps: 3, Files: 3, FileSize: 20000, Roots: 2, Generations: 1, Dup: 0.2})
	lay := b.Layout
	before := storeEntries(t, lay.RealStoreDir)
	ro := storetest.OpenRO(t, lay)
	res := collect(t, ro, gc.Options{Action: gc.Delete, DryRun: true})
	if len(res.Dead) == 0 || res.BytesFreed == 0 {
		t.Fatalf("dry run found nothing: %+v", res)
	}
	if fmt.Sprint(storeEntries(t, lay.RealStoreDir)) != fmt.Sprint(before) {
		t.Fatal("dry run changed the store")
	}
	ro.Close()
	rw := storetest.Open(t, lay)
	limited := collect(t, rw, gc.Options{Action: gc.Delete, MaxFreed: res.BytesFreed / 4})
	if limited.PathsDeleted == 0 || limited.PathsDeleted >= len(res.Dead) {
		t.Fatalf("--max-freed %d deleted %d of %d", res.BytesFreed/4, limited.PathsDeleted, len(res.Dead))
	}
	if limited.BytesFreed < res.BytesFreed/4 {
		t.Errorf("--max-freed freed %d < %d", limited.BytesFreed, res.BytesFreed/4)
	}
	// The rest goes in a full run; together they free what the dry run said.
	rest := collect(t, rw, gc.Options{Action: gc.Delete})
	if got := limited.BytesFreed + rest.BytesFreed; got != res.BytesFreed {
		t.Errorf("freed %d in all, dry run said %d", got, res.BytesFreed)
	}
}

// TestResultTalliesTheStore: a run's PathsValid/ValidNarBytes and
// PathsDeadLeft/DeadNarBytesLeft (the store metrics of --metrics-file)
// are the database's after it: before and after a partial and a full
// collection, and unchanged by a dry run.
func TestResultTalliesTheStore(t *testing.T) {
	b := storetest.MustBuild(t, storetest.Spec{Paths: 60, Seed: 8, MaxDeps: 3, Files: 2, FileSize: 5000, Roots: 2, Generations: 1})
	lay := b.Layout
	sums := func() (n int, nar uint64) {
		sdb, err := sql.Open("sqlite", "file:"+lay.DBPath()+"?mode=ro")
		if err != nil {
			t.Fatal(err)
		}
		defer sdb.Close()
		if err := sdb.QueryRow("select count(*), coalesce(sum(narSize), 0) from ValidPaths").Scan(&n, &nar); err != nil {
			t.Fatal(err)
		}
		return n, nar
	}
	deadNar := func(res *gc.Result) (n int, nar uint64) {
		sdb, err := sql.Open("sqlite", "file:"+lay.DBPath()+"?mode=ro")
		if err != nil {
			t.Fatal(err)
		}
		defer sdb.Close()
		for _, p := range res.Dead {
			var sz uint64
			if sdb.QueryRow("select narSize from ValidPaths where path = ?", p).Scan(&sz) == nil {
				n++
				nar += sz
			}
		}
		return n, nar
	}
	ro := storetest.OpenRO(t, lay)
	dry := collect(t, ro, gc.Options{Action: gc.Delete, DryRun: true})
	ro.Close()
	n, nar := sums()
	dn, dnar := deadNar(dry)
	if dry.PathsValid != n || dry.ValidNarBytes != nar || dry.PathsDeadLeft != dn || dry.DeadNarBytesLeft != dnar || dn == 0 {
		t.Fatalf("dry run: valid %d/%d dead %d/%d, the database has %d/%d and %d/%d dead",
			dry.PathsValid, dry.ValidNarBytes, dry.PathsDeadLeft, dry.DeadNarBytesLeft, n, nar, dn, dnar)
	}
	rw := storetest.Open(t, lay)
	limited := collect(t, rw, gc.Options{Action: gc.Delete, MaxFreed: dry.BytesFreed / 3})
	n, nar = sums()
	if limited.PathsValid != n || limited.ValidNarBytes != nar || limited.PathsDeadLeft != dn-limited.PathsDeleted || limited.PathsDeadLeft == 0 {
		t.Errorf("partial run: valid %d/%d, %d dead left; the database has %d/%d, %d were dead and %d deleted",
			limited.PathsValid, limited.ValidNarBytes, limited.PathsDeadLeft, n, nar, dn, limited.PathsDeleted)
	}
	full := collect(t, rw, gc.Options{Action: gc.Delete})
	n, nar = sums()
	if full.PathsValid != n || full.ValidNarBytes != nar || full.PathsDeadLeft != 0 || full.DeadNarBytesLeft != 0 {
		t.Errorf("full run: valid %d/%d, dead left %d/%d; the database has %d/%d",
			full.PathsValid, full.ValidNarBytes, full.PathsDeadLeft, full.DeadNarBytesLeft, n, nar)
	}
}

// TestLeftoverTrashIsEmptied: a run finds the trash of an interrupted one
// and empties it first.
func TestLeftoverTrashIsEmptied(t *testing.T) {
	b := storetest.MustBuild(t, storetest.Spec{Paths: 10, Seed: 7, MaxDeps: 2, Files: 1, FileSize: 32, Roots: 2, Generations: 1})
	lay := b.Layout
	junk := filepath.Join(lay.RealStoreDir, "trash", "00000000000000000000000000000000-old", "sub")
	os.MkdirAll(junk, 0o755)
	os.WriteFile(filepath.Join(junk, "f"), []byte("x"), 0o444)
	os.Chmod(junk, 0o555)
	rw := storetest.Open(t, lay)
	res := collect(t, rw, gc.Options{Action: gc.Delete})
	if res.TrashEmptied != 1 {
		t.Fatalf("trash emptied: %d", res.TrashEmptied)
	}
	if _, err := os.Lstat(filepath.Join(lay.RealStoreDir, "trash")); err == nil {
		t.Fatal("trash still there")
	}
}

func TestReadOnlyStoreRefusesDelete(t *testing.T) {
	b := storetest.MustBuild(t, storetest.Spec{Paths: 5, Seed: 1, MaxDeps: 1, Files: 1, FileSize: 8})
	ro := storetest.OpenRO(t, b.Layout)
	if _, err := gc.Collect(context.Background(), ro, gc.Options{Action: gc.Delete}, nil); !errors.Is(err, gc.ErrReadOnly) {
		t.Fatalf("got %v", err)
	}
}

// cancelAfter cancels a context at the at-th path deleted.
var _ gc.Deletions = (*cancelAfter)(nil)

type cancelAfter struct {
	n      atomic.Int32
	at     int32
	cancel context.CancelFunc
}

func (c *cancelAfter) Deleting(string) {
	if c.n.Add(1) == c.at {
		c.cancel()
	}
}
func (*cancelAfter) Phase(string, int64, bool) {}
func (*cancelAfter) Add(int64)                 {}
func (*cancelAfter) Info(string)               {}
func (*cancelAfter) Warn(string, string)       {}
func (*cancelAfter) Verbose(string)            {}

// TestCancelLeavesConsistentStore: Ctrl-C during invalidation stops at a
// batch boundary, leaves a consistent store (every valid path intact, the
// rest in the trash) and the next run finishes the job.
func TestCancelLeavesConsistentStore(t *testing.T) {
	b := storetest.MustBuild(t, storetest.Spec{Paths: 80, Seed: 12, MaxDeps: 3, Files: 1, FileSize: 32, Roots: 2, Generations: 1})
	lay := b.Layout
	rw := storetest.Open(t, lay)
	dead := collect(t, rw, gc.Options{Action: gc.PrintDead}).Dead
	ctx, cancel := context.WithCancel(context.Background())
	res, err := gc.Collect(ctx, rw, gc.Options{Action: gc.Delete, BatchSize: 4, ProcDir: t.TempDir()}, &cancelAfter{at: 6, cancel: cancel})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("got %v", err)
	}
	if res.PathsDeleted == 0 || res.PathsDeleted >= len(dead) {
		t.Fatalf("cancelled run deleted everything (%d)", res.PathsDeleted)
	}
	// Consistent: every still-valid path is intact.
	g, err := rw.LoadGraph(context.Background(), db.GraphOptions{Hashes: true})
	if err != nil {
		t.Fatal(err)
	}
	for id := graph.PathID(0); int(id) < g.Len(); id++ {
		h, _, err := nar.HashPath(lay.RealPath(g.Path(id)))
		if err != nil || h != g.NarHash[id] {
			t.Fatalf("%s damaged after cancel: %v", g.Path(id), err)
		}
	}
	want := map[string]bool{}
	for _, p := range dead {
		want[p] = true
	}
	res = collect(t, rw, gc.Options{Action: gc.Delete})
	checkSurvivors(t, rw, b, want)
}

// registrationRace builds a store, picks a dead output path with a
// dead referrer (so the path's deletion depends on the batch order and
// foreign keys), and returns the store, its dead set and that path.
func registrationRace(t *testing.T) (*storetest.Built, map[string]bool, string) {
	t.Helper()
	b := storetest.MustBuild(t, storetest.Spec{Paths: 60, Seed: 11, MaxDeps: 3, Files: 1, FileSize: 32, Roots: 2, Generations: 1})
	ro := storetest.OpenRO(t, b.Layout)
	dead := map[string]bool{}
	for _, p := range collect(t, ro, gc.Options{Action: gc.PrintDead}).Dead {
		dead[p] = true
	}
	ro.Close()
	for _, p := range b.Valid {
		if !dead[p] || strings.HasSuffix(p, ".drv") {
			continue
		}
		for q, refs := range b.Refs {
			if q != p && dead[q] && !strings.HasSuffix(q, ".drv") && sort.SearchStrings(refs, p) < len(refs) && refs[sort.SearchStrings(refs, p)] == p {
				return b, dead, p
			}
		}
	}
	t.Fatal("no dead path with a dead referrer: the fixture does not test anything")
	return nil, nil, ""
}

func openRaw(t *testing.T, lay store.Layout) *sql.DB {
	t.Helper()
	db, err := sql.Open("sqlite", "file:"+lay.DBPath()+"?_busy_timeout=10000")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

// TestRegisteredDuringCollectionKeepsItsReferences: a path registered
// while the collector holds gc.lock (as a build finishing then does) that
// refers to a dead path keeps that path and its closure alive; the rest
// of the garbage still goes, and the DB stays consistent.
func TestRegisteredDuringCollectionKeepsItsReferences(t *testing.T) {
	b, dead, victim := registrationRace(t)
	lay := b.Layout
	newPath := lay.StoreDir + "/" + strings.Repeat("1", 32) + "-registered-meanwhile"
	if err := os.Mkdir(lay.RealPath(newPath), 0o555); err != nil {
		t.Fatal(err)
	}
	rw := storetest.Open(t, lay)
	log := &report.Log{}
	res := collectWith(t, rw, log, gc.Options{Action: gc.Delete, BeforeInvalidation: func() {
		db := openRaw(t, lay)
		var id int64
		err := db.QueryRow("insert into ValidPaths (path, hash, registrationTime, narSize) values (?, ?, 1, 112) returning id",
			newPath, "sha256:"+strings.Repeat("0", 64)).Scan(&id)
		if err == nil {
			_, err = db.Exec("insert into Refs (referrer, reference) select ?, id from ValidPaths where path = ?", id, victim)
		}
		if err != nil {
			t.Error(err)
		}
	}})
	g, err := rw.LoadGraph(context.Background(), db.GraphOptions{})
	if err != nil {
		t.Fatal(err)
	}
	kept := 0
	for p := range dead {
		_, valid := g.Lookup(p)
		_, serr := os.Lstat(lay.RealPath(p))
		if valid != (serr == nil) {
			t.Errorf("%s: valid %v but on disk %v", p, valid, serr == nil)
		}
		if valid {
			kept++
		}
	}
	if _, ok := g.Lookup(victim); !ok {
		t.Fatalf("%s, referred to by a path registered during the collection, was deleted", victim)
	}
	if _, ok := g.Lookup(newPath); !ok {
		t.Fatal("the path registered during the collection was invalidated")
	}
	for _, r := range b.Refs[victim] {
		if _, ok := g.Lookup(r); !ok {
			t.Errorf("%s, in the closure of %s, was deleted", r, victim)
		}
	}
	if kept == len(dead) || res.PathsDeleted == 0 {
		t.Errorf("nothing else was collected (kept %d of %d dead)", kept, len(dead))
	}
	if w := log.Texts(report.LevelWarning); !strings.Contains(strings.Join(w, "\n"), "registered during the collection") {
		t.Errorf("no warning about the kept path: %q", w)
	}
	var n int
	if err := rw.DB.SQL.QueryRow("select count(*) from pragma_foreign_key_check").Scan(&n); err != nil || n != 0 {
		t.Fatalf("%d foreign key violations after gc (%v)", n, err)
	}
	checkForeignKeysOn(t, rw)
}

// checkForeignKeysOn: every connection of the pool enforces foreign keys
// again after a collection (invalidation turns it off on its own).
func checkForeignKeysOn(t *testing.T, s *store.Store) {
	t.Helper()
	ctx := context.Background()
	var conns []*sql.Conn
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	for i := 0; i < 4; i++ {
		c, err := s.DB.SQL.Conn(ctx)
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
		var on int
		if err := c.QueryRowContext(ctx, "pragma foreign_keys").Scan(&on); err != nil || on != 1 {
			t.Errorf("connection %d: foreign_keys = %d (%v) after gc", i, on, err)
		}
	}
}

// TestReregisteredDuringCollectionIsSpared: a dead path invalidated and
// registered again (under a new id) while the collector runs is valid:
// its directory stays and it is reported as spared.
func TestReregisteredDuringCollectionIsSpared(t *testing.T) {
	b, dead, victim := registrationRace(t)
	lay := b.Layout
	rw := storetest.Open(t, lay)
	res := collect(t, rw, gc.Options{Action: gc.Delete, BeforeInvalidation: func() {
		db := openRaw(t, lay)
		var hash string
		var size int64
		err := db.QueryRow("select hash, narSize from ValidPaths where path = ?", victim).Scan(&hash, &size)
		for _, q := range []string{
			"delete from Refs where reference in (select id from ValidPaths where path = ?1) or referrer in (select id from ValidPaths where path = ?1)",
			"delete from ValidPaths where path = ?1",
		} {
			if err == nil {
				_, err = db.Exec(q, victim)
			}
		}
		if err == nil {
			_, err = db.Exec("insert into ValidPaths (path, hash, registrationTime, narSize) values (?, ?, 1, ?)", victim, hash, size)
		}
		if err != nil {
			t.Error(err)
		}
	}})
	if _, err := os.Lstat(lay.RealPath(victim)); err != nil {
		t.Fatalf("%s, registered again during the collection, was deleted: %v", victim, err)
	}
	if fmt.Sprint(res.Spared) != fmt.Sprint([]string{victim}) {
		t.Errorf("spared %q, want %q", res.Spared, victim)
	}
	delete(dead, victim)
	g, err := rw.LoadGraph(context.Background(), db.GraphOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := g.Lookup(victim); !ok {
		t.Errorf("%s is not valid any more", victim)
	}
	for p := range dead {
		if _, ok := g.Lookup(p); ok {
			t.Errorf("dead path %s still valid", p)
		}
	}
}
