package db_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"database/sql"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	sqlite3 "modernc.org/sqlite/lib"

	"storekeeper/nix/nixconf"
	"storekeeper/store"
	"storekeeper/store/db"
	"storekeeper/store/storetest"
)

func TestOpenRefusesBadDatabases(t *testing.T) {
	cases := []struct {
		name   string
		damage func(t *testing.T, lay store.Layout)
		want   error
	}{
		{"unknown schema", func(t *testing.T, lay store.Layout) {
			os.WriteFile(filepath.Join(lay.DBDir(), "schema"), []byte("11"), 0o644)
		}, db.ErrSchemaVersion},
		{"garbage schema", func(t *testing.T, lay store.Layout) {
			os.WriteFile(filepath.Join(lay.DBDir(), "schema"), []byte("ten\n"), 0o644)
		}, db.ErrSchemaVersion},
		{"no schema file", func(t *testing.T, lay store.Layout) {
			os.Remove(filepath.Join(lay.DBDir(), "schema"))
		}, db.ErrNoDB},
		{"no db file", func(t *testing.T, lay store.Layout) {
			os.Remove(lay.DBPath())
		}, db.ErrNoDB},
		{"not a database", func(t *testing.T, lay store.Layout) {
			os.WriteFile(lay.DBPath(), bytes.Repeat([]byte("this is not sqlite "), 500), 0o644)
		}, db.ErrCorruptDB},
		{"not a Nix database", func(t *testing.T, lay store.Layout) {
			os.Remove(lay.DBPath())
			db, err := sql.Open("sqlite", lay.DBPath())
			if err != nil {
				t.Fatal(err)
			}
			db.Exec("create table Other (x integer)")
			db.Close()
		}, db.ErrCorruptDB},
		{"no store dir", func(t *testing.T, lay store.Layout) {
			os.Rename(lay.RealStoreDir, lay.RealStoreDir+".gone")
		}, store.ErrNoStore},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			b := storetest.MustBuild(t, storetest.Spec{Paths: 5, Seed: 1, MaxDeps: 2, Files: 1, FileSize: 10})
			tc.damage(t, b.Layout)
			before := snapshotDir(t, b.Layout.DBDir())
			for _, ro := range []bool{true, false} {
				s, err := store.Open(context.Background(), store.Options{Layout: b.Layout, Settings: nixconf.Default(true), ReadOnly: ro})
				if err == nil {
					s.Close()
					t.Fatalf("read-only=%v: opened a store with %s", ro, tc.name)
				}
				if !errors.Is(err, tc.want) {
					t.Fatalf("read-only=%v: got %v, want %v", ro, err, tc.want)
				}
				t.Logf("read-only=%v: %v", ro, err)
			}
			if after := snapshotDir(t, b.Layout.DBDir()); after != before {
				t.Fatalf("the db directory changed:\nbefore %s\nafter  %s", before, after)
			}
		})
	}
}

// snapshotDir summarises a directory's files (names, sizes, contents hash).
func snapshotDir(t *testing.T, dir string) string {
	t.Helper()
	ents, _ := os.ReadDir(dir)
	var buf bytes.Buffer
	for _, e := range ents {
		if e.Name() == "db.sqlite-shm" {
			continue // SQLite's shared-memory index, not data
		}
		data, _ := os.ReadFile(filepath.Join(dir, e.Name()))
		fmt.Fprintf(&buf, "%s:%x ", e.Name(), sha256.Sum256(data))
	}
	return string(buf.Bytes())
}

// TestCorruptPages: a database whose pages are damaged is refused at open
// or when the graph is read, with ErrCorruptDB, and not written.
func TestCorruptPages(t *testing.T) {
	b := storetest.MustBuild(t, storetest.Spec{Paths: 200, Seed: 2, MaxDeps: 4, Files: 1, FileSize: 10, DBOnly: true})
	data, err := os.ReadFile(b.Layout.DBPath())
	if err != nil {
		t.Fatal(err)
	}
	for i := 4096; i < len(data); i++ {
		data[i] ^= 0x5a
	}
	os.WriteFile(b.Layout.DBPath(), data, 0o644)
	s, err := storetest.OpenReadOnly(b.Layout)
	if err == nil {
		defer s.Close()
		_, err = s.LoadGraph(context.Background(), db.GraphOptions{})
	}
	if !errors.Is(err, db.ErrCorruptDB) {
		t.Fatalf("got %v, want ErrCorruptDB", err)
	}
	now, _ := os.ReadFile(b.Layout.DBPath())
	if !bytes.Equal(now, data) {
		t.Fatal("the corrupt database was modified")
	}
}

// TestReadOnlyOpenWritesNothing: opening read-only and loading the graph
// leaves db.sqlite byte-for-byte unchanged.
func TestReadOnlyOpenWritesNothing(t *testing.T) {
	b := storetest.MustBuild(t, storetest.Spec{Paths: 50, Seed: 3, MaxDeps: 3, DBOnly: true})
	before, _ := os.ReadFile(b.Layout.DBPath())
	s, err := storetest.OpenReadOnly(b.Layout)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.LoadGraph(context.Background(), db.GraphOptions{Hashes: true}); err != nil {
		t.Fatal(err)
	}
	s.Close()
	after, _ := os.ReadFile(b.Layout.DBPath())
	if !bytes.Equal(before, after) {
		t.Fatal("a read-only open changed db.sqlite")
	}
	if _, err := os.Stat(b.Layout.DBPath() + "-wal"); err == nil {
		if st, _ := os.Stat(b.Layout.DBPath() + "-wal"); st.Size() != 0 {
			t.Fatal("a read-only open wrote to the WAL")
		}
	}
}

// TestLockedDB: a database in rollback-journal mode locked exclusively by
// another connection gives ErrDBLocked after the busy timeout.
func TestLockedDB(t *testing.T) {
	b := storetest.MustBuild(t, storetest.Spec{Paths: 10, Seed: 4, MaxDeps: 2, DBOnly: true})
	w, err := sql.Open("sqlite", b.Layout.DBPath())
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	w.SetMaxOpenConns(1)
	ctx := context.Background()
	conn, err := w.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := conn.ExecContext(ctx, "pragma journal_mode=delete"); err != nil {
		t.Fatal(err)
	}
	if _, err := conn.ExecContext(ctx, "begin exclusive"); err != nil {
		t.Fatal(err)
	}
	defer conn.ExecContext(ctx, "rollback")
	start := time.Now()
	s, err := storetest.OpenReadOnly(b.Layout)
	if err == nil {
		defer s.Close()
		_, err = s.LoadGraph(ctx, db.GraphOptions{})
	}
	if !errors.Is(err, db.ErrDBLocked) {
		t.Fatalf("got %v, want ErrDBLocked", err)
	}
	// SQLite's own error stays visible (for its extended code).
	if c := db.ResultCode(err) & 0xff; c != sqlite3.SQLITE_BUSY && c != sqlite3.SQLITE_LOCKED {
		t.Fatalf("%v: SQLite's busy error is not visible through it", err)
	}
	t.Logf("locked after %v: %v", time.Since(start), err)
}

func TestGuixStore(t *testing.T) {
	b := storetest.MustBuild(t, storetest.Spec{Paths: 20, Seed: 5, MaxDeps: 3, Files: 1, FileSize: 10, Guix: true})
	if b.Layout.StoreDir != "/gnu/store" {
		t.Fatalf("store dir %s", b.Layout.StoreDir)
	}
	s, err := storetest.OpenReadOnly(b.Layout)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if s.DB.Schema != db.SchemaGuix || s.DB.HasSigs || s.DB.HasCA {
		t.Fatalf("schema %d sigs %v ca %v", s.DB.Schema, s.DB.HasSigs, s.DB.HasCA)
	}
	g, err := s.LoadGraph(context.Background(), db.GraphOptions{Hashes: true, Sigs: true, CA: true})
	if err != nil {
		t.Fatal(err)
	}
	if g.Len() != len(b.Valid) {
		t.Fatalf("%d paths, want %d", g.Len(), len(b.Valid))
	}
}
