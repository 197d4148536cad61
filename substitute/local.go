package substitute

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/url"
	"os"
	"path/filepath"
	"sync"

	"golang.org/x/sys/unix"

	"storekeeper/nix/nar"
	"storekeeper/nix/storepath"
	"storekeeper/report"
	"storekeeper/store"
	"storekeeper/store/db"
)

// localStore is another Nix store on this machine (a mounted backup disk,
// an installer's source store, a store over NFS): its database, opened
// read-only (no write access needed, nothing written; its big-lock taken
// shared when it can be read, as every Nix reader does), says which paths
// it has with which NAR hash, and its files are dumped as a NAR without
// following any symlink. Safe for concurrent use.
type localStore struct {
	url  string
	lay  store.Layout
	o    Options
	prio int

	mu      sync.Mutex
	inited  bool
	initErr error
	db      *db.DB
	closed  bool
}

// newLocal makes the source "local?QUERY" (New turns "/DIR?QUERY" into
// "local?root=DIR&QUERY"): root= is required (a plain "local" is this
// machine's own store); store=, when given, must be Options.StoreDir;
// state= and real= move the database and the store directory as in Nix.
func newLocal(rawURL, query string, o Options) (Source, error) {
	q, err := url.ParseQuery(query)
	if err != nil {
		return nil, fmt.Errorf("%w %s: %w (%s)", ErrBadSource, report.Name(rawURL), err, supported)
	}
	prio, err := storeParams(rawURL, q, localParams, o)
	if err != nil {
		return nil, err
	}
	if prio < 0 {
		prio = DefaultPriority
	}
	root := q.Get("root")
	if root == "" {
		return nil, fmt.Errorf("%w %s: a local store without root= is this machine's own store; name another one with local?root=DIR (%s)", ErrBadSource, report.Name(rawURL), supported)
	}
	if sd := q.Get("store"); sd != "" && filepath.Clean(sd) != o.StoreDir {
		return nil, fmt.Errorf("%w %s: its store directory %s is not %s; a store of another directory cannot repair this one", ErrBadSource, report.Name(rawURL), report.Name(sd), report.Name(o.StoreDir))
	}
	root, err = filepath.Abs(root)
	if err != nil {
		return nil, fmt.Errorf("%w %s: %w", ErrBadSource, report.Name(rawURL), err)
	}
	lay := store.Layout{
		StoreDir:     o.StoreDir,
		Root:         root,
		RealStoreDir: filepath.Join(root, "nix/store"),
		StateDir:     filepath.Join(root, "nix/var/nix"),
	}
	for _, p := range []struct {
		key string
		dst *string
	}{{"real", &lay.RealStoreDir}, {"state", &lay.StateDir}} {
		if v := q.Get(p.key); v != "" {
			if !filepath.IsAbs(v) {
				return nil, fmt.Errorf("%w %s: %s=%s is not an absolute directory", ErrBadSource, report.Name(rawURL), p.key, report.Name(v))
			}
			*p.dst = filepath.Clean(v)
		}
	}
	return &localStore{url: rawURL, lay: lay, o: o, prio: prio}, nil
}

func (l *localStore) URL() string { return l.url }

func (l *localStore) Priority(context.Context) int { return l.prio }

// Init opens the other store's database read-only, once; it refuses
// (ErrBadSource) a store directory that is the store being repaired, a
// missing one, and a database it cannot open.
func (l *localStore) Init(ctx context.Context) error {
	_, err := l.database(ctx)
	return err
}

// database returns the open database, opening it on the first call.
func (l *localStore) database(ctx context.Context) (*db.DB, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return nil, fmt.Errorf("%w %s: closed", ErrBadSource, report.Name(l.url))
	}
	if l.inited {
		return l.db, l.initErr
	}
	err := l.init(ctx)
	if err != nil && ctx.Err() != nil {
		return nil, fmt.Errorf("substituter %s: %w", report.Name(l.url), ctx.Err())
	}
	l.inited, l.initErr = true, err
	return l.db, err
}

func (l *localStore) init(ctx context.Context) error {
	var their, ours unix.Stat_t
	if err := unix.Stat(l.lay.RealStoreDir, &their); err != nil {
		return fmt.Errorf("%w %s: its store directory %s: %w", ErrBadSource, report.Name(l.url), report.Name(l.lay.RealStoreDir), err)
	}
	if their.Mode&unix.S_IFMT != unix.S_IFDIR {
		return fmt.Errorf("%w %s: %s is not a directory", ErrBadSource, report.Name(l.url), report.Name(l.lay.RealStoreDir))
	}
	if err := unix.Stat(l.o.RealStoreDir, &ours); err == nil && ours.Dev == their.Dev && ours.Ino == their.Ino {
		return fmt.Errorf("%w %s: its store directory %s is the store being repaired (%s); substitute from another store",
			ErrBadSource, report.Name(l.url), report.Name(l.lay.RealStoreDir), report.Name(l.o.RealStoreDir))
	}
	d, err := db.Open(ctx, l.lay.DBDir(), db.Options{ReadOnly: true})
	if err != nil {
		return fmt.Errorf("%w %s: %w", ErrBadSource, report.Name(l.url), err)
	}
	l.db = d
	return nil
}

// Lookup reads w.Path's row in the other store's database (one indexed
// query) and offers the path when the row's hash, and its size when both
// rows have one, are w's and the path exists there.
func (l *localStore) Lookup(ctx context.Context, w Want) (*Offer, error) {
	base, err := storepath.Parse(l.o.StoreDir, w.Path)
	if err != nil {
		return nil, fmt.Errorf("substituter %s: %w", report.Name(l.url), err)
	}
	d, err := l.database(ctx)
	if err != nil {
		return nil, err
	}
	var hash string
	var size sql.NullInt64
	err = d.SQL.QueryRowContext(ctx, "select hash, narSize from ValidPaths where path = ?", w.Path).Scan(&hash, &size)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, fmt.Errorf("%s: %w in %s", report.Name(w.Path), ErrNotFound, report.Name(l.url))
	}
	if err != nil {
		return nil, fmt.Errorf("%s: reading %s: %w", report.Name(w.Path), report.Name(d.Path), err)
	}
	h, err := nar.ParseHash(hash)
	if err != nil {
		return nil, fmt.Errorf("%s: %s has a bad hash for it: %w", report.Name(w.Path), report.Name(d.Path), err)
	}
	if h != w.NarHash {
		return nil, fmt.Errorf("%s: %w: %s records %s, the database being repaired %s", report.Name(w.Path), ErrMismatch, report.Name(l.url), h, w.NarHash)
	}
	narSize := w.NarSize
	if size.Valid && size.Int64 > 0 {
		if w.NarSize != 0 && uint64(size.Int64) != w.NarSize {
			return nil, fmt.Errorf("%s: %w: %s records NarSize %d, the database being repaired %d", report.Name(w.Path), ErrMismatch, report.Name(l.url), size.Int64, w.NarSize)
		}
		narSize = uint64(size.Int64)
	}
	real := filepath.Join(l.lay.RealStoreDir, base)
	var st unix.Stat_t
	if err := unix.Lstat(real, &st); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("%s: %w in %s: registered there but %s is missing", report.Name(w.Path), ErrNotFound, report.Name(l.url), report.Name(real))
		}
		return nil, fmt.Errorf("%s: %s: %w", report.Name(w.Path), report.Name(real), err)
	}
	return &Offer{
		Source:       l,
		Path:         w.Path,
		NarHash:      h,
		NarSize:      narSize,
		DownloadSize: narSize,
		Compression:  "none",
		Where:        real,
		Trust:        "the other store's database",
		handle:       real,
	}, nil
}

// Open dumps the other store's copy as a NAR (nar.DumpPath: every node
// opened relative to its parent with O_NOFOLLOW, a symlink dumped as a
// symlink) through a pipe, bounded by the offer's NarSize. Closing the
// reader, or cancelling ctx, stops the dump.
func (l *localStore) Open(ctx context.Context, o *Offer) (io.ReadCloser, error) {
	real, ok := o.handle.(string)
	if !ok || o.Source != Source(l) {
		return nil, fmt.Errorf("substituter %s: the offer of %s is not this source's", report.Name(l.url), report.Name(o.Path))
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	pr, pw := io.Pipe()
	stop := context.AfterFunc(ctx, func() { pr.CloseWithError(ctx.Err()) })
	go func() {
		_, err := nar.DumpPath(pw, real)
		if err != nil {
			err = fmt.Errorf("%s: dumping %s: %w", report.Name(o.Path), report.Name(real), err)
		}
		pw.CloseWithError(err)
	}()
	body := &pipeBody{ctx: ctx, pr: pr, stop: stop}
	return newNarStream(body, "none", o.NarSize, 0, nil, o.Path, real)
}

type pipeBody struct {
	ctx  context.Context
	pr   *io.PipeReader
	stop func() bool
}

func (p *pipeBody) Read(b []byte) (int, error) {
	if err := p.ctx.Err(); err != nil {
		return 0, err
	}
	return p.pr.Read(b)
}

func (p *pipeBody) Close() error {
	p.stop()
	return p.pr.CloseWithError(os.ErrClosed)
}

// Close closes the other store's database (and releases its big-lock).
func (l *localStore) Close() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.closed = true
	if l.db != nil {
		err := l.db.Close()
		l.db = nil
		return err
	}
	return nil
}
