package tests

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestReadOnlyCommandsAsUnprivilegedUser: roots, info and gc --print-dead
// work as a user with no write access anywhere in the store (and no read
// access to the lock files), and change nothing.
func TestReadOnlyCommandsAsUnprivilegedUser(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to switch to an unprivileged user")
	}
	if _, err := exec.LookPath("setpriv"); err != nil {
		t.Skip("setpriv (util-linux) is not installed")
	}
	root := t.TempDir()
	for d := root; d != "/" && d != os.TempDir(); d = filepath.Dir(d) {
		os.Chmod(d, 0o755)
	}
	buildDemo(t, root)
	// The binary must be reachable by the unprivileged user.
	bin := filepath.Join(root, "storekeeper")
	data, _ := os.ReadFile(binary)
	os.WriteFile(bin, data, 0o755)
	before := snapshotTree(t, filepath.Join(root, "nix"))
	for _, args := range [][]string{{"info"}, {"roots"}, {"gc", "--print-dead"}, {"gc", "--dry-run"}, {"gc", "--print-live"}} {
		cmd := exec.Command("setpriv", append([]string{"--reuid=65534", "--regid=65534", "--clear-groups", bin, "--store", root}, args...)...)
		var out, errb bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &errb
		if err := cmd.Run(); err != nil {
			t.Fatalf("storekeeper %s as nobody: %v\n%s", strings.Join(args, " "), err, errb.String())
		}
		if out.Len() == 0 {
			t.Errorf("storekeeper %s printed nothing", strings.Join(args, " "))
		}
	}
	if after := snapshotTree(t, filepath.Join(root, "nix")); after != before {
		t.Fatalf("read-only commands changed the store:\n%s\n---\n%s", before, after)
	}
	// A writing command as nobody fails cleanly with exit status 2.
	cmd := exec.Command("setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", bin, "--store", root, "gc")
	out, err := cmd.CombinedOutput()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 2 {
		t.Fatalf("gc as nobody: %v %s", err, out)
	}
	if after := snapshotTree(t, filepath.Join(root, "nix")); after != before {
		t.Fatalf("a refused gc changed the store")
	}
}

// snapshotTree lists every entry with its size and mode (not atimes).
func snapshotTree(t *testing.T, dir string) string {
	t.Helper()
	var sb strings.Builder
	filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
		if err != nil {
			return nil
		}
		if strings.HasSuffix(p, "db.sqlite-shm") {
			return nil
		}
		sb.WriteString(p + " " + fi.Mode().String() + " " + fi.ModTime().String())
		if fi.Mode().IsRegular() {
			fmt.Fprintf(&sb, " %d", fi.Size())
		}
		sb.WriteString("\n")
		return nil
	})
	return sb.String()
}
