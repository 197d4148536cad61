package db_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"sort"
	"strings"
	"testing"

	"storekeeper/store"
	"storekeeper/store/db"
	"storekeeper/store/storetest"
)

// invalidateFixture is a small DB-only store and its rows.
type invalidateFixture struct {
	t  *testing.T
	b  *storetest.Built
	s  *store.Store
	id map[string]int64 // full path -> ValidPaths id
}

func newInvalidateFixture(t *testing.T) *invalidateFixture {
	t.Helper()
	return newInvalidateFixtureOf(t, 40)
}

// newInvalidateFixtureOf is newInvalidateFixture with n derivations.
func newInvalidateFixtureOf(t *testing.T, n int) *invalidateFixture {
	t.Helper()
	b := storetest.MustBuild(t, storetest.Spec{Paths: n, Seed: 5, MaxDeps: 3, Files: 1, FileSize: 16, DBOnly: true})
	f := &invalidateFixture{t: t, b: b, s: storetest.Open(t, b.Layout), id: map[string]int64{}}
	rows, err := f.s.DB.SQL.Query("select id, path from ValidPaths")
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	for rows.Next() {
		var id int64
		var p string
		if err := rows.Scan(&id, &p); err != nil {
			t.Fatal(err)
		}
		f.id[p] = id
	}
	return f
}

// referrers of p among the valid paths, other than p itself.
func (f *invalidateFixture) referrers(p string) []string {
	var out []string
	for q, refs := range f.b.Refs {
		for _, r := range refs {
			if r == p && q != p {
				out = append(out, q)
			}
		}
	}
	sort.Strings(out)
	return out
}

// closedSet returns p with every path that refers to it, transitively:
// a set nothing outside refers into.
func (f *invalidateFixture) closedSet(p string) []string {
	seen := map[string]bool{p: true}
	queue := []string{p}
	for len(queue) > 0 {
		q := queue[0]
		queue = queue[1:]
		for _, r := range f.referrers(q) {
			if !seen[r] {
				seen[r] = true
				queue = append(queue, r)
			}
		}
	}
	var out []string
	for q := range seen {
		out = append(out, q)
	}
	sort.Strings(out)
	return out
}

func (f *invalidateFixture) count(q string, args ...any) int {
	f.t.Helper()
	var n int
	if err := f.s.DB.SQL.QueryRow(q, args...).Scan(&n); err != nil {
		f.t.Fatal(err)
	}
	return n
}

// consistent fails unless no row refers to a path that is not valid.
func (f *invalidateFixture) consistent() {
	f.t.Helper()
	for _, q := range []string{
		"select count(*) from pragma_foreign_key_check",
		"select count(*) from Refs where referrer not in (select id from ValidPaths) or reference not in (select id from ValidPaths)",
		"select count(*) from DerivationOutputs where drv not in (select id from ValidPaths)",
	} {
		if n := f.count(q); n != 0 {
			f.t.Errorf("%s: %d", q, n)
		}
	}
}

// invalidate runs db.Invalidate on paths in one transaction and commits
// it if it succeeds, on a connection that enforces foreign keys or on
// one of db.InvalidationConn's, which does not.
func (f *invalidateFixture) invalidate(enforce bool, paths []string) (map[string]bool, error) {
	f.t.Helper()
	ctx := context.Background()
	var conn *sql.Conn
	var done func()
	var err error
	if enforce {
		conn, err = f.s.DB.SQL.Conn(ctx)
		done = func() { conn.Close() }
	} else {
		conn, done, err = f.s.DB.InvalidationConn(ctx)
	}
	if err != nil {
		f.t.Fatal(err)
	}
	defer done()
	tx, err := conn.BeginTx(ctx, nil)
	if err != nil {
		f.t.Fatal(err)
	}
	defer tx.Rollback()
	ids := make([]int64, len(paths))
	for i, p := range paths {
		ids[i] = f.id[p]
	}
	valid, err := db.Invalidate(ctx, tx, ids, func(i int) string { return paths[i] })
	if err != nil {
		return nil, err
	}
	return valid, tx.Commit()
}

// TestInvalidate: a set that nothing outside refers into goes whole, with
// its Refs and DerivationOutputs rows and whatever refers within it (a
// cycle added on purpose), with SQLite's foreign keys enforced and without
// (db.InvalidationConn); nothing else changes.
func TestInvalidate(t *testing.T) {
	for _, enforce := range []bool{true, false} {
		f := newInvalidateFixture(t)
		ctx := context.Background()
		// A derivation other derivations use: its set holds them too.
		var drv string
		var set []string
		for _, d := range f.b.Drvs {
			if set = f.closedSet(d); len(set) >= 2 {
				drv = d
				break
			}
		}
		if drv == "" {
			t.Fatal("no derivation is used by another")
		}
		// A cycle: every other path of the set refers to drv (through
		// the others); drv now refers to one of them.
		other := set[0]
		if other == drv {
			other = set[1]
		}
		if _, err := f.s.DB.SQL.Exec("insert or ignore into Refs (referrer, reference) values (?, ?)", f.id[drv], f.id[other]); err != nil {
			t.Fatal(err)
		}
		outs := f.count("select count(*) from DerivationOutputs where drv = ?", f.id[drv])
		if outs == 0 {
			t.Fatalf("%s has no DerivationOutputs rows", drv)
		}
		before := f.count("select count(*) from ValidPaths")
		valid, err := f.invalidate(enforce, set)
		if err != nil {
			t.Fatalf("enforce %v: %v", enforce, err)
		}
		if len(valid) != 0 {
			t.Errorf("revalidated: %v", valid)
		}
		if n := f.count("select count(*) from ValidPaths"); n != before-len(set) {
			t.Errorf("enforce %v: %d rows left of %d, %d invalidated", enforce, n, before, len(set))
		}
		for _, p := range set {
			if f.count("select count(*) from ValidPaths where path = ?", p) != 0 {
				t.Errorf("%s still valid", p)
			}
		}
		if n := f.count("select count(*) from DerivationOutputs where drv = ?", f.id[drv]); n != 0 {
			t.Errorf("%d DerivationOutputs rows of %s left", n, drv)
		}
		f.consistent()
		var on int
		c, _ := f.s.DB.SQL.Conn(ctx)
		c.QueryRowContext(ctx, "pragma foreign_keys").Scan(&on)
		c.Close()
		if on != 1 {
			t.Errorf("foreign keys are off on the pool's connection after InvalidationConn's done")
		}
	}
}

// TestInvalidateReferenced: a path outside the set that refers into it
// (registered since the caller looked) makes Invalidate fail with a
// *ReferencedError naming the row; the caller's rollback leaves the
// database as it was.
func TestInvalidateReferenced(t *testing.T) {
	f := newInvalidateFixture(t)
	var victim string
	for _, p := range f.b.Valid {
		if rs := f.referrers(p); len(rs) > 0 {
			victim = p
			break
		}
	}
	if victim == "" {
		t.Fatal("no referenced path")
	}
	outside := f.referrers(victim)
	before := f.count("select count(*) from ValidPaths") + 1000*f.count("select count(*) from Refs")
	for _, enforce := range []bool{true, false} {
		_, err := f.invalidate(enforce, []string{victim})
		var re *db.ReferencedError
		if !errors.As(err, &re) || !errors.Is(err, db.ErrReferenced) {
			t.Fatalf("enforce %v: error %v, want a *db.ReferencedError", enforce, err)
		}
		var got []string
		for _, r := range re.Refs {
			if r.Reference != f.id[victim] {
				t.Errorf("row refers to id %d, not %s's %d", r.Reference, victim, f.id[victim])
			}
			got = append(got, r.Referrer)
		}
		sort.Strings(got)
		if strings.Join(got, " ") != strings.Join(outside, " ") {
			t.Errorf("referrers %v, want %v", got, outside)
		}
		if !strings.Contains(err.Error(), outside[0]) {
			t.Errorf("message does not name a referrer: %v", err)
		}
		if after := f.count("select count(*) from ValidPaths") + 1000*f.count("select count(*) from Refs"); after != before {
			t.Errorf("the rolled back transaction changed the database")
		}
	}
}

// TestInvalidateRevalidated: a path whose row was deleted and registered
// again under a new id since the caller read its id is reported valid
// again (and stays valid); the rest of the set goes.
func TestInvalidateRevalidated(t *testing.T) {
	f := newInvalidateFixture(t)
	var lone []string
	for _, p := range f.b.Valid {
		if len(f.referrers(p)) == 0 {
			lone = append(lone, p)
		}
	}
	if len(lone) < 2 {
		t.Fatalf("need 2 unreferenced paths, have %v", lone)
	}
	again := lone[0]
	for _, q := range []string{
		"delete from Refs where referrer = ?1",
		"delete from DerivationOutputs where drv = ?1",
		"delete from ValidPaths where id = ?1",
	} {
		if _, err := f.s.DB.SQL.Exec(q, f.id[again]); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := f.s.DB.SQL.Exec("insert into ValidPaths (path, hash, registrationTime, narSize) values (?, ?, 1, 8)", again, "sha256:"+strings.Repeat("1", 64)); err != nil {
		t.Fatal(err)
	}
	valid, err := f.invalidate(false, lone[:2])
	if err != nil {
		t.Fatal(err)
	}
	if len(valid) != 1 || !valid[again] {
		t.Errorf("revalidated %v, want %s", valid, again)
	}
	if f.count("select count(*) from ValidPaths where path = ?", again) != 1 || f.count("select count(*) from ValidPaths where path = ?", lone[1]) != 0 {
		t.Error("wrong rows deleted")
	}
	f.consistent()
}

// TestImmediateTx: fn's changes are committed together, or none of them
// when fn fails.
func TestImmediateTx(t *testing.T) {
	f := newInvalidateFixture(t)
	ctx := context.Background()
	p := f.b.Valid[0]
	boom := errors.New("boom")
	err := f.s.DB.ImmediateTx(ctx, func(c *sql.Conn) error {
		if _, err := c.ExecContext(ctx, "update ValidPaths set narSize = 1 where path = ?", p); err != nil {
			return err
		}
		return boom
	})
	if !errors.Is(err, boom) {
		t.Fatalf("error %v, want boom", err)
	}
	if f.count("select count(*) from ValidPaths where path = ? and narSize = 1", p) != 0 {
		t.Error("a failed transaction was committed")
	}
	if err := f.s.DB.ImmediateTx(ctx, func(c *sql.Conn) error {
		_, err := c.ExecContext(ctx, "update ValidPaths set narSize = 1 where path = ?", p)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if f.count("select count(*) from ValidPaths where path = ? and narSize = 1", p) != 1 {
		t.Error("the transaction was not committed")
	}
}

// TestInvalidateConstraint: when a foreign key the check does not know
// (here a table of another tool's) stops the deletion, Invalidate's error
// is a *ReferencedError that keeps the constraint error as its cause.
func TestInvalidateConstraint(t *testing.T) {
	f := newInvalidateFixture(t)
	var lone string
	for _, p := range f.b.Valid {
		if len(f.referrers(p)) == 0 {
			lone = p
			break
		}
	}
	for _, q := range []string{
		"create table Pins (path integer not null, foreign key (path) references ValidPaths(id) on delete restrict)",
		"insert into Pins (path) values (" + fmt.Sprint(f.id[lone]) + ")",
	} {
		if _, err := f.s.DB.SQL.Exec(q); err != nil {
			t.Fatal(err)
		}
	}
	_, err := f.invalidate(true, []string{lone})
	var re *db.ReferencedError
	if !errors.As(err, &re) || re.Cause == nil || !db.IsConstraintError(err) || len(re.Refs) != 0 {
		t.Fatalf("error %v (%+v), want a *db.ReferencedError caused by a constraint error", err, re)
	}
	if f.count("select count(*) from ValidPaths where path = ?", lone) != 1 {
		t.Error("the path was invalidated")
	}
}
