package tests

// An unreadable file (EIO) in verify or repair is a finding about that
// path, not the end of the run (#23; Nix's issue 2735: one EIO aborts a
// whole `nix-store --verify --check-contents`).
//
// The EIO is real: testdata/eiofs.py (Debian's python3-fusepy, which
// .ci/run installs) mounts a pass-through FUSE file system over /nix/store
// in the test's private mount namespace, and reading one chosen file of one
// store path fails with EIO in the kernel, as a bad sector would; every
// other operation (stat, open, rename, unlink, and all writes) goes
// through to the store below.

import (
	"encoding/json"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
)

var (
	fuseOnce sync.Once
	fuseWhy  string
)

// requireFUSE skips (or, under STOREKEEPER_REQUIRE_NIX=1, fails) the test
// when testdata/eiofs.py cannot run here.
func requireFUSE(t testing.TB) {
	t.Helper()
	requireNix(t)
	fuseOnce.Do(func() {
		if _, err := os.Stat("/dev/fuse"); err != nil {
			fuseWhy = "no /dev/fuse: " + err.Error()
			return
		}
		if out, err := exec.Command("/usr/bin/python3", "-c", "import fusepy").CombinedOutput(); err != nil {
			fuseWhy = "python3-fusepy is not installed (apt-get install -y python3-fusepy): " + err.Error() + ": " + string(out)
		}
	})
	if fuseWhy == "" {
		return
	}
	msg := "\n*** SKIPPING FUSE TEST: " + fuseWhy + " ***\n"
	if os.Getenv("STOREKEEPER_REQUIRE_NIX") == "1" {
		t.Fatal(msg + "(STOREKEEPER_REQUIRE_NIX=1: these tests must run)")
	}
	t.Skip(msg)
}

// runWithEIO runs storekeeper with args in root's namespace with
// testdata/eiofs.py mounted over /nix/store, so that reading bad (a file
// under the store: HASH-NAME/...) fails with EIO. It returns the run and
// the lines eiofs logged during it ("read BAD" for each read attempt of
// the bad file).
func runWithEIO(t testing.TB, root, bad string, args ...string) (result, []string) {
	t.Helper()
	return runOverEIOFS(t, root, bad, "", args...)
}

// runOverEIOFS is runWithEIO with eiofs.py's DELAY_MS argument: unless
// delay is "", every read of file data through the mount sleeps delay
// milliseconds, and the log has eiofs's "max-reads N" and "max-paths N"
// lines. bad may be "" (no read fails).
func runOverEIOFS(t testing.TB, root, bad, delay string, args ...string) (result, []string) {
	t.Helper()
	helper, err := filepath.Abs("testdata/eiofs.py")
	if err != nil {
		t.Fatal(err)
	}
	log := filepath.Join(t.TempDir(), "eiofs.log")
	script := `helper=$1 bad=$2 log=$3 delay=$4; shift 4
/usr/bin/python3 "$helper" /nix/store "$bad" "$log" $delay 2>"$log.err" &
fpid=$!
i=0
until grep -q '^mounted$' "$log" 2>/dev/null; do
	i=$((i+1))
	if [ $i -gt 200 ] || ! kill -0 $fpid 2>/dev/null; then echo "eiofs did not mount:" >&2; cat "$log.err" >&2; kill $fpid 2>/dev/null; exit 98; fi
	sleep 0.05
done
grep -q ' /nix/store .* - fuse eiofs ' /proc/self/mountinfo || { echo "/nix/store is not the eiofs mount" >&2; exit 98; }
echo run >> "$log"
"$@"
rc=$?
umount /nix/store || umount -l /nix/store
wait $fpid
exit $rc
`
	res := runCmd(t, nsScript(root, script, append([]string{helper, bad, log, delay, binary}, args...)...), args)
	if res.code == 98 {
		t.Fatalf("eiofs: %s", res.stderr)
	}
	data, err := os.ReadFile(log)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(string(data)), "\n")
	for i, l := range lines {
		if l == "run" {
			return res, lines[i+1:]
		}
	}
	t.Fatalf("eiofs log without the run marker: %q", data)
	return res, nil
}

// firstRegularFile returns the first regular file (in sorted order) of
// the store path p under root, relative to the store dir
// (HASH-NAME/...), or "".
func firstRegularFile(t testing.TB, root, p string) string {
	t.Helper()
	var files []string
	storeDir := filepath.Join(root, "nix/store")
	filepath.WalkDir(filepath.Join(root, p), func(q string, d fs.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() {
			rel, _ := filepath.Rel(storeDir, q)
			files = append(files, rel)
		}
		return nil
	})
	sort.Strings(files)
	if len(files) == 0 {
		return ""
	}
	return files[0]
}

// eioFixture is a store built by real Nix, a signed file:// cache of its
// victims, the victim whose file reads fail (eio, its file bad) and one
// to damage by a flipped byte (flip).
type eioFixture struct {
	ns        *nixStore
	cache     *binCache
	eio, flip string
	bad       string // eio's unreadable file, relative to the store dir
	db        string // dbSnapshot of the intact store
	entries   []string
}

func newEIOFixture(t *testing.T) *eioFixture {
	t.Helper()
	requireFUSE(t)
	ns := buildNixStore(t, nixSpec{Paths: 14, Seed: 2735, Files: 3, Salt: "eio"})
	f := &eioFixture{ns: ns}
	victims := repairVictims(ns, 4)
	for _, v := range victims {
		if bad := firstRegularFile(t, ns.Root, v); bad != "" && f.eio == "" {
			f.eio, f.bad = v, bad
		} else if f.flip == "" && bad != "" {
			f.flip = v
		}
	}
	if f.eio == "" || f.flip == "" {
		t.Fatalf("no two victims with regular files among %v", victims)
	}
	f.cache = makeBinCache(t, ns.Root, "zstd", []string{f.eio, f.flip})
	f.db = dbSnapshot(t, ns.Root)
	f.entries = storeEntries(t, ns.Root)
	return f
}

// storeEntries lists the store dir's entries.
func storeEntries(t testing.TB, root string) []string {
	t.Helper()
	ents, err := os.ReadDir(filepath.Join(root, "nix/store"))
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range ents {
		out = append(out, e.Name())
	}
	return out
}

// verifyJSON is the part of `storekeeper --json verify`'s envelope these
// tests read.
type verifyJSON struct {
	OK     bool `json:"ok"`
	Result struct {
		Findings []struct {
			Kind    string `json:"kind"`
			Path    string `json:"path"`
			Got     string `json:"got"`
			Message string `json:"message"`
			Fix     string `json:"fix"`
		} `json:"findings"`
		Summary struct {
			ValidPaths int `json:"valid_paths"`
			Hashed     int `json:"paths_hashed"`
			Damaged    int `json:"paths_damaged"`
		} `json:"summary"`
	} `json:"result"`
}

// TestVerifyEIO: verify --check-contents over a store in which one file
// cannot be read (EIO) reports an io-error finding for that path (exit
// 1), with the error and the remedy (check the disk, then repair the
// path), and still hashes every other path, finding the other damage.
func TestVerifyEIO(t *testing.T) {
	f := newEIOFixture(t)
	root := copyStore(t, f.ns.Root)
	damageFlip(t, root, f.flip)

	res, log := runWithEIO(t, root, f.bad, "--json", "verify", "--check-contents")
	if res.code != 1 {
		t.Fatalf("verify exit %d, want 1\nstdout: %s\nstderr: %s", res.code, tail(res.stdout, 3000), tail(res.stderr, 2000))
	}
	if len(log) == 0 {
		t.Fatalf("verify never read %s: the EIO was not exercised", f.bad)
	}
	var v verifyJSON
	if err := json.Unmarshal([]byte(res.stdout), &v); err != nil {
		t.Fatalf("%v\n%s", err, res.stdout)
	}
	kinds := map[string]string{}
	for _, fd := range v.Result.Findings {
		kinds[fd.Path] += fd.Kind + " "
		if fd.Kind == "io-error" {
			if fd.Path != f.eio || !strings.Contains(strings.ToLower(fd.Got+fd.Message), "input/output error") || !strings.Contains(fd.Fix, f.eio) {
				t.Errorf("io-error finding: %+v", fd)
			}
		}
	}
	if kinds[f.eio] != "io-error " || !strings.Contains(kinds[f.flip], "modified") || len(kinds) != 2 {
		t.Errorf("findings by path: %v; want io-error for %s, modified for %s, nothing else", kinds, f.eio, f.flip)
	}
	s := v.Result.Summary
	if s.Hashed != s.ValidPaths-1 || s.Damaged != 2 {
		t.Errorf("summary %+v: want every path but the unreadable one hashed, 2 damaged", s)
	}

	// The text output names the path and the error, and goes on.
	res, _ = runWithEIO(t, root, f.bad, "verify", "--check-contents")
	out := res.stdout + res.stderr
	if res.code != 1 || !strings.Contains(out, f.eio) || !strings.Contains(strings.ToLower(out), "input/output error") || !strings.Contains(out, f.flip) {
		t.Errorf("verify (text) exit %d:\n%s", res.code, tail(out, 3000))
	}
}

// TestRepairEIO: repair over a store in which one file of a path cannot
// be read (EIO). `repair --damaged` audits (the unreadable path is an
// io-error finding, not the end of the run), replaces that path from the
// file:// cache and repairs the other damaged one: exit 0, real Nix then
// finds the store intact, the database is unchanged, nothing is left
// staged. `repair PATH` of the unreadable path alone never reads its old
// copy: the old tree is only exchanged, moved to the trash and unlinked.
func TestRepairEIO(t *testing.T) {
	f := newEIOFixture(t)
	args := trustArgs(f.cache.URL(), f.cache)

	t.Run("damaged", func(t *testing.T) {
		root := copyStore(t, f.ns.Root)
		damageFlip(t, root, f.flip)
		old := pathState(t, root, f.eio)
		res, log := runWithEIO(t, root, f.bad, append([]string{"repair", "--damaged"}, args...)...)
		out := res.stdout + res.stderr
		if res.code != 0 {
			t.Fatalf("repair --damaged exit %d, want 0\n%s", res.code, tail(out, 4000))
		}
		t.Logf("repair --damaged:\n%s", tail(out, 2000))
		if len(log) == 0 {
			t.Errorf("the audit never read %s: the EIO was not exercised", f.bad)
		}
		for _, p := range []string{f.eio, f.flip} {
			if !strings.Contains(out, p) {
				t.Errorf("the output does not name %s:\n%s", p, tail(out, 3000))
			}
		}
		if want := "warning: '" + f.eio + "' could not be read ("; !strings.Contains(res.stderr, want) || !strings.Contains(res.stderr, "check the disk") {
			t.Errorf("stderr does not say %s... check the disk:\n%s", want, tail(res.stderr, 3000))
		}
		if pathState(t, root, f.eio) == old {
			t.Errorf("%s is as it was", f.eio)
		}
		nixVerify(t, root)
		if dbSnapshot(t, root) != f.db {
			t.Errorf("the database changed")
		}
		checkNothingStaged(t, root, f.entries)
	})

	t.Run("path", func(t *testing.T) {
		root := copyStore(t, f.ns.Root)
		res, log := runWithEIO(t, root, f.bad, append([]string{"repair"}, append(args, f.eio)...)...)
		if res.code != 0 {
			t.Fatalf("repair %s exit %d, want 0\n%s", f.eio, res.code, tail(res.stdout+res.stderr, 4000))
		}
		if len(log) != 0 {
			t.Errorf("repair read the old copy's unreadable file: %q", log)
		}
		nixVerify(t, root)
		if dbSnapshot(t, root) != f.db {
			t.Errorf("the database changed")
		}
		checkNothingStaged(t, root, f.entries)
	})
}

// TestVerifyRepairEIO: verify --check-contents --repair, which repairs
// through the same code as repair --damaged, puts back the unreadable
// path and the damaged one too, and says so; real Nix then finds the
// store intact.
func TestVerifyRepairEIO(t *testing.T) {
	f := newEIOFixture(t)
	root := copyStore(t, f.ns.Root)
	damageFlip(t, root, f.flip)
	res, log := runWithEIO(t, root, f.bad, append([]string{"verify", "--check-contents", "--repair"}, trustArgs(f.cache.URL(), f.cache)...)...)
	out := res.stdout + res.stderr
	t.Logf("verify --check-contents --repair:\n%s", tail(out, 2000))
	if res.code != 0 {
		t.Fatalf("exit %d, want 0\n%s", res.code, tail(out, 4000))
	}
	if len(log) == 0 {
		t.Errorf("the audit never read %s: the EIO was not exercised", f.bad)
	}
	for _, p := range []string{f.eio, f.flip} {
		if !strings.Contains(out, p) {
			t.Errorf("the output does not name %s", p)
		}
	}
	nixVerify(t, root)
	if dbSnapshot(t, root) != f.db {
		t.Errorf("the database changed")
	}
	checkNothingStaged(t, root, f.entries)
}
