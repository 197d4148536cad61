package tests

// Hardening of `gc -d` / `--delete-older-than` against a hostile owner of
// a per-user profile directory, with a real unprivileged user in a store
// built by real Nix: root never follows the user's symlinked
// "<profile>.lock", never writes into or creates a file through it, never
// spins on it, and a --delete-older-than that does not fit is rejected.

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

const profUser = "skprofuser"

// userProfileStore copies a store built by real Nix and gives
// profiles/per-user/<profUser> to that real user, with a profile of four
// generations (the first three two hours old or more, the current one
// new), all owned by the user. It returns the store root, the user's
// profile path (on the host) and the uid and gid.
func userProfileStore(t *testing.T, ns *nixStore) (root, prof string, uid, gid int) {
	t.Helper()
	uid, gid = realUser(t, profUser)
	root = copyStore(t, ns.Root)
	dir := filepath.Join(root, "nix/var/nix/profiles/per-user", profUser)
	mustMkdir(t, dir)
	if err := os.Chown(dir, uid, gid); err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	for g := 1; g <= 4; g++ {
		link := filepath.Join(dir, fmt.Sprintf("profile-%d-link", g))
		mustSymlink(t, ns.Outputs[g]["out"], link)
		age := time.Duration(5-g) * time.Hour
		if g == 4 {
			age = 0
		}
		ts := unix.NsecToTimespec(now.Add(-age).UnixNano())
		if err := unix.UtimesNanoAt(unix.AT_FDCWD, link, []unix.Timespec{ts, ts}, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			t.Fatal(err)
		}
	}
	prof = filepath.Join(dir, "profile")
	mustSymlink(t, "profile-4-link", prof)
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		if err := os.Lchown(filepath.Join(dir, e.Name()), uid, gid); err != nil {
			t.Fatal(err)
		}
	}
	// Root's own profile (from buildNixStore): generations two hours old.
	rootDir := filepath.Join(root, "nix/var/nix/profiles/per-user/root")
	old := unix.NsecToTimespec(now.Add(-2 * time.Hour).UnixNano())
	ents, _ = os.ReadDir(rootDir)
	for _, e := range ents {
		unix.UtimesNanoAt(unix.AT_FDCWD, filepath.Join(rootDir, e.Name()), []unix.Timespec{old, old}, unix.AT_SYMLINK_NOFOLLOW)
	}
	return root, prof, uid, gid
}

// gensLeft lists the generation links of profile p left on disk.
func gensLeft(t *testing.T, p string) []int {
	t.Helper()
	var out []int
	for g := 1; g <= 10; g++ {
		if _, err := os.Lstat(fmt.Sprintf("%s-%d-link", p, g)); err == nil {
			out = append(out, g)
		}
	}
	return out
}

// runGCBounded runs storekeeper with args in root's namespace. If it has
// not exited within limit it gets SIGTERM; if it is still running 5s
// later it is killed. It returns the result and what it took to end it.
func runGCBounded(t *testing.T, root string, limit time.Duration, args ...string) (r result, ended string) {
	t.Helper()
	cmd := nsScript(root, `exec "$@"`, append([]string{binary}, args...)...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	ended = "itself"
	var err error
	select {
	case err = <-done:
	case <-time.After(limit):
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case err = <-done:
			ended = "SIGTERM"
		case <-time.After(5 * time.Second):
			cmd.Process.Kill()
			err = <-done
			ended = "SIGKILL"
		}
	}
	code := 0
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return result{out.String(), errb.String(), code}, ended
}

// statSame is the part of a file's stat that must not change.
func statSame(t *testing.T, p string) string {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Lstat(p, &st); err != nil {
		return "missing: " + err.Error()
	}
	b, _ := os.ReadFile(p)
	return fmt.Sprintf("mode %o uid %d gid %d size %d mtime %d.%09d content %q", st.Mode, st.Uid, st.Gid, st.Size, st.Mtim.Sec, st.Mtim.Nsec, b)
}

// rootTarget makes a root-owned file under /etc (content nil: no file),
// removed when the test ends.
func rootTarget(t *testing.T, tag string, content []byte) string {
	t.Helper()
	p := fmt.Sprintf("/etc/storekeeper-%s-%d", tag, time.Now().UnixNano())
	t.Cleanup(func() { os.Remove(p) })
	if content == nil {
		return p
	}
	if err := os.WriteFile(p, content, 0o644); err != nil {
		t.Fatal(err)
	}
	old := time.Now().Add(-48 * time.Hour)
	if err := os.Chtimes(p, old, old); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestHardeningProfileLockSymlink: USER's "<profile>.lock" is a symlink
// (or a non-empty file): root's `gc -d` neither creates nor writes the
// target, ends promptly by itself with a warning naming the lock file,
// skips only that profile, and still collects root's own generations.
func TestHardeningProfileLockSymlink(t *testing.T) {
	ns := buildNixStore(t, nixSpec{Paths: 12, Seed: 31, Roots: 2, Gens: 3})
	for _, c := range []struct {
		name   string
		target func(t *testing.T) string // "" : a regular non-empty lock file of the user's
	}{
		{"to-missing-root-file", func(t *testing.T) string { return rootTarget(t, "pwned", nil) }},
		{"to-empty-root-file", func(t *testing.T) string { return rootTarget(t, "empty", []byte{}) }},
		{"to-non-empty-root-file", func(t *testing.T) string { return rootTarget(t, "full", []byte("precious\n")) }},
		{"non-empty-user-file", func(t *testing.T) string { return "" }},
	} {
		t.Run(c.name, func(t *testing.T) {
			root, prof, uid, gid := userProfileStore(t, ns)
			target := c.target(t)
			lockPath := prof + ".lock"
			if target != "" {
				mustSymlink(t, target, lockPath)
			} else {
				if err := os.WriteFile(lockPath, []byte("not a lock\n"), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			if err := os.Lchown(lockPath, uid, gid); err != nil {
				t.Fatal(err)
			}
			watched := lockPath
			if target != "" {
				watched = target
			}
			before := statSame(t, watched)
			start := time.Now()
			r, ended := runGCBounded(t, root, 20*time.Second, "gc", "-d")
			took := time.Since(start)
			t.Logf("gc -d: exit %d after %v; stderr:\n%s", r.code, took, r.stderr)
			if ended != "itself" {
				t.Fatalf("gc -d did not end by itself within 20s (spinning on %s); ended by %s after %v; stderr: %s", lockPath, ended, took, tail(r.stderr, 2000))
			}
			if after := statSame(t, watched); after != before {
				t.Errorf("%s changed: %s; was %s", watched, after, before)
			}
			if r.code != 0 {
				t.Errorf("gc -d: exit %d, want 0 (the profile is skipped with a warning): %s", r.code, r.stderr)
			}
			if !strings.Contains(r.stderr, "/nix/var/nix/profiles/per-user/"+profUser+"/profile.lock") || !strings.Contains(r.stderr, "skipping") {
				t.Errorf("no warning naming the lock file: %s", r.stderr)
			}
			if got := gensLeft(t, prof); fmt.Sprint(got) != "[1 2 3 4]" {
				t.Errorf("user's generations %v left, want all (the profile is skipped)", got)
			}
			if got := gensLeft(t, filepath.Join(root, "nix/var/nix/profiles/per-user/root/profile")); fmt.Sprint(got) != "[3]" {
				t.Errorf("root's generations %v left, want [3]", got)
			}
		})
	}
}

// TestHardeningProfileLockedByUser: the user's normal profile is collected
// without root creating a file in the user's directory (the lock file is
// created as the user, and left there), and while the user holds the profile's lock
// root waits, and SIGTERM ends the wait promptly with exit 130 and no
// generation removed.
func TestHardeningProfileLockedByUser(t *testing.T) {
	ns := buildNixStore(t, nixSpec{Paths: 12, Seed: 32, Roots: 2, Gens: 3})
	t.Run("normal", func(t *testing.T) {
		root, prof, uid, _ := userProfileStore(t, ns)
		r, ended := runGCBounded(t, root, 60*time.Second, "gc", "-d")
		if ended != "itself" || r.code != 0 {
			t.Fatalf("gc -d: exit %d, ended by %s: %s", r.code, ended, r.stderr)
		}
		if got := gensLeft(t, prof); fmt.Sprint(got) != "[4]" {
			t.Errorf("user's generations %v left, want [4]", got)
		}
		// The lock file was created as the user (and, in a directory that
		// is not root's, left in place empty for the next locker).
		var st unix.Stat_t
		if err := unix.Lstat(prof+".lock", &st); err != nil || int(st.Uid) != uid || st.Size != 0 || st.Mode&unix.S_IFMT != unix.S_IFREG {
			t.Errorf("%s.lock: %v, uid %d size %d mode %o; want an empty regular file of the user's", prof, err, st.Uid, st.Size, st.Mode)
		}
		ents, _ := os.ReadDir(filepath.Dir(prof))
		for _, e := range ents {
			var st unix.Stat_t
			unix.Lstat(filepath.Join(filepath.Dir(prof), e.Name()), &st)
			if int(st.Uid) != uid {
				t.Errorf("%s in the user's directory belongs to uid %d, not the user", e.Name(), st.Uid)
			}
		}
	})
	t.Run("held", func(t *testing.T) {
		root, prof, uid, gid := userProfileStore(t, ns)
		// Let the user reach its directory through the test's temporary
		// directories (0700).
		for d := filepath.Dir(prof); strings.HasPrefix(d, os.TempDir()+"/"); d = filepath.Dir(d) {
			if fi, err := os.Stat(d); err == nil {
				os.Chmod(d, fi.Mode().Perm()|0o055)
			}
		}
		// The user holds the profile's lock, as nix-env does while it
		// switches generations.
		holder := exec.Command("setpriv", fmt.Sprintf("--reuid=%d", uid), fmt.Sprintf("--regid=%d", gid), "--clear-groups",
			"flock", prof+".lock", "sleep", "60")
		if err := holder.Start(); err != nil {
			t.Fatal(err)
		}
		defer func() { holder.Process.Kill(); holder.Wait() }()
		for i := 0; i < 100; i++ {
			if _, err := os.Stat(prof + ".lock"); err == nil {
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
		time.Sleep(200 * time.Millisecond)
		start := time.Now()
		r, ended := runGCBounded(t, root, 2*time.Second, "gc", "-d")
		if ended != "SIGTERM" || r.code != 130 {
			t.Fatalf("gc -d on a held profile lock: exit %d, ended by %s after %v (want SIGTERM to end the wait with 130): %s", r.code, ended, time.Since(start), r.stderr)
		}
		if time.Since(start) > 5*time.Second {
			t.Errorf("SIGTERM took %v to end the wait", time.Since(start)-2*time.Second)
		}
		if got := gensLeft(t, prof); fmt.Sprint(got) != "[1 2 3 4]" {
			t.Errorf("user's generations %v left while the user held the lock, want all", got)
		}
	})
}

// TestHardeningDeleteOlderThanOverflow: --delete-older-than with more days
// than a time.Duration holds (213504d wrapped around to about 25 minutes
// and removed every generation but the current one) is rejected with
// exit 2 naming the value, and nothing is removed.
func TestHardeningDeleteOlderThanOverflow(t *testing.T) {
	ns := buildNixStore(t, nixSpec{Paths: 12, Seed: 33, Roots: 2, Gens: 3})
	for _, age := range []string{"213504d", "106752d", "99999999999999999999d", "-1d"} {
		t.Run(age, func(t *testing.T) {
			root, prof, _, _ := userProfileStore(t, ns)
			rootProf := filepath.Join(root, "nix/var/nix/profiles/per-user/root/profile")
			entriesBefore := fmt.Sprint(entries(t, root))
			r, ended := runGCBounded(t, root, 60*time.Second, "gc", "--delete-older-than", age)
			if ended != "itself" {
				t.Fatalf("ended by %s", ended)
			}
			if r.code != 2 || !strings.Contains(r.stderr, age) {
				t.Errorf("--delete-older-than %s: exit %d, stderr %q; want 2 and an error naming %s", age, r.code, r.stderr, age)
			}
			if got := gensLeft(t, prof); fmt.Sprint(got) != "[1 2 3 4]" {
				t.Errorf("user's generations %v left, want all", got)
			}
			if got := gensLeft(t, rootProf); fmt.Sprint(got) != "[1 2 3]" {
				t.Errorf("root's generations %v left, want all", got)
			}
			if e := fmt.Sprint(entries(t, root)); e != entriesBefore {
				t.Errorf("store entries changed")
			}
		})
	}
	// Other values that do not fit or make no sense: exit 2, nothing
	// removed.
	for _, args := range [][]string{
		{"gc", "-d", "--keep-recent=-1h"},
		{"gc", "-d", "--keep-recent", "3000000h"},
		{"gc", "-d", "--max-freed", "99999999999999999999"},
		{"gc", "-d", "--max-freed", "17179869184G"},
		{"gc", "-d", "--ensure-free", "NaN%"},
	} {
		root, prof, _, _ := userProfileStore(t, ns)
		r := runInNS(t, root, args...)
		if r.code != 2 || !strings.Contains(r.stderr, args[len(args)-1][strings.Index(args[len(args)-1], "=")+1:]) {
			t.Errorf("%v: exit %d, stderr %q; want 2 and an error naming the value", args, r.code, r.stderr)
		}
		if got := gensLeft(t, prof); fmt.Sprint(got) != "[1 2 3 4]" {
			t.Errorf("%v: user's generations %v left, want all", args, got)
		}
	}
	// The largest value that fits is accepted (and removes nothing: no
	// generation is that old).
	root, prof, _, _ := userProfileStore(t, ns)
	if r := runInNS(t, root, "gc", "--delete-older-than", "106751d"); r.code != 0 {
		t.Fatalf("--delete-older-than 106751d: exit %d: %s", r.code, r.stderr)
	}
	if got := gensLeft(t, prof); fmt.Sprint(got) != "[1 2 3 4]" {
		t.Errorf("user's generations %v left, want all", got)
	}
}
