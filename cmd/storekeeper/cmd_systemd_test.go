package main

import (
	"os"
	"path/filepath"
	"strings"
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

// mkdirOwned creates the directory p with mode (whatever the umask) and
// owner and group uid.
func mkdirOwned(t testing.TB, p string, mode os.FileMode, uid int) string {
	t.Helper()
	if err := os.Mkdir(p, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(p, mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(p, uid, uid); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestMetricsDirProblem: install warns about a metrics directory where
// the units, which run as root, could not write (metrics.WriteFile wants
// a directory owned by its writer and writable by it alone), as it does
// about one that is missing: each run would fail.
func TestMetricsDirProblem(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: the directories are given to root and another user")
	}
	base := t.TempDir()
	mk := func(name string, mode os.FileMode, uid int) string {
		return mkdirOwned(t, filepath.Join(base, name), mode, uid)
	}
	file := filepath.Join(base, "file")
	if err := os.WriteFile(file, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		dir  string
		want string // "" for none
	}{
		{mk("root", 0o755, 0), ""},
		{mk("rootprivate", 0o700, 0), ""},
		{mk("other", 0o755, 4242), "uid 4242"},
		{mk("groupw", 0o775, 0), "writable by group or others"},
		{mk("sticky", 0o777|os.ModeSticky, 0), "writable by group or others"},
		{filepath.Join(base, "missing"), "no such file"},
		{file, "not a directory"},
	} {
		got := metricsDirProblem(tc.dir)
		if (got == "") != (tc.want == "") || !strings.Contains(got, tc.want) {
			t.Errorf("%s: %q, want %q", tc.dir, got, tc.want)
		}
	}
}

// TestBinaryProblem: the units run their binary as root, so install
// warns when a user other than root could replace it: the file itself,
// or a directory on its path (as given, and after its symlinks), owned by
// another user or writable by group or others (but a sticky directory of
// root's holding root's entry, as /nix/store). A profile of another user
// (per-user/USER) is such a path.
func TestBinaryProblem(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: the files are given to another user")
	}
	base := t.TempDir()
	if err := os.Chmod(base, 0o755); err != nil {
		t.Fatal(err)
	}
	bin := func(p string, uid int) string {
		t.Helper()
		if err := os.WriteFile(p, []byte("#!/bin/sh\n"), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Chown(p, uid, uid); err != nil {
			t.Fatal(err)
		}
		return p
	}
	good := bin(filepath.Join(mkdirOwned(t, filepath.Join(base, "rootbin"), 0o755, 0), "sk"), 0)
	alices := bin(filepath.Join(mkdirOwned(t, filepath.Join(base, "alicebin"), 0o755, 4242), "sk"), 0)
	ownedByAlice := bin(filepath.Join(base, "rootbin", "alice-sk"), 4242)
	groupw := bin(filepath.Join(mkdirOwned(t, filepath.Join(base, "groupw"), 0o775, 0), "sk"), 0)
	sticky := bin(filepath.Join(mkdirOwned(t, filepath.Join(base, "sticky"), 0o775|os.ModeSticky, 0), "sk"), 0)
	worldFile := bin(filepath.Join(base, "rootbin", "world-sk"), 0)
	if err := os.Chmod(worldFile, 0o777); err != nil {
		t.Fatal(err)
	}
	// A link in alice's directory to root's binary: alice can repoint it.
	linkDir := mkdirOwned(t, filepath.Join(base, "alicelinks"), 0o755, 4242)
	link := filepath.Join(linkDir, "sk")
	if err := os.Symlink(good, link); err != nil {
		t.Fatal(err)
	}
	// A link in root's directory to a binary in alice's: alice can
	// replace the target.
	rootLink := filepath.Join(base, "rootbin", "to-alice")
	if err := os.Symlink(alices, rootLink); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ bin, want string }{
		{good, ""},
		{sticky, ""},
		{alices, "uid 4242"},
		{ownedByAlice, "uid 4242"},
		{groupw, "writable by group or others"},
		{worldFile, "writable by group or others"},
		{link, "uid 4242"},
		{rootLink, "uid 4242"},
	} {
		got := binaryProblem(tc.bin)
		if (got == "") != (tc.want == "") || !strings.Contains(got, tc.want) {
			t.Errorf("%s: %q, want %q", tc.bin, got, tc.want)
		}
	}
}
