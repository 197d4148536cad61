package register

import (
	"context"
	"database/sql"
	"io"
	"os"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"storekeeper/nix/nar"
	"storekeeper/store/fs"
	"storekeeper/store/storetest"
)

// BenchmarkRegister registers every path of a storetest store (with
// Nix's .drv output paths) after removing all its rows: the hash
// computed, then given; references given. The store has
// $STOREKEEPER_REGISTER_BENCH_DRVS derivations (default 15000: about
// 31500 paths, with one or two outputs each). The floor sub-benchmark
// reads every path once (a NAR dump to io.Discard, the same
// parallelism), what register must stay within 1.5x of.
//
//	go test -run - -bench Register -benchtime 3x ./register/
func BenchmarkRegister(b *testing.B) {
	n := 15000
	if v, err := strconv.Atoi(os.Getenv("STOREKEEPER_REGISTER_BENCH_DRVS")); err == nil && v > 0 {
		n = v
	}
	spec := storetest.DefaultSpec()
	spec.Paths, spec.NixOutputs, spec.Invalid, spec.Roots, spec.Generations = n, true, 0, 0, 0
	built := storetest.MustBuild(b, spec)
	s := storetest.Open(b, built.Layout)
	given := inputsOf(b, s, built.Valid, true)
	computed := inputsOf(b, s, built.Valid, false)
	removeAll := func() {
		err := s.DB.ImmediateTx(context.Background(), func(c *sql.Conn) error {
			for _, q := range []string{"delete from Refs", "delete from DerivationOutputs", "delete from ValidPaths"} {
				if _, err := c.ExecContext(context.Background(), q); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			b.Fatal(err)
		}
	}
	for _, c := range []struct {
		name string
		in   []Input
	}{{"computed", computed}, {"given", given}} {
		b.Run(c.name, func(b *testing.B) {
			var total time.Duration
			for i := 0; i < b.N; i++ {
				b.StopTimer()
				removeAll()
				b.StartTimer()
				start := time.Now()
				res, err := Register(context.Background(), s, c.in, Options{BuildUID: fs.NoBuildUser})
				total += time.Since(start)
				if err != nil {
					b.Fatal(err)
				}
				if res.Registered != len(c.in) {
					b.Fatalf("registered %d of %d", res.Registered, len(c.in))
				}
				b.SetBytes(int64(res.Bytes))
			}
			b.ReportMetric(float64(len(c.in)), "paths")
			b.ReportMetric(total.Seconds()/float64(b.N), "s/batch")
		})
	}
	b.Run("floor", func(b *testing.B) {
		for i := 0; i < b.N; i++ {
			var next atomic.Int64
			var bytes atomic.Int64
			var wg sync.WaitGroup
			for range runtime.GOMAXPROCS(0) {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for {
						k := int(next.Add(1)) - 1
						if k >= len(built.Valid) {
							return
						}
						m, err := nar.DumpPath(io.Discard, built.Layout.RealPath(built.Valid[k]))
						if err != nil {
							b.Error(err)
							return
						}
						bytes.Add(m)
					}
				}()
			}
			wg.Wait()
			b.SetBytes(bytes.Load())
		}
		b.ReportMetric(float64(len(built.Valid)), "paths")
	})
}
