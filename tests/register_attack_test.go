package tests

import (
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestRegisterOwnershipAttack: the attack Nix's ownership check stops,
// with real users. As root, `register --build-user` takes outputs a build
// user made (trees in the store owned by that uid):
//   - an output with a hard link to a root-owned file outside the store
//     on the same file system ('ln /etc/shadow $out/foo': mode 0600; and
//     one already looking canonical, 0444 with mtime 1) is rejected,
//     naming the file and its owner; the foreign file's mode, owner,
//     mtime and contents are unchanged, and nothing is registered;
//   - an output holding a file of another user, a directory of another
//     user, or a FIFO is rejected the same way;
//   - in a batch, a good output beside a rejected one is not changed at
//     all (every path is checked before any is changed);
//   - an output with internal hard links, setuid and setgid bits, a
//     sticky directory and writable modes (all the build user's) is
//     accepted and canonicalised: owner root, 0444/0555, mtime 1, no
//     special bit; `nix-store --verify --check-contents` accepts it.
func TestRegisterOwnershipAttack(t *testing.T) {
	buid, bgid := realUser(t, "sk-register-build")
	ouid, ogid := realUser(t, "sk-register-other")
	root := emptyStore(t)
	rng := rand.New(rand.NewPCG(24, 5))
	newOut := func(name string) string { return "/nix/store/" + randName(rng) + "-" + name }
	mk := func(p string, mode os.FileMode, uid, gid int) {
		t.Helper()
		if mode.IsDir() {
			if err := os.Mkdir(filepath.Join(root, p), mode.Perm()); err != nil {
				t.Fatal(err)
			}
		} else {
			writeFileMode(t, filepath.Join(root, p), []byte("contents of "+filepath.Base(p)+"\n"), mode.Perm())
		}
		if err := os.Chmod(filepath.Join(root, p), mode); err != nil { // with the special bits
			t.Fatal(err)
		}
		if err := os.Lchown(filepath.Join(root, p), uid, gid); err != nil {
			t.Fatal(err)
		}
	}
	// An output of the build user: a directory with a file, the start
	// of every hostile one below.
	output := func(name string) string {
		p := newOut(name)
		mk(p, os.ModeDir|0o755, buid, bgid)
		mk(p+"/ok", 0o644, buid, bgid)
		return p
	}
	// Foreign files on the store's file system, outside the store.
	secret := filepath.Join(root, "secret")
	writeFileMode(t, secret, []byte("root:$6$secret\n"), 0o600)
	old := time.Date(2001, 2, 3, 4, 5, 6, 0, time.UTC)
	if err := os.Chtimes(secret, old, old); err != nil {
		t.Fatal(err)
	}
	canonicalLooking := filepath.Join(root, "canonical-looking")
	writeFileMode(t, canonicalLooking, []byte("root's, 0444, mtime 1\n"), 0o444)
	if err := os.Chtimes(canonicalLooking, time.Unix(1, 0), time.Unix(1, 0)); err != nil {
		t.Fatal(err)
	}
	foreign := func() string {
		var sb strings.Builder
		for _, f := range []string{secret, canonicalLooking} {
			var st syscall.Stat_t
			if err := syscall.Lstat(f, &st); err != nil {
				t.Fatal(err)
			}
			data, _ := os.ReadFile(f)
			fmt.Fprintf(&sb, "%s mode=%o uid=%d gid=%d mtime=%d.%d ctime=%d.%d xattrs=%q %q\n", f, st.Mode, st.Uid, st.Gid, st.Mtim.Sec, st.Mtim.Nsec, st.Ctim.Sec, st.Ctim.Nsec, listXattrs(f), data)
		}
		return sb.String()
	}

	shadowLink := output("shadow-link")
	if err := os.Link(secret, filepath.Join(root, shadowLink, "foo")); err != nil {
		t.Fatal(err)
	}
	canonLink := output("canonical-link")
	if err := os.Link(canonicalLooking, filepath.Join(root, canonLink, "foo")); err != nil {
		t.Fatal(err)
	}
	otherFile := output("other-file")
	mk(otherFile+"/theirs", 0o644, ouid, ogid)
	otherDir := output("other-dir")
	mk(otherDir+"/sub", os.ModeDir|0o755, ouid, ogid)
	mk(otherDir+"/sub/mine", 0o644, buid, bgid)
	fifo := output("fifo")
	if err := syscall.Mkfifo(filepath.Join(root, fifo, "pipe"), 0o644); err != nil {
		t.Fatal(err)
	}
	os.Lchown(filepath.Join(root, fifo, "pipe"), buid, bgid)

	good := output("good")
	mk(good+"/bin", os.ModeDir|os.ModeSetgid|os.ModeSticky|0o775, buid, bgid)
	mk(good+"/bin/suid", os.ModeSetuid|os.ModeSetgid|0o755, buid, bgid)
	mk(good+"/bin/writable", 0o666, buid, bgid)
	if err := os.Link(filepath.Join(root, good, "bin/suid"), filepath.Join(root, good, "suid-link")); err != nil {
		t.Fatal(err)
	}
	if err := os.Link(filepath.Join(root, good, "ok"), filepath.Join(root, good, "bin/ok-link")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("bin/suid", filepath.Join(root, good, "link")); err != nil {
		t.Fatal(err)
	}
	os.Lchown(filepath.Join(root, good, "link"), buid, bgid)
	// A single-file output (the store path is the file), executable.
	single := newOut("single")
	mk(single, 0o755, buid, bgid)

	all := []string{shadowLink, canonLink, otherFile, otherDir, fifo, good, single}
	state := func() string {
		var sb strings.Builder
		sb.WriteString(regRows(t, root) + "\n" + foreign())
		for _, p := range all {
			sb.WriteString(pathState(t, root, p))
		}
		return sb.String()
	}
	before := state()
	rec := func(paths ...string) string {
		var sb strings.Builder
		for _, p := range paths {
			sb.WriteString(p + "\n\n0\n")
		}
		return sb.String()
	}
	user := "sk-register-build"
	for _, c := range []struct {
		name  string
		paths []string
		want  []string // in the error
	}{
		{"hard link to a root-owned 0600 file", []string{shadowLink}, []string{shadowLink + "/foo", "uid 0"}},
		{"hard link to a root-owned canonical-looking file", []string{canonLink}, []string{canonLink + "/foo", "uid 0"}},
		{"a file of another user", []string{otherFile}, []string{otherFile + "/theirs", "uid " + strconv.Itoa(ouid)}},
		{"a directory of another user", []string{otherDir}, []string{otherDir + "/sub", "uid " + strconv.Itoa(ouid)}},
		{"a FIFO", []string{fifo}, []string{fifo + "/pipe"}},
		{"a good output, then a hard link out", []string{good, single, shadowLink}, []string{shadowLink + "/foo", "uid 0"}},
		{"a good output, then another user's file", []string{good, otherFile}, []string{otherFile + "/theirs"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			for _, bu := range []string{user, strconv.Itoa(buid)} {
				r := runRegisterNS(t, root, rec(c.paths...), "--json", "register", "--build-user", bu)
				e := parseEnvelope(t, r)
				if r.code != 2 || e.OK || e.Error == nil {
					t.Fatalf("--build-user %s: exit %d, want 2\n%s\n%s", bu, r.code, r.stdout, r.stderr)
				}
				if e.Error.Kind != "rejected" {
					t.Errorf("error kind %q, want rejected", e.Error.Kind)
				}
				for _, w := range c.want {
					if !strings.Contains(e.Error.Message, w) {
						t.Errorf("the error does not name %q: %s", w, e.Error.Message)
					}
				}
				if got := state(); got != before {
					t.Fatalf("something changed:\n%s\nbefore:\n%s", got, before)
				}
			}
		})
	}
	// The same in the text form: the error line names the file.
	r := runRegisterNS(t, root, rec(shadowLink), "register", "--build-user", user)
	if r.code != 2 || !strings.Contains(r.stderr, "storekeeper: error: ") || !strings.Contains(r.stderr, shadowLink+"/foo") {
		t.Fatalf("exit %d\n%s", r.code, r.stderr)
	}

	// Accepted: the good outputs, canonicalised.
	if r := runRegisterNS(t, root, rec(good, single), "register", "--build-user", user); r.code != 0 {
		t.Fatalf("the good outputs: exit %d\n%s", r.code, r.stderr)
	}
	if n := validCount(t, root, []string{good, single}); n != 2 {
		t.Fatalf("%d of 2 good outputs valid", n)
	}
	for _, p := range []string{good, single} {
		checkCanonical(t, root, p, 0, 0)
	}
	var st1, st2 syscall.Stat_t
	syscall.Lstat(filepath.Join(root, good, "bin/suid"), &st1)
	syscall.Lstat(filepath.Join(root, good, "suid-link"), &st2)
	if st1.Ino != st2.Ino || st1.Mode&0o7777 != 0o555 {
		t.Fatalf("the internal hard link is gone or the setuid file is mode %o", st1.Mode&0o7777)
	}
	if got := foreign(); !strings.Contains(before, got) {
		t.Fatalf("a foreign file changed:\n%s", got)
	}
	nixVerify(t, root)
}
