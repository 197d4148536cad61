package usage

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

func blocks(t *testing.T, p string) uint64 {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Lstat(p, &st); err != nil {
		t.Fatal(err)
	}
	return uint64(st.Blocks) * 512
}

func write(t *testing.T, p string, n int) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, make([]byte, n), 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestMeasureAndFreed: single-link files are freed with their entry; a
// file linked from two entries is freed only with both; a file with a
// .links entry is freed with its entries; one linked from outside never;
// symlinks are not followed.
func TestMeasureAndFreed(t *testing.T) {
	store := t.TempDir()
	links := filepath.Join(store, ".links")
	write(t, filepath.Join(store, "a", "own"), 10000)
	write(t, filepath.Join(store, "a", "shared"), 20000)
	if err := os.MkdirAll(filepath.Join(store, "b"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Link(filepath.Join(store, "a", "shared"), filepath.Join(store, "b", "shared")); err != nil {
		t.Fatal(err)
	}
	write(t, filepath.Join(store, "c"), 30000) // an entry that is a file, with a .links entry
	if err := os.Mkdir(links, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Link(filepath.Join(store, "c"), filepath.Join(links, "c")); err != nil {
		t.Fatal(err)
	}
	write(t, filepath.Join(store, "d", "f"), 40000) // linked from outside the store
	if err := os.Link(filepath.Join(store, "d", "f"), filepath.Join(t.TempDir(), "out")); err != nil {
		t.Fatal(err)
	}
	write(t, filepath.Join(store, "d", "g"), 40000)
	if err := os.Link(filepath.Join(store, "d", "g"), filepath.Join(store, "d", "g2")); err != nil { // two links inside d
		t.Fatal(err)
	}
	if err := os.Symlink(filepath.Join(store, "a"), filepath.Join(store, "e")); err != nil {
		t.Fatal(err)
	}
	own, shared, c, f, g := blocks(t, filepath.Join(store, "a", "own")), blocks(t, filepath.Join(store, "a", "shared")),
		blocks(t, filepath.Join(store, "c")), blocks(t, filepath.Join(store, "d", "f")), blocks(t, filepath.Join(store, "d", "g"))
	e := blocks(t, filepath.Join(store, "e"))

	names := []string{"a", "b", "c", "d", "e", "missing"}
	n := 0
	us, err := Measure(context.Background(), store, names, 3, func() { n++ })
	if err != nil {
		t.Fatal(err)
	}
	if n != len(names) {
		t.Errorf("progress called %d times, want %d", n, len(names))
	}
	if got := us[0].Bytes(); got != own+shared {
		t.Errorf("a: Bytes %d, want %d", got, own+shared)
	}
	if got := us[3].Bytes(); got != f+g {
		t.Errorf("d: Bytes %d, want %d (g counted once)", got, f+g)
	}
	if len(us[3].Multi) != 2 || us[3].Multi[0].Ino > us[3].Multi[1].Ino {
		t.Errorf("d: Multi %+v, want two inodes sorted", us[3].Multi)
	}
	if us[4].Bytes() != e || us[5].Bytes() != 0 {
		t.Errorf("symlink entry %d (want %d, not followed), missing entry %d", us[4].Bytes(), e, us[5].Bytes())
	}
	li, err := LinkInodes(links)
	if err != nil || len(li) != 1 {
		t.Fatalf("LinkInodes: %v %v", li, err)
	}
	for _, tc := range []struct {
		sel  []int
		want uint64
	}{
		{[]int{0}, own},             // shared stays with b
		{[]int{1}, 0},               // b alone frees nothing
		{[]int{0, 1}, own + shared}, // both: the shared file goes
		{[]int{2}, c},               // its other link is in .links
		{[]int{3}, g},               // f is linked from outside
		{[]int{0, 1, 2, 3}, own + shared + c + g},
	} {
		var sel []Usage
		for _, i := range tc.sel {
			sel = append(sel, us[i])
		}
		total, per := Freed(sel, li)
		var sum uint64
		for _, p := range per {
			sum += p
		}
		if total != tc.want || sum != total {
			t.Errorf("Freed(%v) = %d (shares add to %d), want %d", tc.sel, total, sum, tc.want)
		}
	}
	if m, err := LinkInodes(filepath.Join(store, "nolinks")); err != nil || len(m) != 0 {
		t.Errorf("missing .links: %v %v", m, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := Measure(ctx, store, names, 1, nil); err == nil {
		t.Error("Measure with a cancelled context: no error")
	}
}

// TestUnusedLinks: the .links entries with one link are counted, those
// still linked from the store are not; a missing .links holds nothing.
func TestUnusedLinks(t *testing.T) {
	store := t.TempDir()
	links := filepath.Join(store, ".links")
	write(t, filepath.Join(links, "unused"), 30000)
	write(t, filepath.Join(store, "p", "f"), 50000)
	if err := os.Link(filepath.Join(store, "p", "f"), filepath.Join(links, "used")); err != nil {
		t.Fatal(err)
	}
	got, err := UnusedLinks(context.Background(), links)
	if want := blocks(t, filepath.Join(links, "unused")); err != nil || got != want {
		t.Errorf("UnusedLinks = %d, %v; want %d", got, err, want)
	}
	if got, err := UnusedLinks(context.Background(), filepath.Join(store, "none")); err != nil || got != 0 {
		t.Errorf("missing .links: %d, %v", got, err)
	}
}
