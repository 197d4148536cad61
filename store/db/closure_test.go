package db_test

import (
	"context"
	"fmt"
	"reflect"
	"sort"
	"testing"

	"storekeeper/store/storetest"
)

// TestClosure: Closure returns exactly the closure under references of
// the paths asked for (computed here by a walk of the fixture's
// references), each row in full (hash, size, deriver, registration time,
// sorted references), and names the paths that are not valid.
func TestClosure(t *testing.T) {
	b := storetest.MustBuild(t, storetest.Spec{Paths: 300, Seed: 14, MaxDeps: 5, Files: 1, FileSize: 100, Multi: 0.3})
	s := storetest.OpenRO(t, b.Layout)
	missing := "/nix/store/" + fmt.Sprintf("%032d", 0) + "-gone"
	start := []string{b.Outputs[299]["out"], b.Outputs[150]["out"], missing, b.Drvs[10]}
	want := map[string]bool{}
	var walk func(p string)
	walk = func(p string) {
		if want[p] {
			return
		}
		want[p] = true
		for _, r := range b.Refs[p] {
			walk(r)
		}
	}
	for _, p := range start[:2] {
		walk(p)
	}
	walk(b.Drvs[10])
	rows, miss, err := s.DB.Closure(context.Background(), start)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(miss, []string{missing}) {
		t.Errorf("missing %v", miss)
	}
	if len(rows) != len(want) || len(want) < 10 {
		t.Fatalf("%d rows, want %d", len(rows), len(want))
	}
	pr, err := s.DB.PathRows(context.Background(), b.Valid)
	if err != nil {
		t.Fatal(err)
	}
	for p := range want {
		r := rows[p]
		if r == nil {
			t.Fatalf("%s missing from the closure", p)
		}
		w := append([]string(nil), b.Refs[p]...)
		sort.Strings(w)
		if len(w) == 0 {
			w = nil
		}
		if !reflect.DeepEqual(r.References, w) || r.NarHash != pr[p].NarHash || r.NarSize != pr[p].NarSize || r.ID != pr[p].ID || r.HashErr != nil {
			t.Errorf("%s: %+v", p, r)
		}
		if r.Deriver != b.Deriver[p] || r.RegistrationTime == 0 {
			t.Errorf("%s: deriver %q (want %q), registration time %d", p, r.Deriver, b.Deriver[p], r.RegistrationTime)
		}
	}
	if rows, miss, err := s.DB.Closure(context.Background(), nil); err != nil || len(rows) != 0 || miss != nil {
		t.Errorf("no paths: %v %v %v", rows, miss, err)
	}
}
