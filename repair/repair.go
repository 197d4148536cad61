// Package repair fixes what an audit found: it takes findings
// (finding.Finding, as verify makes them), plans the remedies it can carry
// out (Plan: the plan is data, one entry per path) and executes them
// (Execute), with a result per path. Today these are the fixes that need
// nothing from outside the machine, `verify --repair`:
//
//   - drop the rows of vanished paths that nothing existing refers to (as
//     nix-store --verify does), checked again under the lock;
//   - record the hash and NAR size the contents of a path hash to where
//     the database lacks them or holds a wrong size;
//   - delete Refs and DerivationOutputs rows that name no valid path;
//   - remove damaged .links entries.
//
// Damaged contents are not touched: they need a substitute (the findings'
// remedy is finding.RemedyRepairPath).
//
// Repair never runs on a store directory that looks unmounted or half
// missing (store.CheckPresence's verdict, from the audit) unless
// Options.AllowMassDrop says the missing paths are really gone: dropping
// their rows would make the next gc delete what refers to them.
package repair

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"path/filepath"

	"golang.org/x/sys/unix"

	"storekeeper/lock"
	"storekeeper/nix/nar"
	"storekeeper/store"
	"storekeeper/store/db"
	"storekeeper/store/fs"
	"storekeeper/verify/finding"
)

// Sentinel errors.
var (
	// ErrRefused: repair changed nothing because the store directory
	// looks unmounted or half missing; it wraps the
	// *store.UnmountedError that says why.
	ErrRefused = errors.New("verify: refusing to --repair")
	// ErrReadOnly: the store was opened read-only.
	ErrReadOnly = errors.New("repair: the store must be opened read-write")
)

// Options control Execute.
type Options struct {
	// Suspect is store.CheckPresence's verdict on the store directory
	// from the audit that made the findings (verify.Result.Suspect); nil:
	// it looked whole.
	Suspect error
	// AllowMassDrop lets Execute run on a suspect store directory: the
	// admin says the missing paths are really gone.
	AllowMassDrop bool
	// StateDir is where the store directory's file system is recorded
	// (store.RecordFSIdentity) after a repair that AllowMassDrop let run
	// (default Layout.OwnStateDir()).
	StateDir string
	// NoRecord: record nothing in StateDir.
	NoRecord bool
}

// Refuse returns the error Execute refuses with on a store directory that
// store.CheckPresence found suspect (suspect), or nil with AllowMassDrop.
// It is what verify.Options.OnSuspect takes, so that `verify --repair`
// stops before reading any contents of a store it will not repair.
func (o Options) Refuse(suspect error) error {
	if suspect == nil || o.AllowMassDrop {
		return nil
	}
	return fmt.Errorf("%w: %w Nothing was changed: mount the store's file system and run again; if the missing paths are really gone, 'storekeeper verify --repair --allow-mass-drop' drops their rows.",
		ErrRefused, suspect)
}

// Row is a path of the plan as the audit saw it registered.
type Row struct {
	Path string // the full store path (logical)
	// ID is the ValidPaths id the audit read (0: unknown, looked up by
	// Path): Execute acts only on that registration, never on one made
	// since.
	ID int64
}

// NarInfo is what the contents of a path hash to.
type NarInfo struct {
	Row
	Hash nar.Hash
	Size uint64
}

// Plan is what Execute does, as data.
type Plan struct {
	// Invalidate: vanished paths nothing existing refers to; their rows
	// are dropped if they are still absent and still unreferenced.
	Invalidate []Row
	// RecordNarInfo: paths whose contents hash to a hash and size the
	// database lacks or contradicts (only the size: the hash matched).
	RecordNarInfo []NarInfo
	// DeleteDanglingRows: delete the Refs and DerivationOutputs rows that
	// name no valid path.
	DeleteDanglingRows bool
	// RemoveLinks: damaged .links entries, as logical paths
	// (<store>/.links/<name>).
	RemoveLinks []string
}

// NewPlan picks from fs the remedies Execute carries out (the findings
// not yet repaired whose remedy is RemedyInvalidate, RemedyRecordNarInfo,
// RemedyDeleteDanglingRows or RemedyRemoveLinksEntry), each path once.
func NewPlan(fs []finding.Finding) *Plan {
	p := &Plan{}
	seen := map[finding.Action]map[string]bool{}
	once := func(a finding.Action, path string) bool {
		if seen[a] == nil {
			seen[a] = map[string]bool{}
		}
		if seen[a][path] {
			return false
		}
		seen[a][path] = true
		return true
	}
	for i := range fs {
		f := &fs[i]
		r := f.Remedy
		if f.Repaired || r == nil {
			continue
		}
		switch r.Action {
		case finding.RemedyInvalidate:
			for j, path := range r.Paths {
				if once(r.Action, path) {
					p.Invalidate = append(p.Invalidate, Row{path, r.ID(j)})
				}
			}
		case finding.RemedyRecordNarInfo:
			for j, path := range r.Paths {
				if once(r.Action, path) {
					p.RecordNarInfo = append(p.RecordNarInfo, NarInfo{Row{path, r.ID(j)}, r.NarHash, r.NarSize})
				}
			}
		case finding.RemedyDeleteDanglingRows:
			p.DeleteDanglingRows = true
		case finding.RemedyRemoveLinksEntry:
			for _, path := range r.Paths {
				if once(r.Action, path) {
					p.RemoveLinks = append(p.RemoveLinks, path)
				}
			}
		}
	}
	return p
}

// Empty reports whether the plan has nothing to do.
func (p *Plan) Empty() bool {
	return len(p.Invalidate) == 0 && len(p.RecordNarInfo) == 0 && !p.DeleteDanglingRows && len(p.RemoveLinks) == 0
}

// Outcome is what Execute did about one entry of the plan.
type Outcome struct {
	Action finding.Action
	Path   string // the store path or .links entry; "" for the dangling rows
	// Done: the remedy was carried out (or its effect found already
	// there: a vanished path's row already gone).
	Done bool
	// Err: why it failed; nil and !Done: it no longer applied and was
	// left alone (the path is back on disk or referred to again,
	// registered again, or its row changed since the audit).
	Err error
}

// Result is what Execute did, one Outcome per entry of the plan, in the
// plan's order.
type Result struct {
	Outcomes []Outcome
}

// Done reports whether the remedy action on path was carried out.
func (r *Result) Done(action finding.Action, path string) bool {
	for _, o := range r.Outcomes {
		if o.Action == action && o.Path == path {
			return o.Done
		}
	}
	return false
}

// Execute carries out the plan on s (opened read-write), in this order:
//
//  1. Under the GC lock (shared, as `nix-store --verify` takes it), in one
//     IMMEDIATE transaction (db.ImmediateTx): drop the rows of vanished
//     paths that nothing existing refers to (checked again inside the
//     transaction: the path still absent, its registration the audit's,
//     no referrer outside the dropped set, however registered since; the
//     rows go through db.Invalidate), record hashes and NAR sizes (only
//     in the registration the audit read), and delete Refs and
//     DerivationOutputs rows that name no valid path. Either all of it is
//     committed or nothing: kill -9 leaves the database as it was or as
//     repaired.
//  2. Remove the damaged .links entries (as Nix does), of any type: a
//     file, a directory tree, a symlink (never followed), a fifo; each
//     removed relative to the open .links directory (fs.RemoveTree). A
//     store file linked to a damaged entry shares its inode, so it was
//     reported modified with its path; the intact files of a replaced
//     entry get a fresh entry from the next `storekeeper optimise` or
//     `nix-store --optimise`. Removing a .links name never removes data
//     (the store's own names keep the inode). A kill -9 during a removal
//     leaves part of the entry, which the next audit reports and the
//     next repair removes.
//
// Concurrency: a nix-daemon may go on (registering paths, building); a
// collector waits for the GC lock, as it waits for nix-store --verify.
// It refuses (ErrRefused, changing nothing) on a suspect store directory
// unless o.AllowMassDrop (Options.Refuse). After a repair that
// AllowMassDrop let run it records the store directory's file system, as
// an audit of a whole store does, so that later runs compare with it.
//
// The error is non-nil if the transaction failed (then nothing in the
// database changed, and no .links entry was removed) or if some .links
// entries could not be removed (the Result then says which were);
// ctx bounds the waits for the GC lock and the database's write lock.
func Execute(ctx context.Context, s *store.Store, p *Plan, o Options) (*Result, error) {
	if s.ReadOnly {
		return nil, ErrReadOnly
	}
	if err := o.Refuse(o.Suspect); err != nil {
		return nil, err
	}
	res := &Result{}
	if !p.Empty() {
		if err := execute(ctx, s, p, res); err != nil {
			return res, err
		}
	}
	if o.Suspect != nil && !o.NoRecord {
		// Best effort, like verify's record: a state dir that cannot be
		// written (not root, read-only) records nothing.
		dir := o.StateDir
		if dir == "" {
			dir = s.Layout.OwnStateDir()
		}
		store.RecordFSIdentity(s.Layout, dir)
	}
	return res, nil
}

func execute(ctx context.Context, s *store.Store, p *Plan, res *Result) error {
	lay := s.Layout
	gcl, err := lock.AcquireGCLock(ctx, lay.StateDir, lock.Shared, true, nil)
	if err != nil {
		return fmt.Errorf("verify: taking the GC lock for --repair: %w", err)
	}
	defer gcl.Release()
	if len(p.Invalidate) > 0 || len(p.RecordNarInfo) > 0 || p.DeleteDanglingRows {
		var outs []Outcome
		err := s.DB.ImmediateTx(ctx, func(c *sql.Conn) error {
			var err error
			outs, err = repairDB(ctx, c, lay, p)
			return err
		})
		if err != nil {
			return fmt.Errorf("verify: repairing the database %s (nothing was changed): %w", lay.DBPath(), err)
		}
		res.Outcomes = append(res.Outcomes, outs...)
	}
	if len(p.RemoveLinks) > 0 {
		outs, err := removeLinks(lay, p.RemoveLinks)
		res.Outcomes = append(res.Outcomes, outs...)
		if err != nil {
			return fmt.Errorf("verify: %w", err)
		}
	}
	return nil
}

// repairDB does the database part of the plan in c's transaction.
func repairDB(ctx context.Context, c *sql.Conn, lay store.Layout, p *Plan) ([]Outcome, error) {
	var outs []Outcome
	if len(p.Invalidate) > 0 {
		o, err := invalidateVanished(ctx, c, lay, p.Invalidate)
		if err != nil {
			return nil, err
		}
		outs = append(outs, o...)
	}
	for _, ni := range p.RecordNarInfo {
		id := ni.ID
		if id == 0 {
			if err := c.QueryRowContext(ctx, "select id from ValidPaths where path = ?", ni.Path).Scan(&id); errors.Is(err, sql.ErrNoRows) {
				outs = append(outs, Outcome{Action: finding.RemedyRecordNarInfo, Path: ni.Path})
				continue
			} else if err != nil {
				return nil, err
			}
		}
		r, err := c.ExecContext(ctx, "update ValidPaths set hash = ?, narSize = ? where id = ? and path = ?",
			"sha256:"+ni.Hash.Hex(), int64(ni.Size), id, ni.Path)
		if err != nil {
			return nil, err
		}
		n, _ := r.RowsAffected()
		outs = append(outs, Outcome{Action: finding.RemedyRecordNarInfo, Path: ni.Path, Done: n == 1})
	}
	if p.DeleteDanglingRows {
		for _, q := range []string{
			"delete from Refs where referrer not in (select id from ValidPaths) or reference not in (select id from ValidPaths)",
			"delete from DerivationOutputs where drv not in (select id from ValidPaths)",
		} {
			if _, err := c.ExecContext(ctx, q); err != nil {
				return nil, err
			}
		}
		outs = append(outs, Outcome{Action: finding.RemedyDeleteDanglingRows, Done: true})
	}
	return outs, nil
}

// invalidateVanished drops the rows of the vanished paths rows that are
// still absent from disk and that no valid path outside them refers to
// (a referrer may have been registered since the audit), in c's
// transaction. A path whose row is already gone counts as done.
func invalidateVanished(ctx context.Context, c *sql.Conn, lay store.Layout, rows []Row) ([]Outcome, error) {
	outs := make([]Outcome, len(rows))
	drop := map[int64]int{} // ValidPaths id -> index in rows
	for i, r := range rows {
		outs[i] = Outcome{Action: finding.RemedyInvalidate, Path: r.Path}
		id := r.ID
		if id == 0 {
			err := c.QueryRowContext(ctx, "select id from ValidPaths where path = ?", r.Path).Scan(&id)
			if errors.Is(err, sql.ErrNoRows) {
				outs[i].Done = true // invalidated meanwhile
				continue
			}
			if err != nil {
				return nil, err
			}
		}
		var st unix.Stat_t
		if unix.Lstat(lay.RealPath(r.Path), &st) == nil {
			continue // back on disk
		}
		drop[id] = i
	}
	// Referrers may have been registered since the audit; a path they
	// refer to stays, and so do the paths it refers to in the set.
	for changed := true; changed; {
		changed = false
		for id := range drop {
			referred, err := referredFromOutside(ctx, c, id, drop)
			if err != nil {
				return nil, err
			}
			if referred {
				delete(drop, id)
				changed = true
			}
		}
	}
	if len(drop) == 0 {
		return outs, nil
	}
	ids := make([]int64, 0, len(drop))
	idx := make([]int, 0, len(drop))
	for id, i := range drop {
		ids = append(ids, id)
		idx = append(idx, i)
	}
	valid, err := db.Invalidate(ctx, c, ids, func(k int) string { return rows[idx[k]].Path })
	if err != nil {
		return nil, err
	}
	for _, i := range idx {
		outs[i].Done = !valid[rows[i].Path] // valid again under a new id: left alone
	}
	return outs, nil
}

// referredFromOutside reports whether a valid path other than id and the
// paths in set refers to id.
func referredFromOutside(ctx context.Context, c *sql.Conn, id int64, set map[int64]int) (bool, error) {
	rows, err := c.QueryContext(ctx, "select referrer from Refs where reference = ?", id)
	if err != nil {
		return false, err
	}
	defer rows.Close()
	for rows.Next() {
		var r int64
		if err := rows.Scan(&r); err != nil {
			return false, err
		}
		if _, in := set[r]; r != id && !in {
			return true, nil
		}
	}
	return false, rows.Err()
}

// removeLinks removes the .links entries links (logical paths), relative
// to the open .links directory, never following a symlink.
func removeLinks(lay store.Layout, links []string) ([]Outcome, error) {
	outs := make([]Outcome, len(links))
	for i, l := range links {
		outs[i] = Outcome{Action: finding.RemedyRemoveLinksEntry, Path: l}
	}
	dir := lay.LinksDir()
	logical := filepath.Join(lay.StoreDir, ".links")
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		err = fmt.Errorf("opening %s to remove corrupt links: %w", dir, err)
		for i := range outs {
			outs[i].Err = err
		}
		return outs, err
	}
	defer unix.Close(fd)
	var errs error
	for i, l := range links {
		name := filepath.Base(l)
		if filepath.Dir(l) != logical || name == "." || name == ".." || name == "/" {
			outs[i].Err = fmt.Errorf("'%s' is not an entry of %s", l, logical)
			errs = errors.Join(errs, outs[i].Err)
			continue
		}
		// Any type: a file, a directory tree, a symlink (never
		// followed), a fifo.
		p := filepath.Join(dir, name)
		if _, err := fs.RemoveTree(fd, name, p); err != nil {
			outs[i].Err = fmt.Errorf("removing corrupt link '%s': %w", p, err)
			errs = errors.Join(errs, outs[i].Err)
			continue
		}
		outs[i].Done = true
	}
	return outs, errs
}

// Mark marks the findings r repaired, with the message saying what was
// done (in Nix's words where Nix has them) and, as remedy, what is left
// to do (nil: nothing).
func (r *Result) Mark(fs []finding.Finding) {
	done := map[finding.Action]map[string]bool{}
	for _, o := range r.Outcomes {
		if o.Done {
			if done[o.Action] == nil {
				done[o.Action] = map[string]bool{}
			}
			done[o.Action][o.Path] = true
		}
	}
	for i := range fs {
		f := &fs[i]
		if f.Repaired || f.Remedy == nil {
			continue
		}
		a := f.Remedy.Action
		ok := done[a][""] // the dangling rows: no path
		if a != finding.RemedyDeleteDanglingRows {
			ok = len(f.Remedy.Paths) > 0
			for _, p := range f.Remedy.Paths {
				ok = ok && done[a][p]
			}
		}
		if !ok {
			continue
		}
		switch a {
		case finding.RemedyInvalidate:
			f.Message = fmt.Sprintf("path '%s' disappeared, removing from database...", f.Path)
			f.Remedy = nil
		case finding.RemedyRecordNarInfo:
			if f.Kind == finding.KindMissingHash {
				f.Message = fmt.Sprintf("fixing missing hash on '%s'", f.Path)
			} else {
				f.Message = fmt.Sprintf("updating size field on '%s' to %s", f.Path, f.Got)
			}
			f.Remedy = nil
		case finding.RemedyDeleteDanglingRows:
			f.Message += " (deleted)"
			f.Remedy = nil
		case finding.RemedyRemoveLinksEntry:
			f.Message += fmt.Sprintf("\nremoved link '%s'", f.File)
			// Intact store files that shared the entry's name (it was
			// replaced, not changed in place) get a new entry from the
			// next optimise run; files changed in place were reported
			// modified with their paths.
			f.Remedy = finding.NewRemedy(finding.RemedyRelink)
		default:
			continue
		}
		f.Repaired = true
	}
}

// Findings carries out the local remedies of fs (NewPlan, Execute) and
// marks the findings it repaired (Result.Mark), also when Execute failed
// part-way (some .links entries not removed). It is `verify --repair`
// after the audit.
func Findings(ctx context.Context, s *store.Store, fs []finding.Finding, o Options) (*Result, error) {
	res, err := Execute(ctx, s, NewPlan(fs), o)
	if res != nil {
		res.Mark(fs)
	}
	return res, err
}
