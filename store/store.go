package store

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"storekeeper/graph"
	"storekeeper/nix/nixconf"
	"storekeeper/store/db"
	"time"
)

// ErrNoStore is returned when the store directory itself is missing.
var ErrNoStore = errors.New("store: no store directory")

// Options open a Store.
type Options struct {
	Layout   Layout
	Settings nixconf.Settings
	// ReadOnly: open everything without write access and never write.
	// Read-only commands (roots, verify without --repair, gc --print-*)
	// use it, so they can run as any user that can read the store.
	ReadOnly    bool
	BusyTimeout time.Duration
}

// Store is an opened local store: where it is, its settings and its DB.
// It is safe for concurrent use; Close releases the DB and its big-lock.
type Store struct {
	Layout   Layout
	Settings nixconf.Settings
	ReadOnly bool
	DB       *db.DB
}

// Open checks that the store directory exists and opens the DB (checking
// its schema version). On any error nothing has been written.
func Open(ctx context.Context, o Options) (*Store, error) {
	st, err := os.Stat(o.Layout.RealStoreDir)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("%w: %s does not exist (pass --store DIR for a store under another root)", ErrNoStore, o.Layout.RealStoreDir)
		}
		return nil, fmt.Errorf("%w: %w", ErrNoStore, err)
	}
	if !st.IsDir() {
		return nil, fmt.Errorf("%w: %s is not a directory", ErrNoStore, o.Layout.RealStoreDir)
	}
	db, err := db.Open(ctx, o.Layout.DBDir(), db.Options{
		ReadOnly:      o.ReadOnly,
		BusyTimeout:   o.BusyTimeout,
		FsyncMetadata: o.Settings.FsyncMetadata,
		UseWAL:        o.Settings.UseSQLiteWAL,
	})
	if err != nil {
		return nil, err
	}
	return &Store{Layout: o.Layout, Settings: o.Settings, ReadOnly: o.ReadOnly, DB: db}, nil
}

// Close closes the DB.
func (s *Store) Close() error {
	if s.DB == nil {
		return nil
	}
	err := s.DB.Close()
	s.DB = nil
	return err
}

// LoadGraph loads the reference graph of the whole store (see DB.LoadGraph).
func (s *Store) LoadGraph(ctx context.Context, o db.GraphOptions) (*graph.Graph, error) {
	return s.DB.LoadGraph(ctx, s.Layout.StoreDir, o)
}
