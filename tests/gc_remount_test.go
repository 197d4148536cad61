package tests

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestGCReadOnlyBindMount: on a store whose directory is a read-only bind
// mount (as NixOS makes /nix/store), gc remounts it writable in a private
// mount namespace of its own and collects; the read-only mount everyone
// else sees stays read-only.
func TestGCReadOnlyBindMount(t *testing.T) {
	requireNix(t) // for root and mount namespaces
	root := t.TempDir()
	b := buildDemo(t, root)
	sd := filepath.Join(root, "nix/store")
	deadBefore := run(t, "--store", root, "gc", "--print-dead").stdout
	if strings.Count(deadBefore, "\n") == 0 {
		t.Fatal("nothing dead")
	}
	script := `
mount --bind "$SD" "$SD" && mount -o remount,ro,bind "$SD" || exit 97
touch "$SD/probe" 2>/dev/null && { echo "not read-only"; exit 1; }
"$BIN" --store "$ROOT" gc; echo "GC $?"
touch "$SD/probe" 2>/dev/null && echo "STILL-RO no" || echo "STILL-RO yes"
`
	cmd := exec.Command("unshare", "-m", "--propagation", "private", "sh", "-c", script)
	cmd.Env = append(os.Environ(), "SD="+sd, "ROOT="+root, "BIN="+binary)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	s := string(out)
	if !strings.Contains(s, "GC 0") || !strings.Contains(s, "store paths deleted") {
		t.Fatalf("gc on a read-only bind mount failed:\n%s", s)
	}
	if !strings.Contains(s, "STILL-RO yes") {
		t.Fatalf("the caller's mount was made writable:\n%s", s)
	}
	if d := run(t, "--store", root, "gc", "--print-dead").stdout; d != "" {
		t.Fatalf("garbage left after gc:\n%s", d)
	}
	for _, p := range b.DirectRoots {
		if _, err := os.Lstat(filepath.Join(root, p)); err != nil {
			t.Fatalf("root %s gone", p)
		}
	}
}
