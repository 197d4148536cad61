package tests

// Interop tests of `storekeeper optimise` with real Nix 2.8: the same
// .links set, the same summary line, the same disk use as
// `nix-store --optimise` on the same store; Nix finds nothing more to do
// afterwards and `nix-store --verify --check-contents` passes.

import (
	"context"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"storekeeper/graph"
	"storekeeper/nix/nar"
	"storekeeper/store/db"
)

var optFreedRe = regexp.MustCompile(`([0-9.]+ MiB) freed by hard-linking ([0-9]+) files`)

func optLinksSet(t testing.TB, root string) []string {
	t.Helper()
	ents, err := os.ReadDir(filepath.Join(root, "nix/store/.links"))
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	sort.Strings(names)
	return names
}

// optDiskUse is the number of distinct allocated blocks under the store, as
// du counts them (each inode once).
func optDiskUse(t testing.TB, root string) int64 {
	t.Helper()
	seen := map[uint64]bool{}
	var blocks int64
	filepath.WalkDir(filepath.Join(root, "nix/store"), func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return nil
		}
		var st unix.Stat_t
		if !d.IsDir() && unix.Lstat(p, &st) == nil && !seen[st.Ino] {
			seen[st.Ino] = true
			blocks += st.Blocks
		}
		return nil
	})
	return blocks
}

// optCheckNARs hashes every valid path and compares with the DB, and looks
// for temporary links inside store paths.
func optCheckNARs(t testing.TB, root string) {
	t.Helper()
	s := openChroot(t, root)
	defer s.Close() // now: the commands run next need no reader holding the DB
	lay := s.Layout
	g, err := s.LoadGraph(context.Background(), db.GraphOptions{Hashes: true})
	if err != nil {
		t.Fatal(err)
	}
	for id := graph.PathID(0); int(id) < g.Len(); id++ {
		phys := lay.RealPath(g.Path(id))
		h, _, err := nar.HashPath(phys)
		if err != nil {
			t.Fatalf("%s: %v", phys, err)
		}
		if h != g.NarHash[id] {
			t.Fatalf("%s: contents changed: NAR hash %s, DB %s", g.Path(id), h, g.NarHash[id])
		}
		filepath.WalkDir(phys, func(p string, d fs.DirEntry, err error) error {
			if err == nil && strings.HasPrefix(d.Name(), ".tmp-link") {
				t.Fatalf("temporary link inside a store path: %s", p)
			}
			return nil
		})
	}
}

func TestInteropOptimiseMatchesNix(t *testing.T) {
	ns := buildNixStore(t, nixSpec{Paths: 150, Seed: 21, Files: 4, Roots: 3, Leftover: 2})
	// A few odd cases Nix handles specially, in both copies: a writable
	// (suspicious) file, and a pre-existing .links entry of the wrong size.
	out0 := ns.Outputs[5]["out"]
	var victim string
	filepath.WalkDir(filepath.Join(ns.Root, out0), func(p string, d fs.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() && victim == "" {
			victim = p
		}
		return nil
	})
	if victim != "" {
		st, _ := os.Stat(victim)
		os.Chmod(victim, st.Mode().Perm()|0o200)
	}
	nixRoot, ourRoot := copyStore(t, ns.Root), copyStore(t, ns.Root)

	nr := runNSAll(t, nixRoot, "nix-store", "--optimise")
	nixErr, code := nr.stderr, nr.code
	if code != 0 {
		t.Fatalf("nix-store --optimise: %s", nixErr)
	}
	r := runInNS(t, ourRoot, "optimise")
	if r.code != 0 {
		t.Fatalf("storekeeper optimise: exit %d\n%s", r.code, r.stderr)
	}
	nm, om := optFreedRe.FindStringSubmatch(nixErr), optFreedRe.FindStringSubmatch(r.stderr)
	if nm == nil || om == nil || nm[0] != om[0] {
		t.Errorf("summary differs:\nnix: %q\nours: %q", nm, om)
	}
	if victim != "" && !strings.Contains(r.stderr, "suspicious writable file") {
		t.Errorf("writable file not reported:\n%s", r.stderr)
	}
	nl, ol := optLinksSet(t, nixRoot), optLinksSet(t, ourRoot)
	if strings.Join(nl, " ") != strings.Join(ol, " ") {
		t.Errorf(".links differ: nix %d entries, ours %d", len(nl), len(ol))
	}
	if a, b := optDiskUse(t, nixRoot), optDiskUse(t, ourRoot); a != b {
		t.Errorf("disk use differs: nix %d blocks, ours %d", a, b)
	}
	// Nix finds nothing more to link; its verify is happy.
	again := runNSAll(t, ourRoot, "nix-store", "--optimise").stderr
	if m := optFreedRe.FindStringSubmatch(again); m == nil || m[2] != "0" {
		t.Errorf("nix-store --optimise after ours: %q", again)
	}
	nixVerify(t, ourRoot)
	optCheckNARs(t, ourRoot)

	// The other way round: ours after Nix's does nothing either, and a
	// dry run predicts what a real run does.
	r = runInNS(t, nixRoot, "optimise", "--json")
	if r.code != 0 || !strings.Contains(r.stdout, `"files_linked": 0`) {
		t.Errorf("storekeeper after nix: exit %d\n%s", r.code, r.stdout)
	}
	dryRoot := copyStore(t, ns.Root)
	d := runInNS(t, dryRoot, "optimise", "--dry-run")
	if m := regexp.MustCompile(`([0-9.]+ MiB) would be freed by hard-linking ([0-9]+) files`).FindStringSubmatch(d.stderr); m == nil || nm == nil || m[1] != nm[1] || m[2] != nm[2] {
		t.Errorf("dry run %q, nix %q", d.stderr, nm)
	}
	if len(optLinksSet(t, dryRoot)) != 0 {
		t.Errorf("dry run created .links entries")
	}
}

// TestInteropOptimiseCorruptedLink: a .links entry whose size does not
// match is replaced by both Nix and us (so the .links sets agree); a
// same-size entry with other contents is never linked to by us.
func TestInteropOptimiseCorruptedLink(t *testing.T) {
	ns := buildNixStore(t, nixSpec{Paths: 60, Seed: 5, Files: 3})
	// Find a file with a duplicate and its .links name from a dry Nix-less
	// hash.
	type f struct{ path, name string }
	byName := map[string][]f{}
	for _, outs := range ns.Outputs {
		for _, p := range outs {
			filepath.WalkDir(filepath.Join(ns.Root, p), func(q string, d fs.DirEntry, err error) error {
				if err == nil && d.Type().IsRegular() {
					h, _, _ := nar.HashPath(q)
					byName[h.Base32()] = append(byName[h.Base32()], f{q, h.Base32()})
				}
				return nil
			})
		}
	}
	var dup []f
	for _, fs := range byName {
		if len(fs) >= 2 && (dup == nil || fs[0].path < dup[0].path) {
			dup = fs
		}
	}
	if dup == nil {
		t.Fatal("no duplicate files")
	}
	data, _ := os.ReadFile(dup[0].path)
	ld := filepath.Join(ns.Root, "nix/store/.links")
	os.Mkdir(ld, 0o755)
	bad := filepath.Join(ld, dup[0].name)
	os.WriteFile(bad, append(data, "garbage"...), 0o444)

	nixRoot, ourRoot := copyStore(t, ns.Root), copyStore(t, ns.Root)
	runNSAll(t, nixRoot, "nix-store", "--optimise")
	r := runInNS(t, ourRoot, "optimise")
	if r.code != 1 || !strings.Contains(r.stderr, "corrupted link") {
		t.Errorf("exit %d, want 1 with a corrupted-link warning:\n%s", r.code, r.stderr)
	}
	if a, b := optLinksSet(t, nixRoot), optLinksSet(t, ourRoot); strings.Join(a, " ") != strings.Join(b, " ") {
		t.Errorf(".links differ")
	}
	optCheckNARs(t, ourRoot)
	nixVerify(t, ourRoot)

	// Same size, other contents: Nix 2.8 would link the file to it; we
	// report it and keep every file's contents.
	sameRoot := copyStore(t, ns.Root)
	bad2 := filepath.Join(sameRoot, "nix/store/.links", dup[0].name)
	os.Remove(bad2)
	c := append([]byte(nil), data...)
	c[0] ^= 0xff
	os.WriteFile(bad2, c, 0o444)
	r = runInNS(t, sameRoot, "optimise")
	if r.code != 1 || !strings.Contains(r.stderr, "corrupted link") {
		t.Errorf("same size: exit %d\n%s", r.code, r.stderr)
	}
	optCheckNARs(t, sameRoot)
	nixVerify(t, sameRoot)
}

// TestInteropOptimisePermissionDenied: a user who cannot write the store
// gets a clear error and nothing changes; a dry run works read-only.
func TestInteropOptimisePermissionDenied(t *testing.T) {
	ns := buildNixStore(t, nixSpec{Paths: 30, Seed: 8})
	// Let "optNobody" reach the store (t.TempDir is 0700).
	for d := ns.Root; d != "/" && d != "/tmp"; d = filepath.Dir(d) {
		os.Chmod(d, 0o755)
	}
	before := optDiskUse(t, ns.Root)
	bin := filepath.Join(ns.Root, "storekeeper")
	if out, err := exec.Command("cp", binary, bin).CombinedOutput(); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	cmd := exec.Command(bin, "--store", ns.Root, "optimise")
	cmd.SysProcAttr = optNobody()
	out, err := cmd.CombinedOutput()
	ee, _ := err.(*exec.ExitError)
	if ee == nil || ee.ExitCode() != 2 || !strings.Contains(string(out), "error") {
		t.Errorf("as optNobody: %v\n%s", err, out)
	}
	if len(optLinksSet(t, ns.Root)) != 0 || optDiskUse(t, ns.Root) != before {
		t.Errorf("store changed")
	}
	cmd = exec.Command(bin, "--store", ns.Root, "optimise", "--dry-run")
	cmd.SysProcAttr = optNobody()
	if out, err := cmd.CombinedOutput(); err != nil || !strings.Contains(string(out), "would be freed") {
		t.Errorf("dry run as optNobody: %v\n%s", err, out)
	}
	optCheckNARs(t, ns.Root)
}

// optNobody runs a command as uid/gid 65534.
func optNobody() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
}

// TestInteropOptimiseReadOnlyBindMount: on a store that is a read-only
// bind mount (as NixOS makes /nix/store), optimise remounts it writable in
// a private mount namespace of its own and does the same work as Nix.
func TestInteropOptimiseReadOnlyBindMount(t *testing.T) {
	ns := buildNixStore(t, nixSpec{Paths: 40, Seed: 13, Files: 4})
	ref := copyStore(t, ns.Root)
	nixErr := runNSAll(t, ref, "nix-store", "--optimise").stderr
	cmd := nsScript(ns.Root, `mount --bind /nix/store /nix/store && mount -o remount,ro,bind /nix/store || exit 98
touch /nix/store/.probe 2>/dev/null && exit 99
exec "$@"`, binary, "optimise")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("optimise on a read-only bind mount: %v\n%s", err, out)
	}
	nm, om := optFreedRe.FindStringSubmatch(nixErr), optFreedRe.FindStringSubmatch(string(out))
	if nm == nil || om == nil || nm[0] != om[0] {
		t.Errorf("summary: nix %q, ours %q", nm, om)
	}
	if a, b := optLinksSet(t, ref), optLinksSet(t, ns.Root); strings.Join(a, " ") != strings.Join(b, " ") {
		t.Errorf(".links differ")
	}
	optCheckNARs(t, ns.Root)
}
