package lock

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

// TestUnlockDeletesOwnLockFilesInStickyDir: in a directory of ours that
// others may write but with the sticky bit (Nix's /nix/store, 1775
// root:nixbld), lock files we own are deleted on Unlock(true) as Nix
// does (nobody else may unlink or rename over them there), and one owned
// by another user is left as it is.
func TestUnlockDeletesOwnLockFilesInStickyDir(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root (a lock file of another user)")
	}
	dir := t.TempDir()
	if err := unix.Chmod(dir, 0o1775); err != nil {
		t.Fatal(err)
	}
	own, foreign := filepath.Join(dir, "own"), filepath.Join(dir, "foreign")
	if err := os.WriteFile(foreign+".lock", nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(foreign+".lock", 65534, 65534); err != nil {
		t.Fatal(err)
	}
	pl, err := LockPaths(context.Background(), []string{own, foreign}, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := pl.Unlock(true); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(own + ".lock"); !os.IsNotExist(err) {
		t.Errorf("our lock file in a sticky directory of ours was not deleted (%v)", err)
	}
	st, err := os.Lstat(foreign + ".lock")
	if err != nil || st.Size() != 0 {
		t.Errorf("another user's lock file was deleted or written: %v, %v", st, err)
	}

	// Not sticky, group-writable: nothing deleted (whoever else may write
	// the directory could have swapped the name).
	if err := unix.Chmod(dir, 0o775); err != nil {
		t.Fatal(err)
	}
	pl, err = LockPaths(context.Background(), []string{own}, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := pl.Unlock(true); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(own + ".lock"); err != nil {
		t.Errorf("a lock file in a group-writable directory without the sticky bit was deleted (%v)", err)
	}
}
