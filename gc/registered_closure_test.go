package gc_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"storekeeper/gc"
	"storekeeper/report"
	"storekeeper/store/db"
	"storekeeper/store/storetest"
)

// TestRegisteredDuringCollectionSparesExactlyItsClosure: in a collection
// whose invalidation batch holds more paths than one SQL statement names
// (500), with references between the statements' parts, a path
// registered during the collection that refers to a dead path keeps
// exactly what a gc root on it would have kept (that path's closure), and
// the warnings name only it: a reference between two dead paths of the
// batch is not taken for one from outside.
func TestRegisteredDuringCollectionSparesExactlyItsClosure(t *testing.T) {
	spec := storetest.Spec{Paths: 300, Seed: 23, MaxDeps: 4, Files: 1, FileSize: 16}
	newName := strings.Repeat("1", 32) + "-registered-meanwhile"
	// run collects a fresh copy of the store: with rooted, the new path
	// is registered and rooted before; otherwise registered during the
	// collection, right before the invalidation.
	run := func(rooted bool) (kept []string, warnings []string, victim string) {
		b := storetest.MustBuild(t, spec)
		lay := b.Layout
		if len(b.Valid) <= 500 || len(b.Valid) > 1024 {
			t.Fatalf("%d valid paths: want one batch (at most 1024) of more than one statement's 500", len(b.Valid))
		}
		// The victim: an output with references and referrers.
		for _, p := range b.Valid {
			if !strings.HasSuffix(p, ".drv") && len(b.Refs[p]) >= 2 {
				for _, refs := range b.Refs {
					if i := sort.SearchStrings(refs, p); i < len(refs) && refs[i] == p {
						victim = p
					}
				}
			}
			if victim != "" {
				break
			}
		}
		if victim == "" {
			t.Fatal("no output with references and referrers")
		}
		newPath := lay.StoreDir + "/" + newName
		if err := os.Mkdir(lay.RealPath(newPath), 0o555); err != nil {
			t.Fatal(err)
		}
		register := func() {
			raw := openRaw(t, lay)
			var id int64
			err := raw.QueryRow("insert into ValidPaths (path, hash, registrationTime, narSize) values (?, ?, 1, 112) returning id",
				newPath, "sha256:"+strings.Repeat("0", 64)).Scan(&id)
			if err == nil {
				_, err = raw.Exec("insert into Refs (referrer, reference) select ?, id from ValidPaths where path = ?", id, victim)
			}
			if err != nil {
				t.Fatal(err)
			}
		}
		o := gc.Options{Action: gc.Delete}
		if rooted {
			register()
			if err := os.Symlink(newPath, filepath.Join(lay.GCRootsDir(), "meanwhile")); err != nil {
				t.Fatal(err)
			}
		} else {
			o.BeforeInvalidation = register
		}
		rw := storetest.Open(t, lay)
		log := &report.Log{}
		res := collectWith(t, rw, log, o)
		if res.PathsDeleted == 0 {
			t.Fatal("nothing was collected")
		}
		g, err := rw.LoadGraph(context.Background(), db.GraphOptions{})
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range b.Valid {
			_, valid := g.Lookup(p)
			_, serr := os.Lstat(lay.RealPath(p))
			if valid != (serr == nil) {
				t.Errorf("%s: valid %v but on disk %v", p, valid, serr == nil)
			}
			if valid {
				kept = append(kept, p)
			}
		}
		if _, ok := g.Lookup(newPath); !ok {
			t.Fatal("the path registered during the collection was invalidated")
		}
		var n int
		if err := rw.DB.SQL.QueryRow("select count(*) from pragma_foreign_key_check").Scan(&n); err != nil || n != 0 {
			t.Fatalf("%d foreign key violations after gc (%v)", n, err)
		}
		checkForeignKeysOn(t, rw)
		return kept, log.Texts(report.LevelWarning), victim
	}
	want, _, victim := run(true)
	got, warnings, _ := run(false)
	if len(want) < 2 {
		t.Fatalf("a root on the new path keeps only %v", want)
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("kept %d paths, want %d (what a root on the new path keeps: %s's closure)", len(got), len(want), victim)
	}
	var about []string
	for _, w := range warnings {
		if strings.Contains(w, "registered during the collection") {
			about = append(about, w)
		}
	}
	if len(about) != 1 || !strings.Contains(about[0], newName) {
		t.Errorf("%d warnings about paths registered during the collection, want 1 about %s: %q", len(about), newName, about[:min(len(about), 3)])
	}
}

// TestForeignKeysOnAfterFailedCollection: a collection cancelled during
// the invalidation, and one that fails there (a Refs row from a path that
// is not valid refers to a dead path: nothing may delete it), leave every
// connection of the pool enforcing foreign keys, and the database
// consistent apart from the planted row.
func TestForeignKeysOnAfterFailedCollection(t *testing.T) {
	spec := storetest.Spec{Paths: 80, Seed: 12, MaxDeps: 3, Files: 1, FileSize: 32, Roots: 2, Generations: 1}
	t.Run("cancelled", func(t *testing.T) {
		b := storetest.MustBuild(t, spec)
		rw := storetest.Open(t, b.Layout)
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		_, err := gc.Collect(ctx, rw, gc.Options{Action: gc.Delete, BatchSize: 4, ProcDir: t.TempDir()}, &cancelAfter{at: 6, cancel: cancel})
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("got %v, want a cancelled collection", err)
		}
		checkForeignKeysOn(t, rw)
		var n int
		if err := rw.DB.SQL.QueryRow("select count(*) from pragma_foreign_key_check").Scan(&n); err != nil || n != 0 {
			t.Fatalf("%d foreign key violations after the cancelled gc (%v)", n, err)
		}
	})
	t.Run("failed", func(t *testing.T) {
		b := storetest.MustBuild(t, spec)
		rw := storetest.Open(t, b.Layout)
		dead := collect(t, rw, gc.Options{Action: gc.PrintDead}).Dead
		if len(dead) == 0 {
			t.Fatal("nothing is dead")
		}
		raw := openRaw(t, b.Layout)
		if _, err := raw.Exec("insert into Refs (referrer, reference) select 999999, id from ValidPaths where path = ?", dead[0]); err != nil {
			t.Fatal(err)
		}
		_, err := gc.Collect(context.Background(), rw, gc.Options{Action: gc.Delete, ProcDir: t.TempDir()}, nil)
		if !errors.Is(err, db.ErrReferenced) {
			t.Fatalf("got %v, want the invalidation refused", err)
		}
		checkForeignKeysOn(t, rw)
	})
}
