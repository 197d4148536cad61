package db

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
	_ "modernc.org/sqlite" // registers the "sqlite" database/sql driver
	sqlite3 "modernc.org/sqlite/lib"

	"storekeeper/lock"
	"storekeeper/store/fs"
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
type Options struct {
	// ReadOnly opens the DB with SQLite's mode=ro and the big-lock with
	// O_RDONLY: no write access to the state dir is needed and nothing is
	// ever written to the database (SQLite creates the empty db.sqlite-wal
	// and its index db.sqlite-shm if it can, as every reader of a WAL
	// database does). Where SQLite cannot create or grow db.sqlite-shm (a
	// full disk, a read-only file system, no write access) the DB is read
	// another way that needs no new space; see openReadOnly.
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
	// fsync is Options.FsyncMetadata, which Register's raw writer
	// applies as the pool's connections do (syncMode).
	fsync bool
}

// syncMode is SQLite's synchronous setting of d's read-write
// connections: nix.conf's fsync-metadata.
func (d *DB) syncMode() string { return syncPragma(d.fsync) }

func syncPragma(fsync bool) string {
	if fsync {
		return "normal"
	}
	return "off"
}

// OpenDB opens the database in dbDir after checking db/schema. It refuses
// an unknown schema version, a missing or corrupt database and a database
// it cannot read, with an error that says which file and what to do; in
// every such case nothing has been written. A read-only open reads the
// database even where SQLite cannot create or grow its WAL index
// db.sqlite-shm (a full disk, a read-only file system), never ignoring a
// transaction committed in db.sqlite-wal, or says why it cannot
// (ErrDiskFull, ErrReadOnlyFS); see openReadOnly. A read-write open of a
// directory on a read-only mount is refused with ErrReadOnlyFS, naming
// the directory and the mount to remount.
//
// Cancellation: ctx bounds the wait for the big-lock and the first query.
func Open(ctx context.Context, dbDir string, o Options) (*DB, error) {
	dbPath := filepath.Join(dbDir, "db.sqlite")
	schema, err := preflight(dbDir, !o.ReadOnly)
	if err != nil {
		return nil, err
	}
	bl, err := lock.AcquireBigLock(ctx, dbDir, lock.Shared, o.ReadOnly)
	if err != nil {
		// A read-only user may lack even read access to big-lock; Nix
		// readers would then fail too, but reading the DB is still safe
		// in WAL mode, so only a read-write open insists on the lock.
		if !o.ReadOnly {
			return nil, fmt.Errorf("%w: taking %s: %w", ErrDBAccess, filepath.Join(dbDir, "big-lock"), err)
		}
		bl = nil
	}

	var db *sql.DB
	var rawURI string
	if o.ReadOnly {
		db, rawURI, err = openReadOnly(ctx, dbPath, o)
	} else {
		db, err = openSQL(ctx, dbPath, o, "")
		rawURI = roURI(dbPath)
	}
	if err != nil {
		if bl != nil {
			bl.Release()
		}
		return nil, classifyDBError(dbPath, err)
	}
	d := &DB{SQL: db, Path: dbPath, Schema: schema, ReadOnly: o.ReadOnly, bigLock: bl, rawURI: rawURI, busyMillis: busyMillis(o), fsync: o.FsyncMetadata}
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

// preflight is what Open and Vacuum check before taking the big-lock:
// db/schema (its version), that db.sqlite exists and, for a writer
// (write), that the directory is writable; it then points SQLite's
// temporary files (setTempDir, tempdir.go).
func preflight(dbDir string, write bool) (schema int, err error) {
	dbPath := filepath.Join(dbDir, "db.sqlite")
	schema, err = ReadSchemaVersion(dbDir)
	if err != nil {
		return 0, err
	}
	if _, err := os.Stat(dbPath); err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return 0, fmt.Errorf("%w: %s does not exist (is this a Nix store? run 'nix-store --init' to create one)", ErrNoDB, dbPath)
		}
		return 0, fmt.Errorf("%w: %w", ErrDBAccess, err)
	}
	if write {
		if err := checkWritableDBDir(dbDir); err != nil {
			return 0, err
		}
	}
	setTempDir(dbDir, write) // SQLite's temporary files: see tempdir.go
	return schema, nil
}

// ReadSchemaVersion reads db/schema and refuses versions storekeeper does
// not know.
func ReadSchemaVersion(dbDir string) (int, error) {
	p := filepath.Join(dbDir, "schema")
	b, err := os.ReadFile(p)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return 0, fmt.Errorf("%w: %s does not exist (is %s the state dir of a Nix store? pass --store or --state-dir)", ErrNoDB, p, filepath.Dir(dbDir))
		}
		return 0, fmt.Errorf("%w: reading %s: %w", ErrDBAccess, p, err)
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

func busyMillis(o Options) int64 {
	if o.BusyTimeout <= 0 {
		return 60_000
	}
	return o.BusyTimeout.Milliseconds()
}

// checkWritableDBDir is the check of a read-write open: the database
// directory and the state directory holding it must be writable, and if
// they are on a read-only mount the error says which and how to remount
// it (never "run as root" to root).
func checkWritableDBDir(dbDir string) error {
	for _, d := range []string{dbDir, filepath.Dir(dbDir)} {
		if err := fs.CheckWritableDir(d); err != nil {
			return err
		}
	}
	if err := unix.Access(dbDir, unix.W_OK|unix.R_OK); err != nil {
		if errors.Is(err, unix.EROFS) {
			return fs.ReadOnlyFSError(dbDir)
		}
		return fmt.Errorf("%w: the database directory %s is not writable (%w); %s", ErrDBAccess, dbDir, err, accessHint(dbDir))
	}
	return nil
}

// accessHint says what to do about a file or directory this process may
// not open: run as the store's owner, or, for root, look at what denies
// even root.
func accessHint(p string) string {
	if os.Geteuid() == 0 {
		return fmt.Sprintf("root is denied access too: check the permissions, attributes (lsattr) and mount of %s", p)
	}
	return "run as the store's owner (usually root)"
}

// roURI is the plain read-only URI of the database file; openReadOnly
// appends the parameters of the way it found to read it.
func roURI(dbPath string) string { return "file:" + uriPath(dbPath) + "?mode=ro" }

// openReadOnly opens the database for reading only and returns the
// database/sql handle and the URI the raw connections of LoadGraph open,
// which reads the file the same way. It tries, in this order:
//
//  1. plain mode=ro, as every reader of a WAL database: SQLite creates
//     db.sqlite-shm, the WAL index shared by all connections, and grows it
//     to 32 KiB. On a full disk growing it fails (SQLITE_IOERR_SHMSIZE);
//     on a read-only file system, or without write access to the
//     directory, creating it fails.
//  2. readonly_shm=1, where db.sqlite-shm exists (step 1 leaves one
//     created on a full disk): SQLite opens it read-only, never writes or
//     grows it, and, when no live connection maintains it, builds a
//     private copy of the WAL index in memory from db.sqlite-wal at each
//     transaction. It takes the same shared WAL read locks as any reader,
//     which keep a writer from checkpointing under it, and it notices a
//     writer that attaches, appends or restarts the WAL; so every
//     committed frame of the WAL is read, as a plain reader would.
//  3. immutable=1, only where db.sqlite-wal is absent or holds no frame
//     (32 bytes or less): the main file is then the whole database. This
//     is the way left where db.sqlite-shm cannot even be created (no free
//     inode, a read-only file system, no write access to the directory,
//     as for a user other than the store's owner). SQLite takes no lock
//     at all then: a writer that starts during the run is not seen (the
//     run reads the database as it was before), and one that checkpoints
//     its transactions into the main file while the run reads it (Nix
//     does when its last connection closes) can make SQLite read a mix
//     of old and new pages: a wrong result or a corruption error. Nothing
//     is written either way. On a full disk no writer can start (it would
//     need db.sqlite-shm too).
//
// Otherwise the database is refused, never read without its WAL: a
// committed transaction may be only there. The error says why: the disk
// is full (ErrDiskFull), the directory is on a read-only file system
// (ErrReadOnlyFS), or access is denied.
//
// None of these takes an exclusive lock (a locking_mode=EXCLUSIVE
// connection keeps the WAL index in its own memory, but holds the
// database's EXCLUSIVE lock until it closes: every nix-daemon client
// would wait for the whole run), and none writes to the database.
func openReadOnly(ctx context.Context, dbPath string, o Options) (*sql.DB, string, error) {
	base := roURI(dbPath)
	bm := busyMillis(o)
	extra := ""
	err := probeRead(base, bm)
	if err != nil && shmUnusable(err) {
		first := err
		if fileExists(dbPath + "-shm") {
			extra = "&readonly_shm=1"
			err = probeRead(base+extra, bm)
		}
		if err != nil && !walHasFrames(dbPath) {
			extra = "&immutable=1"
			err = probeRead(base+extra, bm)
		}
		if err != nil {
			return nil, "", cannotReadError(dbPath, first)
		}
	}
	if err != nil {
		return nil, "", err
	}
	db, err := openSQL(ctx, dbPath, o, extra)
	if err != nil {
		return nil, "", err
	}
	return db, base + extra, nil
}

// probeRead opens uri read-only on a raw connection and reads the schema,
// which opens the WAL and maps its index: the first read of any command.
func probeRead(uri string, busyMillis int64) error {
	c, err := openRaw(uri, busyMillis)
	if err != nil {
		return err
	}
	defer c.close()
	return c.exec("select count(*) from sqlite_master")
}

// shmUnusable reports whether err from a plain read-only open may come
// from SQLite's failing to create, open or grow db.sqlite-shm or
// db.sqlite-wal (an I/O error, no space, a read-only file, a file it
// cannot open), so that another way of reading may work. Corruption,
// locks and the like are not retried.
func shmUnusable(err error) bool {
	switch ResultCode(err) & 0xff {
	case sqlite3.SQLITE_IOERR, sqlite3.SQLITE_FULL, sqlite3.SQLITE_READONLY, sqlite3.SQLITE_CANTOPEN:
		return true
	}
	return false
}

// walHeaderSize is the size of a WAL file's header; frames follow it.
const walHeaderSize = 32

// walHasFrames reports whether dbPath's WAL file may hold frames: it
// exists and is longer than its header (or cannot be examined).
func walHasFrames(dbPath string) bool {
	st, err := os.Lstat(dbPath + "-wal")
	if errors.Is(err, os.ErrNotExist) {
		return false
	}
	return err != nil || !st.Mode().IsRegular() || st.Size() > walHeaderSize
}

// minFreeForSQLite is the free space below which a failure to set up
// db.sqlite-shm is put down to a full disk: a reader needs 32 KiB for it.
const minFreeForSQLite = 1 << 20

// cannotReadError explains why no way of reading the database worked,
// from first, the error of the plain open: a read-only file system, a
// full disk, or what classifyDBError makes of it.
func cannotReadError(dbPath string, first error) error {
	dbDir := filepath.Dir(dbPath)
	why := fmt.Sprintf("SQLite cannot create %s-shm, the index it needs to read the transactions still in %s-wal", dbPath, dbPath)
	var st unix.Statfs_t
	if unix.Statfs(dbDir, &st) == nil {
		if st.Flags&unix.ST_RDONLY != 0 {
			return fs.ReadOnlyDirError(fs.ErrReadOnlyFS, dbDir, "", why, first, "")
		}
		avail := st.Bavail * uint64(st.Bsize)
		noInodes := st.Files > 0 && st.Ffree == 0
		if avail < minFreeForSQLite || noInodes {
			inodes := ""
			if noInodes {
				inodes = ", no free inodes"
			}
			return fmt.Errorf("%w: the disk holding %s is full (%d bytes free%s): %s (%w); free space or run storekeeper gc", fs.ErrDiskFull, dbDir, avail, inodes, why, first)
		}
	}
	return classifyDBError(dbPath, first)
}

func openSQL(ctx context.Context, dbPath string, o Options, roExtra string) (*sql.DB, error) {
	q := fmt.Sprintf("_busy_timeout=%d", busyMillis(o))
	if o.ReadOnly {
		q = "mode=ro" + roExtra + "&" + q + "&_query_only=1"
	} else {
		sync := syncPragma(o.FsyncMetadata)
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

// ResultCode is the SQLite result code (extended) an error carries from
// the driver or the raw connection, or 0.
func ResultCode(err error) int {
	var se interface{ Code() int } // *sqlite.Error, *rawError
	if errors.As(err, &se) {
		return se.Code()
	}
	return 0
}

// IsConstraintError reports whether err is SQLite's "constraint failed"
// (a foreign key, unique or not-null constraint).
func IsConstraintError(err error) bool {
	return ResultCode(err)&0xff == sqlite3.SQLITE_CONSTRAINT
}

// classifyDBError wraps a SQLite error in the matching sentinel with a
// message that says what to run next.
func classifyDBError(dbPath string, err error) error {
	for _, known := range []error{ErrNoDB, ErrSchemaVersion, ErrCorruptDB, ErrDBLocked, ErrDBAccess, ErrGraph, fs.ErrDiskFull, fs.ErrReadOnlyFS} {
		if errors.Is(err, known) {
			return err
		}
	}
	switch ResultCode(err) & 0xff {
	case sqlite3.SQLITE_NOTADB, sqlite3.SQLITE_CORRUPT:
		return fmt.Errorf("%w: %s: %w (nothing was changed; check it with sqlite3 %s 'pragma integrity_check' and restore it from a backup)", ErrCorruptDB, dbPath, err, dbPath)
	case sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED:
		return fmt.Errorf("%w: %s: %w (another process, usually nix-daemon, holds a long write transaction; try again later)", ErrDBLocked, dbPath, err)
	case sqlite3.SQLITE_FULL:
		return fmt.Errorf("%w: the disk holding %s is full: %w; free space (storekeeper gc) and try again", fs.ErrDiskFull, filepath.Dir(dbPath), err)
	case sqlite3.SQLITE_CANTOPEN, sqlite3.SQLITE_PERM, sqlite3.SQLITE_READONLY, sqlite3.SQLITE_AUTH:
		if ro, _ := fs.IsReadOnlyMount(filepath.Dir(dbPath)); ro {
			return fs.ReadOnlyDirError(fs.ErrReadOnlyFS, filepath.Dir(dbPath), "", "opening "+dbPath, err, "")
		}
		return fmt.Errorf("%w: %s: %w (%s)", ErrDBAccess, dbPath, err, accessHint(dbPath))
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
	out, err := validAmong(ctx, d.SQL, paths)
	if err != nil {
		return nil, classifyDBError(d.Path, err)
	}
	return out, nil
}
