package substitute

import (
	"context"
	"net/http"
	"strconv"
	"sync/atomic"
	"testing"
	"time"
)

// BenchmarkLookup measures narinfo look-ups (read, parse, check, verify
// the signature) per second, 16 at a time, in a 1000-path cache over
// file:// and over HTTP on loopback, and with 50 ms before each answer
// (a cache across the internet).
func BenchmarkLookup(b *testing.B) {
	f := newFixture(b)
	var es []*entry
	for i := range 1000 {
		es = append(es, f.add("p"+strconv.Itoa(i), "contents "+strconv.Itoa(i), "none", nil, nil, true))
	}
	for _, c := range []struct {
		name    string
		latency time.Duration
		http    bool
	}{{"file", 0, false}, {"http", 0, true}, {"http-50ms", 50 * time.Millisecond, true}} {
		b.Run(c.name, func(b *testing.B) {
			u := f.url()
			if c.http {
				var hook func(http.ResponseWriter, *http.Request, int) bool
				if c.latency > 0 {
					hook = func(http.ResponseWriter, *http.Request, int) bool {
						time.Sleep(c.latency)
						return false
					}
				}
				u = newServer(b, f.dir, hook).URL
			}
			s, err := New(u, testOptions())
			if err != nil {
				b.Fatal(err)
			}
			defer Close([]Source{s})
			if err := s.Init(context.Background()); err != nil {
				b.Fatal(err)
			}
			var i atomic.Int64
			b.SetParallelism(16)
			b.ResetTimer()
			start := time.Now()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					e := es[int(i.Add(1))%len(es)]
					if _, err := s.Lookup(context.Background(), e.want); err != nil {
						b.Error(err)
						return
					}
				}
			})
			b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "lookups/s")
		})
	}
}
