package db_test

import (
	"errors"
	"fmt"
	"sort"
	"strings"
	"testing"

	"storekeeper/store/db"
)

// chunk is how many ids one of Invalidate's statements names (its
// invalidateChunk); the tests below need sets larger than that.
const chunk = 500

// TestInvalidateReferencedAcrossChunks: in a set of more than one
// statement's worth of ids whose paths refer to each other across the
// statements, the *ReferencedError names exactly the rows from outside
// the set (not a row between two of the set's statements), with SQLite's
// foreign keys enforced and without; the rollback leaves the database
// as it was.
func TestInvalidateReferencedAcrossChunks(t *testing.T) {
	f := newInvalidateFixtureOf(t, 300)
	// outside: a path nothing refers to, which refers to others.
	var outside string
	for _, p := range f.b.Valid {
		if len(f.referrers(p)) == 0 && len(f.b.Refs[p]) > 0 && !(len(f.b.Refs[p]) == 1 && f.b.Refs[p][0] == p) {
			outside = p
			break
		}
	}
	if outside == "" {
		t.Fatal("no unreferenced path with references")
	}
	var set []string
	in := map[string]int{}
	for _, p := range f.b.Valid {
		if p != outside {
			in[p] = len(set)
			set = append(set, p)
		}
	}
	if len(set) <= chunk {
		t.Fatalf("only %d paths in the set, want more than %d", len(set), chunk)
	}
	var want []string
	across := 0
	for p, refs := range f.b.Refs {
		for _, r := range refs {
			switch _, pin := in[p]; {
			case p == outside && r != outside:
				want = append(want, fmt.Sprint(f.id[r])+" "+p)
			case pin && p != r && in[p]/chunk != in[r]/chunk:
				across++
			}
		}
	}
	if across == 0 {
		t.Fatal("no reference between two statements' ids: the fixture tests nothing")
	}
	sort.Strings(want)
	before := f.count("select count(*) from ValidPaths") + 1000*f.count("select count(*) from Refs")
	for _, enforce := range []bool{true, false} {
		_, err := f.invalidate(enforce, set)
		var re *db.ReferencedError
		if !errors.As(err, &re) {
			t.Fatalf("enforce %v: error %v, want a *db.ReferencedError", enforce, err)
		}
		var got []string
		for _, r := range re.Refs {
			got = append(got, fmt.Sprint(r.Reference)+" "+r.Referrer)
		}
		sort.Strings(got)
		if strings.Join(got, "\n") != strings.Join(want, "\n") {
			t.Errorf("enforce %v: rows referring into the set:\n%s\nwant (from %s only):\n%s", enforce, strings.Join(got, "\n"), outside, strings.Join(want, "\n"))
		}
		if after := f.count("select count(*) from ValidPaths") + 1000*f.count("select count(*) from Refs"); after != before {
			t.Errorf("enforce %v: the rolled back transaction changed the database", enforce)
		}
	}
}

// TestInvalidateRevalidatedInLaterChunk: a path registered again under a
// new id whose old id is in the second statement's part of the set is
// the one reported valid again (pathOf is asked for the right index),
// and every other row of the set goes.
func TestInvalidateRevalidatedInLaterChunk(t *testing.T) {
	f := newInvalidateFixtureOf(t, 300)
	set := append([]string(nil), f.b.Valid...)
	if len(set) <= chunk+2 {
		t.Fatalf("only %d paths, want more than %d", len(set), chunk+2)
	}
	again := set[chunk+1]
	for _, q := range []string{
		"delete from Refs where referrer = ?1 or reference = ?1",
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
	valid, err := f.invalidate(false, set)
	if err != nil {
		t.Fatal(err)
	}
	if len(valid) != 1 || !valid[again] {
		t.Errorf("revalidated %v, want only %s", valid, again)
	}
	if n := f.count("select count(*) from ValidPaths"); n != 1 || f.count("select count(*) from ValidPaths where path = ?", again) != 1 {
		t.Errorf("%d rows left, want only %s's", n, again)
	}
	f.consistent()
}

// TestInvalidationConnKeepsUnknownForeignKeys: on a database with a
// foreign key into ValidPaths that Invalidate does not know (Nix's
// ca-derivations schema: Realisations.outputPath, on delete cascade),
// InvalidationConn leaves SQLite's enforcement on, so invalidating a path
// through it also deletes the rows that key cascades to: no row is left
// referring to a path that is not valid.
func TestInvalidationConnKeepsUnknownForeignKeys(t *testing.T) {
	f := newInvalidateFixture(t)
	var lone string
	for _, p := range f.b.Valid {
		if len(f.referrers(p)) == 0 {
			lone = p
			break
		}
	}
	for _, q := range []string{
		"create table Realisations (id integer primary key autoincrement not null, drvPath text not null, outputName text not null, outputPath integer not null, signatures text, foreign key (outputPath) references ValidPaths(id) on delete cascade)",
		"insert into Realisations (drvPath, outputName, outputPath) select path, 'out', id from ValidPaths",
	} {
		if _, err := f.s.DB.SQL.Exec(q); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := f.invalidate(false, []string{lone}); err != nil {
		t.Fatal(err)
	}
	if f.count("select count(*) from ValidPaths where path = ?", lone) != 0 {
		t.Fatalf("%s is still valid", lone)
	}
	if n := f.count("select count(*) from Realisations where outputPath not in (select id from ValidPaths)"); n != 0 {
		t.Errorf("%d Realisations rows refer to the invalidated path", n)
	}
	f.consistent()
}
