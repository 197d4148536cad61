package store

import (
	"errors"
	"fmt"
	"net/url"
	"path/filepath"
	"storekeeper/nix/storepath"
	"strings"

	"golang.org/x/sys/unix"
)

// ErrBadStoreURI is wrapped by every error about a --store argument.
var ErrBadStoreURI = errors.New("store: bad store URI")

// Default locations, as compiled into Debian's and upstream's Nix.
const (
	DefaultStoreDir = "/nix/store"
	DefaultStateDir = "/nix/var/nix"
)

// Layout says where a store's pieces are. StoreDir is the logical store
// directory: the prefix of every store path, as written into the DB and
// into files (/nix/store, /gnu/store). RealStoreDir is where that directory
// physically is on this machine: the same unless the store lives under a
// chroot root (`--store /mnt`, `local?root=/mnt`). StateDir is the physical
// state directory (db/, gcroots/, profiles/, temproots/, gc.lock), exactly
// as Nix's `state` store setting.
//
// A Layout is a plain value; it touches no file.
type Layout struct {
	StoreDir     string // logical, e.g. /nix/store
	RealStoreDir string // physical, e.g. /mnt/nix/store
	StateDir     string // physical, e.g. /mnt/nix/var/nix
	Root         string // chroot root, "" for none
}

// LayoutOptions are the inputs to ResolveLayout: the --store argument and
// the --store-dir / --state-dir overrides, plus the environment Nix
// consults (NIX_STORE_DIR, NIX_STATE_DIR).
type LayoutOptions struct {
	StoreURI string // "", "auto", "local", "daemon", "/mnt", "./demo-store", "local?root=/mnt&state=..."
	StoreDir string // --store-dir: overrides everything else
	StateDir string // --state-dir: overrides everything else
	Getenv   func(string) string
	// Getwd gives the directory a relative root, state or real directory
	// in StoreURI is taken against; nil: the process's working directory
	// as the kernel reports it (getcwd(2), not $PWD). Asked only when
	// StoreURI holds a relative path.
	Getwd func() (string, error)
}

// ResolveLayout turns a --store argument in any of the forms Nix accepts
// for a local store into a Layout, in Nix's order of precedence: the URI's
// parameters (store, state, real, root) over NIX_STORE_DIR/NIX_STATE_DIR
// over the compiled-in defaults; explicit --store-dir/--state-dir flags win
// over all of them. Remote stores (ssh://, https://, s3://, ...) are
// refused: storekeeper maintains the store on this machine.
//
// As in Nix, a --store argument without "://" that holds a "/" is a path,
// the store's root: "/mnt", "./demo-store", "demo-store/", "../x" (and
// ".", ".."). Such a relative root, and a relative root, state or real
// parameter ("local?root=./x", which Nix 2.8 refuses), is made absolute
// against the working directory (o.Getwd) once, here, so nothing later
// (a re-exec, a lock, a path in a message) depends on the working
// directory.
// A bare word ("local", "daemon", "auto") keeps its meaning; any other
// ("demo-store") is refused with a hint to write ./demo-store. The logical
// store dir (store=, --store-dir, NIX_STORE_DIR) and --state-dir must be
// absolute.
func ResolveLayout(o LayoutOptions) (Layout, error) {
	getenv := o.Getenv
	if getenv == nil {
		getenv = func(string) string { return "" }
	}
	storeDir := firstNonEmpty(getenv("NIX_STORE_DIR"), getenv("NIX_STORE"), DefaultStoreDir)
	stateDir := firstNonEmpty(getenv("NIX_STATE_DIR"), DefaultStateDir)

	params, err := parseStoreURI(o.StoreURI)
	if err != nil {
		return Layout{}, err
	}
	if err := absParams(params, o.StoreURI, o.Getwd); err != nil {
		return Layout{}, err
	}
	l := Layout{Root: params.Get("root")}
	if v := params.Get("store"); v != "" {
		storeDir = v
	}
	l.StoreDir = storeDir
	if l.Root != "" {
		// Nix: with a root, state and real default to root/nix/var/nix and
		// root/nix/store, whatever the logical store dir is.
		l.StateDir = filepath.Join(l.Root, "nix/var/nix")
		l.RealStoreDir = filepath.Join(l.Root, "nix/store")
	} else {
		l.StateDir = stateDir
		l.RealStoreDir = storeDir
	}
	if v := params.Get("state"); v != "" {
		l.StateDir = v
	}
	if v := params.Get("real"); v != "" {
		l.RealStoreDir = v
	}
	if o.StoreDir != "" {
		l.StoreDir = o.StoreDir
		if l.Root == "" && params.Get("real") == "" {
			l.RealStoreDir = o.StoreDir
		}
	}
	if o.StateDir != "" {
		l.StateDir = o.StateDir
	}
	for _, c := range []struct{ what, p string }{
		{"store dir", l.StoreDir}, {"real store dir", l.RealStoreDir},
		{"state dir", l.StateDir}, {"root", l.Root},
	} {
		if c.p == "" && c.what == "root" {
			continue
		}
		if !filepath.IsAbs(c.p) {
			return Layout{}, fmt.Errorf("%w: the %s %q is not an absolute path", ErrBadStoreURI, c.what, c.p)
		}
	}
	l.StoreDir = filepath.Clean(l.StoreDir)
	l.RealStoreDir = filepath.Clean(l.RealStoreDir)
	l.StateDir = filepath.Clean(l.StateDir)
	if l.Root != "" {
		l.Root = filepath.Clean(l.Root)
	}
	if l.StoreDir == "/" {
		return Layout{}, fmt.Errorf("%w: the store dir cannot be /", ErrBadStoreURI)
	}
	return l, nil
}

// parseStoreURI returns the query parameters of a local store URI.
func parseStoreURI(uri string) (url.Values, error) {
	switch uri {
	case "", "auto", "local", "daemon":
		// "daemon" and "auto" mean "the store on this machine": storekeeper
		// works on it directly, beside the daemon, through Nix's locks.
		return url.Values{}, nil
	}
	if path, query, _ := strings.Cut(uri, "?"); isStorePath(path) {
		// A path is a local store with that root (Nix: "/mnt" is
		// "local?root=/mnt", "./x" the root x in the working directory).
		// Parameters may follow.
		q, err := url.ParseQuery(query)
		if err != nil {
			return nil, fmt.Errorf("%w: %q: %w", ErrBadStoreURI, uri, err)
		}
		q.Set("root", path)
		return q, nil
	}
	scheme, query, _ := strings.Cut(uri, "?")
	switch scheme {
	case "local", "auto", "daemon", "unix":
	default:
		if strings.Contains(scheme, "://") {
			return nil, fmt.Errorf("%w: %q is a remote store; storekeeper works on a store on this machine (use --store local?root=DIR for a store under another root)", ErrBadStoreURI, uri)
		}
		return nil, fmt.Errorf("%w: %q: expected 'local', 'daemon', a directory (one here as ./%s), or 'local?root=DIR&store=DIR&state=DIR'", ErrBadStoreURI, uri, scheme)
	}
	q, err := url.ParseQuery(query)
	if err != nil {
		return nil, fmt.Errorf("%w: %q: %w", ErrBadStoreURI, uri, err)
	}
	for k := range q {
		switch k {
		case "root", "state", "real", "store", "log":
		default:
			return nil, fmt.Errorf("%w: %q: unknown parameter %q (storekeeper knows root, store, state, real, log)", ErrBadStoreURI, uri, k)
		}
	}
	return q, nil
}

// isStorePath reports whether a --store argument (before any "?") names
// a directory, as Nix's isNonUriPath decides: no "://" and at least one
// "/", so that a single word such as "local" or "daemon" is never a path.
// "." and ".." are paths too (Nix refuses them).
func isStorePath(s string) bool {
	return s == "." || s == ".." || !strings.Contains(s, "://") && strings.Contains(s, "/")
}

// absParams makes the physical directories among params (root, state,
// real) absolute against the working directory getwd gives (nil:
// getcwd(2)), asked at most once. The logical store dir is left as it
// is: it is a prefix written in the database, never relative to anything.
func absParams(params url.Values, uri string, getwd func() (string, error)) error {
	if getwd == nil {
		getwd = unix.Getwd
	}
	var wd string
	for _, k := range []string{"root", "state", "real"} {
		v := params.Get(k)
		if v == "" || filepath.IsAbs(v) {
			continue
		}
		if wd == "" {
			d, err := getwd()
			if err == nil && !filepath.IsAbs(d) {
				err = fmt.Errorf("%q is not absolute", d)
			}
			if err != nil {
				return fmt.Errorf("%w: %q: the %s %q is relative and the working directory is unknown (give an absolute path): %w", ErrBadStoreURI, uri, k, v, err)
			}
			wd = d
		}
		params.Set(k, filepath.Join(wd, v))
	}
	return nil
}

func firstNonEmpty(v ...string) string {
	for _, s := range v {
		if s != "" {
			return s
		}
	}
	return ""
}

// DBDir is the directory of db.sqlite, schema, big-lock and reserved.
func (l Layout) DBDir() string { return filepath.Join(l.StateDir, "db") }

// DBPath is the SQLite database.
func (l Layout) DBPath() string { return filepath.Join(l.DBDir(), "db.sqlite") }

// LinksDir is the hard-link pool of `nix-store --optimise`.
func (l Layout) LinksDir() string { return filepath.Join(l.RealStoreDir, ".links") }

// TrashDir is where storekeeper gc moves dead paths before deleting them.
func (l Layout) TrashDir() string { return filepath.Join(l.RealStoreDir, "trash") }

// GCRootsDir holds the permanent roots (gcroots/, with gcroots/auto).
func (l Layout) GCRootsDir() string { return filepath.Join(l.StateDir, "gcroots") }

// ProfilesDir holds the profiles, which are roots too.
func (l Layout) ProfilesDir() string { return filepath.Join(l.StateDir, "profiles") }

// TempRootsDir holds one temp-roots file per process.
func (l Layout) TempRootsDir() string { return filepath.Join(l.StateDir, "temproots") }

// GCLockPath is the lock the garbage collector holds exclusively.
func (l Layout) GCLockPath() string { return filepath.Join(l.StateDir, "gc.lock") }

// GCSocketPath is where a running collector accepts new temp roots.
func (l Layout) GCSocketPath() string { return filepath.Join(l.StateDir, "gc-socket", "socket") }

// OwnStateDir is storekeeper's own state (verify manifests and ledger), kept
// beside Nix's state dir and never inside it.
func (l Layout) OwnStateDir() string {
	return filepath.Join(filepath.Dir(l.StateDir), "storekeeper")
}

// IsInStore reports whether p (a logical path) is below the store dir.
func (l Layout) IsInStore(p string) bool { return storepath.IsInStore(l.StoreDir, p) }

// RealPath maps a logical store path (or a path below one) to where it
// physically is. p must be in the store; other paths are returned as they are.
func (l Layout) RealPath(p string) string {
	if l.RealStoreDir == l.StoreDir || !l.IsInStore(p) {
		return p
	}
	return l.RealStoreDir + p[len(l.StoreDir):]
}

// StorePathOf returns the logical full path of a base name.
func (l Layout) StorePathOf(base string) string { return l.StoreDir + "/" + base }

// String describes the layout for messages.
func (l Layout) String() string {
	if l.RealStoreDir != l.StoreDir {
		return fmt.Sprintf("%s (at %s), state %s", l.StoreDir, l.RealStoreDir, l.StateDir)
	}
	return fmt.Sprintf("%s, state %s", l.StoreDir, l.StateDir)
}
