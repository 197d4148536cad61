package db

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"

	"storekeeper/lock"
	"storekeeper/report"
	"storekeeper/store/fs"
)

// ErrIntegrity is wrapped (with ErrCorruptDB) by Vacuum's error when
// PRAGMA integrity_check reports problems; the result's Integrity holds
// them and the database was not vacuumed.
var ErrIntegrity = errors.New("store: database integrity check found problems")

// VacuumOptions control Vacuum.
type VacuumOptions struct {
	// Timeout is how long to wait for db/big-lock held exclusively while
	// other processes (Nix's, storekeeper's) hold it; 0 makes one attempt.
	Timeout time.Duration
	// Check runs PRAGMA integrity_check first; a database with problems
	// is not vacuumed.
	Check bool
	// UseWAL is nix.conf's use-sqlite-wal: the journal mode is set as
	// Nix sets it on every open. BusyTimeout is as in Options.
	UseWAL      bool
	BusyTimeout time.Duration
	// Printer receives the wait (who holds the lock) and the start of the
	// VACUUM; nil prints nothing.
	Printer report.Printer
	// ProcDir is where Holders reads locks and command lines ("" is
	// /proc).
	ProcDir string
}

// VacuumResult is what Vacuum did. Sizes are those of db.sqlite,
// db.sqlite-wal and db.sqlite-shm together.
type VacuumResult struct {
	DBPath string `json:"db_path"`
	// TempDir is where SQLite put its temporary copy (see tempdir.go).
	TempDir  string `json:"temp_dir"`
	Vacuumed bool   `json:"vacuumed"`
	// Integrity holds PRAGMA integrity_check's rows (["ok"] for an intact
	// database), nil when it was not asked for.
	Integrity       []string `json:"integrity"`
	SizeBeforeBytes int64    `json:"size_before_bytes"`
	SizeAfterBytes  int64    `json:"size_after_bytes"`
	LockWaitSeconds float64  `json:"lock_wait_seconds"`
	ElapsedSeconds  float64  `json:"elapsed_seconds"`
}

// Vacuum rebuilds the database in dbDir with SQLite's VACUUM, which
// gives the pages of deleted rows (a large gc's) back to the file system,
// with db/big-lock held exclusively: Nix holds it shared in every process
// that has the database open, so while Vacuum runs no Nix process has it
// open, and each that starts waits ("waiting for the big Nix store
// lock..."). It waits up to o.Timeout for the lock, telling o.Printer who
// holds it (pid, command line) when it starts waiting and when that
// changes; when the time is up it fails with an error wrapping a
// *lock.HeldError that names them, having changed nothing.
//
// With o.Check it first runs PRAGMA integrity_check and, if that reports
// anything but "ok", returns the rows in the result and an error wrapping
// ErrIntegrity and ErrCorruptDB, without vacuuming. Before VACUUM it
// checks the free space VACUUM needs (the pages in use, once for SQLite's
// temporary copy in TempDir and once for the WAL or rollback journal
// beside the database; twice on one file system) and refuses with
// fs.ErrDiskFull, changing nothing, when there is less. In WAL mode the
// WAL is then checkpointed and truncated, so the size after is the new
// database's.
//
// Crashes: VACUUM is one SQLite transaction, run with synchronous=FULL
// whatever fsync-metadata says (it rewrites every page): a kill, or a
// power cut, at any instant leaves the old database or the new one, the
// way SQLite's journaling leaves any transaction. Cancelling ctx
// interrupts the wait or the running statement; the transaction is then
// rolled back and the database is as it was. Nothing else is written but
// db/big-lock (created as Nix creates it, if missing) and the files
// SQLite itself keeps beside the database.
//
// The caller needs write access to the database directory and its
// parent: without it Vacuum fails at once with ErrDBAccess (or
// fs.ErrReadOnlyFS), before taking any lock.
func Vacuum(ctx context.Context, dbDir string, o VacuumOptions) (*VacuumResult, error) {
	start := time.Now()
	dbPath := filepath.Join(dbDir, "db.sqlite")
	res := &VacuumResult{DBPath: dbPath}
	if _, err := preflight(dbDir, true); err != nil {
		return nil, err
	}

	bl, waited, err := lockBigExclusive(ctx, dbDir, o)
	res.LockWaitSeconds = waited.Seconds()
	if err != nil {
		return res, err
	}
	defer bl.Close() // closing the descriptor releases the lock
	res.SizeBeforeBytes = dbFilesSize(dbPath)

	err = vacuumLocked(ctx, dbPath, o, res)
	// Measured after the last connection closed: SQLite then checkpoints
	// and removes db.sqlite-wal and db.sqlite-shm.
	res.SizeAfterBytes = dbFilesSize(dbPath)
	res.ElapsedSeconds = time.Since(start).Seconds()
	return res, err
}

// vacuumLocked is Vacuum once db/big-lock is held exclusively: open,
// check, measure the free space, VACUUM, checkpoint, close.
func vacuumLocked(ctx context.Context, dbPath string, o VacuumOptions, res *VacuumResult) (err error) {
	sdb, err := openSQL(ctx, dbPath, Options{BusyTimeout: o.BusyTimeout, FsyncMetadata: true}, "")
	if err != nil {
		return classifyDBError(dbPath, err)
	}
	defer func() {
		if cerr := sdb.Close(); cerr != nil && err == nil {
			err = classifyDBError(dbPath, cerr)
		}
	}()
	d := &DB{SQL: sdb, Path: dbPath}
	if err := d.inspectColumns(ctx); err != nil {
		return classifyDBError(dbPath, err)
	}
	if err := setJournalMode(ctx, sdb, o.UseWAL); err != nil {
		return classifyDBError(dbPath, err)
	}
	conn, err := sdb.Conn(ctx)
	if err != nil {
		return classifyDBError(dbPath, err)
	}
	defer conn.Close()
	// VACUUM rewrites every page: every commit and checkpoint synced. It
	// reads each page once and writes its copy (which gets this cache
	// size) in order: a 4 MiB cache does as well as a big one, and the
	// copy of any database but a tiny one spills into its temporary file.
	for _, q := range []string{"pragma synchronous = full", "pragma cache_size = -4096"} {
		if _, err := conn.ExecContext(ctx, q); err != nil {
			return classifyDBError(dbPath, err)
		}
	}
	if o.Check {
		rows, err := integrityCheck(ctx, conn)
		if err != nil {
			return classifyDBError(dbPath, err)
		}
		res.Integrity = rows
		if len(rows) != 1 || rows[0] != "ok" {
			return fmt.Errorf("%w: %w: %s: %d problem(s), first: %s; it was not vacuumed (restore it from a backup, or rebuild it from the store: see 'nix-store --dump-db' and '--load-db')",
				ErrCorruptDB, ErrIntegrity, dbPath, len(rows), report.Text(rows[0]))
		}
	}
	used, err := pagesInUse(ctx, conn)
	if err != nil {
		return classifyDBError(dbPath, err)
	}
	res.TempDir = TempDir()
	if err := checkVacuumSpace(filepath.Dir(dbPath), res.TempDir, used); err != nil {
		return err
	}
	if o.Printer != nil {
		o.Printer.Info(fmt.Sprintf("vacuuming %s (%s in use of %s; temporary copy in %s)",
			report.Name(dbPath), report.FormatSize(uint64(used)), report.FormatSize(uint64(res.SizeBeforeBytes)), report.Name(res.TempDir)))
	}
	if _, err := conn.ExecContext(ctx, "vacuum"); err != nil {
		return classifyDBError(dbPath, err)
	}
	res.Vacuumed = true
	if o.UseWAL {
		var busy, logFrames, done int64
		if err := conn.QueryRowContext(ctx, "pragma wal_checkpoint(truncate)").Scan(&busy, &logFrames, &done); err != nil {
			return classifyDBError(dbPath, err)
		}
		if busy != 0 && o.Printer != nil {
			// A reader that holds no big-lock (an immutable or
			// lock-less read-only open) keeps part of the WAL.
			o.Printer.Warn(fmt.Sprintf("the WAL of %s could not be checkpointed completely (a reader without the big-lock); the next Nix process does it", report.Name(dbPath)), dbPath)
		}
	}
	return nil
}

// integrityCheck runs PRAGMA integrity_check (at most its default 100
// rows, each cut at 4 KiB) and returns its rows.
func integrityCheck(ctx context.Context, conn *sql.Conn) ([]string, error) {
	rows, err := conn.QueryContext(ctx, "pragma integrity_check")
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var s string
		if err := rows.Scan(&s); err != nil {
			return nil, err
		}
		if len(s) > 4096 {
			s = s[:4096] + "..."
		}
		out = append(out, s)
	}
	if err := rows.Err(); err != nil {
		return nil, err
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%w: pragma integrity_check returned nothing", ErrCorruptDB)
	}
	return out, nil
}

// pagesInUse returns the bytes of the database's pages that hold data
// (all pages but the free list's): about the size of VACUUM's copy.
func pagesInUse(ctx context.Context, conn *sql.Conn) (int64, error) {
	var size, count, free int64
	for _, q := range []struct {
		sql string
		v   *int64
	}{{"pragma page_size", &size}, {"pragma page_count", &count}, {"pragma freelist_count", &free}} {
		if err := conn.QueryRowContext(ctx, q.sql).Scan(q.v); err != nil {
			return 0, err
		}
	}
	return (count - free) * size, nil
}

// vacuumSlack is added to what VACUUM needs in each place: the WAL's
// frame headers (24 bytes a page), the schema, a margin.
func vacuumSlack(used int64) int64 { return used/64 + 4<<20 }

// checkVacuumSpace refuses (fs.ErrDiskFull) when the file systems of
// dbDir and tempDir have less free space than VACUUM needs: used bytes
// for the temporary copy in tempDir, and used bytes for the WAL (or the
// rollback journal) in dbDir; both on dbDir's file system when they
// share it. Free space is what an unprivileged user may use (f_bavail).
func checkVacuumSpace(dbDir, tempDir string, used int64) error {
	if tempDir == "" {
		return fmt.Errorf("%w: SQLite finds no writable directory for its temporary copy (not %s, $SQLITE_TMPDIR, $TMPDIR, /var/tmp, /usr/tmp or /tmp); nothing was changed", fs.ErrDiskFull, dbDir)
	}
	need := used + vacuumSlack(used)
	type place struct {
		dir, what string
		need      int64
	}
	places := []place{{dbDir, "the WAL beside the database", need}, {tempDir, "SQLite's temporary copy", need}}
	var a, b unix.Stat_t
	if unix.Stat(dbDir, &a) == nil && unix.Stat(tempDir, &b) == nil && a.Dev == b.Dev {
		places = []place{{dbDir, "the WAL beside the database and SQLite's temporary copy", 2 * need}}
	}
	for _, p := range places {
		var st unix.Statfs_t
		if err := unix.Statfs(p.dir, &st); err != nil {
			return fmt.Errorf("%w: statfs %s: %w", ErrDBAccess, p.dir, err)
		}
		free := int64(st.Bavail) * int64(st.Bsize)
		if free < p.need {
			return fmt.Errorf("%w: VACUUM needs about %s free in %s for %s (%s of pages in use), and %s is free; nothing was changed: free space (storekeeper gc), or point $SQLITE_TMPDIR at a file system with room for the temporary copy",
				fs.ErrDiskFull, report.FormatSize(uint64(p.need)), p.dir, p.what, report.FormatSize(uint64(used)), report.FormatSize(uint64(max(free, 0))))
		}
	}
	return nil
}

// dbFilesSize is the size of db.sqlite, db.sqlite-wal and db.sqlite-shm
// together (a missing one counts 0).
func dbFilesSize(dbPath string) int64 {
	var n int64
	for _, suffix := range []string{"", "-wal", "-shm"} {
		if st, err := os.Lstat(dbPath + suffix); err == nil {
			n += st.Size()
		}
	}
	return n
}

// vacuumPoll bounds how long the wait for the big-lock goes without
// looking again at who holds it.
const vacuumPoll = 2 * time.Second

// lockBigExclusive takes db/big-lock exclusively, waiting up to
// o.Timeout and telling o.Printer who holds it, and returns its open
// descriptor (closing it releases the lock) and how long it waited.
func lockBigExclusive(ctx context.Context, dbDir string, o VacuumOptions) (*os.File, time.Duration, error) {
	path := filepath.Join(dbDir, "big-lock")
	f, err := lock.OpenLockFile(path, true)
	if err != nil {
		return nil, 0, fmt.Errorf("%w: opening %s: %w", ErrDBAccess, path, err)
	}
	start := time.Now()
	err = lock.Lock(ctx, f, lock.Exclusive, false)
	if err == nil {
		return f, 0, nil
	}
	if !errors.Is(err, lock.ErrWouldBlock) {
		f.Close()
		return nil, 0, fmt.Errorf("%w: locking %s: %w", ErrDBAccess, path, err)
	}
	wctx, cancel := context.WithTimeout(ctx, o.Timeout)
	defer cancel()
	last := ""
	for o.Timeout > 0 {
		who := holdersText(o.ProcDir, path)
		if who != last && o.Printer != nil {
			o.Printer.Info(fmt.Sprintf("waiting up to %s for %s exclusively (so that no Nix process has the database open): held by %s",
				o.Timeout-time.Since(start).Truncate(time.Second), report.Name(path), who))
		}
		last = who
		sctx, scancel := context.WithTimeout(wctx, vacuumPoll)
		err = lock.Lock(sctx, f, lock.Exclusive, true)
		scancel()
		if err == nil {
			return f, time.Since(start), nil
		}
		if !errors.Is(err, context.DeadlineExceeded) || wctx.Err() != nil {
			break
		}
	}
	f.Close()
	waited := time.Since(start)
	he := &lock.HeldError{Path: path, Err: lock.ErrWouldBlock}
	if err := ctx.Err(); err != nil {
		he.Err = err
		return nil, waited, he
	}
	if o.Timeout > 0 {
		he.Err = context.DeadlineExceeded
	}
	return nil, waited, &waitError{
		msg: fmt.Sprintf("%s is held by %s (waited %s): a process has the database open; nothing was changed: stop them (for nix-daemon: 'systemctl stop nix-daemon.socket nix-daemon'), or retry with a longer --timeout",
			report.Name(path), holdersText(o.ProcDir, path), waited.Truncate(time.Millisecond)),
		held: he,
	}
}

// waitError is the end of a wait for a lock another process held: its
// own message, and the *lock.HeldError that says which lock.
type waitError struct {
	msg  string
	held *lock.HeldError
}

func (e *waitError) Error() string { return e.msg }
func (e *waitError) Unwrap() error { return e.held }

// holdersText names the holders of the lock at path as /proc/locks says
// ("PID 12 'nix-store --serve' (shared flock lock), ..."), command lines
// quoted with report.Name.
func holdersText(procDir, path string) string {
	hs, _ := lock.Holders(procDir, path)
	if len(hs) == 0 {
		return "a process /proc/locks does not name (see 'lslocks')"
	}
	return lock.DescribeHolders(hs, report.Name)
}
