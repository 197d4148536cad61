package tests

// Hostile archives end to end (#23): a signed binary cache whose NAR
// files of some paths are replaced by hostile archives, their narinfos
// re-signed with the file's new hash and size, so that only the archive is
// bad (NarHash and NarSize still what the database records). `storekeeper
// repair` must refuse each of them with a message naming the problem,
// leave each such path exactly as it was, and repair the others.

import (
	"bytes"
	"crypto/sha256"
	binenc "encoding/binary"
	"encoding/json"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"

	"storekeeper/nix/nar"
	"storekeeper/nix/narinfo"
)

// hostileRepairCase is one hostile archive put in the cache for a path.
type hostileRepairCase struct {
	name string
	// build makes the archive from the path's real NAR and the size the
	// database records.
	build func(real []byte, narSize uint64) []byte
	// want: the message names the problem with one of these.
	want []string
}

func hostileRepairCases() []hostileRepairCase {
	file := func(c string) []byte { return hostileNAR("(", "type", "regular", "contents", c, ")") }
	link := func(target string) []byte { return hostileNAR("(", "type", "symlink", "target", target, ")") }
	ent := func(name string, node []byte) []byte {
		return hostileNAR("entry", "(", "name", name, "node", node, ")")
	}
	dir := func(ents ...[]byte) []byte {
		return hostileNAR("(", "type", "directory", bytes.Join(ents, nil), ")")
	}
	top := func(node []byte) []byte { return hostileNAR("nix-archive-1", node) }
	u64 := func(n uint64) []byte { return binenc.LittleEndian.AppendUint64(nil, n) }
	fixed := func(b []byte) func([]byte, uint64) []byte { return func([]byte, uint64) []byte { return b } }
	return []hostileRepairCase{
		{"name ..", fixed(top(dir(ent("..", file("planted"))))), []string{`entry name ".." is not a file name`}},
		{"name with a slash after a symlink to /", fixed(top(dir(ent("a", link("/")), ent("a/etc", file("planted"))))), []string{`"a/etc" holds a slash`}},
		{"symlink, then a directory of the same name", fixed(top(dir(ent("a", link("/tmp")), ent("a", dir(ent("planted", file("x"))))))), []string{`entry "a" twice`}},
		{"unsorted entries", fixed(top(dir(ent("b", file("")), ent("a", file(""))))), []string{`entry "a" after "b"`}},
		{"empty name", fixed(top(dir(ent("", file(""))))), []string{`entry name "" is empty`}},
		{"NUL in a name", fixed(top(dir(ent("a\x00b", file(""))))), []string{"holds a NUL byte"}},
		{"nested too deep", func([]byte, uint64) []byte {
			node := dir()
			for range nar.DefaultMaxDepth {
				node = dir(ent("d", node))
			}
			return top(node)
		}, []string{fmt.Sprintf("directories nested deeper than %d", nar.DefaultMaxDepth)}},
		{"symlink target of 4096 bytes", fixed(top(dir(ent("l", link(strings.Repeat("../", 1365)+"x"))))), []string{"a symlink target of 4096 bytes, longer than the 4095 allowed"}},
		{"truncated", func(real []byte, _ uint64) []byte { return real[:len(real)/2] }, []string{"truncated"}},
		{"contents shorter than their size", func(_ []byte, narSize uint64) []byte {
			return top(dir(ent("a", hostileNAR("(", "type", "regular", "contents", u64(narSize-300), []byte("abc\x00\x00\x00\x00\x00"), ")"))))
		}, []string{"truncated"}},
		{"more bytes than NarSize", func(_ []byte, narSize uint64) []byte {
			return top(file(strings.Repeat("x", int(narSize))))
		}, []string{"limit of"}},
		{"trailing garbage", func(real []byte, _ uint64) []byte { return append(slices.Clone(real), "garbage!"...) },
			[]string{"data after the end of the archive", "more than", "differ"}},
	}
}

// repairEnvelope is `storekeeper --json repair`'s output.
type repairEnvelope struct {
	OK     bool             `json:"ok"`
	Result repairResultJSON `json:"result"`
	Error  *struct {
		Kind    string `json:"kind"`
		Message string `json:"message"`
	} `json:"error"`
}

// TestRepairHostileNARs: for each hostile case a damaged path (a flipped
// byte, or removed from disk) whose cache entry is that archive; two
// others with intact entries. repair exits 1, leaves each hostile path
// exactly as it was (bytes, inodes, modes; a removed one removed), says
// for each what is wrong with its archive, repairs the two others, leaves
// nothing staged in the store dir and the database as it was; real
// nix-store --verify then finds exactly the hostile paths damaged.
func TestRepairHostileNARs(t *testing.T) {
	cases := hostileRepairCases()
	ns := buildNixStore(t, nixSpec{Paths: 40, Seed: 2323, Files: 32, Salt: "hostile"})
	victims := repairVictims(ns, len(cases)+2)
	if len(victims) != len(cases)+2 {
		t.Fatalf("%d victims, want %d", len(victims), len(cases)+2)
	}
	cache := makeBinCache(t, ns.Root, "none", victims)
	db0 := dbSnapshot(t, ns.Root)

	// The biggest path gets the deep archive, which must fit in its
	// NarSize to reach the nesting check.
	sort.SliceStable(victims, func(i, j int) bool {
		return cache.narInfo(t, victims[i]).NarSize > cache.narInfo(t, victims[j]).NarSize
	})
	deep := slices.IndexFunc(cases, func(c hostileRepairCase) bool { return c.name == "nested too deep" })
	cases = append(append([]hostileRepairCase{cases[deep]}, cases[:deep]...), cases[deep+1:]...)
	byCase := map[string]string{} // hostile path -> case name
	wants := map[string][]string{}
	for i, c := range cases {
		byCase[victims[i]], wants[victims[i]] = c.name, c.want
	}
	good := victims[len(cases):]
	for i, c := range cases {
		p := victims[i]
		ni := cache.narInfo(t, p)
		real, err := os.ReadFile(filepath.Join(cache.Dir, ni.URL))
		if err != nil {
			t.Fatal(err)
		}
		if uint64(len(real)) != ni.NarSize {
			t.Fatalf("%s: the uncompressed cache's NAR is %d bytes, NarSize %d", p, len(real), ni.NarSize)
		}
		bad := c.build(real, ni.NarSize)
		if c.name == "nested too deep" && uint64(len(bad)) > ni.NarSize {
			t.Fatalf("the deep archive (%d bytes) is bigger than the biggest victim's NarSize %d: give the store bigger paths", len(bad), ni.NarSize)
		}
		// Only the archive is bad: the narinfo describes the file (hash
		// and size) and is signed; NarHash and NarSize are the DB's.
		if err := os.WriteFile(filepath.Join(cache.Dir, ni.URL), bad, 0o644); err != nil {
			t.Fatal(err)
		}
		cache.editNarInfo(t, p, true, func(ni *narinfo.NarInfo) {
			h := nar.Hash(sha256.Sum256(bad))
			ni.FileHash, ni.FileSize = &h, uint64(len(bad))
		})
	}

	damage := func(root string) map[string]string {
		states := map[string]string{}
		for i, p := range victims {
			if i%3 == 2 {
				damageRemove(t, root, p)
			} else if damageFlip(t, root, p) == "" {
				damageRemove(t, root, p)
			}
			states[p] = pathState(t, root, p)
		}
		return states
	}
	args := append(trustArgs(cache.URL(), cache), victims...)

	// --json: every path's outcome.
	root := copyStore(t, ns.Root)
	before := damage(root)
	entries0 := storeEntries(t, root)
	res := runInNS(t, root, append([]string{"--json", "repair"}, args...)...)
	if res.code != 1 {
		t.Fatalf("repair exit %d, want 1\nstdout: %s\nstderr: %s", res.code, tail(res.stdout, 4000), tail(res.stderr, 3000))
	}
	var env repairEnvelope
	if err := json.Unmarshal([]byte(res.stdout), &env); err != nil {
		t.Fatalf("%v\n%s", err, tail(res.stdout, 3000))
	}
	seen := map[string]bool{}
	for _, o := range env.Result.Paths {
		seen[o.Path] = true
		if slices.Contains(good, o.Path) {
			if !o.Repaired {
				t.Errorf("%s (intact cache entry) not repaired: %+v", o.Path, o.Error)
			}
			continue
		}
		name, hostile := byCase[o.Path]
		if !hostile {
			t.Errorf("an outcome for %s, which was not asked for", o.Path)
			continue
		}
		msg := ""
		if o.Error != nil {
			msg = o.Error.Message
		}
		t.Logf("%s: %s", name, msg)
		if o.Repaired || !containsAny(msg, wants[o.Path]) || !strings.Contains(msg, o.Path) {
			t.Errorf("%s: %s: repaired %v, message %q; want it refused naming the path and %q", name, o.Path, o.Repaired, msg, wants[o.Path])
		}
	}
	for _, p := range victims {
		if !seen[p] {
			t.Errorf("no outcome for %s", p)
		}
	}
	if env.Result.PathsRepaired != len(good) || env.Result.PathsFailed != len(cases) {
		t.Errorf("paths_repaired %d, paths_failed %d; want %d and %d", env.Result.PathsRepaired, env.Result.PathsFailed, len(good), len(cases))
	}
	for p, name := range byCase {
		if got := pathState(t, root, p); got != before[p] {
			t.Errorf("%s: %s changed:\nbefore:\n%s\nafter:\n%s", name, p, before[p], got)
		}
	}
	checkNothingStaged(t, root, entries0)
	if db := dbSnapshot(t, root); db != db0 {
		t.Errorf("the database changed")
	}
	// Real Nix: exactly the hostile paths are still damaged.
	out, _ := nsScript(root, `exec nix-store --verify --check-contents`).CombinedOutput()
	var damaged []string
	for _, l := range strings.Split(string(out), "\n") {
		for _, p := range victims {
			if strings.Contains(l, "'"+p+"'") && (strings.Contains(l, "modified") || strings.Contains(l, "disappeared")) {
				damaged = append(damaged, p)
			}
		}
	}
	sort.Strings(damaged)
	var want []string
	for p := range byCase {
		want = append(want, p)
	}
	sort.Strings(want)
	if !slices.Equal(slices.Compact(damaged), want) {
		t.Errorf("nix-store --verify --check-contents finds damaged %q, want exactly the hostile paths %q\n%s", damaged, want, tail(string(out), 3000))
	}

	// Text: a line per hostile path naming it and the problem.
	root = copyStore(t, ns.Root)
	damage(root)
	res = runInNS(t, root, append([]string{"repair"}, args...)...)
	text := res.stdout + res.stderr
	if res.code != 1 {
		t.Fatalf("repair (text) exit %d\n%s", res.code, tail(text, 4000))
	}
	for p, name := range byCase {
		found := false
		for _, l := range strings.Split(text, "\n") {
			if strings.Contains(l, p) && containsAny(l, wants[p]) {
				found = true
			}
		}
		if !found {
			t.Errorf("%s: no line names %s and %q:\n%s", name, p, wants[p], tail(text, 4000))
		}
	}
	for _, p := range good {
		if !strings.Contains(text, p) {
			t.Errorf("the text output does not name the repaired %s", p)
		}
	}
}

func containsAny(s string, subs []string) bool {
	for _, sub := range subs {
		if strings.Contains(s, sub) {
			return true
		}
	}
	return false
}

// checkNothingStaged fails t if the store dir under root holds entries
// it did not hold before (entries0) other than the trash directory, or if
// anything is left in the trash's run directories (a staged tree or an
// old copy).
func checkNothingStaged(t testing.TB, root string, entries0 []string) {
	t.Helper()
	for _, e := range storeEntries(t, root) {
		if e != "trash" && !slices.Contains(entries0, e) {
			t.Errorf("the store dir holds a new entry %q", e)
		}
	}
	// Nothing in the store (but the store dir itself, 1775 in Nix) is
	// writable by group or others.
	storeDir := filepath.Join(root, "nix/store")
	filepath.WalkDir(storeDir, func(p string, d fs.DirEntry, err error) error {
		switch {
		case err != nil || p == storeDir || d.Type()&fs.ModeSymlink != 0:
			return nil
		case d.IsDir() && filepath.Dir(p) == storeDir && d.Name() == "trash":
			return filepath.SkipDir
		}
		if fi, err := d.Info(); err == nil && fi.Mode().Perm()&0o022 != 0 {
			t.Errorf("%s: mode %v, writable by group or others", p, fi.Mode())
		}
		return nil
	})
	trash := filepath.Join(root, "nix/store/trash")
	runs, _ := os.ReadDir(trash)
	for _, r := range runs {
		if !r.IsDir() {
			continue
		}
		left, _ := os.ReadDir(filepath.Join(trash, r.Name()))
		for _, l := range left {
			t.Errorf("left in the trash: %s/%s", r.Name(), l.Name())
		}
	}
}
