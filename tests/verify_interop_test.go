package tests

import (
	"crypto/sha256"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"
)

// linesWith returns the store paths named in the lines containing s.
func linesWith(text, s string) map[string]bool {
	m := map[string]bool{}
	for _, l := range strings.Split(text, "\n") {
		if strings.Contains(l, s) {
			if p := storePathRe.FindString(l); p != "" {
				m[p] = true
			}
		}
	}
	return m
}

func setOf(xs ...string) map[string]bool {
	m := map[string]bool{}
	for _, x := range xs {
		m[x] = true
	}
	return m
}

func sameSet(t *testing.T, what string, got, want map[string]bool) {
	t.Helper()
	if a, b := diffSets(got, want); len(a)+len(b) > 0 {
		t.Errorf("%s: extra %v, missing %v", what, a, b)
	}
}

func fileSum(t *testing.T, p string) [32]byte {
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return sha256.Sum256(b)
}

// damageable picks, from a Nix-built store, directory outputs with no
// referrers and outputs that other outputs refer to.
func damageable(t *testing.T, ns *nixStore) (lone, used []string) {
	refc := map[string]int{}
	for p, refs := range ns.Refs {
		for _, r := range refs {
			if r != p {
				refc[r]++
			}
		}
	}
	var outs []string
	for _, m := range ns.Outputs {
		for _, p := range m {
			outs = append(outs, p)
		}
	}
	sort.Strings(outs)
	for _, p := range outs {
		fi, err := os.Lstat(filepath.Join(ns.Root, p))
		if err != nil {
			t.Fatal(err)
		}
		if refc[p] == 0 && fi.IsDir() {
			lone = append(lone, p)
		} else if refc[p] > 0 {
			used = append(used, p)
		}
	}
	if len(lone) < 4 || len(used) < 1 {
		t.Fatalf("store too small: %d unreferenced dirs, %d referenced", len(lone), len(used))
	}
	return
}

func chmodWalk(root, mode string) { exec.Command("chmod", "-R", mode, root).Run() }

func flipFirstFile(t *testing.T, dir string) string {
	var files []string
	filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
		if err == nil && fi.Mode().IsRegular() {
			files = append(files, p)
		}
		return nil
	})
	sort.Strings(files)
	f := files[0]
	os.Chmod(f, 0o644)
	b, _ := os.ReadFile(f)
	b[0] ^= 0xff
	os.WriteFile(f, b, 0o644)
	os.Chmod(f, 0o444)
	return f
}

// TestInteropVerifyMatchesNix damages a store written by real Nix the way
// compare.py does (a changed byte, an extra file in a directory, a path
// removed with and without referrers) and checks that storekeeper verify
// --check-contents reports exactly the damaged paths, in Nix's words,
// changes nothing, names the changed files, and classifies the missing
// paths as nix-store --verify does.
func TestInteropVerifyMatchesNix(t *testing.T) {
	ns := buildNixStore(t, nixSpec{Paths: 40, Seed: 11})
	lone, used := damageable(t, ns)

	// A first clean run records the manifests.
	r := runInNS(t, ns.Root, "verify", "--check-contents")
	if r.code != 0 {
		t.Fatalf("clean store: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	changed, intruded, gone, goneUsed := lone[0], lone[1], lone[2], used[0]
	cf := flipFirstFile(t, filepath.Join(ns.Root, changed))
	os.Chmod(filepath.Join(ns.Root, intruded), 0o755)
	os.WriteFile(filepath.Join(ns.Root, intruded, "intruder"), []byte("x"), 0o444)
	os.Chmod(filepath.Join(ns.Root, intruded), 0o555)
	for _, p := range []string{gone, goneUsed} {
		chmodWalk(filepath.Join(ns.Root, p), "u+w")
		os.RemoveAll(filepath.Join(ns.Root, p))
	}
	dbPath := filepath.Join(ns.Root, "nix/var/nix/db/db.sqlite")
	before := fileSum(t, dbPath)

	r = runInNS(t, ns.Root, "verify", "--check-contents")
	if r.code != 1 {
		t.Fatalf("exit %d on a damaged store\n%s%s", r.code, r.stdout, r.stderr)
	}
	if fileSum(t, dbPath) != before {
		t.Fatal("verify without --repair changed the database")
	}
	all := setOf(storePathRe.FindAllString(r.stdout+r.stderr, -1)...)
	sameSet(t, "reported paths", all, setOf(changed, intruded, gone, goneUsed))
	sameSet(t, "modified", linesWith(r.stdout, "was modified! expected hash 'sha256:"), setOf(changed, intruded))
	sameSet(t, "still referenced", linesWith(r.stdout, "disappeared, but it still has valid referrers!"), setOf(goneUsed))
	rel := strings.TrimPrefix(cf, filepath.Join(ns.Root, changed)+"/")
	if !strings.Contains(r.stdout, "changed: '"+changed+"/"+rel+"'") || !strings.Contains(r.stdout, "added:   '"+intruded+"/intruder'") {
		t.Errorf("the changed and added files are not named:\n%s", r.stdout)
	}

	// JSON: one object per finding, with the fixing command.
	j := runInNS(t, ns.Root, "verify", "--check-contents", "--json")
	var res struct {
		Findings []struct{ Kind, Path, File, Expected, Got, Fix string }
		Summary  struct {
			Damaged int `json:"paths_damaged"`
		}
	}
	if err := json.Unmarshal(resultOf([]byte(j.stdout)), &res); err != nil {
		t.Fatalf("--json: %v\n%s", err, j.stdout)
	}
	if res.Summary.Damaged != 4 || j.code != 1 {
		t.Errorf("--json: %d damaged, exit %d", res.Summary.Damaged, j.code)
	}

	// Nix on the same store: same modified paths, same classification
	// of the missing ones (Nix drops the unreferenced one right away).
	n := runNSAll(t, ns.Root, "nix-store", "--verify", "--check-contents")
	sameSet(t, "nix modified", linesWith(n.stderr, "was modified!"), setOf(changed, intruded))
	sameSet(t, "nix still referenced", linesWith(n.stderr, "still has valid referrers"), setOf(goneUsed))
	sameSet(t, "nix dropped", linesWith(n.stderr, "removing from database"), setOf(gone))
}

// TestInteropVerifyRepairMissing: --repair drops exactly the missing path
// Nix would drop, keeps the referenced one, and Nix then agrees.
func TestInteropVerifyRepairMissing(t *testing.T) {
	ns := buildNixStore(t, nixSpec{Paths: 30, Seed: 12})
	lone, used := damageable(t, ns)
	gone, goneUsed := lone[0], used[0]
	for _, p := range []string{gone, goneUsed} {
		chmodWalk(filepath.Join(ns.Root, p), "u+w")
		os.RemoveAll(filepath.Join(ns.Root, p))
	}
	r := runInNS(t, ns.Root, "verify", "--repair")
	if r.code != 1 {
		t.Fatalf("exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	sameSet(t, "dropped", linesWith(r.stdout, "disappeared, removing from database"), setOf(gone))
	valid := runNS(t, ns.Root, nil, "sh", "-c", "nix-store --check-validity --print-invalid "+gone+" "+goneUsed)
	sameSet(t, "invalid after repair", setOf(storePathRe.FindAllString(valid, -1)...), setOf(gone))
	n := runNSAll(t, ns.Root, "nix-store", "--verify")
	if strings.Contains(n.stderr, "removing from database") {
		t.Errorf("nix still had something to drop:\n%s", n.stderr)
	}
	sameSet(t, "nix still referenced", linesWith(n.stderr, "still has valid referrers"), setOf(goneUsed))
}

// TestInteropVerifyLinks: after nix-store --optimise, a .links entry whose
// contents changed is reported (as Nix reports it) with the paths sharing
// its inode; --repair removes the entry, and Nix then finds no bad link.
func TestInteropVerifyLinks(t *testing.T) {
	ns := buildNixStore(t, nixSpec{Paths: 30, Seed: 13, Files: 4})
	runNS(t, ns.Root, nil, "nix-store", "--optimise")
	if r := runInNS(t, ns.Root, "verify", "--check-contents"); r.code != 0 {
		t.Fatalf("after optimise: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	linksDir := filepath.Join(ns.Root, "nix/store/.links")
	ents, _ := os.ReadDir(linksDir)
	if len(ents) == 0 {
		t.Fatal("nix-store --optimise made no .links entries")
	}
	var victim string
	for _, e := range ents {
		if fi, err := os.Lstat(filepath.Join(linksDir, e.Name())); err == nil && fi.Mode().IsRegular() && fi.Size() > 0 {
			victim = e.Name()
			break
		}
	}
	p := filepath.Join(linksDir, victim)
	os.Chmod(p, 0o644)
	b, _ := os.ReadFile(p)
	b[0] ^= 0xff
	os.WriteFile(p, b, 0o644) // in place: the store files sharing the inode change too
	os.Chmod(p, 0o444)
	os.Chtimes(p, time.Unix(1, 0), time.Unix(1, 0))

	r := runInNS(t, ns.Root, "verify", "--check-contents")
	if r.code != 1 || !strings.Contains(r.stdout, "link '/nix/store/.links/"+victim+"' was modified! expected hash '"+victim+"', got '") {
		t.Fatalf("exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	n := runNSAll(t, ns.Root, "nix-store", "--verify", "--check-contents")
	sameSet(t, "modified (nix vs us)", linesWith(r.stdout, "was modified! expected hash 'sha256:"), linesWith(n.stderr, "was modified!"))
	if !strings.Contains(n.stderr, "link '/nix/store/.links/"+victim+"' was modified!") {
		t.Errorf("nix did not see the link:\n%s", n.stderr)
	}
	r = runInNS(t, ns.Root, "verify", "--check-contents", "--repair")
	if !strings.Contains(r.stdout, "removed link '/nix/store/.links/"+victim+"'") {
		t.Errorf("repair:\n%s%s", r.stdout, r.stderr)
	}
	if _, err := os.Lstat(p); !os.IsNotExist(err) {
		t.Error("the damaged link is still there")
	}
	n = runNSAll(t, ns.Root, "nix-store", "--verify", "--check-contents")
	if strings.Contains(n.stderr, "link '") {
		t.Errorf("nix still sees a bad link:\n%s", n.stderr)
	}
}

// TestInteropVerifySigs signs some paths with `nix store sign` and checks
// that --sigs-needed 1 with the matching trusted key reports exactly the
// unsigned ones: our fingerprint is Nix's.
func TestInteropVerifySigs(t *testing.T) {
	ns := buildNixStore(t, nixSpec{Paths: 12, Seed: 14})
	keys := filepath.Join(ns.Root, "keys")
	os.MkdirAll(keys, 0o700)
	runNS(t, ns.Root, nil, "nix-store", "--generate-binary-cache-key", "test-key-1", keys+"/sk", keys+"/pk")
	pk, err := os.ReadFile(keys + "/pk")
	if err != nil {
		t.Fatal(err)
	}
	var outs []string
	for _, m := range ns.Outputs {
		for _, p := range m {
			outs = append(outs, p)
		}
	}
	sort.Strings(outs)
	signed := outs[:len(outs)/2]
	runNS(t, ns.Root, nil, append([]string{"nix", "--extra-experimental-features", "nix-command", "store", "sign", "-k", keys + "/sk"}, signed...)...)
	r := runInNS(t, ns.Root, "verify", "--sigs-needed", "1", "--option", "trusted-public-keys="+strings.TrimSpace(string(pk)), "--json")
	var res struct{ Findings []struct{ Kind, Path string } }
	if err := json.Unmarshal(resultOf([]byte(r.stdout)), &res); err != nil {
		t.Fatalf("%v\n%s%s", err, r.stdout, r.stderr)
	}
	untrusted := map[string]bool{}
	for _, f := range res.Findings {
		if f.Kind == "untrusted" {
			untrusted[f.Path] = true
		}
	}
	for _, p := range signed {
		if untrusted[p] {
			t.Errorf("%s is signed but reported untrusted", p)
		}
	}
	for _, p := range outs[len(outs)/2:] {
		if !untrusted[p] {
			t.Errorf("%s is unsigned but not reported", p)
		}
	}
}
