package db

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"modernc.org/libc"
	sqlite3 "modernc.org/sqlite/lib"
)

// tempDirFixture makes n databases (each a state dir's db) and forgets
// which directory SQLite's temporary files go to, as in a new process;
// the setting is restored when the test ends.
func tempDirFixture(t *testing.T, n int) []string {
	t.Helper()
	if os.Getenv("SQLITE_TMPDIR") != "" {
		t.Skip("SQLITE_TMPDIR is set: it wins over the database directory")
	}
	var dirs []string
	for i := 0; i < n; i++ {
		d := filepath.Join(t.TempDir(), "var", "nix", "db")
		if err := Create(context.Background(), d, CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		dirs = append(dirs, d)
	}
	saved := sqlite3.Xsqlite3_temp_directory
	tempDirMu.Lock()
	savedRW, savedSet := tempDirRW, tempDirSet
	sqlite3.Xsqlite3_temp_directory, tempDirRW, tempDirSet = 0, false, false
	tempDirMu.Unlock()
	t.Cleanup(func() {
		tempDirMu.Lock()
		sqlite3.Xsqlite3_temp_directory, tempDirRW, tempDirSet = saved, savedRW, savedSet
		tempDirMu.Unlock()
	})
	return dirs
}

func currentTempDirGlobal() string {
	if p := sqlite3.Xsqlite3_temp_directory; p != 0 {
		return libc.GoString(p)
	}
	return ""
}

// TestTempDirFollowsTheWrittenStore: a process that opens a store
// read-only and then another read-write (copy: the source, then the
// target) puts SQLite's temporary files on the written store's file
// system, not on the source's (which copy must not write to, and which
// may be a read-only mount or full).
func TestTempDirFollowsTheWrittenStore(t *testing.T) {
	dirs := tempDirFixture(t, 2)
	ctx := context.Background()
	src, err := Open(ctx, dirs[0], Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	if got := TempDir(); got != dirs[0] {
		t.Fatalf("after the read-only open: temporary files in %q, want %q", got, dirs[0])
	}
	dst, err := Open(ctx, dirs[1], Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer dst.Close()
	if got := TempDir(); got != dirs[1] {
		t.Fatalf("after the read-write open of a second store: temporary files in %q, want the written store's %q", got, dirs[1])
	}
	// A later read-only open (another source) leaves it where writes go.
	src2, err := Open(ctx, dirs[0], Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	src2.Close()
	if got := TempDir(); got != dirs[1] {
		t.Fatalf("a read-only open moved the temporary files from the written store's %q to %q", dirs[1], got)
	}
}

// TestTempDirUnusableFirst: when the first database's directory will not
// do (here: a symbolic link, which is never taken), the next database's
// directory is taken; the first does not leave the process on /var/tmp.
func TestTempDirUnusableFirst(t *testing.T) {
	dirs := tempDirFixture(t, 2)
	link := filepath.Join(t.TempDir(), "db-link")
	if err := os.Symlink(dirs[0], link); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	d, err := Open(ctx, link, Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	d.Close()
	if got := currentTempDirGlobal(); got != "" {
		t.Fatalf("a database directory reached through a symbolic link became SQLite's temporary directory %q", got)
	}
	d, err = Open(ctx, dirs[1], Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	d.Close()
	if got := TempDir(); got != dirs[1] {
		t.Fatalf("temporary files in %q, want the second database's %q", got, dirs[1])
	}
}

// TestTempDirOtherUsersDir: root opening a store whose database directory
// belongs to another user (a single-user install; gc or vacuum from a
// root timer) still puts SQLite's temporary files there, not in /var/tmp:
// SQLite creates them with O_TMPFILE|O_EXCL, nameless, so nothing with a
// name is created in the other user's directory and there is nothing to
// race. Only where O_TMPFILE works there (tested first) is it taken.
func TestTempDirOtherUsersDir(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to give the directory to another user")
	}
	dirs := tempDirFixture(t, 1)
	for _, p := range []string{dirs[0], filepath.Dir(dirs[0]), filepath.Dir(filepath.Dir(dirs[0]))} {
		if err := os.Chown(p, 4242, 4242); err != nil {
			t.Fatal(err)
		}
	}
	d, err := Open(context.Background(), dirs[0], Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if got := TempDir(); got != dirs[0] {
		t.Fatalf("root on another user's store: temporary files in %q, want its database directory %q", got, dirs[0])
	}
}
