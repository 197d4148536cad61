package verify

import (
	"context"
	"crypto/ed25519"
	"database/sql"
	"encoding/base64"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	_ "modernc.org/sqlite"

	"storekeeper/nix/nar"
	"storekeeper/nix/nixconf"
	"storekeeper/nix/signature"
	"storekeeper/repair"
	"storekeeper/store"
	"storekeeper/store/db"
	"storekeeper/store/storetest"
	"storekeeper/verify/finding"
)

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

func (f *fixture) open(readOnly bool) *store.Store {
	f.t.Helper()
	s, err := store.Open(context.Background(), store.Options{Layout: f.b.Layout, Settings: nixconf.Default(true), ReadOnly: readOnly})
	if err != nil {
		f.t.Fatal(err)
	}
	return s
}

func (f *fixture) verify(o Options) *Result {
	f.t.Helper()
	res, err := f.tryVerify(o)
	if err != nil {
		f.t.Fatal(err)
	}
	return res
}

func (f *fixture) tryVerify(o Options) (*Result, error) {
	s := f.open(true)
	defer s.Close()
	return Verify(context.Background(), s, o, nil)
}

// verifyRepair is `verify --repair`: the audit, refusing a suspect store
// directory as repair would, then repair.Findings on its findings.
func (f *fixture) verifyRepair(o Options) *Result {
	f.t.Helper()
	ctx := context.Background()
	s := f.open(false)
	defer s.Close()
	var ro repair.Options
	o.OnSuspect = ro.Refuse
	res, err := Verify(ctx, s, o, nil)
	if err != nil {
		f.t.Fatal(err)
	}
	ro.Suspect = res.Suspect
	if _, err := repair.Findings(ctx, s, res.Findings, ro); err != nil {
		f.t.Fatal(err)
	}
	res.Recount()
	return res
}

func (f *fixture) real(p string) string { return f.b.Layout.RealPath(p) }

// referrers counts, per valid path, the other paths that refer to it.
func (f *fixture) referrers() map[string]int {
	n := map[string]int{}
	for p, refs := range f.b.Refs {
		for _, r := range refs {
			if r != p {
				n[r]++
			}
		}
	}
	return n
}

// pick returns valid paths matching the predicate, sorted.
func (f *fixture) pick(pred func(p string, fi os.FileInfo, referrers int) bool) []string {
	refc := f.referrers()
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

func (f *fixture) dirOutputs() []string {
	return f.pick(func(p string, fi os.FileInfo, _ int) bool { return fi.IsDir() })
}

// firstFile returns the first regular file (bytewise) inside a directory path.
func (f *fixture) firstFile(p string) string {
	var files []string
	filepath.Walk(f.real(p), func(q string, fi os.FileInfo, err error) error {
		if err == nil && fi.Mode().IsRegular() {
			files = append(files, q)
		}
		return nil
	})
	sort.Strings(files)
	if len(files) == 0 {
		f.t.Fatalf("%s has no regular file", p)
	}
	return files[0]
}

// writable runs fn with the directory containing q made writable.
func writable(t *testing.T, dir string, fn func()) {
	t.Helper()
	st, err := os.Stat(dir)
	if err != nil {
		t.Fatal(err)
	}
	os.Chmod(dir, 0o755)
	fn()
	os.Chmod(dir, st.Mode().Perm())
	os.Chtimes(dir, time.Unix(1, 0), time.Unix(1, 0))
}

func flipByte(t *testing.T, file string) {
	t.Helper()
	os.Chmod(file, 0o644)
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	if len(b) == 0 {
		b = []byte("A")
	} else {
		b[0] ^= 0xff
	}
	if err := os.WriteFile(file, b, 0o644); err != nil {
		t.Fatal(err)
	}
	os.Chmod(file, 0o444)
	os.Chtimes(file, time.Unix(1, 0), time.Unix(1, 0))
}

func byKind(r *Result) map[finding.Kind][]finding.Finding {
	m := map[finding.Kind][]finding.Finding{}
	for _, f := range r.Findings {
		m[f.Kind] = append(m[f.Kind], f)
	}
	return m
}

func paths(fs []finding.Finding) []string {
	var out []string
	for _, f := range fs {
		out = append(out, f.Path)
	}
	sort.Strings(out)
	return out
}

func TestCleanStore(t *testing.T) {
	f := newFixture(t, smallSpec())
	for _, o := range []Options{{}, {CheckContents: true}, {CheckContents: true, Metadata: true}} {
		res := f.verify(o)
		if len(res.Findings) != 0 || res.Problems() {
			t.Fatalf("%+v: findings on a clean store: %+v", o, res.Findings)
		}
	}
	res := f.verify(Options{CheckContents: true})
	if res.Summary.ManifestsRecorded != 0 {
		t.Errorf("manifests recorded twice: %d", res.Summary.ManifestsRecorded)
	}
	if res.Summary.ContentsChecked != len(f.b.Valid) {
		t.Errorf("hashed %d of %d paths", res.Summary.ContentsChecked, len(f.b.Valid))
	}
}

func TestAuditWritesNothingToTheStore(t *testing.T) {
	f := newFixture(t, smallSpec())
	victim := f.dirOutputs()[0]
	os.Chmod(f.real(victim), 0o755)
	os.RemoveAll(f.real(victim))
	db := f.b.Layout.DBPath()
	before, _ := os.ReadFile(db)
	res := f.verify(Options{CheckContents: true, Metadata: true})
	if !res.Problems() {
		t.Fatal("no problem reported")
	}
	after, _ := os.ReadFile(db)
	if string(before) != string(after) {
		t.Fatal("the audit changed the database")
	}
}

func TestFileLevelDiff(t *testing.T) {
	f := newFixture(t, smallSpec())
	f.verify(Options{CheckContents: true}) // records manifests
	dirs := f.dirOutputs()
	changed, added, removed := dirs[0], dirs[1], dirs[2]
	cf := f.firstFile(changed)
	flipByte(t, cf)
	writable(t, f.real(added), func() {
		os.WriteFile(filepath.Join(f.real(added), "intruder"), []byte("x"), 0o444)
	})
	rf := f.firstFile(removed)
	writable(t, filepath.Dir(rf), func() { os.Remove(rf) })

	res := f.verify(Options{CheckContents: true})
	k := byKind(res)
	want := []string{changed, added, removed}
	sort.Strings(want)
	if got := paths(k[finding.KindModified]); strings.Join(got, " ") != strings.Join(want, " ") {
		t.Fatalf("modified: %v, want %v", got, want)
	}
	for _, m := range k[finding.KindModified] {
		if !strings.Contains(m.Message, "was modified! expected hash 'sha256:") || !strings.Contains(m.Message, "', got 'sha256:") {
			t.Errorf("message not in Nix's words: %s", m.Message)
		}
	}
	check := func(kind finding.Kind, p, file string) {
		t.Helper()
		for _, x := range k[kind] {
			if x.Path == p && x.File == file {
				return
			}
		}
		t.Errorf("no %s finding for %s %s; have %+v", kind, p, file, k[kind])
	}
	check(finding.KindFileChanged, changed, strings.TrimPrefix(cf, f.real(changed)+"/"))
	check(finding.KindFileAdded, added, "intruder")
	check(finding.KindFileRemoved, removed, strings.TrimPrefix(rf, f.real(removed)+"/"))
	if n := len(k[finding.KindFileChanged]) + len(k[finding.KindFileAdded]) + len(k[finding.KindFileRemoved]); n != 3 {
		t.Errorf("%d file findings, want 3: %+v", n, res.Findings)
	}
	// A path that fails the first time it is ever seen has no manifest:
	// it is still reported, without file detail.
	g := newFixture(t, smallSpec())
	flipByte(t, g.firstFile(g.dirOutputs()[0]))
	k = byKind(g.verify(Options{CheckContents: true}))
	if len(k[finding.KindModified]) != 1 || len(k[finding.KindFileChanged]) != 0 {
		t.Errorf("first run: %+v", k)
	}
}

func TestDisappeared(t *testing.T) {
	f := newFixture(t, smallSpec())
	lone := f.pick(func(p string, fi os.FileInfo, n int) bool { return n == 0 && fi.IsDir() })[0]
	used := f.pick(func(p string, fi os.FileInfo, n int) bool { return n > 0 && !strings.HasSuffix(p, ".drv") })[0]
	for _, p := range []string{lone, used} {
		os.Chmod(f.real(p), 0o755)
		if err := os.RemoveAll(f.real(p)); err != nil {
			t.Fatal(err)
		}
	}
	res := f.verify(Options{})
	k := byKind(res)
	if got := paths(k[finding.KindDisappeared]); len(got) != 1 || got[0] != lone {
		t.Errorf("disappeared: %v, want %s", got, lone)
	}
	if got := paths(k[finding.KindDisappearedReferenced]); len(got) != 1 || got[0] != used {
		t.Errorf("disappeared-referenced: %v, want %s", got, used)
	}
	for _, x := range k[finding.KindDisappearedReferenced] {
		if x.Message != "path '"+used+"' disappeared, but it still has valid referrers!" {
			t.Errorf("message: %s", x.Message)
		}
	}
	// --repair drops the unreferenced one only.
	res = f.verifyRepair(Options{})
	if !res.Problems() {
		t.Error("the referenced path's problem is gone")
	}
	s := f.open(true)
	valid, err := s.DB.ValidAmong(context.Background(), []string{lone, used})
	s.Close()
	if err != nil {
		t.Fatal(err)
	}
	if valid[lone] || !valid[used] {
		t.Errorf("after repair: %v", valid)
	}
	k = byKind(f.verify(Options{}))
	if len(k[finding.KindDisappeared]) != 0 || len(k[finding.KindDisappearedReferenced]) != 1 {
		t.Errorf("after repair: %+v", k)
	}
}

// A missing path referenced only by another missing path goes with it.
func TestDisappearedChain(t *testing.T) {
	f := newFixture(t, smallSpec())
	refc := f.referrers()
	var top, dep string
	for _, p := range f.b.Valid {
		if refc[p] != 0 || strings.HasSuffix(p, ".drv") {
			continue
		}
		for _, r := range f.b.Refs[p] {
			if r != p && refc[r] == 1 && !strings.HasSuffix(r, ".drv") {
				top, dep = p, r
			}
		}
	}
	if top == "" {
		t.Skip("no chain in this store")
	}
	for _, p := range []string{top, dep} {
		os.Chmod(f.real(p), 0o755)
		os.RemoveAll(f.real(p))
	}
	k := byKind(f.verify(Options{}))
	if got := paths(k[finding.KindDisappeared]); len(got) != 2 {
		t.Fatalf("disappeared: %v, want %s and %s (%+v)", got, top, dep, k)
	}
	res := f.verifyRepair(Options{})
	if res.Problems() {
		t.Fatalf("after repair: %+v", res.Findings)
	}
	if res := f.verify(Options{CheckContents: true}); res.Problems() {
		t.Fatalf("after repair: %+v", res.Findings)
	}
}

func execDB(t *testing.T, f *fixture, q string, args ...any) {
	t.Helper()
	db, err := sql.Open("sqlite", "file:"+f.b.Layout.DBPath())
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if _, err := db.Exec(q, args...); err != nil {
		t.Fatalf("%s: %v", q, err)
	}
}

func TestDBFindingsAndRepair(t *testing.T) {
	f := newFixture(t, smallSpec())
	out := f.dirOutputs()
	noHash, noSize, badSize := out[0], out[1], out[2]
	execDB(t, f, "update ValidPaths set hash = 'sha256:"+strings.Repeat("0", 64)+"' where path = ?", noHash)
	execDB(t, f, "update ValidPaths set narSize = 0 where path = ?", noSize)
	execDB(t, f, "update ValidPaths set narSize = narSize + 8 where path = ?", badSize)
	execDB(t, f, "insert into Refs (referrer, reference) values ((select id from ValidPaths where path = ?), 999999)", out[3])
	execDB(t, f, "insert into DerivationOutputs (drv, id, path) values (888888, 'out', ?)", out[4])
	execDB(t, f, "insert into DerivationOutputs (drv, id, path) values ((select id from ValidPaths where path = ?), 'out', ?)", out[5], out[4])

	res := f.verify(Options{CheckContents: true})
	k := byKind(res)
	for kind, want := range map[finding.Kind]string{finding.KindMissingHash: noHash, finding.KindMissingNarSize: noSize, finding.KindNarSize: badSize, finding.KindOutputsOfNonDrv: out[5]} {
		if got := paths(k[kind]); len(got) != 1 || got[0] != want {
			t.Errorf("%s: %v, want %s", kind, got, want)
		}
	}
	if len(k[finding.KindDanglingRefs]) != 1 || len(k[finding.KindDanglingDrvOutputs]) != 1 {
		t.Errorf("dangling rows: %+v", k)
	}
	if len(k[finding.KindModified]) != 0 {
		t.Errorf("modified: %+v", k[finding.KindModified])
	}
	res = f.verifyRepair(Options{CheckContents: true})
	for _, x := range res.Findings {
		if !x.Repaired && x.Kind != finding.KindOutputsOfNonDrv {
			t.Errorf("not repaired: %+v", x)
		}
	}
	k = byKind(f.verify(Options{CheckContents: true}))
	delete(k, finding.KindOutputsOfNonDrv)
	if len(k) != 0 {
		t.Errorf("after repair: %+v", k)
	}
}

func TestLinks(t *testing.T) {
	f := newFixture(t, smallSpec())
	links := f.b.Layout.LinksDir()
	os.MkdirAll(links, 0o755)
	// A good entry: a store file hard-linked under its NAR hash.
	good := f.firstFile(f.dirOutputs()[0])
	h, _, err := nar.HashPath(good)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Link(good, filepath.Join(links, h.Base32())); err != nil {
		t.Fatal(err)
	}
	// A damaged one: contents that do not match the name.
	other := f.firstFile(f.dirOutputs()[1])
	h2, _, _ := nar.HashPath(other)
	bad := filepath.Join(links, h2.Base32())
	os.WriteFile(bad, []byte("not the contents"), 0o444)
	os.Chtimes(bad, time.Unix(1, 0), time.Unix(1, 0))

	res := f.verify(Options{CheckContents: true})
	k := byKind(res)
	if len(k[finding.KindLinkModified]) != 1 || k[finding.KindLinkModified][0].Expected != h2.Base32() {
		t.Fatalf("links: %+v", res.Findings)
	}
	if m := k[finding.KindLinkModified][0].Message; !strings.HasPrefix(m, "link '/nix/store/.links/"+h2.Base32()+"' was modified! expected hash '") {
		t.Errorf("message: %s", m)
	}
	if len(res.Findings) != 1 {
		t.Errorf("extra findings: %+v", res.Findings)
	}
	res = f.verifyRepair(Options{CheckContents: true})
	if res.Problems() {
		t.Fatalf("after repair: %+v", res.Findings)
	}
	if _, err := os.Lstat(bad); !os.IsNotExist(err) {
		t.Error("damaged link not removed")
	}
	if _, err := os.Lstat(filepath.Join(links, h.Base32())); err != nil {
		t.Error("good link removed")
	}
}

func TestNameClash(t *testing.T) {
	f := newFixture(t, smallSpec())
	v := f.b.Valid[0]
	base := filepath.Base(v)
	clash := f.b.Layout.RealStoreDir + "/" + base[:33] + "impostor"
	os.WriteFile(clash, []byte("x"), 0o444)
	os.WriteFile(f.real(v)+".lock", nil, 0o600) // Nix's own lock file: no claim
	k := byKind(f.verify(Options{}))
	if len(k) != 1 || len(k[finding.KindNameClash]) != 1 || k[finding.KindNameClash][0].Path != v {
		t.Fatalf("%+v", k)
	}
}

func TestIOErrorDoesNotStopTheAudit(t *testing.T) {
	f := newFixture(t, smallSpec())
	dirs := f.dirOutputs()
	victim := f.firstFile(dirs[0])
	writable(t, filepath.Dir(victim), func() {
		os.Remove(victim)
		if err := syscallMkfifo(victim); err != nil {
			t.Fatal(err)
		}
	})
	flipByte(t, f.firstFile(dirs[1]))
	res := f.verify(Options{CheckContents: true})
	k := byKind(res)
	if got := paths(k[finding.KindIOError]); len(got) != 1 || got[0] != dirs[0] {
		t.Errorf("io errors: %+v", k[finding.KindIOError])
	}
	if got := paths(k[finding.KindModified]); len(got) != 1 || got[0] != dirs[1] {
		t.Errorf("modified: %+v", k[finding.KindModified])
	}
	if res.Summary.ContentsChecked != len(f.b.Valid)-1 {
		t.Errorf("checked %d of %d", res.Summary.ContentsChecked, len(f.b.Valid))
	}
}

func TestMetadata(t *testing.T) {
	f := newFixture(t, smallSpec())
	dirs := f.dirOutputs()
	mk := func(i int) string { return f.firstFile(dirs[i]) }
	w, su, bm, mt, ow, fl := mk(0), mk(1), mk(2), mk(3), mk(4), mk(5)
	os.Chmod(w, 0o644)
	unix.Chmod(su, 0o4555)
	os.Chmod(bm, 0o400)
	os.Chtimes(mt, time.Unix(5, 0), time.Unix(5, 0))
	os.Lchown(ow, 1234, 1234)
	outside := filepath.Join(f.b.Root, "outside-link")
	if err := os.Link(fl, outside); err != nil {
		t.Fatal(err)
	}
	res := f.verify(Options{Metadata: true})
	k := byKind(res)
	rel := func(i int, file string) string { return strings.TrimPrefix(file, f.real(dirs[i])+"/") }
	for _, c := range []struct {
		kind finding.Kind
		i    int
		file string
	}{{finding.KindWritable, 0, w}, {finding.KindSetuid, 1, su}, {finding.KindBadMode, 2, bm}, {finding.KindBadMtime, 3, mt}, {finding.KindBadOwner, 4, ow}, {finding.KindForeignLink, 5, fl}} {
		if len(k[c.kind]) != 1 || k[c.kind][0].Path != dirs[c.i] || k[c.kind][0].File != rel(c.i, c.file) {
			t.Errorf("%s: %+v", c.kind, k[c.kind])
		}
	}
	if len(res.Findings) != 6 {
		t.Errorf("%d findings, want 6: %+v", len(res.Findings), res.Findings)
	}
	// A second name inside the store (another valid path's file or
	// .links) is not foreign.
	os.Remove(outside)
	os.MkdirAll(f.b.Layout.LinksDir(), 0o755)
	os.Link(fl, filepath.Join(f.b.Layout.LinksDir(), "x"))
	if k := byKind(f.verify(Options{Metadata: true})); len(k[finding.KindForeignLink]) != 0 {
		t.Errorf("foreign link: %+v", k[finding.KindForeignLink])
	}
}

func TestSigs(t *testing.T) {
	f := newFixture(t, smallSpec())
	pub, priv, _ := ed25519.GenerateKey(nil)
	key := "test-1:" + base64.StdEncoding.EncodeToString(pub)
	s := f.open(true)
	g, err := s.LoadGraph(context.Background(), db.GraphOptions{Hashes: true})
	s.Close()
	if err != nil {
		t.Fatal(err)
	}
	signed, badSig := f.b.Valid[0], f.b.Valid[1]
	for _, p := range []string{signed, badSig} {
		id, _ := g.Lookup(p)
		var refs []string
		for _, r := range g.References(id) {
			refs = append(refs, g.Path(r))
		}
		sort.Strings(refs)
		fp := signature.Fingerprint(p, g.NarHash[id], g.NarSize[id], refs)
		if p == badSig {
			fp += "x"
		}
		sig := "test-1:" + base64.StdEncoding.EncodeToString(ed25519.Sign(priv, []byte(fp)))
		execDB(t, f, "update ValidPaths set sigs = ? where path = ?", "other:AAAA "+sig, p)
	}
	res := f.verify(Options{SigsNeeded: 1, TrustedKeys: []string{key}})
	k := byKind(res)
	if len(k[finding.KindUntrusted]) != len(f.b.Valid)-1 {
		t.Fatalf("%d untrusted, want %d", len(k[finding.KindUntrusted]), len(f.b.Valid)-1)
	}
	for _, x := range k[finding.KindUntrusted] {
		if x.Path == signed {
			t.Errorf("signed path reported untrusted")
		}
	}
	if _, err := f.tryVerify(Options{SigsNeeded: 1, TrustedKeys: []string{"bad"}}); err == nil {
		t.Error("a bad key was accepted")
	}
}

func TestFingerprintFormat(t *testing.T) {
	h, _ := nar.ParseHash("sha256:1b8m03r63zqhnjf7l5wnldhh7c134ap5vpj0850ymkq1iyzicy5s")
	got := signature.Fingerprint("/nix/store/aaa-x", h, 42, []string{"/nix/store/aaa-x", "/nix/store/bbb-y"})
	want := "1;/nix/store/aaa-x;sha256:1b8m03r63zqhnjf7l5wnldhh7c134ap5vpj0850ymkq1iyzicy5s;42;/nix/store/aaa-x,/nix/store/bbb-y"
	if got != want {
		t.Errorf("got %s", got)
	}
}

func TestPathArguments(t *testing.T) {
	f := newFixture(t, smallSpec())
	dirs := f.dirOutputs()
	flipByte(t, f.firstFile(dirs[0]))
	flipByte(t, f.firstFile(dirs[1]))
	res := f.verify(Options{CheckContents: true, Paths: []string{dirs[1]}})
	if got := paths(byKind(res)[finding.KindModified]); len(got) != 1 || got[0] != dirs[1] || res.Summary.ContentsChecked != 1 {
		t.Errorf("%v, checked %d", got, res.Summary.ContentsChecked)
	}
	if _, err := f.tryVerify(Options{Paths: []string{"/nix/store/" + strings.Repeat("a", 32) + "-nope"}}); err == nil {
		t.Error("an invalid path was accepted")
	}
	if _, err := f.tryVerify(Options{Paths: []string{"/etc/passwd"}}); err == nil {
		t.Error("a path outside the store was accepted")
	}
}

// TestLowOpenFileLimit: under a small RLIMIT_NOFILE fewer workers batch
// (batched hashing holds descriptors open) and the audit still finds
// nothing wrong on a clean store.
func TestLowOpenFileLimit(t *testing.T) {
	var old unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &old); err != nil {
		t.Fatal(err)
	}
	low := old
	low.Cur = min(old.Cur, 700)
	if err := unix.Setrlimit(unix.RLIMIT_NOFILE, &low); err != nil {
		t.Skip(err)
	}
	defer unix.Setrlimit(unix.RLIMIT_NOFILE, &old)
	TestCleanStore(t)
	f := newFixture(t, smallSpec())
	if res := f.verify(Options{CheckContents: true, Jobs: 64}); len(res.Findings) != 0 {
		t.Errorf("64 workers under a 700-file limit: %+v", res.Findings)
	}
}

// TestWithoutIOURing runs the finding tests again with the plain walker
// (verify batches file reads through io_uring where the kernel has it).
func TestWithoutIOURing(t *testing.T) {
	t.Setenv("STOREKEEPER_NO_IO_URING", "1")
	for name, f := range map[string]func(*testing.T){
		"CleanStore": TestCleanStore, "FileLevelDiff": TestFileLevelDiff, "Disappeared": TestDisappeared,
		"IOError": TestIOErrorDoesNotStopTheAudit, "Metadata": TestMetadata, "Links": TestLinks,
	} {
		t.Run(name, f)
	}
}
