package optimise

import (
	"context"
	"os"
	"path/filepath"
	"sort"
	"testing"

	"golang.org/x/sys/unix"

	"storekeeper/store"
	"storekeeper/store/fs"
	"storekeeper/store/storetest"
)

// dupGroups returns the groups of two or more regular files of at least
// 16 bytes with the same NAR hash, largest first, then by hash.
func dupGroups(nodes []node) [][]node {
	by := map[string][]node{}
	for _, n := range nodes {
		if n.mode&unix.S_IFMT == unix.S_IFREG && n.size >= 16 {
			by[n.hash] = append(by[n.hash], n)
		}
	}
	var out [][]node
	for _, g := range by {
		if len(g) >= 2 {
			out = append(out, g)
		}
	}
	sort.Slice(out, func(i, j int) bool {
		if len(out[i]) != len(out[j]) {
			return len(out[i]) > len(out[j])
		}
		return out[i][0].hash < out[j][0].hash
	})
	return out
}

// checkLinkedExcept asserts that every file but those in skip shares its
// inode with its .links entry.
func checkLinkedExcept(t testing.TB, b *storetest.Built, s *store.Store, skip map[string]bool) {
	t.Helper()
	for _, n := range scan(t, b) {
		if skip[n.path] {
			continue
		}
		var st, lst unix.Stat_t
		unix.Lstat(n.path, &st)
		if err := unix.Lstat(filepath.Join(s.Layout.LinksDir(), n.hash), &lst); err != nil || lst.Ino != st.Ino {
			t.Errorf("%s is not linked to .links/%s", n.path, n.hash)
		}
	}
}

func requireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root (to chown store files)")
	}
}

// findNotice returns the notices of kind about path.
func findNotices(res *Result, kind, path string) []Notice {
	var out []Notice
	for _, n := range res.Notices {
		if n.Kind == kind && n.Path == path {
			out = append(out, n)
		}
	}
	return out
}

func hasProblem(n Notice, kind string) bool {
	for _, p := range n.Problems {
		if p.Kind == kind {
			return true
		}
	}
	return false
}

// TestFileTheStoreOwnerDoesNotControlIsNotLinked: a store file that
// another user owns, that is writable or setuid or has another mode, or
// that is also hard-linked from outside the store, is neither made a
// .links entry nor replaced by a link; its copies are linked among
// themselves, every other file as usual, and the file is reported.
func TestFileTheStoreOwnerDoesNotControlIsNotLinked(t *testing.T) {
	requireRoot(t)
	for _, tc := range []struct {
		name    string
		problem string
		mutate  func(t *testing.T, p string, mode uint32)
	}{
		{"outside hard link", fs.MetaForeignLink, func(t *testing.T, p string, _ uint32) {
			if err := os.Link(p, filepath.Join(t.TempDir(), "mine")); err != nil {
				t.Fatal(err)
			}
		}},
		{"other owner", fs.MetaBadOwner, func(t *testing.T, p string, _ uint32) {
			if err := os.Lchown(p, 65534, 65534); err != nil {
				t.Fatal(err)
			}
		}},
		{"other owner and outside hard link", fs.MetaBadOwner, func(t *testing.T, p string, _ uint32) {
			dir := t.TempDir()
			os.Chown(dir, 65534, 65534)
			if err := os.Link(p, filepath.Join(dir, "mine")); err != nil {
				t.Fatal(err)
			}
			if err := os.Lchown(p, 65534, 65534); err != nil {
				t.Fatal(err)
			}
		}},
		{"group writable", fs.MetaWritable, func(t *testing.T, p string, mode uint32) {
			if err := unix.Chmod(p, mode&0o555|0o020); err != nil {
				t.Fatal(err)
			}
		}},
		{"setuid", fs.MetaSetuid, func(t *testing.T, p string, mode uint32) {
			if err := unix.Chmod(p, mode&0o555|unix.S_ISUID); err != nil {
				t.Fatal(err)
			}
		}},
		{"other mode", fs.MetaBadMode, func(t *testing.T, p string, mode uint32) {
			if err := unix.Chmod(p, mode&0o555|unix.S_ISVTX); err != nil {
				t.Fatal(err)
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b, s := fixture(t, dupSpec())
			nodes := scan(t, b)
			groups := dupGroups(nodes)
			if len(groups) < 2 {
				t.Fatal("fixture has too few duplicated files")
			}
			g := groups[0]
			// The middle one: neither the first nor the last of its
			// copies by path or inode.
			victim := g[len(g)/2]
			tc.mutate(t, victim.path, victim.mode)
			var before unix.Stat_t
			if err := unix.Lstat(victim.path, &before); err != nil {
				t.Fatal(err)
			}

			dry, err := Optimise(context.Background(), s, Options{DryRun: true}, nil)
			if err != nil {
				t.Fatal(err)
			}
			res, err := Optimise(context.Background(), s, Options{}, nil)
			if err != nil {
				t.Fatal(err)
			}

			var after unix.Stat_t
			if err := unix.Lstat(victim.path, &after); err != nil {
				t.Fatal(err)
			}
			if after.Ino != before.Ino || after.Nlink != before.Nlink || after.Uid != before.Uid || after.Mode != before.Mode {
				t.Errorf("%s changed: inode %d->%d, links %d->%d, uid %d->%d, mode %o->%o", victim.path,
					before.Ino, after.Ino, before.Nlink, after.Nlink, before.Uid, after.Uid, before.Mode, after.Mode)
			}
			var lst unix.Stat_t
			entry := filepath.Join(s.Layout.LinksDir(), victim.hash)
			if err := unix.Lstat(entry, &lst); err != nil {
				t.Errorf("no .links entry for the victim's copies: %v", err)
			} else if lst.Ino == before.Ino {
				t.Errorf("the refused file became the .links entry %s", entry)
			}
			// Its copies share the entry; so does every other file.
			checkLinkedExcept(t, b, s, map[string]bool{victim.path: true})

			found := findNotices(res, KindRefused, victim.path)
			if len(found) != 1 {
				t.Fatalf("refused file reported %d times: %+v", len(found), res.Notices)
			}
			n := found[0]
			if !hasProblem(n, tc.problem) || n.Inode == nil || n.Inode.Nlink != uint64(before.Nlink) || n.Inode.UID != before.Uid {
				t.Errorf("finding %+v (inode %+v), want a %s problem and the file's lstat", n, n.Inode, tc.problem)
			}
			if n.StorePath == "" || n.File == "" {
				t.Errorf("finding does not name the store path and file: %+v", n)
			}
			if res.Refused != 1 || len(res.Errors()) != 1 {
				t.Errorf("Refused %d, Errors %+v", res.Refused, res.Errors())
			}
			if dry.FilesLinked != res.FilesLinked || dry.Refused != res.Refused || len(findNotices(dry, KindRefused, victim.path)) != 1 {
				t.Errorf("dry run: %d linked, %d refused; real run: %d, %d", dry.FilesLinked, dry.Refused, res.FilesLinked, res.Refused)
			}
			// A second run reports it again and changes nothing.
			again, err := Optimise(context.Background(), s, Options{}, nil)
			if err != nil {
				t.Fatal(err)
			}
			if again.FilesLinked != 0 || len(findNotices(again, KindRefused, victim.path)) != 1 {
				t.Errorf("second run: %d linked, notices %+v", again.FilesLinked, again.Notices)
			}
		})
	}
}

// TestUntrustedLinksEntryIsNeverUsed: a .links entry that another user
// owns (or that is writable) gets nothing linked to it; the files with
// its contents are left as they are; other files are linked as usual.
func TestUntrustedLinksEntryIsNeverUsed(t *testing.T) {
	requireRoot(t)
	for _, tc := range []struct {
		name    string
		problem string
		mutate  func(p string, mode uint32) error
	}{
		{"other owner", fs.MetaBadOwner, func(p string, _ uint32) error { return os.Lchown(p, 65534, 65534) }},
		{"writable", fs.MetaWritable, func(p string, mode uint32) error { return unix.Chmod(p, mode&0o555|0o002) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b, s := fixture(t, dupSpec())
			g := dupGroups(scan(t, b))[0]
			data, err := os.ReadFile(g[0].path)
			if err != nil {
				t.Fatal(err)
			}
			ld := s.Layout.LinksDir()
			os.Mkdir(ld, 0o755)
			entry := filepath.Join(ld, g[0].hash)
			if err := os.WriteFile(entry, data, 0o444); err != nil {
				t.Fatal(err)
			}
			if err := unix.Chmod(entry, g[0].mode&0o555); err != nil {
				t.Fatal(err)
			}
			if err := tc.mutate(entry, g[0].mode); err != nil {
				t.Fatal(err)
			}
			inos := map[string]uint64{}
			skip := map[string]bool{}
			for _, n := range g {
				inos[n.path] = n.ino
				skip[n.path] = true
			}

			dry, err := Optimise(context.Background(), s, Options{DryRun: true}, nil)
			if err != nil {
				t.Fatal(err)
			}
			res, err := Optimise(context.Background(), s, Options{}, nil)
			if err != nil {
				t.Fatal(err)
			}
			var est unix.Stat_t
			if err := unix.Lstat(entry, &est); err != nil || est.Nlink != 1 {
				t.Errorf("the untrusted entry has %d links (%v), want 1", est.Nlink, err)
			}
			for _, n := range g {
				var st unix.Stat_t
				unix.Lstat(n.path, &st)
				if st.Ino != inos[n.path] {
					t.Errorf("%s was replaced", n.path)
				}
			}
			checkLinkedExcept(t, b, s, skip)
			var reported []Notice
			for _, n := range res.Notices {
				if n.Kind == KindUntrustedLink {
					reported = append(reported, n)
				}
			}
			if len(reported) != 1 || reported[0].Link != entry || !hasProblem(reported[0], tc.problem) {
				t.Errorf("untrusted entry reported as %+v, want once, with a %s problem", reported, tc.problem)
			}
			if res.Refused != int64(len(g)) || len(res.Errors()) != 1 {
				t.Errorf("Refused %d (want %d), Errors %+v", res.Refused, len(g), res.Errors())
			}
			if dry.FilesLinked != res.FilesLinked || dry.Refused != res.Refused {
				t.Errorf("dry run: %d linked, %d refused; real run: %d, %d", dry.FilesLinked, dry.Refused, res.FilesLinked, res.Refused)
			}
		})
	}
}

// TestStoreHardLinksAreLinkedAsNix: files whose extra names are all in
// the store's paths (a store whose .links was deleted after an optimise)
// are linked as Nix links them: each inode becomes its .links entry
// again, nothing is refused, nothing more is freed.
func TestStoreHardLinksAreLinkedAsNix(t *testing.T) {
	for _, mode := range []string{"io_uring", "plain"} {
		t.Run(mode, func(t *testing.T) {
			if mode == "plain" {
				t.Setenv("STOREKEEPER_NO_IO_URING", "1")
			}
			b, s := fixture(t, dupSpec())
			first, err := Optimise(context.Background(), s, Options{}, nil)
			if err != nil {
				t.Fatal(err)
			}
			if first.FilesLinked == 0 {
				t.Fatal("nothing linked")
			}
			if err := os.RemoveAll(s.Layout.LinksDir()); err != nil {
				t.Fatal(err)
			}
			os.RemoveAll(filepath.Join(s.Layout.OwnStateDir(), linkedStateName))
			dry, err := Optimise(context.Background(), s, Options{DryRun: true}, nil)
			if err != nil {
				t.Fatal(err)
			}
			res, err := Optimise(context.Background(), s, Options{}, nil)
			if err != nil {
				t.Fatal(err)
			}
			if res.Refused != 0 || len(res.Errors()) != 0 || dry.Refused != 0 {
				t.Errorf("refused %d (dry run %d): %+v", res.Refused, dry.Refused, res.Notices)
			}
			if res.FilesLinked != 0 || res.LinksCreated != first.LinksCreated || dry.LinksCreated != first.LinksCreated {
				t.Errorf("linked %d, created %d (dry run %d), want 0 and %d", res.FilesLinked, res.LinksCreated, dry.LinksCreated, first.LinksCreated)
			}
			checkAllLinked(t, b, s)
			checkStore(t, s)
		})
	}
}

// TestSelectedPathsCountOnlyTheirNames: with PATH arguments only the
// names in those paths are seen, so a file whose other names are in
// paths not given is refused, not linked; a whole-store run links it.
func TestSelectedPathsCountOnlyTheirNames(t *testing.T) {
	b, s := fixture(t, dupSpec())
	if _, err := Optimise(context.Background(), s, Options{}, nil); err != nil {
		t.Fatal(err)
	}
	os.RemoveAll(s.Layout.LinksDir())
	os.RemoveAll(filepath.Join(s.Layout.OwnStateDir(), linkedStateName))
	// A path with a file whose inode has names in other paths.
	var one string
	for _, n := range scan(t, b) {
		var st unix.Stat_t
		unix.Lstat(n.path, &st)
		if st.Nlink > 1 {
			one = storePathOf(b, n.path)
			break
		}
	}
	if one == "" {
		t.Fatal("no shared inode")
	}
	nlink := map[string]uint64{}
	for _, n := range scan(t, b) {
		var st unix.Stat_t
		unix.Lstat(n.path, &st)
		nlink[n.path] = uint64(st.Nlink)
	}
	res, err := Optimise(context.Background(), s, Options{Paths: []string{b.Layout.StoreDir + "/" + filepath.Base(one)}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if res.Refused == 0 {
		t.Errorf("nothing refused: %+v", res.Notices)
	}
	for _, n := range res.Notices {
		var st unix.Stat_t
		unix.Lstat(n.Path, &st)
		if n.Kind != KindRefused || !hasProblem(n, fs.MetaForeignLink) || n.Inode.Nlink != nlink[n.Path] || uint64(st.Nlink) != nlink[n.Path] {
			t.Errorf("notice %+v (links %d, before %d)", n, st.Nlink, nlink[n.Path])
		}
	}
	res, err = Optimise(context.Background(), s, Options{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if res.Refused != 0 || len(res.Errors()) != 0 {
		t.Errorf("whole store: %+v", res.Notices)
	}
	checkAllLinked(t, b, s)
}
