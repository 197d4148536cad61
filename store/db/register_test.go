package db_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"database/sql"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"storekeeper/nix/derivation"
	"storekeeper/nix/nar"
	"storekeeper/nix/storepath"
	"storekeeper/nix/validity"
	"storekeeper/store/db"
	"storekeeper/store/storetest"
)

// regPath is a made-up store path of dir named name (its hash part
// derived from name).
func regPath(dir, name string) string {
	h := sha256.Sum256([]byte(name))
	return dir + "/" + storepath.EncodeBase32(h[:20]) + "-" + name
}

func regHash(s string) nar.Hash { return sha256.Sum256([]byte(s)) }

// nixDefaults are the options a store is opened with under Nix's default
// settings (use-sqlite-wal, fsync-metadata).
var nixDefaults = db.Options{UseWAL: true, FsyncMetadata: true}

// emptyDB is a writable database of storetest's schema (Nix's, or
// Guix's) with no rows, opened with db.Open and Nix's defaults.
func emptyDB(t testing.TB, guix bool) *db.DB {
	t.Helper()
	b := storetest.MustBuild(t, storetest.Spec{Paths: 1, Seed: 1, DBOnly: true, Guix: guix})
	d, err := db.Open(context.Background(), b.Layout.DBDir(), nixDefaults)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	for _, q := range []string{"delete from Refs", "delete from DerivationOutputs", "delete from ValidPaths", "delete from sqlite_sequence"} {
		if _, err := d.SQL.Exec(q); err != nil {
			t.Fatal(err)
		}
	}
	return d
}

// fixtureDB is a writable storetest database with n derivations' paths
// valid (references outside a batch point at them), opened with Nix's
// defaults (WAL).
func fixtureDB(t testing.TB, n int, guix bool) (*db.DB, *storetest.Built) {
	t.Helper()
	return fixtureDBWith(t, n, guix, nixDefaults)
}

// fixtureDBWith is fixtureDB opened with o.
func fixtureDBWith(t testing.TB, n int, guix bool, o db.Options) (*db.DB, *storetest.Built) {
	t.Helper()
	b := storetest.MustBuild(t, storetest.Spec{Paths: n, Seed: 3, MaxDeps: 3, DBOnly: true, Guix: guix, Multi: 0.3})
	d, err := db.Open(context.Background(), b.Layout.DBDir(), o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	return d, b
}

// dumpDB is every row of ValidPaths (the columns this schema has,
// NULL written as NULL), Refs and DerivationOutputs (by path), one line
// each, sorted. ids: with ValidPaths ids and sqlite_sequence (what
// "nothing was written" compares); times: with registrationTime.
func dumpDB(t testing.TB, q *sql.DB, ids, times bool) []string {
	t.Helper()
	cols := []string{"path", "hash", "deriver", "narSize"}
	if ids {
		cols = append(cols, "id")
	}
	if times {
		cols = append(cols, "registrationTime")
	}
	for _, c := range []string{"ultimate", "sigs", "ca"} {
		var n int
		if err := q.QueryRow("select count(*) from pragma_table_info('ValidPaths') where name = ?", c).Scan(&n); err != nil {
			t.Fatal(err)
		}
		if n == 1 {
			cols = append(cols, c)
		}
	}
	var out []string
	read := func(query string, n int, prefix string) {
		rows, err := q.Query(query)
		if err != nil {
			t.Fatal(err)
		}
		defer rows.Close()
		for rows.Next() {
			v := make([]sql.NullString, n)
			ptr := make([]any, n)
			for i := range v {
				ptr[i] = &v[i]
			}
			if err := rows.Scan(ptr...); err != nil {
				t.Fatal(err)
			}
			s := make([]string, n)
			for i, x := range v {
				s[i] = "NULL"
				if x.Valid {
					s[i] = strconv.Quote(x.String)
				}
			}
			out = append(out, prefix+strings.Join(s, "|"))
		}
		if err := rows.Err(); err != nil {
			t.Fatal(err)
		}
	}
	read("select "+strings.Join(cols, ", ")+" from ValidPaths", len(cols), "path ")
	read("select a.path, b.path from Refs r join ValidPaths a on a.id = r.referrer join ValidPaths b on b.id = r.reference", 2, "ref ")
	read("select v.path, d.id, d.path from DerivationOutputs d join ValidPaths v on v.id = d.drv", 3, "out ")
	if ids {
		read("select referrer, reference from Refs", 2, "refid ")
		read("select drv, id from DerivationOutputs", 2, "outid ")
		read("select name, seq from sqlite_sequence", 2, "seq ")
	}
	sort.Strings(out)
	return out
}

// sameDump reports the lines that differ between two dumps.
func sameDump(t testing.TB, what string, want, got []string) {
	t.Helper()
	w := map[string]bool{}
	for _, l := range want {
		w[l] = true
	}
	g := map[string]bool{}
	for _, l := range got {
		g[l] = true
		if !w[l] {
			t.Errorf("%s: unexpected row %s", what, l)
		}
	}
	for _, l := range want {
		if !g[l] {
			t.Errorf("%s: missing row %s", what, l)
		}
	}
}

func count(t testing.TB, q *sql.DB, query string, args ...any) int {
	t.Helper()
	var n int
	if err := q.QueryRow(query, args...).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// TestRegisterRows: the rows of a batch are exactly Nix 2.8's: hash as
// "sha256:" + lowercase hex, registrationTime given or now, NULL for no
// deriver, a size of 0, ultimate false, no sigs, no ca; sigs sorted and
// each once; a content-addressed path's ca; DerivationOutputs of a .drv;
// Refs to the batch's paths (given referrer first), to the path itself
// and to paths valid before; ids in the paths' order, as Nix gives them.
func TestRegisterRows(t *testing.T) {
	d, b := fixtureDB(t, 10, false)
	ctx := context.Background()
	old1, old2 := b.Valid[0], b.Valid[1]
	drv := regPath("/nix/store", "x.drv")
	out, dev := regPath("/nix/store", "x"), regPath("/nix/store", "x-dev")
	lib := regPath("/nix/store", "lib")
	textHash := sha256.Sum256([]byte("some text"))
	text := storepath.MakeTextPath("/nix/store", textHash, "t.txt", []string{old1})
	regs := []db.Registration{
		{Path: dev, NarHash: regHash("dev"), NarSize: 300, Deriver: drv, References: []string{out, dev, out}, RegistrationTime: 1600000003},
		{Path: out, NarHash: regHash("out"), NarSize: 1234, Deriver: drv, References: []string{out, lib, old1},
			RegistrationTime: 1600000002, Ultimate: true, Sigs: []string{"z:2", "a:1", "z:2"}},
		{Path: drv, NarHash: regHash("drv"), NarSize: 555, References: []string{old2}, RegistrationTime: 1600000001,
			Outputs: map[string]string{"out": out, "dev": dev}},
		{Path: lib, NarHash: regHash("lib")},
		{Path: text, NarHash: regHash("text"), NarSize: 7, References: []string{old1}, CA: "text:sha256:" + storepath.EncodeBase32(textHash[:])},
	}
	before := time.Now().Unix()
	if err := d.Register(ctx, regs, db.RegisterOptions{}); err != nil {
		t.Fatal(err)
	}
	after := time.Now().Unix()
	type row struct {
		id                int64
		hash              string
		time              int64
		deriver, sigs, ca sql.NullString
		size, ultimate    sql.NullInt64
	}
	get := func(p string) row {
		var r row
		if err := d.SQL.QueryRow("select id, hash, registrationTime, deriver, narSize, ultimate, sigs, ca from ValidPaths where path = ?", p).
			Scan(&r.id, &r.hash, &r.time, &r.deriver, &r.size, &r.ultimate, &r.sigs, &r.ca); err != nil {
			t.Fatalf("%s: %v", p, err)
		}
		return r
	}
	rl, ro, rd, rdrv, rt := get(lib), get(out), get(dev), get(drv), get(text)
	h := regHash("out")
	if ro.hash != "sha256:"+fmt.Sprintf("%x", h[:]) || ro.time != 1600000002 || ro.deriver.String != drv || ro.size.Int64 != 1234 ||
		ro.ultimate != (sql.NullInt64{Int64: 1, Valid: true}) || ro.sigs.String != "a:1 z:2" || ro.ca.Valid {
		t.Errorf("out's row: %+v", ro)
	}
	if rl.deriver.Valid || rl.size.Valid || rl.ultimate.Valid || rl.sigs.Valid || rl.ca.Valid || rl.time < before || rl.time > after {
		t.Errorf("lib's row (no deriver, size, ultimate, sigs, ca; registered now): %+v", rl)
	}
	if rt.ca.String != regs[4].CA || rt.size.Int64 != 7 {
		t.Errorf("the text path's row: %+v", rt)
	}
	if rdrv.deriver.Valid || rdrv.time != 1600000001 {
		t.Errorf("drv's row: %+v", rdrv)
	}
	// Nix's order: ids follow the paths' order.
	byPath := map[string]int64{lib: rl.id, out: ro.id, dev: rd.id, drv: rdrv.id, text: rt.id}
	sorted := []string{lib, out, dev, drv, text}
	sort.Strings(sorted)
	for k := 1; k < len(sorted); k++ {
		if byPath[sorted[k-1]] >= byPath[sorted[k]] {
			t.Errorf("ids %v are not in the order of the paths %v", byPath, sorted)
		}
	}
	var refs []string
	for _, l := range dumpDB(t, d.SQL, false, false) {
		if strings.HasPrefix(l, "ref ") || strings.HasPrefix(l, "out ") {
			for _, p := range []string{dev, out, drv, lib, text} {
				if strings.Contains(l, strconv.Quote(p)+"|") {
					refs = append(refs, l)
					break
				}
			}
		}
	}
	q := strconv.Quote
	want := []string{
		"out " + q(drv) + "|" + q("dev") + "|" + q(dev),
		"out " + q(drv) + "|" + q("out") + "|" + q(out),
		"ref " + q(dev) + "|" + q(dev),
		"ref " + q(dev) + "|" + q(out),
		"ref " + q(drv) + "|" + q(old2),
		"ref " + q(out) + "|" + q(lib),
		"ref " + q(out) + "|" + q(old1),
		"ref " + q(out) + "|" + q(out),
		"ref " + q(text) + "|" + q(old1),
	}
	sort.Strings(want)
	sameDump(t, "refs and outputs", want, refs)
}

// TestRegisterRefusals: an invalid reference, a cycle (of two and of
// three paths), a path already valid, a content address that does not
// give the path, and malformed input each refuse the whole batch with
// their error, naming the paths, and write nothing.
func TestRegisterRefusals(t *testing.T) {
	d, b := fixtureDB(t, 10, false)
	ctx := context.Background()
	s := "/nix/store"
	a, bb, c, missing := regPath(s, "a"), regPath(s, "b"), regPath(s, "c"), regPath(s, "missing")
	ok := db.Registration{Path: regPath(s, "fine"), NarHash: regHash("fine"), References: []string{b.Valid[0]}}
	cases := []struct {
		name  string
		regs  []db.Registration
		want  error
		names []string
	}{
		{"invalid reference", []db.Registration{ok, {Path: a, References: []string{b.Valid[1], missing}}}, db.ErrNotValidReference, []string{a, missing}},
		{"cycle of two", []db.Registration{ok, {Path: a, References: []string{bb}}, {Path: bb, References: []string{a, bb}}}, db.ErrCycle, []string{a, bb}},
		{"cycle of three", []db.Registration{{Path: a, References: []string{bb}}, ok, {Path: bb, References: []string{c}}, {Path: c, References: []string{a}}}, db.ErrCycle, []string{a, bb, c}},
		{"already valid", []db.Registration{ok, {Path: b.Valid[2], NarHash: regHash("x")}}, db.ErrAlreadyValid, []string{b.Valid[2]}},
		{"not content-addressed", []db.Registration{ok, {Path: a, CA: "text:sha256:" + storepath.EncodeBase32(make([]byte, 32))}}, db.ErrNotContentAddressed, []string{a}},
		{"twice", []db.Registration{ok, {Path: a}, {Path: a}}, db.ErrBadRegistration, []string{a}},
		{"not a store path", []db.Registration{ok, {Path: "/nix/store/short"}}, db.ErrBadRegistration, []string{"/nix/store/short"}},
		{"another store dir", []db.Registration{ok, {Path: regPath("/gnu/store", "a")}}, db.ErrBadRegistration, []string{"/gnu/store"}},
		{"reference not a store path", []db.Registration{ok, {Path: a, References: []string{"/etc/shadow"}}}, db.ErrBadRegistration, []string{"/etc/shadow"}},
		{"outputs of a non-drv", []db.Registration{ok, {Path: a, Outputs: map[string]string{"out": bb}}}, db.ErrBadRegistration, []string{a}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			before := dumpDB(t, d.SQL, true, true)
			err := d.Register(ctx, tc.regs, db.RegisterOptions{})
			if !errors.Is(err, tc.want) {
				t.Fatalf("got %v, want %v", err, tc.want)
			}
			for _, n := range tc.names {
				if !strings.Contains(err.Error(), n) {
					t.Errorf("%q does not name %s", err, n)
				}
			}
			if tc.want == db.ErrNotValidReference {
				var re *db.ReferenceError
				if !errors.As(err, &re) || re.Referrer != a || re.Reference != missing {
					t.Errorf("%#v is not a *ReferenceError from %s to %s", err, a, missing)
				}
			}
			sameDump(t, "after a refusal", before, dumpDB(t, d.SQL, true, true))
		})
	}
	// A database open read-only is refused before anything is read.
	ro, err := db.Open(ctx, filepath.Dir(d.Path), db.Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer ro.Close()
	if err := ro.Register(ctx, []db.Registration{ok}, db.RegisterOptions{}); !errors.Is(err, db.ErrDBAccess) {
		t.Errorf("read-only: %v", err)
	}
	// The same batch without the refusals' paths goes through.
	if err := d.Register(ctx, []db.Registration{ok}, db.RegisterOptions{}); err != nil {
		t.Fatal(err)
	}
}

// TestRegisterReregister: with Reregister a valid path's row gets the
// new narSize, hash, ultimate, sigs and ca (NULL when none), keeps its
// deriver, registrationTime, DerivationOutputs and id, keeps its old
// references and gains the new ones, as Nix's updatePathInfo; new paths
// of the same batch are inserted.
func TestRegisterReregister(t *testing.T) {
	d, _ := fixtureDB(t, 3, false)
	ctx := context.Background()
	s := "/nix/store"
	x, y, z, drv := regPath(s, "x"), regPath(s, "y"), regPath(s, "z"), regPath(s, "y.drv")
	first := []db.Registration{
		{Path: x, NarHash: regHash("x")},
		{Path: drv, NarHash: regHash("drv"), Outputs: map[string]string{"out": y}},
		{Path: y, NarHash: regHash("y1"), NarSize: 10, Deriver: drv, References: []string{x}, RegistrationTime: 1500000000,
			Ultimate: true, Sigs: []string{"k:1"}},
	}
	if err := d.Register(ctx, first, db.RegisterOptions{}); err != nil {
		t.Fatal(err)
	}
	var id0 int64
	d.SQL.QueryRow("select id from ValidPaths where path = ?", y).Scan(&id0)
	again := []db.Registration{
		{Path: z, NarHash: regHash("z"), NarSize: 5},
		{Path: y, NarHash: regHash("y2"), Deriver: x, References: []string{z}, RegistrationTime: 1700000000},
		{Path: drv, NarHash: regHash("drv"), Outputs: map[string]string{"out": z}},
	}
	if err := d.Register(ctx, again, db.RegisterOptions{}); !errors.Is(err, db.ErrAlreadyValid) || !strings.Contains(err.Error(), "and 1 more") {
		t.Fatalf("without Reregister: %v", err)
	}
	if err := d.Register(ctx, again, db.RegisterOptions{Reregister: true}); err != nil {
		t.Fatal(err)
	}
	var id int64
	var hash string
	var tm int64
	var deriver, sigs sql.NullString
	var size, ult sql.NullInt64
	if err := d.SQL.QueryRow("select id, hash, registrationTime, deriver, narSize, ultimate, sigs from ValidPaths where path = ?", y).
		Scan(&id, &hash, &tm, &deriver, &size, &ult, &sigs); err != nil {
		t.Fatal(err)
	}
	h := regHash("y2")
	if id != id0 || hash != fmt.Sprintf("sha256:%x", h[:]) || tm != 1500000000 || deriver.String != drv || size.Valid || ult.Valid || sigs.Valid {
		t.Errorf("re-registered row: id %d (was %d) hash %s time %d deriver %v size %v ultimate %v sigs %v", id, id0, hash, tm, deriver, size, ult, sigs)
	}
	refs := map[string]bool{}
	for _, l := range dumpDB(t, d.SQL, false, false) {
		refs[l] = true
	}
	q := strconv.Quote
	for _, want := range []string{"ref " + q(y) + "|" + q(x), "ref " + q(y) + "|" + q(z), "out " + q(drv) + "|" + q("out") + "|" + q(y)} {
		if !refs[want] {
			t.Errorf("missing %s", want)
		}
	}
	if refs["out "+q(drv)+"|"+q("out")+"|"+q(z)] {
		t.Error("a re-registered .drv's outputs were replaced (Nix leaves them)")
	}
	if count(t, d.SQL, "select count(*) from ValidPaths where path = ? and narSize = 5", z) != 1 {
		t.Error("the new path of the batch was not inserted")
	}
}

// TestRegisterGuix: on Guix's schema 7 (no ultimate, sigs, ca columns)
// the rows are written without them.
func TestRegisterGuix(t *testing.T) {
	d, b := fixtureDB(t, 5, true)
	if d.HasUltimate || d.HasSigs || d.HasCA {
		t.Fatal("not Guix's schema")
	}
	s := "/gnu/store"
	p, q := regPath(s, "p"), regPath(s, "q.drv")
	regs := []db.Registration{
		{Path: p, NarHash: regHash("p"), NarSize: 9, Deriver: q, References: []string{p, b.Valid[0]}, Ultimate: true, Sigs: []string{"k:1"}, CA: "text:sha256:xyz"},
		{Path: q, NarHash: regHash("q"), Outputs: map[string]string{"out": p}},
	}
	if err := d.Register(context.Background(), regs, db.RegisterOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := d.Register(context.Background(), regs[:1], db.RegisterOptions{Reregister: true}); err != nil {
		t.Fatal(err)
	}
	if n := count(t, d.SQL, "select count(*) from ValidPaths where path = ? and narSize = 9 and deriver = ?", p, q); n != 1 {
		t.Error("p's row")
	}
	if n := count(t, d.SQL, "select count(*) from Refs r join ValidPaths v on v.id = r.referrer where v.path = ?", p); n != 2 {
		t.Errorf("p has %d references, want 2", n)
	}
	if n := count(t, d.SQL, "select count(*) from DerivationOutputs where path = ?", p); n != 1 {
		t.Error("q's output row")
	}
}

// TestRegisterAtomic: an error in the middle of the batch's writes (a
// trigger refusing one of its paths, after others were inserted) leaves
// the database as it was; so does a cancelled context; a batch without
// the refused path then goes in. In WAL mode (Nix's default) and with a
// rollback journal (use-sqlite-wal false: Nix's truncate mode, which
// Register's connection keeps).
func TestRegisterAtomic(t *testing.T) {
	for _, mode := range []struct {
		name string
		o    db.Options
		want string
	}{{"wal", nixDefaults, "wal"}, {"rollback journal", db.Options{}, "truncate"}} {
		t.Run(mode.name, func(t *testing.T) {
			d, b := fixtureDBWith(t, 10, false, mode.o)
			var got string
			if err := d.SQL.QueryRow("pragma journal_mode").Scan(&got); err != nil || got != mode.want {
				t.Fatalf("journal mode %q %v, want %s", got, err, mode.want)
			}
			testRegisterAtomic(t, d, b)
			if err := d.SQL.QueryRow("pragma journal_mode").Scan(&got); err != nil || got != mode.want {
				t.Fatalf("journal mode after: %q %v, want %s", got, err, mode.want)
			}
		})
	}
}

func testRegisterAtomic(t *testing.T, d *db.DB, b *storetest.Built) {
	ctx := context.Background()
	var regs []db.Registration
	prev := b.Valid[0]
	for i := range 200 {
		p := regPath("/nix/store", fmt.Sprintf("p%d", i))
		regs = append(regs, db.Registration{Path: p, NarHash: regHash(p), References: []string{prev}})
		prev = p
	}
	bad := regs[150].Path
	if _, err := d.SQL.Exec(fmt.Sprintf("create trigger refuse before insert on Refs when new.referrer = (select id from ValidPaths where path = '%s') begin select raise(abort, 'refused by the test'); end", bad)); err != nil {
		t.Fatal(err)
	}
	before := dumpDB(t, d.SQL, true, true)
	err := d.Register(ctx, regs, db.RegisterOptions{})
	if err == nil || !strings.Contains(err.Error(), "refused by the test") || !strings.Contains(err.Error(), "nothing was registered") {
		t.Fatalf("got %v", err)
	}
	sameDump(t, "after an error mid-batch", before, dumpDB(t, d.SQL, true, true))

	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if err := d.Register(cctx, regs[:10], db.RegisterOptions{}); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled: %v", err)
	}
	sameDump(t, "after a cancelled register", before, dumpDB(t, d.SQL, true, true))
	if err := d.Register(ctx, regs[:150], db.RegisterOptions{}); err != nil {
		t.Fatal(err)
	}
	paths := make([]string, len(regs))
	for i, r := range regs {
		paths[i] = r.Path
	}
	valid, err := d.ValidAmong(ctx, paths)
	if err != nil {
		t.Fatal(err)
	}
	if len(valid) != 150 || !valid[regs[149].Path] {
		t.Errorf("%d paths registered, want the first 150", len(valid))
	}
}

// TestRegisterLockedOrCancelled: while another connection holds the
// write lock, Register waits; a cancelled context ends the wait at once,
// the busy timeout ends it with ErrDBLocked; a context cancelled while a
// big batch is being written rolls it back. Each time nothing is written;
// once the lock is free the batch goes in.
func TestRegisterLockedOrCancelled(t *testing.T) {
	d, b := fixtureDB(t, 5, false)
	regs := killBatch(1, 20000, b.Valid[0])
	holder, err := sql.Open("sqlite", "file:"+d.Path+"?_busy_timeout=1000")
	if err != nil {
		t.Fatal(err)
	}
	defer holder.Close()
	hc, err := holder.Conn(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := hc.ExecContext(context.Background(), "begin immediate"); err != nil {
		t.Fatal(err)
	}
	before := dumpDB(t, d.SQL, true, true)

	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	start := time.Now()
	err = d.Register(ctx, regs[:10], db.RegisterOptions{})
	cancel()
	if !errors.Is(err, context.DeadlineExceeded) || time.Since(start) > 5*time.Second {
		t.Fatalf("cancelled while waiting for the lock: %v after %v", err, time.Since(start))
	}
	so := nixDefaults
	so.BusyTimeout = 300 * time.Millisecond
	short, err := db.Open(context.Background(), filepath.Dir(d.Path), so)
	if err != nil {
		t.Fatal(err)
	}
	defer short.Close()
	if err := short.Register(context.Background(), regs[:10], db.RegisterOptions{}); !errors.Is(err, db.ErrDBLocked) {
		t.Fatalf("busy timeout: %v", err)
	}
	hc.ExecContext(context.Background(), "rollback")
	hc.Close()
	sameDump(t, "after waiting for the lock", before, dumpDB(t, d.SQL, true, true))

	cancelled := 0
	for _, delay := range []time.Duration{0, time.Millisecond, 5 * time.Millisecond, 20 * time.Millisecond, 50 * time.Millisecond, 100 * time.Millisecond, 200 * time.Millisecond, 400 * time.Millisecond} {
		ctx, cancel := context.WithCancel(context.Background())
		time.AfterFunc(delay, cancel)
		err := d.Register(ctx, regs, db.RegisterOptions{})
		cancel()
		if err == nil {
			break // the batch went in before the cancellation
		}
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("cancelled after %v: %v", delay, err)
		}
		cancelled++
		t.Logf("cancelled after %v: %v", delay, err)
		sameDump(t, fmt.Sprintf("cancelled after %v", delay), before, dumpDB(t, d.SQL, true, true))
	}
	if cancelled == 0 {
		t.Error("no Register was cancelled")
	}
	if err := d.Register(context.Background(), regs, db.RegisterOptions{Reregister: true}); err != nil {
		t.Fatal(err)
	}
	if n := count(t, d.SQL, "select count(*) from ValidPaths where path like ?", "%-kill1-%"); n != len(regs) {
		t.Errorf("%d of %d paths registered", n, len(regs))
	}
}

// TestRegisterCADerivationsSchema: a database with Nix's ca-derivations
// tables (Realisations, RealisationsRefs, with their foreign keys into
// ValidPaths) takes a batch; those tables are left alone.
func TestRegisterCADerivationsSchema(t *testing.T) {
	d, b := fixtureDB(t, 5, false)
	for _, q := range []string{
		`create table if not exists Realisations (id integer primary key autoincrement not null, drvPath text not null, outputName text not null, outputPath integer not null, signatures text, foreign key (outputPath) references ValidPaths(id) on delete cascade)`,
		`create index if not exists IndexRealisations on Realisations(drvPath, outputName)`,
		`create trigger if not exists DeleteSelfRefsViaRealisations before delete on ValidPaths begin delete from RealisationsRefs where realisationId in (select id from Realisations where outputPath = old.id); end`,
		`create table if not exists RealisationsRefs (referrer integer not null, realisationReference integer, foreign key (referrer) references Realisations(id) on delete cascade, foreign key (realisationReference) references Realisations(id) on delete restrict)`,
		`insert into Realisations (drvPath, outputName, outputPath) select path, 'out', id from ValidPaths`,
	} {
		if _, err := d.SQL.Exec(q); err != nil {
			t.Fatal(err)
		}
	}
	p := regPath("/nix/store", "p")
	if err := d.Register(context.Background(), []db.Registration{{Path: p, References: []string{b.Valid[0], p}}}, db.RegisterOptions{}); err != nil {
		t.Fatal(err)
	}
	if n := count(t, d.SQL, "select count(*) from Realisations"); n != len(b.Valid) {
		t.Errorf("%d Realisations rows, want %d", n, len(b.Valid))
	}
	if n := count(t, d.SQL, "select count(*) from Refs r join ValidPaths v on v.id = r.referrer where v.path = ?", p); n != 2 {
		t.Errorf("%d references", n)
	}
}

// killBatch is the batch the kill test's child registers in trial n: a
// chain of paths, each referring to the one before and to a path valid
// before.
func killBatch(n, size int, old string) []db.Registration {
	regs := make([]db.Registration, size)
	prev := old
	for i := range regs {
		p := regPath("/nix/store", fmt.Sprintf("kill%d-%d", n, i))
		regs[i] = db.Registration{Path: p, NarHash: regHash(p), NarSize: uint64(i + 1), References: []string{prev, old}}
		prev = p
	}
	return regs
}

// TestRegisterKillChild is the child of TestRegisterKilled: it registers
// one batch into the database named by the environment and exits.
func TestRegisterKillChild(t *testing.T) {
	dir := os.Getenv("SK_REGISTER_KILL_DB")
	if dir == "" {
		t.Skip("the child of TestRegisterKilled")
	}
	n, _ := strconv.Atoi(os.Getenv("SK_REGISTER_KILL_TRIAL"))
	d, err := db.Open(context.Background(), dir, db.Options{UseWAL: true})
	if err != nil {
		t.Fatal(err)
	}
	fmt.Println("opened")
	if err := d.Register(context.Background(), killBatch(n, 20000, os.Getenv("SK_REGISTER_KILL_OLD")), db.RegisterOptions{}); err != nil {
		t.Fatal(err)
	}
	d.Close()
}

// TestRegisterKilled: a process killed (SIGKILL) at any moment of its
// Register leaves the batch all valid, with all its references, or not
// valid at all; the database passes SQLite's integrity check.
func TestRegisterKilled(t *testing.T) {
	if testing.Short() {
		t.Skip("-short")
	}
	d, b := fixtureDB(t, 5, false)
	dir := filepath.Dir(d.Path)
	old := b.Valid[0]
	d.Close()
	rng := rand.New(rand.NewPCG(24, 24))
	// run runs the child of trial, kills it kill after it opened the
	// database (never when kill < 0) and returns how long it ran after
	// opening.
	run := func(trial int, kill time.Duration) time.Duration {
		cmd := exec.Command(os.Args[0], "-test.run=^TestRegisterKillChild$", "-test.count=1")
		cmd.Env = append(os.Environ(), "SK_REGISTER_KILL_DB="+dir, "SK_REGISTER_KILL_TRIAL="+strconv.Itoa(trial), "SK_REGISTER_KILL_OLD="+old)
		var out bytes.Buffer
		stdout, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		cmd.Stderr = &out
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 7)
		if _, err := stdout.Read(buf); err != nil || string(buf) != "opened\n" {
			cmd.Process.Kill()
			cmd.Wait()
			t.Fatalf("child: %q %v %s", buf, err, out.String())
		}
		opened := time.Now()
		if kill >= 0 {
			time.Sleep(kill)
			cmd.Process.Signal(syscall.SIGKILL)
		}
		go func() {
			var b [512]byte
			for {
				if _, err := stdout.Read(b[:]); err != nil {
					return
				}
			}
		}()
		err = cmd.Wait()
		if kill < 0 && err != nil {
			t.Fatalf("child: %v\n%s", err, out.String())
		}
		return time.Since(opened)
	}
	full := run(0, -1)
	t.Logf("an unkilled child registered 20000 paths in %v (after opening the database)", full)
	check := func(trial int) bool {
		c, err := db.Open(context.Background(), dir, db.Options{UseWAL: true})
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		var ic string
		if err := c.SQL.QueryRow("pragma integrity_check").Scan(&ic); err != nil || ic != "ok" {
			t.Fatalf("integrity check: %s %v", ic, err)
		}
		regs := killBatch(trial, 20000, old)
		paths := make([]string, len(regs))
		for i, r := range regs {
			paths[i] = r.Path
		}
		valid, err := c.ValidAmong(context.Background(), paths)
		if err != nil {
			t.Fatal(err)
		}
		refs := count(t, c.SQL, "select count(*) from Refs r join ValidPaths v on v.id = r.referrer where v.path like ?", "%-kill"+strconv.Itoa(trial)+"-%")
		switch {
		case len(valid) == 0 && refs == 0:
			return false
		case len(valid) == len(paths) && refs == 2*len(paths)-1:
			return true
		}
		t.Fatalf("trial %d: %d of %d paths valid, %d references", trial, len(valid), len(paths), refs)
		return false
	}
	if !check(0) {
		t.Fatal("the unkilled child registered nothing")
	}
	committed := 0
	const trials = 12
	for trial := 1; trial <= trials; trial++ {
		kill := time.Duration(rng.Int64N(int64(full) * 6 / 5))
		run(trial, kill)
		if check(trial) {
			committed++
		}
	}
	t.Logf("%d of %d killed children had committed", committed, trials)
}

// requireRealNix skips the test (fails it under
// STOREKEEPER_REQUIRE_NIX=1) without nix-store or root.
func requireRealNix(t *testing.T) {
	t.Helper()
	if _, err := exec.LookPath("nix-store"); err != nil || os.Geteuid() != 0 {
		msg := "\n*** SKIPPING REAL-NIX TEST: needs nix-store (nix-bin) and root ***\n"
		if os.Getenv("STOREKEEPER_REQUIRE_NIX") == "1" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
}

// runNix runs a real Nix command on the store under root
// (--store local?root=ROOT: the logical store dir stays /nix/store), with
// a private HOME and configuration under tmp, and returns its stdout.
func runNix(t *testing.T, tmp, root string, stdin []byte, args ...string) string {
	t.Helper()
	cmd := exec.Command(args[0], append([]string{"--store", "local?root=" + root}, args[1:]...)...)
	cmd.Env = append(os.Environ(), "HOME="+filepath.Join(tmp, "home"), "NIX_CONF_DIR="+filepath.Join(tmp, "etc"), "NIX_PATH=")
	cmd.Stdin = bytes.NewReader(stdin)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, errb.String())
	}
	return out.String()
}

// TestRegisterMatchesNixBig: the outputs of a 2000-derivation store
// (about 2200 paths with random references among them), registered by
// real Nix and by Register into empty databases, give the same rows, ids
// included (ValidPaths, Refs by id, sqlite_sequence).
func TestRegisterMatchesNixBig(t *testing.T) {
	requireRealNix(t)
	if testing.Short() {
		t.Skip("-short")
	}
	src, _ := fixtureDB(t, 2000, false)
	var infos []validity.Info
	var regs []db.Registration
	for _, r := range readRegistrations(t, src) {
		if strings.HasSuffix(r.Path, ".drv") {
			continue // real Nix would read the .drv files, which this store lacks
		}
		var refs []string
		for _, p := range r.References {
			if !strings.HasSuffix(p, ".drv") {
				refs = append(refs, p)
			}
		}
		sort.Strings(refs)
		infos = append(infos, validity.Info{Path: r.Path, HashGiven: true, NarHash: r.NarHash, NarSize: r.NarSize, Deriver: r.Deriver, References: refs})
		regs = append(regs, db.Registration{Path: r.Path, NarHash: r.NarHash, NarSize: r.NarSize, Deriver: r.Deriver, References: refs})
	}
	var text bytes.Buffer
	if err := validity.Write(&text, infos, true); err != nil {
		t.Fatal(err)
	}
	tmp := t.TempDir()
	nixRoot, ourRoot := filepath.Join(tmp, "nix"), filepath.Join(tmp, "ours")
	runNix(t, tmp, ourRoot, nil, "nix-store", "--load-db")
	runNix(t, tmp, nixRoot, text.Bytes(), "nix-store", "--load-db")
	ours, err := db.Open(context.Background(), filepath.Join(ourRoot, "nix/var/nix/db"), nixDefaults)
	if err != nil {
		t.Fatal(err)
	}
	defer ours.Close()
	if err := ours.Register(context.Background(), regs, db.RegisterOptions{}); err != nil {
		t.Fatal(err)
	}
	nixDB, err := sql.Open("sqlite", "file:"+filepath.Join(nixRoot, "nix/var/nix/db/db.sqlite")+"?mode=ro")
	if err != nil {
		t.Fatal(err)
	}
	defer nixDB.Close()
	want, got := dumpDB(t, nixDB, true, false), dumpDB(t, ours.SQL, true, false)
	if len(want) < 2*len(regs) {
		t.Fatalf("real Nix wrote only %d rows for %d paths", len(want), len(regs))
	}
	sameDump(t, "ours vs Nix", want, got)
}

// TestRegisterMatchesNix: real Nix 2.8 and Register, given the same
// registration records (real .drv files written by nix-instantiate with
// their outputs, input derivations, a fixed output; outputs referring to
// each other, to themselves and to derivations; sizes of 0), write the
// same ValidPaths rows (every column; registrationTime "now" for both;
// into an empty database the same ids), Refs and DerivationOutputs; and re-registering a path with a new
// hash and an added reference changes both the same way (Nix's
// --load-db is --register-validity --hash-given --reregister without
// canonicalisation, which a private store root needs). The same batch
// goes into a database with Nix's ca-derivations tables.
func TestRegisterMatchesNix(t *testing.T) {
	requireRealNix(t)
	tmp := t.TempDir()
	nix := func(root string, stdin []byte, args ...string) string {
		t.Helper()
		return runNix(t, tmp, root, stdin, args...)
	}
	expr := filepath.Join(tmp, "e.nix")
	os.WriteFile(expr, []byte(`
let
  a = derivation { name = "a"; system = "x86_64-linux"; builder = "/bin/sh"; args = ["-c" "echo a > $out"]; };
  b = derivation { name = "b"; system = "x86_64-linux"; builder = "/bin/sh"; outputs = ["out" "dev"]; args = ["-c" "echo ${a} > $out; echo > $dev"]; };
  f = derivation { name = "f"; system = "x86_64-linux"; builder = "/bin/sh"; outputHashMode = "recursive"; outputHashAlgo = "sha256";
        outputHash = "0000000000000000000000000000000000000000000000000000000000000000"; args = ["-c" "echo ${b.dev}"]; };
in [ a b f ]
`), 0o644)
	r1 := filepath.Join(tmp, "r1")
	drvs := strings.Fields(nix(r1, nil, "nix-instantiate", expr))
	if len(drvs) != 3 {
		t.Fatalf("nix-instantiate: %q", drvs)
	}
	dump := nix(r1, nil, "nix-store", "--dump-db")
	outputs := map[string]map[string]string{}
	for _, p := range drvs {
		data, err := os.ReadFile(filepath.Join(r1, p))
		if err != nil {
			t.Fatal(err)
		}
		drv, err := derivation.Parse(data, "/nix/store")
		if err != nil {
			t.Fatal(err)
		}
		outputs[p] = drv.OutputPaths()
	}
	aOut, bOut, bDev, fOut := outputs[drvs[0]]["out"], outputs[drvs[1]]["out"], outputs[drvs[1]]["dev"], outputs[drvs[2]]["out"]
	src := regPath("/nix/store", "source")
	hex := func(s string) string { h := regHash(s); return fmt.Sprintf("%x", h[:]) }
	// Outputs first, referrers before their references: the order of the
	// input must not matter.
	records := fmt.Sprintf(`%s
%s
0
%s
3
%s
%s
%s
%s
%s
4000
%s
3
%s
%s
%s
%s
%s
120
%s
1
%s
%s
%s
0
%s
0
%s
%s
77

1
%s
%s
%s
1

0
`, fOut, hex("f"), drvs[2], fOut, bDev, drvs[0],
		bDev, hex("dev"), drvs[1], bOut, bDev, src,
		bOut, hex("out"), drvs[1], aOut,
		aOut, hex("a"), drvs[0],
		src, hex("src"), drvs[1],
		regPath("/nix/store", "plain"), hex("plain"))
	text := []byte(dump + records)
	infos, err := validity.ReadAll(bytes.NewReader(text), "/nix/store", true)
	if err != nil {
		t.Fatal(err)
	}
	regsOf := func(infos []validity.Info) []db.Registration {
		var regs []db.Registration
		for _, in := range infos {
			r := db.Registration{Path: in.Path, NarHash: in.NarHash, NarSize: in.NarSize, Deriver: in.Deriver, References: in.References}
			if o := outputs[in.Path]; o != nil {
				r.Outputs = o
			}
			regs = append(regs, r)
		}
		return regs
	}

	// Real Nix: the .drv files (it reads them) and a fresh database.
	r2 := filepath.Join(tmp, "r2")
	os.MkdirAll(filepath.Join(r2, "nix/store"), 0o755)
	for _, p := range drvs {
		data, _ := os.ReadFile(filepath.Join(r1, p))
		os.WriteFile(filepath.Join(r2, p), data, 0o444)
	}
	// Ours: a fresh database made by real Nix, and one with the
	// ca-derivations tables.
	r3, r4 := filepath.Join(tmp, "r3"), filepath.Join(tmp, "r4")
	nix(r3, nil, "nix-store", "--load-db")
	nix(r4, nil, "nix-store", "--extra-experimental-features", "ca-derivations", "--load-db")
	open := func(root string) *db.DB {
		d, err := db.Open(context.Background(), filepath.Join(root, "nix/var/nix/db"), nixDefaults)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { d.Close() })
		return d
	}
	d3, d4 := open(r3), open(r4)
	if count(t, d4.SQL, "select count(*) from sqlite_master where name = 'Realisations'") != 1 {
		t.Fatal("Nix made no Realisations table")
	}
	before := time.Now().Unix()
	nix(r2, text, "nix-store", "--load-db")
	for _, d := range []*db.DB{d3, d4} {
		if err := d.Register(context.Background(), regsOf(infos), db.RegisterOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	after := time.Now().Unix()
	nixDB, err := sql.Open("sqlite", "file:"+filepath.Join(r2, "nix/var/nix/db/db.sqlite")+"?mode=ro")
	if err != nil {
		t.Fatal(err)
	}
	defer nixDB.Close()
	want := dumpDB(t, nixDB, false, false)
	if len(want) < 8+6+3 {
		t.Fatalf("real Nix wrote only %d rows:\n%s", len(want), strings.Join(want, "\n"))
	}
	sameDump(t, "ours vs Nix", want, dumpDB(t, d3.SQL, false, false))
	sameDump(t, "ours (ca-derivations schema) vs Nix", want, dumpDB(t, d4.SQL, false, false))
	// Into an empty database, even the ids are Nix's.
	sameDump(t, "ids: ours vs Nix", dumpDB(t, nixDB, true, false), dumpDB(t, d3.SQL, true, false))
	for _, q := range []*sql.DB{nixDB, d3.SQL} {
		if n := count(t, q, "select count(*) from ValidPaths where registrationTime < ? or registrationTime > ?", before, after); n != 0 {
			t.Errorf("%d rows not registered now", n)
		}
	}

	// Re-registering: a new hash and size 0 for b's out, a new reference.
	again := []byte(fmt.Sprintf("%s\n%s\n0\n%s\n2\n%s\n%s\n", bOut, hex("out2"), aOut, src, aOut))
	infos2, err := validity.ReadAll(bytes.NewReader(again), "/nix/store", true)
	if err != nil {
		t.Fatal(err)
	}
	timeOf := func(q *sql.DB) int64 {
		var tm int64
		if err := q.QueryRow("select registrationTime from ValidPaths where path = ?", bOut).Scan(&tm); err != nil {
			t.Fatal(err)
		}
		return tm
	}
	nixTime, ourTime := timeOf(nixDB), timeOf(d3.SQL)
	nix(r2, again, "nix-store", "--load-db")
	if err := d3.Register(context.Background(), regsOf(infos2), db.RegisterOptions{Reregister: true}); err != nil {
		t.Fatal(err)
	}
	sameDump(t, "re-registered: ours vs Nix", dumpDB(t, nixDB, false, false), dumpDB(t, d3.SQL, false, false))
	if timeOf(nixDB) != nixTime || timeOf(d3.SQL) != ourTime {
		t.Errorf("registrationTime of the re-registered path: Nix %d -> %d, ours %d -> %d", nixTime, timeOf(nixDB), ourTime, timeOf(d3.SQL))
	}
}

// BenchmarkRegister63k registers the 63k paths (and their references and
// derivation outputs) of a 30k-derivation store into an empty database
// in one batch: the database part of `storekeeper register` of a
// mkstore --paths 30000 store.
func BenchmarkRegister63k(b *testing.B) {
	lay, err := storetest.Cached("storekeeper-bench-register-30000", storetest.Spec{Paths: 30000, Seed: 7, MaxDeps: 5, Multi: 0.1, DBOnly: true, Roots: 1, Generations: 1})
	if err != nil {
		b.Fatal(err)
	}
	src, err := db.Open(context.Background(), lay.DBDir(), db.Options{ReadOnly: true})
	if err != nil {
		b.Fatal(err)
	}
	regs := readRegistrations(b, src)
	src.Close()
	refs := 0
	for _, r := range regs {
		refs += len(r.References)
	}
	var cpu time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		d := emptyDB(b, false)
		b.StartTimer()
		c0 := cpuTime()
		if err := d.Register(context.Background(), regs, db.RegisterOptions{}); err != nil {
			b.Fatal(err)
		}
		cpu += cpuTime() - c0
	}
	// CPU time (user and system, all threads) per registration: on a
	// shared machine a steadier measure than the wall clock.
	b.ReportMetric(float64(cpu.Milliseconds())/float64(b.N), "cpu-ms/op")
	b.ReportMetric(float64(len(regs)), "paths")
	b.ReportMetric(float64(refs), "refs")
}

// cpuTime is the process's CPU time so far.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// readRegistrations reads every row of d as Registrations (references
// and derivation outputs included).
func readRegistrations(tb testing.TB, d *db.DB) []db.Registration {
	tb.Helper()
	rows, err := d.SQL.Query("select id, path, hash, registrationTime, coalesce(deriver, ''), coalesce(narSize, 0) from ValidPaths order by id desc")
	if err != nil {
		tb.Fatal(err)
	}
	byID := map[int64]int{}
	var regs []db.Registration
	for rows.Next() {
		var id int64
		var r db.Registration
		var hash string
		if err := rows.Scan(&id, &r.Path, &hash, &r.RegistrationTime, &r.Deriver, &r.NarSize); err != nil {
			tb.Fatal(err)
		}
		if r.NarHash, err = validity.ParseHash(strings.TrimPrefix(hash, "sha256:")); err != nil {
			tb.Fatal(err)
		}
		byID[id] = len(regs)
		regs = append(regs, r)
	}
	rows.Close()
	rows, err = d.SQL.Query("select referrer, v.path from Refs join ValidPaths v on v.id = reference")
	if err != nil {
		tb.Fatal(err)
	}
	for rows.Next() {
		var id int64
		var p string
		rows.Scan(&id, &p)
		regs[byID[id]].References = append(regs[byID[id]].References, p)
	}
	rows.Close()
	rows, err = d.SQL.Query("select drv, id, path from DerivationOutputs")
	if err != nil {
		tb.Fatal(err)
	}
	for rows.Next() {
		var id int64
		var name, p string
		rows.Scan(&id, &name, &p)
		r := &regs[byID[id]]
		if r.Outputs == nil {
			r.Outputs = map[string]string{}
		}
		r.Outputs[name] = p
	}
	rows.Close()
	return regs
}
