package substitute

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"storekeeper/nix/nixconf"
	"storekeeper/nix/signature"
	"storekeeper/report"
)

// Defaults of Options' zero fields, as Nix 2.8's (connect-timeout
// excepted, see Options.ConnectTimeout).
const (
	DefaultConnectTimeout = 10 * time.Second
	DefaultStallTimeout   = 300 * time.Second
	DefaultConnections    = 25
	DefaultAttempts       = 5
	// DefaultRetryDelay is the first pause between two attempts, doubled
	// after each (with up to 40% more at random), as Nix's 250 ms.
	DefaultRetryDelay = 250 * time.Millisecond
	// DefaultPriority is a source's priority when neither its URL nor
	// (for a binary cache) its nix-cache-info gives one: 0, Nix 2.8's
	// StoreConfig default for every store type (`nix describe-stores`),
	// so a cache that nix copy --to file://... made (no Priority line)
	// comes before cache.nixos.org's 40, as in Nix.
	DefaultPriority = 0
)

// Options configure every source. A zero field means its default.
type Options struct {
	// StoreDir is the logical store directory of the store being
	// repaired ("/nix/store"): a cache of another store directory is
	// refused, and every path looked up must be in it.
	StoreDir string
	// RealStoreDir is where that store physically is ("" : StoreDir); a
	// local store source whose store directory is this very directory
	// (same device and inode) is refused.
	RealStoreDir string
	// TrustedKeys are trusted-public-keys; CheckSigs is require-sigs
	// (false: --no-check-sigs).
	TrustedKeys signature.PublicKeys
	CheckSigs   bool
	// ConnectTimeout bounds establishing a connection (TCP and TLS).
	// nix.conf's connect-timeout defaults to 0, curl's default of 300 s;
	// here 0 means DefaultConnectTimeout (10 s): a cache that takes
	// longer to accept a connection is unusable for a repair, and the
	// retries multiply the wait.
	ConnectTimeout time.Duration
	// StallTimeout fails a transfer that receives nothing for this long
	// while waiting for a response's headers (a server that accepts and
	// never answers), or less than a byte a second over this long of
	// waiting for its body (one that sends headers and hangs, or
	// trickles), as curl's low-speed limit in Nix.
	// stalled-download-timeout; 0: 300 s.
	StallTimeout time.Duration
	// Connections is the most connections to one HTTP server at once,
	// and the most idle ones kept alive for reuse (http-connections; 0:
	// 25; negative: no limit, as http-connections = 0 in nix.conf).
	Connections int
	// Attempts is the most tries of one transfer (download-attempts; 0:
	// 5).
	Attempts int
	// RetryDelay is the pause before the second try, doubled before each
	// later one (0: DefaultRetryDelay).
	RetryDelay time.Duration
	// Printer receives warnings (an unknown parameter in a source's URL,
	// which Nix also only warns about); nil: none.
	Printer report.Printer
}

// withDefaults returns o with its zero fields set to their defaults.
func (o Options) withDefaults() Options {
	if o.ConnectTimeout <= 0 {
		o.ConnectTimeout = DefaultConnectTimeout
	}
	if o.StallTimeout <= 0 {
		o.StallTimeout = DefaultStallTimeout
	}
	if o.Connections == 0 {
		o.Connections = DefaultConnections
	}
	if o.Attempts <= 0 {
		o.Attempts = DefaultAttempts
	}
	if o.RetryDelay <= 0 {
		o.RetryDelay = DefaultRetryDelay
	}
	if o.RealStoreDir == "" {
		o.RealStoreDir = o.StoreDir
	}
	return o
}

func (o Options) warn(msg string) {
	if o.Printer != nil {
		o.Printer.Warn(msg, "")
	}
}

// OptionsFromSettings returns the Options nix.conf gives for the store
// whose logical directory is storeDir: trusted-public-keys (a malformed
// key is an error naming it) and the public halves of secret-key-files
// (see addSecretKeyFiles), require-sigs, and from the settings
// storekeeper does not type, connect-timeout (seconds; 0, the default,
// is DefaultConnectTimeout here), stalled-download-timeout (seconds,
// default 300; 0, which turns Nix's check off, is 300 here too: a repair
// never waits forever), http-connections (default 25; 0 is no limit, as
// in Nix)
// and download-attempts (default 5; 0 is one try, as in Nix). A value
// that is not a whole number is an error naming the setting and where it
// was set. A nil set is Nix's defaults.
func OptionsFromSettings(set *nixconf.Settings, storeDir string) (Options, error) {
	if set == nil {
		d := nixconf.Default(true)
		set = &d
	}
	keys, err := signature.ParsePublicKeys(set.TrustedPublicKeys)
	if err != nil {
		return Options{}, fmt.Errorf("trusted-public-keys%s: %w", setAt(set, "trusted-public-keys"), err)
	}
	if err := addSecretKeyFiles(keys, set); err != nil {
		return Options{}, err
	}
	o := Options{StoreDir: storeDir, TrustedKeys: keys, CheckSigs: set.RequireSigs}
	num := func(name string, def uint64, max uint64) (uint64, error) {
		v, ok := set.Raw[name]
		if !ok {
			return def, nil
		}
		n, err := strconv.ParseUint(strings.TrimPrefix(v, "+"), 10, 64)
		if err != nil || n > max || strings.HasPrefix(v, "+-") {
			return 0, fmt.Errorf("%w: %s%s: %q is not a whole number up to %d", nixconf.ErrBadConfig, name, setAt(set, name), v, max)
		}
		return n, nil
	}
	const maxSeconds = 1 << 31 // beyond any use, and no overflow as a Duration
	ct, err := num("connect-timeout", 0, maxSeconds)
	if err != nil {
		return Options{}, err
	}
	st, err := num("stalled-download-timeout", 300, maxSeconds)
	if err != nil {
		return Options{}, err
	}
	conns, err := num("http-connections", DefaultConnections, 1<<20)
	if err != nil {
		return Options{}, err
	}
	tries, err := num("download-attempts", DefaultAttempts, 1000)
	if err != nil {
		return Options{}, err
	}
	o.ConnectTimeout = time.Duration(ct) * time.Second
	o.StallTimeout = time.Duration(st) * time.Second
	if st == 0 {
		// Nix: 0 disables the stall check; a repair never waits forever.
		o.StallTimeout = DefaultStallTimeout
	}
	o.Connections = int(conns)
	if conns == 0 {
		o.Connections = -1
	}
	o.Attempts = max(int(tries), 1)
	return o, nil
}

// maxSecretKeyFile bounds a secret key file (one line of about 100
// bytes).
const maxSecretKeyFile = 4096

// addSecretKeyFiles adds to keys the public halves of the keys in
// secret-key-files, as Nix's getDefaultPublicKeys does (the machine's
// own signing keys: what it signed is trusted), a name already in keys
// keeping its key. A file that cannot be opened is skipped, as in Nix (a
// multi-user install's keys are not everyone's to read); one that is not
// a regular file, is too large or holds no secret key is an error naming
// it, never its contents.
func addSecretKeyFiles(keys signature.PublicKeys, set *nixconf.Settings) error {
	for _, name := range strings.Fields(set.Raw["secret-key-files"]) {
		f, err := os.OpenFile(name, os.O_RDONLY|syscall.O_NONBLOCK|syscall.O_NOCTTY, 0)
		if err != nil {
			continue
		}
		data, err := readSmall(f, maxSecretKeyFile)
		f.Close()
		var sk signature.SecretKey
		if err == nil {
			sk, err = signature.ParseSecretKey(string(data))
		}
		if err != nil {
			return fmt.Errorf("secret-key-files%s: %s: %w", setAt(set, "secret-key-files"), report.Name(name), err)
		}
		if _, ok := keys[sk.Name]; !ok {
			keys[sk.Name] = sk.Public().Key
		}
	}
	return nil
}

// readSmall reads f, a regular file of at most max bytes.
func readSmall(f *os.File, max int64) ([]byte, error) {
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if !st.Mode().IsRegular() {
		return nil, fmt.Errorf("not a regular file (%s)", st.Mode().Type())
	}
	data, err := io.ReadAll(io.LimitReader(f, max+1))
	if err != nil {
		return nil, err
	}
	if int64(len(data)) > max {
		return nil, fmt.Errorf("larger than %d bytes", max)
	}
	return data, nil
}

// setAt says where a setting was set, for errors: " (set at FILE:LINE)".
func setAt(set *nixconf.Settings, name string) string {
	if src := set.Sources[name]; src != "" {
		return " (set at " + src + ")"
	}
	return ""
}

// supported is what New accepts, for its errors.
const supported = "supported: file:///DIR, http://..., https://... (binary caches), local?root=DIR or /DIR (another local store)"

// New returns the source url names: a binary cache ("file:///srv/cache",
// "http://host/path", "https://cache.nixos.org", each optionally with
// "?priority=N", "?trusted=true" (no signature check for this cache, as
// in Nix) and Nix's other store parameters, which are ignored; an
// unknown one draws a warning, as in Nix; a trailing slash is fine) or
// another local store ("local?root=/mnt", or the plain directory "/mnt",
// which Nix reads the same way). Anything else ("local" without a root,
// "auto", "daemon", "unix://", "ssh://", "ssh-ng://", "s3://", ...) is an
// error wrapping ErrBadSource that says what is supported. New contacts
// nothing: the first Init, Priority or Lookup does.
func New(rawURL string, o Options) (Source, error) {
	o = o.withDefaults()
	if o.StoreDir == "" || !filepath.IsAbs(o.StoreDir) {
		return nil, fmt.Errorf("substitute: Options.StoreDir %q is not an absolute directory", o.StoreDir)
	}
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w %s: %s (%s)", ErrBadSource, report.Name(rawURL), fmt.Sprintf(format, args...), supported)
	}
	if rawURL == "" {
		return nil, bad("empty URL")
	}
	scheme, _, hasScheme := strings.Cut(rawURL, "://")
	if !hasScheme {
		path, query, _ := strings.Cut(rawURL, "?")
		switch {
		case path == "local":
			return newLocal(rawURL, query, o)
		case strings.Contains(path, "/"):
			return newLocal(rawURL, "root="+url.QueryEscape(path)+ampersand(query), o)
		case path == "auto" || path == "daemon":
			return nil, bad("%q is this machine's own store (through the daemon); repair substitutes from another store", path)
		}
		return nil, bad("not a store URL")
	}
	switch scheme {
	case "file", "http", "https":
	default:
		return nil, bad("%s:// stores are not supported", scheme)
	}
	u, err := url.Parse(rawURL)
	if err != nil {
		return nil, bad("%v", err)
	}
	prio, err := storeParams(rawURL, u.Query(), cacheParams, o)
	if err != nil {
		return nil, err
	}
	trusted, err := trustedParam(rawURL, u.Query())
	if err != nil {
		return nil, err
	}
	u.RawQuery, u.Fragment, u.RawFragment = "", "", ""
	u.Path = strings.TrimRight(u.Path, "/")
	u.RawPath = strings.TrimRight(u.RawPath, "/")
	if u.User != nil {
		return nil, bad("credentials in a cache URL are not supported (use a netrc-free server or a file:// cache)")
	}
	name := strings.TrimRight(strings.SplitN(rawURL, "?", 2)[0], "/")
	var t transport
	if scheme == "file" {
		if u.Host != "" && u.Host != "localhost" {
			return nil, bad("a file:// URL names a directory on this machine, not on %q", u.Host)
		}
		if u.Path == "" || !filepath.IsAbs(u.Path) {
			return nil, bad("no absolute directory")
		}
		t = &fileTransport{root: filepath.Clean(u.Path)}
	} else {
		if u.Host == "" {
			return nil, bad("no host")
		}
		t = newHTTPTransport(u, o)
	}
	c := &cache{url: name, o: o, t: t, prio: prio}
	if trusted != "" && o.CheckSigs {
		c.o.CheckSigs = false
		c.unchecked = "not checked (" + trusted + " in its URL)"
	}
	return c, nil
}

// trustedParam returns "trusted=V" when the URL's trusted parameter is
// true (Nix's Booleans: true, yes, 1), "" when it is absent or false:
// as Nix's substitution, a cache named with trusted=true is used without
// a signature check (the NAR hash must still be the database's).
func trustedParam(rawURL string, q url.Values) (string, error) {
	vs, ok := q["trusted"]
	if !ok {
		return "", nil
	}
	v := vs[len(vs)-1]
	switch v {
	case "true", "yes", "1":
		return "trusted=" + v, nil
	case "false", "no", "0":
		return "", nil
	}
	return "", fmt.Errorf("%w %s: trusted=%s is not a Boolean (true, yes, 1, false, no, 0)", ErrBadSource, report.Name(rawURL), report.Name(v))
}

func ampersand(query string) string {
	if query == "" {
		return ""
	}
	return "&" + query
}

// cacheParams are the store parameters Nix 2.8 knows for binary caches
// (and every store): accepted and, but for priority and trusted, ignored,
// since they concern writing a cache or Nix's own bookkeeping.
var cacheParams = map[string]bool{
	"priority": true, "trusted": true, "want-mass-query": true, "compression": true,
	"compression-level": true, "parallel-compression": true, "write-nar-listing": true,
	"index-debug-info": true, "secret-key": true, "local-nar-cache": true,
	"path-info-cache-size": true, "system-features": true,
}

// localParams are those Nix knows for a local store; root, store, state
// and real place it, the rest are ignored.
var localParams = map[string]bool{
	"priority": true, "trusted": true, "want-mass-query": true, "path-info-cache-size": true,
	"system-features": true, "root": true, "store": true, "state": true, "real": true, "log": true,
	"read-only": true, "require-sigs": true,
}

// storeParams checks a source URL's parameters: priority must be an
// integer (-1 when absent); an unknown parameter is warned about.
func storeParams(rawURL string, q url.Values, known map[string]bool, o Options) (int, error) {
	prio := -1
	for k, vs := range q {
		if !known[k] {
			o.warn(fmt.Sprintf("unknown parameter %s in substituter %s, ignored", report.Name(k), report.Name(rawURL)))
			continue
		}
		if k == "priority" {
			p, err := strconv.Atoi(vs[len(vs)-1])
			if err != nil || p < 0 {
				return 0, fmt.Errorf("%w %s: priority %s is not a whole number", ErrBadSource, report.Name(rawURL), report.Name(vs[len(vs)-1]))
			}
			prio = p
		}
	}
	return prio, nil
}

// Open returns New of each URL, in order; the first error stops it (and
// closes the sources made so far).
func Open(urls []string, o Options) ([]Source, error) {
	var out []Source
	for _, u := range urls {
		s, err := New(u, o)
		if err != nil {
			Close(out)
			return nil, err
		}
		out = append(out, s)
	}
	return out, nil
}

// Sort returns srcs ordered by Priority, lower first, ties in the order
// given (Nix's order: substituters as configured, then stable by
// priority). It asks every source's Priority at once, so the binary
// caches' nix-cache-info files are read in parallel; a source whose Init
// fails keeps its configured or default priority (its lookups fail at
// once). srcs is not changed.
func Sort(ctx context.Context, srcs []Source) []Source {
	prio := make([]int, len(srcs))
	var wg sync.WaitGroup
	for i, s := range srcs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			prio[i] = s.Priority(ctx)
		}()
	}
	wg.Wait()
	idx := make([]int, len(srcs))
	for i := range idx {
		idx[i] = i
	}
	slices.SortStableFunc(idx, func(a, b int) int { return prio[a] - prio[b] })
	out := make([]Source, len(srcs))
	for i, j := range idx {
		out[i] = srcs[j]
	}
	return out
}

// Close releases what the sources hold (a local store's open database
// and its shared big-lock, a cache's idle connections). A local store
// source is unusable afterwards (its look-ups fail with ErrBadSource); a
// cache opens new connections when asked again. It returns the errors
// joined.
func Close(srcs []Source) error {
	var errs []error
	for _, s := range srcs {
		if c, ok := s.(io.Closer); ok {
			errs = append(errs, c.Close())
		}
	}
	return errors.Join(errs...)
}
