package gc

// Keep policies (issue #26): which profile generations and which
// indirect roots in gcroots/auto an unattended collection removes first.
//
// Generations: --keep N and --keep-since DURATION (nh's `clean` flags).
// A generation is kept when ANY of these keeps it: it is the profile's
// current generation; it is among the N newest (by generation number, as
// nix-env numbers them); its link is newer than DURATION (the link's
// mtime, which is the time `nix-env --list-generations` shows). Every
// other generation is removed. Unlike --delete-older-than, the newest
// generation older than the cut-off is not kept for its own sake (it was
// the active one at that time): --keep 1 keeps it when it is the newest.
//
// Auto roots: --keep-auto-since DURATION removes the links in
// gcroots/auto whose indirect root (the user's `result` or `.direnv`
// symlink the auto link names) has an mtime (of the symlink itself, never
// followed) older than DURATION. Only the gcroots/auto link is removed;
// the user's symlink stays where it is (it no longer keeps its path
// alive). Nothing is removed unless the flag is given.

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"storekeeper/internal/sys"
	"storekeeper/lock"
	"storekeeper/nix/storepath"
)

// keepPolicy reports whether the generation options select by a keep
// policy (Keep or KeepSince).
func (o GenerationOptions) keepPolicy() bool { return o.Keep > 0 || o.KeepSince > 0 }

// keepDoomed is the keep policy of o: the generations of gens (sorted by
// number) that no rule keeps. curName is the current generation's link
// name, always kept.
func (o GenerationOptions) keepDoomed(gens []generation, curName string) []generation {
	cutoff := o.Now.Add(-o.KeepSince)
	var doomed []generation
	for i, g := range gens {
		switch {
		case g.name == curName:
		case o.Keep > 0 && i >= len(gens)-o.Keep:
		case o.KeepSince > 0 && !g.created.Before(cutoff):
		default:
			doomed = append(doomed, g)
		}
	}
	return doomed
}

// ErrNotProfile is wrapped by the error for a --profile PATH that is not
// a profile link (see GenerationOptions.Profiles).
var ErrNotProfile = errors.New("gc: not a profile")

// openProfileDir opens the directory of the profile link p (absolute,
// clean) from "/" one component at a time with O_NOFOLLOW, so that no
// symbolic link on the way is followed, and checks that p's last
// component is a profile: a symbolic link whose target names a generation
// link ("NAME-N-link"), itself not a generation link.
func openProfileDir(p string) (*os.File, string, error) {
	if !filepath.IsAbs(p) {
		return nil, "", fmt.Errorf("%w: %s: give an absolute path", ErrNotProfile, p)
	}
	p = filepath.Clean(p)
	dirPath, name := filepath.Split(p)
	dirPath = filepath.Clean(dirPath)
	if name == "" {
		return nil, "", fmt.Errorf("%w: %s is a directory, not a profile link: give the profile (e.g. /nix/var/nix/profiles/system)", ErrNotProfile, p)
	}
	if genLink.MatchString(name) {
		return nil, "", fmt.Errorf("%w: %s is a generation link, not a profile: give the profile (the link named without -N-link)", ErrNotProfile, p)
	}
	fd, err := unix.Open("/", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, "", fmt.Errorf("gc: opening /: %w", err)
	}
	walked := "/"
	for _, c := range strings.Split(strings.TrimPrefix(dirPath, "/"), "/") {
		if c == "" {
			continue
		}
		nfd, err := sys.OpenAt(fd, c, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC)
		unix.Close(fd)
		walked = filepath.Join(walked, c)
		if err != nil {
			if err == unix.ELOOP || err == unix.ENOTDIR {
				hint := ""
				if real, rerr := filepath.EvalSymlinks(p); rerr == nil && real != p {
					hint = " (it resolves to " + real + ": give that path if it is the profile you mean)"
				}
				return nil, "", fmt.Errorf("%w: %s: %s is a symbolic link or not a directory; profiles are never reached through a symbolic link%s", ErrNotProfile, p, walked, hint)
			}
			return nil, "", fmt.Errorf("gc: opening %s: %w", walked, err)
		}
		fd = nfd
	}
	dir := os.NewFile(uintptr(fd), dirPath)
	var st unix.Stat_t
	if err := sys.LstatAt(fd, name, &st); err != nil {
		dir.Close()
		return nil, "", fmt.Errorf("%w: %s: %w", ErrNotProfile, p, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFLNK {
		dir.Close()
		return nil, "", fmt.Errorf("%w: %s is not a symbolic link (a profile is a link to its current generation, NAME-N-link)", ErrNotProfile, p)
	}
	t, err := sys.ReadlinkAt(fd, name)
	if err != nil {
		dir.Close()
		return nil, "", fmt.Errorf("gc: reading the profile link %s: %w", p, err)
	}
	if !genLink.MatchString(filepath.Base(t)) {
		dir.Close()
		hint := ""
		if filepath.IsAbs(t) {
			hint = " (if " + t + " is the profile, give --profile " + t + ")"
		}
		return nil, "", fmt.Errorf("%w: %s points to %s, not to a generation link NAME-N-link%s", ErrNotProfile, p, t, hint)
	}
	return dir, name, nil
}

// profiles runs the policy on each of paths, in the order given; every
// path is checked (openProfileDir) before any profile is changed.
func (w *genWalk) profiles(paths []string) error {
	type opened struct {
		dir  *os.File
		name string
	}
	var all []opened
	defer func() {
		for _, o := range all {
			o.dir.Close()
		}
	}()
	seen := map[string]bool{}
	for _, p := range paths {
		dir, name, err := openProfileDir(p)
		if err != nil {
			return err
		}
		full := filepath.Join(dir.Name(), name)
		if seen[full] {
			dir.Close() // given twice
			continue
		}
		seen[full] = true
		all = append(all, opened{dir, name})
	}
	for _, o := range all {
		if err := w.ctx.Err(); err != nil {
			return err
		}
		if err := w.profile(o.dir, o.dir.Name(), o.name); err != nil {
			return err
		}
	}
	return nil
}

// AutoRootOptions select the gcroots/auto links PruneAutoRoots removes.
type AutoRootOptions struct {
	// Since: an auto root whose indirect root (the symlink it names) has
	// not been modified within Since is removed. Must be > 0.
	Since time.Duration
	// StoreDir is the logical store directory: only an indirect root
	// pointing into it is a root.
	StoreDir string
	// ProfilesDir: indirect roots below it are left alone, and so is any
	// profile generation link (NAME-N-link) elsewhere: nix-env registers
	// every generation in gcroots/auto too, and generations are the
	// generation policies' (the current one is never removed).
	ProfilesDir string
	// StateDir is Nix's state directory: unless DryRun, gc.lock in it is
	// held shared while links are removed (see PruneAutoRoots); OnWait,
	// if set, is called once when that waits for a running collector.
	StateDir string
	OnWait   func()
	DryRun   bool
	Now      time.Time
}

// AutoRoot is one gcroots/auto link removed (or, with DryRun, that
// would be).
type AutoRoot struct {
	// Link is the entry in gcroots/auto; Target the indirect root it
	// names (the user's symlink, left in place); StorePath what Target
	// points to; MTime Target's mtime (unix seconds).
	Link      string `json:"link"`
	Target    string `json:"target"`
	StorePath string `json:"store_path"`
	MTime     int64  `json:"mtime"`
}

// PruneAutoRoots removes the links in autoDir (gcroots/auto) whose
// indirect root was not modified within o.Since: the link's target must
// be a symbolic link pointing into o.StoreDir (a root, as Nix reads it)
// whose own mtime (lstat: the symlink itself, never what it points to)
// is older than the cut-off. Profile generations (see
// AutoRootOptions.ProfilesDir), entries that are no symlink, stale ones
// (the target is gone: `roots --prune-stale` removes those) and targets
// that do not point into the store are left alone.
//
// Safety: autoDir is opened without following a symbolic link and every
// link is removed relative to it (unlinkat), after checking that it still
// names the same target; the user's symlink is only lstat'ed, never
// changed. The target's path is resolved by the kernel as Nix resolves
// it (its directories may be symlinks of the user's).
//
// Concurrency: Nix creates a root's symlink before its gcroots/auto link
// (addPermRoot), so a rebuild that re-creates the user's link while it is
// being pruned gives it a new mtime: after removing an auto link the
// target is looked at again and, if it was modified since the cut-off
// meanwhile, the auto link is put back (symlinkat, unless Nix made it
// again first). Links are removed only with o.StateDir's gc.lock held
// shared (as Nix's builders hold it to add a root), waiting for a running
// collector to finish, so no collector reads the roots while a link is
// away and before it is put back. A crash leaves each link removed or
// not (between the removal and the putting back: removed; the next
// rebuild makes it again).
//
// Cancellation: ctx is checked before each entry and while waiting for
// gc.lock; the error wraps ctx.Err() and the links removed so far are
// returned with it.
func PruneAutoRoots(ctx context.Context, autoDir string, o AutoRootOptions) ([]AutoRoot, error) {
	if o.Since <= 0 {
		return nil, fmt.Errorf("gc: --keep-auto-since must be positive")
	}
	if o.Now.IsZero() {
		o.Now = time.Now()
	}
	cutoff := o.Now.Add(-o.Since)
	fd, err := unix.Open(autoDir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		if err == unix.ENOENT {
			return nil, nil
		}
		return nil, fmt.Errorf("gc: opening %s: %w", autoDir, err)
	}
	defer unix.Close(fd)
	if !o.DryRun && o.StateDir != "" {
		gcLock, err := lock.AcquireGCLock(ctx, o.StateDir, lock.Shared, true, o.OnWait)
		if err != nil {
			return nil, fmt.Errorf("gc: pruning %s: %w", autoDir, err)
		}
		defer gcLock.Release()
	}
	ents, err := sys.ReadDirents(fd, nil)
	if err != nil {
		return nil, fmt.Errorf("gc: listing %s: %w", autoDir, err)
	}
	sort.Slice(ents, func(i, j int) bool { return ents[i].Name < ents[j].Name })
	profilesPrefix := ""
	if o.ProfilesDir != "" {
		profilesPrefix = filepath.Clean(o.ProfilesDir) + "/"
	}
	var out []AutoRoot
	for _, e := range ents {
		if err := ctx.Err(); err != nil {
			return out, fmt.Errorf("gc: pruning %s: %w", autoDir, err)
		}
		raw, err := sys.ReadlinkAt(fd, e.Name)
		if err != nil {
			continue // not a symlink (EINVAL), or gone
		}
		target := raw
		if !filepath.IsAbs(target) {
			target = filepath.Join(autoDir, target)
		}
		target = filepath.Clean(target)
		if genLink.MatchString(filepath.Base(target)) ||
			(profilesPrefix != "" && strings.HasPrefix(target, profilesPrefix)) {
			continue
		}
		var st unix.Stat_t
		if unix.Lstat(target, &st) != nil || st.Mode&unix.S_IFMT != unix.S_IFLNK {
			continue
		}
		sp, err := os.Readlink(target)
		if err != nil {
			continue
		}
		sp = filepath.Clean(sp)
		if !storepath.IsInStore(o.StoreDir, sp) {
			continue
		}
		mtime := time.Unix(st.Mtim.Unix())
		if !mtime.Before(cutoff) {
			continue
		}
		r := AutoRoot{Link: filepath.Join(autoDir, e.Name), Target: target, StorePath: sp, MTime: st.Mtim.Sec}
		if o.DryRun {
			out = append(out, r)
			continue
		}
		// Still the same link? (Nix replaces it by a rename.)
		if t2, err := sys.ReadlinkAt(fd, e.Name); err != nil || t2 != raw {
			continue
		}
		if err := unlinkAt(fd, e.Name); err != nil {
			if err == unix.ENOENT {
				continue
			}
			return out, fmt.Errorf("gc: removing %s: %w", r.Link, err)
		}
		if unix.Lstat(target, &st) == nil && !time.Unix(st.Mtim.Unix()).Before(cutoff) {
			// Re-created meanwhile: it is in use again.
			if err := unix.Symlinkat(raw, fd, e.Name); err != nil && err != unix.EEXIST {
				return out, fmt.Errorf("gc: putting back %s (its root %s was modified while it was removed): %w", r.Link, target, err)
			}
			continue
		}
		out = append(out, r)
	}
	return out, nil
}
