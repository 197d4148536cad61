package tests

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"

	"storekeeper/graph"
	"storekeeper/nix/nixconf"
	"storekeeper/store"
	"storekeeper/store/db"
)

var storePathRe = regexp.MustCompile(`/nix/store/[0-9a-df-np-sv-z]{32}-[^\s'"/]+`)

// copyStore copies a store root (cp -a keeps links, modes and mtimes).
func copyStore(t testing.TB, src string) string {
	t.Helper()
	dst := filepath.Join(t.TempDir(), "copy")
	if out, err := exec.Command("cp", "-a", src, dst).CombinedOutput(); err != nil {
		t.Fatalf("cp: %v %s", err, out)
	}
	return dst
}

// validPaths reads ValidPaths of the store under root.
func validPaths(t testing.TB, root string) []string {
	t.Helper()
	lay, _ := store.ResolveLayout(store.LayoutOptions{StoreURI: "local?root=" + root})
	s, err := store.Open(context.Background(), store.Options{Layout: lay, Settings: nixconf.Default(true), ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	g, err := s.LoadGraph(context.Background(), db.GraphOptions{})
	if err != nil {
		t.Fatal(err)
	}
	out := make([]string, g.Len())
	for i := range out {
		out[i] = g.Path(graph.PathID(i))
	}
	sort.Strings(out)
	return out
}

func entries(t testing.TB, root string) []string {
	t.Helper()
	ents, err := os.ReadDir(filepath.Join(root, "nix/store"))
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range ents {
		if e.Name() != ".links" && e.Name() != "trash" {
			out = append(out, e.Name())
		}
	}
	sort.Strings(out)
	return out
}

func deadSet(out string) map[string]bool {
	m := map[string]bool{}
	for _, p := range storePathRe.FindAllString(out, -1) {
		m[p] = true
	}
	return m
}

// TestInteropGCMatchesNix: on copies of one store written by real Nix,
// `storekeeper gc --print-dead` prints Nix's dead set and a full
// `storekeeper gc` leaves the same valid paths and store entries as
// `nix-store --gc`, and a store nix-store --verify accepts; with the
// default settings and with keep-outputs = true.
func TestInteropGCMatchesNix(t *testing.T) {
	for _, conf := range []string{"", "keep-outputs = true\n", "keep-derivations = false\n"} {
		t.Run(strings.TrimSpace(conf), func(t *testing.T) {
			ns := buildNixStore(t, nixSpec{Paths: 80, Seed: 21, Roots: 6, Gens: 3, Leftover: 3, NixConf: conf})
			a, b := copyStore(t, ns.Root), copyStore(t, ns.Root)
			nixDead := deadSet(runNS(t, a, nil, "nix-store", "--gc", "--print-dead"))
			ours := runInNS(t, b, "gc", "--print-dead")
			if ours.code != 0 {
				t.Fatalf("gc --print-dead: exit %d: %s", ours.code, ours.stderr)
			}
			ourDead := deadSet(ours.stdout)
			if len(nixDead) == 0 {
				t.Fatal("Nix finds nothing dead: the fixture tests nothing")
			}
			if onlyNix, onlyUs := diffSets(nixDead, ourDead); len(onlyNix)+len(onlyUs) > 0 {
				t.Fatalf("dead sets differ\nonly nix: %v\nonly storekeeper: %v", onlyNix, onlyUs)
			}
			// --print-live: Nix's live set, sorted, one a line.
			nixLive := deadSet(runNS(t, a, nil, "nix-store", "--gc", "--print-live"))
			live := runInNS(t, b, "gc", "--print-live")
			if live.code != 0 {
				t.Fatalf("gc --print-live: exit %d: %s", live.code, live.stderr)
			}
			if onlyNix, onlyUs := diffSets(nixLive, deadSet(live.stdout)); len(onlyNix)+len(onlyUs) > 0 || len(nixLive) == 0 {
				t.Fatalf("live sets differ\nonly nix: %v\nonly storekeeper: %v", onlyNix, onlyUs)
			}
			lines := strings.Split(strings.TrimSpace(live.stdout), "\n")
			if !sort.StringsAreSorted(lines) || len(lines) != len(nixLive) {
				t.Errorf("gc --print-live: %d lines, sorted %v; want %d sorted paths", len(lines), sort.StringsAreSorted(lines), len(nixLive))
			}
			runNS(t, a, nil, "nix-store", "--gc")
			res := runInNS(t, b, "gc")
			if res.code != 0 {
				t.Fatalf("gc: exit %d: %s", res.code, res.stderr)
			}
			if !strings.Contains(res.stdout, "store paths deleted") {
				t.Errorf("no summary line: %q", res.stdout)
			}
			if va, vb := validPaths(t, a), validPaths(t, b); fmt.Sprint(va) != fmt.Sprint(vb) {
				t.Fatalf("valid paths differ: nix %d, storekeeper %d", len(va), len(vb))
			}
			if ea, eb := entries(t, a), entries(t, b); fmt.Sprint(ea) != fmt.Sprint(eb) {
				t.Fatalf("store entries differ:\nnix %v\nstorekeeper %v", ea, eb)
			}
			nixVerify(t, b)
		})
	}
}

// TestInteropGCConcurrentClients: while storekeeper gc holds gc.lock (held
// at its sync point), real Nix clients register roots through its socket:
// a new `nix-store --add` completes, and re-adding a dead path (which
// makes Nix send it as a temp root) keeps that path alive.
func TestInteropGCConcurrentClients(t *testing.T) {
	ns := buildNixStore(t, nixSpec{Paths: 20, Seed: 4, Roots: 2})
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "old.txt"), []byte("added before the collection, no root\n"), 0o644)
	os.WriteFile(filepath.Join(dir, "new.txt"), []byte("added during the collection\n"), 0o644)
	oldPath := strings.TrimSpace(runNS(t, ns.Root, nil, "nix-store", "--add", filepath.Join(dir, "old.txt")))
	script := `
mkfifo "$DIR/sync"
_STOREKEEPER_TEST_GC_SYNC="$DIR/sync" "$BIN" gc --verbose > "$DIR/gc.out" 2> "$DIR/gc.err" &
gc=$!
i=0; while [ ! -S /nix/var/nix/gc-socket/socket ] && [ $i -lt 100 ]; do sleep 0.05; i=$((i+1)); done
[ -S /nix/var/nix/gc-socket/socket ] || { echo "no socket"; exit 1; }
timeout 20 nix-store --add "$DIR/new.txt" > "$DIR/new.path" || { echo "add new failed"; exit 1; }
timeout 20 nix-store --add "$DIR/old.txt" > "$DIR/old.path" || { echo "add old failed"; exit 1; }
echo go > "$DIR/sync"
wait $gc; echo "GC $?"
`
	cmd := nsScript(ns.Root, script)
	cmd.Env = append(cmd.Env, "DIR="+dir, "BIN="+binary)
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "GC 0") {
		e, _ := os.ReadFile(filepath.Join(dir, "gc.err"))
		t.Fatalf("%v\n%s\ngc stderr:\n%s", err, out, e)
	}
	newPath, _ := os.ReadFile(filepath.Join(dir, "new.path"))
	valid := map[string]bool{}
	for _, p := range validPaths(t, ns.Root) {
		valid[p] = true
	}
	for _, p := range []string{strings.TrimSpace(string(newPath)), oldPath} {
		if !valid[p] {
			t.Errorf("%s was registered through the gc socket during the collection but is not valid after it", p)
		}
		if _, err := os.Lstat(filepath.Join(ns.Root, p)); err != nil {
			t.Errorf("%s is gone from disk: %v", p, err)
		}
	}
	gcOut, _ := os.ReadFile(filepath.Join(dir, "gc.out"))
	if !strings.Contains(string(gcOut), "store paths deleted") {
		t.Errorf("the collection did not run: %s", gcOut)
	}
	nixVerify(t, ns.Root)
}

// TestInteropRuntimeRootKeepsPathAlive: a process whose cwd is inside a
// dead path keeps it alive through the collection.
func TestInteropRuntimeRootKeepsPathAlive(t *testing.T) {
	ns := buildNixStore(t, nixSpec{Paths: 16, Seed: 6, Roots: 1})
	dead := deadSet(runInNS(t, ns.Root, "gc", "--print-dead").stdout)
	var victim string
	for p := range dead {
		if fi, err := os.Stat(filepath.Join(ns.Root, p)); err == nil && fi.IsDir() {
			victim = p
		}
	}
	if victim == "" {
		t.Fatal("no dead directory")
	}
	script := `
cd "$VICTIM" && { sleep 30 & }
sleeper=$!
cd /
i=0; while [ "$(readlink /proc/$sleeper/cwd)" = "" ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i+1)); done
"$BIN" gc; echo "GC $?"
kill $sleeper
`
	cmd := nsScript(ns.Root, script)
	cmd.Env = append(cmd.Env, "VICTIM="+victim, "BIN="+binary)
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "GC 0") {
		t.Fatalf("%v\n%s", err, out)
	}
	found := false
	for _, p := range validPaths(t, ns.Root) {
		found = found || p == victim
	}
	if !found {
		t.Fatalf("%s was in use by a process but was collected", victim)
	}
}

// TestInteropGCCrashSafety kills the collector with SIGKILL at random
// instants spread over all its phases (50 trials). After each kill, real
// `nix-store --verify --check-contents` accepts the store, no live path
// is gone, and the next run ends in the same state as an uninterrupted
// collection.
func TestInteropGCCrashSafety(t *testing.T) {
	if testing.Short() {
		t.Skip("-short")
	}
	ns := buildNixStore(t, nixSpec{Paths: 150, Seed: 8, Files: 4, Roots: 4, Gens: 2, Leftover: 4})
	// The uninterrupted outcome.
	ref := copyStore(t, ns.Root)
	start := time.Now()
	if r := runInNS(t, ref, "gc", "--batch-size", "16"); r.code != 0 {
		t.Fatalf("gc: %s", r.stderr)
	}
	full := time.Since(start)
	wantValid, wantEntries := fmt.Sprint(validPaths(t, ref)), fmt.Sprint(entries(t, ref))
	live := validPaths(t, ref)
	t.Logf("uninterrupted collection: %v", full)

	rng := rand.New(rand.NewPCG(42, 42))
	phases := map[string]int{}
	trials := 50
	for i := 0; i < trials; i++ {
		root := copyStore(t, ns.Root)
		delay := time.Duration(rng.Float64() * 0.8 * float64(full))
		errFile := filepath.Join(t.TempDir(), "err")
		cmd := nsScript(root, `exec "$@" > /dev/null 2> "$ERR"`, binary, "gc", "--verbose", "--batch-size", "16")
		cmd.Env = append(cmd.Env, "ERR="+errFile)
		killAfter(t, cmd, delay)
		errText, _ := os.ReadFile(errFile)
		phase := "start"
		for _, m := range regexp.MustCompile(`phase: (\w+)`).FindAllStringSubmatch(string(errText), -1) {
			phase = m[1]
		}
		phases[phase]++
		nixVerify(t, root)
		valid := map[string]bool{}
		for _, p := range validPaths(t, root) {
			valid[p] = true
		}
		for _, p := range live {
			if !valid[p] {
				t.Fatalf("trial %d (killed in %s): live path %s was invalidated", i, phase, p)
			}
			if _, err := os.Lstat(filepath.Join(root, p)); err != nil {
				t.Fatalf("trial %d (killed in %s): live path %s is gone", i, phase, p)
			}
		}
		if r := runInNS(t, root, "gc", "--batch-size", "16"); r.code != 0 {
			t.Fatalf("trial %d: the run after the kill failed: %s", i, r.stderr)
		}
		if v, e := fmt.Sprint(validPaths(t, root)), fmt.Sprint(entries(t, root)); v != wantValid || e != wantEntries {
			t.Fatalf("trial %d (killed in %s): the next run does not end like an uninterrupted one", i, phase)
		}
		os.RemoveAll(root)
	}
	t.Logf("kills by phase reached: %v", phases)
	if len(phases) < 4 {
		t.Errorf("kills reached only %d phases (%v): spread the delays", len(phases), phases)
	}
}
