package gc_test

import (
	"context"
	"testing"

	"storekeeper/gc"
	"storekeeper/store/storetest"
)

// BenchmarkPlan300k: the whole plan of `gc --print-live` (roots, graph,
// liveness, live set: NewPlan) on a ~315k-path store (DB only: every
// valid path is missing from disk, so the dead set is computed over the
// graph alone). Nix 2.8 needs 63 s for --print-dead on a store of this
// size. The liveness alone is graph's BenchmarkLiveness300k.
func BenchmarkPlan300k(b *testing.B) {
	s := storetest.OpenRO(b, storetest.Graph300k(b))
	proc := b.TempDir()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		pl, err := gc.NewPlan(context.Background(), s, gc.Options{Action: gc.PrintLive, KeepDerivations: true, ProcDir: proc}, nil)
		if err != nil {
			b.Fatal(err)
		}
		if len(pl.Live) == 0 {
			b.Fatal("nothing alive")
		}
		pl.Close()
	}
}
