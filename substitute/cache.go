package substitute

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"sync"

	"storekeeper/nix/compression"
	"storekeeper/nix/narinfo"
	"storekeeper/nix/storepath"
	"storekeeper/report"
)

// transport is how a binary cache's files are read: plain files for
// file://, GET requests for http(s)://. rel is a path below the cache's
// root, already checked by safeRel.
type transport interface {
	// fetch returns the whole file rel, at most max bytes (more is an
	// error); a missing file wraps ErrNotFound.
	fetch(ctx context.Context, rel string, max int64) ([]byte, error)
	// open streams the file rel; reads fail promptly once ctx is done; a
	// missing file wraps ErrNotFound.
	open(ctx context.Context, rel string) (io.ReadCloser, error)
	// where is rel's URL, for messages.
	where(rel string) string
	// unreachable reports whether err (from fetch, after all its
	// attempts) says the server could not be reached at all or never
	// answered, so that no later look-up should wait for it again.
	unreachable(err error) bool
	close()
}

// cache is a binary cache source. Safe for concurrent use: Init runs
// once (concurrent callers wait for it), look-ups and opens run in
// parallel over the transport.
type cache struct {
	url  string // as configured, without parameters or trailing slash
	o    Options
	t    transport
	prio int // from ?priority=N; -1: none
	// unchecked is the Trust of every offer when the URL's trusted=true
	// turned signature checks off (o.CheckSigs is then false).
	unchecked string

	mu      sync.Mutex
	inited  bool
	initErr error // wraps ErrBadSource
	info    *narinfo.CacheInfo

	deadMu sync.Mutex
	dead   error // the server became unreachable after Init: wraps ErrBadSource
}

func (c *cache) URL() string { return c.url }

func (c *cache) Priority(ctx context.Context) int {
	if c.prio >= 0 {
		return c.prio
	}
	if c.Init(ctx) == nil && c.info.HasPriority {
		return c.info.Priority
	}
	return DefaultPriority
}

// Init reads nix-cache-info once. Its result, success or failure, is
// kept for every later call, except a failure caused by ctx's end (the
// next call tries again).
func (c *cache) Init(ctx context.Context) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.inited {
		return c.initErr
	}
	err := c.init(ctx)
	if err != nil && ctx.Err() != nil {
		return fmt.Errorf("substituter %s: %w", report.Name(c.url), ctx.Err())
	}
	c.inited, c.initErr = true, err
	return err
}

func (c *cache) init(ctx context.Context) error {
	where := c.t.where("nix-cache-info")
	data, err := c.t.fetch(ctx, "nix-cache-info", narinfo.MaxSize)
	if errors.Is(err, ErrNotFound) {
		return fmt.Errorf("%w %s: it has no nix-cache-info, so it is not a binary cache (check the URL)", ErrBadSource, report.Name(c.url))
	}
	if err != nil {
		return fmt.Errorf("%w %s: reading %s: %w", ErrBadSource, report.Name(c.url), report.Name(where), err)
	}
	ci, err := narinfo.ParseCacheInfo(data)
	if err != nil {
		return fmt.Errorf("%w %s: %s: %w", ErrBadSource, report.Name(c.url), report.Name(where), err)
	}
	if ci.StoreDir != "" && ci.StoreDir != c.o.StoreDir {
		return fmt.Errorf("%w %s: its nix-cache-info says StoreDir: %s, but this store is %s; a cache of another store directory cannot repair it",
			ErrBadSource, report.Name(c.url), report.Name(ci.StoreDir), report.Name(c.o.StoreDir))
	}
	c.info = ci
	return nil
}

// usable returns the error every look-up fails with at once: Init's, or
// the server having become unreachable.
func (c *cache) usable(ctx context.Context) error {
	if err := c.Init(ctx); err != nil {
		return err
	}
	c.deadMu.Lock()
	defer c.deadMu.Unlock()
	return c.dead
}

// markDead records that the server could not be reached, or answered
// nothing, on all attempts of a look-up, so that the other look-ups fail
// at once rather than each wait as long.
func (c *cache) markDead(err error) error {
	c.deadMu.Lock()
	defer c.deadMu.Unlock()
	if c.dead == nil {
		c.dead = fmt.Errorf("%w %s: the server cannot be reached or does not answer: %w", ErrBadSource, report.Name(c.url), err)
	}
	return c.dead
}

// Lookup reads <hashpart>.narinfo and checks everything narinfo.Parse
// leaves to its caller: the narinfo is for w.Path, its URL is a safe path
// below the cache's root, its Compression is one compression.NewReader
// decodes, its NarHash and NarSize are w's, and it is trusted (trust).
func (c *cache) Lookup(ctx context.Context, w Want) (*Offer, error) {
	base, err := storepath.Parse(c.o.StoreDir, w.Path)
	if err != nil {
		return nil, fmt.Errorf("substituter %s: %w", report.Name(c.url), err)
	}
	if err := c.usable(ctx); err != nil {
		return nil, err
	}
	rel := storepath.HashPart(base) + ".narinfo"
	where := c.t.where(rel)
	data, err := c.t.fetch(ctx, rel, narinfo.MaxSize)
	if err != nil {
		if errors.Is(err, ErrNotFound) {
			return nil, fmt.Errorf("%s: %s: %w", report.Name(w.Path), report.Name(where), err)
		}
		if ctx.Err() == nil && c.t.unreachable(err) {
			return nil, c.markDead(err)
		}
		return nil, fmt.Errorf("%s: %s: %w", report.Name(w.Path), report.Name(where), err)
	}
	ni, err := narinfo.Parse(data, c.o.StoreDir)
	if err != nil {
		return nil, fmt.Errorf("%s: %s: %w", report.Name(w.Path), report.Name(where), err)
	}
	if err := c.check(ni, w, where); err != nil {
		return nil, fmt.Errorf("%s: %w", report.Name(w.Path), err)
	}
	trust, err := c.trust(ni, where)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", report.Name(w.Path), err)
	}
	return &Offer{
		Source:       c,
		Path:         w.Path,
		NarHash:      ni.NarHash,
		NarSize:      ni.NarSize,
		DownloadSize: ni.FileSize,
		Compression:  ni.Compression,
		Where:        c.t.where(ni.URL),
		Trust:        trust,
		handle:       ni,
	}, nil
}

// check checks a parsed narinfo against w.
func (c *cache) check(ni *narinfo.NarInfo, w Want, where string) error {
	if ni.StorePath != w.Path {
		return fmt.Errorf("%w: %s is for %s, not for this path", ErrMismatch, report.Name(where), report.Name(ni.StorePath))
	}
	if err := safeRel(ni.URL); err != nil {
		return fmt.Errorf("%s: URL %s: %w", report.Name(where), report.Name(ni.URL), err)
	}
	if err := compression.Check(ni.Compression); err != nil {
		return fmt.Errorf("%s: %w", report.Name(where), err)
	}
	if ni.NarHash != w.NarHash {
		return fmt.Errorf("%w: the cache has NarHash %s (%s), the database %s", ErrMismatch, ni.NarHash, report.Name(where), w.NarHash)
	}
	if w.NarSize != 0 && ni.NarSize != w.NarSize {
		return fmt.Errorf("%w: the cache has NarSize %d (%s), the database %d", ErrMismatch, ni.NarSize, report.Name(where), w.NarSize)
	}
	return nil
}

// maxRelLen bounds a narinfo's URL.
const maxRelLen = 4096

// safeRel checks a narinfo's URL: a relative path below the cache's root
// made only of letters, digits and "-._~+=,@/", no empty, "." or ".."
// segment, optionally followed by one "?" and a query of letters, digits
// and "-._~+=,@&" (harmonia writes "nar/<narhash>.nar?hash=<hashpart>";
// Nix appends the URL to the cache's as it is: a query over HTTP, part
// of the file name for file://). So no scheme, no absolute path, no
// fragment, no percent-escape, nothing a file:// cache would resolve
// outside its directory or an HTTP one outside its root. Every NAR URL
// Nix writes ("nar/<base-32>.nar.xz") passes.
func safeRel(rel string) error {
	if rel == "" || len(rel) > maxRelLen {
		return fmt.Errorf("empty or longer than %d bytes", maxRelLen)
	}
	path, query, hasQuery := strings.Cut(rel, "?")
	if err := relChars(path, "-._~+=,@/"); err != nil {
		return err
	}
	if hasQuery {
		if query == "" {
			return errors.New("an empty query")
		}
		if err := relChars(query, "-._~+=,@&"); err != nil {
			return fmt.Errorf("in its query: %w", err)
		}
	}
	if path == "" || path[0] == '/' {
		return errors.New("an absolute or empty path; a NAR must be below the cache's root")
	}
	for _, seg := range strings.Split(path, "/") {
		if seg == "" || seg == "." || seg == ".." {
			return fmt.Errorf("the segment %q is not allowed (a NAR must be below the cache's root)", seg)
		}
	}
	return nil
}

// relChars checks that s has only letters, digits and the bytes of
// punct.
func relChars(s, punct string) error {
	for i := 0; i < len(s); i++ {
		ch := s[i]
		if ch >= 'a' && ch <= 'z' || ch >= 'A' && ch <= 'Z' || ch >= '0' && ch <= '9' || strings.IndexByte(punct, ch) >= 0 {
			continue
		}
		return fmt.Errorf("the character %q is not allowed (only a relative path below the cache and a plain query: no scheme, fragment or escape)", ch)
	}
	return nil
}

// trust says why ni can be trusted, or returns an error wrapping
// ErrUntrusted: without CheckSigs (--no-check-sigs, or trusted=true in
// the cache's URL) nothing is checked; else a valid
// signature by a trusted key, or a content address that gives exactly
// the store path, as Nix's substitution accepts a path.
func (c *cache) trust(ni *narinfo.NarInfo, where string) (string, error) {
	if c.unchecked != "" {
		return c.unchecked, nil
	}
	if !c.o.CheckSigs {
		return "not checked (--no-check-sigs)", nil
	}
	fp := ni.Fingerprint()
	var good, signers []string
	for _, s := range ni.Sigs {
		name, _, _ := strings.Cut(s, ":")
		switch {
		case c.o.TrustedKeys.Verify(fp, s):
			good = append(good, name)
		case c.o.TrustedKeys[name] != nil:
			signers = append(signers, report.Name(name)+" (a bad signature)")
		default:
			signers = append(signers, report.Name(name)+" (not trusted)")
		}
	}
	if len(good) > 0 {
		return "signed by " + strings.Join(slices.Compact(slices.Sorted(slices.Values(good))), ", "), nil
	}
	caWhy := ""
	if ni.CA != "" {
		why := caCheck(ni)
		if why == "" {
			return "content-addressed", nil
		}
		caWhy = "; its content address " + report.Name(ni.CA) + " does not check out: " + why
	}
	signed := "no signature"
	if len(signers) > 0 {
		signed = "signatures by " + strings.Join(signers, ", ")
	}
	var trusted []string
	for k := range c.o.TrustedKeys {
		trusted = append(trusted, report.Name(k))
	}
	slices.Sort(trusted)
	tk := "none"
	if len(trusted) > 0 {
		tk = strings.Join(trusted, ", ")
	}
	return "", fmt.Errorf("%w: %s has %s%s, and the trusted keys are: %s (add the cache's key to trusted-public-keys, or pass --no-check-sigs)",
		ErrUntrusted, report.Name(where), signed, caWhy, tk)
}

// caCheck returns "" when ni's content address reproduces its store path
// from its references and name exactly as Nix's isContentAddressed
// computes it (and, for a recursive sha256 address, names ni's NarHash:
// the two are the same hash), else why not.
func caCheck(ni *narinfo.NarInfo) string {
	dir := ni.StoreDir()
	base := ni.StorePath[len(dir)+1:]
	got, err := storepath.ContentAddressedPath(dir, ni.StorePath, ni.CA, storepath.NamePart(base), ni.ReferencePaths())
	if err != nil {
		return err.Error()
	}
	if got != ni.StorePath {
		return "it gives the path " + report.Name(got)
	}
	ca, _ := storepath.ParseContentAddress(ni.CA)
	if ca.Recursive && ca.Algo == "sha256" && string(ca.Hash) != string(ni.NarHash[:]) {
		return "its hash is not the NarHash " + ni.NarHash.String()
	}
	return ""
}

// Open streams the offer's NAR file, decompressed and bounded (see
// newNarStream).
func (c *cache) Open(ctx context.Context, o *Offer) (io.ReadCloser, error) {
	ni, ok := o.handle.(*narinfo.NarInfo)
	if !ok || o.Source != Source(c) {
		return nil, fmt.Errorf("substituter %s: the offer of %s is not this source's", report.Name(c.url), report.Name(o.Path))
	}
	if err := c.usable(ctx); err != nil {
		return nil, err
	}
	body, err := c.t.open(ctx, ni.URL)
	if err != nil {
		return nil, fmt.Errorf("%s: %s: %w", report.Name(o.Path), report.Name(o.Where), err)
	}
	s, err := newNarStream(body, ni.Compression, ni.NarSize, ni.FileSize, ni.FileHash, o.Path, o.Where)
	if err != nil {
		body.Close()
		return nil, err
	}
	return s, nil
}

// Close drops the idle connections.
func (c *cache) Close() error {
	c.t.close()
	return nil
}
