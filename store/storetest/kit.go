package storetest

import (
	"context"
	"fmt"
	"testing"
	"time"

	"storekeeper/nix/nixconf"
	"storekeeper/store"
)

// MustBuild builds spec in a fresh t.TempDir() (removed when the test
// ends) and fails t at once if that fails.
func MustBuild(t testing.TB, spec Spec) *Built {
	t.Helper()
	b, err := Build(t.TempDir(), spec)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// OpenReadOnly opens the store at lay read-only with Nix's default
// settings and a short busy timeout (300ms, so a test of a held lock
// fails fast), as the read-only commands open it.
func OpenReadOnly(lay store.Layout) (*store.Store, error) {
	return store.Open(context.Background(), store.Options{Layout: lay, Settings: nixconf.Default(true), ReadOnly: true, BusyTimeout: 300 * time.Millisecond})
}

// Open opens the store at lay for writing with Nix's default settings and
// fails t if that fails; the store is closed when the test ends.
func Open(t testing.TB, lay store.Layout) *store.Store {
	t.Helper()
	s, err := store.Open(context.Background(), store.Options{Layout: lay, Settings: nixconf.Default(true)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// OpenRO opens the store at lay read-only with Nix's default settings, as
// the read-only commands do, and fails t if that fails; the store is
// closed when the test ends.
func OpenRO(t testing.TB, lay store.Layout) *store.Store {
	t.Helper()
	s, err := store.Open(context.Background(), store.Options{Layout: lay, Settings: nixconf.Default(true), ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// Graph300k is the store the graph, gc and database benchmarks share:
// DB only (every valid path missing from disk), about 315k valid paths
// (150k derivations with their outputs, 200 roots, 5 generations), the
// size of the store in the gc issue. It is built once per machine and
// cached under the temp dir (Cached); it fails tb if it cannot be.
func Graph300k(tb testing.TB) store.Layout {
	tb.Helper()
	spec := Spec{Paths: 150000, Seed: 9, MaxDeps: 6, Roots: 200, Generations: 5, Multi: 0.1, DBOnly: true}
	lay, err := Cached(fmt.Sprintf("storekeeper-bench-graph-%d", spec.Paths), spec)
	if err != nil {
		tb.Fatal(err)
	}
	return lay
}
