package tests

import (
	"io/fs"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// optReset replaces dst by a fresh copy of src.
func optReset(t testing.TB, src, dst string) {
	t.Helper()
	if out, err := exec.Command("rm", "-rf", dst).CombinedOutput(); err != nil {
		t.Fatalf("rm: %v: %s", err, out)
	}
	if out, err := exec.Command("cp", "-a", src, dst).CombinedOutput(); err != nil {
		t.Fatalf("cp -a: %v: %s", err, out)
	}
}

// optNoTmpLinks fails if a temporary link is left in the store directory.
func optNoTmpLinks(t testing.TB, root string) {
	t.Helper()
	ents, _ := os.ReadDir(filepath.Join(root, "nix/store"))
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), ".tmp-link-") {
			t.Errorf("temporary link left in the store directory: %s", e.Name())
		}
	}
}

// TestInteropOptimiseKill9 kills `storekeeper optimise` with SIGKILL at
// random instants (30+ trials, half of them on a fresh copy, half
// accumulating on the same store): no file is lost or changes contents
// (every valid path's NAR hash equals the DB's), no temporary link ever
// appears inside a store path, and a rerun completes with exactly the
// .links set of an uninterrupted run, after which real Nix finds nothing
// more to link and its verify passes.
func TestInteropOptimiseKill9(t *testing.T) {
	ns := buildNixStore(t, nixSpec{Paths: 150, Seed: 31, Files: 6})
	ref := copyStore(t, ns.Root)
	t0 := time.Now()
	if r := runInNS(t, ref, "optimise"); r.code != 0 {
		t.Fatalf("reference run: %d %s", r.code, r.stderr)
	}
	full := time.Since(t0)
	refLinks := strings.Join(optLinksSet(t, ref), " ")

	work := filepath.Join(t.TempDir(), "root")
	rng := rand.New(rand.NewPCG(7, 7))
	const trials = 32
	killedMidway := 0
	for i := 0; i < trials; i++ {
		if i%2 == 0 {
			optReset(t, ns.Root, work)
		}
		cmd := nsScript(work, `exec "$@"`, binary, "optimise", "--quiet")
		delay := time.Duration(rng.Int64N(int64(full) * 11 / 10))
		if killAfter(t, cmd, delay) {
			killedMidway++
		}
		optCheckNARs(t, work)
		if t.Failed() {
			t.Fatalf("trial %d (killed after %v)", i, delay)
		}
	}
	t.Logf("%d of %d runs killed before they finished (a full run takes %v)", killedMidway, trials, full)
	if killedMidway < trials/2 {
		t.Errorf("only %d runs were killed midway", killedMidway)
	}
	r := runInNS(t, work, "optimise")
	if r.code != 0 {
		t.Fatalf("rerun: exit %d\n%s", r.code, r.stderr)
	}
	if got := strings.Join(optLinksSet(t, work), " "); got != refLinks {
		t.Errorf(".links after kills and a rerun differ from an uninterrupted run")
	}
	optNoTmpLinks(t, work)
	optCheckNARs(t, work)
	optCanonicalDirs(t, work)
	if ents, _ := os.ReadDir(filepath.Join(work, "nix/var/storekeeper/optimise")); len(ents) != 0 {
		t.Errorf("journals left behind: %d", len(ents))
	}
	again := runNSAll(t, work, "nix-store", "--optimise").stderr
	if m := optFreedRe.FindStringSubmatch(again); m == nil || m[2] != "0" {
		t.Errorf("nix-store --optimise after the rerun: %q", again)
	}
	nixVerify(t, work)
}

// optCanonicalDirs fails unless every directory inside the store paths
// has mode 0555 and mtime 1, as Nix leaves them (a killed run's fresh
// mtimes must have been restored from its journal).
func optCanonicalDirs(t testing.TB, root string) {
	t.Helper()
	store := filepath.Join(root, "nix/store")
	ents, _ := os.ReadDir(store)
	for _, e := range ents {
		if !e.IsDir() || strings.HasPrefix(e.Name(), ".") {
			continue
		}
		filepath.WalkDir(filepath.Join(store, e.Name()), func(p string, d fs.DirEntry, err error) error {
			if err != nil || !d.IsDir() {
				return nil
			}
			var st unix.Stat_t
			if unix.Lstat(p, &st) == nil && (st.Mode&0o7777 != 0o555 || st.Mtim.Sec != 1) {
				t.Errorf("%s: mode %o, mtime %d; want 0555 and 1", p, st.Mode&0o7777, st.Mtim.Sec)
			}
			return nil
		})
	}
}
