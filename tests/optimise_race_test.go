package tests

import (
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// optCollector is a garbage collector that runs beside optimise: real
// Nix's and ours.
type optCollector struct {
	name string
	args []string
}

func optCollectors() []optCollector {
	return []optCollector{
		{"nix-store --gc", []string{"nix-store", "--gc"}},
		{"storekeeper gc", []string{binary, "gc"}},
	}
}

// optConcurrently starts every command in root's namespace, each after
// its delay, and returns their exit codes, stderr and pids.
func optConcurrently(t testing.TB, root string, delays []time.Duration, cmds ...[]string) ([]int, []string, []int) {
	t.Helper()
	codes := make([]int, len(cmds))
	errs := make([]string, len(cmds))
	pids := make([]int, len(cmds))
	var wg sync.WaitGroup
	for i, args := range cmds {
		wg.Add(1)
		go func() {
			defer wg.Done()
			time.Sleep(delays[i])
			cmd := nsScript(root, `exec "$@"`, args...)
			var eb strings.Builder
			cmd.Stderr = &eb
			err := cmd.Start()
			if err == nil {
				pids[i] = cmd.Process.Pid
				err = cmd.Wait()
			}
			if ee, ok := err.(*exec.ExitError); ok {
				codes[i] = ee.ExitCode()
			} else if err != nil {
				codes[i] = -1
			}
			errs[i] = eb.String()
		}()
	}
	wg.Wait()
	return codes, errs, pids
}

// TestInteropOptimiseWithGC runs optimise and a garbage collector at the
// same time on one store (most paths are dead), several times with random
// offsets: both succeed, every path still valid is intact (the temp roots
// kept the collector off the paths being linked), Nix's verify passes and
// a rerun of optimise plus a real `nix-store --optimise` find nothing
// left to do.
func TestInteropOptimiseWithGC(t *testing.T) {
	ns := buildNixStore(t, nixSpec{Paths: 250, Seed: 41, Files: 5, Roots: 6, Gens: 2})
	rng := rand.New(rand.NewPCG(41, 1))
	for _, c := range optCollectors() {
		for rep := 0; rep < 3; rep++ {
			t.Run(fmt.Sprintf("%s/%d", c.name, rep), func(t *testing.T) {
				work := copyStore(t, ns.Root)
				delays := []time.Duration{0, time.Duration(rng.IntN(60)) * time.Millisecond}
				if rep%2 == 1 {
					delays[0], delays[1] = delays[1], 0
				}
				codes, errs, _ := optConcurrently(t, work, delays, []string{binary, "optimise"}, c.args)
				if codes[0] != 0 {
					t.Errorf("optimise: exit %d\n%s", codes[0], tail(errs[0], 2000))
				}
				if codes[1] != 0 {
					t.Errorf("%s: exit %d\n%s", c.name, codes[1], tail(errs[1], 2000))
				}
				optCheckNARs(t, work)
				nixVerify(t, work)
				if r := runInNS(t, work, "optimise"); r.code != 0 {
					t.Errorf("rerun: exit %d\n%s", r.code, r.stderr)
				}
				optNoTmpLinks(t, work)
				again := runNSAll(t, work, "nix-store", "--optimise").stderr
				if m := optFreedRe.FindStringSubmatch(again); m == nil || m[2] != "0" {
					t.Errorf("nix-store --optimise afterwards: %q", again)
				}
				// A second collection removes the .links entries left
				// unused, and the store is still sound.
				if nr := runNSAll(t, work, c.args...); nr.code != 0 {
					t.Errorf("second %s: %s", c.name, tail(nr.stderr, 1000))
				}
				nixVerify(t, work)
			})
		}
	}
}

// TestInteropOptimiseConcurrentRuns: two storekeeper runs and one
// `nix-store --optimise` at once on one store end with the same .links
// set as a single run, every file intact, and nothing left to link.
func TestInteropOptimiseConcurrentRuns(t *testing.T) {
	ns := buildNixStore(t, nixSpec{Paths: 200, Seed: 43, Files: 5})
	ref := copyStore(t, ns.Root)
	if r := runInNS(t, ref, "optimise"); r.code != 0 {
		t.Fatal(r.stderr)
	}
	want := strings.Join(optLinksSet(t, ref), " ")
	for rep := 0; rep < 2; rep++ {
		work := copyStore(t, ns.Root)
		codes, errs, pids := optConcurrently(t, work, []time.Duration{0, time.Duration(rep*15) * time.Millisecond, 5 * time.Millisecond},
			[]string{binary, "optimise"}, []string{binary, "optimise"}, []string{"nix-store", "--optimise"})
		for i := 0; i < 2; i++ {
			if codes[i] != 0 {
				t.Errorf("rep %d run %d: exit %d\n%s", rep, i, codes[i], tail(errs[i], 2000))
			}
		}
		if codes[2] != 0 {
			// Nix 2.8 has no retry for links that vanish under it; note it.
			t.Logf("rep %d: nix-store --optimise beside us: exit %d\n%s", rep, codes[2], tail(errs[2], 500))
		}
		if got := strings.Join(optLinksSet(t, work), " "); got != want {
			t.Errorf("rep %d: .links differ from a single run", rep)
		}
		optCheckNARs(t, work)
		// Nix 2.8 leaves its temporary link behind when rename(2) finds
		// both names already linked to one inode (a concurrent optimiser
		// got there first); ours never may.
		ents, _ := os.ReadDir(filepath.Join(work, "nix/store"))
		for _, e := range ents {
			for i := 0; i < 2; i++ {
				if strings.HasPrefix(e.Name(), fmt.Sprintf(".tmp-link-%d-", pids[i])) {
					t.Errorf("rep %d: our temporary link left: %s", rep, e.Name())
				}
			}
		}
		// The next run removes Nix's (its process is dead).
		if r := runInNS(t, work, "optimise"); r.code != 0 {
			t.Errorf("rep %d: rerun: %s", rep, r.stderr)
		}
		optNoTmpLinks(t, work)
		again := runNSAll(t, work, "nix-store", "--optimise").stderr
		if m := optFreedRe.FindStringSubmatch(again); m == nil || m[2] != "0" {
			t.Errorf("rep %d: nix-store --optimise afterwards: %q", rep, again)
		}
		nixVerify(t, work)
	}
}
