package tests

import (
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestRegisterBadInput: bad input to `storekeeper register` (malformed
// registration text of several kinds, references that are not valid, a
// --hash-given hash or size that does not match, a cycle, a path outside
// the store, inside a store path, not on disk or already valid, a
// derivation naming wrong outputs, bad flags) gets exit 2, a clear error
// of the right kind naming what failed, and registers NOTHING: the
// database (every ValidPaths, Refs and DerivationOutputs row) is as it
// was, the store directory holds the same entries and, but after a hash
// mismatch (found once the trees are canonicalised, as Nix does), no tree
// changed. --reregister takes a valid path and updates it exactly as
// real Nix does (registration time and deriver kept, old references kept
// and new ones added).
func TestRegisterBadInput(t *testing.T) {
	f := buildRegFixture(t, "register-badinput")
	root := freshStore(t, f.Root, f.Closure)
	a, b, c, d, e := f.Outs["a"], f.Outs["b"], f.Outs["c"], f.Outs["d"], f.Outs["e"]
	// a and b valid (registered by real Nix); the rest trees only, with a
	// build's metadata, so that any change to them shows.
	runNS(t, root, []byte(f.records(t, false, a, b)), "nix-store", "--register-validity")
	for _, p := range f.Closure {
		if p != a && p != b {
			uncanonicalise(t, root, p, -1, -1)
		}
	}
	rng := rand.New(rand.NewPCG(24, 3))
	ghost := "/nix/store/" + randName(rng) + "-ghost"
	recC := f.records(t, false, c) // c refers to a and b: alone it is fine
	hashC := f.records(t, true, c)
	hashD := f.records(t, true, d)
	hashLines := func(rec string) []string { return strings.SplitN(rec, "\n", 4) }
	mismatch := strings.Join(append([]string{hashLines(hashC)[0], hashLines(hashD)[1]}, hashLines(hashC)[2:]...), "\n")
	sizeLines := hashLines(hashC)
	sizeLines[2] += "1"
	sizeMismatch := strings.Join(sizeLines, "\n")

	// A derivation naming an output that is not the one Nix computes:
	// a's .drv (no input derivations) with its output path changed, put
	// into the store under a name of its own.
	var aDrv string
	for _, p := range f.Drvs {
		if strings.HasSuffix(p, "-a.drv") {
			aDrv = p
		}
	}
	drvText, err := os.ReadFile(filepath.Join(root, aDrv))
	if err != nil {
		t.Fatal(err)
	}
	forged := "/nix/store/" + randName(rng) + "-a.drv"
	forgedText := strings.ReplaceAll(string(drvText), filepath.Base(a)[:32], randName(rng))
	if forgedText == string(drvText) {
		t.Fatalf("%s does not name %s", aDrv, a)
	}
	writeFileMode(t, filepath.Join(root, forged), []byte(forgedText), 0o444)

	trees := append([]string{forged}, f.Closure...)
	snapshot := func() string {
		var sb strings.Builder
		sb.WriteString(regRows(t, root) + "\n")
		es, err := os.ReadDir(filepath.Join(root, "nix/store"))
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range es {
			sb.WriteString(e.Name() + "\n")
		}
		return sb.String()
	}
	treeState := func() string {
		var sb strings.Builder
		for _, p := range trees {
			sb.WriteString(treeMeta(t, root, p) + pathState(t, root, p))
		}
		return sb.String()
	}
	dbBefore, treesBefore := snapshot(), treeState()

	for _, bc := range []struct {
		name  string
		stdin string
		args  []string
		kind  string   // the error's kind ("": not checked)
		want  []string // in the message
		// canonicalised: the trees may have been canonicalised (a hash
		// compared after it, as Nix canonicalises before hashing).
		canonicalised bool
	}{
		{name: "truncated record", stdin: strings.Join(strings.Split(recC, "\n")[:4], "\n") + "\n", kind: "bad-input", want: []string{"line 5", "ends before the reference"}},
		{name: "count not a number", stdin: c + "\n\nmany\n", kind: "bad-input", want: []string{"line 3", "many"}},
		{name: "negative count", stdin: c + "\n\n-1\n", kind: "bad-input", want: []string{"line 3"}},
		{name: "no final newline", stdin: recC + c, kind: "bad-input", want: []string{"no newline"}},
		{name: "not a store path", stdin: "/tmp/x\n\n0\n", kind: "bad-input", want: []string{"line 1", "/tmp/x"}},
		{name: "reference not a store path", stdin: c + "\n\n1\n/etc/passwd\n", kind: "bad-input", want: []string{"line 4", "/etc/passwd"}},
		{name: "bad hash", stdin: c + "\nsha256:zzzz\n100\n\n0\n", args: []string{"--hash-given"}, kind: "bad-input", want: []string{"line 2", c}},
		{name: "size not a number", stdin: c + "\n" + strings.Repeat("0", 64) + "\nbig\n\n0\n", args: []string{"--hash-given"}, kind: "bad-input", want: []string{"line 3"}},
		{name: "good record then garbage", stdin: recC + "garbage\n", kind: "bad-input", want: []string{"line 6"}},
		{name: "reference not valid", stdin: fmt.Sprintf("%s\n\n1\n%s\n", c, d), kind: "invalid-reference", want: []string{c, d}},
		{name: "reference nowhere", stdin: fmt.Sprintf("%s\n\n1\n%s\n", c, ghost), kind: "invalid-reference", want: []string{c, ghost}},
		{name: "good path and invalid reference", stdin: recC + fmt.Sprintf("%s\n\n1\n%s\n", d, ghost), kind: "invalid-reference", want: []string{d, ghost}},
		// A cycle in the given references is refused before any tree
		// is changed (Nix finds it only in the transaction).
		{name: "cycle", stdin: fmt.Sprintf("%s\n\n1\n%s\n%s\n\n1\n%s\n", c, d, d, c), kind: "cycle", want: []string{c, d}},
		{name: "hash mismatch", stdin: mismatch, args: []string{"--hash-given"}, kind: "mismatch", want: []string{c}, canonicalised: true},
		{name: "size mismatch", stdin: sizeMismatch, args: []string{"--hash-given"}, kind: "mismatch", want: []string{c}, canonicalised: true},
		{name: "not on disk", stdin: ghost + "\n\n0\n", kind: "missing", want: []string{ghost}},
		{name: "good path and one not on disk", stdin: recC + ghost + "\n\n0\n", kind: "missing", want: []string{ghost}},
		{name: "already valid", stdin: f.records(t, false, a), kind: "already-valid", want: []string{a, "--reregister"}},
		{name: "good path and one already valid", stdin: recC + f.records(t, false, b), kind: "already-valid", want: []string{b}},
		{name: "derivation with wrong outputs", stdin: forged + "\n\n0\n", want: []string{forged}},
		{name: "outside the store", args: []string{"--scan", "/tmp/sk-register-outside"}, kind: "bad-path", want: []string{"/tmp/sk-register-outside"}},
		{name: "inside a store path", args: []string{"--scan", e + "/c"}, kind: "bad-path", want: []string{e + "/c"}},
		{name: "not on disk (PATH)", args: []string{"--scan", ghost}, kind: "missing", want: []string{ghost}},
		{name: "already valid (PATH)", args: []string{"--scan", c, a}, kind: "already-valid", want: []string{a}},
		{name: "PATH without --scan", args: []string{c}, kind: "usage", want: []string{"--scan"}},
		{name: "PATH with --hash-given", args: []string{"--scan", "--hash-given", c}, kind: "usage", want: []string{"--hash-given"}},
		{name: "--candidates without --scan", stdin: recC, args: []string{"--candidates", a}, kind: "usage", want: []string{"--candidates"}},
		{name: "unknown build user", stdin: recC, args: []string{"--build-user", "no-such-user-sk"}, kind: "usage", want: []string{"no-such-user-sk"}},
	} {
		t.Run(bc.name, func(t *testing.T) {
			for _, jsonOut := range []bool{false, true} {
				args := append([]string{"register"}, bc.args...)
				if jsonOut {
					args = append([]string{"--json"}, args...)
				}
				r := runRegisterNS(t, root, bc.stdin, args...)
				msg := r.stderr
				if jsonOut {
					e := parseEnvelope(t, r)
					if e.OK || e.Error == nil || e.Command != "register" {
						t.Fatalf("envelope: %+v\n%s", e, r.stdout)
					}
					if bc.kind != "" && e.Error.Kind != bc.kind {
						t.Errorf("error kind %q, want %q: %s", e.Error.Kind, bc.kind, e.Error.Message)
					}
					msg = e.Error.Message
					if e.Result != nil && e.Result.PathsRegistered != 0 {
						t.Errorf("paths_registered %d", e.Result.PathsRegistered)
					}
				} else if !strings.Contains(r.stderr, "storekeeper: error: ") {
					t.Errorf("stderr has no error line:\n%s", r.stderr)
				}
				if r.code != 2 {
					t.Errorf("exit %d, want 2\nstdout:\n%s\nstderr:\n%s", r.code, tail(r.stdout, 2000), tail(r.stderr, 2000))
				}
				for _, w := range bc.want {
					if !strings.Contains(msg, w) {
						t.Errorf("the error does not name %q:\n%s", w, msg)
					}
				}
				if got := snapshot(); got != dbBefore {
					t.Fatalf("the database or the store directory changed:\n%s\nbefore:\n%s", got, dbBefore)
				}
				if got := treeState(); got != treesBefore {
					if !bc.canonicalised {
						t.Fatalf("a tree changed")
					}
					treesBefore = got
				}
			}
		})
	}

	// Several bad paths: the text output names each, --json gives each
	// path its error; nothing is registered.
	ghost2 := "/nix/store/" + randName(rng) + "-ghost2"
	several := recC + ghost + "\n\n0\n" + ghost2 + "\n\n0\n"
	r := runRegisterNS(t, root, several, "register")
	if r.code != 2 || !strings.Contains(r.stderr, ghost+"'") || !strings.Contains(r.stderr, ghost2+"'") {
		t.Fatalf("two paths not on disk: exit %d, want 2 naming both\n%s", r.code, r.stderr)
	}
	r = runRegisterNS(t, root, several, "--json", "register")
	env := parseEnvelope(t, r)
	if r.code != 2 || env.Result == nil || len(env.Result.Paths) != 3 || env.Result.PathsRegistered != 0 {
		t.Fatalf("two paths not on disk: exit %d\n%s", r.code, r.stdout)
	}
	for i, pj := range env.Result.Paths {
		switch {
		case i == 0 && (pj.Path != c || pj.Registered || pj.Error != nil):
			t.Errorf("paths[0] %+v, want %s not registered and without an error of its own", pj, c)
		case i > 0 && (pj.Registered || pj.Error == nil || pj.Error.Kind != "missing" || !strings.Contains(pj.Error.Message, pj.Path)):
			t.Errorf("paths[%d] %+v, want a missing error naming it", i, pj)
		}
	}
	if got := snapshot(); got != dbBefore {
		t.Fatalf("the database or the store directory changed")
	}

	// --reregister: a valid path's row is updated exactly as real Nix
	// updates it (hash, size; deriver and registration time kept), and
	// its references only grow, as in Nix: first with a reference added,
	// then with none given.
	nixRoot := copyStore(t, root)
	regTime := func(r string) string {
		return strings.Join(queryLines(t, r, "select path, registrationTime, deriver from ValidPaths"), "\n")
	}
	timesBefore := regTime(root)
	otherDrv := f.Drvs[0]
	if otherDrv == aDrv {
		otherDrv = f.Drvs[1]
	}
	for i, in := range []string{
		fmt.Sprintf("%s\n%s\n1\n%s\n", a, otherDrv, b),
		fmt.Sprintf("%s\n\n0\n", a),
	} {
		runNS(t, nixRoot, []byte(in), "nix-store", "--register-validity", "--reregister")
		if r := runRegisterNS(t, root, in, "register", "--reregister"); r.code != 0 {
			t.Fatalf("register --reregister %d: exit %d\n%s", i, r.code, r.stderr)
		}
		if got, want := regRows(t, root), regRows(t, nixRoot); got != want {
			t.Fatalf("after --reregister %d the rows differ from real Nix's\nstorekeeper:\n%s\nnix:\n%s", i, got, want)
		}
		if !strings.Contains(strings.Join(regRefs(t, root)[a], " "), b) {
			t.Fatalf("after --reregister %d %s lost its reference to %s", i, a, b)
		}
		if got := regTime(root); got != timesBefore {
			t.Fatalf("--reregister changed a registration time or deriver:\n%s\nbefore:\n%s", got, timesBefore)
		}
	}
	nixVerify(t, root)
}
