package tests

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// nixDB is what `nix-store --dump-db` says of every valid path.
type nixDB struct {
	paths   []string
	refs    map[string][]string
	deriver map[string]string
}

// parseDumpDB reads `nix-store --dump-db`: per path its name, NAR hash,
// NAR size, deriver ("" if none), the number of references and each
// reference, one a line.
func parseDumpDB(t *testing.T, out string) nixDB {
	t.Helper()
	lines := strings.Split(strings.TrimRight(out, "\n"), "\n")
	d := nixDB{refs: map[string][]string{}, deriver: map[string]string{}}
	for i := 0; i < len(lines); {
		if i+4 >= len(lines) {
			t.Fatalf("dump-db: truncated at line %d", i)
		}
		p := lines[i]
		n, err := strconv.Atoi(lines[i+4])
		if err != nil || !strings.HasPrefix(p, "/nix/store/") || i+5+n > len(lines) {
			t.Fatalf("dump-db: unexpected record at line %d: %q", i, lines[i:min(i+5, len(lines))])
		}
		d.paths = append(d.paths, p)
		d.deriver[p] = lines[i+3]
		d.refs[p] = lines[i+5 : i+5+n]
		i += 5 + n
	}
	return d
}

type whyJSON struct {
	Path  string `json:"path"`
	Alive bool   `json:"alive"`
	Root  *struct {
		Link   string `json:"link"`
		Target string `json:"target"`
	} `json:"root"`
	Chain []struct {
		Path string `json:"path"`
		Edge string `json:"edge"`
	} `json:"chain"`
	DeadWith int    `json:"dead_with"`
	NarBytes uint64 `json:"nar_bytes"`
}

// root is the explanation's root as Nix prints it, "LINK -> TARGET" ("" if
// none).
func (e whyJSON) root() string {
	if e.Root == nil {
		return ""
	}
	return e.Root.Link + " -> " + e.Root.Target
}

// parseWhy reads the output of roots --why --json: the explanation of its
// one path, in the JSON envelope's result.
func parseWhy(t *testing.T, out string) whyJSON {
	t.Helper()
	var env struct {
		Result struct {
			Paths []whyJSON `json:"paths"`
		} `json:"result"`
	}
	if err := json.Unmarshal([]byte(out), &env); err != nil || len(env.Result.Paths) != 1 {
		t.Fatalf("roots --why --json: bad JSON (%v) or not one path:\n%s", err, out)
	}
	return env.Result.Paths[0]
}

// TestWhyMatchesNix: on a store written by real Nix, for every valid
// path, `roots --why --json` says alive exactly when `nix-store --gc
// --print-dead` does not list the path; an alive path's chain starts at a
// root that `nix-store -q --roots PATH` lists (the roots that keep the
// path through its referrers), every step is a reference Nix registered
// (or, with keep-derivations, the deriver Nix registered), and with
// references alone (keep-derivations = false) the chain is a shortest
// one from the roots `nix-store --gc --print-roots` prints. The text form
// names each edge's kind and says when a path is dead, and what deleting
// it frees.
func TestWhyMatchesNix(t *testing.T) {
	for _, conf := range []string{"keep-derivations = false\n", ""} {
		name := strings.TrimSpace(conf)
		if name == "" {
			name = "default"
		}
		t.Run(name, func(t *testing.T) {
			ns := buildNixStore(t, nixSpec{Paths: 30, Seed: 29, Roots: 4, Gens: 2, NixConf: conf, Salt: "why-" + name})
			out := t.TempDir()
			script := `
nix-store --dump-db > "$OUT/db" || exit 1
nix-store --gc --print-dead > "$OUT/dead" 2>/dev/null || exit 1
nix-store --gc --print-roots > "$OUT/roots" 2>/dev/null || exit 1
i=0
while read -r p; do
	nix-store -q --roots "$p" > "$OUT/nix.$i" 2>"$OUT/nix.$i.err" </dev/null || exit 2
	"$BIN" roots --why "$p" --json > "$OUT/ours.$i" 2>"$OUT/ours.$i.err" </dev/null; echo $? > "$OUT/rc.$i"
	i=$((i+1))
done < "$OUT/list"
`
			// The list of paths comes from the DB: write it first.
			db := parseDumpDB(t, runNS(t, ns.Root, nil, "nix-store", "--dump-db"))
			if len(db.paths) < 20 {
				t.Fatalf("only %d valid paths", len(db.paths))
			}
			if err := os.WriteFile(filepath.Join(out, "list"), []byte(strings.Join(db.paths, "\n")+"\n"), 0o644); err != nil {
				t.Fatal(err)
			}
			cmd := nsScript(ns.Root, script)
			cmd.Env = append(cmd.Env, "BIN="+binary, "OUT="+out)
			if res, err := cmd.CombinedOutput(); err != nil {
				t.Fatalf("%v\n%s", err, res)
			}
			read := func(name string) string {
				b, err := os.ReadFile(filepath.Join(out, name))
				if err != nil {
					t.Fatal(err)
				}
				return string(b)
			}
			nixDead := deadSet(read("dead"))
			targets := map[string]bool{}
			for l := range rootLines(read("roots")) {
				targets[l[strings.LastIndex(l, " -> ")+4:]] = true
			}
			// Shortest distances from the roots through references.
			dist := map[string]int{}
			var queue []string
			for p := range targets {
				dist[p] = 0
				queue = append(queue, p)
			}
			for len(queue) > 0 {
				u := queue[0]
				queue = queue[1:]
				for _, v := range db.refs[u] {
					if _, ok := dist[v]; !ok {
						dist[v] = dist[u] + 1
						queue = append(queue, v)
					}
				}
			}
			alive, dead, longest, kinds := 0, 0, 0, map[string]int{}
			var sampleAlive, sampleDead string
			for i, p := range db.paths {
				if rc := strings.TrimSpace(read(fmt.Sprintf("rc.%d", i))); rc != "0" {
					t.Fatalf("roots --why %s: exit %s: %s", p, rc, read(fmt.Sprintf("ours.%d.err", i)))
				}
				e := parseWhy(t, read(fmt.Sprintf("ours.%d", i)))
				if e.Path != p {
					t.Fatalf("roots --why %s explains %s", p, e.Path)
				}
				if e.Alive == nixDead[p] {
					t.Fatalf("%s: alive=%v, and nix-store --gc --print-dead lists it: %v", p, e.Alive, nixDead[p])
				}
				nixRoots := rootLines(read(fmt.Sprintf("nix.%d", i)))
				if !e.Alive {
					dead++
					sampleDead = p
					if len(e.Chain) != 0 || e.NarBytes == 0 {
						t.Errorf("%s: dead with a chain, or of no NAR size: %+v", p, e)
					}
					continue
				}
				alive++
				if !nixRoots[e.root()] {
					t.Fatalf("%s: our chain starts at root %q, which nix-store -q --roots does not list:\n%v", p, e.root(), nixRoots)
				}
				if len(e.Chain) == 0 || e.Root.Target != e.Chain[0].Path || e.Chain[0].Edge != "root" || e.Chain[len(e.Chain)-1].Path != p {
					t.Fatalf("%s: root %q, chain %+v", p, e.root(), e.Chain)
				}
				for k := 1; k < len(e.Chain); k++ {
					u, v := e.Chain[k-1].Path, e.Chain[k]
					ok := false
					switch v.Edge {
					case "reference":
						for _, r := range db.refs[u] {
							ok = ok || r == v.Path
						}
					case "keep-derivations":
						ok = conf == "" && db.deriver[u] == v.Path
					}
					if !ok {
						t.Fatalf("%s: step %s -%s-> %s is not in Nix's DB", p, u, v.Edge, v.Path)
					}
					kinds[v.Edge]++
				}
				if conf != "" && len(e.Chain)-1 != dist[p] {
					t.Errorf("%s: a chain of %d references, the shortest has %d", p, len(e.Chain)-1, dist[p])
				}
				if len(e.Chain) > longest {
					longest, sampleAlive = len(e.Chain), p
				}
			}
			if alive == 0 || dead == 0 || longest < 3 {
				t.Fatalf("%d alive, %d dead, longest chain %d: the fixture shows little", alive, dead, longest)
			}
			if conf == "" && kinds["keep-derivations"] == 0 {
				t.Errorf("no keep-derivations edge in any chain with the default settings: %v", kinds)
			}

			txt := runInNS(t, ns.Root, "roots", "--why", sampleAlive)
			if txt.code != 0 || !strings.HasPrefix(txt.stdout, sampleAlive+" is alive\n  root: ") || !strings.Contains(txt.stdout, " (reference)\n") {
				t.Errorf("roots --why %s: exit %d\n%s%s", sampleAlive, txt.code, txt.stdout, txt.stderr)
			}
			txt = runInNS(t, ns.Root, "roots", "--why", sampleDead)
			if txt.code != 0 || !strings.HasPrefix(txt.stdout, sampleDead+" is dead") || !strings.HasSuffix(txt.stdout, " by NAR size)\n") {
				t.Errorf("roots --why %s: exit %d\n%s%s", sampleDead, txt.code, txt.stdout, txt.stderr)
			}
		})
	}
}
