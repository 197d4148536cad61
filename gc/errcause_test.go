package gc_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"storekeeper/gc"
	"storekeeper/lock"
	"storekeeper/nix/storepath"
	"storekeeper/store"
	"storekeeper/store/storetest"
)

// TestErrorsKeepTheirCause: the collector's refusals wrap both their
// sentinel and the error behind them, visible to errors.Is, with the
// message unchanged: a path given that is not a store path (why it is
// not), and roots it could not read (which temporary-roots file and why).
func TestErrorsKeepTheirCause(t *testing.T) {
	cases := []struct {
		name           string
		o              gc.Options
		prepare        func(t *testing.T, lay store.Layout)
		sentinel, want error
	}{
		{"delete outside", gc.Options{Action: gc.DeleteSpecific, Paths: []string{"/etc/passwd"}}, nil,
			gc.ErrNotInStore, storepath.ErrBadStorePath},
		{"temproots symlink", gc.Options{Action: gc.Delete}, func(t *testing.T, lay store.Layout) {
			if err := os.MkdirAll(lay.TempRootsDir(), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.Symlink("/dev/null", filepath.Join(lay.TempRootsDir(), "12345")); err != nil {
				t.Fatal(err)
			}
		}, gc.ErrRootsUnknown, lock.ErrNotRegular},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			b := storetest.MustBuild(t, storetest.Spec{Paths: 5, Seed: 3, MaxDeps: 2, Files: 1, FileSize: 16})
			if tc.prepare != nil {
				tc.prepare(t, b.Layout)
			}
			tc.o.ProcDir = t.TempDir()
			_, err := gc.Collect(context.Background(), storetest.Open(t, b.Layout), tc.o, nil)
			if err == nil {
				t.Fatal("no error")
			}
			t.Log(err)
			if !errors.Is(err, tc.sentinel) {
				t.Errorf("errors.Is(err, %v) is false", tc.sentinel)
			}
			if !errors.Is(err, tc.want) {
				t.Errorf("errors.Is(err, %v) is false: the cause is only in the text", tc.want)
			}
		})
	}
}
