package db_test

import (
	"context"
	"database/sql"
	"testing"
)

// TestImmediateTxCommitsAfterCancel: once fn has returned nil its work is
// committed and ImmediateTx says so, even when ctx ends at that moment
// (a SIGTERM arriving as the batch completes). The SQLite driver returns
// ctx's error for a statement run under a cancelled context even when
// the statement completed, so a COMMIT run under ctx could report a
// failure for a transaction that was committed.
func TestImmediateTxCommitsAfterCancel(t *testing.T) {
	f := newInvalidateFixture(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	p := f.b.Valid[0]
	err := f.s.DB.ImmediateTx(ctx, func(c *sql.Conn) error {
		if _, err := c.ExecContext(ctx, "update ValidPaths set narSize = 7 where path = ?", p); err != nil {
			return err
		}
		cancel()
		return nil
	})
	committed := f.count("select count(*) from ValidPaths where path = ? and narSize = 7", p) == 1
	if err != nil || !committed {
		t.Fatalf("ImmediateTx returned %v, committed %v: want nil and committed", err, committed)
	}
}
