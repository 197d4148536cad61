package store_test

import (
	"context"
	"errors"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	sqlite3 "modernc.org/sqlite/lib"

	"storekeeper/lock"
	"storekeeper/nix/nixconf"
	"storekeeper/store"
	"storekeeper/store/db"
	"storekeeper/store/storetest"
)

// TestErrorsKeepTheirCause: an error of the store layer wraps both its
// sentinel (what failed) and the error that caused it (why), so a caller
// can tell a cancelled wait from a locked or unreadable database, an errno
// from another, and SQLite's code, with errors.Is and errors.As; the
// message is unchanged.
func TestErrorsKeepTheirCause(t *testing.T) {
	cases := []struct {
		name     string
		run      func(t *testing.T, lay store.Layout) error
		sentinel error
		cause    func(error) bool
	}{
		{"big-lock wait cancelled", func(t *testing.T, lay store.Layout) error {
			held, err := lock.AcquireBigLock(context.Background(), lay.DBDir(), lock.Exclusive, false)
			if err != nil {
				t.Fatal(err)
			}
			defer held.Release()
			ctx, cancel := context.WithCancel(context.Background())
			time.AfterFunc(100*time.Millisecond, cancel)
			s, err := store.Open(ctx, store.Options{Layout: lay, Settings: nixconf.Default(true)})
			if err == nil {
				s.Close()
			}
			return err
		}, db.ErrDBAccess, is(context.Canceled)},
		{"db.sqlite a symlink loop", func(t *testing.T, lay store.Layout) error {
			os.Remove(lay.DBPath())
			symlink(t, "db.sqlite", lay.DBPath())
			_, err := storetest.OpenReadOnly(lay)
			return err
		}, db.ErrDBAccess, is(unix.ELOOP)},
		{"schema a directory", func(t *testing.T, lay store.Layout) error {
			p := filepath.Join(lay.DBDir(), "schema")
			os.Remove(p)
			os.Mkdir(p, 0o755)
			_, err := db.ReadSchemaVersion(lay.DBDir())
			return err
		}, db.ErrDBAccess, is(unix.EISDIR)},
		{"store dir a symlink loop", func(t *testing.T, lay store.Layout) error {
			os.Rename(lay.RealStoreDir, lay.RealStoreDir+".moved")
			symlink(t, filepath.Base(lay.RealStoreDir), lay.RealStoreDir)
			_, err := storetest.OpenReadOnly(lay)
			return err
		}, store.ErrNoStore, is(unix.ELOOP)},
		{"not a database", func(t *testing.T, lay store.Layout) error {
			os.WriteFile(lay.DBPath(), make([]byte, 8192), 0o644)
			os.Remove(lay.DBPath() + "-wal")
			os.Remove(lay.DBPath() + "-shm")
			_, err := storetest.OpenReadOnly(lay)
			return err
		}, db.ErrCorruptDB, sqliteCode(sqlite3.SQLITE_NOTADB)},
		{"include through a symlink loop", func(t *testing.T, lay store.Layout) error {
			dir := t.TempDir()
			symlink(t, "loop", filepath.Join(dir, "loop"))
			conf := filepath.Join(dir, "nix.conf")
			os.WriteFile(conf, []byte("include loop/other.conf\n"), 0o644)
			s := nixconf.Default(true)
			return s.ApplyFile(conf)
		}, nixconf.ErrBadConfig, is(unix.ELOOP)},
		{"bad escape in --store", func(t *testing.T, lay store.Layout) error {
			_, err := store.ResolveLayout(store.LayoutOptions{StoreURI: "local?root=/mnt%zz"})
			return err
		}, store.ErrBadStoreURI, as[url.EscapeError]},
		{"bad escape in a --store path", func(t *testing.T, lay store.Layout) error {
			_, err := store.ResolveLayout(store.LayoutOptions{StoreURI: "/mnt?state=%zz"})
			return err
		}, store.ErrBadStoreURI, as[url.EscapeError]},
		{"damaged store-fs record", func(t *testing.T, lay store.Layout) error {
			dir := t.TempDir()
			os.WriteFile(filepath.Join(dir, store.FSIdentityName), []byte("storekeeper store-fs 1\ntype twelve\n"), 0o644)
			_, _, err := store.LoadFSIdentity(dir)
			return err
		}, nil, is(strconv.ErrSyntax)},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			b := storetest.MustBuild(t, storetest.Spec{Paths: 3, Seed: 1, MaxDeps: 1, DBOnly: true})
			err := tc.run(t, b.Layout)
			if err == nil {
				t.Fatal("no error")
			}
			t.Logf("%v", err)
			if tc.sentinel != nil && !errors.Is(err, tc.sentinel) {
				t.Errorf("errors.Is(err, %v) is false", tc.sentinel)
			}
			if !tc.cause(err) {
				t.Errorf("the cause is not visible through the error (only in its text)")
			}
		})
	}
}

func is(target error) func(error) bool {
	return func(err error) bool { return errors.Is(err, target) }
}

func as[T error](err error) bool {
	var target T
	return errors.As(err, &target)
}

func sqliteCode(code int) func(error) bool {
	return func(err error) bool { return db.ResultCode(err)&0xff == code }
}

func symlink(t *testing.T, target, link string) {
	t.Helper()
	if err := os.Symlink(target, link); err != nil {
		t.Fatal(err)
	}
}
