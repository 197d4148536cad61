package gc

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"

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
	DryRun    bool
	Now       time.Time
}

// RemovedGeneration is one generation link deleted (or, with DryRun,
// that would be).
type RemovedGeneration struct {
	Profile string `json:"profile"`
	Number  int    `json:"number"`
	Link    string `json:"link"`
}

var genLink = regexp.MustCompile(`^(.*)-([0-9]+)-link$`)

// ParseOlderThan parses Nix's "Nd" (days); "Nh" and "Nw" are accepted too.
func ParseOlderThan(spec string) (time.Duration, error) {
	if len(spec) < 2 {
		return 0, fmt.Errorf("gc: invalid age %q (expected e.g. 30d)", spec)
	}
	n, err := strconv.Atoi(spec[:len(spec)-1])
	if err != nil || n < 0 {
		return 0, fmt.Errorf("gc: invalid age %q (expected e.g. 30d)", spec)
	}
	switch spec[len(spec)-1] {
	case 'd':
		return time.Duration(n) * 24 * time.Hour, nil
	case 'h':
		return time.Duration(n) * time.Hour, nil
	case 'w':
		return time.Duration(n) * 7 * 24 * time.Hour, nil
	}
	return 0, fmt.Errorf("gc: invalid age %q (expected e.g. 30d)", spec)
}

// DeleteGenerations removes old generations of every profile under
// profilesDir (recursively; a profile is a symlink whose target's name
// contains "link", as Nix decides). The current generation is never
// removed; each profile's "<profile>.lock" is held while it is changed,
// as Nix's nix-env does.
func DeleteGenerations(ctx context.Context, profilesDir string, o GenerationOptions) ([]RemovedGeneration, error) {
	if o.Now.IsZero() {
		o.Now = time.Now()
	}
	var out []RemovedGeneration
	var walk func(dir string) error
	walk = func(dir string) error {
		ents, err := os.ReadDir(dir)
		if err != nil {
			if errors.Is(err, os.ErrNotExist) || errors.Is(err, os.ErrPermission) {
				return nil
			}
			return err
		}
		for _, e := range ents {
			p := filepath.Join(dir, e.Name())
			switch {
			case e.Type()&os.ModeSymlink != 0:
				t, err := os.Readlink(p)
				if err != nil || !strings.Contains(t, "link") || genLink.MatchString(e.Name()) {
					continue
				}
				r, err := deleteProfileGenerations(ctx, p, o)
				out = append(out, r...)
				if err != nil {
					return err
				}
			case e.IsDir():
				if err := walk(p); err != nil {
					return err
				}
			}
		}
		return nil
	}
	err := walk(profilesDir)
	return out, err
}

type generation struct {
	n       int
	link    string
	created time.Time
}

func deleteProfileGenerations(ctx context.Context, profile string, o GenerationOptions) ([]RemovedGeneration, error) {
	var pl *lock.PathLocks
	if !o.DryRun {
		var err error
		pl, err = lock.LockPaths(ctx, []string{profile}, true, nil)
		if err != nil {
			return nil, fmt.Errorf("gc: locking profile %s: %w", profile, err)
		}
		defer pl.Unlock(true) // as Nix's lockProfile: the lock file goes with the lock
	}
	dir, base := filepath.Dir(profile), filepath.Base(profile)
	cur, err := os.Readlink(profile)
	if err != nil {
		return nil, nil
	}
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	var gens []generation
	for _, e := range ents {
		m := genLink.FindStringSubmatch(e.Name())
		if m == nil || m[1] != base {
			continue
		}
		n, _ := strconv.Atoi(m[2])
		info, err := os.Lstat(filepath.Join(dir, e.Name()))
		if err != nil {
			continue
		}
		gens = append(gens, generation{n, filepath.Join(dir, e.Name()), info.ModTime()})
	}
	sort.Slice(gens, func(i, j int) bool { return gens[i].n < gens[j].n })
	curName := filepath.Base(cur)
	var doomed []generation
	if o.DeleteOld {
		for _, g := range gens {
			if filepath.Base(g.link) != curName {
				doomed = append(doomed, g)
			}
		}
	} else if o.OlderThan > 0 {
		cutoff := o.Now.Add(-o.OlderThan)
		canDelete := false
		for i := len(gens) - 1; i >= 0; i-- {
			g := gens[i]
			if canDelete {
				if filepath.Base(g.link) != curName {
					doomed = append(doomed, g)
				}
			} else if g.created.Before(cutoff) {
				canDelete = true
			}
		}
	}
	var out []RemovedGeneration
	for _, g := range doomed {
		if !o.DryRun {
			if err := os.Remove(g.link); err != nil && !errors.Is(err, os.ErrNotExist) {
				return out, fmt.Errorf("gc: removing generation %s: %w", g.link, err)
			}
		}
		out = append(out, RemovedGeneration{Profile: profile, Number: g.n, Link: g.link})
	}
	return out, nil
}
