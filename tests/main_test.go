// Package tests holds end-to-end tests of the built storekeeper binary,
// including interop with real Nix.
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

// binary is the storekeeper built for this test run; mkdemo is
// cmd/mkdemostore.
var binary, mkdemo string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "storekeeper-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	binary = filepath.Join(dir, "storekeeper")
	build := exec.Command("go", "build", "-o", binary, "storekeeper/cmd/storekeeper")
	build.Stdout, build.Stderr = os.Stdout, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "building storekeeper:", err)
		os.Exit(2)
	}
	mkdemo = filepath.Join(dir, "mkdemostore")
	build = exec.Command("go", "build", "-o", mkdemo, "storekeeper/cmd/mkdemostore")
	build.Stdout, build.Stderr = os.Stdout, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "building mkdemostore:", err)
		os.Exit(2)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// result is one run of the binary.
type result struct {
	stdout, stderr string
	code           int
}

// run runs the binary with args on the host and returns its output and
// exit status (it does not fail on a non-zero status).
func run(t testing.TB, args ...string) result {
	t.Helper()
	return runCmd(t, exec.Command(binary, args...), args)
}

// runInNS runs the binary inside ROOT's mount namespace, where the store
// is at /nix/store.
func runInNS(t testing.TB, root string, args ...string) result {
	t.Helper()
	return runCmd(t, nsScript(root, `exec "$@"`, append([]string{binary}, args...)...), args)
}

func runCmd(t testing.TB, cmd *exec.Cmd, args []string) result {
	t.Helper()
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	code := 0
	if err != nil {
		ee, ok := err.(*exec.ExitError)
		if !ok {
			t.Fatalf("running storekeeper %s: %v", strings.Join(args, " "), err)
		}
		code = ee.ExitCode()
	}
	return result{out.String(), errb.String(), code}
}

// rootLines extracts the "LINK -> /nix/store/..." lines of a roots listing.
func rootLines(out string) map[string]bool {
	set := map[string]bool{}
	for _, l := range strings.Split(out, "\n") {
		l = strings.TrimSpace(l)
		if strings.Contains(l, " -> /nix/store/") {
			set[l] = true
		}
	}
	return set
}
