package repair

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
	_ "modernc.org/sqlite"

	"storekeeper/nix/nixconf"
	"storekeeper/store"
	"storekeeper/store/storetest"
	"storekeeper/verify"
	"storekeeper/verify/finding"
)

// fixture is a store built by storetest, audited by verify and repaired
// as `verify --repair` does.
type fixture struct {
	t *testing.T
	b *storetest.Built
}

func newFixture(t *testing.T, spec storetest.Spec) *fixture {
	t.Helper()
	return &fixture{t: t, b: storetest.MustBuild(t, spec)}
}

func smallSpec() storetest.Spec {
	s := storetest.DefaultSpec()
	s.Paths = 40
	return s
}

func (f *fixture) real(p string) string { return f.b.Layout.RealPath(p) }

// verify audits the store read-only.
func (f *fixture) verify(o verify.Options) *verify.Result {
	f.t.Helper()
	s, err := storetest.OpenReadOnly(f.b.Layout)
	if err != nil {
		f.t.Fatal(err)
	}
	defer s.Close()
	res, err := verify.Verify(context.Background(), s, o, nil)
	if err != nil {
		f.t.Fatal(err)
	}
	return res
}

// verifyRepair is `verify --repair`: the audit, refusing a suspect store
// directory as Execute would (Options.Refuse), then Findings.
func (f *fixture) verifyRepair(o verify.Options, ro Options) (*verify.Result, error) {
	ctx := context.Background()
	s, err := store.Open(ctx, store.Options{Layout: f.b.Layout, Settings: nixconf.Default(true)})
	if err != nil {
		f.t.Fatal(err)
	}
	defer s.Close()
	o.OnSuspect = ro.Refuse
	res, err := verify.Verify(ctx, s, o, nil)
	if err != nil {
		return nil, err
	}
	ro.Suspect = res.Suspect
	if _, err := Findings(ctx, s, res.Findings, ro); err != nil {
		return nil, err
	}
	res.Recount()
	return res, nil
}

// pick returns valid paths matching the predicate (with the number of
// other paths referring to each), sorted.
func (f *fixture) pick(pred func(p string, fi os.FileInfo, referrers int) bool) []string {
	refc := map[string]int{}
	for p, refs := range f.b.Refs {
		for _, r := range refs {
			if r != p {
				refc[r]++
			}
		}
	}
	var out []string
	for _, p := range f.b.Valid {
		fi, err := os.Lstat(f.real(p))
		if err != nil {
			f.t.Fatal(err)
		}
		if pred(p, fi, refc[p]) {
			out = append(out, p)
		}
	}
	sort.Strings(out)
	if len(out) == 0 {
		f.t.Fatal("no path fits")
	}
	return out
}

func byKind(r *verify.Result) map[finding.Kind][]finding.Finding {
	m := map[finding.Kind][]finding.Finding{}
	for _, f := range r.Findings {
		m[f.Kind] = append(m[f.Kind], f)
	}
	return m
}

// dbDump is every row of the tables --repair changes, in a fixed order.
func dbDump(t *testing.T, f *fixture) string {
	t.Helper()
	db, err := sql.Open("sqlite", "file:"+f.b.Layout.DBPath()+"?mode=ro")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var sb strings.Builder
	for _, q := range []string{
		"select id, path, hash, coalesce(narSize, -1) from ValidPaths order by id",
		"select referrer, reference, 0, 0 from Refs order by referrer, reference",
		"select drv, id, path, 0 from DerivationOutputs order by drv, id",
	} {
		rows, err := db.Query(q)
		if err != nil {
			t.Fatal(err)
		}
		for rows.Next() {
			var a, b, c, d any
			if err := rows.Scan(&a, &b, &c, &d); err != nil {
				t.Fatal(err)
			}
			fmt.Fprintln(&sb, a, b, c, d)
		}
		rows.Close()
	}
	return sb.String()
}

func validCount(t *testing.T, f *fixture) int {
	t.Helper()
	db, err := sql.Open("sqlite", "file:"+f.b.Layout.DBPath()+"?mode=ro")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var n int
	if err := db.QueryRow("select count(*) from ValidPaths").Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// removeStorePaths deletes valid paths from disk (not from the DB).
func removeStorePaths(t *testing.T, f *fixture, ps []string) {
	t.Helper()
	for _, p := range ps {
		exec.Command("chmod", "-R", "u+w", f.real(p)).Run()
		if err := os.RemoveAll(f.real(p)); err != nil {
			t.Fatal(err)
		}
	}
}

// TestRepairRefusesEmptyStore: a store dir that lost every valid path (its
// file system did not mount) makes --repair change nothing and say why.
func TestRepairRefusesEmptyStore(t *testing.T) {
	f := newFixture(t, smallSpec())
	if res := f.verify(verify.Options{}); res.Problems() {
		t.Fatalf("clean store: %+v", res.Findings)
	}
	removeStorePaths(t, f, f.b.Valid)
	for _, l := range f.b.Leftovers {
		os.RemoveAll(filepath.Join(f.b.Layout.RealStoreDir, l))
	}
	os.MkdirAll(f.b.Layout.LinksDir(), 0o755)
	before := dbDump(t, f)
	_, err := f.verifyRepair(verify.Options{}, Options{})
	if err == nil {
		t.Fatal("--repair ran on an empty store dir")
	}
	if dbDump(t, f) != before {
		t.Fatal("the database changed")
	}
	if !errors.Is(err, ErrRefused) || !errors.Is(err, store.ErrStoreLooksUnmounted) {
		t.Errorf("error %v does not wrap ErrRefused and store.ErrStoreLooksUnmounted", err)
	}
	msg := err.Error()
	for _, want := range []string{fmt.Sprintf("%d of the %d valid paths", len(f.b.Valid), len(f.b.Valid)), f.b.Layout.RealStoreDir, "--allow-mass-drop", "It is empty", "Nothing was changed"} {
		if !strings.Contains(msg, want) {
			t.Errorf("message lacks %q: %s", want, msg)
		}
	}
	// Without --repair: the findings, and the summary says why it looks
	// wrong; nothing changes.
	res := f.verify(verify.Options{})
	if len(res.Findings) != len(f.b.Valid) || !strings.Contains(res.Summary.StoreSuspect, "empty") {
		t.Errorf("plain verify: %d findings, suspect %q", len(res.Findings), res.Summary.StoreSuspect)
	}
	// The override drops every row.
	res, err = f.verifyRepair(verify.Options{}, Options{AllowMassDrop: true})
	if err != nil {
		t.Fatal(err)
	}
	if res.Problems() || res.Summary.Repaired != len(f.b.Valid) || validCount(t, f) != 0 {
		t.Errorf("--allow-mass-drop: %d repaired, %d rows left, findings %+v", res.Summary.Repaired, validCount(t, f), res.Findings)
	}
}

// TestRepairRefusesMassMissing: more than 10% and more than 20 of the
// valid paths missing at once is refused; fewer is repaired as before.
func TestRepairRefusesMassMissing(t *testing.T) {
	spec := storetest.DefaultSpec()
	spec.Paths = 120
	f := newFixture(t, spec)
	n := len(f.b.Valid)
	k := n/10 + 5 // more than 10%, and more than 20
	if k <= 20 {
		t.Fatalf("store too small: %d paths", n)
	}
	gone := f.pick(func(p string, fi os.FileInfo, refs int) bool { return refs == 0 })
	if len(gone) < k {
		gone = append(gone, f.pick(func(p string, fi os.FileInfo, refs int) bool { return refs > 0 })...)
	}
	removeStorePaths(t, f, gone[:k])
	before := dbDump(t, f)
	_, err := f.verifyRepair(verify.Options{}, Options{})
	if err == nil {
		t.Fatalf("--repair dropped rows with %d of %d paths missing", k, n)
	}
	if dbDump(t, f) != before {
		t.Fatal("the database changed")
	}
	if msg := err.Error(); !errors.Is(err, store.ErrStoreLooksUnmounted) || !strings.Contains(msg, fmt.Sprintf("%d of the %d valid paths", k, n)) ||
		!strings.Contains(msg, "--allow-mass-drop") || !strings.Contains(msg, "More than 10%") {
		t.Errorf("message: %s", msg)
	}
	res, err := f.verifyRepair(verify.Options{}, Options{AllowMassDrop: true})
	if err != nil {
		t.Fatal(err)
	}
	dropped := 0
	for _, x := range byKind(res)[finding.KindDisappeared] {
		if !x.Repaired {
			t.Errorf("not dropped: %s", x.Path)
		}
		dropped++
	}
	if dropped == 0 || validCount(t, f) != n-dropped {
		t.Errorf("--allow-mass-drop dropped %d paths; %d of %d rows left", dropped, validCount(t, f), n)
	}

	// At the threshold (20 paths, or 10%) it is damage, repaired as before.
	for _, c := range []struct{ paths, gone int }{{120, store.MassMissingMin}, {300, 0}} {
		spec.Paths = c.paths
		f := newFixture(t, spec)
		n := len(f.b.Valid)
		gone := c.gone
		if gone == 0 {
			gone = n * store.MassMissingPercent / 100 // 10% exactly, more than 20
		}
		if gone*100 > n*store.MassMissingPercent || (c.gone == 0 && gone <= store.MassMissingMin) {
			t.Fatalf("bad case: %d of %d", gone, n)
		}
		lone := f.pick(func(p string, fi os.FileInfo, refs int) bool { return refs == 0 })
		if len(lone) < gone {
			t.Fatalf("only %d unreferenced paths", len(lone))
		}
		removeStorePaths(t, f, lone[:gone])
		res, err := f.verifyRepair(verify.Options{}, Options{})
		if err != nil {
			t.Fatalf("%d of %d missing: %v", gone, n, err)
		}
		if validCount(t, f) != n-gone || res.Summary.Repaired != gone {
			t.Errorf("%d of %d missing: %d rows left, %d repaired", gone, n, validCount(t, f), res.Summary.Repaired)
		}
	}
}

// TestRepairRefusesChangedFS: with a path missing, a store dir on another
// file system than recorded, or recorded as a mount point with nothing
// mounted on it now, is refused; the override repairs and records the new
// file system; a run with nothing missing re-records it by itself.
func TestRepairRefusesChangedFS(t *testing.T) {
	f := newFixture(t, smallSpec())
	lay := f.b.Layout
	state := lay.OwnStateDir()
	if res := f.verify(verify.Options{}); res.Problems() {
		t.Fatalf("clean store: %+v", res.Findings)
	}
	rec, ok, err := store.LoadFSIdentity(state)
	if err != nil || !ok {
		t.Fatalf("a clean run recorded no identity: %v %v", ok, err)
	}
	now, err := store.CurrentFSIdentity(lay.RealStoreDir)
	if err != nil {
		t.Fatal(err)
	}
	if rec != now {
		t.Fatalf("recorded %+v, now %+v", rec, now)
	}
	lone := f.pick(func(p string, fi os.FileInfo, refs int) bool { return refs == 0 })
	removeStorePaths(t, f, lone[:1])
	for _, c := range []struct {
		what string
		edit func(*store.FSIdentity)
		want string
	}{
		{"another type", func(id *store.FSIdentity) { id.Type, id.FSType = 0x58465342, "xfs" }, "was on the xfs file system"},
		{"another fsid", func(id *store.FSIdentity) { id.Fsid[0]++ }, "is on another file system now"},
		{"mount gone", func(id *store.FSIdentity) { id.MountPoint, id.Dev = true, id.Dev+1 }, "was a mount point"},
	} {
		if c.what == "another fsid" && !map[int64]bool{0xef53: true, 0x9123683e: true, 0x2fc12fc1: true, 0xca451a4e: true}[now.Type] {
			continue // fsids not derived from a UUID prove nothing (store.FSIdentity)
		}
		old := now
		c.edit(&old)
		if err := store.SaveFSIdentity(state, old); err != nil {
			t.Fatal(err)
		}
		before := dbDump(t, f)
		_, err := f.verifyRepair(verify.Options{}, Options{})
		if !errors.Is(err, store.ErrStoreLooksUnmounted) || !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), "--allow-mass-drop") {
			t.Errorf("%s: %v", c.what, err)
		}
		if dbDump(t, f) != before {
			t.Fatalf("%s: the database changed", c.what)
		}
		if id, _, _ := store.LoadFSIdentity(state); id != old {
			t.Errorf("%s: the record was replaced by a refused run", c.what)
		}
	}
	// The override repairs and records the file system it is on now.
	res, err := f.verifyRepair(verify.Options{}, Options{AllowMassDrop: true})
	if err != nil || res.Problems() || validCount(t, f) != len(f.b.Valid)-1 {
		t.Fatalf("--allow-mass-drop: %v %+v", err, res)
	}
	if id, _, _ := store.LoadFSIdentity(state); id != now {
		t.Errorf("after the override: recorded %+v, want %+v", id, now)
	}
	// A whole store re-records even a changed identity (a store copied
	// to another disk is whole): nothing missing, nothing refused.
	old := now
	old.Fsid[1]++
	store.SaveFSIdentity(state, old)
	if res := f.verify(verify.Options{CheckContents: true}); res.Problems() || res.Summary.StoreSuspect != "" {
		t.Fatalf("whole store: %+v", res)
	}
	if id, _, _ := store.LoadFSIdentity(state); id != now {
		t.Errorf("a whole store was not re-recorded: %+v", id)
	}
}

// TestRepairNoFalseAlarm: a plain store directory on the same file system
// as recorded, with a few paths missing, is repaired; --no-record writes
// no identity.
func TestRepairNoFalseAlarm(t *testing.T) {
	f := newFixture(t, smallSpec())
	state := f.b.Layout.OwnStateDir()
	f.verify(verify.Options{NoRecord: true})
	if _, ok, _ := store.LoadFSIdentity(state); ok {
		t.Error("--no-record recorded the file system")
	}
	f.verify(verify.Options{})
	lone := f.pick(func(p string, fi os.FileInfo, refs int) bool { return refs == 0 })
	removeStorePaths(t, f, lone[:3])
	res, err := f.verifyRepair(verify.Options{}, Options{})
	if err != nil || res.Problems() || res.Summary.Repaired != 3 {
		t.Fatalf("%v %+v", err, res)
	}
	if _, err := f.verifyRepair(verify.Options{}, Options{AllowMassDrop: true}); err != nil {
		t.Errorf("--allow-mass-drop on a whole store: %v", err)
	}
}

// TestRepairRemovesBogusLinks: .links entries that are a directory tree
// (with a read-only subdirectory), a symlink and a fifo are removed by
// --repair without following the symlink, and the next run is clean.
func TestRepairRemovesBogusLinks(t *testing.T) {
	f := newFixture(t, smallSpec())
	links := f.b.Layout.LinksDir()
	os.MkdirAll(links, 0o755)
	name := func(c byte) string { return strings.Repeat(string(c), 52) }
	dir := filepath.Join(links, name('0'))
	os.MkdirAll(filepath.Join(dir, "sub", "deeper"), 0o755)
	os.WriteFile(filepath.Join(dir, "a"), []byte("a"), 0o444)
	os.WriteFile(filepath.Join(dir, "sub", "deeper", "b"), []byte("b"), 0o444)
	os.Chmod(filepath.Join(dir, "sub"), 0o555)
	outside := filepath.Join(f.b.Root, "outside")
	os.MkdirAll(outside, 0o755)
	os.WriteFile(filepath.Join(outside, "keep"), []byte("keep"), 0o644)
	lnk := filepath.Join(links, name('1'))
	if err := os.Symlink(outside, lnk); err != nil {
		t.Fatal(err)
	}
	fifo := filepath.Join(links, name('2'))
	if err := unix.Mkfifo(fifo, 0o444); err != nil {
		t.Fatal(err)
	}
	res := f.verify(verify.Options{CheckContents: true})
	k := byKind(res)
	if len(k[finding.KindLinkModified]) != 3 || len(res.Findings) != 3 {
		t.Fatalf("findings: %+v", res.Findings)
	}
	res, err := f.verifyRepair(verify.Options{CheckContents: true}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if res.Problems() {
		t.Fatalf("after repair: %+v", res.Findings)
	}
	for _, p := range []string{dir, lnk, fifo} {
		if _, err := os.Lstat(p); !os.IsNotExist(err) {
			t.Errorf("%s is still there", p)
		}
	}
	if _, err := os.Stat(filepath.Join(outside, "keep")); err != nil {
		t.Errorf("the symlink was followed: %v", err)
	}
	if res := f.verify(verify.Options{CheckContents: true}); len(res.Findings) != 0 {
		t.Errorf("second run: %+v", res.Findings)
	}
}
