package tests

// Keep policies (issue #26) on profiles made by real nix-env: `gc --keep
// N`, `--keep-since D`, both, `--profile`, `--keep-auto-since` with real
// indirect roots (nix-store --add-root --indirect), their --dry-run, and
// what real Nix sees afterwards (nix-env --list-generations, nix-store
// --gc --print-roots, nix-store --verify).

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"
)

const keepUser = "skkeepuser"

// keepFixture is a store made by real nix-env: three profiles of five
// generations each (no environment shared between profiles) (root's, keepUser's, the system profile), generation
// g of every profile (ages[g-1]) old; root's current generation is 3, the
// others' 5; two indirect roots /nix/home/result-old (40 days) and
// /nix/home/result-new (now) made by nix-store -r --add-root --indirect.
type keepFixture struct {
	Root     string
	Profiles []string          // root's, keepUser's, the system profile (logical paths)
	Current  map[string]int    // profile -> current generation
	Gen      map[string]string // "PROFILE-N-link" (logical) -> its store path
	OldRoot  string            // the store path /nix/home/result-old keeps
	NewRoot  string            // the store path /nix/home/result-new keeps
}

var keepAges = []time.Duration{50 * 24 * time.Hour, 40 * 24 * time.Hour, 20 * 24 * time.Hour, 5 * 24 * time.Hour, 24 * time.Hour}

func buildKeepFixture(t *testing.T) *keepFixture {
	t.Helper()
	requireNix(t)
	uid, gid := realUser(t, keepUser)
	root := t.TempDir()
	for _, d := range []string{"nix", "etc-nix", "src"} {
		mustMkdir(t, filepath.Join(root, d))
	}
	if err := os.WriteFile(filepath.Join(root, "etc-nix/nix.conf"), []byte("sandbox = false\nbuild-users-group =\nsubstituters =\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	salt := fmt.Sprintf("%s-%d", t.Name(), time.Now().UnixNano())
	for i := 1; i <= 10; i++ {
		d := filepath.Join(root, "src", fmt.Sprintf("pkg%d-1.0", i), "bin")
		mustMkdir(t, d)
		writeFileMode(t, filepath.Join(d, fmt.Sprintf("prog%d", i)), []byte(fmt.Sprintf("#!/bin/sh\necho %d %s\n", i, salt)), 0o555)
	}
	f := &keepFixture{Root: root, Current: map[string]int{}, Gen: map[string]string{},
		Profiles: []string{"/nix/var/nix/profiles/per-user/root/profile", "/nix/var/nix/profiles/per-user/" + keepUser + "/profile", "/nix/var/nix/profiles/system"}}
	script := `set -e
for i in 1 2 3 4 5 6 7 8 9 10; do nix-store --add "$NSROOT/src/pkg$i-1.0" > "$NSROOT/src/path$i"; done
# Each profile's first package is its own (8, 9, 10), so no two
# generations of different profiles share their environment.
u=8
for p in "$@"; do
  mkdir -p "$(dirname "$p")"
  for i in $u 1 2 3 4; do nix-env -p "$p" -i "$(cat "$NSROOT/src/path$i")" >/dev/null 2>&1; done
  u=$((u+1))
done
nix-env -p "$1" --switch-generation 3 >/dev/null 2>&1
mkdir -p /nix/home
nix-store -r "$(cat "$NSROOT/src/path6")" --add-root /nix/home/result-old --indirect >/dev/null
nix-store -r "$(cat "$NSROOT/src/path7")" --add-root /nix/home/result-new --indirect >/dev/null
`
	cmd := nsScript(root, script, f.Profiles...)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("making profiles with nix-env: %v\n%s", err, out)
	}
	read := func(i int) string {
		b, err := os.ReadFile(filepath.Join(root, "src", fmt.Sprintf("path%d", i)))
		if err != nil {
			t.Fatal(err)
		}
		return strings.TrimSpace(string(b))
	}
	f.OldRoot, f.NewRoot = read(6), read(7)
	now := time.Now()
	for pi, p := range f.Profiles {
		f.Current[p] = 5
		if pi == 0 {
			f.Current[p] = 3
		}
		for g := 1; g <= 5; g++ {
			link := fmt.Sprintf("%s-%d-link", p, g)
			target, err := os.Readlink(filepath.Join(root, link))
			if err != nil {
				t.Fatal(err)
			}
			f.Gen[link] = target
			touchSymlink(t, filepath.Join(root, link), now.Add(-keepAges[g-1]))
		}
	}
	touchSymlink(t, filepath.Join(root, "nix/home/result-old"), now.Add(-40*24*time.Hour))
	// keepUser's profile directory and links are the user's, as if the
	// user's nix-env had made them.
	udir := filepath.Join(root, "nix/var/nix/profiles/per-user", keepUser)
	ents, err := os.ReadDir(udir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		p := filepath.Join(udir, e.Name())
		if strings.HasSuffix(e.Name(), ".lock") {
			os.Remove(p)
			continue
		}
		if err := os.Lchown(p, uid, gid); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Chown(udir, uid, gid); err != nil {
		t.Fatal(err)
	}
	return f
}

// listGenerations is real `nix-env --list-generations` for profile.
func listGenerations(t *testing.T, root, profile string) (gens []int, current int) {
	t.Helper()
	out := runNS(t, root, nil, "nix-env", "-p", profile, "--list-generations")
	re := regexp.MustCompile(`^\s*(\d+)\s+\S+\s+\S+\s*(\(current\))?\s*$`)
	for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
		m := re.FindStringSubmatch(l)
		if m == nil {
			t.Fatalf("nix-env --list-generations: unexpected line %q", l)
		}
		n, _ := strconv.Atoi(m[1])
		gens = append(gens, n)
		if m[2] != "" {
			current = n
		}
	}
	return gens, current
}

// keepEnvelope is gc --json's result as the keep tests read it.
type keepEnvelope struct {
	OK     bool `json:"ok"`
	Result struct {
		Dead        []string `json:"dead"`
		BytesFreed  uint64   `json:"bytes_freed"`
		Paths       int      `json:"paths_deleted"`
		DryRun      bool     `json:"dry_run"`
		Generations []struct {
			Profile string `json:"profile"`
			Number  int    `json:"number"`
			Link    string `json:"link"`
		} `json:"generations_removed"`
		AutoRoots []struct {
			Link      string `json:"link"`
			Target    string `json:"target"`
			StorePath string `json:"store_path"`
			MTime     int64  `json:"mtime"`
		} `json:"auto_roots_removed"`
	} `json:"result"`
}

func parseKeepEnvelope(t *testing.T, r result) keepEnvelope {
	t.Helper()
	var e keepEnvelope
	if err := json.Unmarshal([]byte(r.stdout), &e); err != nil {
		t.Fatalf("gc --json: %v\nstdout:\n%s\nstderr:\n%s", err, tail(r.stdout, 2000), tail(r.stderr, 2000))
	}
	return e
}

// treeState is every link under the fixture's profiles and gcroots and
// /nix/home, with its target and mtime: what a --dry-run must not change.
func treeState(t *testing.T, root string) string {
	t.Helper()
	var lines []string
	for _, d := range []string{"nix/var/nix/profiles", "nix/var/nix/gcroots", "nix/home"} {
		filepath.Walk(filepath.Join(root, d), func(p string, fi os.FileInfo, err error) error {
			if err != nil {
				return nil
			}
			l := fmt.Sprintf("%s %v %d", strings.TrimPrefix(p, root), fi.Mode(), fi.ModTime().UnixNano())
			if fi.Mode()&os.ModeSymlink != 0 {
				tgt, _ := os.Readlink(p)
				l += " -> " + tgt
			}
			lines = append(lines, l)
			return nil
		})
	}
	sort.Strings(lines)
	return strings.Join(lines, "\n")
}

// TestGCKeepPolicies: for each policy, the generations removed are
// exactly the ones the policy names (the current one always kept), the
// same with --dry-run (which changes nothing and lists, in dead, the
// store paths the removed generations alone kept); afterwards real
// nix-env --list-generations lists exactly the kept ones, the removed
// generations' paths are gone and nix-store --verify passes.
func TestGCKeepPolicies(t *testing.T) {
	f := buildKeepFixture(t)
	rootP, userP, sysP := f.Profiles[0], f.Profiles[1], f.Profiles[2]
	for _, c := range []struct {
		name    string
		args    []string
		removed map[string][]int // profile -> generations removed
	}{
		// root's current is 3 (20 days old), the others' 5.
		{"keep2", []string{"--keep", "2"}, map[string][]int{rootP: {1, 2}, userP: {1, 2, 3}, sysP: {1, 2, 3}}},
		{"keep-since-10d", []string{"--keep-since", "10d"}, map[string][]int{rootP: {1, 2}, userP: {1, 2, 3}, sysP: {1, 2, 3}}},
		{"keep-since-30d", []string{"--keep-since", "30d"}, map[string][]int{rootP: {1, 2}, userP: {1, 2}, sysP: {1, 2}}},
		{"keep1", []string{"--keep", "1"}, map[string][]int{rootP: {1, 2, 4}, userP: {1, 2, 3, 4}, sysP: {1, 2, 3, 4}}},
		{"keep1-or-since-45d", []string{"--keep", "1", "--keep-since", "45d"}, map[string][]int{rootP: {1}, userP: {1}, sysP: {1}}},
		{"keep4-or-since-3d", []string{"--keep", "4", "--keep-since", "3d"}, map[string][]int{rootP: {1}, userP: {1}, sysP: {1}}},
		{"user-profile-only", []string{"--keep", "1", "--profile", userP}, map[string][]int{userP: {1, 2, 3, 4}}},
		{"two-profiles", []string{"--keep-since", "30d", "--profile", sysP, "--profile", rootP}, map[string][]int{sysP: {1, 2}, rootP: {1, 2}}},
	} {
		t.Run(c.name, func(t *testing.T) {
			root := copyStore(t, f.Root)
			var want []string
			for _, p := range f.Profiles {
				for _, g := range c.removed[p] {
					want = append(want, fmt.Sprintf("%s %d", p, g))
				}
			}
			sort.Strings(want)
			got := func(e keepEnvelope) []string {
				var out []string
				for _, g := range e.Result.Generations {
					if g.Link != fmt.Sprintf("%s-%d-link", g.Profile, g.Number) {
						t.Errorf("generation %d of %s: link %s", g.Number, g.Profile, g.Link)
					}
					out = append(out, fmt.Sprintf("%s %d", g.Profile, g.Number))
				}
				sort.Strings(out)
				return out
			}

			// --dry-run: the same list, nothing changed, dead names the
			// removed generations' environments and no kept one's.
			before := treeState(t, root)
			r := runInNS(t, root, append([]string{"gc", "--json", "--dry-run"}, c.args...)...)
			if r.code != 0 {
				t.Fatalf("gc --dry-run %v: exit %d\n%s%s", c.args, r.code, r.stdout, r.stderr)
			}
			e := parseKeepEnvelope(t, r)
			if g := got(e); !reflect.DeepEqual(g, want) {
				t.Fatalf("--dry-run %v removes %v, want %v", c.args, g, want)
			}
			if !e.Result.DryRun {
				t.Errorf("dry_run not set")
			}
			if after := treeState(t, root); after != before {
				t.Fatalf("--dry-run changed the profiles or roots:\nbefore:\n%s\nafter:\n%s", before, after)
			}
			dead := map[string]bool{}
			for _, p := range e.Result.Dead {
				dead[p] = true
			}
			for _, p := range f.Profiles {
				rm := map[int]bool{}
				for _, g := range c.removed[p] {
					rm[g] = true
				}
				for g := 1; g <= 5; g++ {
					env := f.Gen[fmt.Sprintf("%s-%d-link", p, g)]
					if dead[env] != rm[g] {
						t.Errorf("--dry-run: generation %d of %s (%s) in dead: %v, removed: %v", g, p, env, dead[env], rm[g])
					}
				}
			}
			if len(want) > 0 && e.Result.BytesFreed == 0 {
				t.Errorf("--dry-run frees nothing")
			}

			// The real run.
			r = runInNS(t, root, append([]string{"gc", "--json"}, c.args...)...)
			if r.code != 0 {
				t.Fatalf("gc %v: exit %d\n%s%s", c.args, r.code, r.stdout, r.stderr)
			}
			if g := got(parseKeepEnvelope(t, r)); !reflect.DeepEqual(g, want) {
				t.Fatalf("gc %v removed %v, want %v", c.args, g, want)
			}
			for _, p := range f.Profiles {
				rm := map[int]bool{}
				for _, g := range c.removed[p] {
					rm[g] = true
				}
				var kept []int
				for g := 1; g <= 5; g++ {
					if !rm[g] {
						kept = append(kept, g)
					}
					env := f.Gen[fmt.Sprintf("%s-%d-link", p, g)]
					if _, err := os.Lstat(filepath.Join(root, env)); (err == nil) == rm[g] {
						t.Errorf("generation %d of %s removed: %v, but its environment %s on disk: %v", g, p, rm[g], env, err == nil)
					}
				}
				gens, cur := listGenerations(t, root, p)
				if !reflect.DeepEqual(gens, kept) || cur != f.Current[p] {
					t.Errorf("nix-env --list-generations of %s: %v current %d; want %v current %d", p, gens, cur, kept, f.Current[p])
				}
			}
			nixVerify(t, root)
		})
	}
}

// TestGCKeepAutoSince: with real indirect roots, --keep-auto-since 30d
// removes the gcroots/auto link of /nix/home/result-old (40 days) and not
// result-new's; the user's links stay; --dry-run lists the same and
// changes nothing; without the flag nothing is removed; afterwards real
// nix-store --gc --print-roots no longer lists result-old and its path is
// collected, result-new's is not.
func TestGCKeepAutoSince(t *testing.T) {
	f := buildKeepFixture(t)
	root := copyStore(t, f.Root)

	r := runInNS(t, root, "gc", "--json", "--dry-run")
	if e := parseKeepEnvelope(t, r); len(e.Result.AutoRoots) != 0 || contains(e.Result.Dead, f.OldRoot) {
		t.Fatalf("without --keep-auto-since: auto roots %v, old root's path dead: %v", e.Result.AutoRoots, contains(e.Result.Dead, f.OldRoot))
	}
	before := treeState(t, root)
	r = runInNS(t, root, "gc", "--json", "--dry-run", "--keep-auto-since", "30d")
	e := parseKeepEnvelope(t, r)
	check := func(e keepEnvelope) {
		t.Helper()
		if len(e.Result.AutoRoots) != 1 {
			t.Fatalf("auto roots removed: %+v, want result-old's only", e.Result.AutoRoots)
		}
		a := e.Result.AutoRoots[0]
		if a.Target != "/nix/home/result-old" || a.StorePath != f.OldRoot || !strings.HasPrefix(a.Link, "/nix/var/nix/gcroots/auto/") {
			t.Fatalf("auto root removed: %+v", a)
		}
		if d := time.Since(time.Unix(a.MTime, 0)); d < 39*24*time.Hour || d > 41*24*time.Hour {
			t.Errorf("mtime %d: %v ago, want 40 days", a.MTime, d)
		}
	}
	check(e)
	if !contains(e.Result.Dead, f.OldRoot) || contains(e.Result.Dead, f.NewRoot) {
		t.Errorf("--dry-run: old root's path dead %v (want true), new root's %v (want false)", contains(e.Result.Dead, f.OldRoot), contains(e.Result.Dead, f.NewRoot))
	}
	if after := treeState(t, root); after != before {
		t.Fatalf("--dry-run changed the roots:\nbefore:\n%s\nafter:\n%s", before, after)
	}

	r = runInNS(t, root, "gc", "--json", "--keep-auto-since", "30d")
	if r.code != 0 {
		t.Fatalf("gc --keep-auto-since: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	check(parseKeepEnvelope(t, r))
	for _, l := range []string{"nix/home/result-old", "nix/home/result-new"} {
		if _, err := os.Lstat(filepath.Join(root, l)); err != nil {
			t.Errorf("the user's link %s was removed: %v", l, err)
		}
	}
	if _, err := os.Lstat(filepath.Join(root, f.OldRoot)); err == nil {
		t.Errorf("%s (result-old's) was not collected", f.OldRoot)
	}
	if _, err := os.Lstat(filepath.Join(root, f.NewRoot)); err != nil {
		t.Errorf("%s (result-new's) was collected", f.NewRoot)
	}
	roots := runNS(t, root, nil, "nix-store", "--gc", "--print-roots")
	if strings.Contains(roots, "result-old") || !strings.Contains(roots, "/nix/home/result-new -> "+f.NewRoot) {
		t.Errorf("nix-store --gc --print-roots after:\n%s", roots)
	}
	nixVerify(t, root)
}

// TestGCKeepBadInput: bad values and combinations are refused before
// anything is changed, naming the flag.
func TestGCKeepBadInput(t *testing.T) {
	f := buildKeepFixture(t)
	root := copyStore(t, f.Root)
	before := treeState(t, root)
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--keep", "0"}, "--keep 0"},
		{[]string{"--keep", "-3"}, "--keep -3"},
		{[]string{"--keep-since", "soon"}, "or a duration such as 90m"},
		{[]string{"--keep-since", "0d"}, "--keep-since"},
		{[]string{"--keep-auto-since", "-5h"}, "--keep-auto-since"},
		{[]string{"--keep", "2", "-d"}, "exclude"},
		{[]string{"--keep", "2", "--delete-older-than", "3d"}, "exclude"},
		{[]string{"--keep", "2", "--print-dead"}, "exclude"},
		{[]string{"--profile", f.Profiles[0]}, "--profile"},
		{[]string{"--keep", "1", "--profile", f.Profiles[0] + "-3-link"}, "generation link"},
		{[]string{"--keep", "1", "--profile", "/nix/var/nix/profiles/per-user/root"}, "not a symbolic link"},
		{[]string{"--keep", "1", "--profile", "/nix/var/nix/gcroots/profiles/per-user/root/profile"}, "symbolic link"},
		{[]string{"--keep", "1", "--profile", f.Profiles[1], "--profile", "/nix/home/result-new"}, "not to a generation link"},
		{[]string{"--min-free", "1G"}, "--auto"},
	} {
		r := runInNS(t, root, append([]string{"gc"}, c.args...)...)
		if r.code != 2 || !strings.Contains(r.stderr, c.want) {
			t.Errorf("gc %v: exit %d, stderr %q; want 2 naming %q", c.args, r.code, r.stderr, c.want)
		}
	}
	if after := treeState(t, root); after != before {
		t.Fatalf("a refused run changed the profiles or roots:\nbefore:\n%s\nafter:\n%s", before, after)
	}
}
