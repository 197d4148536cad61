package fs

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

// TestCanonicaliseCheckOnly: with CheckOnly, a tree made by the build
// user that needs every kind of change (writable and setuid modes, an
// mtime, the build user's owner, an extended attribute) passes and is left
// exactly as it was; a tree holding a file of another user, or a hard
// link to a file outside (the check after the walk), is rejected as
// without CheckOnly, and nothing in it or outside changes.
func TestCanonicaliseCheckOnly(t *testing.T) {
	uid, gid := buildUser(t)
	mk := func(t *testing.T) (dir, out string) {
		dir = openTempDir(t)
		out = filepath.Join(dir, "out")
		os.Mkdir(out, 0o755)
		os.Chown(out, uid, gid)
		asUser(t, uid, gid, out, "mkdir d; printf x > d/f; chmod 4775 d/f; ln d/f d/g; ln -s f d/l; chmod 2775 d")
		setXattr(t, filepath.Join(out, "d/f"))
		return dir, out
	}
	check := CanonicaliseOptions{BuildUID: uid, UID: 0, GID: 0, Display: "/nix/store/x-out", CheckOnly: true}

	t.Run("needs changes", func(t *testing.T) {
		dir, out := mk(t)
		before := snapshot(t, dir)
		if err := Canonicalise(unix.AT_FDCWD, out, check); err != nil {
			t.Fatal(err)
		}
		after := snapshot(t, dir)
		sameSnapshot(t, before, after)
		if len(after) != len(before) {
			t.Errorf("%d nodes before, %d after", len(before), len(after))
		}
		// Not canonical yet: the check really left it (the same options
		// without CheckOnly change it).
		var st unix.Stat_t
		unix.Lstat(filepath.Join(out, "d/f"), &st)
		if st.Uid != uint32(uid) || st.Mode&0o7777 != 0o4775 {
			t.Fatalf("d/f: uid %d mode %o after the check", st.Uid, st.Mode&0o7777)
		}
		full := check
		full.CheckOnly = false
		if err := Canonicalise(unix.AT_FDCWD, out, full); err != nil {
			t.Fatal(err)
		}
		unix.Lstat(filepath.Join(out, "d/f"), &st)
		if st.Uid != 0 || st.Mode&0o7777 != 0o555 || st.Mtim.Sec != 1 {
			t.Errorf("d/f after Canonicalise: uid %d mode %o mtime %d", st.Uid, st.Mode&0o7777, st.Mtim.Sec)
		}
	})
	for _, tc := range []struct {
		name  string
		kind  RejectKind
		setup func(t *testing.T, dir, out string)
	}{
		{"file of another user", RejectOwner, func(t *testing.T, dir, out string) {
			p := filepath.Join(out, "d/other")
			os.WriteFile(p, []byte("x"), 0o644)
			os.Lchown(p, uid+1, gid)
		}},
		{"hard link to a root file outside", RejectOwner, func(t *testing.T, dir, out string) {
			shadow := filepath.Join(dir, "shadow")
			os.WriteFile(shadow, []byte("secret"), 0o640)
			if err := os.Link(shadow, filepath.Join(out, "d/foo")); err != nil {
				t.Fatal(err)
			}
		}},
		{"hard link to the build user's file outside", RejectHardLink, func(t *testing.T, dir, out string) {
			mine := filepath.Join(dir, "mine")
			os.WriteFile(mine, []byte("x"), 0o644)
			os.Lchown(mine, uid, gid)
			if err := os.Link(mine, filepath.Join(out, "d/mine")); err != nil {
				t.Fatal(err)
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir, out := mk(t)
			tc.setup(t, dir, out)
			before := snapshot(t, dir)
			err := Canonicalise(unix.AT_FDCWD, out, check)
			var rej *RejectedError
			if !errors.As(err, &rej) || rej.Kind != tc.kind {
				t.Fatalf("got %v; want a %s rejection", err, tc.kind)
			}
			sameSnapshot(t, before, snapshot(t, dir))
		})
	}
}
