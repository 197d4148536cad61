package store

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/user"
	"path/filepath"
	"strconv"

	"storekeeper/store/db"
)

// Create makes a new store at o.Layout as Nix 2.8's LocalStore does the
// first time it opens one (`nix-store --init`, `nix copy --to /mnt`), and
// opens it: the store directory with .links, the state directory with
// profiles/, temproots/, gcroots/ (with the gcroots/profiles link, made
// when gcroots/ is made), profiles/per-user and gcroots/per-user (0755)
// and their directories of this user, and, as root with
// build-users-group set to a group that exists, the store directory
// owned root:GROUP 1775; then the database (db.Create). What exists
// already is kept. o.Layout.Root, when set, must be an existing
// directory (a mounted target: a mistyped root is not created); every
// directory under it is made as needed, 0755 less the umask.
//
// A store whose db/schema exists is only opened. A kill at any instant
// leaves a store that the next Create (or Nix) finishes: db/schema is
// written last.
func Create(ctx context.Context, o Options) (*Store, error) {
	lay := o.Layout
	if lay.Root != "" {
		st, err := os.Stat(lay.Root)
		if err != nil {
			return nil, fmt.Errorf("%w: the root %s of the new store: %w (create or mount it first)", ErrNoStore, lay.Root, err)
		}
		if !st.IsDir() {
			return nil, fmt.Errorf("%w: the root %s of the new store is not a directory", ErrNoStore, lay.Root)
		}
	}
	mkdir := func(p string) error {
		if err := os.MkdirAll(p, 0o755); err != nil {
			return fmt.Errorf("%w: creating %s: %w", ErrNoStore, p, err)
		}
		return nil
	}
	profiles := filepath.Join(lay.StateDir, "profiles")
	gcroots := lay.GCRootsDir()
	_, gcErr := os.Lstat(gcroots)
	for _, d := range []string{lay.RealStoreDir, lay.LinksDir(), profiles, lay.TempRootsDir(), lay.DBDir()} {
		if err := mkdir(d); err != nil {
			return nil, err
		}
	}
	if errors.Is(gcErr, os.ErrNotExist) {
		if err := mkdir(gcroots); err != nil {
			return nil, err
		}
		if err := os.Symlink(profiles, filepath.Join(gcroots, "profiles")); err != nil && !errors.Is(err, os.ErrExist) {
			return nil, fmt.Errorf("%w: %w", ErrNoStore, err)
		}
	}
	name := strconv.Itoa(os.Getuid())
	if u, err := user.Current(); err == nil {
		name = u.Username
	}
	for _, d := range []string{filepath.Join(profiles, "per-user"), filepath.Join(gcroots, "per-user")} {
		if err := mkdir(d); err != nil {
			return nil, err
		}
		if err := os.Chmod(d, 0o755); err != nil {
			return nil, fmt.Errorf("%w: %w", ErrNoStore, err)
		}
		if err := mkdir(filepath.Join(d, name)); err != nil {
			return nil, err
		}
	}
	if os.Getuid() == 0 && o.Settings.BuildUsersGroup != "" {
		if g, err := user.LookupGroup(o.Settings.BuildUsersGroup); err == nil {
			gid, _ := strconv.Atoi(g.Gid)
			st, err := os.Stat(lay.RealStoreDir)
			if err != nil {
				return nil, fmt.Errorf("%w: %w", ErrNoStore, err)
			}
			if err := os.Chown(lay.RealStoreDir, 0, gid); err != nil {
				return nil, fmt.Errorf("%w: %w", ErrNoStore, err)
			}
			if st.Mode()&os.ModePerm != 0o775 || st.Mode()&os.ModeSticky == 0 {
				if err := os.Chmod(lay.RealStoreDir, 0o775|os.ModeSticky); err != nil {
					return nil, fmt.Errorf("%w: %w", ErrNoStore, err)
				}
			}
		}
	}
	err := db.Create(ctx, lay.DBDir(), db.CreateOptions{
		Options:      db.Options{BusyTimeout: o.BusyTimeout, FsyncMetadata: o.Settings.FsyncMetadata, UseWAL: o.Settings.UseSQLiteWAL},
		ReservedSize: o.Settings.GCReservedSpace,
	})
	if err != nil {
		return nil, err
	}
	return Open(ctx, o)
}
