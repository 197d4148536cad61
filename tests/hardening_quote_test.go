package tests

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// noControl fails when out holds a character that acts on a terminal.
func noControl(t *testing.T, what, out string) {
	t.Helper()
	for _, r := range out {
		if (r < 0x20 && r != '\n') || r == 0x7f || (r >= 0x80 && r <= 0x9f) {
			t.Errorf("%s holds control character %U:\n%q", what, r, out)
			return
		}
	}
}

// TestHardeningQuotedNames: names from store content, gcroots and the
// command line reach text output with their control characters escaped
// (no escape sequence reaches the terminal, no newline forges a line);
// --json carries them as they are.
func TestHardeningQuotedNames(t *testing.T) {
	ns := buildNixStore(t, nixSpec{Paths: 12, Seed: 5})
	lone, _ := damageable(t, ns)
	if r := runInNS(t, ns.Root, "verify", "--check-contents"); r.code != 0 {
		t.Fatalf("clean store: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	p := lone[0]
	evil := "evil\x1b]0;pwned\x07\x1b[31m"
	forged := "x\nstorekeeper: all paths verified\r"
	dir := filepath.Join(ns.Root, p)
	os.Chmod(dir, 0o755)
	for _, n := range []string{evil, forged} {
		if err := os.WriteFile(filepath.Join(dir, n), []byte("x"), 0o444); err != nil {
			t.Fatal(err)
		}
	}
	os.Chmod(dir, 0o555)

	r := runInNS(t, ns.Root, "verify", "--check-contents")
	if r.code != 1 {
		t.Fatalf("exit %d on a damaged store\n%s%s", r.code, r.stdout, r.stderr)
	}
	noControl(t, "verify stdout", r.stdout)
	noControl(t, "verify stderr", r.stderr)
	for _, want := range []string{
		`added:   '` + p + `/evil\x1b]0;pwned\x07\x1b[31m'`,
		`added:   '` + p + `/x\nstorekeeper: all paths verified\r'`,
	} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("stdout lacks %q:\n%s", want, r.stdout)
		}
	}
	for _, l := range strings.Split(r.stdout+r.stderr, "\n") {
		if strings.HasPrefix(l, "storekeeper: all paths verified") {
			t.Errorf("a file name forged a line: %q", l)
		}
	}

	// JSON keeps the raw names.
	j := runInNS(t, ns.Root, "verify", "--check-contents", "--json")
	var res struct {
		Findings []struct{ Kind, Path, File string }
	}
	if err := json.Unmarshal(resultOf([]byte(j.stdout)), &res); err != nil {
		t.Fatalf("--json: %v\n%s", err, j.stdout)
	}
	files := map[string]bool{}
	for _, f := range res.Findings {
		files[f.File] = true
	}
	if !files[evil] || !files[forged] {
		t.Errorf("--json lost the raw names: %+v", res.Findings)
	}

	// A gc root with an escape sequence in its name.
	link := filepath.Join(ns.Root, "nix/var/nix/gcroots", "root\x1b[2J\nfake -> x")
	if err := os.Symlink(p, link); err != nil {
		t.Fatal(err)
	}
	r = runInNS(t, ns.Root, "roots", "--no-runtime")
	if r.code != 0 {
		t.Fatalf("roots: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	noControl(t, "roots stdout", r.stdout)
	if want := `/nix/var/nix/gcroots/root\x1b[2J\nfake -> x -> ` + p; !strings.Contains(r.stdout, want) {
		t.Errorf("roots stdout lacks %q:\n%s", want, r.stdout)
	}

	// An error naming a hostile argument.
	r = runInNS(t, ns.Root, "verify", "/nix/store/zzz\x1b[31m\nerror: forged")
	if r.code != 2 {
		t.Errorf("bad argument: exit %d, want 2\n%s", r.code, r.stderr)
	}
	noControl(t, "error stderr", r.stderr)
	if strings.Contains(r.stderr, "\nerror: forged") {
		t.Errorf("an argument forged a line:\n%s", r.stderr)
	}
}
