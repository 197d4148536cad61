package tests

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestRepairAsUnprivilegedUser: a real unprivileged user (uid 65534)
// running repair on a root-owned store it may read but not write gets
// exit 2 with an error, and nothing changes: no damaged path touched, no
// trash or staging directory created. `repair --dry-run` is read-only and
// works for that user: it needs no write access to the store.
func TestRepairAsUnprivilegedUser(t *testing.T) {
	f := newRepairFixture(t, nixSpec{Paths: 30, Seed: 2331, Files: 2, Salt: "repair-nobody"}, 4, "zstd")
	c := f.caches["zstd"]
	root, _, _ := f.damaged(t)
	for _, d := range []string{root, c.Dir} {
		for p := d; p != "/" && p != "/tmp"; p = filepath.Dir(p) {
			os.Chmod(p, 0o755)
		}
	}
	if out, err := exec.Command("chmod", "-R", "a+rX", c.Dir).CombinedOutput(); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	bin := filepath.Join(root, "storekeeper")
	if out, err := exec.Command("cp", binary, bin).CombinedOutput(); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	before := map[string]string{}
	for _, v := range f.victims {
		before[v] = pathState(t, root, v)
	}
	entries := func() string {
		es, _ := os.ReadDir(filepath.Join(root, "nix/store"))
		var b strings.Builder
		for _, e := range es {
			b.WriteString(e.Name() + "\n")
		}
		return b.String()
	}
	storeBefore := entries()
	args := append([]string{"--store", root, "repair"}, trustArgs(c.URL(), c)...)

	cmd := exec.Command(bin, append(args, f.victims...)...)
	cmd.SysProcAttr = optNobody()
	out, err := cmd.CombinedOutput()
	if ee, _ := err.(*exec.ExitError); ee == nil || ee.ExitCode() != 2 || !strings.Contains(string(out), "storekeeper:") {
		t.Errorf("repair as uid 65534: %v, want exit 2 with an error\n%s", err, out)
	}
	for _, v := range f.victims {
		if pathState(t, root, v) != before[v] {
			t.Errorf("%s changed", v)
		}
	}
	if got := entries(); got != storeBefore {
		t.Errorf("the store directory's entries changed (a trash or staging directory?)")
	}

	cmd = exec.Command(bin, append(append(args, "--dry-run"), f.victims...)...)
	cmd.SysProcAttr = optNobody()
	out, err = cmd.CombinedOutput()
	if err != nil || strings.Count(string(out), "would repair '") != len(f.victims) {
		t.Errorf("repair --dry-run as uid 65534: %v, want a line per path\n%s", err, out)
	}
}
