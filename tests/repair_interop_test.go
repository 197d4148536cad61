package tests

import (
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// TestRepairInterop: on copies of one store built by real Nix, with paths
// damaged and deleted as compare.py does, `storekeeper repair` puts every
// one back from signed binary caches written by real `nix copy` (xz,
// zstd, none) over file://, from the same cache over HTTP on 127.0.0.1,
// and from another local store (a plain root and local?root=); so do
// `repair --damaged` and `verify --check-contents --repair`. Afterwards
// nix-store --verify --check-contents passes and the database is what it
// was; `nix-store --repair-path` on an identical copy ends with the same
// valid paths. --dry-run changes nothing; a symlink outside the store is
// followed to its store path, a path outside the store is refused.
func TestRepairInterop(t *testing.T) {
	f := newRepairFixture(t, nixSpec{Paths: 120, Seed: 2301, Files: 2}, 16, "xz", "zstd", "none")
	zstd := f.caches["zstd"]

	// repaired checks a run that should have put every victim back.
	repaired := func(t *testing.T, root string, r result, what string) {
		t.Helper()
		if r.code != 0 {
			t.Fatalf("%s: exit %d\n%s%s", what, r.code, r.stdout, tail(r.stderr, 3000))
		}
		nixVerify(t, root)
		if got := dbSnapshot(t, root); got != f.db {
			t.Errorf("%s changed the database", what)
		}
		for _, p := range f.victims {
			if pathState(t, root, p) == "missing" {
				t.Errorf("%s: %s is still missing", what, p)
			}
		}
	}
	// lines checks that the text output has a "repaired" line for each
	// victim, from url.
	lines := func(t *testing.T, out, url string) {
		t.Helper()
		for _, p := range f.victims {
			if !strings.Contains(out, "repaired '"+p+"' from "+url+" (") {
				t.Errorf("no line says %s was repaired from %s:\n%s", p, url, tail(out, 2000))
			}
		}
	}

	for _, comp := range []string{"xz", "zstd", "none"} {
		t.Run("file-"+comp, func(t *testing.T) {
			c := f.caches[comp]
			root, _, _ := f.damaged(t)
			r := runInNS(t, root, append(append([]string{"repair"}, trustArgs(c.URL(), c)...), f.victims...)...)
			repaired(t, root, r, "repair from "+c.URL())
			lines(t, r.stdout, c.URL())
			if !strings.Contains(r.stdout, "(signed by "+strings.Split(c.PublicKey, ":")[0]) {
				t.Errorf("the lines do not say which key signed:\n%s", r.stdout)
			}
			if comp != "zstd" {
				return
			}
			// Nix's own repair of an identical copy ends with the same
			// valid paths.
			nroot, _, _ := f.damaged(t)
			cmd := nsScript(nroot, `exec "$@"`, append(append([]string{"nix-store", "--repair-path"}, f.victims...),
				"--option", "substituters", c.URL(), "--option", "trusted-public-keys", c.PublicKey)...)
			nixCacheEnv(t, cmd)
			if out, err := cmd.CombinedOutput(); err != nil {
				t.Fatalf("nix-store --repair-path: %v\n%s", err, tail(string(out), 2000))
			}
			nixVerify(t, nroot)
			if !slices.Equal(validPaths(t, root), validPaths(t, nroot)) {
				t.Errorf("valid paths differ from nix-store --repair-path's")
			}
		})
	}

	t.Run("http", func(t *testing.T) {
		srv := serveCache(t, zstd.Dir)
		root, _, _ := f.damaged(t)
		r := runInNS(t, root, append(append([]string{"repair"}, trustArgs(srv.URL, zstd)...), f.victims...)...)
		repaired(t, root, r, "repair from "+srv.URL)
		lines(t, r.stdout, srv.URL)
		// One look-up per path at most, and no NAR twice: the
		// requests are the cache info, a narinfo and a NAR per path.
		if n := srv.requests.Load(); n > int64(1+2*len(f.victims)) {
			t.Errorf("%d requests for %d paths", n, len(f.victims))
		}
	})

	for _, form := range []string{"root", "local?root="} {
		t.Run("local-store-"+strings.TrimSuffix(form, "?root="), func(t *testing.T) {
			// Another local store: an intact copy, seen from the
			// namespace at its physical path.
			other := copyStore(t, f.ns.Root)
			url := other
			if form != "root" {
				url = "local?root=" + other
			}
			root, _, _ := f.damaged(t)
			// A derivation too: caches rarely have them, another store
			// does.
			drv := f.ns.Drvs[len(f.ns.Drvs)/2]
			if damageFlip(t, root, drv) == "" {
				t.Fatalf("%s has no file", drv)
			}
			r := runInNS(t, root, append([]string{"repair", "--substituter", url, drv}, f.victims...)...)
			repaired(t, root, r, "repair from "+url)
			lines(t, r.stdout, url)
			if !strings.Contains(r.stdout, "repaired '"+drv+"' from "+url+" (") {
				t.Errorf("the derivation was not repaired:\n%s", r.stdout)
			}
		})
	}

	t.Run("damaged", func(t *testing.T) {
		root, flipped, removed := f.damaged(t)
		r := runInNS(t, root, append([]string{"repair", "--damaged"}, trustArgs(zstd.URL(), zstd)...)...)
		repaired(t, root, r, "repair --damaged")
		lines(t, r.stdout, zstd.URL())
		if len(flipped) == 0 || len(removed) == 0 {
			t.Fatalf("damage: %d flipped, %d removed", len(flipped), len(removed))
		}
		// Nothing left to do: a second run repairs nothing, exit 0.
		r = runInNS(t, root, append([]string{"repair", "--damaged"}, trustArgs(zstd.URL(), zstd)...)...)
		if r.code != 0 || strings.Contains(r.stdout, "repaired '") {
			t.Errorf("second repair --damaged: exit %d\n%s%s", r.code, r.stdout, r.stderr)
		}
	})

	t.Run("verify-repair", func(t *testing.T) {
		root, _, _ := f.damaged(t)
		// Nix on an identical copy: the same valid paths afterwards
		// (unreferenced vanished paths are dropped, the rest repaired).
		nroot, _, _ := f.damaged(t)
		cmd := nsScript(nroot, `exec nix-store --verify --check-contents --repair --option substituters "$1" --option trusted-public-keys "$2"`, zstd.URL(), zstd.PublicKey)
		nixCacheEnv(t, cmd)
		out, _ := cmd.CombinedOutput()
		nixVerify(t, nroot)
		r := runInNS(t, root, append([]string{"verify", "--check-contents", "--repair"}, trustArgs(zstd.URL(), zstd)...)...)
		if r.code != 0 {
			t.Fatalf("verify --check-contents --repair: exit %d\n%s%s", r.code, r.stdout, tail(r.stderr, 3000))
		}
		nixVerify(t, root)
		if !slices.Equal(validPaths(t, root), validPaths(t, nroot)) {
			t.Errorf("valid paths differ from nix-store --verify --check-contents --repair's\nnix:\n%s", tail(string(out), 2000))
		}
		if !strings.Contains(r.stdout, "repaired: copied path '") {
			t.Errorf("no finding says it was repaired from the cache:\n%s", r.stdout)
		}

		// --json: the substitution is in the result.
		jroot, flipped, _ := f.damaged(t)
		r = runInNS(t, jroot, append([]string{"--json", "verify", "--check-contents", "--repair"}, trustArgs(zstd.URL(), zstd)...)...)
		e := decodeEnvelope(t, r.stdout)
		var vr struct {
			Substitution *repairResultJSON `json:"substitution"`
		}
		if err := json.Unmarshal(e.Result, &vr); err != nil {
			t.Fatal(err)
		}
		if r.code != 0 || !e.OK || vr.Substitution == nil || vr.Substitution.PathsFailed != 0 || vr.Substitution.PathsRepaired < len(flipped) {
			t.Errorf("--json verify --check-contents --repair: exit %d, %d flipped\n%s", r.code, len(flipped), r.stdout)
		}

		// No substituter configured: the local fixes only, the damaged
		// paths as they were, exit 1, and it says why.
		nroot, flipped, _ = f.damaged(t)
		var victim string
		for p := range flipped {
			victim = p
		}
		before := pathState(t, nroot, victim)
		r = runInNS(t, nroot, "verify", "--check-contents", "--repair")
		if r.code != 1 || !strings.Contains(r.stderr, "no usable substituter is configured") || pathState(t, nroot, victim) != before {
			t.Errorf("verify --repair without substituters: exit %d\n%s%s", r.code, r.stdout, r.stderr)
		}
	})

	t.Run("dry-run", func(t *testing.T) {
		root, _, _ := f.damaged(t)
		before := map[string]string{}
		for _, p := range f.victims {
			before[p] = pathState(t, root, p)
		}
		args := append(append([]string{"repair", "--dry-run"}, trustArgs(zstd.URL(), zstd)...), f.victims...)
		r := runInNS(t, root, args...)
		if r.code != 0 {
			t.Fatalf("dry run: exit %d\n%s%s", r.code, r.stdout, r.stderr)
		}
		for _, p := range f.victims {
			if !strings.Contains(r.stdout, "would repair '"+p+"' from "+zstd.URL()+" (signed by ") {
				t.Errorf("dry run says nothing of %s:\n%s", p, r.stdout)
			}
			if pathState(t, root, p) != before[p] {
				t.Errorf("dry run changed %s", p)
			}
		}
		if !strings.Contains(r.stderr, "would download ") {
			t.Errorf("dry run gives no total:\n%s", r.stderr)
		}
		// A valid path the cache does not have: exit 1, named.
		var extra string
		for _, m := range f.ns.Outputs {
			if p := m["out"]; !slices.Contains(f.victims, p) {
				if _, err := os.Stat(zstd.narInfoFile(p)); os.IsNotExist(err) {
					extra = p
					break
				}
			}
		}
		if extra == "" {
			t.Fatal("every path is in the cache")
		}
		r = runInNS(t, root, append([]string{"--json"}, append(args, extra)...)...)
		e := decodeEnvelope(t, r.stdout)
		var res repairResultJSON
		if err := json.Unmarshal(e.Result, &res); err != nil {
			t.Fatal(err)
		}
		if r.code != 1 || e.OK || !res.DryRun || res.PathsAvailable != len(f.victims) || res.PathsFailed != 1 || res.BytesDownloaded == 0 {
			t.Errorf("dry run with a path no source has: exit %d\n%s", r.code, r.stdout)
		}
		for _, pr := range res.Paths {
			if pr.Path == extra && (pr.HasSource || pr.Error == nil || pr.Error.Kind != "not-found") {
				t.Errorf("dry run of %s: %+v", extra, pr)
			}
		}
		if got := dbSnapshot(t, root); got != f.db {
			t.Errorf("dry run changed the database")
		}
	})

	t.Run("arguments", func(t *testing.T) {
		root, flipped, _ := f.damaged(t)
		var victim, file string
		for p, fl := range flipped {
			victim, file = p, fl
			break
		}
		// A symlink outside the store (./result) and a file inside a
		// store path name that store path.
		link := filepath.Join(root, "result")
		mustSymlink(t, victim, link)
		rel, _ := filepath.Rel(root, file)
		r := runInNS(t, root, append(append([]string{"--json", "repair"}, trustArgs(zstd.URL(), zstd)...), link, "/"+rel)...)
		e := decodeEnvelope(t, r.stdout)
		var res repairResultJSON
		if err := json.Unmarshal(e.Result, &res); err != nil {
			t.Fatal(err)
		}
		if r.code != 0 || len(res.Paths) != 1 || res.Paths[0].Path != victim || !res.Paths[0].Repaired ||
			res.Paths[0].From != zstd.URL() || res.Paths[0].NarSize == 0 || res.PathsRepaired != 1 {
			t.Errorf("repair of a link and a file of %s: exit %d\n%s", victim, r.code, r.stdout)
		}
		if out := runNSAll(t, root, "nix-store", "--verify-path", victim); out.code != 0 {
			t.Errorf("%s not repaired: %s", victim, out.stderr)
		}
		// Outside the store: refused, exit 2, nothing changed.
		for _, bad := range []string{root, "/tmp", filepath.Join(root, "nix/var/nix/db/db.sqlite")} {
			r = runInNS(t, root, append(append([]string{"repair"}, trustArgs(zstd.URL(), zstd)...), bad)...)
			if r.code != 2 || !strings.Contains(r.stderr, "not in the store") {
				t.Errorf("repair %s: exit %d\n%s%s", bad, r.code, r.stdout, r.stderr)
			}
		}
		// No substituter at all: could not run.
		r = runInNS(t, root, "repair", victim)
		if r.code != 2 || !strings.Contains(r.stderr, "no usable substituter") {
			t.Errorf("repair without substituters: exit %d\n%s%s", r.code, r.stdout, r.stderr)
		}
		r = runInNS(t, root, "repair", "--substituter", "ssh://host", victim)
		if r.code != 2 || !strings.Contains(r.stderr, "ssh://") {
			t.Errorf("repair from an unsupported substituter: exit %d\n%s%s", r.code, r.stdout, r.stderr)
		}
		// A read-only state directory (the database cannot be written,
		// so neither can the store be): could not run, nothing changed.
		before := pathState(t, root, victim)
		ro := runCmd(t, nsScript(root, `mount --bind /nix/var/nix /nix/var/nix && mount -o remount,ro,bind /nix/var/nix || exit 98
exec "$@"`, append(append([]string{binary, "--json", "repair"}, trustArgs(zstd.URL(), zstd)...), victim)...), nil)
		if e := decodeEnvelope(t, ro.stdout); ro.code != 2 || e.Error == nil || e.Error.Kind != "read-only" || pathState(t, root, victim) != before {
			t.Errorf("repair with a read-only state dir: exit %d\n%s%s", ro.code, ro.stdout, ro.stderr)
		}
		if r := runInNS(t, root, "--store", "/nonexistent", "repair", victim); r.code != 2 {
			t.Errorf("repair of no store: exit %d\n%s", r.code, r.stderr)
		}
		for _, args := range [][]string{{"repair"}, {"repair", "--damaged", victim}, {"repair", "--jobs", "-1", victim}} {
			if r := runInNS(t, root, args...); r.code != 2 {
				t.Errorf("%v: exit %d, want 2 (usage)\n%s", args, r.code, r.stderr)
			}
		}
	})
}
