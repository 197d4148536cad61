package roots_test

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"storekeeper/graph"
	"storekeeper/roots"
	"storekeeper/store/db"
	"storekeeper/store/storetest"
)

// BenchmarkBusy300k: `roots busy` (and Find's runtime scan, the same
// per-process reads) over a fake /proc of 2,000 processes, each running a
// store program, with 5 store files open, 60 mappings (30 of store
// files), 5 store paths in its environment and its working directory in
// the store, against the ~315k-path store: about 70,000 holdings of 6,000
// paths, whose validity is one batched query.
func BenchmarkBusy300k(b *testing.B) {
	lay := storetest.Graph300k(b)
	s := storetest.OpenRO(b, lay)
	g, err := s.LoadGraph(context.Background(), db.GraphOptions{})
	if err != nil {
		b.Fatal(err)
	}
	real := func(k int) string {
		return lay.RealStoreDir + strings.TrimPrefix(g.Path(graph.PathID(k%g.Len())), lay.StoreDir)
	}
	proc := b.TempDir()
	for pid := 1; pid <= 2000; pid++ {
		k := pid * 3
		p := fakeProc{cmdline: fmt.Sprintf("prog\x00%d\x00", pid), links: map[string]string{"exe": real(k) + "/bin/prog", "cwd": real(k + 1)}, fds: map[string]string{}}
		for fd := 0; fd < 5; fd++ {
			p.fds[fmt.Sprint(fd+3)] = real(k+2) + fmt.Sprintf("/share/f%d", fd)
		}
		var maps strings.Builder
		for m := 0; m < 30; m++ {
			fmt.Fprintf(&maps, "7f%08x000-7f%08x000 r-xp 00000000 08:01 %d  %s/lib/lib%d.so\n", m, m+1, m, real(k+m%3), m)
			fmt.Fprintf(&maps, "7e%08x000-7e%08x000 r-xp 00000000 08:01 %d  /usr/lib/lib%d.so\n", m, m+1, m, m)
		}
		p.maps = maps.String()
		p.environ = "HOME=/root\x00PATH=" + real(k) + "/bin:" + real(k+1) + "/bin:/usr/bin\x00A=" + real(k+2) + "\x00B=" + real(k+3) + "\x00C=" + real(k+4) + "\x00"
		writeFakeProc(b, proc, pid, p)
	}
	ctx := context.Background()
	b.Run("Busy", func(b *testing.B) {
		n := 0
		for i := 0; i < b.N; i++ {
			r, err := roots.Busy(ctx, s, roots.BusyOptions{ProcDir: proc})
			if err != nil {
				b.Fatal(err)
			}
			n = len(r.Paths)
		}
		b.ReportMetric(float64(n), "paths")
	})
	b.Run("FindRuntime", func(b *testing.B) {
		n := 0
		for i := 0; i < b.N; i++ {
			r, err := roots.Find(ctx, s, roots.Options{NoTemp: true, ProcDir: proc})
			if err != nil {
				b.Fatal(err)
			}
			n = len(r.Roots)
		}
		b.ReportMetric(float64(n), "roots")
	})
}
