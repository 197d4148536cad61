package tests

import (
	"os/exec"
	"os/user"
	"strconv"
	"strings"
	"testing"
)

// realUser returns the uid and gid of the unprivileged system user name,
// creating it with useradd (no home directory, no login shell) if it does
// not exist yet. Permission tests run commands as real users, as a hostile
// local user would, rather than as a bare uid no /etc/passwd names. It
// skips (or fails under STOREKEEPER_REQUIRE_NIX) when not root or when
// useradd is missing. The user is left in place: later runs reuse it.
func realUser(t testing.TB, name string) (uid, gid int) {
	t.Helper()
	requireNix(t) // root, and a machine set up for the interop tests
	u, err := user.Lookup(name)
	if err != nil {
		out, aerr := exec.Command("useradd", "--system", "--no-create-home",
			"--shell", "/usr/sbin/nologin", "--user-group", name).CombinedOutput()
		if aerr != nil && !strings.Contains(string(out), "already exists") {
			t.Fatalf("useradd %s: %v\n%s", name, aerr, out)
		}
		if u, err = user.Lookup(name); err != nil {
			t.Fatalf("user %s after useradd: %v", name, err)
		}
	}
	uid, err1 := strconv.Atoi(u.Uid)
	gid, err2 := strconv.Atoi(u.Gid)
	if err1 != nil || err2 != nil {
		t.Fatalf("user %s: bad uid/gid %q/%q", name, u.Uid, u.Gid)
	}
	return uid, gid
}
