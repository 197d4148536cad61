package storetest

import (
	"context"
	"testing"
	"time"

	"storekeeper/nix/nixconf"
	"storekeeper/store"
)

// MustBuild builds spec in a fresh t.TempDir() (removed when the test
// ends) and fails t at once if that fails.
func MustBuild(t testing.TB, spec Spec) *Built {
	t.Helper()
	b, err := Build(t.TempDir(), spec)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// OpenReadOnly opens the store at lay read-only with Nix's default
// settings and a short busy timeout (300ms, so a test of a held lock
// fails fast), as the read-only commands open it.
func OpenReadOnly(lay store.Layout) (*store.Store, error) {
	return store.Open(context.Background(), store.Options{Layout: lay, Settings: nixconf.Default(true), ReadOnly: true, BusyTimeout: 300 * time.Millisecond})
}

// Open opens the store at lay for writing with Nix's default settings and
// fails t if that fails; the store is closed when the test ends.
func Open(t testing.TB, lay store.Layout) *store.Store {
	t.Helper()
	s, err := store.Open(context.Background(), store.Options{Layout: lay, Settings: nixconf.Default(true)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// OpenRO opens the store at lay read-only with Nix's default settings, as
// the read-only commands do, and fails t if that fails; the store is
// closed when the test ends.
func OpenRO(t testing.TB, lay store.Layout) *store.Store {
	t.Helper()
	s, err := store.Open(context.Background(), store.Options{Layout: lay, Settings: nixconf.Default(true), ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}
