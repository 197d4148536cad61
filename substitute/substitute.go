// Package substitute finds and streams store paths from the places Nix
// substitutes from: binary caches over file://, http:// and https://
// (nix-cache-info, <hashpart>.narinfo, nar/... in any compression Nix
// writes) and other local stores (a mounted backup disk, an installer's
// source store, `local?root=/mnt` or a plain `/mnt`).
//
// It decides which copy of a path can be trusted, and nothing else: it
// never writes to a store. A Source answers Lookup with an Offer only when
// the offer describes exactly the contents the caller's database records
// (Want: NAR hash and size) and is trusted (a valid signature by a
// trusted key, a content address that checks out, or the other store's
// own database row); Open then streams the uncompressed NAR, which the
// caller must still hash (repair unpacks and hashes in one pass, and
// accepts nothing whose hash differs).
//
// Every input is bounded: narinfo and nix-cache-info files by
// narinfo.MaxSize, a NAR download by the offer's sizes, every network
// exchange by the connect and stall timeouts. Sources are safe for
// concurrent use by many goroutines.
package substitute

import (
	"context"
	"errors"
	"io"

	"storekeeper/nix/nar"
)

// Sentinel errors. Lookup and Open wrap them with the source and path
// concerned; errors.Is reaches them and the cause (a *url.Error, a
// syscall.Errno, narinfo.ErrBadNarInfo, ...).
var (
	// ErrNotFound: the source does not have the path (a 404, no
	// .narinfo file, no valid row in the other store). Not a failure of
	// the source: the next one is asked.
	ErrNotFound = errors.New("not found")
	// ErrUntrusted: the source has the path, but nothing vouches for it
	// (no valid signature by a key in trusted-public-keys, a content
	// address that does not check out), and signatures are checked.
	ErrUntrusted = errors.New("untrusted")
	// ErrMismatch: the source has the path with other contents than the
	// database records (another NAR hash or size), or what it sent did
	// not match what it announced.
	ErrMismatch = errors.New("contents differ from the database's")
	// ErrBadSource: the source is unusable as a whole (another store
	// directory, a malformed nix-cache-info, an unsupported URL, an
	// unreachable server after the retries): every lookup in it fails
	// with this error, and the next source is asked.
	ErrBadSource = errors.New("unusable substituter")
)

// Want is a path the caller wants, described by its own database: the
// only contents it accepts.
type Want struct {
	Path       string   // the full store path, "/nix/store/<hash>-<name>"
	NarHash    nar.Hash // the ValidPaths row's hash
	NarSize    uint64   // the row's narSize (0: unknown, then any size is taken and the hash decides)
	References []string // the row's references, full store paths, sorted (for content-address checks)
}

// Offer is a source's copy of a wanted path, checked against the Want and
// trusted (see Trust).
type Offer struct {
	Source Source
	Path   string
	// NarHash and NarSize are the uncompressed NAR's, equal to the
	// Want's.
	NarHash nar.Hash
	NarSize uint64
	// DownloadSize is what Open will transfer (a binary cache's FileSize,
	// the NAR size for a local store); 0 when the source does not say.
	DownloadSize uint64
	// Compression is how the transfer is compressed ("none" for a local
	// store).
	Compression string
	// Where is where the bytes come from, for messages: the NAR's URL or
	// the other store's physical path.
	Where string
	// Trust says why the offer is trusted, for messages and JSON:
	// "signed by KEYNAME", "content-addressed", "not checked
	// (--no-check-sigs)", "the other store's database".
	Trust string

	// handle is the source's own state for Open (the narinfo, the other
	// store's row).
	handle any
}

// Source is one place to substitute from.
type Source interface {
	// URL is the source as configured ("file:///srv/cache",
	// "https://cache.nixos.org", "local?root=/mnt"), for messages.
	URL() string
	// Priority orders sources: lower first, ties in configuration order
	// (?priority=N, else a binary cache's nix-cache-info Priority; 0
	// when not given, as in Nix 2.8, for a local store too). Calling it
	// may contact the source (Init).
	Priority(ctx context.Context) int
	// Init checks the source once (a binary cache's nix-cache-info and
	// its StoreDir, another store's database) and returns the same result
	// to every later call; an error wraps ErrBadSource.
	Init(ctx context.Context) error
	// Lookup returns the source's trusted offer of w, or an error
	// wrapping ErrNotFound, ErrUntrusted, ErrMismatch or ErrBadSource, or
	// a transport error after the retries. It transfers no NAR bytes.
	Lookup(ctx context.Context, w Want) (*Offer, error)
	// Open streams the offer's NAR, decompressed. The reader fails
	// (wrapping ErrMismatch) when the source sends more than the offer's
	// sizes allow; a short NAR shows as the NAR reader's truncation error.
	// Closing it releases the connection. Cancelling ctx makes reads fail
	// promptly.
	Open(ctx context.Context, o *Offer) (io.ReadCloser, error)
}
