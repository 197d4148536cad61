package tests

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// inTmpfsStore runs storekeeper with an empty tmpfs mounted over
// /nix/store inside ROOT's namespace: the store's file system "failed to
// mount" for that one command.
func inTmpfsStore(t *testing.T, root string, args ...string) result {
	t.Helper()
	return runCmd(t, nsScript(root, `mount -t tmpfs none /nix/store || exit 96
exec "$@"`, append([]string{binary}, args...)...), args)
}

func countValid(dump string) int { return strings.Count(dump, "\n") }

// TestHardeningVerifyUnmountedStore: on a store dir that is an empty
// tmpfs (the store's file system did not mount), verify --repair and gc
// change nothing, exit 2 and say what looks wrong and how to override;
// --allow-mass-drop then drops the rows as asked.
func TestHardeningVerifyUnmountedStore(t *testing.T) {
	ns := buildNixStore(t, nixSpec{Paths: 30, Seed: 31})
	if r := runInNS(t, ns.Root, "verify"); r.code != 0 {
		t.Fatalf("clean store: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	before := runNS(t, ns.Root, nil, "nix-store", "--dump-db")
	n := len(strings.Fields(runNS(t, ns.Root, nil, "sh", "-c", "nix-store --query --requisites "+strings.Join(ns.Drvs, " ")+" | sort -u")))
	if n < 30 {
		t.Fatalf("only %d valid paths", n)
	}

	r := inTmpfsStore(t, ns.Root, "verify", "--repair")
	if r.code != 2 {
		t.Fatalf("verify --repair on an empty store dir: exit %d, want 2\n%s%s", r.code, r.stdout, r.stderr)
	}
	for _, want := range []string{"/nix/store", "of the", "valid paths", "It is empty", "tmpfs", "--allow-mass-drop", "Nothing was changed"} {
		if !strings.Contains(r.stderr, want) {
			t.Errorf("the message lacks %q:\n%s", want, r.stderr)
		}
	}
	if after := runNS(t, ns.Root, nil, "nix-store", "--dump-db"); after != before {
		t.Fatalf("verify --repair changed the database: %d rows before, %d after", countValid(before), countValid(after))
	}

	r = inTmpfsStore(t, ns.Root, "gc")
	if r.code != 2 || !strings.Contains(r.stderr, "Nothing was deleted") || !strings.Contains(r.stderr, "--allow-mass-drop") {
		t.Errorf("gc on an empty store dir: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	if after := runNS(t, ns.Root, nil, "nix-store", "--dump-db"); after != before {
		t.Fatal("gc changed the database")
	}
	// The store itself, below the tmpfs, is untouched.
	if r := runInNS(t, ns.Root, "verify", "--check-contents"); r.code != 0 {
		t.Fatalf("after the refusals: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}

	// The override: the admin says the paths are really gone.
	r = inTmpfsStore(t, ns.Root, "verify", "--repair", "--allow-mass-drop")
	if r.code != 0 || !strings.Contains(r.stdout, "disappeared, removing from database") {
		t.Fatalf("--allow-mass-drop: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	if after := runNS(t, ns.Root, nil, "nix-store", "--dump-db"); strings.TrimSpace(after) != "" {
		t.Errorf("rows left after --allow-mass-drop:\n%s", tail(after, 2000))
	}
}

// TestHardeningVerifyMountGone: a store dir recorded as the mount point
// of its own file system (here a tmpfs holding a copy of the store) with
// nothing mounted on it any more, so that the directory beneath, a stale
// copy missing a path, shows through: --repair refuses; with the mount
// back it drops the missing path's row (no false alarm on the store it
// recorded, although a new tmpfs has a new device number).
func TestHardeningVerifyMountGone(t *testing.T) {
	ns := buildNixStore(t, nixSpec{Paths: 20, Seed: 32})
	lone, _ := damageable(t, ns)
	bound := func(args ...string) result {
		return runCmd(t, nsScript(ns.Root, `mount -t tmpfs none /nix/store || exit 96
cp -a "$STORE/." /nix/store/ || exit 97
exec "$@"`, append([]string{binary}, args...)...), args)
	}
	t.Setenv("STORE", filepath.Join(ns.Root, "nix/store"))
	if r := bound("verify"); r.code != 0 {
		t.Fatalf("clean store: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	gone := lone[0]
	chmodWalk(filepath.Join(ns.Root, gone), "u+w")
	os.RemoveAll(filepath.Join(ns.Root, gone))
	before := runNS(t, ns.Root, nil, "nix-store", "--dump-db")

	r := runInNS(t, ns.Root, "verify", "--repair")
	if r.code != 2 || !strings.Contains(r.stderr, "mount point") || !strings.Contains(r.stderr, "--allow-mass-drop") {
		t.Fatalf("verify --repair with the mount gone: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	if runNS(t, ns.Root, nil, "nix-store", "--dump-db") != before {
		t.Fatal("the database changed")
	}

	r = bound("verify", "--repair")
	if r.code != 0 || !strings.Contains(r.stdout, fmt.Sprintf("path '%s' disappeared, removing from database", gone)) {
		t.Fatalf("verify --repair with the mount back: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	if out := runNS(t, ns.Root, nil, "sh", "-c", "nix-store --check-validity --print-invalid "+gone); strings.TrimSpace(out) != gone {
		t.Errorf("%s is still valid: %q", gone, out)
	}
}

// TestHardeningVerifyBogusLinks: .links entries that are a directory tree
// and a symlink to a directory outside the store are removed by verify
// --check-contents --repair (without following the symlink); the next run
// is clean and nix-store --verify --check-contents accepts the store.
func TestHardeningVerifyBogusLinks(t *testing.T) {
	ns := buildNixStore(t, nixSpec{Paths: 20, Seed: 33, Files: 4})
	runNS(t, ns.Root, nil, "nix-store", "--optimise")
	links := filepath.Join(ns.Root, "nix/store/.links")
	dir := filepath.Join(links, strings.Repeat("0", 52))
	mustMkdir(t, filepath.Join(dir, "sub"))
	writeFileMode(t, filepath.Join(dir, "a"), []byte("a"), 0o444)
	writeFileMode(t, filepath.Join(dir, "sub", "b"), []byte("b"), 0o444)
	os.Chmod(filepath.Join(dir, "sub"), 0o555)
	outside := filepath.Join(ns.Root, "outside")
	mustMkdir(t, outside)
	writeFileMode(t, filepath.Join(outside, "keep"), []byte("keep"), 0o644)
	lnk := filepath.Join(links, strings.Repeat("1", 52))
	mustSymlink(t, outside, lnk)

	r := runInNS(t, ns.Root, "verify", "--check-contents", "--repair")
	if r.code != 0 {
		t.Fatalf("repair: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	for _, p := range []string{dir, lnk} {
		if !strings.Contains(r.stdout, "removed link '/nix/store/.links/"+filepath.Base(p)+"'") {
			t.Errorf("not reported removed: %s\n%s", p, r.stdout)
		}
		if _, err := os.Lstat(p); !os.IsNotExist(err) {
			t.Errorf("%s is still there", p)
		}
	}
	if _, err := os.Stat(filepath.Join(outside, "keep")); err != nil {
		t.Errorf("the symlink was followed: %v", err)
	}
	if r := runInNS(t, ns.Root, "verify", "--check-contents"); r.code != 0 {
		t.Errorf("second run: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	runNS(t, ns.Root, nil, "nix-store", "--verify", "--check-contents")
}
