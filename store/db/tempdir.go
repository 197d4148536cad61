package db

import (
	"os"
	"sync"

	"golang.org/x/sys/unix"
	"modernc.org/libc"
	sqlite3 "modernc.org/sqlite/lib"
)

// SQLite's temporary files (the sorter's spill files, statement
// journals, temporary indices, VACUUM's copy of the database) go into the
// directory os_unix.c's unixTempFileDir picks, the first of these that is
// a directory this process may write into and search:
//
//  1. sqlite3_temp_directory, the library's global (which the deprecated
//     PRAGMA temp_store_directory also sets);
//  2. $SQLITE_TMPDIR;
//  3. $TMPDIR;
//  4. /var/tmp, /usr/tmp, /tmp;
//  5. ".".
//
// That is the order in modernc.org/sqlite v1.61.1 (lib: _unixTempFileDir,
// SQLite 3.54.1 translated to Go), which reads the environment through its
// own C-library copy of it, taken once, when the first SQLite connection
// of the process opens (modernc.org/libc's environ is os.Environ() at the
// first NewTLS): setting SQLITE_TMPDIR with os.Setenv after that changes
// nothing. So storekeeper sets the global instead: the first database
// this process opens (Open, Create, Vacuum), before any connection to it,
// makes its own database directory (<state dir>/db) SQLite's temporary
// directory for the whole process. A full /var/tmp or /tmp (a full root
// file system) then stops no command, and VACUUM's copy is made on the
// file system the database is on, where Vacuum checks the free space.
//
// Exceptions: when $SQLITE_TMPDIR is set the administrator chose, and
// SQLite goes on using it (and its fallbacks); when the first database
// directory is not writable by this process (a read-only command as
// another user, a read-only mount), or is not this user's alone (root on
// a single-user store: root creates nothing in a directory another user
// controls; a directory others may write into; a symbolic link), nothing
// is set and SQLite falls back to $TMPDIR and /var/tmp as before.
// The global is written once, never while a connection of this package
// is open (a later database, as copy's target, shares the first one's
// directory). On Linux SQLite opens each temporary file with O_TMPFILE
// in that directory (unixOpen; seen with strace: one for VACUUM's copy),
// so it has no name, no other process can open it, and a kill leaves
// nothing behind; only where the file system lacks O_TMPFILE does SQLite
// create a named file (etilqs_…, O_EXCL|O_NOFOLLOW) and unlink it at once.

var tempDirOnce sync.Once

// setTempDir makes dbDir SQLite's temporary directory for this process,
// the first time it is called (see above); later calls do nothing.
func setTempDir(dbDir string) {
	tempDirOnce.Do(func() {
		if os.Getenv("SQLITE_TMPDIR") != "" || !usableTempDir(dbDir) || !ownDir(dbDir) {
			return
		}
		p, err := libc.CString(dbDir)
		if err != nil {
			return
		}
		// Never freed: SQLite reads it for the life of the process.
		sqlite3.Xsqlite3_temp_directory = p
	})
}

// usableTempDir reports whether SQLite's unixTempFileDir would take dir:
// a directory (stat follows symbolic links, as SQLite's does) that this
// process may write into and search (access(2) W_OK|X_OK).
func usableTempDir(dir string) bool {
	var st unix.Stat_t
	if unix.Stat(dir, &st) != nil || st.Mode&unix.S_IFMT != unix.S_IFDIR {
		return false
	}
	return unix.Access(dir, unix.W_OK|unix.X_OK) == nil
}

// ownDir reports whether dir belongs to this process's user and no one
// else may write into it: root creates no file in a directory another
// user controls (a single-user store's, where SQLite falls back to a
// named temporary file on a file system without O_TMPFILE).
func ownDir(dir string) bool {
	var st unix.Stat_t
	if unix.Lstat(dir, &st) != nil || st.Mode&unix.S_IFMT != unix.S_IFDIR {
		return false
	}
	return int(st.Uid) == os.Geteuid() && st.Mode&0o022 == 0
}

// TempDir returns the directory SQLite puts this process's temporary
// files in now, found as unixTempFileDir finds it (see above), or "" if
// none would do. It is a snapshot: the answer can change when a directory
// appears, goes or changes mode.
func TempDir() string {
	var cands []string
	if p := sqlite3.Xsqlite3_temp_directory; p != 0 {
		cands = append(cands, libc.GoString(p))
	}
	for _, v := range []string{"SQLITE_TMPDIR", "TMPDIR"} {
		if d := os.Getenv(v); d != "" {
			cands = append(cands, d)
		}
	}
	cands = append(cands, "/var/tmp", "/usr/tmp", "/tmp", ".")
	for _, d := range cands {
		if usableTempDir(d) {
			return d
		}
	}
	return ""
}
