package optimise

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"storekeeper/nix/nixconf"
	"storekeeper/store"
	"storekeeper/store/storetest"
)

// benchTemplate returns a store root to copy for benchmarks: the one in
// $STOREKEEPER_OPTIMISE_BENCH_STORE (e.g. a mkstore.py store: ROOT/nix),
// or a 3000-path storetest store built once in the temp dir.
func benchTemplate(b *testing.B) string {
	if r := os.Getenv("STOREKEEPER_OPTIMISE_BENCH_STORE"); r != "" {
		return r
	}
	root := filepath.Join(os.TempDir(), "storekeeper-bench-optimise-3000")
	if _, err := os.Stat(filepath.Join(root, "done")); err == nil {
		return root
	}
	os.RemoveAll(root)
	sp := storetest.DefaultSpec()
	sp.Paths, sp.Files, sp.Dup, sp.Seed = 3000, 6, 0.4, 9
	if _, err := storetest.Build(root, sp); err != nil {
		b.Fatal(err)
	}
	os.WriteFile(filepath.Join(root, "done"), nil, 0o644)
	return root
}

func benchOpen(b *testing.B, root string) *store.Store {
	lay, err := store.ResolveLayout(store.LayoutOptions{StoreURI: "local?root=" + root})
	if err != nil {
		b.Fatal(err)
	}
	s, err := store.Open(context.Background(), store.Options{Layout: lay, Settings: nixconf.Default(true)})
	if err != nil {
		b.Fatal(err)
	}
	return s
}

func benchClone(b *testing.B, src string) string {
	dst := filepath.Join(b.TempDir(), "root")
	if out, err := exec.Command("cp", "-a", src, dst).CombinedOutput(); err != nil {
		b.Fatalf("cp -a: %v: %s", err, out)
	}
	return dst
}

// BenchmarkOptimiseFirstRun optimises a fresh copy of the template (the
// copy is not timed; it is usually still in the page cache, as in
// compare.py).
func BenchmarkOptimiseFirstRun(b *testing.B) {
	tmpl := benchTemplate(b)
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		root := benchClone(b, tmpl)
		s := benchOpen(b, root)
		b.StartTimer()
		res, err := Optimise(context.Background(), s, Options{}, nil)
		if err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		b.ReportMetric(float64(res.FilesLinked), "linked")
		b.ReportMetric(float64(res.BytesHashed)/(1<<20), "MiB-hashed")
		s.Close()
		os.RemoveAll(root)
		b.StartTimer()
	}
}

// BenchmarkOptimiseSecondRun runs over an already optimised store: a copy
// of the template, or $STOREKEEPER_OPTIMISE_BENCH_INPLACE itself (which it
// optimises in place).
func BenchmarkOptimiseSecondRun(b *testing.B) {
	root := os.Getenv("STOREKEEPER_OPTIMISE_BENCH_INPLACE")
	if root == "" {
		root = benchClone(b, benchTemplate(b))
	}
	s := benchOpen(b, root)
	defer s.Close()
	if _, err := Optimise(context.Background(), s, Options{}, nil); err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		res, err := Optimise(context.Background(), s, Options{}, nil)
		if err != nil {
			b.Fatal(err)
		}
		if res.FilesHashed != 0 {
			b.Fatalf("second run hashed %d files", res.FilesHashed)
		}
	}
}
