package main

import (
	"os"
	"path/filepath"
	"testing"
)

// TestCompareAtUnsafeSameBytes: a unit file holding exactly storekeeper's
// bytes but writable by group or others, or owned by another user, is
// not "unchanged": whoever can write it can make root run anything at
// the next start, so install must report it (and replace it with
// --force) rather than leave it as it is.
func TestCompareAtUnsafeSameBytes(t *testing.T) {
	dir := t.TempDir()
	want := []byte("[Unit]\n")
	d, err := os.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	for _, tc := range []struct {
		name    string
		mode    os.FileMode
		uid     int
		same    bool
		wantWhy bool
	}{
		{"ok.service", 0o644, -1, true, false},
		{"private.service", 0o600, -1, true, false},
		{"group.service", 0o664, -1, false, true},
		{"world.service", 0o666, -1, false, true},
		{"other.service", 0o644, 4242, false, true},
	} {
		p := filepath.Join(dir, tc.name)
		if err := os.WriteFile(p, want, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, tc.mode); err != nil {
			t.Fatal(err)
		}
		if tc.uid >= 0 {
			if os.Geteuid() != 0 {
				continue
			}
			if err := os.Chown(p, tc.uid, tc.uid); err != nil {
				t.Fatal(err)
			}
		}
		same, reason, err := compareAt(d, tc.name, want)
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		if same != tc.same || (reason != "") != tc.wantWhy {
			t.Errorf("%s (mode %v, uid %d): same=%v reason=%q, want same=%v and a reason: %v", tc.name, tc.mode, tc.uid, same, reason, tc.same, tc.wantWhy)
		}
	}
}
