package tests

import (
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestCopyKill9 kills `storekeeper copy --to` with SIGKILL at random
// instants (36 trials over the whole run: store creation, closure, trees
// being built and put in place, registration; half with --method copy,
// half hard-linking; every other trial kills a second run on the same
// target before the rerun). After each kill every path valid in the
// target has exactly the source's record (hash, size, deriver,
// references: `nix-store --dump-db`) and is in the closure, real
// `nix-store --verify --check-contents` passes on the target, and the
// target's store directory holds only names of the closure, lock files,
// .links and the trash; a rerun then exits 0, and the target holds the
// whole closure (`nix-store -qR`), verified, and an empty trash.
func TestCopyKill9(t *testing.T) {
	ns := buildNixStore(t, nixSpec{Paths: 120, Seed: 4343, Files: 8, Salt: "copy-kill9"})
	paths := []string{ns.Outputs[119]["out"], ns.Outputs[100]["out"], ns.Outputs[80]["out"], ns.Drvs[110]}
	want := copyNixClosure(t, ns.Root, "", paths)
	inClosure := map[string]bool{}
	for _, p := range want {
		inClosure[filepath.Base(p)] = true
	}
	srcRecs := copyDumpRecords(t, runNS(t, ns.Root, nil, "nix-store", "--dump-db"))
	n := 0
	newTarget := func() string {
		n++
		name := "/nix/kill-" + strconv.Itoa(n)
		mustMkdir(t, filepath.Join(ns.Root, name))
		return name
	}
	args := func(target, method string) []string {
		return append([]string{binary, "--quiet", "copy", "--method", method, "--to", target}, paths...)
	}
	durations := map[string]time.Duration{}
	for _, m := range []string{"auto", "copy"} {
		target := newTarget()
		t0 := time.Now()
		if r := runCmd(t, nsScript(ns.Root, `exec "$@"`, args(target, m)...), nil); r.code != 0 {
			t.Fatalf("uninterrupted copy: exit %d\n%s", r.code, tail(r.stderr, 3000))
		}
		durations[m] = time.Since(t0)
	}
	t.Logf("uninterrupted runs (%d paths): %v", len(want), durations)

	check := func(i int, target, when string) {
		t.Helper()
		dir := filepath.Join(ns.Root, target)
		if _, err := os.Stat(filepath.Join(dir, "nix/var/nix/db/schema")); err != nil {
			return // killed before the store was created: nothing is valid
		}
		recs := copyDumpRecords(t, runNS(t, ns.Root, nil, "nix-store", "--store", target, "--dump-db"))
		for p, rec := range recs {
			if !inClosure[filepath.Base(p)] || rec != srcRecs[p] {
				t.Fatalf("trial %d (%s): the target's record of %s:\n%s\nthe source's:\n%s", i, when, p, rec, srcRecs[p])
			}
		}
		copyNixVerify(t, ns.Root, target)
		ents, err := os.ReadDir(filepath.Join(dir, "nix/store"))
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range ents {
			if n := e.Name(); !inClosure[n] && n != ".links" && n != "trash" && !strings.HasSuffix(n, ".lock") {
				t.Fatalf("trial %d (%s): %s appeared in the target's store directory", i, when, n)
			}
		}
	}
	rng := rand.New(rand.NewPCG(43, 43))
	// At least 36 trials, and more (up to 90) until 30 runs were killed
	// before they finished: a delay drawn from the uninterrupted run's
	// time can land after a faster run has exited.
	const trials, maxTrials = 36, 90
	killed, validAtKill, runs := 0, 0, 0
	for i := 0; i < maxTrials && (i < trials || killed < 30); i++ {
		m := []string{"auto", "copy"}[i%2]
		target := newTarget()
		kills := 1 + i%4/2
		for k := 0; k < kills; k++ {
			delay := time.Duration(rng.Int64N(int64(durations[m])))
			runs++
			if killAfter(t, nsScript(ns.Root, `exec "$@"`, args(target, m)...), delay) {
				killed++
			}
			check(i, target, "after a kill after "+delay.String())
		}
		if _, err := os.Stat(filepath.Join(ns.Root, target, "nix/var/nix/db/schema")); err == nil {
			validAtKill += len(copyDumpRecords(t, runNS(t, ns.Root, nil, "nix-store", "--store", target, "--dump-db")))
		}
		r := runCmd(t, nsScript(ns.Root, `exec "$@"`, args(target, m)...), nil)
		if r.code != 0 {
			t.Fatalf("trial %d: the rerun exited %d\n%s", i, r.code, tail(r.stderr, 3000))
		}
		check(i, target, "after the rerun")
		if got := copyNixClosure(t, ns.Root, target, paths); strings.Join(got, " ") != strings.Join(want, " ") {
			t.Fatalf("trial %d: after the rerun the target's closure has %d paths, want %d", i, len(got), len(want))
		}
		if _, err := os.Lstat(filepath.Join(ns.Root, target, "nix/store/trash")); !os.IsNotExist(err) {
			ents, _ := os.ReadDir(filepath.Join(ns.Root, target, "nix/store/trash"))
			t.Fatalf("trial %d: the trash is left after the rerun: %v %v", i, err, ents)
		}
	}
	t.Logf("%d of %d runs killed; %d paths were valid at the kills (of %d per trial)", killed, runs, validAtKill, len(want))
	if killed < 30 {
		t.Fatalf("only %d runs were killed before they finished", killed)
	}
}
