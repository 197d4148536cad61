package db

import (
	"context"
	"fmt"
	"sync"
	"time"
	"unsafe"

	"modernc.org/libc"
	"modernc.org/libc/sys/types"
	sqlite3 "modernc.org/sqlite/lib"
)

// rawWriter is a read-write connection straight to the SQLite library,
// for Register's bulk writes: it skips what the same statements cost
// through database/sql and the driver (every value converted and checked,
// every text copied into a fresh C allocation, the driver's mutex and the
// context's watcher around every call), and its connection is one
// Register configures for a bulk write.
// It holds no lock of its own beyond SQLite's: the DB it was opened
// from holds the big-lock. One goroutine at a time.
type rawWriter struct {
	c *rawConn
	// mu and closed keep ctx's interruption from touching a closed
	// connection.
	mu     sync.Mutex
	closed bool
	stop   func() bool
}

// openRawWriter opens d's file read-write as d's own read-write
// connections are (busy timeout, synchronous, cache size, WAL
// autocheckpoint), with SQLite's foreign key enforcement off unless the
// schema has foreign keys other than Refs' and DerivationOutputs' into
// ValidPaths (see InvalidationConn): the caller writes only rows whose
// keys it has checked. A cancelled ctx interrupts the statement running
// (SQLITE_INTERRUPT).
func (d *DB) openRawWriter(ctx context.Context) (*rawWriter, error) {
	c, err := openRawFlags("file:"+uriPath(d.Path)+"?mode=rw", d.busyMillis,
		sqlite3.SQLITE_OPEN_READWRITE|sqlite3.SQLITE_OPEN_URI|sqlite3.SQLITE_OPEN_NOMUTEX)
	if err != nil {
		return nil, err
	}
	w := &rawWriter{c: c}
	fk := "off"
	n, err := w.queryInt(unknownForeignKeys)
	if err != nil {
		c.close()
		return nil, err
	}
	if n > 0 {
		fk = "on"
	}
	// A 4 MiB page cache, not the pool's 32 MiB: a big batch then
	// spills its dirty pages into the WAL as it goes (still committed or
	// not as a whole), and the pages SQLite takes from the C allocator,
	// one mapping each and unmapped at close, cost more than that: 63k
	// paths take a third less CPU.
	if err := c.exec(fmt.Sprintf("pragma synchronous = %s; pragma cache_size = -4096; pragma wal_autocheckpoint = 40000; pragma foreign_keys = %s", d.syncMode(), fk)); err != nil {
		c.close()
		return nil, err
	}
	// A database not in WAL mode: a rollback journal truncated after each
	// transaction, as Nix's connections keep it (use-sqlite-wal false).
	if mode, err := w.queryText("pragma journal_mode"); err != nil || (mode != "wal" && mode != "truncate") {
		if err == nil {
			err = c.exec("pragma journal_mode = truncate")
		}
		if err != nil {
			c.close()
			return nil, err
		}
	}
	w.stop = context.AfterFunc(ctx, func() {
		w.mu.Lock()
		defer w.mu.Unlock()
		if !w.closed {
			tls := libc.NewTLS() // not c.tls: the statement runs on it
			sqlite3.Xsqlite3_interrupt(tls, c.db)
			tls.Close()
		}
	})
	return w, nil
}

func (w *rawWriter) close() {
	w.stop()
	w.mu.Lock()
	w.closed = true
	w.mu.Unlock()
	w.c.close()
}

// queryInt runs a query whose first column of its first row is an
// integer.
func (w *rawWriter) queryInt(sql string) (int64, error) {
	s, err := w.c.prepare(sql)
	if err != nil {
		return 0, err
	}
	defer s.close()
	ok, err := s.next()
	if err != nil || !ok {
		return 0, err
	}
	return s.int64(0), nil
}

// queryText runs a query whose first column of its first row is text.
func (w *rawWriter) queryText(sql string) (string, error) {
	s, err := w.c.prepare(sql)
	if err != nil {
		return "", err
	}
	defer s.close()
	ok, err := s.next()
	if err != nil || !ok {
		return "", err
	}
	return string(s.text(0)), nil
}

// beginImmediate begins a write transaction, waiting for SQLite's write
// lock up to busyMillis: polling with the busy handler off, so that ctx
// ends the wait at once.
func (w *rawWriter) beginImmediate(ctx context.Context, busyMillis int64) error {
	c := w.c
	sqlite3.Xsqlite3_busy_timeout(c.tls, c.db, 0)
	defer sqlite3.Xsqlite3_busy_timeout(c.tls, c.db, int32(min(busyMillis, 1<<31-1)))
	deadline := time.Now().Add(time.Duration(busyMillis) * time.Millisecond)
	pause := time.Millisecond
	for {
		err := c.exec("begin immediate")
		if err != nil && ResultCode(err)&0xff == sqlite3.SQLITE_INTERRUPT && ctx.Err() != nil {
			// ctx's interrupt (a cancellation before or during the wait)
			return fmt.Errorf("waiting for the database's write lock: %w (%w)", ctx.Err(), err)
		}
		if err == nil || ResultCode(err)&0xff != sqlite3.SQLITE_BUSY || time.Now().After(deadline) {
			return err
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for the database's write lock: %w", ctx.Err())
		case <-time.After(pause):
		}
		pause = min(2*pause, 50*time.Millisecond)
	}
}

// rollback ends the transaction, if one is open, without its changes.
func (w *rawWriter) rollback() {
	if sqlite3.Xsqlite3_get_autocommit(w.c.tls, w.c.db) == 0 {
		w.c.exec("rollback")
	}
}

// rawWriteStmt is a prepared statement of a rawWriter with its own C
// buffer for the text it binds (SQLITE_STATIC: valid until the next row
// is bound).
type rawWriteStmt struct {
	*rawStmt
	buf    uintptr
	bufCap int
}

func (w *rawWriter) prepare(sql string) (*rawWriteStmt, error) {
	s, err := w.c.prepare(sql)
	if err != nil {
		return nil, err
	}
	return &rawWriteStmt{rawStmt: s}, nil
}

func (s *rawWriteStmt) close() {
	if s.buf != 0 {
		libc.Xfree(s.c.tls, s.buf)
		s.buf = 0
	}
	s.rawStmt.close()
}

// bind binds args (int64, string, or nil for NULL) to the statement's
// parameters 1..len(args), after resetting it.
func (s *rawWriteStmt) bind(args ...any) error {
	tls, p := s.c.tls, s.p
	sqlite3.Xsqlite3_reset(tls, p)
	need := 0
	for _, a := range args {
		if t, ok := a.(string); ok {
			need += len(t) + 1
		}
	}
	if need > s.bufCap {
		if s.buf != 0 {
			libc.Xfree(tls, s.buf)
		}
		c := max(need, 2*s.bufCap, 512)
		if s.buf = libc.Xmalloc(tls, types.Size_t(c)); s.buf == 0 {
			s.bufCap = 0
			return fmt.Errorf("store: sqlite: out of memory")
		}
		s.bufCap = c
	}
	off := 0
	for i, a := range args {
		var rc int32
		switch v := a.(type) {
		case nil:
			rc = sqlite3.Xsqlite3_bind_null(tls, p, int32(i+1))
		case int64:
			rc = sqlite3.Xsqlite3_bind_int64(tls, p, int32(i+1), v)
		case string:
			dst := s.buf + uintptr(off)
			copy(unsafe.Slice((*byte)(cptr(dst)), len(v)), v)
			rc = sqlite3.Xsqlite3_bind_text(tls, p, int32(i+1), dst, int32(len(v)), sqlite3.SQLITE_STATIC)
			off += len(v) + 1
		default:
			return fmt.Errorf("store: sqlite: cannot bind %T", a)
		}
		if rc != sqlite3.SQLITE_OK {
			return s.c.err(rc)
		}
	}
	return nil
}

// exec binds args and runs the statement, which returns no rows.
func (s *rawWriteStmt) exec(args ...any) error {
	if err := s.bind(args...); err != nil {
		return err
	}
	if rc := sqlite3.Xsqlite3_step(s.c.tls, s.p); rc != sqlite3.SQLITE_DONE {
		return s.c.err(rc)
	}
	return nil
}

// lastInsertID is the rowid of the last row the connection inserted.
func (w *rawWriter) lastInsertID() int64 {
	return sqlite3.Xsqlite3_last_insert_rowid(w.c.tls, w.c.db)
}

// pathIDs is pathIDs on the rawWriter (in its transaction): the ids of
// the valid ones of paths, with one query per invalidateChunk paths.
func (w *rawWriter) pathIDs(paths []string) (map[string]int64, error) {
	out := make(map[string]int64, len(paths))
	var full *rawWriteStmt
	defer func() {
		if full != nil {
			full.close()
		}
	}()
	args := make([]any, 0, invalidateChunk)
	for i := 0; i < len(paths); i += invalidateChunk {
		part := paths[i:min(i+invalidateChunk, len(paths))]
		s := full
		if len(part) < invalidateChunk || full == nil {
			var err error
			if s, err = w.prepare(pathIDsQuery(len(part))); err != nil {
				return nil, err
			}
			if len(part) == invalidateChunk {
				full = s
			} else {
				defer s.close()
			}
		}
		args = args[:0]
		for _, p := range part {
			args = append(args, p)
		}
		if err := s.bind(args...); err != nil {
			return nil, err
		}
		for {
			ok, err := s.next()
			if err != nil {
				return nil, err
			}
			if !ok {
				break
			}
			out[string(s.text(1))] = s.int64(0)
		}
	}
	return out, nil
}
