package gc

import "testing"

// TestBatchSizes: batches start at the maximum and shrink geometrically
// to minTailBatch towards the end (the last batch's renames keep the
// lock), every path is taken, and a smaller maximum is respected.
func TestBatchSizes(t *testing.T) {
	for _, c := range []struct{ limit, total int }{{defaultBatchSize, 288422}, {defaultBatchSize, 500}, {4, 37}, {4096, 100000}} {
		col := &collector{o: Options{BatchSize: c.limit}}
		var sizes []int
		for rem := c.total; rem > 0; {
			n := min(rem, col.batchSize(rem, false))
			if n <= 0 || n > c.limit {
				t.Fatalf("limit %d: batch of %d", c.limit, n)
			}
			sizes = append(sizes, n)
			rem -= n
		}
		if c.total >= 4*c.limit && sizes[0] != c.limit {
			t.Errorf("limit %d, %d paths: first batch %d", c.limit, c.total, sizes[0])
		}
		for i := 1; i < len(sizes); i++ {
			if sizes[i] > sizes[i-1] {
				t.Errorf("limit %d: batches grow: %v", c.limit, sizes)
				break
			}
		}
		if last := sizes[len(sizes)-1]; len(sizes) > 1 && last > max(minTailBatch, c.limit/4) {
			t.Errorf("limit %d: last batch %d: %v", c.limit, last, sizes)
		}
	}
}
