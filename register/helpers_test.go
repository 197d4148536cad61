package register

import (
	"context"
	"crypto/sha256"
	"database/sql"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"storekeeper/nix/storepath"
	"storekeeper/store"
	"storekeeper/store/db"
	"storekeeper/store/storetest"
)

// testStore builds a small store whose .drv files have Nix's output paths.
func testStore(t testing.TB, guix bool) (*storetest.Built, *store.Store) {
	t.Helper()
	spec := storetest.DefaultSpec()
	spec.NixOutputs = true
	spec.Guix = guix
	spec.Invalid = 0
	b := storetest.MustBuild(t, spec)
	return b, storetest.Open(t, b.Layout)
}

// rowDump is the database's rows for a set of paths, by path (not id),
// as sorted lines: what Register must give back.
func rowDump(t testing.TB, s *store.Store, paths []string) []string {
	t.Helper()
	in := map[string]bool{}
	for _, p := range paths {
		in[p] = true
	}
	ctx := context.Background()
	var out []string
	q := func(query string, scan func(rs *sql.Rows) (string, string, error)) {
		rs, err := s.DB.SQL.QueryContext(ctx, query)
		if err != nil {
			t.Fatal(err)
		}
		defer rs.Close()
		for rs.Next() {
			p, line, err := scan(rs)
			if err != nil {
				t.Fatal(err)
			}
			if in[p] {
				out = append(out, line)
			}
		}
		if err := rs.Err(); err != nil {
			t.Fatal(err)
		}
	}
	cols := "path, hash, registrationTime, deriver, narSize, null, null, null"
	if s.DB.HasUltimate && s.DB.HasSigs && s.DB.HasCA {
		cols = "path, hash, registrationTime, deriver, narSize, ultimate, sigs, ca"
	}
	q("select "+cols+" from ValidPaths", func(rs *sql.Rows) (string, string, error) {
		var p, h string
		var rt int64
		var deriver, sigs, ca sql.NullString
		var size, ult sql.NullInt64
		err := rs.Scan(&p, &h, &rt, &deriver, &size, &ult, &sigs, &ca)
		return p, fmt.Sprintf("V %s %s %d %v %v %v %v %v", p, h, rt, deriver, size, ult, sigs, ca), err
	})
	q("select a.path, b.path from Refs r join ValidPaths a on a.id = r.referrer join ValidPaths b on b.id = r.reference", func(rs *sql.Rows) (string, string, error) {
		var a, b string
		err := rs.Scan(&a, &b)
		return a, "R " + a + " " + b, err
	})
	q("select v.path, d.id, d.path from DerivationOutputs d join ValidPaths v on v.id = d.drv", func(rs *sql.Rows) (string, string, error) {
		var a, id, b string
		err := rs.Scan(&a, &id, &b)
		return a, "D " + a + " " + id + " " + b, err
	})
	sort.Strings(out)
	return out
}

// removeRows deletes the rows of paths (a set closed under referrers).
func removeRows(t testing.TB, s *store.Store, paths []string) {
	t.Helper()
	err := s.DB.ImmediateTx(context.Background(), func(c *sql.Conn) error {
		for _, p := range paths {
			for _, q := range []string{
				"delete from Refs where referrer = (select id from ValidPaths where path = ?)",
				"delete from DerivationOutputs where drv = (select id from ValidPaths where path = ?)",
			} {
				if _, err := c.ExecContext(context.Background(), q, p); err != nil {
					return err
				}
			}
		}
		for _, p := range paths {
			if _, err := c.ExecContext(context.Background(), "delete from ValidPaths where path = ?", p); err != nil {
				return fmt.Errorf("%s: %w", p, err)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// inputsOf reads the rows of paths as register inputs (hash given or
// not), in the order given.
func inputsOf(t testing.TB, s *store.Store, paths []string, hashGiven bool) []Input {
	t.Helper()
	rows, missing, err := s.DB.Closure(context.Background(), paths)
	if err != nil || len(missing) > 0 {
		t.Fatalf("closure: %v, missing %v", err, missing)
	}
	out := make([]Input, len(paths))
	for i, p := range paths {
		r := rows[p]
		out[i] = Input{Registration: db.Registration{Path: p, Deriver: r.Deriver, References: r.References,
			RegistrationTime: r.RegistrationTime, Ultimate: r.Ultimate, Sigs: r.Sigs, CA: r.CA}, HashGiven: hashGiven}
		if hashGiven {
			out[i].NarHash, out[i].NarSize = r.NarHash, r.NarSize
		}
	}
	return out
}

// topPaths returns the valid paths nothing else refers to (a set closed
// under referrers), at most n of them, sorted.
func topPaths(b *storetest.Built, n int) []string {
	referred := map[string]bool{}
	for p, refs := range b.Refs {
		for _, r := range refs {
			if r != p {
				referred[r] = true
			}
		}
	}
	var out []string
	for _, p := range b.Valid {
		if !referred[p] && len(out) < n {
			out = append(out, p)
		}
	}
	return out
}

// validAmong returns which of paths are valid.
func validAmong(t testing.TB, s *store.Store, paths []string) []string {
	t.Helper()
	v, err := s.DB.ValidAmong(context.Background(), paths)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, p := range paths {
		if v[p] {
			out = append(out, p)
		}
	}
	return out
}

// newPath makes a fresh store path name of b's store for name.
func newPath(b *storetest.Built, name string) string {
	return storepath.MakeStorePath(b.Layout.StoreDir, "output:out", sha256.Sum256([]byte(name)), name)
}

// tree writes files (relative path -> contents; a trailing "/" makes a
// directory) under the store path p, owned by uid, with ordinary
// (non-canonical) modes and mtimes.
func tree(t testing.TB, b *storetest.Built, p string, uid int, files map[string]string) string {
	t.Helper()
	root := b.Layout.RealPath(p)
	if err := os.Mkdir(root, 0o755); err != nil {
		t.Fatal(err)
	}
	names := make([]string, 0, len(files))
	for n := range files {
		names = append(names, n)
	}
	slices.Sort(names)
	for _, n := range names {
		full := filepath.Join(root, n)
		if strings.HasSuffix(n, "/") {
			if err := os.MkdirAll(full, 0o755); err != nil {
				t.Fatal(err)
			}
			continue
		}
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(full, []byte(files[n]), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	chownTree(t, root, uid)
	return root
}

// chownTree gives every node under root to uid (gid uid), never
// following a symlink.
func chownTree(t testing.TB, root string, uid int) {
	t.Helper()
	err := filepath.Walk(root, func(p string, fi os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		return os.Lchown(p, uid, uid)
	})
	if err != nil {
		t.Fatal(err)
	}
}

// meta is a node's owner, mode and mtime, to show nothing changed.
type meta struct {
	uid, gid uint32
	mode     uint32
	mtime    unix.Timespec
}

func metaOf(t testing.TB, p string) meta {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Lstat(p, &st); err != nil {
		t.Fatal(err)
	}
	return meta{st.Uid, st.Gid, st.Mode, st.Mtim}
}

// metaTree is the meta of every node under root, by relative path.
func metaTree(t testing.TB, root string) map[string]meta {
	t.Helper()
	out := map[string]meta{}
	err := filepath.Walk(root, func(p string, fi os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		out[p] = metaOf(t, p)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func needRoot(t testing.TB) {
	if os.Geteuid() != 0 {
		t.Skip("needs root (chown to other uids)")
	}
}

// chunkedMismatch is a test store whose rows were removed (before: its
// rows), with locks for only 10 paths at once (so Register works in
// chunks), and its inputs with hashes given, the hash of bad wrong: the
// last path in dependency order that refers to others, registered in
// the last chunk.
func chunkedMismatch(t *testing.T) (b *storetest.Built, s *store.Store, before []string, in []Input, bad string) {
	t.Helper()
	b, s = testStore(t, false)
	before = rowDump(t, s, b.Valid)
	in = inputsOf(t, s, b.Valid, true)
	removeRows(t, s, b.Valid)
	fakeLimits(t, fileReserve+10, fileReserve+10, 1<<20)
	for _, p := range topPaths(b, len(b.Valid)) {
		if len(b.Refs[p]) > 0 {
			bad = p
		}
	}
	for i := range in {
		if in[i].Path == bad {
			in[i].NarHash[0] ^= 1
		}
	}
	return b, s, before, in, bad
}
