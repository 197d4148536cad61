package tests

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"
)

func diffSets(a, b map[string]bool) (onlyA, onlyB []string) {
	for k := range a {
		if !b[k] {
			onlyA = append(onlyA, k)
		}
	}
	for k := range b {
		if !a[k] {
			onlyB = append(onlyB, k)
		}
	}
	sort.Strings(onlyA)
	sort.Strings(onlyB)
	return
}

// TestInteropRootsMatchNix: on a store written by real Nix, `storekeeper
// roots` prints exactly the lines `nix-store --gc --print-roots` prints,
// and leaves the stale gcroots/auto link alone (Nix removes it).
func TestInteropRootsMatchNix(t *testing.T) {
	ns := buildNixStore(t, nixSpec{Paths: 40, Seed: 3, Roots: 8, Gens: 3})
	autoDir := filepath.Join(ns.Root, "nix/var/nix/gcroots/auto")
	before, _ := os.ReadDir(autoDir)

	ours := runInNS(t, ns.Root, "roots")
	if ours.code != 0 {
		t.Fatalf("storekeeper roots: exit %d\n%s", ours.code, ours.stderr)
	}
	after, _ := os.ReadDir(autoDir)
	if len(after) != len(before) {
		t.Fatalf("storekeeper roots changed gcroots/auto: %d entries before, %d after", len(before), len(after))
	}
	if !strings.Contains(ours.stderr, "stale link") {
		t.Errorf("the stale gcroots/auto link was not reported; stderr:\n%s", ours.stderr)
	}
	nix := runNS(t, ns.Root, nil, "nix-store", "--gc", "--print-roots")
	a, b := rootLines(nix), rootLines(ours.stdout)
	if len(a) == 0 {
		t.Fatalf("nix printed no roots:\n%s", nix)
	}
	if onlyNix, onlyUs := diffSets(a, b); len(onlyNix)+len(onlyUs) > 0 {
		t.Fatalf("roots differ from nix-store --gc --print-roots\nonly nix: %v\nonly storekeeper: %v", onlyNix, onlyUs)
	}
	// Same order too: Nix sorts by link then target.
	var ourOrder []string
	for _, l := range strings.Split(strings.TrimSpace(ours.stdout), "\n") {
		ourOrder = append(ourOrder, l)
	}
	if !sort.StringsAreSorted(ourOrder) {
		t.Errorf("roots output is not sorted:\n%s", ours.stdout)
	}
}

// TestInteropRuntimeAndTempRoots: a process whose cwd is inside a store
// path is a runtime root with its pid; a temp root registered by a real
// Nix client shows as {temp:PID}. Both tools agree.
func TestInteropRuntimeAndTempRoots(t *testing.T) {
	ns := buildNixStore(t, nixSpec{Paths: 12, Seed: 5, Roots: 2})
	// A path no root holds.
	victim := ns.Outputs[1]["out"]
	script := `
cd "$VICTIM" 2>/dev/null || cd "$(dirname "$VICTIM")"
sleep 30 &
sleeper=$!
cd /
# wait until the sleeper has its cwd
i=0; while [ "$(readlink /proc/$sleeper/cwd)" = "" ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i+1)); done
echo "PID $sleeper"
"$BIN" roots --json > "$OUT/ours.json" 2>"$OUT/ours.err"; echo "RC $?"
nix-store --gc --print-roots > "$OUT/nix.txt" 2>/dev/null
kill $sleeper
`
	out := t.TempDir()
	cmd := nsScript(ns.Root, script)
	cmd.Env = append(cmd.Env, "VICTIM="+victim, "BIN="+binary, "OUT="+out)
	res, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%v\n%s", err, res)
	}
	var pid int
	var rc int
	for _, l := range strings.Split(string(res), "\n") {
		fmt.Sscanf(l, "PID %d", &pid)
		fmt.Sscanf(l, "RC %d", &rc)
	}
	if rc != 0 {
		e, _ := os.ReadFile(filepath.Join(out, "ours.err"))
		t.Fatalf("storekeeper roots --json exit %d: %s", rc, e)
	}
	var doc struct {
		Roots []struct {
			Kind, Link, Target, Via, Command string
			PID                              int
		}
	}
	data, _ := os.ReadFile(filepath.Join(out, "ours.json"))
	if err := json.Unmarshal(resultOf(data), &doc); err != nil {
		t.Fatalf("bad JSON: %v\n%s", err, data)
	}
	found := false
	for _, r := range doc.Roots {
		if r.Kind == "runtime" && r.PID == pid && r.Target == victim && r.Via == "cwd" {
			found = true
			if r.Link != fmt.Sprintf("/proc/%d/cwd", pid) || !strings.Contains(r.Command, "sleep") {
				t.Errorf("runtime root has link %q command %q", r.Link, r.Command)
			}
		}
	}
	if !found {
		t.Fatalf("no runtime root for pid %d (cwd in %s) in:\n%s", pid, victim, data)
	}
	nixOut, _ := os.ReadFile(filepath.Join(out, "nix.txt"))
	want := fmt.Sprintf("/proc/%d/cwd -> %s", pid, victim)
	if !strings.Contains(string(nixOut), want) {
		t.Errorf("nix-store --print-roots does not show %q (harness problem?):\n%s", want, nixOut)
	}
}

// TestRuntimeRootChrootStore: a store under another root (--store DIR),
// seen from outside: a process whose cwd is the physical path of a store
// path is a runtime root of the logical path.
func TestRuntimeRootChrootStore(t *testing.T) {
	root := t.TempDir()
	b := buildDemo(t, root)
	victim := b.Outputs[2]["out"]
	sleeper := exec.Command("sleep", "30")
	sleeper.Dir = filepath.Join(root, victim)
	if err := sleeper.Start(); err != nil {
		t.Fatal(err)
	}
	defer sleeper.Process.Kill()
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		if l, _ := os.Readlink(fmt.Sprintf("/proc/%d/cwd", sleeper.Process.Pid)); l != "" {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	r := run(t, "--store", root, "roots")
	if r.code != 0 {
		t.Fatalf("exit %d: %s", r.code, r.stderr)
	}
	want := fmt.Sprintf("/proc/%d/cwd -> %s", sleeper.Process.Pid, victim)
	if !strings.Contains(r.stdout, want) {
		t.Fatalf("missing %q in:\n%s", want, r.stdout)
	}
}
