package db

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"strings"
)

// Querier is what Invalidate runs its statements on: a transaction
// (*sql.Tx), or a connection (*sql.Conn) inside a transaction its caller
// began (ImmediateTx).
type Querier interface {
	ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error)
	QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
}

// ErrReferenced: a valid path outside the set being invalidated refers to
// a path in it (a path registered since the caller looked, such as a
// build's output).
var ErrReferenced = errors.New("store: a valid path outside the set refers to it")

// Referrer is a Refs row from a valid path outside an invalidated set to a
// path in it.
type Referrer struct {
	Reference int64  // the ValidPaths id in the set
	Referrer  string // the full store path of the valid path referring to it
}

// ReferencedError is Invalidate's error when valid paths outside the set
// refer into it. It wraps ErrReferenced and, when a foreign key constraint
// of the database found them, that error. The transaction must not be
// committed (Invalidate has deleted some of the set's rows in it).
type ReferencedError struct {
	Refs  []Referrer // may be empty when only the constraint error says so
	Cause error      // the constraint error, or nil
}

func (e *ReferencedError) Error() string {
	msg := ErrReferenced.Error()
	if len(e.Refs) > 0 {
		msg += fmt.Sprintf(" (%s refers to a path being invalidated", e.Refs[0].Referrer)
		if len(e.Refs) > 1 {
			msg += fmt.Sprintf(", and %d more rows", len(e.Refs)-1)
		}
		msg += ")"
	}
	if e.Cause != nil {
		msg += ": " + e.Cause.Error()
	}
	return msg
}

func (e *ReferencedError) Unwrap() []error {
	if e.Cause == nil {
		return []error{ErrReferenced}
	}
	return []error{ErrReferenced, e.Cause}
}

// invalidateChunk is how many paths one statement of Invalidate or
// ValidAmong names (SQLite's default limit on a statement's variables is
// 32766).
const invalidateChunk = 500

// Invalidate removes the paths ids (ValidPaths ids) from the database in
// the caller's transaction q, doing itself what the schema's foreign keys
// would and checking what they would check, in dependency order: the
// set's own Refs rows go first; then no Refs row may refer into the set
// (the "on delete restrict" of Refs.reference: a valid path outside the
// set still refers to it); then the set's DerivationOutputs rows (the "on
// delete cascade" of DerivationOutputs.drv) and its ValidPaths rows. So no
// row is left referring to a deleted path whether SQLite enforces the keys
// on q's connection or not (InvalidationConn turns enforcement off: on a
// 315k-path database SQLite's row-by-row enforcement was 5.7 s of a 14 s
// invalidation, against 0.4 s for the same checks here). A set whose
// paths refer to each other (a cycle) is invalidated whole.
//
// When a path outside the set refers into it, Invalidate returns a
// *ReferencedError naming every such row (also when a foreign key
// constraint of the database is what found it); some of the set's rows are
// then deleted in q, so the caller must roll back.
//
// pathOf(i) is the full store path of ids[i]. It is called only for the
// ids of a statement (invalidateChunk ids) in which some row was not there
// to delete (invalidated by another process meanwhile); of those, the
// paths valid again under a new id are returned (registered again since
// the caller read the ids): they are still valid and must be left in
// place.
//
// Cancellation: the first statement runs under ctx: it takes SQLite's
// write lock if q's transaction does not hold it yet, and may wait for it
// (up to the busy timeout) while a nix-daemon writes; cancelling ends the
// wait with an error, having changed nothing. The later statements run to
// the end whatever ctx says, so a transaction holding the write lock is
// never left half done by a cancellation; it is short.
//
// Crash safety is the transaction's: Invalidate commits nothing itself.
func Invalidate(ctx context.Context, q Querier, ids []int64, pathOf func(i int) string) (revalidated map[string]bool, err error) {
	tctx := context.WithoutCancel(ctx)
	parts := chunkIDs(ids)
	for i, part := range parts {
		sctx := tctx
		if i == 0 {
			sctx = ctx // may wait for the write lock
		}
		if _, err := q.ExecContext(sctx, "delete from Refs where referrer in ("+placeholders(len(part))+")", part...); err != nil {
			if ctx.Err() != nil {
				return nil, fmt.Errorf("waiting for the database's write lock: %w", ctx.Err())
			}
			return nil, fmt.Errorf("invalidating: %w", err)
		}
	}
	for _, part := range parts {
		var one int
		err := q.QueryRowContext(tctx, "select 1 from Refs where reference in ("+placeholders(len(part))+") limit 1", part...).Scan(&one)
		if err == nil {
			return nil, referenced(tctx, q, parts, nil)
		}
		if !errors.Is(err, sql.ErrNoRows) {
			return nil, fmt.Errorf("invalidating: %w", err)
		}
	}
	for _, part := range parts {
		if _, err := q.ExecContext(tctx, "delete from DerivationOutputs where drv in ("+placeholders(len(part))+")", part...); err != nil {
			return nil, fmt.Errorf("invalidating: %w", err)
		}
	}
	var missing []int // indexes of ids whose row was not found under that id
	for k, part := range parts {
		res, err := q.ExecContext(tctx, "delete from ValidPaths where id in ("+placeholders(len(part))+")", part...)
		if IsConstraintError(err) {
			return nil, referenced(tctx, q, parts, err)
		}
		if err != nil {
			return nil, fmt.Errorf("invalidating: %w", err)
		}
		if n, err := res.RowsAffected(); err != nil || n != int64(len(part)) {
			for j := range part {
				missing = append(missing, k*invalidateChunk+j)
			}
		}
	}
	paths := make([]string, len(missing))
	for j, k := range missing {
		paths[j] = pathOf(k)
	}
	revalidated, err = validAmong(tctx, q, paths)
	if err != nil {
		return nil, fmt.Errorf("invalidating: %w", err)
	}
	return revalidated, nil
}

// referenced builds the *ReferencedError of a set (parts) that valid paths
// outside it refer into, found by Invalidate's check or by a constraint
// error (cause). It runs in the same transaction, after the set's own Refs
// rows were deleted, so every Refs row still referring into the set comes
// from outside it. If the rows cannot be read, the error says so and
// keeps cause.
func referenced(ctx context.Context, q Querier, parts [][]any, cause error) error {
	e := &ReferencedError{Cause: cause}
	for _, part := range parts {
		rows, err := q.QueryContext(ctx, "select r.reference, v.path from Refs r join ValidPaths v on v.id = r.referrer where r.reference in ("+placeholders(len(part))+")", part...)
		if err != nil {
			return fmt.Errorf("invalidating: finding the paths that refer to the ones being invalidated: %w", errors.Join(err, e))
		}
		for rows.Next() {
			var r Referrer
			if err := rows.Scan(&r.Reference, &r.Referrer); err != nil {
				rows.Close()
				return fmt.Errorf("invalidating: %w", errors.Join(err, e))
			}
			e.Refs = append(e.Refs, r)
		}
		err = rows.Err()
		rows.Close()
		if err != nil {
			return fmt.Errorf("invalidating: %w", errors.Join(err, e))
		}
	}
	return e
}

// validAmong returns which of paths (full store paths) are registered in
// ValidPaths as q sees them, with one query per invalidateChunk paths
// (pathIDs).
func validAmong(ctx context.Context, q Querier, paths []string) (map[string]bool, error) {
	ids, err := pathIDs(ctx, q, paths)
	if err != nil {
		return nil, err
	}
	out := make(map[string]bool, len(ids))
	for p := range ids {
		out[p] = true
	}
	return out, nil
}

// chunkIDs splits ids into statement arguments of at most invalidateChunk.
func chunkIDs(ids []int64) [][]any {
	out := make([][]any, 0, (len(ids)+invalidateChunk-1)/invalidateChunk)
	for i := 0; i < len(ids); i += invalidateChunk {
		part := ids[i:min(i+invalidateChunk, len(ids))]
		args := make([]any, len(part))
		for j, id := range part {
			args[j] = id
		}
		out = append(out, args)
	}
	return out
}

func placeholders(n int) string {
	return "?" + strings.Repeat(",?", n-1)
}

// InvalidationConn returns a connection of the pool with SQLite's foreign
// key enforcement turned off, for Invalidate (which checks what the keys
// would, in a fraction of the time). done turns enforcement on again and
// returns the connection to the pool; if that fails the connection is
// discarded, so no other statement ever runs on it without enforcement.
//
// On a database with foreign keys Invalidate does not do itself (Nix's
// ca-derivations tables: Realisations.outputPath cascades from
// ValidPaths), enforcement stays on, so that SQLite deletes or refuses
// what those keys say (a refusal is Invalidate's *ReferencedError with
// the constraint error) instead of leaving rows that refer to paths no
// longer valid.
func (d *DB) InvalidationConn(ctx context.Context) (conn *sql.Conn, done func(), err error) {
	conn, err = d.SQL.Conn(ctx)
	if err != nil {
		return nil, nil, err
	}
	var unknown int
	if err := conn.QueryRowContext(ctx, unknownForeignKeys).Scan(&unknown); err != nil {
		conn.Close()
		return nil, nil, err
	}
	if unknown > 0 {
		return conn, func() { conn.Close() }, nil
	}
	if _, err := conn.ExecContext(ctx, "pragma foreign_keys = off"); err != nil {
		conn.Close()
		return nil, nil, err
	}
	return conn, func() {
		if _, err := conn.ExecContext(context.Background(), "pragma foreign_keys = on"); err != nil {
			conn.Raw(func(any) error { return driver.ErrBadConn }) // discard it
		}
		conn.Close()
	}, nil
}

// unknownForeignKeys counts the schema's foreign keys other than the
// ones Invalidate does itself (Refs.referrer, Refs.reference and
// DerivationOutputs.drv, into ValidPaths).
const unknownForeignKeys = `select count(*) from sqlite_master m, pragma_foreign_key_list(m.name) f
	where m.type = 'table' and not (f."table" = 'ValidPaths' and
		((m.name = 'Refs' and f."from" in ('referrer', 'reference')) or (m.name = 'DerivationOutputs' and f."from" = 'drv')))`

// ImmediateTx runs fn in a BEGIN IMMEDIATE transaction on one connection
// of the pool (foreign keys enforced): the transaction takes SQLite's
// write lock up front (waiting up to the busy timeout, under ctx), so a
// concurrent nix-daemon cannot make it fail half-way. It commits if fn
// returns nil (also when ctx ends just then: the commit is not
// cancelled, and a nil error means committed) and rolls back otherwise: kill -9 at any instant leaves the
// database as it was or with all of fn's changes.
func (d *DB) ImmediateTx(ctx context.Context, fn func(*sql.Conn) error) error {
	c, err := d.SQL.Conn(ctx)
	if err != nil {
		return err
	}
	defer c.Close()
	if _, err := c.ExecContext(ctx, "begin immediate"); err != nil {
		return err
	}
	if err := fn(c); err != nil {
		c.ExecContext(context.Background(), "rollback")
		return err
	}
	// Not under ctx: the driver reports ctx's error for a statement run
	// under a cancelled context even when it completed, which would call a
	// committed transaction failed. Once fn succeeded its work is kept.
	if _, err := c.ExecContext(context.Background(), "commit"); err != nil {
		c.ExecContext(context.Background(), "rollback")
		return err
	}
	return nil
}
