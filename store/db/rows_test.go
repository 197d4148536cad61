package db_test

import (
	"context"
	"fmt"
	"reflect"
	"testing"

	"storekeeper/nix/nar"
	"storekeeper/store/storetest"
)

// TestPathRows: PathRows reads the row (id, NAR hash and size) and the
// sorted references of every valid path asked for, over more paths than
// one statement takes, and nothing for a path that is not valid.
func TestPathRows(t *testing.T) {
	b := storetest.MustBuild(t, storetest.Spec{Paths: 400, Seed: 12, MaxDeps: 5, Files: 1, FileSize: 100, Multi: 0.3})
	s := storetest.OpenRO(t, b.Layout)
	missing := "/nix/store/" + fmt.Sprintf("%032d", 0) + "-gone"
	paths := append([]string{missing}, b.Valid...)
	rows, err := s.DB.PathRows(context.Background(), paths)
	if err != nil {
		t.Fatal(err)
	}
	if len(rows) != len(b.Valid) || rows[missing] != nil {
		t.Fatalf("%d rows for %d valid paths", len(rows), len(b.Valid))
	}
	ids := map[int64]bool{}
	for _, p := range b.Valid {
		r := rows[p]
		if r == nil || r.Path != p || r.HashErr != nil || ids[r.ID] {
			t.Fatalf("%s: %+v", p, r)
		}
		ids[r.ID] = true
		h, n, err := nar.HashPath(b.Layout.RealPath(p))
		if err != nil {
			t.Fatal(err)
		}
		if r.NarHash != h || r.NarSize != uint64(n) {
			t.Errorf("%s: hash %s size %d, the contents %s %d", p, r.NarHash, r.NarSize, h, n)
		}
		want := b.Refs[p]
		if len(want) == 0 {
			want = nil
		}
		if !reflect.DeepEqual(r.References, want) {
			t.Errorf("%s: references %v, want %v", p, r.References, want)
		}
	}
	if rows, err := s.DB.PathRows(context.Background(), nil); err != nil || len(rows) != 0 {
		t.Errorf("no paths: %v %v", rows, err)
	}
}
