package tests

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestSystemdInstallSymlinkHole: as root, `systemd install --dir` and
// `man DIR` refuse (exit 2, "permission", naming the link) a path through
// a symlink that another user could have put there (a link in a
// directory of theirs pointing to a directory of root's): nothing is
// written or created where it points, nor in their directory. The same
// link in a directory of root's is followed.
func TestSystemdInstallSymlinkHole(t *testing.T) {
	requireRoot(t)
	uid, gid := realUser(t, unitUser)
	base := t.TempDir()
	os.Chmod(base, 0o755)
	victim := filepath.Join(base, "etc-systemd")
	mustMkdir(t, filepath.Join(victim, "sub"))
	os.Chmod(victim, 0o755)
	theirs := filepath.Join(base, "home")
	mustMkdir(t, theirs)
	os.Chown(theirs, uid, gid)
	link := filepath.Join(theirs, "units")
	mustSymlink(t, victim, link)
	os.Lchown(link, uid, gid)
	rootLink := filepath.Join(base, "units")
	mustSymlink(t, victim, rootLink)

	for _, c := range []struct {
		name string
		args []string
	}{
		{"install --dir", []string{"systemd", "install", "--dir", link, "--bin", binary, "--no-metrics"}},
		{"install --dir, a subdirectory", []string{"systemd", "install", "--dir", filepath.Join(link, "sub"), "--bin", binary, "--no-metrics"}},
		{"man, the link", []string{"man", link}},
		{"man, to create under the link", []string{"man", filepath.Join(link, "man1")}},
		{"man, in their directory", []string{"man", filepath.Join(theirs, "man1")}},
	} {
		r := run(t, c.args...)
		if r.code != 2 || !strings.Contains(r.stderr, "permission denied") || !strings.Contains(r.stderr, "another user controls") {
			t.Errorf("%s: exit %d, want 2 refusing the directory another user controls:\n%s", c.name, r.code, r.stderr)
		}
		if c.name != "man, in their directory" && !strings.Contains(r.stderr, link+" is a symlink in "+theirs) {
			t.Errorf("%s: the message does not name the link:\n%s", c.name, r.stderr)
		}
		if names := dirNames(t, victim); !equalStrings(names, []string{"sub"}) {
			t.Errorf("%s: wrote %v where the link points", c.name, names)
		}
		if names := dirNames(t, filepath.Join(victim, "sub")); len(names) != 0 {
			t.Errorf("%s: wrote %v where the link points", c.name, names)
		}
		if names := dirNames(t, theirs); len(names) != 1 {
			t.Errorf("%s: wrote %v in the other user's directory", c.name, names)
		}
	}

	// Root's own link is followed.
	installUnits(t, rootLink, "--no-metrics")
	if names := dirNames(t, victim); !equalStrings(names, append(append([]string{}, unitNames...), "sub")) {
		t.Errorf("through root's link: %v", names)
	}
	if r := run(t, "man", filepath.Join(rootLink, "sub")); r.code != 0 {
		t.Errorf("man through root's link: exit %d: %s", r.code, r.stderr)
	}
	if names := dirNames(t, filepath.Join(victim, "sub")); !containsString(names, "storekeeper.1") {
		t.Errorf("man through root's link wrote %v", names)
	}
}
