package tests

// verify --check-contents with the default --jobs starts only as many
// readers as there are cores and lets more in while the cores idle (the
// jobGate of verify/gate.go, #27): on a slow disk, reads waiting for it
// leave the cores idle, so many overlap; from the page cache, hashing
// fills the cores and more readers would only share them out.
//
// The slow disk is real to the kernel: testdata/eiofs.py with DELAY_MS
// mounts a pass-through FUSE file system over /nix/store in the test's
// private mount namespace whose every read of file data sleeps first,
// served on many threads so reads overlap, with direct_io so the page
// cache never answers one. It logs the most store paths that had reads in
// flight at once: each reader hashes one path at a time and waits for its
// reads before it moves on, so that is at most the number of readers
// taking work. eiofs logs the reads in flight too, but those are no
// bound: one reader's batched hashing submits a path's small files
// through io_uring together, which may read them at once (Linux 6.18
// issues them to FUSE one after another, so here both counts agree).

import (
	"fmt"
	"strconv"
	"strings"
	"testing"
)

// slowReadMS is how long each read of file data through the slow mount
// sleeps.
const slowReadMS = "30"

// slowRun is one storekeeper run over the slow mount and what eiofs saw.
type slowRun struct {
	res      result
	maxPaths int // most store paths with reads in flight at once
	maxReads int // most reads in flight at once
}

// verifySlow runs `storekeeper verify --check-contents --no-record` with
// extra args on root's store mounted through the slow eiofs.
func verifySlow(t *testing.T, root string, extra ...string) slowRun {
	t.Helper()
	args := append([]string{"verify", "--check-contents", "--no-record"}, extra...)
	res, log := runOverEIOFS(t, root, "", slowReadMS, args...)
	r := slowRun{res: res}
	for _, l := range log {
		if k, v, ok := strings.Cut(l, " "); ok {
			n, err := strconv.Atoi(v)
			switch {
			case k == "max-paths" && err == nil:
				r.maxPaths = max(r.maxPaths, n)
			case k == "max-reads" && err == nil:
				r.maxReads = max(r.maxReads, n)
			}
		}
	}
	if r.maxPaths == 0 {
		t.Fatalf("storekeeper %s read no file through the slow mount (exit %d)\nlog: %q\n%s", strings.Join(args, " "), res.code, log, tail(res.stdout+res.stderr, 3000))
	}
	t.Logf("storekeeper %s: exit %d, at most %d paths and %d reads in flight", strings.Join(args, " "), res.code, r.maxPaths, r.maxReads)
	return r
}

// modifiedPaths returns the store paths of the output's "path '...' was
// modified!" lines.
func modifiedPaths(out string) map[string]bool {
	set := map[string]bool{}
	for _, l := range strings.Split(out, "\n") {
		if _, rest, ok := strings.Cut(l, "path '"); ok {
			if p, _, ok := strings.Cut(rest, "' was modified!"); ok {
				set[p] = true
			}
		}
	}
	return set
}

// TestVerifyGateSlowDisk: on a store whose reads are slow (a FUSE
// pass-through sleeping in every read), `verify --check-contents
// --no-record` with the default --jobs has more store paths in flight at
// once than GOMAXPROCS, because the gate saw idle cores and let more
// readers in; with -j 2 never more than 2 (and 2: the measurement sees
// overlapping readers). Both find exactly what they must: a clean store
// exits 0, one flipped byte is that path's "was modified!" and exit 1.
func TestVerifyGateSlowDisk(t *testing.T) {
	requireFUSE(t)
	// The gate starts at GOMAXPROCS readers; pin it, so that the store
	// below outlasts a few of the gate's 100 ms samples on any machine.
	const procs = 2
	t.Setenv("GOMAXPROCS", strconv.Itoa(procs))
	ns := buildNixStore(t, nixSpec{Paths: 60, Seed: 27, Files: 3, Salt: "gate"})

	clean := verifySlow(t, ns.Root)
	if clean.res.code != 0 {
		t.Errorf("verify of the intact store: exit %d, want 0\n%s", clean.res.code, tail(clean.res.stdout+clean.res.stderr, 3000))
	}
	if clean.maxPaths <= procs {
		t.Errorf("default --jobs on a slow disk: at most %d paths read at once, want more than GOMAXPROCS=%d (the gate never raised its limit)", clean.maxPaths, procs)
	}

	var victim string
	for _, outs := range ns.Outputs {
		if p := outs["out"]; damageFlip(t, ns.Root, p) != "" {
			victim = p
			break
		}
	}
	if victim == "" {
		t.Fatal("no output with a regular file to damage")
	}
	for _, jobs := range []int{0, 2} {
		var extra []string
		if jobs > 0 {
			extra = []string{"-j", strconv.Itoa(jobs)}
		}
		r := verifySlow(t, ns.Root, extra...)
		name := fmt.Sprintf("--jobs %d", jobs)
		if jobs == 0 {
			name = "default --jobs"
		}
		out := r.res.stdout + r.res.stderr
		if got := modifiedPaths(out); r.res.code != 1 || len(got) != 1 || !got[victim] {
			t.Errorf("%s on the damaged store: exit %d, modified %v; want exit 1 and %s modified, nothing else\n%s", name, r.res.code, got, victim, tail(out, 3000))
		}
		switch {
		case jobs == 0 && r.maxPaths <= procs:
			t.Errorf("%s: at most %d paths read at once, want more than GOMAXPROCS=%d", name, r.maxPaths, procs)
		case jobs > 0 && r.maxPaths != jobs:
			t.Errorf("%s: at most %d paths read at once, want %d", name, r.maxPaths, jobs)
		}
	}
}
