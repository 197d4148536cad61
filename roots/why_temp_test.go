package roots_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"testing"

	"storekeeper/graph"
	"storekeeper/lock"
	"storekeeper/roots"
	"storekeeper/store/storetest"
)

// TestWhyNotYetValidTempRoot: a path that is not valid yet but that a
// process holds as a temporary root (a build or copy putting it in the
// store) is alive, as the collector sees it: Why names that temp root
// (and, with All, every one), not "nothing keeps it". A path no temp
// root names is still not valid.
func TestWhyNotYetValidTempRoot(t *testing.T) {
	b := storetest.MustBuild(t, storetest.Spec{Paths: 8, Seed: 3, MaxDeps: 2, Files: 1, FileSize: 16, Roots: 1, Generations: 1})
	s := storetest.OpenRO(t, b.Layout)
	tr, err := lock.OpenTempRoots(b.Layout.StateDir)
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	building := b.Layout.StoreDir + "/11111111111111111111111111111111-being-built"
	if err := tr.Add(context.Background(), building); err != nil {
		t.Fatal(err)
	}
	nobody := b.Layout.StoreDir + "/22222222222222222222222222222222-nobody-holds"
	for _, all := range []bool{false, true} {
		o := roots.WhyOptions{Roots: roots.Options{NoRuntime: true}, All: all}
		es, errs, err := roots.WhyPaths(context.Background(), s, []string{building, nobody}, o)
		if err != nil {
			t.Fatal(err)
		}
		e := es[0]
		link := fmt.Sprintf("{temp:%d}", os.Getpid())
		want := []roots.Link{{Path: building, Edge: graph.Root}}
		if errs[0] != nil || e == nil || !e.Alive || e.Root == nil || e.Root.Kind != roots.Temp || e.Root.Link != link ||
			e.Root.Target != building || fmt.Sprint(e.Chain) != fmt.Sprint(want) {
			t.Fatalf("all=%v: %s, a temp root not valid yet: %+v, %v", all, building, e, errs[0])
		}
		if all && (len(e.Roots) != 1 || e.Roots[0].Root.Link != link || fmt.Sprint(e.Roots[0].Chain) != fmt.Sprint(want)) {
			t.Errorf("all: roots %+v", e.Roots)
		}
		if !all && e.Roots != nil {
			t.Errorf("roots without All: %+v", e.Roots)
		}
		if !errors.Is(errs[1], roots.ErrNotValid) || es[1] != nil {
			t.Errorf("%s, not valid and no temp root: %+v, %v", nobody, es[1], errs[1])
		}
	}
}
