package db_test

import (
	"context"
	"database/sql"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"storekeeper/lock"
	"storekeeper/report"
	"storekeeper/store/db"
	"storekeeper/store/storetest"
)

// vacuumFixture builds a DB-only store whose database has grown (1 MiB
// of signatures a path over 40 paths) and then lost most of it, as after
// a large gc: most pages are free.
func vacuumFixture(t *testing.T) (dbDir string) {
	t.Helper()
	b := storetest.MustBuild(t, storetest.Spec{Paths: 20, Seed: 26, MaxDeps: 2, Files: 1, FileSize: 10, DBOnly: true})
	dbDir = b.Layout.DBDir()
	sdb, err := sql.Open("sqlite", "file:"+b.Layout.DBPath())
	if err != nil {
		t.Fatal(err)
	}
	defer sdb.Close()
	if _, err := sdb.Exec("update ValidPaths set sigs = hex(randomblob(512*1024))"); err != nil {
		t.Fatal(err)
	}
	if _, err := sdb.Exec("update ValidPaths set sigs = 'k:c2ln'"); err != nil {
		t.Fatal(err)
	}
	return dbDir
}

func dbSum(t *testing.T, dbDir string) string {
	t.Helper()
	var b strings.Builder
	for _, f := range []string{"db.sqlite", "db.sqlite-wal"} {
		data, _ := os.ReadFile(filepath.Join(dbDir, f))
		b.Write(data)
	}
	return b.String()
}

func TestVacuumShrinks(t *testing.T) {
	dbDir := vacuumFixture(t)
	var log report.Log
	r, err := db.Vacuum(context.Background(), dbDir, db.VacuumOptions{Timeout: time.Second, Check: true, UseWAL: true, Printer: &log})
	if err != nil {
		t.Fatal(err)
	}
	if !r.Vacuumed || len(r.Integrity) != 1 || r.Integrity[0] != "ok" || r.DBPath != filepath.Join(dbDir, "db.sqlite") {
		t.Fatalf("result %+v", r)
	}
	if r.SizeBeforeBytes < 10<<20 || r.SizeAfterBytes > r.SizeBeforeBytes/10 || r.SizeAfterBytes <= 0 {
		t.Fatalf("size before %d, after %d: want a 10 MiB+ database shrunk tenfold", r.SizeBeforeBytes, r.SizeAfterBytes)
	}
	if st, err := os.Stat(filepath.Join(dbDir, "db.sqlite")); err != nil || st.Size() != r.SizeAfterBytes {
		t.Fatalf("db.sqlite after: %v %v, result %d", st, err, r.SizeAfterBytes)
	}
	if msgs := log.Texts(report.LevelInfo); len(msgs) != 1 || !strings.HasPrefix(msgs[0], "vacuuming ") {
		t.Fatalf("messages %q", msgs)
	}
	// Still a Nix database with its rows.
	d, err := db.Open(context.Background(), dbDir, db.Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	var n int
	if err := d.SQL.QueryRow("select count(*) from ValidPaths where sigs = 'k:c2ln'").Scan(&n); err != nil || n < 20 {
		t.Fatalf("rows after vacuum: %d, %v", n, err)
	}
}

// TestVacuumWaitsForBigLock: another open file description holding the
// big-lock shared (as a Nix process does) makes Vacuum wait, name this
// process and, after the timeout, fail with a HeldError, changing
// nothing; released within the timeout, Vacuum goes on.
func TestVacuumWaitsForBigLock(t *testing.T) {
	dbDir := vacuumFixture(t)
	hold := func() *os.File {
		f, err := lock.OpenLockFile(filepath.Join(dbDir, "big-lock"), true)
		if err != nil {
			t.Fatal(err)
		}
		if err := lock.Lock(context.Background(), f, lock.Shared, false); err != nil {
			t.Fatal(err)
		}
		return f
	}
	f := hold()
	before := dbSum(t, dbDir)
	var log report.Log
	start := time.Now()
	r, err := db.Vacuum(context.Background(), dbDir, db.VacuumOptions{Timeout: 700 * time.Millisecond, UseWAL: true, Printer: &log})
	var he *lock.HeldError
	if !errors.As(err, &he) || !errors.Is(err, context.DeadlineExceeded) || he.Path != filepath.Join(dbDir, "big-lock") {
		t.Fatalf("err %v, want a HeldError on big-lock after the deadline", err)
	}
	if el := time.Since(start); el < 700*time.Millisecond || el > 5*time.Second {
		t.Fatalf("waited %v for a 700ms timeout", el)
	}
	me := "PID " + strconv.Itoa(os.Getpid())
	if !strings.Contains(err.Error(), me) || !strings.Contains(err.Error(), "(shared flock lock)") || !strings.Contains(err.Error(), "--timeout") {
		t.Fatalf("error does not name the holder: %v", err)
	}
	if msgs := log.Texts(report.LevelInfo); len(msgs) != 1 || !strings.Contains(msgs[0], me) || !strings.HasPrefix(msgs[0], "waiting up to ") {
		t.Fatalf("messages %q", msgs)
	}
	if r == nil || r.Vacuumed || r.LockWaitSeconds < 0.7 {
		t.Fatalf("result %+v", r)
	}
	if dbSum(t, dbDir) != before {
		t.Fatal("a timed-out vacuum changed the database")
	}

	// Timeout 0: one attempt.
	if _, err := db.Vacuum(context.Background(), dbDir, db.VacuumOptions{UseWAL: true}); !errors.Is(err, lock.ErrWouldBlock) {
		t.Fatalf("timeout 0: %v", err)
	}
	// Cancelled while waiting: the context's error.
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	if _, err := db.Vacuum(ctx, dbDir, db.VacuumOptions{Timeout: time.Minute, UseWAL: true}); !errors.As(err, &he) || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("cancelled: %v", err)
	}

	// Released within the timeout: it proceeds.
	go func() {
		time.Sleep(500 * time.Millisecond)
		f.Close()
	}()
	r, err = db.Vacuum(context.Background(), dbDir, db.VacuumOptions{Timeout: time.Minute, UseWAL: true})
	if err != nil || !r.Vacuumed || r.LockWaitSeconds < 0.4 || r.SizeAfterBytes >= r.SizeBeforeBytes {
		t.Fatalf("after release: %+v, %v", r, err)
	}
}

// TestVacuumCheckRefusesCorrupt: an index whose entries are in the wrong
// order is reported by --check's integrity_check, and the database is not
// vacuumed.
func TestVacuumCheckRefusesCorrupt(t *testing.T) {
	dbDir := vacuumFixture(t)
	dbPath := filepath.Join(dbDir, "db.sqlite")
	sdb, err := sql.Open("sqlite", "file:"+dbPath)
	if err != nil {
		t.Fatal(err)
	}
	sdb.SetMaxOpenConns(1) // the pragmas hold for the one connection
	// The index on Refs(referrer) said to be on Refs(reference): every
	// entry of it is then in the wrong place, as after a torn write.
	for _, q := range []string{
		"pragma writable_schema = on",
		"update sqlite_master set sql = 'CREATE INDEX IndexReferrer on Refs(reference)' where name = 'IndexReferrer'",
		"pragma writable_schema = off",
	} {
		if _, err := sdb.Exec(q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	sdb.Close()
	before := dbSum(t, dbDir)
	r, err := db.Vacuum(context.Background(), dbDir, db.VacuumOptions{Check: true, UseWAL: true})
	if !errors.Is(err, db.ErrIntegrity) || !errors.Is(err, db.ErrCorruptDB) {
		t.Fatalf("err %v, want ErrIntegrity", err)
	}
	if r == nil || r.Vacuumed || len(r.Integrity) == 0 || r.Integrity[0] == "ok" {
		t.Fatalf("result %+v", r)
	}
	if dbSum(t, dbDir) != before {
		t.Fatal("the corrupt database was changed")
	}
}
