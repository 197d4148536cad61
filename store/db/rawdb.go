package db

import (
	"fmt"
	"unsafe"

	"modernc.org/libc"
	sqlite3 "modernc.org/sqlite/lib"
)

// rawConn is a read-only connection straight to the SQLite library, for
// bulk reads of the whole database (LoadGraph). It skips what
// database/sql costs per row and column: boxing every value in an
// interface, a Go string per text column, and the connection mutex the
// driver takes around every call (it is opened SQLITE_OPEN_NOMUTEX). On a
// 300k-path store that is most of the load time.
//
// A rawConn must be used by one goroutine at a time. It reads under the
// same big-lock as the DB it was opened from.
type rawConn struct {
	tls *libc.TLS
	db  uintptr
}

// cptr turns an address in SQLite's memory (allocated by the C library
// emulation, outside the Go heap) into a pointer.
func cptr(p uintptr) unsafe.Pointer { return *(*unsafe.Pointer)(unsafe.Pointer(&p)) }

// rawError is an SQLite error from a rawConn; sqliteCode understands it.
type rawError struct {
	code int
	msg  string
}

func (e *rawError) Error() string { return e.msg }
func (e *rawError) Code() int     { return e.code }

// openRaw opens uri (an SQLite "file:" URI) read-only, with busy timeout
// busyMillis. The DB's raw connections open the URI its database/sql
// connections were opened with (see openReadOnly), so both read the file
// the same way.
func openRaw(uri string, busyMillis int64) (*rawConn, error) {
	return openRawFlags(uri, busyMillis, sqlite3.SQLITE_OPEN_READONLY|sqlite3.SQLITE_OPEN_URI|sqlite3.SQLITE_OPEN_NOMUTEX)
}

// openRawFlags is openRaw with sqlite3_open_v2's flags (Register's
// writer opens read-write).
func openRawFlags(uri string, busyMillis int64, flags int32) (*rawConn, error) {
	c := &rawConn{tls: libc.NewTLS()}
	curi, err := libc.CString(uri)
	if err != nil {
		c.tls.Close()
		return nil, err
	}
	defer libc.Xfree(c.tls, curi)
	pdb := libc.Xmalloc(c.tls, 8)
	if pdb == 0 {
		c.tls.Close()
		return nil, fmt.Errorf("store: sqlite: out of memory")
	}
	defer libc.Xfree(c.tls, pdb)
	*(*uintptr)(cptr(pdb)) = 0
	rc := sqlite3.Xsqlite3_open_v2(c.tls, curi, pdb, flags, 0)
	c.db = *(*uintptr)(cptr(pdb))
	if rc != sqlite3.SQLITE_OK {
		err := c.err(rc)
		c.close()
		return nil, err
	}
	// Extended codes (SQLITE_IOERR_SHMSIZE, not only SQLITE_IOERR), as the
	// database/sql driver reports them.
	sqlite3.Xsqlite3_extended_result_codes(c.tls, c.db, 1)
	sqlite3.Xsqlite3_busy_timeout(c.tls, c.db, int32(min(busyMillis, 1<<31-1)))
	return c, nil
}

func (c *rawConn) close() {
	if c.db != 0 {
		sqlite3.Xsqlite3_close_v2(c.tls, c.db)
		c.db = 0
	}
	if c.tls != nil {
		c.tls.Close()
		c.tls = nil
	}
}

func (c *rawConn) err(rc int32) error {
	msg := libc.GoString(sqlite3.Xsqlite3_errstr(c.tls, rc))
	if c.db != 0 {
		if m := libc.GoString(sqlite3.Xsqlite3_errmsg(c.tls, c.db)); m != "" && m != msg {
			msg += ": " + m
		}
	}
	return &rawError{code: int(rc), msg: fmt.Sprintf("%s (%d)", msg, rc)}
}

// exec runs statements that return no rows.
func (c *rawConn) exec(sql string) error {
	cs, err := libc.CString(sql)
	if err != nil {
		return err
	}
	defer libc.Xfree(c.tls, cs)
	if rc := sqlite3.Xsqlite3_exec(c.tls, c.db, cs, 0, 0, 0); rc != sqlite3.SQLITE_OK {
		return c.err(rc)
	}
	return nil
}

// rawStmt is a prepared statement of a rawConn.
type rawStmt struct {
	c *rawConn
	p uintptr
}

func (c *rawConn) prepare(sql string) (*rawStmt, error) {
	cs, err := libc.CString(sql)
	if err != nil {
		return nil, err
	}
	defer libc.Xfree(c.tls, cs)
	pp := libc.Xmalloc(c.tls, 8)
	if pp == 0 {
		return nil, fmt.Errorf("store: sqlite: out of memory")
	}
	defer libc.Xfree(c.tls, pp)
	if rc := sqlite3.Xsqlite3_prepare_v2(c.tls, c.db, cs, -1, pp, 0); rc != sqlite3.SQLITE_OK {
		return nil, c.err(rc)
	}
	return &rawStmt{c: c, p: *(*uintptr)(cptr(pp))}, nil
}

// next steps to the next row; false at the end.
func (s *rawStmt) next() (bool, error) {
	switch rc := sqlite3.Xsqlite3_step(s.c.tls, s.p); rc {
	case sqlite3.SQLITE_ROW:
		return true, nil
	case sqlite3.SQLITE_DONE:
		return false, nil
	default:
		return false, s.c.err(rc)
	}
}

func (s *rawStmt) int64(col int) int64 {
	return sqlite3.Xsqlite3_column_int64(s.c.tls, s.p, int32(col))
}

// text returns column col as bytes owned by SQLite: valid only until the
// next call on the statement. NULL gives nil.
func (s *rawStmt) text(col int) []byte {
	p := sqlite3.Xsqlite3_column_text(s.c.tls, s.p, int32(col))
	if p == 0 {
		return nil
	}
	n := sqlite3.Xsqlite3_column_bytes(s.c.tls, s.p, int32(col))
	return unsafe.Slice((*byte)(cptr(p)), n)
}

func (s *rawStmt) close() {
	if s.p != 0 {
		sqlite3.Xsqlite3_finalize(s.c.tls, s.p)
		s.p = 0
	}
}
