package tests

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

// TestBenchScripts runs bench/inroot.sh (which gcfloor.sh, versus.sh,
// cold.sh, busy.sh and verify27.sh run every command through),
// bench/busy.sh, bench/verify27.sh and bench/cold.sh on a demo store.
func TestBenchScripts(t *testing.T) {
	requireNix(t) // root and mount namespaces, as the scripts need
	root := t.TempDir()
	buildDemo(t, root)
	ents, err := os.ReadDir(filepath.Join(root, "nix", "store"))
	if err != nil {
		t.Fatal(err)
	}
	script := func(name string, args ...string) (string, int) {
		t.Helper()
		out, err := exec.Command(filepath.Join("..", "bench", name), args...).CombinedOutput()
		code := 0
		if ee, ok := err.(*exec.ExitError); ok {
			code = ee.ExitCode()
		} else if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		return string(out), code
	}

	out, code := script("inroot.sh", root, "sh", "-c", "ls -A /nix/store | wc -l")
	if n, _ := strconv.Atoi(strings.TrimSpace(out)); code != 0 || n != len(ents) {
		t.Fatalf("inroot.sh sees %q entries (status %d), want %d", out, code, len(ents))
	}
	if _, code := script("inroot.sh", root); code != 2 {
		t.Fatalf("inroot.sh without a command: status %d, want 2", code)
	}
	// busy.sh: a timeline line per half second, then the times and the
	// cores' use; the command's failure is reported and passed on.
	out, code = script("busy.sh", "-t", root, "sh", "-c", "ls -R /nix/store > /dev/null && sleep 1.2")
	busy := regexp.MustCompile(`^(?: +[0-9.]+ s  busy [0-9.]+  sys [0-9.]+  iowait [0-9.]+\n){2,}` +
		`[0-9.]+ s wall [0-9.]+ user [0-9.]+ sys\n` +
		`cores: [0-9.]+ of [0-9]+ busy, [0-9]+% idle, [0-9]+% iowait\n$`)
	if code != 0 || !busy.MatchString(out) {
		t.Fatalf("busy.sh -t printed (status %d):\n%s", code, out)
	}
	if out, code := script("busy.sh", root, "false"); code != 1 || !strings.Contains(out, "busy.sh: 'false' exited with status 1") {
		t.Fatalf("busy.sh did not report the command's failure (status %d):\n%s", code, out)
	}
	if _, code := script("busy.sh", root); code != 2 {
		t.Fatalf("busy.sh without a command: status %d, want 2", code)
	}
	if _, code := script("cold.sh", filepath.Join(root, "missing"), "true"); code != 2 {
		t.Fatalf("cold.sh on a root without a store: status %d, want 2", code)
	}

	// verify27.sh: one pair of each mode, the floor and the medians; the
	// recording runs removed the state directory they made; a failing
	// BIN is reported, not hidden.
	out, code = script("verify27.sh", binary, root, "1")
	v27 := regexp.MustCompile(`(?s)^== .*\nnorec:\n  nix-norec +[0-9.]+ s .*  tool-norec +[0-9.]+ s .*\nrecord:\n.*` +
		`floor:\n.*  floor: [0-9.]+ s \(read [0-9.]+ \+ sha256 [0-9.]+ on [0-9]+ cores\); recording manifests [0-9.]+ s .*` +
		`median norec  nix [0-9.]+ s, storekeeper [0-9.]+ s: [0-9.]+x Nix; [0-9.]+x the floor \([0-9.]+ s\)\n` +
		`median record nix [0-9.]+ s, storekeeper [0-9.]+ s: [0-9.]+x Nix; [0-9.]+x the floor \([0-9.]+ s\)\n$`)
	if code != 0 || !v27.MatchString(out) || strings.Contains(out, "exited with status") {
		t.Fatalf("verify27.sh printed (status %d):\n%s", code, out)
	}
	if _, err := os.Lstat(filepath.Join(root, "nix", "var", "storekeeper")); !os.IsNotExist(err) {
		t.Fatalf("verify27.sh left the state directory behind: %v", err)
	}
	if out, _ := script("verify27.sh", "/bin/false", root, "1"); !strings.Contains(out, "exited with status 1") {
		t.Fatalf("verify27.sh did not report the tool's failure:\n%s", out)
	}
	if _, code := script("verify27.sh", binary); code != 2 {
		t.Fatalf("verify27.sh without a root: status %d, want 2", code)
	}

	if f, err := os.OpenFile("/proc/sys/vm/drop_caches", os.O_WRONLY, 0); err != nil {
		t.Skipf("cold.sh needs to drop the page cache: %v", err)
	} else {
		f.Close()
	}
	out, code = script("cold.sh", root, binary, "verify", "--no-record")
	if strings.Contains(out, "no disk statistics") {
		t.Skipf("cold.sh: %s", out)
	}
	report := regexp.MustCompile(`^[0-9.]+ s wall [0-9.]+ user [0-9.]+ sys\n` +
		`disk: [0-9]+ read requests, [0-9]+ merged, [0-9]+ MiB, [0-9.]+ KiB a request\n$`)
	if code != 0 || !report.MatchString(out) {
		t.Fatalf("cold.sh printed (status %d):\n%s", code, out)
	}
	if out, _ := script("cold.sh", root, "false"); !strings.Contains(out, "cold.sh: 'false' exited with status 1") {
		t.Fatalf("cold.sh did not report the command's failure:\n%s", out)
	}
}
