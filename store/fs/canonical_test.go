package fs

import (
	"errors"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// buildUser returns the uid and gid of a real unprivileged user made for
// these tests with useradd (no home, no shell), as a builder would be.
// It skips when not root or without useradd.
func buildUser(t *testing.T) (int, int) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to create files of another user")
	}
	const name = "sk-fs-builder"
	u, err := user.Lookup(name)
	if err != nil {
		out, aerr := exec.Command("useradd", "--system", "--no-create-home",
			"--shell", "/usr/sbin/nologin", "--user-group", name).CombinedOutput()
		if aerr != nil && !strings.Contains(string(out), "already exists") {
			t.Skipf("useradd %s: %v: %s", name, aerr, out)
		}
		if u, err = user.Lookup(name); err != nil {
			t.Fatalf("user %s after useradd: %v", name, err)
		}
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	return uid, gid
}

// asUser runs the shell script as uid/gid (setpriv), in dir.
func asUser(t *testing.T, uid, gid int, dir, script string) {
	t.Helper()
	cmd := exec.Command("setpriv", "--reuid="+strconv.Itoa(uid), "--regid="+strconv.Itoa(gid), "--clear-groups",
		"sh", "-euc", script)
	cmd.Dir = dir
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("as uid %d: %s: %v\n%s", uid, script, err, out)
	}
}

// openTempDir is t.TempDir() made searchable by the build user.
func openTempDir(t *testing.T) string {
	dir := t.TempDir()
	os.Chmod(filepath.Dir(dir), 0o755)
	os.Chmod(dir, 0o755)
	return dir
}

// snapshot is the lstat of every node under top (and of the extra
// paths), keyed by path: what "changes nothing" compares.
type nodeState struct {
	mode, uid, gid uint32
	mtime          unix.Timespec
	nlink          uint64
	xattrs         string
}

func snapshot(t *testing.T, top string, extra ...string) map[string]nodeState {
	t.Helper()
	out := map[string]nodeState{}
	add := func(p string) {
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 4096)
		n, _ := unix.Llistxattr(p, buf)
		out[p] = nodeState{st.Mode, st.Uid, st.Gid, st.Mtim, uint64(st.Nlink), string(buf[:max(n, 0)])}
	}
	filepath.Walk(top, func(p string, _ os.FileInfo, err error) error {
		if err == nil {
			add(p)
		}
		return nil
	})
	for _, p := range extra {
		add(p)
	}
	return out
}

func sameSnapshot(t *testing.T, before, after map[string]nodeState) {
	t.Helper()
	for p, b := range before {
		if a, ok := after[p]; !ok || a != b {
			t.Errorf("%s changed: %+v -> %+v", p, b, a)
		}
	}
}

// setXattr sets user.foo on p, or reports that the file system has no
// user attributes.
func setXattr(t *testing.T, p string) bool {
	t.Helper()
	err := unix.Lsetxattr(p, "user.foo", []byte("bar"), 0)
	if errors.Is(err, unix.ENOTSUP) {
		return false
	}
	if err != nil {
		t.Fatal(err)
	}
	return true
}

// TestCanonicaliseBuildOutput: a tree made by a real unprivileged user,
// with writable and setuid/setgid/sticky modes, an internal hard link,
// a symlink to a file outside and user attributes, comes out owned by
// root with modes 0444/0555, mtime 1 and no attributes; the symlink's
// target is untouched.
func TestCanonicaliseBuildOutput(t *testing.T) {
	uid, gid := buildUser(t)
	dir := openTempDir(t)
	outside := filepath.Join(dir, "outside")
	if err := os.WriteFile(outside, []byte("x"), 0o640); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "out")
	if err := os.Mkdir(out, 0o755); err != nil {
		t.Fatal(err)
	}
	os.Chown(out, uid, gid)
	asUser(t, uid, gid, out, `
mkdir -p bin share/doc sticky
printf hello > share/doc/readme; chmod 664 share/doc/readme
printf '#!/bin/sh' > bin/tool; chmod 4775 bin/tool
printf x > bin/sgid; chmod 2755 bin/sgid
chmod 2775 share; chmod 1777 sticky
ln share/doc/readme share/doc/again
ln -s ../../outside link
ln -s bin/tool toollink
touch -d 2020-01-01 bin/tool share`)
	xattrs := setXattr(t, filepath.Join(out, "share/doc/readme")) && setXattr(t, filepath.Join(out, "share"))
	before := snapshot(t, outside)

	if err := Canonicalise(unix.AT_FDCWD, out, CanonicaliseOptions{BuildUID: uid, UID: 0, GID: 0}); err != nil {
		t.Fatal(err)
	}
	want := map[string]uint32{
		"": 0o555, "bin": 0o555, "share": 0o555, "share/doc": 0o555, "sticky": 0o555,
		"bin/tool": 0o555, "bin/sgid": 0o555, "share/doc/readme": 0o444, "share/doc/again": 0o444,
		"link": 0o777, "toollink": 0o777,
	}
	for rel, perm := range want {
		p := filepath.Join(out, rel)
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			t.Fatal(err)
		}
		if st.Mode&0o7777 != perm || st.Uid != 0 || st.Gid != 0 || st.Mtim.Sec != 1 || st.Mtim.Nsec != 0 {
			t.Errorf("%s: mode %o uid %d gid %d mtime %d.%09d; want %o, root, mtime 1", rel, st.Mode&0o7777, st.Uid, st.Gid, st.Mtim.Sec, st.Mtim.Nsec, perm)
		}
		if xattrs {
			if n, _ := unix.Llistxattr(p, make([]byte, 4096)); n > 0 {
				t.Errorf("%s still has extended attributes", rel)
			}
		}
	}
	sameSnapshot(t, before, snapshot(t, outside))
	// Canonical now: a second run changes nothing, and the tree (owned by
	// root) still passes the ownership check.
	again := snapshot(t, out)
	if err := Canonicalise(unix.AT_FDCWD, out, CanonicaliseOptions{BuildUID: uid, UID: 0, GID: 0}); err != nil {
		t.Fatalf("rerun: %v", err)
	}
	sameSnapshot(t, again, snapshot(t, out))
}

// TestCanonicaliseRefusesForeignFiles: the ownership check rejects the
// whole tree, naming the file and its owner, and changes nothing in it
// nor in the foreign file: a hard link to a root-owned file outside (the
// 'ln /etc/shadow $out/foo' attack), a file or directory of another user,
// a hard link to the build user's own file outside; and, with or without
// the check, a FIFO or a socket.
func TestCanonicaliseRefusesForeignFiles(t *testing.T) {
	uid, gid := buildUser(t)
	cases := []struct {
		name  string
		kind  RejectKind
		setup func(t *testing.T, dir, out string) string // returns the offending node
		check bool
	}{
		{"hard link to root's file", RejectOwner, func(t *testing.T, dir, out string) string {
			shadow := filepath.Join(dir, "shadow")
			os.WriteFile(shadow, []byte("secret"), 0o640)
			unix.UtimesNano(shadow, []unix.Timespec{{Sec: 5}, {Sec: 5}})
			p := filepath.Join(out, "share/foo")
			if err := os.Link(shadow, p); err != nil {
				t.Fatal(err)
			}
			return p
		}, true},
		{"file of another user", RejectOwner, func(t *testing.T, dir, out string) string {
			p := filepath.Join(out, "share/other")
			os.WriteFile(p, []byte("x"), 0o644)
			os.Lchown(p, uid+1, gid)
			return p
		}, true},
		{"directory of another user", RejectOwner, func(t *testing.T, dir, out string) string {
			p := filepath.Join(out, "share/otherdir")
			os.Mkdir(p, 0o755)
			os.Chown(p, 0, 0)
			return p
		}, true},
		{"hard link to the build user's file outside", RejectHardLink, func(t *testing.T, dir, out string) string {
			mine := filepath.Join(dir, "mine")
			os.WriteFile(mine, []byte("x"), 0o644)
			os.Lchown(mine, uid, gid)
			p := filepath.Join(out, "share/mine")
			if err := os.Link(mine, p); err != nil {
				t.Fatal(err)
			}
			return p
		}, true},
		{"fifo", RejectType, func(t *testing.T, dir, out string) string {
			p := filepath.Join(out, "share/fifo")
			asUser(t, uid, gid, out, "mkfifo share/fifo")
			return p
		}, false},
		{"socket", RejectType, func(t *testing.T, dir, out string) string {
			p := filepath.Join(out, "sock")
			fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM, 0)
			if err != nil {
				t.Fatal(err)
			}
			defer unix.Close(fd)
			if err := unix.Bind(fd, &unix.SockaddrUnix{Name: p}); err != nil {
				t.Fatal(err)
			}
			os.Lchown(p, uid, gid)
			return p
		}, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			dir := openTempDir(t)
			out := filepath.Join(dir, "out")
			os.Mkdir(out, 0o755)
			os.Chown(out, uid, gid)
			asUser(t, uid, gid, out, "mkdir share; printf x > share/f; chmod 4755 share/f; ln share/f share/g; ln -s f share/l")
			setXattr(t, filepath.Join(out, "share/f"))
			bad := tc.setup(t, dir, out)
			before := snapshot(t, dir)
			opts := CanonicaliseOptions{BuildUID: uid, UID: 0, GID: 0, Display: "/nix/store/x-out"}
			if !tc.check {
				opts.BuildUID = NoBuildUser
			}
			err := Canonicalise(unix.AT_FDCWD, out, opts)
			var rej *RejectedError
			if !errors.As(err, &rej) || rej.Kind != tc.kind {
				t.Fatalf("got %v; want a %s rejection", err, tc.kind)
			}
			wantPath := "/nix/store/x-out" + strings.TrimPrefix(bad, out)
			if rej.Path != wantPath || !strings.Contains(err.Error(), wantPath) || !strings.Contains(err.Error(), "uid ") {
				t.Errorf("error %q (path %q) does not name %s and its owner", err, rej.Path, wantPath)
			}
			sameSnapshot(t, before, snapshot(t, dir))
		})
	}
}

// TestCanonicaliseUnchecked: without a build user, files of any owner are
// taken (and given to the canonical owner), and hard links elsewhere
// (.links in an optimised store) are no reason to refuse.
func TestCanonicaliseUnchecked(t *testing.T) {
	uid, gid := buildUser(t)
	dir := openTempDir(t)
	out := filepath.Join(dir, "out")
	os.Mkdir(out, 0o755)
	os.WriteFile(filepath.Join(out, "f"), []byte("x"), 0o644)
	os.Lchown(filepath.Join(out, "f"), uid, gid)
	if err := Canonicalise(unix.AT_FDCWD, out, CanonicaliseOptions{BuildUID: NoBuildUser, UID: 0, GID: 0}); err != nil {
		t.Fatal(err)
	}
	var st unix.Stat_t
	unix.Lstat(filepath.Join(out, "f"), &st)
	if st.Uid != 0 || st.Mode&0o7777 != 0o444 || st.Mtim.Sec != 1 {
		t.Errorf("f: uid %d mode %o mtime %d", st.Uid, st.Mode&0o7777, st.Mtim.Sec)
	}
}

// TestCanonicaliseUncheckedLeavesOutsideFiles: without a build user, a
// file with a hard link outside the tree (ln /etc/shadow out/f) is
// changed only if nothing would change (already canonical and the
// store's, as after a copy by hard links); otherwise the tree is
// rejected and neither name's inode changes (never change a file that is
// not ours).
func TestCanonicaliseUncheckedLeavesOutsideFiles(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	for _, tc := range []struct {
		name   string
		mode   uint32
		mtime  int64
		xattr  bool
		reject bool
	}{
		{"secret", 0o640, 1700000000, false, true},
		{"canonical", 0o444, 1, false, false},
		{"canonical-with-xattr", 0o444, 1, true, true},
		{"setuid", 0o4555, 1, false, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := openTempDir(t)
			out, outside := filepath.Join(dir, "out"), filepath.Join(dir, "outside")
			os.Mkdir(out, 0o755)
			if err := os.WriteFile(outside, []byte("secret"), 0o600); err != nil {
				t.Fatal(err)
			}
			if tc.xattr {
				if err := unix.Setxattr(outside, "user.x", []byte("1"), 0); err != nil {
					t.Skipf("no user xattrs here: %v", err)
				}
			}
			unix.Chmod(outside, tc.mode)
			unix.UtimesNano(outside, []unix.Timespec{{Sec: tc.mtime}, {Sec: tc.mtime}})
			if err := os.Link(outside, filepath.Join(out, "f")); err != nil {
				t.Fatal(err)
			}
			var before, after unix.Stat_t
			unix.Lstat(outside, &before)
			err := Canonicalise(unix.AT_FDCWD, out, CanonicaliseOptions{BuildUID: NoBuildUser, UID: 0, GID: 0, Display: "out"})
			unix.Lstat(outside, &after)
			var rej *RejectedError
			if tc.reject {
				if !errors.As(err, &rej) || rej.Kind != RejectHardLink || !strings.Contains(err.Error(), "outside as well") {
					t.Fatalf("got %v, want a hard-link rejection", err)
				}
				if before.Mode != after.Mode || before.Mtim != after.Mtim || before.Uid != after.Uid || before.Ctim != after.Ctim {
					t.Errorf("the outside file changed: mode %o -> %o, mtime %v -> %v", before.Mode, after.Mode, before.Mtim, after.Mtim)
				}
				if tc.xattr {
					if n, err := unix.Getxattr(outside, "user.x", make([]byte, 8)); err != nil || n != 1 {
						t.Errorf("the outside file's attribute was removed: %v", err)
					}
				}
				return
			}
			if err != nil {
				t.Fatalf("an already canonical file linked outside was refused: %v", err)
			}
			if before.Ctim != after.Ctim {
				t.Errorf("an already canonical file was changed")
			}
		})
	}
}

// TestCanonicaliseFinishesAfterACrash: a tree whose change pass was cut
// short (some nodes already root's and canonical, the rest still the
// build user's) passes the ownership check, and the rerun finishes it.
func TestCanonicaliseFinishesAfterACrash(t *testing.T) {
	uid, gid := buildUser(t)
	dir := openTempDir(t)
	out := filepath.Join(dir, "out")
	os.Mkdir(out, 0o755)
	os.Chown(out, uid, gid)
	asUser(t, uid, gid, out, "mkdir a b; printf x > a/f; printf y > b/g; chmod 755 b/g")
	// As if killed after a/ was done.
	if err := Canonicalise(unix.AT_FDCWD, filepath.Join(out, "a"), CanonicaliseOptions{BuildUID: uid}); err != nil {
		t.Fatal(err)
	}
	if err := Canonicalise(unix.AT_FDCWD, out, CanonicaliseOptions{BuildUID: uid}); err != nil {
		t.Fatalf("rerun refused the half-done tree: %v", err)
	}
	var st unix.Stat_t
	unix.Lstat(filepath.Join(out, "b/g"), &st)
	if st.Uid != 0 || st.Mode&0o7777 != 0o555 || st.Mtim.Sec != 1 {
		t.Errorf("b/g: uid %d mode %o mtime %d", st.Uid, st.Mode&0o7777, st.Mtim.Sec)
	}
}

// TestCanonicalRule: the checker's expectation and the fix agree with
// Nix: exec bit kept, setuid/setgid/sticky dropped, 0444 and 0555 left.
func TestCanonicalRule(t *testing.T) {
	for _, c := range []struct {
		mode      uint32
		want, fix uint32
		change    bool
	}{
		{unix.S_IFREG | 0o644, 0o444, 0o444, true},
		{unix.S_IFREG | 0o4755, 0o555, 0o555, true},
		{unix.S_IFREG | 0o1444, 0o444, 0o444, true},
		{unix.S_IFREG | 0o555, 0o555, 0o555, false},
		{unix.S_IFDIR | 0o2775, 0o555, 0o555, true},
		{unix.S_IFDIR | 0o444, 0o555, 0o444, false}, // Nix leaves a 0444 directory; verify reports it
		{unix.S_IFLNK | 0o777, 0o777, 0o777, false},
	} {
		if w := Nix.Want(c.mode); w != c.want {
			t.Errorf("Want(%o) = %o, want %o", c.mode, w, c.want)
		}
		if f, ch := Nix.Fix(c.mode); f != c.fix || ch != c.change {
			t.Errorf("Fix(%o) = %o %v, want %o %v", c.mode, f, ch, c.fix, c.change)
		}
	}
}

// TestCanonicaliseTreeChangedBetweenPasses: a node swapped after the
// check (a builder's process still running puts a hard link to a root
// file in the place of its own) is not changed: the change pass stops
// with ErrTreeChanged and the foreign file keeps its mode, owner and
// mtime.
func TestCanonicaliseTreeChangedBetweenPasses(t *testing.T) {
	uid, gid := buildUser(t)
	dir := openTempDir(t)
	out := filepath.Join(dir, "out")
	os.Mkdir(out, 0o755)
	os.Chown(out, uid, gid)
	asUser(t, uid, gid, out, "printf x > f; chmod 644 f")
	shadow := filepath.Join(dir, "shadow")
	os.WriteFile(shadow, []byte("secret"), 0o640)
	os.Link(shadow, filepath.Join(dir, "shadow-link"))
	before := snapshot(t, dir+"/shadow")
	testHookChecked = func() {
		if err := os.Rename(filepath.Join(dir, "shadow-link"), filepath.Join(out, "f")); err != nil {
			t.Error(err)
		}
	}
	defer func() { testHookChecked = nil }()
	err := Canonicalise(unix.AT_FDCWD, out, CanonicaliseOptions{BuildUID: uid})
	if !errors.Is(err, ErrTreeChanged) {
		t.Fatalf("got %v, want ErrTreeChanged", err)
	}
	after := snapshot(t, dir+"/shadow")
	for p, b := range before {
		a := after[p]
		if a.mode != b.mode || a.uid != b.uid || a.mtime != b.mtime || a.xattrs != b.xattrs {
			t.Errorf("%s changed: %+v -> %+v", p, b, a)
		}
	}
}
