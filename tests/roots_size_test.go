package tests

import (
	"encoding/json"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// sizeRoot is one root of `roots size --json`.
type sizeRoot struct {
	Kind            string   `json:"kind"`
	Link            string   `json:"link"`
	Target          string   `json:"target"`
	Owner           string   `json:"owner"`
	ClosurePaths    int      `json:"closure_paths"`
	ClosureNarBytes uint64   `json:"closure_nar_bytes"`
	ClosureBytes    uint64   `json:"closure_bytes"`
	FreedPaths      int      `json:"freed_paths"`
	FreedBytes      uint64   `json:"freed_bytes"`
	Freed           []string `json:"freed"`
	Profile         string   `json:"profile"`
	Generation      int      `json:"generation"`
	Current         bool     `json:"current"`
}

// sizeEnvelope is `roots size --json`'s envelope.
type sizeEnvelope struct {
	Command string `json:"command"`
	OK      bool   `json:"ok"`
	Result  struct {
		Roots    []sizeRoot `json:"roots"`
		Profiles []struct {
			Profile     string `json:"profile"`
			Current     int    `json:"current"`
			Generations []struct {
				Generation int    `json:"generation"`
				Current    bool   `json:"current"`
				Link       string `json:"link"`
				FreedBytes uint64 `json:"freed_bytes"`
			} `json:"generations"`
		} `json:"profiles"`
		Shared []struct {
			Path       string `json:"path"`
			Paths      int    `json:"paths"`
			FreedBytes uint64 `json:"freed_bytes"`
			Roots      []int  `json:"roots"`
		} `json:"shared"`
		DeadPaths    int      `json:"dead_paths"`
		DeadBytes    uint64   `json:"dead_bytes"`
		DeadMeasured bool     `json:"dead_measured"`
		Warnings     []string `json:"warnings"`
		Totals       struct {
			Roots      int    `json:"roots"`
			Paths      int    `json:"paths"`
			LivePaths  int    `json:"live_paths"`
			LiveBytes  uint64 `json:"live_bytes"`
			FreedBytes uint64 `json:"freed_bytes"`
		} `json:"totals"`
	} `json:"result"`
}

func parseSizeEnvelope(t *testing.T, out string) sizeEnvelope {
	t.Helper()
	var env sizeEnvelope
	if err := json.Unmarshal([]byte(out), &env); err != nil {
		t.Fatalf("roots size --json: bad JSON: %v\n%s", err, tail(out, 3000))
	}
	if !env.OK || env.Command != "roots size" {
		t.Fatalf("roots size --json: ok %v, command %q", env.OK, env.Command)
	}
	return env
}

// storeUsage is an independent measurement of a store directory: the
// allocated bytes of its files (every entry that is not a directory,
// .links included), each inode once; its entries (but .links); and, per
// inode with several links, the entries holding it.
type storeUsage struct {
	bytes   uint64
	entries map[string]bool
	holders map[uint64]map[string]bool
}

func measureStore(t *testing.T, root string) storeUsage {
	t.Helper()
	dir := filepath.Join(root, "nix/store")
	u := storeUsage{entries: map[string]bool{}, holders: map[uint64]map[string]bool{}}
	seen := map[uint64]bool{}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		top, _, _ := strings.Cut(rel, string(filepath.Separator))
		if rel != "." && top != ".links" && !strings.Contains(rel, string(filepath.Separator)) {
			u.entries[top] = true
		}
		if d.IsDir() {
			return nil
		}
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			return err
		}
		if !seen[st.Ino] {
			seen[st.Ino] = true
			u.bytes += uint64(st.Blocks) * 512
		}
		if st.Nlink > 1 {
			if u.holders[st.Ino] == nil {
				u.holders[st.Ino] = map[string]bool{}
			}
			u.holders[st.Ino][top] = true
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return u
}

// removeRoot removes root r alone from the store under root, as an admin
// would: a generation with real nix-env --delete-generations, a direct
// root by removing its link, an indirect one by removing its
// gcroots/auto entry (the link it names is outside the store's tree and
// shared by every copy).
func removeRoot(t *testing.T, root string, r sizeRoot) {
	t.Helper()
	switch {
	case r.Kind == "profile" && r.Generation > 0:
		runNS(t, root, nil, "nix-env", "--profile", r.Profile, "--delete-generations", fmt.Sprint(r.Generation))
		if _, err := os.Lstat(filepath.Join(root, r.Link)); !os.IsNotExist(err) {
			t.Fatalf("nix-env --delete-generations %d left %s: %v", r.Generation, r.Link, err)
		}
	case r.Kind == "direct":
		if err := os.Remove(filepath.Join(root, r.Link)); err != nil {
			t.Fatal(err)
		}
	case r.Kind == "indirect":
		auto := filepath.Join(root, "nix/var/nix/gcroots/auto")
		ents, err := os.ReadDir(auto)
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range ents {
			if l, _ := os.Readlink(filepath.Join(auto, e.Name())); l == r.Link {
				if err := os.Remove(filepath.Join(auto, e.Name())); err != nil {
					t.Fatal(err)
				}
				return
			}
		}
		t.Fatalf("no gcroots/auto entry for %s", r.Link)
	default:
		t.Fatalf("cannot remove a %s root", r.Kind)
	}
}

// TestRootsSizePredictsGC: with stores written by real Nix, plain and
// after nix-store --optimise (files hard-linked into .links and shared
// between roots' paths), `roots size` predicts what removing one root
// (a gcroots link, an indirect root, a profile generation deleted by
// nix-env) and running real nix-store --gc frees: the paths deleted are
// exactly the ones predicted, and the bytes freed (measured
// independently: each file's blocks once, before and after) are the
// prediction, within 1%. Every root is tried on its own copy of the
// store, collected first so that only the root's paths go.
func TestRootsSizePredictsGC(t *testing.T) {
	for _, optimised := range []bool{false, true} {
		name := "plain"
		if optimised {
			name = "optimised"
		}
		t.Run(name, func(t *testing.T) {
			ns := buildNixStore(t, nixSpec{Paths: 70, Seed: 33, Roots: 10, Gens: 5, Files: 3, Salt: "roots-size-" + name})
			base := ns.Root
			if optimised {
				runNS(t, base, nil, "nix-store", "--optimise")
			}

			// With dead paths, measured (--dead): removing the root that
			// frees most and collecting deletes the dead paths and its
			// own, and frees the dead bytes and its freed bytes.
			{
				c := copyStore(t, base)
				r := runInNS(t, c, "--json", "roots", "size", "--paths", "--dead")
				if r.code != 0 {
					t.Fatalf("roots size --dead: exit %d\n%s", r.code, r.stderr)
				}
				rep := parseSizeEnvelope(t, r.stdout).Result
				dead := deadSet(runNS(t, c, nil, "nix-store", "--gc", "--print-dead"))
				if !rep.DeadMeasured || rep.DeadPaths != len(dead) || len(dead) == 0 || rep.DeadBytes == 0 {
					t.Fatalf("--dead: %d dead paths, %d bytes, measured %v; nix-store --gc --print-dead: %d", rep.DeadPaths, rep.DeadBytes, rep.DeadMeasured, len(dead))
				}
				x := rep.Roots[0]
				before := measureStore(t, c)
				removeRoot(t, c, x)
				runNS(t, c, nil, "nix-store", "--gc")
				after := measureStore(t, c)
				want := map[string]bool{}
				for p := range dead {
					want[p] = true
				}
				for _, p := range x.Freed {
					want[p] = true
				}
				var deleted []string
				for e := range before.entries {
					if !after.entries[e] {
						deleted = append(deleted, "/nix/store/"+e)
					}
				}
				if onlyWant, onlyDeleted := diffSets(want, deadSet(strings.Join(deleted, "\n"))); len(onlyWant)+len(onlyDeleted) > 0 {
					t.Errorf("%s with the dead paths: predicted but kept %v; deleted but not predicted %v", x.Link, onlyWant, onlyDeleted)
				}
				freed, predicted := before.bytes-after.bytes, rep.DeadBytes+x.FreedBytes
				if diff := max(freed, predicted) - min(freed, predicted); diff*100 > predicted {
					t.Errorf("%s with the dead paths: predicted %d+%d bytes freed, nix-store --gc freed %d", x.Link, rep.DeadBytes, x.FreedBytes, freed)
				}
				t.Logf("with %d dead paths: %s, predicted %d+%d bytes, freed %d", len(dead), x.Link, rep.DeadBytes, x.FreedBytes, freed)
			}

			runNS(t, base, nil, "nix-store", "--gc")
			r := runInNS(t, base, "--json", "roots", "size", "--paths")
			if r.code != 0 {
				t.Fatalf("roots size: exit %d\n%s", r.code, r.stderr)
			}
			env := parseSizeEnvelope(t, r.stdout)
			rep := env.Result
			if rep.DeadPaths != 0 || rep.DeadBytes != 0 || rep.DeadMeasured {
				t.Errorf("after nix-store --gc: %d dead paths, %d dead bytes, measured %v; want none, not measured", rep.DeadPaths, rep.DeadBytes, rep.DeadMeasured)
			}
			all := measureStore(t, base)
			if rep.Totals.LivePaths != len(all.entries) || rep.Totals.Paths != len(all.entries) {
				t.Errorf("totals: %d live of %d paths; the store has %d entries", rep.Totals.LivePaths, rep.Totals.Paths, len(all.entries))
			}
			for i := 1; i < len(rep.Roots); i++ {
				if rep.Roots[i].FreedBytes > rep.Roots[i-1].FreedBytes {
					t.Fatalf("roots not sorted by freed bytes: %d then %d", rep.Roots[i-1].FreedBytes, rep.Roots[i].FreedBytes)
				}
			}
			// Every generation is a root with its profile, number and
			// current flag, and grouped under its profile.
			gens, curGens := 0, 0
			for _, x := range rep.Roots {
				if x.Kind == "profile" && x.Generation > 0 {
					gens++
					if x.Current {
						curGens++
					}
				}
			}
			if gens != 5 || curGens != 1 || len(rep.Profiles) != 1 || len(rep.Profiles[0].Generations) != 5 || rep.Profiles[0].Current != 5 {
				t.Fatalf("generations: %d roots (%d current), profiles %+v; want 5, the current one 5", gens, curGens, rep.Profiles)
			}

			// The roots to remove: every root that frees something, one
			// that frees nothing, and the generations but the current one.
			var picks []sizeRoot
			nothing := false
			for _, x := range rep.Roots {
				switch {
				case x.Kind == "profile" && x.Current:
				case x.Kind == "profile" && x.Generation > 0, x.FreedPaths > 0:
					picks = append(picks, x)
				case !nothing && (x.Kind == "direct" || x.Kind == "indirect"):
					nothing = true
					picks = append(picks, x)
				}
			}
			kinds := map[string]int{}
			sharedFiles, genFreed := 0, 0
			for _, x := range picks {
				before, after, deleted := checkRemoval(t, base, x)
				kinds[x.Kind]++
				if x.Generation > 0 && x.FreedPaths > 0 {
					genFreed++
				}
				// Files of the deleted paths also linked from a path
				// that stays: the hard-link rule at work.
				gone := map[string]bool{}
				for _, p := range deleted {
					gone[filepath.Base(p)] = true
				}
				for _, hs := range before.holders {
					in, out := false, false
					for h := range hs {
						if gone[h] {
							in = true
						} else if after.entries[h] {
							out = true
						}
					}
					if in && out {
						sharedFiles++
					}
				}
			}
			if kinds["direct"] == 0 || kinds["indirect"] == 0 || kinds["profile"] < 4 || genFreed == 0 || !nothing {
				t.Errorf("the fixture does not try every kind of root: %v, %d generations that free something, one that frees nothing: %v", kinds, genFreed, nothing)
			}
			if optimised && sharedFiles == 0 {
				t.Errorf("optimised: no deleted path shares a file with a path that stays: the hard-link rule was not tried")
			}
			t.Logf("%d roots tried (%v); %d files shared between deleted paths and paths that stay", len(picks), kinds, sharedFiles)
		})
	}
}

// checkRemoval removes root x alone from a copy of the store under base,
// runs real nix-store --gc, and checks that it deleted exactly the paths
// roots size predicted (x.Freed, from --paths) and freed x.FreedBytes
// within 1% (files measured before and after, each inode once). It
// returns the measurements and the paths deleted, sorted.
func checkRemoval(t *testing.T, base string, x sizeRoot) (before, after storeUsage, deleted []string) {
	t.Helper()
	c := copyStore(t, base)
	before = measureStore(t, c)
	removeRoot(t, c, x)
	runNS(t, c, nil, "nix-store", "--gc")
	after = measureStore(t, c)
	for e := range before.entries {
		if !after.entries[e] {
			deleted = append(deleted, "/nix/store/"+e)
		}
	}
	sort.Strings(deleted)
	predicted := append([]string(nil), x.Freed...)
	if fmt.Sprint(deleted) != fmt.Sprint(predicted) || x.FreedPaths != len(predicted) {
		t.Errorf("%s (%s): predicted %d paths %v\nnix-store --gc deleted %v", x.Link, x.Kind, x.FreedPaths, predicted, deleted)
	}
	freed := before.bytes - after.bytes
	diff := max(freed, x.FreedBytes) - min(freed, x.FreedBytes)
	if diff*100 > x.FreedBytes {
		t.Errorf("%s (%s): predicted %d bytes freed, nix-store --gc freed %d", x.Link, x.Kind, x.FreedBytes, freed)
	}
	t.Logf("%s (%s, generation %d): %d paths, predicted %d bytes, freed %d", x.Link, x.Kind, x.Generation, len(deleted), x.FreedBytes, freed)
	return before, after, deleted
}

// TestRootsSizeKeepOutputsDrvRoot: with keep-outputs and keep-derivations
// on (a derivation and its outputs keep each other alive: cycles through
// keep-* edges), and a gcroots link to a derivation that was dead (a .drv
// root, which keeps its outputs through keep-outputs): removing that
// root, or the root that frees most, and running real nix-store --gc
// deletes exactly the predicted paths (the derivation with its outputs)
// and frees the predicted bytes.
func TestRootsSizeKeepOutputsDrvRoot(t *testing.T) {
	ns := buildNixStore(t, nixSpec{Paths: 40, Seed: 37, Roots: 5, Gens: 2, Salt: "roots-size-keep-outputs",
		NixConf: "keep-outputs = true\nkeep-derivations = true\n"})
	base := ns.Root
	// A dead derivation with a valid output.
	drv, out := "", ""
	for p := range deadSet(runNS(t, base, nil, "nix-store", "--gc", "--print-dead")) {
		if !strings.HasSuffix(p, ".drv") || (drv != "" && p > drv) {
			continue
		}
		for _, o := range strings.Fields(runNS(t, base, nil, "nix-store", "-q", "--outputs", p)) {
			if _, err := os.Lstat(filepath.Join(base, o)); err == nil {
				drv, out = p, o
				break
			}
		}
	}
	if drv == "" {
		t.Fatal("no dead derivation with a valid output: the fixture tries nothing")
	}
	const link = "/nix/var/nix/gcroots/a-drv-root"
	mustSymlink(t, drv, filepath.Join(base, link))
	runNS(t, base, nil, "nix-store", "--gc")
	r := runInNS(t, base, "--json", "roots", "size", "--paths")
	if r.code != 0 {
		t.Fatalf("roots size: exit %d\n%s", r.code, r.stderr)
	}
	var drvRoot, most sizeRoot
	for _, x := range parseSizeEnvelope(t, r.stdout).Result.Roots {
		switch {
		case x.Link == link:
			drvRoot = x
		case x.Current || x.Kind != "direct" && x.Kind != "indirect" && x.Kind != "profile":
		case x.FreedBytes > most.FreedBytes:
			most = x
		}
	}
	has := map[string]bool{}
	for _, p := range drvRoot.Freed {
		has[p] = true
	}
	if drvRoot.Target != drv || !has[drv] || !has[out] || most.Link == "" {
		t.Fatalf("the .drv root %s (output %s): %+v; the root that frees most: %+v", drv, out, drvRoot, most)
	}
	checkRemoval(t, base, drvRoot)
	checkRemoval(t, base, most)
}

// TestRootsSizeDeadUnusedLinks: with --dead, dead_bytes is what real
// nix-store --gc frees when no root is removed, also when .links holds
// entries nothing links to any more (a collection cut short, a path
// deleted by hand): the collector removes them too.
func TestRootsSizeDeadUnusedLinks(t *testing.T) {
	ns := buildNixStore(t, nixSpec{Paths: 30, Seed: 39, Roots: 3, Gens: 2, Salt: "roots-size-unused-links"})
	base := ns.Root
	runNS(t, base, nil, "nix-store", "--optimise")
	writeFileMode(t, filepath.Join(base, "nix/store/.links/0000000000000000000000000000000000000000000000000000"), make([]byte, 1<<20), 0o444)
	r := runInNS(t, base, "--json", "roots", "size", "--dead")
	if r.code != 0 {
		t.Fatalf("roots size --dead: exit %d\n%s", r.code, r.stderr)
	}
	rep := parseSizeEnvelope(t, r.stdout).Result
	before := measureStore(t, base)
	runNS(t, base, nil, "nix-store", "--gc")
	after := measureStore(t, base)
	freed := before.bytes - after.bytes
	if diff := max(freed, rep.DeadBytes) - min(freed, rep.DeadBytes); rep.DeadPaths == 0 || diff*100 > rep.DeadBytes {
		t.Errorf("%d dead paths: predicted %d bytes, nix-store --gc freed %d", rep.DeadPaths, rep.DeadBytes, freed)
	}
}

// TestRootsSizeOutputs: on a store written by real Nix (keep-derivations
// off, so that a root's closure is what nix-store -qR prints): every root
// `roots` lists is sized, its closure paths and NAR bytes are Nix's
// (-qR, -q --size); the text names each root once with hostile link names
// escaped; `roots --size` is `roots size`; --dot is a Graphviz digraph
// with a box per root and nothing unescaped; an unprivileged user gets
// the same JSON and changes nothing.
func TestRootsSizeOutputs(t *testing.T) {
	ns := buildNixStore(t, nixSpec{Paths: 40, Seed: 35, Roots: 6, Gens: 3, Salt: "roots-size-outputs", NixConf: "keep-derivations = false\n"})
	list := runInNS(t, ns.Root, "--json", "roots")
	if list.code != 0 {
		t.Fatalf("roots: exit %d\n%s", list.code, list.stderr)
	}
	var rootsEnv struct {
		Result struct {
			Roots []struct {
				Link   string `json:"link"`
				Target string `json:"target"`
			} `json:"roots"`
		} `json:"result"`
	}
	if err := json.Unmarshal([]byte(list.stdout), &rootsEnv); err != nil {
		t.Fatal(err)
	}
	// A hostile link name beside an existing root: a second link to its
	// target, so that both free nothing of it.
	target := rootsEnv.Result.Roots[0].Target
	hostile := "/nix/var/nix/gcroots/evil \"quoted\" \\back\\slash\n\x1b[31mred"
	mustSymlink(t, target, filepath.Join(ns.Root, hostile))

	r := runInNS(t, ns.Root, "--json", "roots", "size")
	if r.code != 0 {
		t.Fatalf("roots size --json: exit %d\n%s", r.code, r.stderr)
	}
	env := parseSizeEnvelope(t, r.stdout)
	rep := env.Result
	if len(rep.Roots) != len(rootsEnv.Result.Roots)+1 || rep.Totals.Roots != len(rep.Roots) {
		t.Fatalf("roots size sized %d roots (totals %d); roots lists %d, plus the hostile one", len(rep.Roots), rep.Totals.Roots, len(rootsEnv.Result.Roots))
	}
	closures := map[string][2]uint64{}
	for _, x := range rep.Roots {
		if x.Target == target && x.FreedPaths != 0 {
			// Its target has two links now: neither frees it.
			for _, f := range x.Freed {
				if f == target {
					t.Errorf("%q frees its target, which another link keeps", x.Link)
				}
			}
		}
		c, ok := closures[x.Target]
		if !ok {
			paths := strings.Fields(runNS(t, ns.Root, nil, "nix-store", "-qR", x.Target))
			var nar uint64
			for _, sz := range strings.Fields(runNS(t, ns.Root, nil, append([]string{"nix-store", "-q", "--size"}, paths...)...)) {
				var v uint64
				fmt.Sscan(sz, &v)
				nar += v
			}
			c = [2]uint64{uint64(len(paths)), nar}
			closures[x.Target] = c
		}
		if uint64(x.ClosurePaths) != c[0] || x.ClosureNarBytes != c[1] {
			t.Errorf("%q: closure %d paths, %d NAR bytes; nix-store -qR: %d paths, %d bytes", x.Link, x.ClosurePaths, x.ClosureNarBytes, c[0], c[1])
		}
		if x.ClosureBytes == 0 || x.FreedBytes > x.ClosureBytes || x.FreedPaths > x.ClosurePaths {
			t.Errorf("%q: closure %d bytes, frees %d bytes, %d of %d paths", x.Link, x.ClosureBytes, x.FreedBytes, x.FreedPaths, x.ClosurePaths)
		}
		if (x.Kind == "direct" || x.Kind == "profile") && x.Owner != "root" {
			t.Errorf("%q: owner %q, want root", x.Link, x.Owner)
		}
		if x.Link == hostile && (x.FreedPaths != 0 || x.FreedBytes != 0) {
			t.Errorf("the second link to %s frees %d paths", target, x.FreedPaths)
		}
	}

	// Text: a line per root, the hostile name escaped; the alias.
	text := runInNS(t, ns.Root, "roots", "size")
	if text.code != 0 {
		t.Fatalf("roots size: exit %d\n%s", text.code, text.stderr)
	}
	if strings.ContainsAny(text.stdout, "\x1b\r") || strings.Contains(text.stdout, "\nred") {
		t.Errorf("roots size printed a control character or a raw newline from a link name:\n%q", text.stdout)
	}
	if !strings.HasPrefix(text.stdout, "     FREED   PATHS    CLOSURE  ROOT\n") || !strings.Contains(text.stdout, "\nprofile /nix/var/nix/profiles/per-user/root/profile:\n") {
		t.Errorf("roots size: no table header or profile section:\n%s", text.stdout)
	}
	if n := strings.Count(text.stdout, " -> /nix/store/"); n != len(rep.Roots) {
		t.Errorf("roots size names %d roots, want %d:\n%s", n, len(rep.Roots), text.stdout)
	}
	if !strings.Contains(text.stdout, `evil "quoted" \\back\\slash\n\x1b[31mred -> `+target) {
		t.Errorf("the hostile link is not shown escaped:\n%s", text.stdout)
	}
	if alias := runInNS(t, ns.Root, "roots", "--size"); alias.code != 0 || alias.stdout != text.stdout {
		t.Errorf("roots --size (exit %d) differs from roots size:\n%s\nvs\n%s", alias.code, alias.stdout, text.stdout)
	}
	if bad := runInNS(t, ns.Root, "roots", "size", "--dot", "--json"); bad.code != 2 {
		t.Errorf("--dot --json: exit %d, want 2", bad.code)
	}

	// --dot: a box per root, an ellipse per shared path, every edge
	// between declared nodes, every label quoted strings only.
	dot := runInNS(t, ns.Root, "roots", "size", "--dot")
	if dot.code != 0 {
		t.Fatalf("roots size --dot: exit %d\n%s", dot.code, dot.stderr)
	}
	out := dot.stdout
	if !strings.HasPrefix(out, "digraph size {\n") || !strings.HasSuffix(out, "}\n") || strings.ContainsAny(out, "\x1b\r") {
		t.Fatalf("--dot output is not a clean digraph:\n%q", out)
	}
	nodeRe := regexp.MustCompile(`^  ([rs][0-9]+) \[shape=(box|ellipse), label=("([^"\\]|\\.)*"( \+ "([^"\\]|\\.)*")*)\];$`)
	edgeRe := regexp.MustCompile(`^  (r[0-9]+) -> (s[0-9]+);$`)
	nodes := map[string]string{}
	lines := strings.Split(strings.TrimSuffix(out, "}\n"), "\n")
	for _, l := range lines[3 : len(lines)-1] {
		if m := nodeRe.FindStringSubmatch(l); m != nil {
			nodes[m[1]] = m[2]
			continue
		}
		if m := edgeRe.FindStringSubmatch(l); m != nil {
			if nodes[m[1]] != "box" || nodes[m[2]] != "ellipse" {
				t.Errorf("--dot: edge between undeclared nodes: %q", l)
			}
			continue
		}
		t.Errorf("--dot: unexpected line %q", l)
	}
	boxes, ellipses := 0, 0
	for _, s := range nodes {
		if s == "box" {
			boxes++
		} else {
			ellipses++
		}
	}
	if boxes != len(rep.Roots) || ellipses != len(rep.Shared) || ellipses == 0 {
		t.Errorf("--dot: %d boxes, %d ellipses; want %d roots, %d shared paths (some)", boxes, ellipses, len(rep.Roots), len(rep.Shared))
	}
	if !strings.Contains(out, `evil \"quoted\" \\\\back\\\\slash\\n\\x1b[31mred (direct)" + "\n" + "frees 0 B (0 paths)"`) {
		t.Errorf("--dot: the hostile link is not escaped as expected:\n%s", out)
	}

	if len(rep.Warnings) != 0 {
		t.Errorf("as root: warnings %q, want none", rep.Warnings)
	}

	// An unprivileged user: the same answer, nothing changed; but it
	// warns that other users' processes were not searched for runtime
	// roots (a path only they hold is counted as freed, the collector
	// keeps it), and names a root it could not read.
	for d := ns.Root; d != "/" && d != os.TempDir(); d = filepath.Dir(d) {
		os.Chmod(d, 0o755)
	}
	bin := userBinary(t, ns.Root)
	before := snapshotTree(t, filepath.Join(ns.Root, "nix"))
	nobody := runCmd(t, nsScript(ns.Root, `exec setpriv --reuid=65534 --regid=65534 --clear-groups "$@"`, bin, "--json", "roots", "size"), nil)
	if nobody.code != 0 {
		t.Fatalf("roots size as nobody: exit %d\n%s", nobody.code, nobody.stderr)
	}
	asNobody := parseSizeEnvelope(t, nobody.stdout).Result
	if len(asNobody.Warnings) != 1 || !strings.Contains(asNobody.Warnings[0], "runtime roots") {
		t.Errorf("as nobody: warnings %q, want one about runtime roots", asNobody.Warnings)
	}
	asNobody.Warnings = nil
	ja, _ := json.Marshal(asNobody)
	jb, _ := json.Marshal(rep)
	if string(ja) != string(jb) {
		t.Errorf("as nobody:\n%s\nas root:\n%s", ja, jb)
	}
	if after := snapshotTree(t, filepath.Join(ns.Root, "nix")); after != before {
		t.Errorf("roots size as nobody changed the store")
	}
	// A root in a private home directory: nobody cannot read it.
	private := filepath.Join(ns.Root, "home/private")
	if err := os.MkdirAll(private, 0o700); err != nil {
		t.Fatal(err)
	}
	mustSymlink(t, target, filepath.Join(private, "result"))
	mustSymlink(t, filepath.Join(private, "result"), filepath.Join(ns.Root, "nix/var/nix/gcroots/auto/private-result"))
	text = runCmd(t, nsScript(ns.Root, `exec setpriv --reuid=65534 --regid=65534 --clear-groups "$@"`, bin, "roots", "size"), nil)
	if text.code != 0 || !strings.Contains(text.stderr, "warning") || !strings.Contains(text.stderr, private+"/result: cannot read potential root") || !strings.Contains(text.stderr, "runtime roots") {
		t.Errorf("roots size as nobody with an unreadable root: exit %d, stderr:\n%s", text.code, text.stderr)
	}
}
