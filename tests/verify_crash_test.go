package tests

import (
	"bufio"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"storekeeper/store/storetest"
)

// readLedger returns the names in the ledger snapshot and log.
func readLedger(t *testing.T, dir string) map[string]bool {
	t.Helper()
	m := map[string]bool{}
	for _, n := range []string{"ledger", "ledger.log"} {
		b, err := os.ReadFile(filepath.Join(dir, n))
		if err != nil && !os.IsNotExist(err) {
			t.Fatal(err)
		}
		s := string(b)
		if i := strings.LastIndexByte(s, '\n'); i >= 0 {
			s = s[:i] // a torn last line does not count
		} else {
			s = ""
		}
		for _, l := range strings.Split(s, "\n") {
			if f := strings.Fields(l); len(f) == 3 {
				m[f[2]] = true
			}
		}
	}
	return m
}

// TestVerifyKilledLosesNoLedgerEntries SIGKILLs budgeted audits at random
// instants: every path the run reported verified (with -v) is in the
// ledger afterwards, and the next runs carry on where it stopped.
func TestVerifyKilledLosesNoLedgerEntries(t *testing.T) {
	root := t.TempDir()
	spec := storetest.Spec{Paths: 700, Seed: 21, MaxDeps: 4, Files: 6, FileSize: 16 << 10, Dup: 0.1, Roots: 4, Generations: 2, Multi: 0.1}
	b, err := storetest.Build(root, spec)
	if err != nil {
		t.Fatal(err)
	}
	state := b.Layout.OwnStateDir()
	rng := rand.New(rand.NewPCG(5, 6))
	killed := 0
	for i := 0; i < 6; i++ {
		cmd := exec.Command(binary, "--store", root, "-v", "verify", "--budget", "1h", "--jobs", "2")
		pr, pw := io.Pipe()
		cmd.Stderr = pw
		var reported []string
		done := make(chan struct{})
		go func() {
			sc := bufio.NewScanner(pr)
			for sc.Scan() {
				l := sc.Text()
				if strings.HasPrefix(l, "verified '") && strings.HasSuffix(l, "'") {
					reported = append(reported, filepath.Base(strings.TrimSuffix(l[len("verified '"):], "'")))
				}
			}
			close(done)
		}()
		if killAfter(t, cmd, time.Duration(20+rng.IntN(300))*time.Millisecond) {
			killed++
		}
		pw.Close()
		<-done
		have := readLedger(t, state)
		for _, p := range reported {
			if !have[p] {
				t.Fatalf("run %d: %s was reported verified but is not in the ledger", i, p)
			}
		}
		t.Logf("run %d: %d reported, %d in the ledger", i, len(reported), len(have))
	}
	if killed == 0 {
		t.Fatal("no run was killed")
	}
	// The audits carry on: a full run after the crashes leaves every
	// path in a folded ledger, and the manifest log is readable.
	r := run(t, "--store", root, "verify", "--check-contents")
	if r.code != 0 {
		t.Fatalf("after the crashes: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	have := readLedger(t, state)
	if len(have) != len(b.Valid) {
		t.Fatalf("ledger has %d of %d paths", len(have), len(b.Valid))
	}
	if _, err := os.Stat(filepath.Join(state, "ledger.log")); !os.IsNotExist(err) {
		t.Error("ledger.log left after a complete run")
	}
}

// TestVerifyExitCodes: 0 clean, 1 damage, 2 could not run.
func TestVerifyExitCodes(t *testing.T) {
	root := t.TempDir()
	b := buildDemo(t, root)
	if r := run(t, "--store", root, "verify", "--check-contents"); r.code != 0 {
		t.Fatalf("clean: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	if r := run(t, "--store", filepath.Join(root, "nope"), "verify"); r.code != 2 {
		t.Errorf("no store: exit %d", r.code)
	}
	if r := run(t, "--store", root, "verify", "/nix/store/"+strings.Repeat("a", 32)+"-x"); r.code != 2 || !strings.Contains(r.stderr, "is not valid") {
		t.Errorf("invalid path: exit %d %s", r.code, r.stderr)
	}
	if r := run(t, "--store", root, "verify", "--budget", "lots"); r.code != 2 {
		t.Errorf("bad budget: exit %d", r.code)
	}
	var victim string
	for _, p := range b.Valid {
		if !strings.HasSuffix(p, ".drv") {
			victim = p
			break
		}
	}
	real := b.Layout.RealPath(victim)
	exec.Command("chmod", "-R", "u+w", real).Run()
	os.RemoveAll(real)
	r := run(t, "--store", root, "--quiet", "verify")
	if r.code != 1 || !strings.Contains(r.stdout, victim) {
		t.Errorf("damaged: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
}

// TestVerifyRepairKilled SIGKILLs `verify --check-contents --repair` at
// random instants on a store with vanished paths and a damaged .links
// entry: after every kill the database is intact and the next run
// finishes the repair; the audit after that is clean.
func TestVerifyRepairKilled(t *testing.T) {
	root := t.TempDir()
	spec := storetest.Spec{Paths: 400, Seed: 22, MaxDeps: 4, Files: 4, FileSize: 8 << 10, Dup: 0.1, Roots: 4, Generations: 2, Multi: 0.1}
	b, err := storetest.Build(root, spec)
	if err != nil {
		t.Fatal(err)
	}
	refc := map[string]int{}
	for p, refs := range b.Refs {
		for _, r := range refs {
			if r != p {
				refc[r]++
			}
		}
	}
	var gone []string
	for _, p := range b.Valid {
		if refc[p] == 0 && !strings.HasSuffix(p, ".drv") && len(gone) < 3 {
			gone = append(gone, p)
			real := b.Layout.RealPath(p)
			exec.Command("chmod", "-R", "u+w", real).Run()
			os.RemoveAll(real)
		}
	}
	links := b.Layout.LinksDir()
	os.MkdirAll(links, 0o755)
	bad := filepath.Join(links, "0000000000000000000000000000000000000000000000000000")
	os.WriteFile(bad, []byte("junk"), 0o444)

	rng := rand.New(rand.NewPCG(7, 8))
	for i := 0; i < 5; i++ {
		cmd := exec.Command(binary, "--store", root, "verify", "--check-contents", "--repair")
		killAfter(t, cmd, time.Duration(rng.IntN(400))*time.Millisecond)
		if msg := dbIntegrity(t, b.Layout.DBPath()); msg != "" {
			t.Fatalf("after kill %d: database damaged: %s", i, msg)
		}
	}
	r := run(t, "--store", root, "verify", "--check-contents", "--repair")
	if r.code != 0 {
		t.Fatalf("final repair: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	if _, err := os.Lstat(bad); !os.IsNotExist(err) {
		t.Error("the damaged link is still there")
	}
	r = run(t, "--store", root, "verify", "--check-contents", "--metadata")
	if r.code != 0 {
		t.Fatalf("after repair: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
}
