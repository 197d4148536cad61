package gc

import (
	"context"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"storekeeper/internal/sys"
	"storekeeper/lock"
)

// GenerationOptions select profile generations to delete, like
// `nix-collect-garbage -d` and `--delete-older-than`.
type GenerationOptions struct {
	// OlderThan deletes generations older than this (Nix keeps the newest
	// generation older than the cut-off too: it was the active one at
	// that time). Zero with DeleteOld unset deletes nothing.
	OlderThan time.Duration
	// DeleteOld deletes every generation but the current one.
	DeleteOld bool
	// Keep and KeepSince are the keep policy (keep.go): with either set,
	// every generation is deleted but the current one, the Keep newest
	// (by number) and those newer than KeepSince (kept if any rule keeps
	// it). They exclude OlderThan and DeleteOld.
	Keep      int
	KeepSince time.Duration
	// Profiles, if set, limits the run to these profiles (absolute paths
	// of profile links, as `nix-env --profile` takes them), each reached
	// from "/" without following a symbolic link (keep.go); otherwise
	// every profile under the profiles directory is processed.
	Profiles []string
	DryRun   bool
	Now      time.Time
	// Warn, if set, is told about each profile skipped because its lock
	// could not be taken safely (its lock file is a symbolic link, not a
	// regular file, not empty, not openable as the directory's owner, ...):
	// the message names the profile and the lock file. The other profiles
	// are still processed. With Warn nil those errors are returned
	// together (errors.Join) once all the other profiles are done.
	Warn func(msg string)
}

// RemovedGeneration is one generation link deleted (or, with DryRun,
// that would be).
type RemovedGeneration struct {
	Profile string `json:"profile"`
	Number  int    `json:"number"`
	Link    string `json:"link"`
}

var genLink = regexp.MustCompile(`^(.*)-([0-9]+)-link$`)

// maxProfileDepth bounds how deep DeleteGenerations descends below the
// profiles directory (Nix's own layout is three levels deep at most), so
// that a user's nested directories cannot exhaust descriptors or stack.
const maxProfileDepth = 16

// ageUnits are the units ParseOlderThan takes.
var ageUnits = map[byte]time.Duration{'h': time.Hour, 'd': 24 * time.Hour, 'w': 7 * 24 * time.Hour}

// ParseOlderThan parses Nix's "Nd" (days); "Nh" and "Nw" are accepted too.
// N is decimal digits only (no sign). An age that does not fit a
// time.Duration (more than 106751 days, about 292 years) is an error, not
// wrapped around: no generation can be that old, and a wrapped value
// could be minutes.
func ParseOlderThan(spec string) (time.Duration, error) {
	invalid := fmt.Errorf("gc: invalid age %q (expected a number of days such as 30d; h for hours and w for weeks work too)", spec)
	if len(spec) < 2 {
		return 0, invalid
	}
	unit, ok := ageUnits[spec[len(spec)-1]]
	num := spec[:len(spec)-1]
	if !ok || strings.TrimLeft(num, "0123456789") != "" {
		return 0, invalid
	}
	n, err := strconv.ParseInt(num, 10, 64)
	if (err != nil && !errors.Is(err, strconv.ErrRange)) || n < 0 {
		return 0, invalid
	}
	if err != nil || n > math.MaxInt64/int64(unit) {
		return 0, fmt.Errorf("gc: age %q is too large: at most %dd (%dh, %dw), about 292 years, fits; no generation is older",
			spec, math.MaxInt64/int64(24*time.Hour), math.MaxInt64/int64(time.Hour), math.MaxInt64/int64(7*24*time.Hour))
	}
	return time.Duration(n) * unit, nil
}

// testHookBeforeGenerations, set by tests, runs for each profile after it
// is locked and before its generations are listed.
var testHookBeforeGenerations func(profile string)

// DeleteGenerations removes old generations of every profile under
// profilesDir (recursively, at most maxProfileDepth levels; a profile is
// a symlink whose target's name contains "link", as Nix decides). The
// current generation is never removed, and only symbolic links are: a
// file of another type named like a generation is left alone. Each
// profile's "<profile>.lock" is held while it is changed, as Nix's
// nix-env does (not with DryRun). With o.Profiles only those profiles are
// processed (an error wrapping ErrNotProfile for a path that is not one,
// before anything of it is changed); the keep policy (o.Keep,
// o.KeepSince) is in keep.go.
//
// Directories of other users: the walk opens each directory below
// profilesDir relative to its parent with O_NOFOLLOW and does everything
// in it relative to that descriptor (readlinkat, fstatat, unlinkat), so a
// directory that its owner renames or replaces by a symbolic link
// meanwhile is never followed: at worst links are removed from the
// directory that was opened, which that owner controls anyway. Profile
// locks are taken with lock.LockPathsAt: as root in a directory another
// user owns (profiles/per-user/USER) the lock file is opened, or created,
// as that user, and never deleted; a lock file that is a symbolic link,
// not a regular file, or not empty is never followed, written or
// removed, and that profile is skipped (see Warn) while the others are
// processed.
//
// Concurrency and crashes: a profile's generations change only while its
// lock is held, so a nix-env switching it is waited for; each generation
// goes with one unlink, so a crash leaves some removed and the rest in
// place, the current one always kept, and the next run finishes. Lock
// files left by a crash are empty and reused.
//
// Cancellation: ctx is checked before each directory entry and while
// waiting for a profile's lock; the error then wraps ctx.Err(), and the
// generations removed so far are returned with it.
func DeleteGenerations(ctx context.Context, profilesDir string, o GenerationOptions) ([]RemovedGeneration, error) {
	if o.Now.IsZero() {
		o.Now = time.Now()
	}
	w := &genWalk{ctx: ctx, o: o}
	var err error
	if len(o.Profiles) > 0 {
		err = w.profiles(o.Profiles)
	} else {
		top, oerr := os.Open(profilesDir)
		if oerr != nil {
			if errors.Is(oerr, os.ErrNotExist) || errors.Is(oerr, os.ErrPermission) {
				return nil, nil
			}
			return nil, fmt.Errorf("gc: opening the profiles directory: %w", oerr)
		}
		defer top.Close()
		err = w.walk(top, profilesDir, 0)
	}
	if o.Warn == nil && len(w.skipped) > 0 {
		err = errors.Join(append([]error{err}, w.skipped...)...)
	}
	return w.out, err
}

// genWalk is one DeleteGenerations run.
type genWalk struct {
	ctx     context.Context
	o       GenerationOptions
	out     []RemovedGeneration
	skipped []error
}

func (w *genWalk) skip(err error) {
	if w.o.Warn != nil {
		w.o.Warn(err.Error())
		return
	}
	w.skipped = append(w.skipped, err)
}

// walk handles the open directory dir (named path) at depth below the
// profiles directory.
func (w *genWalk) walk(dir *os.File, path string, depth int) error {
	fd := int(dir.Fd())
	ents, err := sys.ReadDirents(fd, nil)
	if err != nil {
		return fmt.Errorf("gc: listing %s: %w", path, err)
	}
	sort.Slice(ents, func(i, j int) bool { return ents[i].Name < ents[j].Name })
	for _, e := range ents {
		if err := w.ctx.Err(); err != nil {
			return err
		}
		typ := e.Type
		if typ == unix.DT_UNKNOWN {
			var st unix.Stat_t
			if sys.LstatAt(fd, e.Name, &st) != nil {
				continue
			}
			switch st.Mode & unix.S_IFMT {
			case unix.S_IFLNK:
				typ = unix.DT_LNK
			case unix.S_IFDIR:
				typ = unix.DT_DIR
			}
		}
		switch typ {
		case unix.DT_LNK:
			t, err := sys.ReadlinkAt(fd, e.Name)
			if err != nil || !strings.Contains(t, "link") || genLink.MatchString(e.Name) {
				continue
			}
			if err := w.profile(dir, path, e.Name); err != nil {
				return err
			}
		case unix.DT_DIR:
			sub := filepath.Join(path, e.Name)
			if depth+1 > maxProfileDepth {
				w.skip(fmt.Errorf("skipping %s: more than %d directories deep below the profiles directory", sub, maxProfileDepth))
				continue
			}
			sfd, err := sys.OpenAt(fd, e.Name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC)
			if err != nil {
				// Gone, unreadable, or replaced by a symlink or a file
				// since it was listed: nothing of ours to do there.
				if err == unix.ENOENT || err == unix.EACCES || err == unix.ELOOP || err == unix.ENOTDIR {
					continue
				}
				return fmt.Errorf("gc: opening %s: %w", sub, err)
			}
			sf := os.NewFile(uintptr(sfd), sub)
			err = w.walk(sf, sub, depth+1)
			sf.Close()
			if err != nil {
				return err
			}
		}
	}
	return nil
}

type generation struct {
	n       int
	name    string
	created time.Time
}

// profile deletes the chosen generations of the profile name in dir (an
// open directory named dirPath).
func (w *genWalk) profile(dir *os.File, dirPath, name string) error {
	o := w.o
	profile := filepath.Join(dirPath, name)
	fd := int(dir.Fd())
	if !o.DryRun {
		pl, err := lock.LockPathsAt(w.ctx, dir, dirPath, []string{name}, true, nil)
		if err != nil {
			if w.ctx.Err() != nil {
				return fmt.Errorf("gc: locking profile %s: %w", profile, err)
			}
			w.skip(fmt.Errorf("skipping profile %s: %w", profile, err))
			return nil
		}
		defer pl.Unlock(true) // as Nix's lockProfile: the lock file goes with the lock (where it is ours to delete)
	}
	if testHookBeforeGenerations != nil {
		testHookBeforeGenerations(profile)
	}
	cur, err := sys.ReadlinkAt(fd, name)
	if err != nil {
		return nil
	}
	lfd, err := sys.OpenAt(fd, ".", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC)
	if err != nil {
		return fmt.Errorf("gc: listing %s: %w", dirPath, err)
	}
	ents, err := sys.ReadDirents(lfd, nil)
	unix.Close(lfd)
	if err != nil {
		return fmt.Errorf("gc: listing %s: %w", dirPath, err)
	}
	var gens []generation
	for _, e := range ents {
		m := genLink.FindStringSubmatch(e.Name)
		if m == nil || m[1] != name {
			continue
		}
		n, err := strconv.Atoi(m[2])
		if err != nil {
			continue // more digits than an int holds: not one of Nix's
		}
		var st unix.Stat_t
		if sys.LstatAt(fd, e.Name, &st) != nil || st.Mode&unix.S_IFMT != unix.S_IFLNK {
			continue
		}
		gens = append(gens, generation{n, e.Name, time.Unix(st.Mtim.Unix())})
	}
	sort.Slice(gens, func(i, j int) bool { return gens[i].n < gens[j].n })
	curName := filepath.Base(cur)
	var doomed []generation
	if o.keepPolicy() {
		doomed = o.keepDoomed(gens, curName)
	} else if o.DeleteOld {
		for _, g := range gens {
			if g.name != curName {
				doomed = append(doomed, g)
			}
		}
	} else if o.OlderThan > 0 {
		cutoff := o.Now.Add(-o.OlderThan)
		canDelete := false
		for i := len(gens) - 1; i >= 0; i-- {
			g := gens[i]
			if canDelete {
				if g.name != curName {
					doomed = append(doomed, g)
				}
			} else if g.created.Before(cutoff) {
				canDelete = true
			}
		}
	}
	for _, g := range doomed {
		link := filepath.Join(dirPath, g.name)
		if !o.DryRun {
			if err := unlinkAt(fd, g.name); err != nil && err != unix.ENOENT {
				return fmt.Errorf("gc: removing generation %s: %w", link, err)
			}
		}
		w.out = append(w.out, RemovedGeneration{Profile: profile, Number: g.n, Link: link})
	}
	return nil
}

// unlinkAt unlinks the non-directory name in dirfd, retrying on EINTR.
func unlinkAt(dirfd int, name string) error {
	for {
		err := unix.Unlinkat(dirfd, name, 0)
		if err != unix.EINTR {
			return err
		}
	}
}
