package lock

import (
	"os"
	"path/filepath"
	"testing"
)

// TestStatusHostileEntries: a temp-roots entry that is a symlink (to a
// file another process holds a lock on) is reported as not a regular
// file, never followed (it would otherwise show that file's holder); a
// path-lock file whose name holds a newline is listed under its own name.
func TestStatusHostileEntries(t *testing.T) {
	state, store := t.TempDir(), t.TempDir()
	secret := filepath.Join(t.TempDir(), "secret")
	touch(t, secret)
	if err := os.MkdirAll(filepath.Join(state, "temproots"), 0o755); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(state, "temproots", "4242")
	if err := os.Symlink(secret, link); err != nil {
		t.Fatal(err)
	}
	odd := filepath.Join(store, "x\nforged line.lock")
	touch(t, odd)
	proc := fakeProc(t, "1: FLOCK  ADVISORY  WRITE 7 "+devIno(t, secret)+" 0 EOF\n", map[int]string{7: "holder"})
	r, err := Status(state, store, StatusOptions{ProcDir: proc})
	if err != nil {
		t.Fatal(err)
	}
	if len(r.TempRoots) != 1 {
		t.Fatalf("temp roots %+v", r.TempRoots)
	}
	tr := r.TempRoots[0]
	if tr.Error != "not a regular file" || len(tr.Holders) != 0 {
		t.Errorf("a symlinked temp-roots entry was followed or not flagged: %+v", tr)
	}
	if len(r.PathLocks) != 1 || r.PathLocks[0].Path != odd || !r.PathLocks[0].Stale {
		t.Errorf("path locks %+v", r.PathLocks)
	}
}
