package tests

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
)

// rootLinesInOrder is the "LINK -> /nix/store/..." lines of a roots
// listing, in the order printed.
func rootLinesInOrder(out string) []string {
	var lines []string
	for _, l := range strings.Split(out, "\n") {
		if strings.Contains(l, " -> /nix/store/") {
			lines = append(lines, l)
		}
	}
	return lines
}

// deadOutput returns an output path of ns that `nix-store --gc
// --print-dead` lists (a directory, so its loss is plain to see).
func deadOutput(t *testing.T, ns *nixStore) string {
	t.Helper()
	dead := deadSet(runNS(t, ns.Root, nil, "nix-store", "--gc", "--print-dead"))
	var out []string
	for _, outs := range ns.Outputs {
		for _, p := range outs {
			if fi, err := os.Stat(filepath.Join(ns.Root, p)); dead[p] && err == nil && fi.IsDir() {
				out = append(out, p)
			}
		}
	}
	if len(out) == 0 {
		t.Fatal("Nix finds no dead output directory: the fixture tests nothing")
	}
	sort.Strings(out)
	return out[0]
}

func isValid(t *testing.T, root, p string) bool {
	t.Helper()
	for _, v := range validPaths(t, root) {
		if v == p {
			return true
		}
	}
	return false
}

// TestHardeningDeepRootKept: a root 100 directories deep under gcroots/
// (beyond the 64 levels storekeeper used to search) is a root, as it is
// for Nix: `storekeeper roots` lists it with Nix's lines in Nix's order,
// and `storekeeper gc` keeps the path it roots, which is otherwise dead.
func TestHardeningDeepRootKept(t *testing.T) {
	ns := buildNixStore(t, nixSpec{Paths: 24, Seed: 41, Roots: 2, Gens: 1})
	victim := deadOutput(t, ns)
	rel := strings.Repeat("deep/", 100) + "result"
	physLink := filepath.Join(ns.Root, "nix/var/nix/gcroots", rel)
	mustMkdir(t, filepath.Dir(physLink))
	mustSymlink(t, victim, physLink)
	link := "/nix/var/nix/gcroots/" + rel // as seen in the namespace

	ours := runInNS(t, ns.Root, "roots")
	if ours.code != 0 {
		t.Fatalf("storekeeper roots: exit %d\n%s", ours.code, ours.stderr)
	}
	// Nix removes the fixture's stale gcroots/auto link while listing:
	// it runs after storekeeper, which leaves it alone.
	nix := runNS(t, ns.Root, nil, "nix-store", "--gc", "--print-roots")
	want := link + " -> " + victim
	if !rootLines(nix)[want] {
		t.Fatalf("nix-store --gc --print-roots does not list the deep root %q (harness problem?):\n%s", want, nix)
	}
	if !rootLines(ours.stdout)[want] {
		t.Fatalf("storekeeper roots does not list the deep root %q:\n%s\nstderr:\n%s", want, ours.stdout, ours.stderr)
	}
	if a, b := rootLinesInOrder(nix), rootLinesInOrder(ours.stdout); strings.Join(a, "\n") != strings.Join(b, "\n") {
		t.Fatalf("roots differ from Nix's (lines or order)\nnix:\n%s\nstorekeeper:\n%s", strings.Join(a, "\n"), strings.Join(b, "\n"))
	}

	dead := runInNS(t, ns.Root, "gc", "--print-dead")
	if dead.code != 0 {
		t.Fatalf("gc --print-dead: exit %d\n%s", dead.code, dead.stderr)
	}
	if deadSet(dead.stdout)[victim] {
		t.Errorf("gc --print-dead lists %s, which the deep root keeps", victim)
	}
	if len(deadSet(dead.stdout)) == 0 {
		t.Fatal("nothing else is dead: the collection below tests nothing")
	}
	res := runInNS(t, ns.Root, "gc")
	if res.code != 0 {
		t.Fatalf("gc: exit %d\n%s", res.code, res.stderr)
	}
	if !strings.Contains(res.stdout, "store paths deleted") {
		t.Fatalf("the collection did not run: %s", res.stdout)
	}
	if _, err := os.Lstat(filepath.Join(ns.Root, victim)); err != nil {
		t.Errorf("%s, rooted 100 directories deep, is gone from disk: %v", victim, err)
	}
	if !isValid(t, ns.Root, victim) {
		t.Errorf("%s, rooted 100 directories deep, is no longer valid", victim)
	}
	nixVerify(t, ns.Root)
}

// TestHardeningRootsBindLoop: a directory under gcroots/ that is gcroots
// itself again (a bind mount) is a tree storekeeper refuses to walk:
// `storekeeper roots` and `storekeeper gc` exit 2 naming the directory,
// and gc deletes nothing.
func TestHardeningRootsBindLoop(t *testing.T) {
	ns := buildNixStore(t, nixSpec{Paths: 16, Seed: 43, Roots: 2})
	deadOutput(t, ns) // there is garbage a collection would delete
	mustMkdir(t, filepath.Join(ns.Root, "nix/var/nix/gcroots/loop/inner"))
	validBefore, entriesBefore := validPaths(t, ns.Root), entries(t, ns.Root)
	const mountLoop = `mount --bind /nix/var/nix/gcroots /nix/var/nix/gcroots/loop/inner || exit 98
exec "$@"`
	for _, args := range [][]string{{"roots"}, {"gc"}} {
		r := runCmd(t, nsScript(ns.Root, mountLoop, append([]string{binary}, args...)...), args)
		t.Logf("%v: exit %d: %s", args, r.code, strings.TrimSpace(r.stderr))
		if r.code != 2 {
			t.Fatalf("%v with a bind-mount loop under gcroots: exit %d, want 2\nstdout:\n%s\nstderr:\n%s", args, r.code, r.stdout, r.stderr)
		}
		if !strings.Contains(r.stderr, "/nix/var/nix/gcroots/loop/inner") || !strings.Contains(r.stderr, "loop") {
			t.Errorf("%v: the error does not name the looping directory:\n%s", args, r.stderr)
		}
	}
	if v := validPaths(t, ns.Root); fmt.Sprint(v) != fmt.Sprint(validBefore) {
		t.Fatalf("gc invalidated paths although it could not read the roots: %d valid before, %d after", len(validBefore), len(v))
	}
	if e := entries(t, ns.Root); fmt.Sprint(e) != fmt.Sprint(entriesBefore) {
		t.Fatalf("gc deleted store entries although it could not read the roots: %d before, %d after", len(entriesBefore), len(e))
	}
}
