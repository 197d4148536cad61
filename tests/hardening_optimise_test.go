package tests

// Hardening of `storekeeper optimise` (#21 item 5): a store file that a
// user owns, or that is also hard-linked from outside the store, must
// never become a .links entry nor be replaced by a link, or its inode
// would spread into other store paths and whoever controls it could
// rewrite all of them. Nix 2.8 links such files like any other.

import (
	"encoding/json"
	iofs "io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"storekeeper/nix/nar"
	"storekeeper/store/fs"
)

const optUser = "sk-optimise"

// optDupGroups returns the regular files of the valid outputs grouped by
// NAR hash, only groups spanning two store paths or more, largest first.
func optDupGroups(t *testing.T, ns *nixStore) [][]string {
	t.Helper()
	by := map[string][]string{}
	for _, outs := range ns.Outputs {
		for _, p := range outs {
			filepath.WalkDir(filepath.Join(ns.Root, p), func(q string, d iofs.DirEntry, err error) error {
				if err == nil && d.Type().IsRegular() {
					h, _, err := nar.HashPath(q)
					if err != nil {
						t.Fatal(err)
					}
					by[h.Base32()] = append(by[h.Base32()], q)
				}
				return nil
			})
		}
	}
	var out [][]string
	for _, g := range by {
		sort.Strings(g)
		paths := map[string]bool{}
		for _, q := range g {
			paths[optStorePath(ns.Root, q)] = true
		}
		if len(paths) >= 2 {
			out = append(out, g)
		}
	}
	sort.Slice(out, func(i, j int) bool {
		if len(out[i]) != len(out[j]) {
			return len(out[i]) > len(out[j])
		}
		return out[i][0] < out[j][0]
	})
	return out
}

// optStorePath is the logical store path holding the physical file q.
func optStorePath(root, q string) string {
	rel := strings.TrimPrefix(q, root+"/nix/store/")
	base, _, _ := strings.Cut(rel, "/")
	return "/nix/store/" + base
}

func optLstat(t *testing.T, p string) unix.Stat_t {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Lstat(p, &st); err != nil {
		t.Fatal(err)
	}
	return st
}

func TestHardeningOptimiseForeignInodeIsNotSpread(t *testing.T) {
	ns := buildNixStore(t, nixSpec{Paths: 60, Seed: 31, Files: 4})
	uid, gid := realUser(t, optUser)
	groups := optDupGroups(t, ns)
	if len(groups) < 2 {
		t.Fatalf("the store has %d groups of identical files in different paths, want 2", len(groups))
	}
	// The user can reach a directory of their own beside the store
	// (t.TempDir is 0700).
	for d := ns.Root; d != "/" && d != "/tmp"; d = filepath.Dir(d) {
		os.Chmod(d, 0o755)
	}
	home := filepath.Join(ns.Root, "home", optUser)
	if err := os.MkdirAll(home, 0o700); err != nil {
		t.Fatal(err)
	}
	os.Chmod(filepath.Join(ns.Root, "home"), 0o755)
	if err := os.Chown(home, uid, gid); err != nil {
		t.Fatal(err)
	}
	// owned: a store file the user owns and has a hard link to (as after
	// a build that left it so, or a user given the inode some other way).
	// linked: a store file root still owns, hard-linked from the user's
	// directory (protected_hardlinks=0 allows that to anyone).
	owned, linked := groups[0][0], groups[1][0]
	mine, theirs := filepath.Join(home, "mine"), filepath.Join(home, "theirs")
	if err := os.Link(owned, mine); err != nil {
		t.Fatal(err)
	}
	if err := os.Lchown(owned, uid, gid); err != nil {
		t.Fatal(err)
	}
	if err := os.Link(linked, theirs); err != nil {
		t.Fatal(err)
	}
	before := map[string]unix.Stat_t{owned: optLstat(t, owned), linked: optLstat(t, linked)}

	// The dry run reports both in --json, with what is wrong.
	r := runInNS(t, ns.Root, "optimise", "--dry-run", "--json")
	if r.code != 1 {
		t.Errorf("dry run: exit %d, want 1\n%s", r.code, r.stderr)
	}
	var dry struct {
		Refused int64 `json:"refused"`
		Notices []struct {
			Kind      string `json:"kind"`
			StorePath string `json:"store_path"`
			File      string `json:"file"`
			Inode     struct {
				UID   int    `json:"uid"`
				Nlink uint64 `json:"nlink"`
			} `json:"inode"`
			Problems []struct {
				Kind string `json:"kind"`
			} `json:"problems"`
		} `json:"notices"`
	}
	if err := json.Unmarshal(resultOf([]byte(r.stdout)), &dry); err != nil {
		t.Fatalf("--json: %v\n%s", err, r.stdout)
	}
	want := map[string]string{ // logical path -> problem kind
		strings.TrimPrefix(owned, ns.Root):  fs.MetaBadOwner,
		strings.TrimPrefix(linked, ns.Root): fs.MetaForeignLink,
	}
	got := map[string]string{}
	for _, n := range dry.Notices {
		if n.Kind != "refused" || len(n.Problems) == 0 {
			t.Errorf("unexpected notice %+v", n)
			continue
		}
		got[n.StorePath+"/"+n.File] = n.Problems[0].Kind
		if n.Inode.Nlink != 2 {
			t.Errorf("%s/%s: nlink %d in the finding, want 2", n.StorePath, n.File, n.Inode.Nlink)
		}
		if n.Problems[0].Kind == fs.MetaBadOwner && n.Inode.UID != uid {
			t.Errorf("%s/%s: uid %d in the finding, want %d", n.StorePath, n.File, n.Inode.UID, uid)
		}
	}
	if len(got) != len(want) || dry.Refused != 2 {
		t.Errorf("dry run refused %d, findings %v, want %v", dry.Refused, got, want)
	}
	for p, k := range want {
		if got[p] != k {
			t.Errorf("%s: finding %q, want %q", p, got[p], k)
		}
	}

	r = runInNS(t, ns.Root, "optimise")
	if r.code != 1 {
		t.Errorf("optimise: exit %d, want 1 (found problems)\n%s", r.code, r.stderr)
	}
	for p := range want {
		if !strings.Contains(r.stderr, "error: '"+p+"' ") {
			t.Errorf("%s not reported:\n%s", p, r.stderr)
		}
	}
	t.Logf("optimise:\n%s", r.stderr)
	if !strings.Contains(r.stderr, "is owned by uid ") || !strings.Contains(r.stderr, "not linked, left as it is") || !strings.Contains(r.stderr, "hard links, but only 1 are in the store's paths") {
		t.Errorf("findings not worded as verify --metadata words them:\n%s", r.stderr)
	}

	// Both files are untouched; their copies in other paths were linked
	// among themselves, never to the user's inode.
	for gi, g := range [][]string{groups[0], groups[1]} {
		victim := g[0]
		st := optLstat(t, victim)
		b := before[victim]
		if st.Ino != b.Ino || st.Nlink != b.Nlink || st.Uid != b.Uid || st.Mode != b.Mode {
			t.Errorf("%s changed: inode %d->%d, links %d->%d, uid %d->%d", victim, b.Ino, st.Ino, b.Nlink, st.Nlink, b.Uid, st.Uid)
		}
		var shared uint64
		for _, q := range g[1:] {
			qs := optLstat(t, q)
			if qs.Ino == b.Ino {
				t.Errorf("group %d: %s shares the refused inode of %s", gi, q, victim)
			}
			if shared == 0 {
				shared = qs.Ino
			} else if qs.Ino != shared {
				t.Errorf("group %d: %s was not linked to the other copies", gi, q)
			}
		}
	}

	// The user rewrites the inode they own: only their own store path's
	// file changes.
	cmd := exec.Command("sh", "-c", `chmod u+w "$1" && printf rewritten > "$1"`, "sh", mine)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}}
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("as %s: %v\n%s", optUser, err, out)
	}
	for _, q := range groups[0][1:] {
		if data, _ := os.ReadFile(q); string(data) == "rewritten" {
			t.Errorf("%s was rewritten through the user's inode", q)
		}
	}
	// Nix finds only that path modified.
	nixErr := runNSAll(t, ns.Root, "nix-store", "--verify", "--check-contents").stderr
	victimPath := optStorePath(ns.Root, owned)
	modified := 0
	for _, line := range strings.Split(nixErr, "\n") {
		if strings.Contains(line, "was modified") || strings.HasPrefix(line, "error") {
			if !strings.Contains(line, victimPath) {
				t.Errorf("nix-store --verify --check-contents: %s", line)
			}
			modified++
		}
	}
	if modified == 0 {
		t.Errorf("nix-store --verify --check-contents did not see the user's change:\n%s", tail(nixErr, 2000))
	}
}
