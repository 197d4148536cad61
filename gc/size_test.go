package gc_test

import (
	"os"
	"path/filepath"
	"testing"

	"storekeeper/gc"
	"storekeeper/store/storetest"
)

// TestDryRunCountsUnusedLinks: a .links entry nothing links to any more
// (a collection cut short, a path deleted by hand) is removed by a
// collection, so the dry run counts it: what it says equals what the run
// then frees.
func TestDryRunCountsUnusedLinks(t *testing.T) {
	b := storetest.MustBuild(t, storetest.Spec{Paths: 30, Seed: 8, MaxDeps: 3, Files: 2, FileSize: 5000, Roots: 2, Generations: 1})
	lay := b.Layout
	if err := os.MkdirAll(lay.LinksDir(), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(lay.LinksDir(), "0000000000000000000000000000000000000000000000000000"), make([]byte, 100000), 0o444); err != nil {
		t.Fatal(err)
	}
	ro := storetest.OpenRO(t, lay)
	dry := collect(t, ro, gc.Options{Action: gc.Delete, DryRun: true})
	ro.Close()
	rw := storetest.Open(t, lay)
	res := collect(t, rw, gc.Options{Action: gc.Delete})
	if res.LinksDeleted != 1 || dry.BytesFreed != res.BytesFreed {
		t.Errorf("dry run said %d bytes; the run freed %d, removing %d .links entries", dry.BytesFreed, res.BytesFreed, res.LinksDeleted)
	}
}
