package db_test

import (
	"context"
	"errors"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"storekeeper/store/db"
)

// TestRegisterRefusesUncleanPaths: a path, reference, deriver or output
// that names a store path only after cleaning (a trailing slash, a doubled
// slash, a "." or ".." component) is refused with ErrBadRegistration and
// nothing is written: the row would hold a text no other path of the
// database, nor Nix, ever looks up.
func TestRegisterRefusesUncleanPaths(t *testing.T) {
	d, b := fixtureDB(t, 5, false)
	ctx := context.Background()
	s := "/nix/store"
	p := regPath(s, "p")
	base := filepath.Base(p)
	unclean := []string{p + "/", s + "//" + base, "/nix/./store/" + base, "/nix/x/../store/" + base}
	before := dumpDB(t, d.SQL, true, true)
	for _, u := range unclean {
		for _, reg := range []db.Registration{
			{Path: u, NarHash: regHash("p")},
			{Path: p, NarHash: regHash("p"), References: []string{u}},
			{Path: p, NarHash: regHash("p"), Deriver: u},
			{Path: p + ".drv", NarHash: regHash("p"), Outputs: map[string]string{"out": u}},
		} {
			err := d.Register(ctx, []db.Registration{reg}, db.RegisterOptions{})
			if !errors.Is(err, db.ErrBadRegistration) || !strings.Contains(err.Error(), u) {
				t.Errorf("%+v: got %v, want ErrBadRegistration naming %q", reg, err, u)
			}
			sameDump(t, "after a refusal of "+u, before, dumpDB(t, d.SQL, true, true))
		}
	}
	// A reference to a valid path, unclean, is refused too (not
	// looked up as another path).
	err := d.Register(ctx, []db.Registration{{Path: p, References: []string{b.Valid[0] + "/"}}}, db.RegisterOptions{})
	if !errors.Is(err, db.ErrBadRegistration) {
		t.Errorf("unclean valid reference: %v", err)
	}
}

// TestRegisterCancelledBetweenStatements: a context cancelled while no
// statement of the batch runs (here: after the last row, before the
// commit) rolls the batch back and Register says so. SQLite forgets an
// interrupt that arrives while no statement runs (the next statement
// clears it), so ctx's interrupt alone would let the batch commit, and
// Register return nil, for a cancellation that came in time.
func TestRegisterCancelledBetweenStatements(t *testing.T) {
	d, b := fixtureDB(t, 5, false)
	regs := killBatch(7, 50, b.Valid[0])
	before := dumpDB(t, d.SQL, true, true)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	db.SetTestHookBeforeCommit(func() {
		cancel()
		time.Sleep(50 * time.Millisecond) // ctx's interrupt is sent meanwhile
	})
	defer db.SetTestHookBeforeCommit(nil)
	err := d.Register(ctx, regs, db.RegisterOptions{})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("Register with its context cancelled before the commit: %v, want context.Canceled", err)
	}
	sameDump(t, "after a cancellation before the commit", before, dumpDB(t, d.SQL, true, true))
	db.SetTestHookBeforeCommit(nil)
	if err := d.Register(context.Background(), regs, db.RegisterOptions{}); err != nil {
		t.Fatal(err)
	}
}

// TestRegisterCancelledEarly: a context cancelled before Register starts
// (its interrupt then races with the transaction's begin) always gives an
// error wrapping context.Canceled, never SQLite's bare "interrupted".
func TestRegisterCancelledEarly(t *testing.T) {
	d, b := fixtureDB(t, 5, false)
	regs := killBatch(8, 3, b.Valid[0])
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	bad := 0
	for i := range 300 {
		err := d.Register(ctx, regs, db.RegisterOptions{})
		if !errors.Is(err, context.Canceled) {
			bad++
			t.Errorf("try %d: %v, want context.Canceled", i, err)
		}
	}
	if bad > 0 {
		t.Errorf("%d of 300 cancelled Registers did not say so", bad)
	}
}

// TestRegisterClosed: Register on a closed DB is refused and writes
// nothing (its own connection would otherwise write without the
// big-lock the DB held).
func TestRegisterClosed(t *testing.T) {
	d, b := fixtureDB(t, 5, false)
	before := dumpDB(t, d.SQL, true, true)
	dbDir := filepath.Dir(d.Path)
	d.Close()
	if err := d.Register(context.Background(), killBatch(9, 3, b.Valid[0]), db.RegisterOptions{}); !errors.Is(err, db.ErrDBAccess) {
		t.Errorf("Register after Close: %v, want ErrDBAccess", err)
	}
	d2, err := db.Open(context.Background(), dbDir, nixDefaults)
	if err != nil {
		t.Fatal(err)
	}
	defer d2.Close()
	sameDump(t, "after Register on a closed DB", before, dumpDB(t, d2.SQL, true, true))
}
