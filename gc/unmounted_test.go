package gc_test

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"storekeeper/gc"
	"storekeeper/store"
	"storekeeper/store/storetest"
)

// TestGCRefusesEmptyStoreDir: valid paths registered and none of them in
// the store directory (its file system did not mount) is no garbage: a
// deleting collection refuses and deletes nothing (not the unregistered
// entries either); queries still run; a store missing only some paths is
// collected as before.
func TestGCRefusesEmptyStoreDir(t *testing.T) {
	b := storetest.MustBuild(t, storetest.DefaultSpec())
	for _, p := range b.Valid {
		real := b.Layout.RealPath(p)
		exec.Command("chmod", "-R", "u+w", real).Run()
		if err := os.RemoveAll(real); err != nil {
			t.Fatal(err)
		}
	}
	s := storetest.Open(t, b.Layout)
	before := loadModel(t, b.Layout.DBPath())
	_, err := gc.Collect(context.Background(), s, gc.Options{Action: gc.Delete, ProcDir: t.TempDir()}, nil)
	if !errors.Is(err, store.ErrStoreLooksUnmounted) || !strings.Contains(err.Error(), "Nothing was deleted") ||
		!strings.Contains(err.Error(), "--allow-mass-drop") || !strings.Contains(err.Error(), b.Layout.RealStoreDir) {
		t.Fatalf("gc on an empty store dir: %v", err)
	}
	if after := loadModel(t, b.Layout.DBPath()); len(after.valid) != len(before.valid) {
		t.Errorf("%d valid paths before, %d after", len(before.valid), len(after.valid))
	}
	for _, l := range b.Leftovers {
		if _, err := os.Lstat(filepath.Join(b.Layout.RealStoreDir, l)); err != nil {
			t.Errorf("leftover %s: %v", l, err)
		}
	}
	collect(t, s, gc.Options{Action: gc.PrintDead})

	b2 := storetest.MustBuild(t, storetest.DefaultSpec())
	for _, p := range b2.Valid[:len(b2.Valid)/2] {
		real := b2.Layout.RealPath(p)
		exec.Command("chmod", "-R", "u+w", real).Run()
		os.RemoveAll(real)
	}
	collect(t, storetest.Open(t, b2.Layout), gc.Options{Action: gc.Delete})
}
