package db

import (
	"context"
	"database/sql"
	"fmt"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"

	"storekeeper/lock"
)

// NixSchemaSQL is the schema Nix 2.8 creates a new database with: the
// statements as Nix runs them (sqlite_master then holds byte for byte
// what it holds in a database made by `nix-store --init`; a test
// compares them).
const NixSchemaSQL = `create table if not exists ValidPaths (
    id               integer primary key autoincrement not null,
    path             text unique not null,
    hash             text not null,
    registrationTime integer not null,
    deriver          text,
    narSize          integer,
    ultimate         integer, -- null implies "false"
    sigs             text, -- space-separated
    ca               text -- if not null, an assertion that the path is content-addressed; see ValidPathInfo
);

create table if not exists Refs (
    referrer  integer not null,
    reference integer not null,
    primary key (referrer, reference),
    foreign key (referrer) references ValidPaths(id) on delete cascade,
    foreign key (reference) references ValidPaths(id) on delete restrict
);

create index if not exists IndexReferrer on Refs(referrer);
create index if not exists IndexReference on Refs(reference);

create trigger if not exists DeleteSelfRefs before delete on ValidPaths
  begin
    delete from Refs where referrer = old.id and reference = old.id;
  end;

create table if not exists DerivationOutputs (
    drv  integer not null,
    id   text not null, -- symbolic output id, usually "out"
    path text not null,
    primary key (drv, id),
    foreign key (drv) references ValidPaths(id) on delete cascade
);

create index if not exists IndexDerivationOutputs on DerivationOutputs(path);
`

// CreateOptions are Create's parameters.
type CreateOptions struct {
	Options
	// ReservedSize is the size of db/reserved (nix.conf's
	// gc-reserved-space), the space freed before a gc on a full disk.
	ReservedSize uint64
}

// Create makes the database of a new store in dbDir as Nix 2.8's
// LocalStore does when db/schema does not exist (a new store): the
// directory, db/reserved (ReservedSize bytes; a failure there is ignored,
// as by Nix), db/big-lock (held shared meanwhile), db.sqlite with Nix's
// schema (created if missing; its statements are "if not exists", so a
// database a killed Create left is completed), the journal mode of
// use-sqlite-wal, then db/schema, "10", last: until it exists the store
// is new to Nix and to Open, and a kill at any instant leaves a store the
// next Create (or Nix) finishes. A dbDir whose db/schema exists is left
// alone.
func Create(ctx context.Context, dbDir string, o CreateOptions) error {
	schemaPath := filepath.Join(dbDir, "schema")
	if _, err := os.Lstat(schemaPath); err == nil {
		return nil
	}
	if err := os.MkdirAll(dbDir, 0o755); err != nil {
		return fmt.Errorf("%w: creating %s: %w", ErrDBAccess, dbDir, err)
	}
	reserved := filepath.Join(dbDir, "reserved")
	if st, err := os.Stat(reserved); err != nil || uint64(st.Size()) != o.ReservedSize {
		if fd, err := unix.Open(reserved, unix.O_WRONLY|unix.O_CREAT|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600); err == nil {
			if unix.Fallocate(fd, 0, 0, int64(o.ReservedSize)) != nil {
				unix.Ftruncate(fd, int64(o.ReservedSize))
			}
			unix.Close(fd)
		}
	}
	bl, err := lock.AcquireBigLock(ctx, dbDir, lock.Shared, false)
	if err != nil {
		return fmt.Errorf("%w: taking %s: %w", ErrDBAccess, filepath.Join(dbDir, "big-lock"), err)
	}
	defer bl.Release()
	setTempDir(dbDir, true) // SQLite's temporary files: see tempdir.go
	dbPath := filepath.Join(dbDir, "db.sqlite")
	sync := "normal"
	if !o.FsyncMetadata {
		sync = "off"
	}
	sdb, err := sql.Open("sqlite", "file:"+uriPath(dbPath)+fmt.Sprintf("?mode=rwc&_busy_timeout=%d&_foreign_keys=1&_synchronous=%s", busyMillis(o.Options), sync))
	if err != nil {
		return classifyDBError(dbPath, err)
	}
	defer sdb.Close()
	sdb.SetMaxOpenConns(1)
	if err := setJournalMode(ctx, sdb, o.UseWAL); err != nil {
		return classifyDBError(dbPath, err)
	}
	if _, err := sdb.ExecContext(ctx, NixSchemaSQL); err != nil {
		return classifyDBError(dbPath, err)
	}
	if err := sdb.Close(); err != nil {
		return classifyDBError(dbPath, err)
	}
	// As Nix's writeFile: "10", no newline, 0666 less the umask.
	tmp := schemaPath + ".tmp"
	if err := os.WriteFile(tmp, []byte(fmt.Sprint(SchemaNix)), 0o666); err != nil {
		return fmt.Errorf("%w: writing %s: %w", ErrDBAccess, schemaPath, err)
	}
	if err := os.Rename(tmp, schemaPath); err != nil {
		return fmt.Errorf("%w: writing %s: %w", ErrDBAccess, schemaPath, err)
	}
	return nil
}
