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
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"

	"storekeeper/internal/sys"
	"storekeeper/lock"
	"storekeeper/nix/storepath"
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
	// Link roots (direct, indirect, profile): the owner of the link (user
	// name, or the uid in decimal when it has no name) and its
	// modification time (unix seconds); filled in by Find (one lstat per
	// root, never followed).
	Owner string `json:"owner,omitempty"`
	MTime int64  `json:"mtime,omitempty"`
	// Runtime and temp roots: the process.
	PID     int    `json:"pid,omitempty"`
	Command string `json:"command,omitempty"` // its command line, arguments separated by spaces
	// Runtime and temp roots: the process's user (name, or uid in
	// decimal), and for Via "environ" the name of the environment
	// variable whose value named the path.
	User string `json:"user,omitempty"`
	Env  string `json:"env,omitempty"`
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
	// Strict makes a potential root under gcroots/ or profiles/ that may
	// not be read (EACCES or EPERM on a directory, a link, or the symlink
	// an indirect root names: a private home directory, an NFS home with
	// root_squash) an error wrapping ErrRootsUnreadable, where Nix (and
	// Find without Strict) notes "cannot read potential root" and goes
	// on without it. The collector sets it whenever it deletes: what such
	// a root holds must not be collected.
	Strict bool
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

// ErrRootsUnreadable is wrapped by every error of Find that means some
// roots could not be read, with the path and what to do: an I/O error, a
// directory loop under gcroots/ or profiles/ (a bind mount of a directory
// into itself), a tree past the walk's limits (maxWalkDepth,
// maxWalkEntries), and with Options.Strict a root it may not read. Find
// never returns a partial set of roots instead.
var ErrRootsUnreadable = errors.New("roots: cannot read all roots")

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
// Roots are found at any depth under gcroots/ and profiles/ (see walk).
// When some cannot be read, Find returns an error wrapping
// ErrRootsUnreadable and no result, never a result without them; the
// failures Nix ignores (a root that may not be read, unless o.Strict; one
// that vanished) are skipped, the first noted in Result.Notes.
//
// Concurrency: roots can appear and vanish while Find runs; Find reports a
// consistent snapshot only when the caller holds gc.lock exclusively (as
// the collector does). A link that disappears mid-scan is skipped, not an
// error; an entry replaced by one of another type (a directory by a
// symlink) is taken as what it is now, never followed. Cancelling ctx
// stops the walk with ctx's error; Find holds no descriptor after it
// returns.
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
	// entries counts the entries listed under gcroots/ and profiles/,
	// against maxWalkEntries.
	entries int
}

func (f *finder) note(link, target, msg string) {
	f.res.Notes = append(f.res.Notes, Note{Link: link, Target: target, Message: msg})
}

// toStorePath maps a target seen on this machine to a logical store path:
// a logical path as it is, a path under the physical store dir (a chroot
// store seen from outside) mapped back.
func (f *finder) toStorePath(target string) (string, bool) {
	if !storepath.IsInStore(f.lay.StoreDir, target) && f.lay.RealStoreDir != f.lay.StoreDir &&
		storepath.IsInStore(f.lay.RealStoreDir, target) {
		target = f.lay.StoreDir + target[len(f.lay.RealStoreDir):]
	}
	if !storepath.IsInStore(f.lay.StoreDir, target) {
		return "", false
	}
	p, _, err := storepath.ToStorePath(f.lay.StoreDir, target)
	if err != nil {
		return "", false
	}
	return p, true
}

// The limits of the walk of gcroots/ and profiles/, each far beyond any
// real tree (Nix itself cannot read a root nested more than about 2000
// directories deep: its full path would pass PATH_MAX). A tree beyond
// them is an error wrapping ErrRootsUnreadable, never a tree searched in
// part. Variables so that tests can lower them.
var (
	// maxWalkDepth bounds how deep directories nest below gcroots/ or
	// profiles/. The walk holds one descriptor per directory on its
	// current path, so this (plus one) is also its descriptor budget.
	maxWalkDepth = 4096
	// maxWalkEntries bounds the entries (of every type) Find lists in
	// gcroots/ and profiles/ together, and so the memory and time the
	// walk takes.
	maxWalkEntries = 1 << 22
)

// walk is one walk of a roots directory (gcroots/ or profiles/) like
// Nix's findRoots: directories are entered (never through a symlink),
// symlinks into the store are roots, symlinks elsewhere are followed one
// hop (indirect roots), regular files named after a store path are roots.
//
// Unlike Nix's, the walk works relative to open directory descriptors
// (openat with O_NOFOLLOW|O_DIRECTORY, fstatat and readlinkat on names),
// so a root is found at any depth, also where its full path is longer
// than the kernel accepts (the full path is still the Link reported, as
// Nix prints it), and a directory replaced by a symlink while the walk
// runs is looked at again as the symlink it now is, never followed.
// Every directory on the current path stays open (one descriptor each,
// at most maxWalkDepth, closed on the way back up); nothing is reopened
// by name or through "..".
//
// A directory that is one of its own ancestors again (the same device
// and inode: a bind mount of a directory into itself, a damaged file
// system) is an error, as is a tree past the limits above: the roots
// there cannot all be read, and a collection must not go on without them.
type walk struct {
	f    *finder
	ctx  context.Context
	kind Kind
	top  string            // the directory walked
	dirs []walkDir         // the directories on the current path, outermost first
	on   map[devIno]string // their identities, to their paths
}

type walkDir struct {
	fd   int
	path string
}

type devIno struct{ dev, ino uint64 }

// scan walks the roots directory dir (which may be missing).
func (f *finder) scan(ctx context.Context, dir string, kind Kind) error {
	w := &walk{f: f, ctx: ctx, kind: kind, top: dir, on: map[devIno]string{}}
	return w.visit(unix.AT_FDCWD, dir, dir, unix.DT_UNKNOWN, false)
}

// visit handles the entry name of the directory open at dirfd, whose full
// path is p and whose type (unix.DT_*) is typ, DT_UNKNOWN if not known.
// again is set when the entry changed type since it was listed, and is
// being looked at a second time.
func (w *walk) visit(dirfd int, name, p string, typ uint8, again bool) error {
	if err := w.ctx.Err(); err != nil {
		return err
	}
	if typ == unix.DT_UNKNOWN {
		var st unix.Stat_t
		if err := sys.LstatAt(dirfd, name, &st); err != nil {
			return w.f.walkErr(p, err)
		}
		typ = dirType(st.Mode)
	}
	switch typ {
	case unix.DT_DIR:
		return w.dir(dirfd, name, p, again)
	case unix.DT_LNK:
		return w.link(dirfd, name, p, again)
	case unix.DT_REG:
		base := name
		if i := strings.LastIndexByte(base, '/'); i >= 0 { // the top of the walk, by full path
			base = base[i+1:]
		}
		if storepath.ValidateBaseName(base) == nil {
			w.f.cands = append(w.f.cands, candidate{w.f.linkRoot(Root{Kind: w.kind, Link: p, Target: w.f.lay.StoreDir + "/" + base}, dirfd, name), true})
		}
	}
	return nil
}

// changed is visit's answer when an entry changed type twice while it
// was read.
func changed(p string) error {
	return fmt.Errorf("%w: %s keeps changing between a directory and something else while it is read; run again", ErrRootsUnreadable, p)
}

func (w *walk) dir(dirfd int, name, p string, again bool) error {
	if len(w.dirs) > maxWalkDepth {
		return fmt.Errorf("%w: %s: directories nested more than %d deep under %s, deeper than storekeeper searches; move the roots there nearer the top, or remove the tree if it holds none",
			ErrRootsUnreadable, p, maxWalkDepth, w.top)
	}
	fd, err := sys.OpenAt(dirfd, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC)
	switch {
	case err == nil:
	case err == unix.ENOTDIR || err == unix.ELOOP:
		if again {
			return changed(p)
		}
		// Replaced since it was listed (by a symlink, say): look at what
		// is there now.
		return w.visit(dirfd, name, p, unix.DT_UNKNOWN, true)
	case err == unix.EMFILE || err == unix.ENFILE:
		return fmt.Errorf("%w: opening %s, %d directories deep: %w; raise the limit on open files (ulimit -n) above %d",
			ErrRootsUnreadable, p, len(w.dirs), err, maxWalkDepth+64)
	default:
		return w.f.walkErr(p, err)
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return w.f.walkErr(p, err)
	}
	id := devIno{uint64(st.Dev), st.Ino}
	if anc, ok := w.on[id]; ok {
		return fmt.Errorf("%w: %s is %s again, a directory loop (a bind mount of a directory into itself, or a damaged file system) that storekeeper does not search; unmount or remove it",
			ErrRootsUnreadable, p, anc)
	}
	ents, err := w.list(fd, p)
	if err != nil {
		return err
	}
	w.on[id] = p
	w.dirs = append(w.dirs, walkDir{fd, p})
	defer func() {
		delete(w.on, id)
		w.dirs = w.dirs[:len(w.dirs)-1]
	}()
	for _, e := range ents {
		if err := w.visit(fd, e.Name, p+"/"+e.Name, e.Type, false); err != nil {
			return err
		}
	}
	return nil
}

// list reads the entries of the directory open at fd (full path p),
// sorted by name, counting them against maxWalkEntries.
func (w *walk) list(fd int, p string) ([]sys.Dirent, error) {
	var ents []sys.Dirent
	over := false
	err := sys.ScanDirents(fd, func(name []byte, ino uint64, typ uint8) {
		if w.f.entries >= maxWalkEntries {
			over = true
			return
		}
		w.f.entries++
		ents = append(ents, sys.Dirent{Name: string(name), Ino: ino, Type: typ})
	})
	if err != nil {
		return nil, w.f.walkErr(p, err)
	}
	if over {
		return nil, fmt.Errorf("%w: more than %d entries under %s and %s (the last read in %s), more than storekeeper searches; remove the ones that are not roots",
			ErrRootsUnreadable, maxWalkEntries, w.f.lay.GCRootsDir(), w.f.lay.ProfilesDir(), p)
	}
	sort.Slice(ents, func(i, j int) bool { return ents[i].Name < ents[j].Name })
	return ents, nil
}

// link handles the symlink name in the directory open at dirfd.
func (w *walk) link(dirfd int, name, p string, again bool) error {
	f := w.f
	target, err := sys.ReadlinkAt(dirfd, name)
	if err == unix.EINVAL { // no longer a symlink
		if again {
			return changed(p)
		}
		return w.visit(dirfd, name, p, unix.DT_UNKNOWN, true)
	}
	if err != nil {
		return f.walkErr(p, err)
	}
	if sp, ok := f.toStorePath(target); ok {
		f.cands = append(f.cands, candidate{f.linkRoot(Root{Kind: w.kind, Link: p, Target: sp}, dirfd, name), true})
		return nil
	}
	// Indirect: the link names a symlink elsewhere that points into the
	// store.
	tfd, tname, tpath := w.resolve(p, target)
	var st unix.Stat_t
	if err := sys.LstatAt(tfd, tname, &st); err != nil {
		if err == unix.ENOENT || err == unix.ENOTDIR {
			if isInDir(p, filepath.Join(f.lay.GCRootsDir(), "auto")) {
				f.stale(dirfd, name, p, tpath)
			}
			return nil
		}
		return f.walkErr(tpath, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFLNK {
		return nil
	}
	target2, err := sys.ReadlinkAt(tfd, tname)
	if err == unix.EINVAL { // no longer a symlink: not a root
		return nil
	}
	if err != nil {
		return f.walkErr(tpath, err)
	}
	if sp, ok := f.toStorePath(target2); ok {
		k := Indirect
		if w.kind == Profile || isInDir(tpath, f.lay.ProfilesDir()) {
			k = Profile
		}
		r := Root{Kind: k, Link: tpath, Target: sp}
		f.stamp(&r, &st)
		f.cands = append(f.cands, candidate{r, true})
	}
	return nil
}

// resolve names the file the target of the symlink at p names, as Nix
// does: an absolute target as it is, a relative one joined to the link's
// directory, both cleaned lexically ("a/../b" is "b"). It returns the
// cleaned full path, and a directory descriptor and a name relative to
// it that reach the same file: where the target stays within the
// directories the walk has open, the descriptor of the one it names and
// the rest of the path, so that a target whose full path is longer than
// the kernel accepts is still read.
func (w *walk) resolve(p, target string) (dirfd int, name, full string) {
	if filepath.IsAbs(target) {
		full = filepath.Clean(target)
		return unix.AT_FDCWD, full, full
	}
	if len(w.dirs) == 0 { // the top of the walk is the link
		full = filepath.Join(filepath.Dir(p), target)
		return unix.AT_FDCWD, full, full
	}
	full = filepath.Clean(w.dirs[len(w.dirs)-1].path + "/" + target)
	rel, up := filepath.Clean(target), 0
	for rel == ".." || strings.HasPrefix(rel, "../") {
		up++
		rel = strings.TrimPrefix(rel[2:], "/")
	}
	if rel == "" {
		rel = "."
	}
	d := len(w.dirs) - 1 - up
	if d < 0 {
		return unix.AT_FDCWD, full, full
	}
	return w.dirs[d].fd, rel, full
}

// dirType is the unix.DT_* type of a stat mode (IFTODT).
func dirType(mode uint32) uint8 { return uint8((mode & unix.S_IFMT) >> 12) }

// stale records the stale indirect root link (the entry name of the
// directory open at dirfd) and, with Options.PruneStale, removes it
// (unlinkat: no path is looked up again).
func (f *finder) stale(dirfd int, name, link, target string) {
	s := Stale{Link: link, Target: target}
	if f.o.PruneStale {
		if err := unix.Unlinkat(dirfd, name, 0); err == nil || err == unix.ENOENT {
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
	return fmt.Errorf("%w: reading %s: %w", ErrRootsUnreadable, p, err)
}

// walkErr is ioErr for the walk of gcroots/ and profiles/, except that
// with Options.Strict a potential root it may not read (EACCES, EPERM)
// is an error rather than a note: Nix skips it and collects what it
// roots. A root that vanished (ENOENT) is still skipped: it is no root.
func (f *finder) walkErr(p string, err error) error {
	if f.o.Strict && errors.Is(err, fs.ErrPermission) {
		return fmt.Errorf("%w: %s: %w; it may hold roots: make it readable to this user, or remove it if it holds none",
			ErrRootsUnreadable, p, err)
	}
	return f.ioErr(p, err)
}

// linkRoot is r, a link root found as the entry name of the directory
// open at dirfd, with its owner and modification time from one lstat,
// never followed; a link gone meanwhile keeps them empty.
func (f *finder) linkRoot(r Root, dirfd int, name string) Root {
	var st unix.Stat_t
	if sys.LstatAt(dirfd, name, &st) == nil {
		f.stamp(&r, &st)
	}
	return r
}

// stamp sets r's Owner and MTime from the link's own lstat.
func (f *finder) stamp(r *Root, st *unix.Stat_t) {
	r.Owner, r.MTime = UserName(st.Uid), st.Mtim.Sec
}

var userNames sync.Map // uint32 -> string

// UserName is the name of the user uid from the user database, or the uid
// in decimal when it has none; each uid is looked up once per process.
// Safe for concurrent use.
func UserName(uid uint32) string {
	if n, ok := userNames.Load(uid); ok {
		return n.(string)
	}
	id := strconv.FormatUint(uint64(uid), 10)
	n := id
	if u, err := user.LookupId(id); err == nil && u.Username != "" {
		n = u.Username
	}
	userNames.Store(uid, n)
	return n
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
		cmd, user := f.process(tf.PID) // the pid in this PID namespace, as the file is named
		for _, r := range tf.Roots {
			if _, err := storepath.Parse(f.lay.StoreDir, r); err != nil {
				f.note(tf.Path, r, "ignoring malformed temporary root: "+err.Error())
				continue
			}
			// Nix reports temp roots whether or not they are valid yet: a
			// builder registers them before the path exists.
			f.cands = append(f.cands, candidate{Root{Kind: Temp, Link: fmt.Sprintf("{temp:%d}", tf.PID), Target: r, PID: tf.PID, Command: cmd, User: user}, false})
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
