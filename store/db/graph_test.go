package db_test

import (
	"context"
	"fmt"
	"runtime"
	"sort"
	"sync"
	"testing"

	"storekeeper/graph"
	"storekeeper/nix/nar"
	"storekeeper/nix/nixconf"
	"storekeeper/store"
	"storekeeper/store/db"
	"storekeeper/store/storetest"
)

// TestGraphMatchesFixture: the loaded graph holds exactly the references,
// derivers and derivation outputs the fixture registered, and the NAR
// hashes and sizes in the DB match the files.
func TestGraphMatchesFixture(t *testing.T) {
	b := storetest.MustBuild(t, storetest.Spec{Paths: 80, Seed: 9, MaxDeps: 5, Files: 2, FileSize: 300, Dup: 0.3, Multi: 0.3, Roots: 4, Generations: 2})
	s, err := storetest.OpenReadOnly(b.Layout)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	g, err := s.LoadGraph(context.Background(), db.GraphOptions{Hashes: true})
	if err != nil {
		t.Fatal(err)
	}
	if g.Len() != len(b.Valid) {
		t.Fatalf("%d paths, want %d", g.Len(), len(b.Valid))
	}
	edges := 0
	for p, refs := range b.Refs {
		id, ok := g.Lookup(p)
		if !ok {
			t.Fatalf("Lookup(%s) failed", p)
		}
		if g.Path(id) != p {
			t.Fatalf("Path(%d) = %s, want %s", id, g.Path(id), p)
		}
		var got []string
		for _, r := range g.References(id) {
			got = append(got, g.Path(r))
		}
		sort.Strings(got)
		if fmt.Sprint(got) != fmt.Sprint(refs) {
			t.Errorf("%s: refs %v, want %v", p, got, refs)
		}
		edges += len(refs)
		if d, ok := b.Deriver[p]; ok {
			if g.Deriver[id] == graph.NoPath || g.Path(g.Deriver[id]) != d {
				t.Errorf("%s: deriver wrong", p)
			}
		}
		h, size, err := nar.HashPath(b.Layout.RealPath(p))
		if err != nil {
			t.Fatal(err)
		}
		if h != g.NarHash[id] || uint64(size) != g.NarSize[id] {
			t.Errorf("%s: hash/size mismatch", p)
		}
	}
	if g.NumRefs() != edges {
		t.Errorf("%d edges, want %d", g.NumRefs(), edges)
	}
	// Referrers is the exact inverse of References.
	for id := graph.PathID(0); int(id) < g.Len(); id++ {
		for _, r := range g.References(id) {
			found := false
			for _, x := range g.Referrers(r) {
				found = found || x == id
			}
			if !found {
				t.Fatalf("%s refers to %s but is not among its referrers", g.Path(id), g.Path(r))
			}
		}
	}
	for i, drv := range b.Drvs {
		id, _ := g.Lookup(drv)
		outs := g.Outputs(id)
		if len(outs) != len(b.Outputs[i]) {
			t.Fatalf("%s: %d outputs, want %d", drv, len(outs), len(b.Outputs[i]))
		}
		for _, o := range outs {
			if b.Outputs[i][o.Name] != o.Path || o.ID == graph.NoPath {
				t.Errorf("%s: output %s = %s", drv, o.Name, o.Path)
			}
			if ds := g.DerivationsOf(o.ID); len(ds) != 1 || ds[0] != id {
				t.Errorf("DerivationsOf(%s) = %v", o.Path, ds)
			}
		}
	}
	if _, ok := g.Lookup("/nix/store/00000000000000000000000000000000-nope"); ok {
		t.Error("Lookup found a path that does not exist")
	}
}

// TestGraphSnapshotConsistency: loading while another connection inserts
// paths and references always yields a self-consistent graph (no dangling
// references), because everything is read in one transaction.
func TestGraphSnapshotConsistency(t *testing.T) {
	b := storetest.MustBuild(t, storetest.Spec{Paths: 300, Seed: 10, MaxDeps: 4, DBOnly: true})
	lay := b.Layout
	rw, err := store.Open(context.Background(), store.Options{Layout: lay, Settings: nixconf.Default(true)})
	if err != nil {
		t.Fatal(err)
	}
	defer rw.Close()
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			tx, err := rw.DB.SQL.Begin()
			if err != nil {
				t.Error(err)
				return
			}
			p := fmt.Sprintf("/nix/store/%032d-new-%d", i, i)
			res, err := tx.Exec("insert into ValidPaths (path, hash, registrationTime, narSize) values (?, ?, 1, 1)", p, "sha256:"+fmt.Sprintf("%064x", i))
			if err != nil {
				tx.Rollback()
				t.Error(err)
				return
			}
			id, _ := res.LastInsertId()
			tx.Exec("insert into Refs (referrer, reference) values (?, 1)", id)
			tx.Exec("insert into Refs (referrer, reference) values (?, ?)", id, id)
			tx.Commit()
		}
	}()
	ro, err := storetest.OpenReadOnly(lay)
	if err != nil {
		t.Fatal(err)
	}
	defer ro.Close()
	for i := 0; i < 20; i++ {
		g, err := ro.LoadGraph(context.Background(), db.GraphOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if g.Problems.DanglingRefs != 0 {
			t.Fatalf("load %d: %d dangling references: not a consistent snapshot", i, g.Problems.DanglingRefs)
		}
	}
	close(stop)
	wg.Wait()
}

// BenchmarkLoadGraph300k loads the graph of a ~315k-path store and
// reports paths, edges and the heap the graph keeps (peak RSS of the
// whole process is what the issue note reports, measured with
// /usr/bin/time on `go test -bench`).
func BenchmarkLoadGraph300k(b *testing.B) {
	s := storetest.OpenRO(b, storetest.Graph300k(b))
	b.ResetTimer()
	var g *graph.Graph
	var err error
	for i := 0; i < b.N; i++ {
		g, err = s.LoadGraph(context.Background(), db.GraphOptions{})
		if err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	b.ReportMetric(float64(g.Len()), "paths")
	b.ReportMetric(float64(g.NumRefs()), "edges")
	b.ReportMetric(float64(ms.HeapAlloc)/(1<<20), "heapMiB")
	runtime.KeepAlive(g)
}

// TestGraphPathsOnly: PathsOnly reads the same paths, ids and sizes, and
// nothing else.
func TestGraphPathsOnly(t *testing.T) {
	b := storetest.MustBuild(t, storetest.Spec{Paths: 40, Seed: 4, MaxDeps: 5, Files: 1, FileSize: 100, Multi: 0.3, Roots: 2, Generations: 1})
	s, err := storetest.OpenReadOnly(b.Layout)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	full, err := s.LoadGraph(context.Background(), db.GraphOptions{})
	if err != nil {
		t.Fatal(err)
	}
	g, err := s.LoadGraph(context.Background(), db.GraphOptions{PathsOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	if g.Len() != full.Len() || g.Len() == 0 {
		t.Fatalf("%d paths, want %d", g.Len(), full.Len())
	}
	edges := 0
	for i := range g.Len() {
		id := graph.PathID(i)
		if g.Path(id) != full.Path(id) || g.DBID(id) != full.DBID(id) || g.NarSize[id] != full.NarSize[id] || g.RegTime[id] != full.RegTime[id] {
			t.Errorf("path %d differs: %s", i, g.Path(id))
		}
		if len(g.References(id)) != 0 || g.Deriver[id] != graph.NoPath || len(g.Outputs(id)) != 0 {
			t.Errorf("%s: edges in a PathsOnly graph", g.Path(id))
		}
		edges += len(full.References(id))
	}
	if edges == 0 {
		t.Error("the fixture has no references: the test shows nothing")
	}
}
