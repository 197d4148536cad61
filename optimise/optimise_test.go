package optimise

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"storekeeper/graph"
	"storekeeper/internal/sys"
	"storekeeper/nix/nar"
	"storekeeper/nix/nixconf"
	"storekeeper/store"
	"storekeeper/store/db"
	"storekeeper/store/storetest"
)

// fixture builds a store without Nix and opens it read-write.
func fixture(t testing.TB, spec storetest.Spec) (*storetest.Built, *store.Store) {
	t.Helper()
	b := storetest.MustBuild(t, spec)
	return b, storetest.Open(t, b.Layout)
}

func dupSpec() storetest.Spec {
	sp := storetest.DefaultSpec()
	sp.Paths, sp.Dup, sp.Files = 80, 0.5, 5
	return sp
}

// node is a regular file or symlink found in the valid paths.
type node struct {
	path string
	ino  uint64
	size int64
	hash string // NAR hash, base-32
	mode uint32
}

// scan lists every regular file and symlink of the valid paths.
func scan(t testing.TB, b *storetest.Built) []node {
	t.Helper()
	var out []node
	for _, p := range b.Valid {
		phys := b.Layout.RealPath(p)
		err := filepath.WalkDir(phys, func(q string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			if d.IsDir() {
				return nil
			}
			var st unix.Stat_t
			if err := unix.Lstat(q, &st); err != nil {
				return err
			}
			h, _, err := nar.HashPath(q)
			if err != nil {
				return err
			}
			out = append(out, node{q, st.Ino, st.Size, h.Base32(), st.Mode})
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	return out
}

// expected computes what a Nix-compatible optimise of a store without
// any hard links must do: per NAR hash, every file but one is linked.
func expected(nodes []node) (files, bytes int64, names map[string]bool) {
	names = map[string]bool{}
	seen := map[string]bool{}
	for _, n := range nodes {
		if n.mode&unix.S_IFMT == unix.S_IFREG && n.mode&unix.S_IWUSR != 0 {
			continue
		}
		names[n.hash] = true
		if seen[n.hash] {
			files++
			bytes += n.size
		}
		seen[n.hash] = true
	}
	return files, bytes, names
}

// checkAllLinked asserts that every file shares its inode with its
// .links entry.
func checkAllLinked(t testing.TB, b *storetest.Built, s *store.Store) {
	t.Helper()
	for _, n := range scan(t, b) {
		var st, lst unix.Stat_t
		unix.Lstat(n.path, &st)
		if err := unix.Lstat(filepath.Join(s.Layout.LinksDir(), n.hash), &lst); err != nil || lst.Ino != st.Ino {
			t.Errorf("%s is not linked to .links/%s", n.path, n.hash)
		}
	}
}

// checkStore asserts the invariants every run must leave: the NAR hash of
// every valid path equals the DB's, every .links entry holds what its
// name says, no temporary link is left, directories are canonical.
func checkStore(t testing.TB, s *store.Store) {
	t.Helper()
	g, err := s.LoadGraph(context.Background(), db.GraphOptions{Hashes: true})
	if err != nil {
		t.Fatal(err)
	}
	for id := graph.PathID(0); int(id) < g.Len(); id++ {
		phys := s.Layout.RealPath(g.Path(id))
		h, _, err := nar.HashPath(phys)
		if err != nil {
			t.Fatalf("%s: %v", phys, err)
		}
		if h != g.NarHash[id] {
			t.Errorf("%s: NAR hash %s, DB says %s", phys, h, g.NarHash[id])
		}
		filepath.WalkDir(phys, func(q string, d fs.DirEntry, err error) error {
			if err == nil && d.IsDir() {
				var st unix.Stat_t
				unix.Lstat(q, &st)
				if st.Mode&0o777 != 0o555 || st.Mtim.Sec != 1 {
					t.Errorf("%s: directory mode %o mtime %d, want 0555 and 1", q, st.Mode&0o777, st.Mtim.Sec)
				}
			}
			return nil
		})
	}
	ents, _ := os.ReadDir(s.Layout.RealStoreDir)
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), ".tmp-link-") {
			t.Errorf("temporary link left: %s", e.Name())
		}
	}
	ld := s.Layout.LinksDir()
	links, _ := os.ReadDir(ld)
	for _, e := range links {
		h, _, err := nar.HashPath(filepath.Join(ld, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		if h.Base32() != e.Name() {
			t.Errorf(".links/%s holds %s", e.Name(), h.Base32())
		}
	}
}

// TestOptimiseMatchesModel runs with small files read through io_uring
// (where the kernel allows) and without.
func TestOptimiseMatchesModel(t *testing.T) {
	for _, mode := range []string{"io_uring", "plain"} {
		t.Run(mode, func(t *testing.T) {
			if mode == "plain" {
				t.Setenv("STOREKEEPER_NO_IO_URING", "1")
			}
			testOptimiseMatchesModel(t)
		})
	}
}

func testOptimiseMatchesModel(t *testing.T) {
	b, s := fixture(t, dupSpec())
	before := scan(t, b)
	wantFiles, wantBytes, wantNames := expected(before)
	if wantFiles == 0 {
		t.Fatal("fixture has no duplicates")
	}
	large := 0
	for _, n := range before {
		if n.size > sys.SmallFileMax {
			large++
		}
	}
	if large == 0 || large == len(before) {
		t.Fatalf("fixture has %d files larger than store.SmallFileMax of %d: want both kinds", large, len(before))
	}
	dry, err := Optimise(context.Background(), s, Options{DryRun: true}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(s.Layout.LinksDir()); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("dry run created .links: %v", err)
	}
	res, err := Optimise(context.Background(), s, Options{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if res.FilesLinked != wantFiles || res.BytesFreed != wantBytes {
		t.Errorf("linked %d files / %d bytes, want %d / %d", res.FilesLinked, res.BytesFreed, wantFiles, wantBytes)
	}
	if dry.FilesLinked != res.FilesLinked || dry.BytesFreed != res.BytesFreed || dry.LinksCreated != res.LinksCreated {
		t.Errorf("dry run %d/%d/%d, real run %d/%d/%d", dry.FilesLinked, dry.BytesFreed, dry.LinksCreated, res.FilesLinked, res.BytesFreed, res.LinksCreated)
	}
	links, _ := os.ReadDir(s.Layout.LinksDir())
	got := map[string]bool{}
	for _, e := range links {
		got[e.Name()] = true
	}
	if len(got) != len(wantNames) {
		t.Errorf(".links has %d entries, want %d", len(got), len(wantNames))
	}
	for n := range wantNames {
		if !got[n] {
			t.Errorf(".links lacks %s", n)
		}
	}
	checkAllLinked(t, b, s)
	checkStore(t, s)

	// A second run hashes nothing and links nothing.
	again, err := Optimise(context.Background(), s, Options{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if again.FilesHashed != 0 || again.FilesLinked != 0 || again.LinksCreated != 0 {
		t.Errorf("second run hashed %d, linked %d, created %d", again.FilesHashed, again.FilesLinked, again.LinksCreated)
	}
}

func TestOptimiseSelectedPathsAndBadInput(t *testing.T) {
	b, s := fixture(t, dupSpec())
	one := b.Valid[len(b.Valid)/2]
	res, err := Optimise(context.Background(), s, Options{Paths: []string{one + "/bin", one}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if res.Paths != 1 {
		t.Errorf("processed %d paths, want 1", res.Paths)
	}
	for _, bad := range []string{"/etc/passwd", b.Layout.StoreDir + "/00000000000000000000000000000000-nope", "relative"} {
		if _, err := Optimise(context.Background(), s, Options{Paths: []string{bad}}, nil); !errors.Is(err, ErrNotValid) {
			t.Errorf("%s: err %v, want ErrNotValid", bad, err)
		}
	}
	ro, err := store.Open(context.Background(), store.Options{Layout: b.Layout, Settings: nixconf.Default(true), ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer ro.Close()
	if _, err := Optimise(context.Background(), ro, Options{}, nil); !errors.Is(err, ErrReadOnly) {
		t.Errorf("read-only store: %v", err)
	}
	if _, err := Optimise(context.Background(), ro, Options{DryRun: true}, nil); err != nil {
		t.Errorf("dry run on a read-only store: %v", err)
	}
}

// writable makes a store path's directories writable for the test's
// edits; restore with storetest.Canonicalise.
func writable(t testing.TB, p string) {
	t.Helper()
	filepath.WalkDir(p, func(q string, d fs.DirEntry, err error) error {
		if err == nil && d.IsDir() {
			os.Chmod(q, 0o755)
		}
		return nil
	})
}

// dupPair finds two regular files with the same contents and mode in
// different places.
func dupPair(t testing.TB, nodes []node) (node, node) {
	t.Helper()
	first := map[string]node{}
	for _, n := range nodes {
		if n.mode&unix.S_IFMT != unix.S_IFREG || n.size < 16 {
			continue
		}
		if f, ok := first[n.hash]; ok {
			return f, n
		}
		first[n.hash] = n
	}
	t.Fatal("no duplicate regular files")
	return node{}, node{}
}

func TestCorruptedLinkIsNeverUsed(t *testing.T) {
	for _, tc := range []struct {
		name   string
		mutate func([]byte) []byte
	}{
		{"same size", func(b []byte) []byte { c := append([]byte(nil), b...); c[0] ^= 0xff; return c }},
		{"other size", func(b []byte) []byte { return append(append([]byte(nil), b...), 'x') }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b, s := fixture(t, dupSpec())
			a, c := dupPair(t, scan(t, b))
			data, _ := os.ReadFile(a.path)
			ld := s.Layout.LinksDir()
			os.Mkdir(ld, 0o755)
			bad := filepath.Join(ld, a.hash)
			if err := os.WriteFile(bad, tc.mutate(data), 0o444); err != nil {
				t.Fatal(err)
			}
			os.Chmod(bad, os.FileMode(a.mode&0o555))
			dry, err := Optimise(context.Background(), s, Options{DryRun: true}, nil)
			if err != nil {
				t.Fatal(err)
			}
			res, err := Optimise(context.Background(), s, Options{}, nil)
			if err != nil {
				t.Fatal(err)
			}
			if dry.FilesLinked != res.FilesLinked || len(dry.Errors()) != len(res.Errors()) {
				t.Errorf("dry run: %d linked, %d problems; real run: %d, %d", dry.FilesLinked, len(dry.Errors()), res.FilesLinked, len(res.Errors()))
			}
			var corrupted int
			for _, n := range res.Notices {
				if n.Kind == KindCorrupted && n.Link == bad {
					corrupted++
				}
			}
			if corrupted != 1 {
				t.Errorf("corrupted entry reported %d times: %+v", corrupted, res.Notices)
			}
			if len(res.Errors()) != 1 {
				t.Errorf("Errors() = %+v", res.Errors())
			}
			for _, p := range []string{a.path, c.path} {
				got, _ := os.ReadFile(p)
				if string(got) != string(data) {
					t.Errorf("%s changed", p)
				}
			}
			// The entry now holds the good contents, shared by both files.
			var sa, sc, sl unix.Stat_t
			unix.Lstat(a.path, &sa)
			unix.Lstat(c.path, &sc)
			unix.Lstat(bad, &sl)
			if sa.Ino != sl.Ino || sc.Ino != sl.Ino {
				t.Errorf("files not linked to the replaced entry")
			}
			checkStore(t, s)
		})
	}
}

func TestSuspiciousWritableFileIsSkipped(t *testing.T) {
	b, s := fixture(t, dupSpec())
	a, c := dupPair(t, scan(t, b))
	os.Chmod(c.path, 0o644)
	res, err := Optimise(context.Background(), s, Options{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, n := range res.Notices {
		if n.Kind == KindSuspicious && n.Path == c.path {
			found = true
		}
	}
	if !found {
		t.Errorf("writable file not reported: %+v", res.Notices)
	}
	var sa, sc unix.Stat_t
	unix.Lstat(a.path, &sa)
	unix.Lstat(c.path, &sc)
	if sa.Ino == sc.Ino || sc.Nlink != 1 {
		t.Errorf("writable file was linked")
	}
}

func TestMinSize(t *testing.T) {
	b, s := fixture(t, dupSpec())
	nodes := scan(t, b)
	res, err := Optimise(context.Background(), s, Options{MinSize: 1 << 40}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if res.FilesHashed != 0 || res.SkippedSmall != int64(len(nodes)) {
		t.Errorf("hashed %d, skipped %d of %d", res.FilesHashed, res.SkippedSmall, len(nodes))
	}
}

// TestCrashLeftoversAreRepaired: what a killed optimiser leaves (a
// writable directory with a fresh mtime, a temporary link of a dead
// process) is cleaned up by the next run.
func TestCrashLeftoversAreRepaired(t *testing.T) {
	b, s := fixture(t, dupSpec())
	a, _ := dupPair(t, scan(t, b))
	dir := filepath.Dir(a.path)
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	os.Chtimes(dir, time.Now(), time.Now())
	// The journal of the killed run names the directory.
	jdir := filepath.Join(s.Layout.OwnStateDir(), "optimise")
	os.MkdirAll(jdir, 0o755)
	rel, _ := filepath.Rel(s.Layout.RealStoreDir, dir)
	if err := os.WriteFile(filepath.Join(jdir, "999999999"), []byte(rel+"\x00"), 0o644); err != nil {
		t.Fatal(err)
	}
	tmp := filepath.Join(s.Layout.RealStoreDir, ".tmp-link-999999999-12345")
	if err := os.Link(a.path, tmp); err != nil {
		t.Fatal(err)
	}
	res, err := Optimise(context.Background(), s, Options{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if res.StaleTmpLinks != 1 || res.RestoredDirs != 1 {
		t.Errorf("stale links %d, restored dirs %d", res.StaleTmpLinks, res.RestoredDirs)
	}
	if ents, _ := os.ReadDir(jdir); len(ents) != 0 {
		t.Errorf("journals left: %v", ents)
	}
	checkStore(t, s)
}

// faults wraps the real system calls with injected errors.
type faults struct {
	link   func(newdirfd int, newpath string) error
	rename func(first bool) error // first: the first rename of this temporary link
	seen   sync.Map
}

func (f *faults) ops() sysOps {
	return sysOps{
		linkat: func(od int, op string, nd int, np string, fl int) error {
			if f.link != nil {
				if err := f.link(nd, np); err != nil {
					return err
				}
			}
			return unix.Linkat(od, op, nd, np, fl)
		},
		renameat: func(od int, op string, nd int, np string) error {
			if f.rename != nil {
				_, again := f.seen.LoadOrStore(op, true)
				if err := f.rename(!again); err != nil {
					return err
				}
			}
			return unix.Renameat(od, op, nd, np)
		},
	}
}

func TestInjectedFailuresLeaveFilesAlone(t *testing.T) {
	for _, tc := range []struct {
		name  string
		f     *faults
		check func(t *testing.T, r *Result)
	}{
		{"links dir full", &faults{link: func(nd int, np string) error {
			if !strings.HasPrefix(np, ".tmp-link-") {
				return unix.ENOSPC
			}
			return nil
		}}, func(t *testing.T, r *Result) {
			if r.NoSpace == 0 || r.LinksCreated != 0 || r.FilesLinked != 0 {
				t.Errorf("no-space %d created %d linked %d", r.NoSpace, r.LinksCreated, r.FilesLinked)
			}
		}},
		{"too many links", &faults{link: func(nd int, np string) error {
			if strings.HasPrefix(np, ".tmp-link-") {
				return unix.EMLINK
			}
			return nil
		}}, func(t *testing.T, r *Result) {
			if r.TooManyLinks == 0 || r.FilesLinked != 0 || len(r.Errors()) != 0 {
				t.Errorf("too many %d linked %d errors %v", r.TooManyLinks, r.FilesLinked, r.Errors())
			}
		}},
		{"rename EMLINK", &faults{rename: func(bool) error { return unix.EMLINK }}, func(t *testing.T, r *Result) {
			if r.TooManyLinks == 0 || r.FilesLinked != 0 {
				t.Errorf("too many %d linked %d", r.TooManyLinks, r.FilesLinked)
			}
		}},
		{"permission denied", &faults{rename: func(bool) error { return unix.EIO }}, func(t *testing.T, r *Result) {
			if len(r.Errors()) == 0 || r.FilesLinked != 0 {
				t.Errorf("errors %d linked %d", len(r.Errors()), r.FilesLinked)
			}
		}},
		{"directory not writable once", &faults{rename: func(first bool) error {
			if first {
				return unix.EACCES
			}
			return nil
		}}, func(t *testing.T, r *Result) {
			if r.FilesLinked == 0 || len(r.Errors()) != 0 {
				t.Errorf("linked %d errors %v", r.FilesLinked, r.Errors())
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, s := fixture(t, dupSpec())
			res, err := optimiseWith(context.Background(), s, Options{}, nil, tc.f.ops())
			if err != nil {
				t.Fatal(err)
			}
			tc.check(t, res)
			checkStore(t, s)
			// A normal run afterwards completes the job.
			if _, err := Optimise(context.Background(), s, Options{}, nil); err != nil {
				t.Fatal(err)
			}
			again, _ := Optimise(context.Background(), s, Options{}, nil)
			if again.FilesLinked != 0 || again.FilesHashed != 0 {
				t.Errorf("third run still linked %d", again.FilesLinked)
			}
			checkStore(t, s)
		})
	}
}

// TestLinksEntryCollectedMidRun: a collector removes a .links entry this
// run made, just before a duplicate is linked to it. The run must look
// the name up again and make the entry anew from the duplicate (not keep
// linking to the inode it remembers), and a second run links the rest.
func TestLinksEntryCollectedMidRun(t *testing.T) {
	b, s := fixture(t, dupSpec())
	_, _, names := expected(scan(t, b))
	var mu sync.Mutex
	removed := map[string]bool{}
	ops := sysOps{
		linkat: func(od int, op string, nd int, np string, fl int) error {
			if strings.HasPrefix(np, ".tmp-link-") && names[op] {
				mu.Lock()
				first := !removed[op] && len(removed) < 5
				if first {
					removed[op] = true
				}
				mu.Unlock()
				if first {
					if err := unix.Unlinkat(od, op, 0); err != nil {
						t.Errorf("removing .links/%s: %v", op, err)
					}
				}
			}
			return unix.Linkat(od, op, nd, np, fl)
		},
		renameat: unix.Renameat,
	}
	res, err := optimiseWith(context.Background(), s, Options{}, nil, ops)
	if err != nil {
		t.Fatal(err)
	}
	if len(removed) == 0 {
		t.Fatal("no duplicate was linked: the fixture has none")
	}
	if len(res.Errors()) != 0 {
		t.Errorf("errors: %+v", res.Errors())
	}
	for name := range removed {
		var st unix.Stat_t
		if err := unix.Lstat(filepath.Join(s.Layout.LinksDir(), name), &st); err != nil {
			t.Errorf(".links/%s was not made again: %v", name, err)
		} else if st.Nlink < 2 {
			t.Errorf(".links/%s was made again but nothing is linked to it", name)
		}
	}
	checkStore(t, s)
	if _, err := Optimise(context.Background(), s, Options{Full: true}, nil); err != nil {
		t.Fatal(err)
	}
	checkAllLinked(t, b, s)
	checkStore(t, s)
}

// TestRealEMLINK: a .links entry that already has the file system's
// maximum number of links (65000 on ext4) is left alone, and so is the
// file that would have been linked to it.
func TestRealEMLINK(t *testing.T) {
	if testing.Short() {
		t.Skip("makes 65000 hard links")
	}
	b, s := fixture(t, dupSpec())
	a, c := dupPair(t, scan(t, b))
	ld := s.Layout.LinksDir()
	os.Mkdir(ld, 0o755)
	entry := filepath.Join(ld, a.hash)
	if err := os.Link(a.path, entry); err != nil {
		t.Fatal(err)
	}
	extra := filepath.Join(b.Root, "extra-links")
	os.Mkdir(extra, 0o755)
	n := 0
	for ; n < 70000; n++ {
		if err := os.Link(entry, filepath.Join(extra, fmt.Sprint(n))); err != nil {
			if errors.Is(err, unix.EMLINK) {
				break
			}
			t.Fatal(err)
		}
	}
	if n == 70000 {
		t.Skip("this file system has no small link limit")
	}
	res, err := Optimise(context.Background(), s, Options{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if res.TooManyLinks == 0 || len(res.Errors()) != 0 {
		t.Errorf("too many links %d, errors %v", res.TooManyLinks, res.Errors())
	}
	var sc, sl unix.Stat_t
	unix.Lstat(c.path, &sc)
	unix.Lstat(entry, &sl)
	if sc.Ino == sl.Ino {
		t.Errorf("%s linked beyond the limit", c.path)
	}
	checkStore(t, s)
}

func TestConcurrentRuns(t *testing.T) {
	b, s := fixture(t, dupSpec())
	wantFiles, wantBytes, _ := expected(scan(t, b))
	var wg sync.WaitGroup
	results := make([]*Result, 3)
	for i := range results {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s2 := storetest.Open(t, b.Layout)
			r, err := Optimise(context.Background(), s2, Options{Jobs: 3}, nil)
			if err != nil {
				t.Error(err)
			}
			results[i] = r
		}()
	}
	wg.Wait()
	var files int64
	for _, r := range results {
		if r != nil {
			files += r.FilesLinked
			if len(r.Errors()) != 0 {
				t.Errorf("errors: %+v", r.Errors())
			}
		}
	}
	// Races may make two runs replace the same file; never fewer.
	if files < wantFiles {
		t.Errorf("linked %d files in all, want at least %d", files, wantFiles)
	}
	checkStore(t, s)
	again, _ := Optimise(context.Background(), s, Options{}, nil)
	if again.FilesLinked != 0 {
		t.Errorf("a later run linked %d more", again.FilesLinked)
	}
	_ = wantBytes
}

func TestCancel(t *testing.T) {
	_, s := fixture(t, dupSpec())
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err := Optimise(ctx, s, Options{}, nil)
	if !errors.Is(err, context.Canceled) {
		t.Errorf("err = %v", err)
	}
	checkStore(t, s)
}

func FuzzParseDirents(f *testing.F) {
	f.Add([]byte{1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 24, 0, 8, 'a', 'b', 0, 0, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		for _, e := range parseDirents(b, nil) {
			if e.Name == "." || e.Name == ".." || strings.ContainsRune(e.Name, 0) {
				t.Fatalf("bad entry %q", e.Name)
			}
		}
	})
}

// TestNoOpRenameLeavesNoTmpLink: when another optimiser links a file to
// the same .links entry between our hashing and our rename, rename(2)
// between two links to one inode does nothing and our temporary link
// stays; the run removes it before it ends.
func TestNoOpRenameLeavesNoTmpLink(t *testing.T) {
	_, s := fixture(t, dupSpec())
	var once sync.Once
	ops := sysOps{
		linkat: unix.Linkat,
		renameat: func(od int, op string, nd int, np string) error {
			once.Do(func() {
				// The other optimiser: the file becomes a link to the
				// .links entry our temporary link points at.
				if err := unix.Linkat(od, op, nd, np+".other", 0); err != nil {
					t.Error(err)
				}
				if err := unix.Renameat(nd, np+".other", nd, np); err != nil {
					t.Error(err)
				}
			})
			return unix.Renameat(od, op, nd, np)
		},
	}
	if _, err := optimiseWith(context.Background(), s, Options{}, nil, ops); err != nil {
		t.Fatal(err)
	}
	checkStore(t, s) // fails on a .tmp-link-* left in the store dir
}

// TestNoDescriptorLeft: every descriptor a run opens is closed when it
// returns, those of replaced files (held across the rename, closed in the
// pool) included, with and without io_uring.
func TestNoDescriptorLeft(t *testing.T) {
	// The database's descriptors are the store's (its connections stay
	// open until it is closed): not counted.
	countFDs := func(s *store.Store) int {
		ents, err := os.ReadDir("/proc/self/fd")
		if err != nil {
			t.Skip(err)
		}
		n := 0
		for _, e := range ents {
			if l, _ := os.Readlink("/proc/self/fd/" + e.Name()); !strings.HasPrefix(l, filepath.Dir(s.DB.Path)+"/") {
				n++
			}
		}
		return n
	}
	for _, mode := range []string{"io_uring", "plain"} {
		t.Run(mode, func(t *testing.T) {
			if mode == "plain" {
				t.Setenv("STOREKEEPER_NO_IO_URING", "1")
			}
			_, s := fixture(t, dupSpec())
			before := countFDs(s)
			res, err := Optimise(context.Background(), s, Options{}, nil)
			if err != nil {
				t.Fatal(err)
			}
			if res.FilesLinked == 0 {
				t.Fatal("nothing was linked")
			}
			if after := countFDs(s); after != before {
				t.Errorf("%d descriptors open before the run, %d after", before, after)
			}
		})
	}
}
