package gc

import (
	"context"
	"io"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"storekeeper/graph"
	"storekeeper/nix/nixconf"
	"storekeeper/report"
	"storekeeper/store"
	"storekeeper/store/db"
	"storekeeper/store/storetest"
)

// BenchmarkInvalidate measures the invalidation transactions alone: every
// path of a 44k-path DB-only store is invalidated referrers-first in
// batches, as a full collection would.
func BenchmarkInvalidate(b *testing.B) {
	spec := storetest.Spec{Paths: 20000, Seed: 9, MaxDeps: 6, Roots: 0, Generations: 0, Multi: 0.1, DBOnly: true}
	lay, err := storetest.Cached("storekeeper-bench-invalidate-20000", spec)
	if err != nil {
		b.Fatal(err)
	}
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		dir := b.TempDir()
		l := lay
		l.StateDir = filepath.Join(dir, "state")
		os.MkdirAll(l.DBDir(), 0o755)
		for _, f := range []string{"db.sqlite", "schema", "big-lock"} {
			src, _ := os.Open(filepath.Join(lay.DBDir(), f))
			dst, _ := os.Create(filepath.Join(l.DBDir(), f))
			io.Copy(dst, src)
			src.Close()
			dst.Close()
		}
		s, err := store.Open(context.Background(), store.Options{Layout: l, Settings: nixconf.Default(true)})
		if err != nil {
			b.Fatal(err)
		}
		g, err := s.LoadGraph(context.Background(), db.GraphOptions{})
		if err != nil {
			b.Fatal(err)
		}
		dead := make([]bool, g.Len())
		for j := range dead {
			dead[j] = true
		}
		comps := graph.DeletionOrder(g, dead)
		c := &collector{s: s, lay: l, o: Options{BatchSize: 4096}, progress: report.Discard, res: &Result{}, g: g,
			pendingID: map[graph.PathID]bool{}, pendingHash: map[string]bool{}, tempHash: map[string]bool{}}
		c.cond = sync.NewCond(&c.mu)
		c.live = graph.NewLiveness(graph.NewEdges(g, false, true))
		b.StartTimer()
		start := time.Now()
		var batch []graph.PathID
		flush := func() {
			if _, err := c.invalidate(context.Background(), s.DB.SQL, batch); err != nil {
				b.Fatal(err)
			}
			batch = batch[:0]
		}
		for _, comp := range comps {
			batch = append(batch, comp...)
			if len(batch) >= c.o.BatchSize {
				flush()
			}
		}
		if len(batch) > 0 {
			flush()
		}
		b.ReportMetric(float64(time.Since(start).Microseconds())/float64(g.Len()), "µs/path")
		s.Close()
	}
}
