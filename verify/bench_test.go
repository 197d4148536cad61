package verify

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"storekeeper/nix/nixconf"
	"storekeeper/store"
	"storekeeper/store/storetest"
)

// benchStore returns the root of the store to benchmark: the one named by
// STOREKEEPER_BENCH_STORE (a root made by mkstore.py, e.g. the 30000-path
// store), or a 3000-path storetest store built once in the temp dir.
func benchStore(b *testing.B) store.Layout {
	b.Helper()
	root := os.Getenv("STOREKEEPER_BENCH_STORE")
	if root == "" {
		root = filepath.Join(os.TempDir(), "storekeeper-bench-verify-3000")
		if _, err := os.Stat(filepath.Join(root, "nix/var/nix/db/db.sqlite")); err != nil {
			os.RemoveAll(root)
			spec := storetest.Spec{Paths: 3000, Seed: 7, MaxDeps: 5, Files: 4, FileSize: 4096, Dup: 0.2, Roots: 4, Generations: 2, Multi: 0.1}
			if _, err := storetest.Build(root, spec); err != nil {
				b.Fatal(err)
			}
		}
	}
	lay, err := store.ResolveLayout(store.LayoutOptions{StoreURI: root})
	if err != nil {
		b.Fatal(err)
	}
	return lay
}

func benchVerify(b *testing.B, o Options) {
	lay := benchStore(b)
	s, err := store.Open(context.Background(), store.Options{Layout: lay, Settings: nixconf.Default(true), ReadOnly: true})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	b.ResetTimer()
	var bytes int64
	for i := 0; i < b.N; i++ {
		if o.StateDir != "" {
			os.RemoveAll(o.StateDir)
		}
		res, err := Verify(context.Background(), s, o, nil)
		if err != nil {
			b.Fatal(err)
		}
		bytes = res.Summary.Bytes
	}
	b.SetBytes(bytes)
}

// BenchmarkVerifyContents: --check-contents with manifests already
// recorded (the steady state of a cron audit).
func BenchmarkVerifyContents(b *testing.B) {
	benchVerify(b, Options{CheckContents: true, StateDir: "", NoRecord: true})
}

// BenchmarkVerifyFirstRun: --check-contents recording every manifest
// (BLAKE3 of every file): the cost of the first run.
func BenchmarkVerifyFirstRun(b *testing.B) {
	benchVerify(b, Options{CheckContents: true, StateDir: filepath.Join(b.TempDir(), "state")})
}

// BenchmarkVerifyMetadata: --metadata alone (a stat walk).
func BenchmarkVerifyMetadata(b *testing.B) {
	benchVerify(b, Options{Metadata: true})
}

// BenchmarkVerifyExistence: the default audit (DB against the disk, no
// contents).
func BenchmarkVerifyExistence(b *testing.B) {
	benchVerify(b, Options{})
}
