package db_test

import (
	"context"
	"errors"
	"path/filepath"
	"strings"
	"testing"

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
