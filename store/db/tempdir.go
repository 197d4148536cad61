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
// directory for the whole process; a database opened read-write later
// (copy's target after its read-only source) moves it to its own, where
// the process writes; nothing moves it again after that. A full /var/tmp
// or /tmp (a full root file system) then stops no command, and VACUUM's
// copy is made on the file system the database is on, where Vacuum checks
// the free space.
//
// On Linux SQLite opens each temporary file with O_TMPFILE|O_EXCL in
// that directory (unixOpen; seen with strace: one for VACUUM's copy), so
// it has no name, no other process can open or link it, and a kill leaves
// nothing behind; only where the file system lacks O_TMPFILE does SQLite
// create a named file (etilqs_…, O_EXCL|O_NOFOLLOW) and unlink it at once.
//
// Exceptions: when $SQLITE_TMPDIR is set the administrator chose, and
// SQLite goes on using it (and its fallbacks). A database directory is
// not taken when this process may not write into it (a read-only command
// as another user, a read-only mount), when it is a symbolic link, or
// when it is not this user's alone (root on a single-user store; a
// directory others may write into) and O_TMPFILE does not work there:
// root creates no name in a directory another user controls. A later
// database's directory may then be taken; until one is, SQLite falls back
// to $TMPDIR and /var/tmp.

var (
	tempDirMu sync.Mutex
	// tempDirSet: this package set sqlite3_temp_directory; tempDirRW: to
	// the directory of a database opened read-write.
	tempDirSet, tempDirRW bool
)

// setTempDir makes dbDir SQLite's temporary directory for this process
// (see above) when it will do and none is set yet, or when only a
// read-only database's is set and dbDir's database is opened read-write
// (copy: the source, then the target; the temporary files then go to the
// file system the process writes, not to the source's). Otherwise it
// does nothing.
//
// Concurrency: the global is replaced (at most once, from a read-only
// database's directory to a read-write one's) while connections to the
// first database may be open and reading it in other goroutines: the
// value is one pointer, so such a reader sees the old string or the new
// one, and neither is ever freed.
func setTempDir(dbDir string, readWrite bool) {
	tempDirMu.Lock()
	defer tempDirMu.Unlock()
	if tempDirSet && (tempDirRW || !readWrite) {
		return
	}
	if os.Getenv("SQLITE_TMPDIR") != "" || !usableTempDir(dbDir) || !safeTempDir(dbDir) {
		return
	}
	p, err := libc.CString(dbDir)
	if err != nil {
		return
	}
	// Never freed: SQLite reads it for the life of the process.
	sqlite3.Xsqlite3_temp_directory = p
	tempDirSet, tempDirRW = true, readWrite
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

// safeTempDir reports whether SQLite's temporary files may go into dir
// (not a symbolic link): when it is this user's alone (no one else may
// write into it), or else when a nameless file can be made in it with
// O_TMPFILE|O_EXCL, as SQLite makes each of its temporary files on Linux
// (it is probed here, on dir's file system): root then creates no name in
// a directory another user controls (a single-user store's), so nothing
// can be raced or linked in, and the temporary files stay off /var/tmp.
// On a file system without O_TMPFILE SQLite would create a named file, so
// another user's directory is not taken there.
func safeTempDir(dir string) bool {
	var st unix.Stat_t
	if unix.Lstat(dir, &st) != nil || st.Mode&unix.S_IFMT != unix.S_IFDIR {
		return false
	}
	if int(st.Uid) == os.Geteuid() && st.Mode&0o022 == 0 {
		return true
	}
	fd, err := unix.Open(dir, unix.O_TMPFILE|unix.O_RDWR|unix.O_EXCL|unix.O_CLOEXEC|unix.O_NOFOLLOW, 0o600)
	if err != nil {
		return false
	}
	unix.Close(fd)
	return true
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
