package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
	_ "modernc.org/sqlite" // registers the "sqlite" database/sql driver
	sqlite3 "modernc.org/sqlite/lib"

	"storekeeper/lock"
)

// Sentinel errors of the DB layer. Every error the DB layer returns wraps
// one of these and names the file it is about.
var (
	ErrNoDB          = errors.New("store: no Nix database")
	ErrSchemaVersion = errors.New("store: unsupported database schema version")
	ErrCorruptDB     = errors.New("store: database is corrupt")
	ErrDBLocked      = errors.New("store: database is locked")
	ErrDBAccess      = errors.New("store: cannot access database")
)

// Schema versions storekeeper reads and writes: Nix 2.x writes 10; Guix's
// daemon (a fork of Nix 1.x) writes 7.
const (
	SchemaNix  = 10
	SchemaGuix = 7
)

// DBOptions control how the database is opened.
type DBOptions struct {
	// ReadOnly opens the DB with SQLite's mode=ro and the big-lock with
	// O_RDONLY: no write access to the state dir is needed and nothing is
	// ever written (SQLite may still create the WAL index file if it can).
	ReadOnly bool
	// BusyTimeout is how long a statement waits for a lock held by another
	// process (a nix-daemon in a long transaction) before failing with
	// ErrDBLocked. Zero means 60 s.
	BusyTimeout time.Duration
	// FsyncMetadata and UseWAL mirror nix.conf's fsync-metadata and
	// use-sqlite-wal; they are applied like Nix does on a read-write open.
	FsyncMetadata bool
	UseWAL        bool
}

// DB is an open Nix database. It is safe for concurrent use by several
// goroutines (database/sql pools connections). A read-write DB holds
// db/big-lock shared, like every Nix process, until Close.
type DB struct {
	SQL      *sql.DB
	Path     string
	Schema   int
	ReadOnly bool
	// Columns of ValidPaths present in this schema (Guix lacks ultimate,
	// sigs and ca).
	HasUltimate, HasSigs, HasCA bool

	bigLock *lock.FileLock
	// rawURI opens the file read-only for LoadGraph's bulk reads, as the
	// main connection was opened (immutable or not).
	rawURI     string
	busyMillis int64
}

// OpenDB opens the database in dbDir after checking db/schema. It refuses
// an unknown schema version, a missing or corrupt database and a database
// it cannot read, with an error that says which file and what to do; in
// every such case nothing has been written.
//
// Cancellation: ctx bounds the wait for the big-lock and the first query.
func OpenDB(ctx context.Context, dbDir string, o DBOptions) (*DB, error) {
	dbPath := filepath.Join(dbDir, "db.sqlite")
	schema, err := ReadSchemaVersion(dbDir)
	if err != nil {
		return nil, err
	}
	if _, err := os.Stat(dbPath); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("%w: %s does not exist (is this a Nix store? run 'nix-store --init' to create one)", ErrNoDB, dbPath)
		}
		return nil, fmt.Errorf("%w: %v", ErrDBAccess, err)
	}
	if !o.ReadOnly {
		if err := unix.Access(dbDir, unix.W_OK|unix.R_OK); err != nil {
			return nil, fmt.Errorf("%w: the database directory %s is not writable (%v); run as the store's owner (usually root)", ErrDBAccess, dbDir, err)
		}
	}

	bl, err := lock.AcquireBigLock(ctx, dbDir, lock.Shared, o.ReadOnly)
	if err != nil {
		// A read-only user may lack even read access to big-lock; Nix
		// readers would then fail too, but reading the DB is still safe
		// in WAL mode, so only a read-write open insists on the lock.
		if !o.ReadOnly {
			return nil, fmt.Errorf("%w: taking %s: %v", ErrDBAccess, filepath.Join(dbDir, "big-lock"), err)
		}
		bl = nil
	}

	rawURI := "file:" + uriPath(dbPath) + "?mode=ro"
	db, err := openSQL(ctx, dbPath, o)
	if err != nil && o.ReadOnly && (isCantOpen(err) || isReadOnlyErr(err)) && !fileExists(dbPath+"-wal") {
		// A WAL database whose -shm file we may not create: with no WAL
		// file, the main file is complete; read it as immutable.
		db, err = openSQLImmutable(ctx, dbPath, o)
		rawURI += "&immutable=1"
	}
	if err != nil {
		if bl != nil {
			bl.Release()
		}
		return nil, classifyDBError(dbPath, err)
	}
	d := &DB{SQL: db, Path: dbPath, Schema: schema, ReadOnly: o.ReadOnly, bigLock: bl, rawURI: rawURI, busyMillis: busyMillis(o)}
	if err := d.inspectColumns(ctx); err != nil {
		d.Close()
		return nil, classifyDBError(dbPath, err)
	}
	if !o.ReadOnly {
		// Only once the file is known to be a Nix database.
		if err := setJournalMode(ctx, db, o.UseWAL); err != nil {
			d.Close()
			return nil, classifyDBError(dbPath, err)
		}
	}
	return d, nil
}

// ReadSchemaVersion reads db/schema and refuses versions storekeeper does
// not know.
func ReadSchemaVersion(dbDir string) (int, error) {
	p := filepath.Join(dbDir, "schema")
	b, err := os.ReadFile(p)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return 0, fmt.Errorf("%w: %s does not exist (is %s the state dir of a Nix store? pass --store or --state-dir)", ErrNoDB, p, filepath.Dir(dbDir))
		}
		return 0, fmt.Errorf("%w: reading %s: %v", ErrDBAccess, p, err)
	}
	v, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		return 0, fmt.Errorf("%w: %s holds %q, not a version number", ErrSchemaVersion, p, strings.TrimSpace(string(b)))
	}
	if v != SchemaNix && v != SchemaGuix {
		return 0, fmt.Errorf("%w: %s says version %d; storekeeper knows %d (Nix 2.x) and %d (Guix); refusing to touch the database", ErrSchemaVersion, p, v, SchemaNix, SchemaGuix)
	}
	return v, nil
}

func busyMillis(o DBOptions) int64 {
	if o.BusyTimeout <= 0 {
		return 60_000
	}
	return o.BusyTimeout.Milliseconds()
}

func openSQL(ctx context.Context, dbPath string, o DBOptions) (*sql.DB, error) {
	q := fmt.Sprintf("_busy_timeout=%d", busyMillis(o))
	if o.ReadOnly {
		q = "mode=ro&" + q + "&_query_only=1"
	} else {
		sync := "normal"
		if !o.FsyncMetadata {
			sync = "off"
		}
		// A 32 MiB page cache: on a 315k-path store (170 MB DB) the
		// collector's invalidation is as fast as with 64 MiB, and its
		// peak memory 80 MB lower (239 MB instead of 320 MB). Nix's
		// autocheckpoint interval on every connection of the pool, not
		// only the one setJournalMode ran on: with SQLite's default of
		// 1000 pages every big transaction would be followed by a
		// checkpoint (and its fsyncs).
		q = "mode=rw&" + q + "&_foreign_keys=1&_synchronous=" + sync + "&_pragma=cache_size(-32768)&_pragma=wal_autocheckpoint(40000)"
	}
	db, err := sql.Open("sqlite", "file:"+uriPath(dbPath)+"?"+q)
	if err != nil {
		return nil, err
	}
	if err := db.PingContext(ctx); err != nil {
		db.Close()
		return nil, err
	}
	return db, nil
}

func openSQLImmutable(ctx context.Context, dbPath string, o DBOptions) (*sql.DB, error) {
	db, err := sql.Open("sqlite", "file:"+uriPath(dbPath)+"?mode=ro&immutable=1&_query_only=1")
	if err != nil {
		return nil, err
	}
	if err := db.PingContext(ctx); err != nil {
		db.Close()
		return nil, err
	}
	return db, nil
}

// setJournalMode does what Nix does on open: switch to WAL (or truncate)
// if the DB is in another mode, and raise the WAL autocheckpoint interval.
func setJournalMode(ctx context.Context, db *sql.DB, wal bool) error {
	want := "truncate"
	if wal {
		want = "wal"
	}
	var cur string
	if err := db.QueryRowContext(ctx, "pragma main.journal_mode").Scan(&cur); err != nil {
		return err
	}
	if !strings.EqualFold(cur, want) {
		if _, err := db.ExecContext(ctx, "pragma main.journal_mode = "+want); err != nil {
			return err
		}
	}
	if wal {
		if _, err := db.ExecContext(ctx, "pragma wal_autocheckpoint = 40000"); err != nil {
			return err
		}
	}
	return nil
}

// uriPath escapes a file name for a SQLite file: URI.
func uriPath(p string) string {
	r := strings.NewReplacer("%", "%25", "?", "%3f", "#", "%23")
	return r.Replace(p)
}

func fileExists(p string) bool {
	_, err := os.Lstat(p)
	return err == nil
}

func sqliteCode(err error) int {
	var se interface{ Code() int } // *sqlite.Error, *rawError
	if errors.As(err, &se) {
		return se.Code()
	}
	return 0
}

// IsConstraintError reports whether err is SQLite's "constraint failed"
// (a foreign key, unique or not-null constraint).
func IsConstraintError(err error) bool {
	return sqliteCode(err)&0xff == sqlite3.SQLITE_CONSTRAINT
}

func isReadOnlyErr(err error) bool {
	return sqliteCode(err)&0xff == sqlite3.SQLITE_READONLY
}

func isCantOpen(err error) bool {
	return sqliteCode(err)&0xff == sqlite3.SQLITE_CANTOPEN
}

// classifyDBError wraps a SQLite error in the matching sentinel with a
// message that says what to run next.
func classifyDBError(dbPath string, err error) error {
	for _, known := range []error{ErrNoDB, ErrSchemaVersion, ErrCorruptDB, ErrDBLocked, ErrDBAccess, ErrGraph} {
		if errors.Is(err, known) {
			return err
		}
	}
	switch sqliteCode(err) & 0xff {
	case sqlite3.SQLITE_NOTADB, sqlite3.SQLITE_CORRUPT:
		return fmt.Errorf("%w: %s: %v (nothing was changed; check it with sqlite3 %s 'pragma integrity_check' and restore it from a backup)", ErrCorruptDB, dbPath, err, dbPath)
	case sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED:
		return fmt.Errorf("%w: %s: %v (another process, usually nix-daemon, holds a long write transaction; try again later)", ErrDBLocked, dbPath, err)
	case sqlite3.SQLITE_CANTOPEN, sqlite3.SQLITE_PERM, sqlite3.SQLITE_READONLY, sqlite3.SQLITE_AUTH:
		return fmt.Errorf("%w: %s: %v (run as the store's owner, usually root)", ErrDBAccess, dbPath, err)
	}
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	return fmt.Errorf("store: database %s: %w", dbPath, err)
}

// inspectColumns checks that the tables storekeeper relies on exist and
// learns which optional ValidPaths columns this schema has. It is also the
// first real read, so a corrupt file is caught here.
func (d *DB) inspectColumns(ctx context.Context) error {
	rows, err := d.SQL.QueryContext(ctx, "select name from pragma_table_info('ValidPaths')")
	if err != nil {
		return err
	}
	defer rows.Close()
	n := 0
	for rows.Next() {
		var name string
		if err := rows.Scan(&name); err != nil {
			return err
		}
		n++
		switch name {
		case "ultimate":
			d.HasUltimate = true
		case "sigs":
			d.HasSigs = true
		case "ca":
			d.HasCA = true
		}
	}
	if err := rows.Err(); err != nil {
		return err
	}
	if n == 0 {
		return fmt.Errorf("%w: %s has no ValidPaths table (not a Nix database)", ErrCorruptDB, d.Path)
	}
	for _, t := range []string{"Refs", "DerivationOutputs"} {
		var c int
		if err := d.SQL.QueryRowContext(ctx, "select count(*) from sqlite_master where type='table' and name=?", t).Scan(&c); err != nil {
			return err
		}
		if c == 0 {
			return fmt.Errorf("%w: %s has no %s table (not a Nix database)", ErrCorruptDB, d.Path, t)
		}
	}
	return nil
}

// Close closes the database and releases the big-lock.
func (d *DB) Close() error {
	err := d.SQL.Close()
	if d.bigLock != nil {
		if e := d.bigLock.Release(); err == nil {
			err = e
		}
		d.bigLock = nil
	}
	return err
}

// ValidAmong returns which of the given full store paths are registered in
// ValidPaths, with one query per 500 paths (never one per path).
func (d *DB) ValidAmong(ctx context.Context, paths []string) (map[string]bool, error) {
	out := make(map[string]bool, len(paths))
	const chunk = 500
	for i := 0; i < len(paths); i += chunk {
		part := paths[i:min(i+chunk, len(paths))]
		args := make([]any, len(part))
		for j, p := range part {
			args[j] = p
		}
		q := "select path from ValidPaths where path in (?" + strings.Repeat(",?", len(part)-1) + ")"
		rows, err := d.SQL.QueryContext(ctx, q, args...)
		if err != nil {
			return nil, classifyDBError(d.Path, err)
		}
		for rows.Next() {
			var p string
			if err := rows.Scan(&p); err != nil {
				rows.Close()
				return nil, classifyDBError(d.Path, err)
			}
			out[p] = true
		}
		err = rows.Err()
		rows.Close()
		if err != nil {
			return nil, classifyDBError(d.Path, err)
		}
	}
	return out, nil
}
