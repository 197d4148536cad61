package tests

import (
	"context"
	"path/filepath"
	"testing"

	"storekeeper/graph"
	"storekeeper/nix/nar"
	"storekeeper/nix/nixconf"
	"storekeeper/store"
	"storekeeper/store/db"
)

// openChroot opens a store under root (ROOT/nix) read-only.
func openChroot(t testing.TB, root string) *store.Store {
	t.Helper()
	lay, err := store.ResolveLayout(store.LayoutOptions{StoreURI: "local?root=" + root})
	if err != nil {
		t.Fatal(err)
	}
	s, err := store.Open(context.Background(), store.Options{Layout: lay, Settings: nixconf.Default(true), ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// TestInteropNARHashesMatchNix: for every valid path of a store registered
// by real Nix, the NAR hash and size storekeeper computes equal the DB's
// (which Nix computed with its own NAR serialiser at registration).
func TestInteropNARHashesMatchNix(t *testing.T) {
	ns := buildNixStore(t, nixSpec{Paths: 60, Seed: 11, Roots: 2})
	s := openChroot(t, ns.Root)
	g, err := s.LoadGraph(context.Background(), db.GraphOptions{Hashes: true})
	if err != nil {
		t.Fatal(err)
	}
	if g.Len() < 120 {
		t.Fatalf("only %d valid paths", g.Len())
	}
	for id := graph.PathID(0); int(id) < g.Len(); id++ {
		p := g.Path(id)
		h, size, err := nar.HashPath(filepath.Join(ns.Root, p))
		if err != nil {
			t.Fatalf("%s: %v", p, err)
		}
		if h != g.NarHash[id] || uint64(size) != g.NarSize[id] {
			t.Errorf("%s: storekeeper %s/%d, Nix's DB %s/%d", p, h, size, g.NarHash[id], g.NarSize[id])
		}
	}
	// The graph agrees with what was registered.
	for out, refs := range ns.Refs {
		id, ok := g.Lookup(out)
		if !ok {
			t.Fatalf("%s not in graph", out)
		}
		var got []string
		for _, r := range g.References(id) {
			got = append(got, g.Path(r))
		}
		if len(got) != len(refs) {
			t.Errorf("%s: references %v, registered %v", out, got, refs)
		}
		if d := g.Deriver[id]; d == graph.NoPath {
			t.Errorf("%s: deriver not resolved", out)
		}
	}
}
