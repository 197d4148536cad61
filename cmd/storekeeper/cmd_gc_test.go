package main

import (
	"fmt"
	"testing"

	"storekeeper/store/fs"
)

// TestEnsureFreeBytes checks how --ensure-free SIZE|PCT% becomes the
// number of bytes the collection must free (its --max-freed).
func TestEnsureFreeBytes(t *testing.T) {
	dir := t.TempDir()
	avail, total, err := fs.FreeSpace(dir)
	if err != nil {
		t.Fatal(err)
	}
	near := func(got, want uint64) bool {
		d := int64(got) - int64(want)
		return d > -64<<20 && d < 64<<20 // other processes write meanwhile
	}
	for _, c := range []struct {
		spec string
		want uint64
	}{
		{"0", 0}, {"0%", 0}, {"1K", 0},
		{fmt.Sprint(avail / 2), 0},
		{fmt.Sprint(avail + 1<<30), 1 << 30},
		{fmt.Sprintf("%dG", (avail+(3<<30))>>30), ((avail+(3<<30))>>30)<<30 - avail},
		{"100%", total - avail},
	} {
		got, err := ensureFreeBytes(dir, c.spec)
		if err != nil || !near(got, c.want) || (c.want == 0) != (got == 0) {
			t.Errorf("--ensure-free %s: %d, %v; want about %d (avail %d of %d)", c.spec, got, err, c.want, avail, total)
		}
	}
	for _, bad := range []string{"", "150%", "-1%", "x%", "abc", "12Q"} {
		if _, err := ensureFreeBytes(dir, bad); err == nil {
			t.Errorf("--ensure-free %q accepted", bad)
		}
	}
}
