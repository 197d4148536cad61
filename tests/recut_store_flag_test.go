package tests

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestStoreFlagRelativeRoot runs the binary from a temporary working
// directory with a relative --store (as demo.sh and the README's quick
// start name ./demo-store): "./demo-store", "demo-store/", "../demo-store"
// from a subdirectory and "local?root=./demo-store" all mean the store
// under that directory, exactly as its absolute path does; read-only
// commands and a deleting gc agree with the absolute form. A bare word
// that is not one of Nix's store names is refused with a hint and exit 2.
func TestStoreFlagRelativeRoot(t *testing.T) {
	work := t.TempDir()
	if err := os.Mkdir(filepath.Join(work, "sub"), 0o755); err != nil {
		t.Fatal(err)
	}
	conf := t.TempDir() // an empty nix.conf directory: no host settings
	env := append(os.Environ(), "NIX_CONF_DIR="+conf, "NIX_USER_CONF_FILES=", "NIX_CONFIG=")
	mk := exec.Command(mkdemo, "demo-store")
	mk.Dir, mk.Env = work, env
	if out, err := mk.CombinedOutput(); err != nil {
		t.Fatalf("mkdemostore demo-store (in %s): %v\n%s", work, err, out)
	}
	abs := filepath.Join(work, "demo-store")
	in := func(dir string, args ...string) result {
		t.Helper()
		cmd := exec.Command(binary, args...)
		cmd.Dir, cmd.Env = dir, env
		return runCmd(t, cmd, args)
	}

	for _, op := range [][]string{
		{"info", "--json"},
		{"roots"},
		{"gc", "--print-dead"},
		{"gc", "--dry-run"},
		{"verify", "--check-contents", "--no-record", "--json"},
	} {
		want := in(work, append([]string{"--store", abs}, op...)...)
		if want.code != 0 || want.stdout == "" {
			t.Fatalf("--store %s %v: exit %d, %q\n%s", abs, op, want.code, want.stdout, want.stderr)
		}
		for _, c := range []struct{ dir, store string }{
			{work, "./demo-store"},
			{work, "demo-store/"},
			{filepath.Join(work, "sub"), "../demo-store"},
			{work, "local?root=./demo-store"},
			{filepath.Join(work, "sub"), "local?root=../demo-store"},
		} {
			got := in(c.dir, append([]string{"--store", c.store}, op...)...)
			// Only the durations may differ.
			got.stdout, want.stdout = dropElapsed(got.stdout), dropElapsed(want.stdout)
			if got.code != 0 || got.stdout != want.stdout {
				t.Errorf("from %s, --store %s %v: exit %d\n%s\nstdout:\n%s\nwant (--store %s):\n%s",
					c.dir, c.store, op, got.code, got.stderr, got.stdout, abs, want.stdout)
			}
		}
	}

	// A deleting run through a relative root deletes in the store under
	// the working directory, as the absolute form would.
	dead := strings.Fields(in(work, "--store", abs, "gc", "--print-dead").stdout)
	if len(dead) == 0 {
		t.Fatal("the demo store has no dead paths to collect")
	}
	if r := in(work, "--store", "./demo-store", "gc"); r.code != 0 {
		t.Fatalf("--store ./demo-store gc: exit %d\n%s", r.code, r.stderr)
	}
	for _, p := range dead {
		if _, err := os.Lstat(filepath.Join(abs, p)); !os.IsNotExist(err) {
			t.Errorf("dead path %s still under %s after gc: %v", p, abs, err)
		}
	}
	if r := in(work, "--store", "./demo-store", "gc", "--print-dead"); r.code != 0 || r.stdout != "" {
		t.Errorf("after gc, --print-dead: exit %d, %q\n%s", r.code, r.stdout, r.stderr)
	}

	// A bare word is not a path (as in Nix): refused, with the hint.
	r := in(work, "--store", "demo-store", "info")
	if r.code != 2 || !strings.Contains(r.stderr, `"demo-store"`) || !strings.Contains(r.stderr, "./demo-store") {
		t.Errorf("--store demo-store: exit %d, %q; want 2 and a hint to write ./demo-store", r.code, r.stderr)
	}
}

// dropElapsed removes the durations (…_seconds) of --json output.
func dropElapsed(s string) string {
	var keep []string
	for _, l := range strings.Split(s, "\n") {
		if !strings.Contains(l, `_seconds"`) {
			keep = append(keep, l)
		}
	}
	return strings.Join(keep, "\n")
}
