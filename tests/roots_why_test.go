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

	"storekeeper/report"
)

// whyEntry is one path of `roots why --json`'s result.
type whyEntry struct {
	Argument string     `json:"argument"`
	Path     string     `json:"path"`
	Alive    bool       `json:"alive"`
	Root     *whyRoot   `json:"root"`
	Chain    []whyLink  `json:"chain"`
	Roots    []whyChain `json:"roots"`
	DeadWith int        `json:"dead_with"`
	NarBytes uint64     `json:"nar_bytes"`
	Freed    uint64     `json:"freed_bytes"`
	Error    *struct {
		Kind    string `json:"kind"`
		Message string `json:"message"`
	} `json:"error"`
}

type whyRoot struct {
	Kind    string `json:"kind"`
	Link    string `json:"link"`
	Target  string `json:"target"`
	Owner   string `json:"owner"`
	MTime   int64  `json:"mtime"`
	PID     int    `json:"pid"`
	User    string `json:"user"`
	Command string `json:"command"`
	Via     string `json:"via"`
	Env     string `json:"env"`
}

func (r whyRoot) String() string { return r.Link + " -> " + r.Target }

type whyLink struct {
	Path string `json:"path"`
	Edge string `json:"edge"`
}

type whyChain struct {
	Root  whyRoot   `json:"root"`
	Chain []whyLink `json:"chain"`
}

// whyEnvelope is `roots why --json`'s envelope.
type whyEnvelope struct {
	Command string `json:"command"`
	OK      bool   `json:"ok"`
	Error   *struct {
		Kind string `json:"kind"`
	} `json:"error"`
	Messages []struct {
		Level string `json:"level"`
		Text  string `json:"text"`
	} `json:"messages"`
	Result struct {
		Paths []whyEntry `json:"paths"`
	} `json:"result"`
}

func parseWhyEnvelope(t *testing.T, out string) whyEnvelope {
	t.Helper()
	var env whyEnvelope
	if err := json.Unmarshal([]byte(out), &env); err != nil {
		t.Fatalf("roots why --json: bad JSON: %v\n%s", err, tail(out, 3000))
	}
	return env
}

// whyModel is the liveness edges of a store written by real Nix, from
// Nix's own answers: u -> v with its kind, references first (`nix-store
// -q --references` of each path), then with keep-derivations (Nix's
// default) an output to its deriver (`--dump-db`'s deriver, a valid .drv
// that lists the output), then with keep-outputs a derivation to its
// valid outputs (the outputs its .drv file names).
type whyModel map[string]map[string]string

func (m whyModel) add(u, v, kind string) {
	if u == v {
		return
	}
	if m[u] == nil {
		m[u] = map[string]string{}
	}
	if _, ok := m[u][v]; !ok {
		m[u][v] = kind
	}
}

// dist is breadth-first search through the model from the given paths.
func (m whyModel) dist(from ...string) map[string]int {
	d := map[string]int{}
	var q []string
	for _, f := range from {
		if _, ok := d[f]; !ok {
			d[f] = 0
			q = append(q, f)
		}
	}
	for len(q) > 0 {
		u := q[0]
		q = q[1:]
		for v := range m[u] {
			if _, ok := d[v]; !ok {
				d[v] = d[u] + 1
				q = append(q, v)
			}
		}
	}
	return d
}

// checkChain fails unless c is a chain from one of the model's paths to
// p of exactly want edges, every step an edge of the model of the kind it
// names.
func (m whyModel) checkChain(t *testing.T, p, what string, c []whyLink, want int) {
	t.Helper()
	if len(c) == 0 || c[0].Edge != "root" || c[len(c)-1].Path != p {
		t.Fatalf("%s %s: chain %+v does not run from a root to it", p, what, c)
	}
	for i := 1; i < len(c); i++ {
		if k, ok := m[c[i-1].Path][c[i].Path]; !ok || k != c[i].Edge {
			t.Fatalf("%s %s: step %s -%s-> %s is not an edge Nix has (%q)", p, what, c[i-1].Path, c[i].Edge, c[i].Path, k)
		}
	}
	if len(c)-1 != want {
		t.Fatalf("%s %s: a chain of %d edges, the shortest has %d: %+v", p, what, len(c)-1, want, c)
	}
}

// TestRootsWhy: on a store written by real Nix with keep-outputs = true
// (and keep-derivations, Nix's default), and a root on a derivation whose
// output nothing else keeps:
//   - `roots why --json` of every valid path at once (one run, many
//     PATHs): alive exactly when `nix-store --gc --print-dead` does not
//     list it; an alive path's chain starts at a root `nix-store --gc
//     --print-roots` prints (a link root with its owner and mtime), every
//     step is an edge Nix has (a reference `nix-store -q --references`
//     lists, or a keep-* edge nix.conf enables), and no shorter chain
//     exists (breadth-first search here, over Nix's answers); a dead path
//     says dead, with its NAR and on-disk bytes;
//   - the derivation's output is explained by the keep-outputs edge;
//   - `--all` lists exactly the roots from which each path is reachable,
//     each with a shortest chain from its own target, shortest first;
//   - a bad PATH among good ones is reported (exit 1) and the others
//     explained; `roots --why` is the same as `roots why`; no store is
//     exit 2;
//   - the same answers as an unprivileged user on the root-owned store
//     mounted read-only, which stays unchanged;
//   - `--dot` parses back to the roots, paths and edges of `--all`, a
//     root link with quotes, backslashes and control characters in its
//     name included;
//   - a process with the dead path in an environment variable keeps it
//     alive as a runtime root shown with its pid, user, command line and
//     the variable's name.
func TestRootsWhy(t *testing.T) {
	ns := buildNixStore(t, nixSpec{Paths: 30, Seed: 41, Roots: 4, Gens: 2, NixConf: "keep-outputs = true\n", Salt: "roots-why"})
	state := filepath.Join(ns.Root, "nix/var/nix")
	db := parseDumpDB(t, runNS(t, ns.Root, nil, "nix-store", "--dump-db"))
	valid := map[string]bool{}
	for _, p := range db.paths {
		valid[p] = true
	}
	// Nix's references, each path asked alone.
	list := filepath.Join(t.TempDir(), "list")
	if err := os.WriteFile(list, []byte(strings.Join(db.paths, "\n")+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := nsScript(ns.Root, `while read -r p; do echo "== $p"; nix-store -q --references "$p" </dev/null || exit 1; done < "$1"`, list)
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("nix-store -q --references: %v", err)
	}
	m := whyModel{}
	cur := ""
	for _, l := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		if p, ok := strings.CutPrefix(l, "== "); ok {
			cur = p
		} else if l != "" {
			m.add(cur, l, "reference")
		}
	}
	outputsOf := map[string][]string{}
	for i, drv := range ns.Drvs {
		for _, o := range ns.Outputs[i] {
			if valid[o] {
				outputsOf[drv] = append(outputsOf[drv], o)
			}
		}
	}
	for _, p := range db.paths {
		if d := db.deriver[p]; valid[d] && strings.HasSuffix(d, ".drv") && contains(outputsOf[d], p) {
			m.add(p, d, "keep-derivations")
		}
	}
	for drv, outs := range outputsOf {
		for _, o := range outs {
			m.add(drv, o, "keep-outputs")
		}
	}

	// A derivation no root keeps, whose output nothing else would keep,
	// gets a root of its own.
	targetsOf := func() (map[string]bool, map[string]bool) {
		lines := rootLines(runNS(t, ns.Root, nil, "nix-store", "--gc", "--print-roots"))
		targets := map[string]bool{}
		for l := range lines {
			targets[l[strings.LastIndex(l, " -> ")+4:]] = true
		}
		return lines, targets
	}
	_, targets := targetsOf()
	reached := m.dist(keys(targets)...)
	keepDrv, keepOut := "", ""
	for _, drv := range ns.Drvs {
		for _, o := range outputsOf[drv] {
			_, r1 := reached[drv]
			_, r2 := reached[o]
			if keepDrv == "" && !r1 && !r2 {
				keepDrv, keepOut = drv, o
			}
		}
	}
	if keepDrv == "" {
		t.Fatal("every derivation is alive already: the keep-outputs case is not tested")
	}
	drvRoot := filepath.Join(state, "gcroots", "keep-outputs-root")
	mustSymlink(t, keepDrv, drvRoot)
	lines, targets := targetsOf()
	dist := m.dist(keys(targets)...)
	nixDead := deadSet(runNS(t, ns.Root, nil, "nix-store", "--gc", "--print-dead"))

	// Every valid path, in one run.
	all := append([]string{"--json", "roots", "why"}, db.paths...)
	r := runInNS(t, ns.Root, all...)
	if r.code != 0 {
		t.Fatalf("roots why of every path: exit %d\n%s", r.code, tail(r.stderr, 3000))
	}
	env := parseWhyEnvelope(t, r.stdout)
	if env.Command != "roots why" || !env.OK || len(env.Result.Paths) != len(db.paths) {
		t.Fatalf("envelope: command %q ok %v, %d paths for %d arguments", env.Command, env.OK, len(env.Result.Paths), len(db.paths))
	}
	var alivePaths []string
	sampleDead, longest := "", 0
	for i, e := range env.Result.Paths {
		p := db.paths[i]
		if e.Argument != p || e.Path != p || e.Error != nil {
			t.Fatalf("entry %d for %s: %+v", i, p, e)
		}
		if e.Alive == nixDead[p] {
			t.Fatalf("%s: alive=%v, and nix-store --gc --print-dead lists it: %v", p, e.Alive, nixDead[p])
		}
		if !e.Alive {
			if e.Root != nil || len(e.Chain) != 0 || e.NarBytes == 0 || e.Freed == 0 {
				t.Errorf("%s: dead, with a root or a chain, or of no size: %+v", p, e)
			}
			if _, ok := dist[p]; ok {
				t.Errorf("%s: dead, but a root reaches it through Nix's edges", p)
			}
			sampleDead = p
			continue
		}
		alivePaths = append(alivePaths, p)
		if e.Root == nil || !lines[e.Root.String()] || e.Root.Target != e.Chain[0].Path {
			t.Fatalf("%s: root %+v is not a root Nix prints, or not where the chain starts (%+v)", p, e.Root, e.Chain)
		}
		if e.Root.Kind != "runtime" && e.Root.Kind != "temp" && (e.Root.Owner != "root" || e.Root.MTime <= 0) {
			t.Errorf("%s: link root %+v without its owner or mtime", p, e.Root)
		}
		m.checkChain(t, p, "nearest", e.Chain, dist[p])
		longest = max(longest, len(e.Chain))
		if e.DeadWith != 0 || e.NarBytes != 0 || e.Freed != 0 {
			t.Errorf("%s: alive with dead sizes %+v", p, e)
		}
	}
	if len(alivePaths) < 5 || sampleDead == "" || longest < 3 {
		t.Fatalf("%d alive, dead sample %q, longest chain %d: the store shows little", len(alivePaths), sampleDead, longest)
	}

	// The keep-outputs case.
	r = runInNS(t, ns.Root, "--json", "roots", "why", keepOut)
	e := parseWhyEnvelope(t, r.stdout).Result.Paths[0]
	want := []whyLink{{keepDrv, "root"}, {keepOut, "keep-outputs"}}
	if r.code != 0 || !e.Alive || e.Root == nil || e.Root.Link != "/nix/var/nix/gcroots/keep-outputs-root" || fmt.Sprint(e.Chain) != fmt.Sprint(want) {
		t.Fatalf("%s, kept only by keep-outputs from %s: exit %d %+v", keepOut, drvRoot, r.code, e)
	}
	txt := runInNS(t, ns.Root, "roots", "why", keepOut)
	if !strings.Contains(txt.stdout, "  -> "+keepOut+" (keep-outputs)\n") {
		t.Errorf("roots why %s as text:\n%s", keepOut, txt.stdout)
	}

	// --all: every root that reaches the path, each by a shortest chain.
	r = runInNS(t, ns.Root, append([]string{"--json", "roots", "why", "--all"}, alivePaths...)...)
	if r.code != 0 {
		t.Fatalf("roots why --all: exit %d\n%s", r.code, r.stderr)
	}
	fromTarget := map[string]map[string]int{}
	for tg := range targets {
		fromTarget[tg] = m.dist(tg)
	}
	many := 0
	allEnv := parseWhyEnvelope(t, r.stdout)
	for i, e := range allEnv.Result.Paths {
		p := alivePaths[i]
		var wantRoots, got []string
		for l := range lines {
			if _, ok := fromTarget[l[strings.LastIndex(l, " -> ")+4:]][p]; ok {
				wantRoots = append(wantRoots, l)
			}
		}
		for k, rc := range e.Roots {
			got = append(got, rc.Root.String())
			if rc.Chain[0].Path != rc.Root.Target {
				t.Fatalf("%s: --all chain of %s starts at %s", p, rc.Root, rc.Chain[0].Path)
			}
			m.checkChain(t, p, "from "+rc.Root.Link, rc.Chain, fromTarget[rc.Root.Target][p])
			if k > 0 {
				a := e.Roots[k-1]
				if len(a.Chain) > len(rc.Chain) || len(a.Chain) == len(rc.Chain) && a.Root.String() >= rc.Root.String() {
					t.Fatalf("%s: --all out of order: %s before %s", p, a.Root, rc.Root)
				}
			}
		}
		sort.Strings(got)
		sort.Strings(wantRoots)
		if strings.Join(got, "\n") != strings.Join(wantRoots, "\n") {
			t.Fatalf("%s: --all lists\n%s\nthe roots that reach it are\n%s", p, strings.Join(got, "\n"), strings.Join(wantRoots, "\n"))
		}
		if len(e.Roots) > 1 {
			many++
		}
	}
	if many == 0 {
		t.Error("no path is kept by two roots: --all is not tested")
	}

	// A bad path among good ones; the alias; no store.
	bad := "/nix/store/00000000000000000000000000000000-roots-why-nope"
	r = runInNS(t, ns.Root, "roots", "why", alivePaths[0], bad, sampleDead)
	if r.code != 1 || !strings.HasPrefix(r.stdout, alivePaths[0]+" is alive\n  root: ") ||
		!strings.Contains(r.stdout, "\n"+sampleDead+" is dead: ") || !strings.Contains(r.stdout, " by NAR size)\n") ||
		!strings.Contains(r.stderr, bad) || !strings.Contains(r.stderr, "1 of 3 paths could not be explained") {
		t.Errorf("roots why GOOD BAD DEAD: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	r = runInNS(t, ns.Root, "--json", "roots", "why", alivePaths[0], bad, sampleDead)
	env = parseWhyEnvelope(t, r.stdout)
	if ps := env.Result.Paths; r.code != 1 || env.OK || env.Error == nil || env.Error.Kind != "findings" || len(ps) != 3 ||
		!ps[0].Alive || ps[1].Error == nil || ps[1].Error.Kind != "bad-path" || ps[1].Argument != bad || ps[1].Path != "" || ps[2].Alive || ps[2].Path != sampleDead {
		t.Errorf("roots why --json GOOD BAD DEAD: exit %d\n%s", r.code, r.stdout)
	}
	alias, sub := runInNS(t, ns.Root, "roots", "--why", keepOut), runInNS(t, ns.Root, "roots", "why", keepOut)
	if alias.code != 0 || alias.stdout != sub.stdout {
		t.Errorf("roots --why and roots why differ:\n%s\n---\n%s", alias.stdout, sub.stdout)
	}
	if r := run(t, "--store", filepath.Join(t.TempDir(), "none"), "roots", "why", bad); r.code != 2 {
		t.Errorf("roots why on no store: exit %d\n%s", r.code, r.stderr)
	}
	if r := runInNS(t, ns.Root, "roots", "why"); r.code != 2 || !strings.Contains(r.stderr, "roots why needs at least one PATH: a store path, a file in one, or a symlink") {
		t.Errorf("roots why without a PATH: exit %d\n%s", r.code, r.stderr)
	}

	// An unprivileged user, on the root-owned store mounted read-only: the
	// same answers, nothing changed.
	for d := ns.Root; d != "/" && d != os.TempDir(); d = filepath.Dir(d) {
		os.Chmod(d, 0o755)
	}
	bin := userBinary(t, ns.Root)
	before := snapshotTree(t, filepath.Join(ns.Root, "nix"))
	cmd = nsScript(ns.Root, `mount -o remount,bind,ro /nix || exit 97; exec setpriv --reuid=65534 --regid=65534 --clear-groups "$@"`, append([]string{bin, "--json", "roots", "why", "--all"}, alivePaths...)...)
	nobody := runCmd(t, cmd, nil)
	if nobody.code != 0 {
		t.Fatalf("roots why as nobody: exit %d\n%s", nobody.code, nobody.stderr)
	}
	ja, _ := json.Marshal(parseWhyEnvelope(t, nobody.stdout).Result)
	jb, _ := json.Marshal(allEnv.Result)
	if a, b := string(ja), string(jb); a != b {
		t.Errorf("as nobody:\n%s\nas root:\n%s", a, b)
	}
	if after := snapshotTree(t, filepath.Join(ns.Root, "nix")); after != before {
		t.Errorf("roots why as nobody changed the store")
	}

	// --dot, with a hostile root link beside an existing root.
	var p string
	var base whyRoot
	for _, e := range allEnv.Result.Paths {
		if len(e.Roots) > 1 && e.Roots[0].Root.Kind == "direct" {
			p, base = e.Path, e.Roots[0].Root
			break
		}
	}
	if p == "" {
		t.Fatal("no path kept by several roots, the first a direct one")
	}
	hostile := "/nix/var/nix/gcroots/evil \"quoted\" \\back\\slash\n\x1b[31mred" // as seen in the namespace
	mustSymlink(t, base.Target, filepath.Join(ns.Root, hostile))
	r = runInNS(t, ns.Root, "roots", "why", "--all", "--dot", p, sampleDead)
	if r.code != 0 {
		t.Fatalf("roots why --dot: exit %d\n%s", r.code, r.stderr)
	}
	jr := runInNS(t, ns.Root, "--json", "roots", "why", "--all", p, sampleDead)
	js := parseWhyEnvelope(t, jr.stdout).Result.Paths
	nodes, edges := parseDot(t, r.stdout)
	wantNodes, wantEdges := map[string]bool{}, map[string]bool{}
	sawHostile := false
	for _, rc := range js[0].Roots {
		prev := "box " + report.Name(rc.Root.Link) + " (" + rc.Root.Kind + ")"
		wantNodes[prev] = true
		sawHostile = sawHostile || rc.Root.Link == hostile
		for _, l := range rc.Chain {
			cur := "ellipse " + filepath.Base(l.Path)
			wantNodes[cur] = true
			label := ""
			if l.Edge != "reference" && l.Edge != "root" {
				label = l.Edge
			}
			wantEdges[prev+" -> "+cur+" ["+label+"]"] = true
			prev = cur
		}
	}
	wantNodes["ellipse "+filepath.Base(sampleDead)+" (dead)"] = true
	if !sawHostile || !nodes["box "+report.Name(hostile)+" (direct)"] {
		t.Errorf("the hostile root %q is not among --all's roots (%v) or not a box labelled with its quoted name", hostile, sawHostile)
	}
	if a, b := strings.Join(keys(nodes), "\n"), strings.Join(keys(wantNodes), "\n"); a != b {
		t.Errorf("--dot nodes:\n%s\n--all's:\n%s\n%s", a, b, r.stdout)
	}
	if a, b := strings.Join(keys(edges), "\n"), strings.Join(keys(wantEdges), "\n"); a != b {
		t.Errorf("--dot edges:\n%s\n--all's:\n%s", a, b)
	}
	for _, c := range r.stdout {
		if c < 0x20 && c != '\n' || c == 0x7f {
			t.Fatalf("--dot output holds control character %q", c)
		}
	}

	// A process with the dead path in its environment keeps it alive: a
	// runtime root with its pid, user, command line and the variable.
	sleeper := exec.Command("sleep", "300")
	sleeper.Env = append(os.Environ(), "SK_WHY_HELD="+sampleDead)
	startGroup(t, sleeper)
	var held whyEntry
	for try := 0; try < 50; try++ { // until the process has exec'ed sleep
		r = runInNS(t, ns.Root, "--json", "roots", "why", sampleDead)
		if held = parseWhyEnvelope(t, r.stdout).Result.Paths[0]; held.Alive && held.Root != nil && held.Root.Command == "sleep 300" {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if rt := held.Root; r.code != 0 || rt == nil || rt.Kind != "runtime" || rt.PID != sleeper.Process.Pid || rt.User != "root" ||
		rt.Via != "environ" || rt.Env != "SK_WHY_HELD" || rt.Command != "sleep 300" || len(held.Chain) != 1 {
		t.Errorf("%s in a process's environment: exit %d %+v %+v", sampleDead, r.code, held, held.Root)
	}
	txt = runInNS(t, ns.Root, "roots", "why", sampleDead)
	if want := fmt.Sprintf("(runtime, pid %d, user root, via environ, variable SK_WHY_HELD, command 'sleep 300')", sleeper.Process.Pid); !strings.Contains(txt.stdout, want) {
		t.Errorf("roots why %s as text: want %q in\n%s", sampleDead, want, txt.stdout)
	}

	// As a user other than root, some roots cannot be seen: root's
	// sleeper above (its environment is not shown to another user), and
	// a root behind a directory only root may read. The path they keep
	// shows dead then, with warnings naming both gaps and saying that
	// the path may be alive for the collector; root sees it alive.
	priv := t.TempDir()
	if err := os.Chmod(priv, 0o700); err != nil { // root's alone
		t.Fatal(err)
	}
	mustSymlink(t, sampleDead, filepath.Join(priv, "result"))
	mustSymlink(t, filepath.Join(priv, "result"), filepath.Join(state, "gcroots", "auto", "private-root"))
	r = runInNS(t, ns.Root, "--json", "roots", "why", "--no-runtime", sampleDead)
	if e := parseWhyEnvelope(t, r.stdout).Result.Paths[0]; r.code != 0 || !e.Alive || e.Root == nil || e.Root.Link != filepath.Join(priv, "result") {
		t.Errorf("as root, %s behind the private root: exit %d %+v", sampleDead, r.code, e)
	}
	cmd = nsScript(ns.Root, `exec setpriv --reuid=65534 --regid=65534 --clear-groups "$@"`, bin, "--json", "roots", "why", sampleDead)
	r = runCmd(t, cmd, nil)
	env = parseWhyEnvelope(t, r.stdout)
	var warned []string
	for _, m := range env.Messages {
		if m.Level == "warning" {
			warned = append(warned, m.Text)
		}
	}
	warnText := strings.Join(warned, "\n")
	if e := env.Result.Paths[0]; r.code != 0 || e.Alive || len(warned) < 2 ||
		!strings.Contains(warnText, "cannot read potential root: permission denied: '"+filepath.Join(priv, "result")+"'") ||
		!strings.Contains(warned[len(warned)-1], "a path reported dead may still be kept by a root not seen here (") ||
		!strings.Contains(warned[len(warned)-1], "running as nobody, not root: the processes of other users cannot be inspected for runtime roots") {
		t.Errorf("as nobody, %s kept by roots nobody cannot see: exit %d, alive %v, warnings:\n%s", sampleDead, r.code, e.Alive, warnText)
	}
	cmd = nsScript(ns.Root, `exec setpriv --reuid=65534 --regid=65534 --clear-groups "$@"`, bin, "roots", "why", sampleDead)
	if txt := runCmd(t, cmd, nil); txt.code != 0 || !strings.Contains(txt.stderr, "warning: a path reported dead may still be kept by a root not seen here") {
		t.Errorf("as nobody, as text: exit %d\n%s%s", txt.code, txt.stdout, txt.stderr)
	}
}

// parseDot reads the digraph `roots why --dot` writes back: the nodes as
// "SHAPE LABEL" and the edges as "FROM -> TO [LABEL]" (the nodes' own
// strings), DOT's quoted strings unescaped.
func parseDot(t *testing.T, s string) (nodes, edges map[string]bool) {
	t.Helper()
	var toks []string
	for i := 0; i < len(s); {
		c := s[i]
		switch {
		case c == ' ' || c == '\n' || c == '\t':
			i++
		case c == '"':
			var b strings.Builder
			b.WriteByte('"')
			i++
			for ; i < len(s) && s[i] != '"'; i++ {
				if s[i] == '\\' && i+1 < len(s) && (s[i+1] == '"' || s[i+1] == '\\') {
					i++
				}
				b.WriteByte(s[i])
			}
			if i >= len(s) {
				t.Fatalf("--dot: unterminated string\n%s", s)
			}
			i++
			toks = append(toks, b.String())
		case strings.HasPrefix(s[i:], "->"):
			toks = append(toks, "->")
			i += 2
		case strings.IndexByte("{}[];,=", c) >= 0:
			toks = append(toks, string(c))
			i++
		default:
			j := i
			for j < len(s) && (s[j] == '_' || s[j] >= 'a' && s[j] <= 'z' || s[j] >= 'A' && s[j] <= 'Z' || s[j] >= '0' && s[j] <= '9') {
				j++
			}
			if j == i {
				t.Fatalf("--dot: unexpected %q at %d\n%s", c, i, s)
			}
			toks = append(toks, s[i:j])
			i = j
		}
	}
	if len(toks) < 4 || toks[0] != "digraph" || toks[2] != "{" || toks[len(toks)-1] != "}" {
		t.Fatalf("--dot: not a digraph\n%s", s)
	}
	// Statements: ID [attrs]; | ID -> ID [attrs]; | ID=VALUE; | node [attrs];
	attrs := func(k int) (map[string]string, int) {
		a := map[string]string{}
		if k >= len(toks) || toks[k] != "[" {
			return a, k
		}
		for k++; toks[k] != "]"; {
			key, val := toks[k], strings.TrimPrefix(toks[k+2], `"`)
			if toks[k+1] != "=" {
				t.Fatalf("--dot: bad attribute at %v", toks[k:])
			}
			a[key] = val
			k += 3
			if toks[k] == "," {
				k++
			}
		}
		return a, k + 1
	}
	type node struct{ shape, label string }
	byID := map[string]node{}
	type edge struct{ from, to, label string }
	var es []edge
	for k := 3; k < len(toks)-1; {
		id := toks[k]
		switch {
		case toks[k+1] == "=":
			k += 3
		case toks[k+1] == "->":
			a, next := attrs(k + 3)
			es = append(es, edge{id, toks[k+2], a["label"]})
			k = next
		default:
			a, next := attrs(k + 1)
			if id != "node" && id != "edge" && id != "graph" {
				byID[id] = node{a["shape"], a["label"]}
			}
			k = next
		}
		if k < len(toks) && toks[k] == ";" {
			k++
		}
	}
	nodes, edges = map[string]bool{}, map[string]bool{}
	for _, n := range byID {
		nodes[n.shape+" "+n.label] = true
	}
	for _, e := range es {
		f, ok1 := byID[e.from]
		to, ok2 := byID[e.to]
		if !ok1 || !ok2 {
			t.Fatalf("--dot: edge %s -> %s between undeclared nodes", e.from, e.to)
		}
		edges[f.shape+" "+f.label+" -> "+to.shape+" "+to.label+" ["+e.label+"]"] = true
	}
	return nodes, edges
}

func keys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}
