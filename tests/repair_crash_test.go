package tests

import (
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"storekeeper/nix/nar"
)

// TestRepairKill9 kills `storekeeper repair` with SIGKILL at random
// instants (32 trials, spread over the whole run: look-ups, downloads,
// unpacking and swaps; from a file:// cache made by real `nix copy` and
// from the same cache over HTTP on 127.0.0.1 with a delay before each
// answer, so that kills also land in the look-ups and transfers; every
// other trial kills a second run on the same store before the rerun).
// After each kill every damaged path is either exactly its damaged copy
// (same inodes, same bytes) or the correct one (its NAR hash is the
// database's), never missing if it existed, never half-written; the
// store directory holds no staged tree or temporary name (only store
// paths, lock files, .links and the trash); and a rerun of repair
// finishes the job: exit 0, `nix-store --verify --check-contents`
// passes, the database is as it was and the trash is empty.
func TestRepairKill9(t *testing.T) {
	f := newRepairFixture(t, nixSpec{Paths: 60, Seed: 2323, Files: 8, Salt: "repair-kill9"}, 24, "zstd")
	c := f.caches["zstd"]
	srv := serveCache(t, c.Dir)
	srv.fail(fault{Kind: faultDelay, Delay: 15 * time.Millisecond})
	want := map[string]nar.Hash{}
	for _, p := range f.victims {
		h, _, err := nar.HashPath(filepath.Join(f.ns.Root, p))
		if err != nil {
			t.Fatal(err)
		}
		want[p] = h
	}
	storeNames := func(root string) map[string]bool {
		ents, err := os.ReadDir(filepath.Join(root, "nix/store"))
		if err != nil {
			t.Fatal(err)
		}
		m := map[string]bool{}
		for _, e := range ents {
			m[e.Name()] = true
		}
		return m
	}
	repairArgs := func(url string) []string {
		return append(append([]string{binary, "--quiet", "repair"}, trustArgs(url, c)...), f.victims...)
	}

	// How long an uninterrupted run takes, from each source.
	durations := map[string]time.Duration{}
	for _, url := range []string{c.URL(), srv.URL} {
		root, _, _ := f.damaged(t)
		t0 := time.Now()
		if r := runCmd(t, nsScript(root, `exec "$@"`, repairArgs(url)...), nil); r.code != 0 {
			t.Fatalf("uninterrupted repair from %s: exit %d\n%s", url, r.code, tail(r.stderr, 3000))
		}
		durations[url] = time.Since(t0)
		nixVerify(t, root)
	}
	t.Logf("uninterrupted runs: %v", durations)

	rng := rand.New(rand.NewPCG(23, 9))
	// At least 32 trials, and more (up to 80) until 30 runs were killed
	// before they finished: a delay drawn from the uninterrupted run's
	// time can land after a faster run has exited (27 of 48 once, on a
	// loaded machine).
	const trials, maxTrials = 32, 80
	killed, repairedAtKill, untouchedAtKill, runs := 0, 0, 0, 0
	for i := 0; i < maxTrials && (i < trials || killed < 30); i++ {
		url := c.URL()
		if i%2 == 1 {
			url = srv.URL
		}
		root, _, removed := f.damaged(t)
		wasRemoved := map[string]bool{}
		for _, p := range removed {
			wasRemoved[p] = true
		}
		damaged := map[string]string{}
		for _, p := range f.victims {
			damaged[p] = pathState(t, root, p)
		}
		names := storeNames(root)
		for _, p := range f.victims {
			names[filepath.Base(p)] = true // a removed one comes back
		}
		kills := 1 + i%4/2 // every other pair of trials: two kills before the rerun
		for k := 0; k < kills; k++ {
			delay := time.Duration(rng.Int64N(int64(durations[url]) * 11 / 10))
			runs++
			if killAfter(t, nsScript(root, `exec "$@"`, repairArgs(url)...), delay) {
				killed++
			}
			// Every victim is its damaged copy or the correct one.
			for _, p := range f.victims {
				st := pathState(t, root, p)
				switch {
				case st == "missing" && !wasRemoved[p]:
					t.Fatalf("trial %d (kill after %v): %s existed and is missing", i, delay, p)
				case st == "missing":
				case st == damaged[p]:
					untouchedAtKill++
				default:
					h, _, err := nar.HashPath(filepath.Join(root, p))
					if err != nil || h != want[p] {
						t.Fatalf("trial %d (kill after %v): %s is neither its damaged copy nor the correct one (hash %s, %v)\n%s", i, delay, p, h, err, st)
					}
					repairedAtKill++
					damaged[p] = st // a later kill must leave this copy
				}
			}
			// Nothing but store paths, lock files, .links and the
			// trash in the store directory.
			for n := range storeNames(root) {
				if !names[n] && n != "trash" && n != ".links" && !strings.HasSuffix(n, ".lock") {
					t.Fatalf("trial %d (kill after %v): %s appeared in the store directory", i, delay, n)
				}
			}
		}
		r := runCmd(t, nsScript(root, `exec "$@"`, repairArgs(url)...), nil)
		if r.code != 0 {
			t.Fatalf("trial %d: the rerun exited %d\n%s", i, r.code, tail(r.stderr, 3000))
		}
		for _, p := range f.victims {
			if h, _, err := nar.HashPath(filepath.Join(root, p)); err != nil || h != want[p] {
				t.Fatalf("trial %d: after the rerun %s hashes to %s (%v)", i, p, h, err)
			}
		}
		if _, err := os.Lstat(filepath.Join(root, "nix/store/trash")); !os.IsNotExist(err) {
			ents, _ := os.ReadDir(filepath.Join(root, "nix/store/trash"))
			t.Fatalf("trial %d: the trash is left after the rerun: %v %v", i, err, ents)
		}
		if got := dbSnapshot(t, root); got != f.db {
			t.Fatalf("trial %d: the database changed", i)
		}
		nixVerify(t, root)
	}
	t.Logf("%d of %d runs killed; at the kills %d victims were already repaired, %d untouched", killed, runs, repairedAtKill, untouchedAtKill)
	if killed < 30 {
		t.Fatalf("only %d runs were killed before they finished", killed)
	}
}
