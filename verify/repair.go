package verify

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"path/filepath"

	"golang.org/x/sys/unix"

	"storekeeper/graph"
	"storekeeper/lock"
	"storekeeper/store"
	"storekeeper/store/fs"
)

// repair does the local fixes, in this order:
//
//  1. Under the GC lock (shared, as `nix-store --verify` takes it), in one
//     IMMEDIATE transaction: drop the rows of vanished paths that nothing
//     existing refers to (checked again inside the transaction, and the
//     path checked again to be absent), fill in missing hashes and NAR
//     sizes and correct wrong NAR sizes of paths whose contents matched,
//     and delete Refs and DerivationOutputs rows that name no valid path.
//     Either all of it is committed or nothing: kill -9 leaves the DB as
//     it was or as repaired.
//  2. Remove damaged .links entries (as Nix does), of any type: a file, a
//     directory tree, a symlink (never followed), a fifo; each removed
//     relative to the open .links directory (store.RemoveTree). A store
//     file linked to a damaged entry shares its inode, so it was reported
//     modified with its path; the intact files of a replaced entry get a
//     fresh entry from the next `storekeeper optimise` or `nix-store
//     --optimise`. Removing a .links name never removes data (the store's
//     own names keep the inode).
//
// Damaged contents are not touched: they need a substitute (the findings
// name `nix-store --repair-path`).
//
// None of this runs on a store directory that looks unmounted or half
// missing (checkPresence, store.CheckPresence): Verify then stops with
// ErrRepairRefused before reading contents, and neither the database nor
// .links changes, unless Options.AllowMassDrop says the missing paths are
// really gone.
func (v *verifier) repair(ctx context.Context) error {
	g := v.g
	hasDB := len(v.dropPaths) > 0 || len(v.fillInfo) > 0 ||
		g.Problems.DanglingRefs > 0 || g.Problems.DanglingDrvOutputs > 0
	if !hasDB && len(v.badLinks) == 0 {
		return nil
	}
	gcl, err := lock.AcquireGCLock(ctx, v.lay.StateDir, lock.Shared, true, nil)
	if err != nil {
		return fmt.Errorf("verify: taking the GC lock for --repair: %w", err)
	}
	defer gcl.Release()
	dropped := map[string]bool{}
	filled := map[string]bool{}
	dangling := false
	if hasDB {
		err := v.withImmediateTx(ctx, func(c *sql.Conn) error {
			drop := map[int64]bool{}
			for _, id := range v.dropPaths {
				drop[g.DBID(id)] = true
			}
			for _, id := range v.dropPaths {
				var st unix.Stat_t
				if unix.Lstat(v.lay.RealPath(g.Path(id)), &st) == nil {
					delete(drop, g.DBID(id)) // back on disk
				}
			}
			// Referrers may have been registered since the snapshot.
			for changed := true; changed; {
				changed = false
				for dbid := range drop {
					rows, err := c.QueryContext(ctx, "select referrer from Refs where reference = ?", dbid)
					if err != nil {
						return err
					}
					for rows.Next() {
						var r int64
						if err := rows.Scan(&r); err != nil {
							rows.Close()
							return err
						}
						if r != dbid && !drop[r] {
							delete(drop, dbid)
							changed = true
							break
						}
					}
					rows.Close()
					if err := rows.Err(); err != nil {
						return err
					}
				}
			}
			for dbid := range drop {
				for _, q := range []string{
					"delete from Refs where referrer = ?",
					"delete from DerivationOutputs where drv = ?",
				} {
					if _, err := c.ExecContext(ctx, q, dbid); err != nil {
						return err
					}
				}
			}
			for _, id := range v.dropPaths {
				if !drop[g.DBID(id)] {
					continue
				}
				if _, err := c.ExecContext(ctx, "delete from ValidPaths where id = ?", g.DBID(id)); err != nil {
					return err
				}
				dropped[g.Path(id)] = true
			}
			for id, ni := range v.fillInfo {
				res, err := c.ExecContext(ctx, "update ValidPaths set hash = ?, narSize = ? where id = ? and path = ?",
					"sha256:"+ni.hash.Hex(), int64(ni.size), g.DBID(id), g.Path(id))
				if err != nil {
					return err
				}
				if n, _ := res.RowsAffected(); n == 1 {
					filled[g.Path(id)] = true
				}
			}
			if g.Problems.DanglingRefs > 0 || g.Problems.DanglingDrvOutputs > 0 {
				for _, q := range []string{
					"delete from Refs where referrer not in (select id from ValidPaths) or reference not in (select id from ValidPaths)",
					"delete from DerivationOutputs where drv not in (select id from ValidPaths)",
				} {
					if _, err := c.ExecContext(ctx, q); err != nil {
						return err
					}
				}
				dangling = true
			}
			return nil
		})
		if err != nil {
			return fmt.Errorf("verify: repairing the database %s (nothing was changed): %w", v.lay.DBPath(), err)
		}
	}
	removedLinks := map[string]bool{}
	var linkErr error
	if len(v.badLinks) > 0 {
		dir := v.lay.LinksDir()
		fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		if err != nil {
			linkErr = fmt.Errorf("opening %s to remove corrupt links: %w", dir, err)
		} else {
			for _, name := range v.badLinks {
				// Any type: a file, a directory tree, a symlink (never
				// followed), a fifo.
				p := filepath.Join(dir, name)
				if _, err := fs.RemoveTree(fd, name, p); err != nil {
					linkErr = errors.Join(linkErr, fmt.Errorf("removing corrupt link '%s': %w", p, err))
					continue
				}
				removedLinks[filepath.Join(v.lay.StoreDir, ".links", name)] = true
			}
			unix.Close(fd)
		}
	}
	for i := range v.findings {
		f := &v.findings[i]
		switch f.Kind {
		case KindDisappeared:
			if dropped[f.Path] {
				f.Repaired = true
				f.Message = fmt.Sprintf("path '%s' disappeared, removing from database...", f.Path)
				f.Fix = ""
			}
		case KindMissingHash, KindMissingNarSize, KindNarSize:
			if filled[f.Path] {
				f.Repaired = true
				switch f.Kind {
				case KindMissingHash:
					f.Message = fmt.Sprintf("fixing missing hash on '%s'", f.Path)
				default:
					f.Message = fmt.Sprintf("updating size field on '%s' to %s", f.Path, f.Got)
				}
				f.Fix = ""
			}
		case KindDanglingRefs, KindDanglingDrvOutputs:
			if dangling {
				f.Repaired = true
				f.Message += " (deleted)"
				f.Fix = ""
			}
		case KindLinkModified:
			if removedLinks[f.File] {
				f.Repaired = true
				f.Message += fmt.Sprintf("\nremoved link '%s'", f.File)
				// Intact store files that shared the entry's name (it was
				// replaced, not changed in place) get a new entry from
				// the next optimise run; files changed in place were
				// reported modified with their paths.
				f.Fix = "storekeeper optimise (or nix-store --optimise) to relink intact copies"
			}
		}
	}
	if linkErr != nil {
		return fmt.Errorf("verify: %w", linkErr)
	}
	return nil
}

// withImmediateTx runs fn in a BEGIN IMMEDIATE transaction on one
// connection (taking SQLite's write lock up front, so a concurrent
// nix-daemon cannot make it fail half-way) and commits it, or rolls back
// if fn fails.
func (v *verifier) withImmediateTx(ctx context.Context, fn func(*sql.Conn) error) error {
	c, err := v.s.DB.SQL.Conn(ctx)
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
	if _, err := c.ExecContext(ctx, "commit"); err != nil {
		c.ExecContext(context.Background(), "rollback")
		return err
	}
	return nil
}

// checkPresence asks store.CheckPresence whether the store directory
// looks like the store the DB describes (not an unmounted mount point, a
// half-missing tree or another file system), counting as missing only the
// paths still valid now (a collector running meanwhile is not a mass
// disappearance). With Repair (and without AllowMassDrop) a suspect store
// directory stops the run before anything is read or changed; otherwise
// the verdict goes into the summary.
func (v *verifier) checkPresence(ctx context.Context) error {
	g := v.g
	var missing []string
	for i, ok := range v.exists {
		if !ok {
			missing = append(missing, g.Path(graph.PathID(i)))
		}
	}
	if len(missing) == 0 {
		return nil
	}
	valid, err := v.s.DB.ValidAmong(ctx, missing)
	if err != nil {
		return err
	}
	still := 0
	for _, p := range missing {
		if valid[p] {
			still++
		}
	}
	v.suspect = store.CheckPresence(v.lay, store.Presence{
		Valid: g.Len() - (len(missing) - still), Missing: still, Names: v.dirNames,
		Dropping: true, IdentityDir: v.o.StateDir,
	})
	if v.suspect == nil {
		return nil
	}
	if v.o.Repair && !v.o.AllowMassDrop {
		return fmt.Errorf("%w: %w Nothing was changed: mount the store's file system and run again; if the missing paths are really gone, 'storekeeper verify --repair --allow-mass-drop' drops their rows.",
			ErrRepairRefused, v.suspect)
	}
	if !v.o.Repair {
		v.sum.StoreSuspect = v.suspect.Error()
	}
	return nil
}

// recordFS records which file system the store directory is on
// (store.RecordFSIdentity), for the next runs' checkPresence: only when it
// looked whole, or when the admin overrode the check with AllowMassDrop
// and the repair ran. It is best effort, like the ledger: a state dir that
// cannot be written (not root, read-only) records nothing.
func (v *verifier) recordFS() {
	if v.o.NoRecord || (v.suspect != nil && !(v.o.Repair && v.o.AllowMassDrop)) {
		return
	}
	store.RecordFSIdentity(v.lay, v.o.StateDir)
}
