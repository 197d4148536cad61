package tests

import (
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"storekeeper/nix/nar"
	"storekeeper/nix/validity"
)

// TestRegisterKill9 kills `storekeeper register` with SIGKILL at random
// instants (at least 30 trials and 30 kills, every third trial killed
// twice before the rerun; kill
// times spread over a whole run: start, validation, locks, the ownership
// check, canonicalisation, hashing, the transaction) while it registers
// the ~260 paths of a store real Nix wrote (derivations and outputs, its
// `--dump-db` as input) put back as trees without rows, owned by a build
// user with a build's metadata; trials alternate --build-user and
// --hash-given. After each kill: the database passes SQLite's integrity
// and foreign-key checks; either no path is valid or all are, with the
// rows real `nix-store --register-validity` writes from the same input;
// every tree still has its NAR hash; the store directory holds nothing
// new but lock files. A rerun then completes: exit 0 with everything
// registered as real Nix would (or, when the killed run had committed,
// exit 2 "already valid" and --reregister exit 0), every tree canonical,
// and `nix-store --verify --check-contents` accepts the store. Last, a
// SIGTERM in the middle of a run exits 130 with nothing registered.
func TestRegisterKill9(t *testing.T) {
	buid, bgid := realUser(t, "sk-register-build")
	ns := buildNixStore(t, nixSpec{Paths: 120, Seed: 2425, Files: 20, Salt: "register-kill9"})
	dump := runNS(t, ns.Root, nil, "nix-store", "--dump-db")
	infos, err := validity.ReadAll(strings.NewReader(dump), "/nix/store", true)
	if err != nil {
		t.Fatal(err)
	}
	var paths []string
	wantHash := map[string]nar.Hash{}
	for _, in := range infos {
		paths = append(paths, in.Path)
		wantHash[in.Path] = in.NarHash
	}
	var noHash strings.Builder
	if err := validity.Write(&noHash, infos, false); err != nil {
		t.Fatal(err)
	}
	template := freshStore(t, ns.Root, paths)
	for _, p := range paths {
		uncanonicalise(t, template, p, buid, bgid)
	}
	templateMeta := map[string]string{}
	for _, p := range paths {
		templateMeta[p] = treeMeta(t, template, p)
	}
	names := func(root string) map[string]bool {
		es, err := os.ReadDir(filepath.Join(root, "nix/store"))
		if err != nil {
			t.Fatal(err)
		}
		m := map[string]bool{}
		for _, e := range es {
			m[e.Name()] = true
		}
		return m
	}
	templateNames := names(template)

	type mode struct {
		buildUser, hashGiven bool
	}
	modeArgs := func(m mode) (string, []string) {
		args := []string{binary, "--quiet", "register"}
		in := noHash.String()
		if m.buildUser {
			args = append(args, "--build-user", "sk-register-build")
		}
		if m.hashGiven {
			args = append(args, "--hash-given")
			in = dump
		}
		return in, args
	}
	// One store for every run: reset puts it back as the template is
	// (the template's empty database, no temporary roots or lock files,
	// every tree with the build's metadata again). The runs change
	// metadata and rows only, never contents, which each check hashes.
	root := copyStore(t, template)
	dbDir := "nix/var/nix/db"
	reset := func() {
		t.Helper()
		for _, d := range []string{dbDir, "nix/var/nix/temproots"} {
			if err := os.RemoveAll(filepath.Join(root, d)); err != nil {
				t.Fatal(err)
			}
		}
		if out, err := exec.Command("cp", "-a", filepath.Join(template, dbDir), filepath.Join(root, dbDir)).CombinedOutput(); err != nil {
			t.Fatalf("cp: %v %s", err, out)
		}
		for name := range names(root) {
			if !templateNames[name] {
				if err := os.Remove(filepath.Join(root, "nix/store", name)); err != nil {
					t.Fatal(err)
				}
			}
		}
		for _, p := range paths {
			uncanonicalise(t, root, p, buid, bgid)
			if got := treeMeta(t, root, p); got != templateMeta[p] {
				t.Fatalf("reset: %s is not as in the template:\n%s\nwant:\n%s", p, got, templateMeta[p])
			}
		}
	}
	runArgs := func(in string, args ...string) result {
		cmd := nsScript(root, `exec "$@"`, args...)
		cmd.Stdin = strings.NewReader(in)
		return runCmd(t, cmd, nil)
	}

	// What real Nix registers from the same input, and how long an
	// uninterrupted run of ours takes in each mode.
	nixRoot := copyStore(t, template)
	runNS(t, nixRoot, []byte(dump), "nix-store", "--register-validity", "--hash-given")
	want := regRows(t, nixRoot)
	durations := map[mode]time.Duration{}
	modes := []mode{{true, true}, {false, false}, {true, false}, {false, true}}
	for _, m := range modes {
		reset()
		in, args := modeArgs(m)
		t0 := time.Now()
		if r := runArgs(in, args...); r.code != 0 {
			t.Fatalf("uninterrupted run %+v: exit %d\n%s", m, r.code, tail(r.stderr, 3000))
		}
		durations[m] = time.Since(t0)
		if got := regRows(t, root); got != want {
			t.Fatalf("uninterrupted run %+v: the rows differ from real Nix's", m)
		}
	}
	t.Logf("%d paths; uninterrupted runs: %v", len(paths), durations)

	// At least 30 trials and 30 kills (a run that ends before its kill
	// shortens its mode's estimate: the machine's load varies).
	rng := rand.New(rand.NewPCG(24, 9))
	killed, attempts, untouched, changed, committed := 0, 0, 0, 0, 0
	i := 0
	for ; i < 30 || killed < 30 && i < 60; i++ {
		m := modes[i%len(modes)]
		in, args := modeArgs(m)
		reset()
		kills := 1 + i%3/2 // every third trial: two kills before the rerun
		for k := 0; k < kills; k++ {
			delay := time.Duration(rng.Int64N(int64(durations[m])))
			cmd := nsScript(root, `exec "$@"`, args...)
			cmd.Stdin = strings.NewReader(in)
			attempts++
			if killAfter(t, cmd, delay) {
				killed++
			} else if k == 0 {
				durations[m] = min(durations[m], delay)
			}
			where := fmt.Sprintf("trial %d %+v (kill %d after %v)", i, m, k, delay)
			if msg := dbIntegrity(t, filepath.Join(root, "nix/var/nix/db/db.sqlite")); msg != "" {
				t.Fatalf("%s: the database is damaged: %s", where, msg)
			}
			n := validCount(t, root, paths)
			switch {
			case n == len(paths):
				if got := regRows(t, root); got != want {
					t.Fatalf("%s: every path is valid, with rows that differ from real Nix's", where)
				}
				committed++
			case n != 0:
				t.Fatalf("%s: %d of %d paths are valid: not all or nothing", where, n, len(paths))
			}
			same := 0
			for _, p := range paths {
				h, _, err := nar.HashPath(filepath.Join(root, p))
				if err != nil || h != wantHash[p] {
					t.Fatalf("%s: %s hashes to %s (%v), want %s", where, p, h, err, wantHash[p])
				}
				if treeMeta(t, root, p) == templateMeta[p] {
					same++
				}
			}
			if n == 0 && k == 0 {
				if same == len(paths) {
					untouched++
				} else {
					changed++
				}
			}
			for name := range names(root) {
				if !templateNames[name] && !strings.HasSuffix(name, ".lock") {
					t.Fatalf("%s: %s appeared in the store directory", where, name)
				}
			}
		}
		r := runArgs(in, args...)
		if validCount(t, root, paths) == len(paths) && r.code == 2 && strings.Contains(r.stderr, "already valid") {
			// The killed run had committed: a rerun refuses valid paths,
			// --reregister takes them.
			r = runArgs(in, append(args, "--reregister")...)
		}
		if r.code != 0 {
			t.Fatalf("trial %d %+v: the rerun exited %d\n%s", i, m, r.code, tail(r.stderr, 3000))
		}
		if got := regRows(t, root); got != want {
			t.Fatalf("trial %d %+v: after the rerun the rows differ from real Nix's", i, m)
		}
		for _, p := range paths {
			checkCanonical(t, root, p, 0, 0)
		}
		if t.Failed() {
			t.FailNow()
		}
		nixVerify(t, root)
	}
	t.Logf("%d trials, %d of %d runs killed; at the first kill of a trial: %d untouched, %d with trees changed and nothing valid, %d committed",
		i, killed, attempts, untouched, changed, committed)
	if killed < 30 {
		t.Fatalf("only %d runs were killed before they finished", killed)
	}
	if changed == 0 {
		t.Fatalf("no kill landed after the trees started changing: the kills do not cover the run")
	}

	// SIGTERM in the middle of a run: exit 130 with nothing registered
	// (or, when the transaction had committed, exit 0), and a rerun
	// completes.
	m := modes[0]
	in, args := modeArgs(m)
	interrupted := false
	// The signal's moment spreads over the run (10% to 80% of the
	// uninterrupted time), up to 24 tries: on a loaded machine a run's
	// start and length vary widely, and a fixed half-time missed 8 times.
	for try := 0; try < 24 && !interrupted; try++ {
		reset()
		cmd := nsScript(root, `exec "$@"`, args...)
		cmd.Stdin = strings.NewReader(in)
		var errb strings.Builder
		cmd.Stderr = &errb
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		time.Sleep(durations[m] * time.Duration(1+try%8) / 10)
		cmd.Process.Signal(syscall.SIGTERM) // unshare and sh exec: the pid is storekeeper's
		err := cmd.Wait()
		code := 0
		if ee, ok := err.(*exec.ExitError); ok {
			code = ee.ExitCode()
		}
		n := validCount(t, root, paths)
		switch {
		case code == 130:
			interrupted = true
			if n != 0 || !strings.Contains(errb.String(), "interrupted") {
				t.Fatalf("SIGTERM: exit 130 with %d paths valid\n%s", n, errb.String())
			}
		case code == 0 && n == len(paths):
		case code == -1: // the signal came before storekeeper started
		default:
			t.Fatalf("SIGTERM: exit %d with %d of %d paths valid\n%s", code, n, len(paths), errb.String())
		}
	}
	if !interrupted {
		t.Fatalf("no SIGTERM landed while register ran")
	}
	if r := runArgs(in, args...); r.code != 0 || regRows(t, root) != want {
		t.Fatalf("the rerun after SIGTERM: exit %d\n%s", r.code, r.stderr)
	}
}
