// Package roots finds every garbage-collector root of a store, exactly the
// set `nix-store --gc --print-roots` prints: symlinks and store-path-named
// files under gcroots/ (recursively), indirect roots one hop through
// symlinks outside the store (gcroots/auto), profiles, runtime roots of
// running processes (/proc) and temporary roots (temproots/<pid>).
//
// Unlike Nix, Find never changes anything unless asked: stale links in
// gcroots/auto are reported and removed only with Options.PruneStale, and
// stale temp-roots files are left for the collector.
package roots

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"

	"storekeeper/lock"
	"storekeeper/store"
)

// Kind says how a root holds its target.
type Kind string

// The kinds of roots.
const (
	Direct   Kind = "direct"   // a symlink (or store-path-named file) under gcroots/
	Indirect Kind = "indirect" // a symlink outside the state dir, registered through gcroots/auto (or any out-of-store symlink under gcroots)
	Profile  Kind = "profile"  // a profile generation under profiles/
	Runtime  Kind = "runtime"  // a running process uses the path
	Temp     Kind = "temp"     // a process registered it as a temporary root
)

// Root is one (link, target) pair, as Nix prints it: "LINK -> TARGET".
type Root struct {
	Kind   Kind   `json:"kind"`
	Link   string `json:"link"`
	Target string `json:"target"` // full store path
	// Runtime and temp roots: the process.
	PID     int    `json:"pid,omitempty"`
	Command string `json:"command,omitempty"` // its command line, arguments separated by spaces
	// Runtime roots: what held it: exe, cwd, fd, maps, environ, or
	// kernel (/proc/sys/kernel/modprobe and the like).
	Via string `json:"via,omitempty"`
}

// String is Nix's form, "LINK -> TARGET".
func (r Root) String() string { return r.Link + " -> " + r.Target }

// Stale is an indirect root whose target no longer exists.
type Stale struct {
	Link    string `json:"link"`
	Target  string `json:"target"`
	Removed bool   `json:"removed"`
}

// Note is something Nix would print as information while finding roots:
// a root pointing at an invalid path, a root that cannot be read.
type Note struct {
	Link    string `json:"link"`
	Target  string `json:"target,omitempty"`
	Message string `json:"message"`
}

// Options control Find.
type Options struct {
	// PruneStale removes stale links in gcroots/auto (Nix always does;
	// storekeeper only when asked). Needs a read-write store.
	PruneStale bool
	// NoRuntime skips /proc; NoTemp skips temproots.
	NoRuntime, NoTemp bool
	// ProcDir is /proc; tests may point it elsewhere.
	ProcDir string
}

// Result is every root, sorted by link then target (Nix's order).
type Result struct {
	Roots []Root  `json:"roots"`
	Stale []Stale `json:"stale,omitempty"`
	Notes []Note  `json:"notes,omitempty"`
}

// Targets returns the distinct target store paths, sorted.
func (r *Result) Targets() []string {
	seen := map[string]bool{}
	var out []string
	for _, x := range r.Roots {
		if !seen[x.Target] {
			seen[x.Target] = true
			out = append(out, x.Target)
		}
	}
	sort.Strings(out)
	return out
}

// ErrPruneReadOnly is returned when PruneStale is asked of a read-only store.
var ErrPruneReadOnly = errors.New("roots: --prune-stale needs write access to the store")

// candidate is a root before its target's validity is known.
type candidate struct {
	Root
	requireValid bool
}

// Find collects the roots of s. It reads the DB once for the validity of
// all candidates (in batches, never one query per root). It changes
// nothing unless o.PruneStale is set.
//
// Concurrency: roots can appear and vanish while Find runs; Find reports a
// consistent snapshot only when the caller holds gc.lock exclusively (as
// the collector does). A link that disappears mid-scan is skipped, not an
// error.
func Find(ctx context.Context, s *store.Store, o Options) (*Result, error) {
	if o.PruneStale && s.ReadOnly {
		return nil, ErrPruneReadOnly
	}
	if o.ProcDir == "" {
		o.ProcDir = "/proc"
	}
	f := &finder{s: s, o: o, lay: s.Layout, res: &Result{}}
	if err := f.scan(ctx, f.lay.GCRootsDir(), Direct); err != nil {
		return nil, err
	}
	if err := f.scan(ctx, f.lay.ProfilesDir(), Profile); err != nil {
		return nil, err
	}
	if !o.NoRuntime {
		if err := f.runtime(ctx); err != nil {
			return nil, err
		}
	}
	if !o.NoTemp {
		if err := f.temp(); err != nil {
			return nil, err
		}
	}
	if err := f.resolve(ctx); err != nil {
		return nil, err
	}
	return f.res, nil
}

type finder struct {
	s     *store.Store
	o     Options
	lay   store.Layout
	res   *Result
	cands []candidate
}

func (f *finder) note(link, target, msg string) {
	f.res.Notes = append(f.res.Notes, Note{Link: link, Target: target, Message: msg})
}

// toStorePath maps a target seen on this machine to a logical store path:
// a logical path as it is, a path under the physical store dir (a chroot
// store seen from outside) mapped back.
func (f *finder) toStorePath(target string) (string, bool) {
	if !store.IsInStore(f.lay.StoreDir, target) && f.lay.RealStoreDir != f.lay.StoreDir &&
		store.IsInStore(f.lay.RealStoreDir, target) {
		target = f.lay.StoreDir + target[len(f.lay.RealStoreDir):]
	}
	if !store.IsInStore(f.lay.StoreDir, target) {
		return "", false
	}
	p, _, err := store.ToStorePath(f.lay.StoreDir, target)
	if err != nil {
		return "", false
	}
	return p, true
}

// scan walks a roots directory like Nix's findRoots: directories are
// entered (never through symlinks), symlinks into the store are roots,
// symlinks elsewhere are followed one hop (indirect roots), regular files
// named after a store path are roots.
func (f *finder) scan(ctx context.Context, dir string, kind Kind) error {
	st, err := os.Lstat(dir)
	if err != nil {
		return f.ioErr(dir, err)
	}
	return f.visit(ctx, dir, st.Mode().Type(), kind, 0)
}

const maxDepth = 64

// visit handles one entry; typ is its file type bits (0 for a regular file).
func (f *finder) visit(ctx context.Context, p string, typ fs.FileMode, kind Kind, depth int) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	switch {
	case typ&fs.ModeDir != 0:
		if depth > maxDepth {
			f.note(p, "", "directory nesting too deep; not searched further")
			return nil
		}
		ents, err := os.ReadDir(p)
		if err != nil {
			return f.ioErr(p, err)
		}
		for _, e := range ents {
			if err := f.visit(ctx, filepath.Join(p, e.Name()), e.Type(), kind, depth+1); err != nil {
				return err
			}
		}
	case typ&fs.ModeSymlink != 0:
		target, err := os.Readlink(p)
		if err != nil {
			return f.ioErr(p, err)
		}
		if sp, ok := f.toStorePath(target); ok {
			f.cands = append(f.cands, candidate{Root{Kind: kind, Link: p, Target: sp}, true})
			return nil
		}
		// Indirect: the link names a symlink elsewhere that points into
		// the store.
		if !filepath.IsAbs(target) {
			target = filepath.Join(filepath.Dir(p), target)
		}
		target = filepath.Clean(target)
		st, err := os.Lstat(target)
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ENOTDIR) {
				if isInDir(p, filepath.Join(f.lay.GCRootsDir(), "auto")) {
					f.stale(p, target)
				}
				return nil
			}
			return f.ioErr(target, err)
		}
		if st.Mode()&fs.ModeSymlink == 0 {
			return nil
		}
		target2, err := os.Readlink(target)
		if err != nil {
			return f.ioErr(target, err)
		}
		if sp, ok := f.toStorePath(target2); ok {
			k := Indirect
			if kind == Profile || isInDir(target, f.lay.ProfilesDir()) {
				k = Profile
			}
			f.cands = append(f.cands, candidate{Root{Kind: k, Link: target, Target: sp}, true})
		}
	case typ == 0: // a regular file
		base := filepath.Base(p)
		if store.ValidateBaseName(base) == nil {
			f.cands = append(f.cands, candidate{Root{Kind: kind, Link: p, Target: f.lay.StoreDir + "/" + base}, true})
		}
	}
	return nil
}

func (f *finder) stale(link, target string) {
	s := Stale{Link: link, Target: target}
	if f.o.PruneStale {
		if err := os.Remove(link); err == nil || errors.Is(err, fs.ErrNotExist) {
			s.Removed = true
		} else {
			f.note(link, target, fmt.Sprintf("cannot remove stale link: %v", err))
		}
	}
	f.res.Stale = append(f.res.Stale, s)
}

// ioErr turns the permanent failures Nix ignores (EACCES, ENOENT, ENOTDIR)
// into notes and passes other errors on.
func (f *finder) ioErr(p string, err error) error {
	if errors.Is(err, fs.ErrNotExist) || errors.Is(err, fs.ErrPermission) || errors.Is(err, syscall.ENOTDIR) {
		if !errors.Is(err, fs.ErrNotExist) {
			f.note(p, "", "cannot read potential root: "+err.Error())
		}
		return nil
	}
	return fmt.Errorf("roots: reading %s: %w", p, err)
}

func isInDir(p, dir string) bool {
	return strings.HasPrefix(p, dir+"/") && len(p) > len(dir)+1
}

func (f *finder) temp() error {
	scan, err := lock.ReadTempRoots(f.lay.StateDir, false)
	if err != nil {
		return fmt.Errorf("roots: reading temporary roots: %w", err)
	}
	for _, e := range scan.Errors {
		f.note(f.lay.TempRootsDir(), "", e.Error())
	}
	for _, tf := range scan.Files {
		for _, r := range tf.Roots {
			if _, err := store.ParseStorePath(f.lay.StoreDir, r); err != nil {
				f.note(tf.Path, r, "ignoring malformed temporary root: "+err.Error())
				continue
			}
			// Nix reports temp roots whether or not they are valid yet: a
			// builder registers them before the path exists.
			f.cands = append(f.cands, candidate{Root{Kind: Temp, Link: fmt.Sprintf("{temp:%d}", tf.PID), Target: r, PID: tf.PID}, false})
		}
	}
	return nil
}

// resolve keeps the candidates whose targets are valid (one batched
// query), deduplicates and sorts them.
func (f *finder) resolve(ctx context.Context) error {
	var need []string
	seen := map[string]bool{}
	for _, c := range f.cands {
		if c.requireValid && !seen[c.Target] {
			seen[c.Target] = true
			need = append(need, c.Target)
		}
	}
	valid, err := f.s.DB.ValidAmong(ctx, need)
	if err != nil {
		return err
	}
	type key struct{ link, target string }
	dup := map[key]bool{}
	for _, c := range f.cands {
		if c.requireValid && !valid[c.Target] {
			if c.Kind != Runtime {
				f.note(c.Link, c.Target, "skipping invalid root")
			}
			continue
		}
		k := key{c.Link, c.Target}
		if dup[k] {
			continue
		}
		dup[k] = true
		f.res.Roots = append(f.res.Roots, c.Root)
	}
	sort.Slice(f.res.Roots, func(i, j int) bool {
		a, b := f.res.Roots[i], f.res.Roots[j]
		if a.Link != b.Link {
			return a.Link < b.Link
		}
		return a.Target < b.Target
	})
	return nil
}
