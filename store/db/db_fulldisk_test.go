package db_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"storekeeper/store"
	"storekeeper/store/db"
	"storekeeper/store/fs"
	"storekeeper/store/storetest"
)

// walOnlyPath commits a new ValidPaths row while a read transaction is
// open on another connection, so that the writer cannot checkpoint when
// it closes: the row is then only in db.sqlite-wal, as a running (or
// killed) nix-daemon leaves it. It returns the new path.
func walOnlyPath(t *testing.T, lay store.Layout) string {
	t.Helper()
	dbPath := lay.DBPath()
	r, err := sql.Open("sqlite", "file:"+dbPath+"?mode=ro")
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	tx, err := r.Begin()
	if err != nil {
		t.Fatal(err)
	}
	var n int
	if err := tx.QueryRow("select count(*) from ValidPaths").Scan(&n); err != nil {
		t.Fatal(err)
	}
	p := lay.StoreDir + "/" + strings.Repeat("w", 32) + "-wal-only"
	w, err := sql.Open("sqlite", "file:"+dbPath+"?mode=rw")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Exec("insert into ValidPaths (path, hash, registrationTime, narSize) values (?, ?, 1, 120)", p, "sha256:"+strings.Repeat("0", 52)); err != nil {
		t.Fatal(err)
	}
	w.Close()
	tx.Rollback()
	r.Close()
	if !db.WALHasFrames(dbPath) {
		t.Fatal("the row did not stay in the WAL")
	}
	return p
}

// fullDiskResult is what the child process reports.
type fullDiskResult struct {
	Err       string
	Paths     int  // count(*) of ValidPaths through database/sql
	HasWAL    bool // the WAL-only path, through database/sql
	Graph     int  // paths in the graph, through the raw connection
	GraphWAL  bool // the WAL-only path, in the graph
	RawURI    string
	ShmExists bool
}

// TestOpenReadOnlyWithoutSHMSpace: where SQLite cannot grow db.sqlite-shm
// (simulated with a file size limit of 16 KiB, below the index's 32 KiB:
// growing it fails with SQLITE_IOERR_SHMSIZE as on a full disk), a
// read-only open still reads the whole database, the transactions only in
// the WAL included, through both its database/sql connections and the raw
// connection LoadGraph uses, and writes nothing to the database or WAL.
func TestOpenReadOnlyWithoutSHMSpace(t *testing.T) {
	for _, c := range []struct {
		name string
		wal  bool
	}{{"no WAL", false}, {"committed WAL", true}} {
		t.Run(c.name, func(t *testing.T) {
			b := storetest.MustBuild(t, storetest.Spec{Paths: 60, Seed: 4, MaxDeps: 3, Files: 1, FileSize: 10, DBOnly: true})
			want, walPath := len(b.Valid), ""
			if c.wal {
				walPath = walOnlyPath(t, b.Layout)
				want++
			}
			os.Remove(b.Layout.DBPath() + "-shm")
			before := dbFiles(t, b.Layout)

			res := fullDiskChild(t, b.Layout, walPath, 16<<10)
			if res.Err != "" {
				t.Fatalf("read-only open without room for db.sqlite-shm: %s", res.Err)
			}
			if res.Paths != want || res.Graph != want || res.HasWAL != c.wal || res.GraphWAL != c.wal {
				t.Fatalf("read %d paths through database/sql and %d through the raw connection (the WAL-only one: %v, %v), want %d (%v)", res.Paths, res.Graph, res.HasWAL, res.GraphWAL, want, c.wal)
			}
			if !strings.Contains(res.RawURI, "readonly_shm=1") {
				t.Errorf("raw connection URI %q: want the read-only index", res.RawURI)
			}
			if after := dbFiles(t, b.Layout); after != before {
				t.Fatalf("the database changed:\n%s\n%s", before, after)
			}

			// Without the limit, the plain way is used.
			if res := fullDiskChild(t, b.Layout, walPath, 0); res.Err != "" || res.Paths != want || strings.Contains(res.RawURI, "&") {
				t.Fatalf("without a limit: %+v", res)
			}
		})
	}
}

// dbFiles hashes db.sqlite and db.sqlite-wal.
func dbFiles(t *testing.T, lay store.Layout) string {
	t.Helper()
	var sb strings.Builder
	for _, n := range []string{"", "-wal"} {
		data, err := os.ReadFile(lay.DBPath() + n)
		if err != nil && !os.IsNotExist(err) {
			t.Fatal(err)
		}
		fmt.Fprintf(&sb, "db.sqlite%s %d %x\n", n, len(data), sha256.Sum256(data))
	}
	return sb.String()
}

// fullDiskChild runs TestOpenReadOnlyChild in a child process with the
// given file size limit (0: none) and returns what it read.
func fullDiskChild(t *testing.T, lay store.Layout, walPath string, limit uint64) fullDiskResult {
	t.Helper()
	cfg, _ := json.Marshal(map[string]any{"layout": lay, "wal": walPath, "limit": limit})
	cmd := exec.Command(os.Args[0], "-test.run=^TestOpenReadOnlyChild$", "-test.count=1")
	cmd.Env = append(os.Environ(), "STOREKEEPER_TEST_CHILD="+string(cfg))
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		t.Fatalf("child: %v\n%s\n%s", err, out.String(), errb.String())
	}
	_, js, ok := strings.Cut(out.String(), "RESULT ")
	js, _, _ = strings.Cut(js, "\n")
	var res fullDiskResult
	if err := json.Unmarshal([]byte(js), &res); !ok || err != nil {
		t.Fatalf("child printed no result (%v):\n%s", err, out.String())
	}
	return res
}

// TestOpenReadOnlyChild is the child of fullDiskChild.
func TestOpenReadOnlyChild(t *testing.T) {
	env := os.Getenv("STOREKEEPER_TEST_CHILD")
	if env == "" {
		t.Skip("run by TestOpenReadOnlyWithoutSHMSpace")
	}
	var cfg struct {
		Layout store.Layout
		WAL    string
		Limit  uint64
	}
	if err := json.Unmarshal([]byte(env), &cfg); err != nil {
		t.Fatal(err)
	}
	if cfg.Limit > 0 {
		// SIGXFSZ is ignored by the Go runtime: writes past the limit
		// fail with EFBIG.
		if err := unix.Setrlimit(unix.RLIMIT_FSIZE, &unix.Rlimit{Cur: cfg.Limit, Max: cfg.Limit}); err != nil {
			t.Fatal(err)
		}
	}
	var res fullDiskResult
	defer func() {
		_, err := os.Stat(cfg.Layout.DBPath() + "-shm")
		res.ShmExists = err == nil
		js, _ := json.Marshal(res)
		fmt.Printf("RESULT %s\n", js)
	}()
	ctx := context.Background()
	s, err := storetest.OpenReadOnly(cfg.Layout)
	if err != nil {
		res.Err = err.Error()
		return
	}
	defer s.Close()
	res.RawURI = db.RawURI(s.DB)
	if err := s.DB.SQL.QueryRowContext(ctx, "select count(*), count(case when path = ? then 1 end) from ValidPaths", cfg.WAL).Scan(&res.Paths, &res.HasWAL); err != nil {
		res.Err = err.Error()
		return
	}
	g, err := s.LoadGraph(ctx, db.GraphOptions{})
	if err != nil {
		res.Err = err.Error()
		return
	}
	res.Graph = g.Len()
	_, res.GraphWAL = g.Lookup(cfg.WAL)
}

// TestWALHasFrames: only a WAL longer than its 32-byte header may hold a
// frame; anything that is not a plain file might.
func TestWALHasFrames(t *testing.T) {
	dir := t.TempDir()
	dbPath := filepath.Join(dir, "db.sqlite")
	if db.WALHasFrames(dbPath) {
		t.Fatal("no WAL file: frames")
	}
	for _, c := range []struct {
		size int
		want bool
	}{{0, false}, {32, false}, {33, true}, {4096 + 56, true}} {
		os.WriteFile(dbPath+"-wal", make([]byte, c.size), 0o644)
		if got := db.WALHasFrames(dbPath); got != c.want {
			t.Errorf("a %d-byte WAL: frames %v, want %v", c.size, got, c.want)
		}
	}
	os.Remove(dbPath + "-wal")
	os.Mkdir(dbPath+"-wal", 0o755)
	if !db.WALHasFrames(dbPath) {
		t.Error("a directory for a WAL: no frames")
	}
}

// TestMountPointOf: the mount point of a directory and of a path below it.
func TestMountPointOf(t *testing.T) {
	for dir, want := range map[string]string{"/": "/", "/proc": "/proc", "/proc/self/fd": "/proc"} {
		if got := fs.MountPointOf(dir); got != want {
			t.Errorf("MountPointOf(%s) = %s, want %s", dir, got, want)
		}
	}
}

// TestCheckWritableDir: a writable directory passes.
func TestCheckWritableDir(t *testing.T) {
	if err := fs.CheckWritableDir(t.TempDir()); err != nil {
		t.Fatal(err)
	}
}

// TestRemountNeedsRoot: a user other than root is told to run as root or
// to remount the mount the store is on.
func TestRemountNeedsRoot(t *testing.T) {
	err := fs.RemountNeedsRoot("/proc/self/fd")
	if !errors.Is(err, fs.ErrReadOnlyStore) {
		t.Fatalf("%v does not wrap ErrReadOnlyStore", err)
	}
	for _, want := range []string{"/proc/self/fd is on a read-only mount (/proc)", "run as root", "mount -o remount,rw /proc"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("%q does not say %q", err, want)
		}
	}
}
