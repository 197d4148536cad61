package nixconf

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// ErrBadConfig is wrapped by every error about nix.conf contents, the
// environment variables that locate it, or a Set override.
var ErrBadConfig = errors.New("store: bad nix.conf")

// Defaults of the settings Settings types, as in Nix 2.8 (globals.hh and
// `nix show-config` of Debian's nix-bin 2.8.0).
const (
	DefaultConfDir         = "/etc/nix"
	DefaultGCReservedSpace = 8 << 20
	DefaultSubstituter     = "https://cache.nixos.org/"
	DefaultTrustedKey      = "cache.nixos.org-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY="
)

// Limits that Nix 2.8 does not have: it follows include loops until its
// stack overflows and reads files of any size.
const (
	maxIncludeDepth = 32
	maxConfFileSize = 16 << 20
)

// Settings are the nix.conf settings storekeeper acts on, read the way
// Nix 2.8 reads them. The zero value is not meaningful: start from
// DefaultSettings (or LoadSettings).
//
// Raw holds every setting that was set (by a file, NIX_CONFIG or Set),
// including ones storekeeper does not type and ones Nix does not know,
// keyed by the setting's canonical name (aliases resolved, "extra-"
// folded into the base setting when it is a Nix list setting) with its
// final value as text. Sources says where each Raw entry was last set:
// "FILE:LINE", "NIX_CONFIG:LINE" or "--option".
type Settings struct {
	KeepOutputs     bool   // keep-outputs (alias gc-keep-outputs)
	KeepDerivations bool   // keep-derivations (alias gc-keep-derivations)
	GCReservedSpace uint64 // gc-reserved-space, bytes
	MinFree         uint64 // min-free, bytes
	MaxFree         uint64 // max-free, bytes
	BuildUsersGroup string // build-users-group

	Substituters      []string // substituters (alias binary-caches)
	TrustedPublicKeys []string // trusted-public-keys (alias binary-cache-public-keys)

	AutoOptimiseStore bool   // auto-optimise-store
	RequireSigs       bool   // require-sigs
	FsyncMetadata     bool   // fsync-metadata
	UseSQLiteWAL      bool   // use-sqlite-wal
	StoreURI          string // store

	Raw      map[string]string
	Sources  map[string]string
	Warnings []string // unknown settings, ignored unreadable files, ...

	// lists holds the list settings changed during one ApplyFile,
	// ApplyText or Set, as tokens; finishLists turns them into Raw and
	// the typed fields when the call returns, so N "extra-" lines cost
	// O(N) and not O(N²). nil between calls.
	lists map[string][]string
}

// DefaultSettings returns Nix 2.8's defaults. isRoot selects the default
// of build-users-group: "nixbld" for root, "" otherwise.
func Default(isRoot bool) Settings {
	s := Settings{
		KeepDerivations:   true,
		GCReservedSpace:   DefaultGCReservedSpace,
		MaxFree:           math.MaxUint64,
		Substituters:      []string{DefaultSubstituter},
		TrustedPublicKeys: []string{DefaultTrustedKey},
		RequireSigs:       true,
		FsyncMetadata:     true,
		UseSQLiteWAL:      true,
		StoreURI:          "auto",
		Raw:               map[string]string{},
		Sources:           map[string]string{},
	}
	if isRoot {
		s.BuildUsersGroup = "nixbld"
	}
	return s
}

// LoadSettings starts from DefaultSettings(isRoot) and applies, in Nix
// 2.8's order (later ones win):
//
//  1. $NIX_CONF_DIR/nix.conf (NIX_CONF_DIR defaults to /etc/nix);
//  2. the user files, last to first: the colon-separated
//     $NIX_USER_CONF_FILES if set, else $XDG_CONFIG_HOME/nix/nix.conf
//     (XDG_CONFIG_HOME defaults to $HOME/.config) followed by
//     DIR/nix/nix.conf for each DIR of $XDG_CONFIG_DIRS (default
//     /etc/xdg) — so the first one listed wins;
//  3. the contents of $NIX_CONFIG, as a config text.
//
// Missing files are skipped, as Nix does. getenv is os.Getenv in
// production; with a non-nil getenv an empty variable counts as unset.
// A nil getenv reads the process environment with os.LookupEnv, where (as
// in Nix) a variable set to "" is set: NIX_USER_CONF_FILES="" means no
// user files.
func Load(getenv func(string) string, isRoot bool) (Settings, error) {
	lookup := os.LookupEnv
	if getenv != nil {
		lookup = func(k string) (string, bool) {
			v := getenv(k)
			return v, v != ""
		}
	}
	s := Default(isRoot)

	confDir, ok := lookup("NIX_CONF_DIR")
	if !ok {
		confDir = DefaultConfDir
	}
	if !filepath.IsAbs(confDir) {
		return s, fmt.Errorf("%w: NIX_CONF_DIR %q is not an absolute path", ErrBadConfig, confDir)
	}
	if err := s.ApplyFile(filepath.Join(filepath.Clean(confDir), "nix.conf")); err != nil {
		return s, err
	}

	files := userConfFiles(lookup)
	for i := len(files) - 1; i >= 0; i-- {
		if err := s.ApplyFile(files[i]); err != nil {
			return s, err
		}
	}

	if text, ok := lookup("NIX_CONFIG"); ok {
		if err := s.ApplyText(text, "NIX_CONFIG"); err != nil {
			return s, err
		}
	}
	return s, nil
}

// userConfFiles lists the user configuration files in Nix's order, the
// one that wins first.
func userConfFiles(lookup func(string) (string, bool)) []string {
	if v, ok := lookup("NIX_USER_CONF_FILES"); ok {
		return splitNonEmpty(v, ":")
	}
	configHome, ok := lookup("XDG_CONFIG_HOME")
	if !ok {
		configHome = homeDir(lookup) + "/.config"
	}
	dirs := "/etc/xdg"
	if v, ok := lookup("XDG_CONFIG_DIRS"); ok {
		dirs = v
	}
	// Nix joins with a plain "/": XDG_CONFIG_HOME="" gives /nix/nix.conf.
	files := []string{configHome + "/nix/nix.conf"}
	for _, d := range splitNonEmpty(dirs, ":") {
		files = append(files, d+"/nix/nix.conf")
	}
	return files
}

// homeDir is $HOME, or the home directory in the password database.
func homeDir(lookup func(string) (string, bool)) string {
	if h, ok := lookup("HOME"); ok {
		return h
	}
	if u, err := user.Current(); err == nil {
		return u.HomeDir
	}
	return ""
}

func splitNonEmpty(s, sep string) []string {
	var out []string
	for _, f := range strings.Split(s, sep) {
		if f != "" {
			out = append(out, f)
		}
	}
	return out
}

// ApplyFile applies the configuration file at path onto s, as Nix's
// applyConfigFile does: a file that does not exist is skipped silently; one
// that cannot be read (a directory, no permission) is skipped with a
// warning (Nix skips it silently). Includes are resolved relative to the
// directory of path. On error s may be partly updated.
func (s *Settings) ApplyFile(path string) error {
	defer s.finishLists()
	return s.applyFile(path, nil)
}

// ApplyText applies a configuration text onto s. source names the text in
// errors and Sources, and relative include paths are resolved against its
// directory: with a source that is not a file path (Nix uses "NIX_CONFIG")
// relative includes are an error, as in Nix. On error s may be partly
// updated.
func (s *Settings) ApplyText(text, source string) error {
	defer s.finishLists()
	return s.applyText(text, source, nil)
}

func (s *Settings) applyFile(path string, stack []string) error {
	data, err := readConfFile(path)
	switch {
	case err == nil:
	case errors.Is(err, errConfTooLarge):
		return fmt.Errorf("%w: %s: larger than %d bytes", ErrBadConfig, path, maxConfFileSize)
	case isNotExist(err):
		return nil
	default:
		s.warnf("ignoring %s: %v", path, err)
		return nil
	}
	return s.applyText(string(data), path, append(stack, filepath.Clean(path)))
}

var errConfTooLarge = errors.New("too large")

func isNotExist(err error) bool {
	return errors.Is(err, fs.ErrNotExist) || errors.Is(err, unix.ENOTDIR)
}

func readConfFile(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxConfFileSize+1))
	if err != nil {
		return nil, err
	}
	if len(data) > maxConfFileSize {
		return nil, errConfTooLarge
	}
	return data, nil
}

// applyText parses text line by line, applying each setting as soon as it
// is read and each include where it appears (Nix 2.8 order). stack holds
// the files being applied, outermost first.
func (s *Settings) applyText(text, source string, stack []string) error {
	lineNo := 0
	for len(text) > 0 || lineNo == 0 {
		lineNo++
		line := text
		if i := strings.IndexByte(text, '\n'); i >= 0 {
			line, text = text[:i], text[i+1:]
		} else {
			text = ""
		}
		if i := strings.IndexByte(line, '#'); i >= 0 {
			line = line[:i]
		}
		toks := confTokens(line)
		if len(toks) == 0 {
			continue
		}
		where := fmt.Sprintf("%s:%d", source, lineNo)
		illegal := func() error {
			return fmt.Errorf("%w: %s: illegal configuration line '%s'", ErrBadConfig, where, line)
		}
		if len(toks) < 2 {
			return illegal()
		}
		if toks[0] == "include" || toks[0] == "!include" {
			if len(toks) != 2 {
				return illegal()
			}
			if err := s.include(toks[1], toks[0] == "!include", source, where, stack); err != nil {
				return err
			}
			continue
		}
		if toks[1] != "=" {
			return illegal()
		}
		if err := s.set(toks[0], strings.Join(toks[2:], " "), where); err != nil {
			return err
		}
	}
	return nil
}

// include applies an included file, resolved as Nix's
// absPath(p, dirOf(source)) does (lexically, without following symlinks).
func (s *Settings) include(p string, ignoreMissing bool, source, where string, stack []string) error {
	if !strings.HasPrefix(p, "/") {
		p = filepath.Dir(source) + "/" + p
	}
	if !filepath.IsAbs(p) {
		return fmt.Errorf("%w: %s: include path '%s' is not an absolute path", ErrBadConfig, where, p)
	}
	p = filepath.Clean(p)
	if _, err := os.Lstat(p); err != nil {
		if !isNotExist(err) {
			return fmt.Errorf("%w: %s: include: %w", ErrBadConfig, where, err)
		}
		if ignoreMissing {
			return nil
		}
		return fmt.Errorf("%w: %s: file '%s' included from '%s' not found", ErrBadConfig, where, p, source)
	}
	for _, f := range stack {
		if f == p {
			return fmt.Errorf("%w: %s: include loop: %s -> %s", ErrBadConfig, where, strings.Join(stack, " -> "), p)
		}
	}
	if len(stack) >= maxIncludeDepth {
		return fmt.Errorf("%w: %s: includes nested more than %d deep", ErrBadConfig, where, maxIncludeDepth)
	}
	return s.applyFile(p, stack)
}

// confTokens splits a line at runs of space, tab, CR and LF, as Nix's
// tokenizeString does by default.
func confTokens(line string) []string {
	return strings.FieldsFunc(line, func(r rune) bool {
		return r == ' ' || r == '\t' || r == '\r' || r == '\n'
	})
}

// Set applies one override, as `--option NAME VALUE` does: NAME may be an
// alias or extra-NAME; VALUE is taken as is (lists are split at
// whitespace). Unlike Nix, which only warns about a bad --option value,
// a value that does not parse is an error wrapping ErrBadConfig.
func (s *Settings) Set(name, value string) error {
	defer s.finishLists()
	return s.set(name, value, "--option")
}

// set applies name = value from where.
func (s *Settings) set(name, value, where string) error {
	if s.Raw == nil {
		s.Raw = map[string]string{}
	}
	if s.Sources == nil {
		s.Sources = map[string]string{}
	}
	canon, known := nixSettings[name]
	appendTo := false
	if !known {
		if base, ok := strings.CutPrefix(name, "extra-"); ok {
			if c, ok := nixSettings[base]; ok && nixListSettings[c] {
				canon, known, appendTo = c, true, true
			}
		}
	}
	if !known {
		if _, seen := s.Raw[name]; !seen {
			s.warnf("unknown setting '%s' (%s)", name, where)
		}
		s.Raw[name] = value
		s.Sources[name] = where
		return nil
	}

	bad := func(format string) error {
		return fmt.Errorf("%w: %s: "+format, ErrBadConfig, where, canon, value)
	}
	raw := value
	switch canon {
	case "keep-outputs", "keep-derivations", "auto-optimise-store", "require-sigs", "fsync-metadata", "use-sqlite-wal":
		b, ok := parseNixBool(value)
		if !ok {
			return bad("Boolean setting '%s' has invalid value '%s'")
		}
		*s.boolField(canon) = b
		raw = strconv.FormatBool(b)
	case "min-free", "max-free":
		n, ok := parseNixUint(value, math.MaxUint64)
		if !ok {
			return bad("setting '%s' has invalid value '%s'")
		}
		if canon == "min-free" {
			s.MinFree = n
		} else {
			s.MaxFree = n
		}
		raw = strconv.FormatUint(n, 10)
	case "gc-reserved-space":
		// An off_t in Nix: negative values parse, and mean no reserve.
		digits, neg := strings.CutPrefix(value, "-")
		limit := uint64(math.MaxInt64)
		if neg {
			limit++ // math.MinInt64
		}
		n, ok := parseNixUint(digits, limit)
		if !ok || (neg && strings.HasPrefix(digits, "+")) {
			return bad("setting '%s' has invalid value '%s'")
		}
		raw = strconv.FormatUint(n, 10)
		if neg && n != 0 {
			s.warnf("gc-reserved-space is negative (%s); treating it as 0", where)
			raw, n = "-"+raw, 0
		}
		s.GCReservedSpace = n
	case "build-users-group":
		s.BuildUsersGroup = value
	case "store":
		s.StoreURI = value
	case "substituters", "trusted-public-keys":
		s.setList(canon, value, appendTo, where)
		return nil
	case "sandbox":
		if value != "true" && value != "false" && value != "relaxed" {
			return bad("option '%s' has invalid value '%s'")
		}
	default:
		if nixListSettings[canon] {
			s.setList(canon, value, appendTo, where)
			return nil
		}
	}
	s.Raw[canon] = raw
	s.Sources[canon] = where
	return nil
}

// setList sets the list setting canon to value's tokens, or appends them
// for "extra-NAME". The tokens collect in s.lists (appended in place,
// amortised O(1) a token) until finishLists.
func (s *Settings) setList(canon, value string, appendTo bool, where string) {
	toks := confTokens(value)
	if appendTo {
		cur, pending := s.lists[canon]
		if !pending {
			cur = append([]string(nil), s.listValue(canon)...)
		}
		toks = append(cur, toks...)
	}
	if s.lists == nil {
		s.lists = map[string][]string{}
	}
	s.lists[canon] = toks
	s.Sources[canon] = where
}

// listValue is the current value of the list setting canon, outside a
// pending change.
func (s *Settings) listValue(canon string) []string {
	switch canon {
	case "substituters":
		return s.Substituters
	case "trusted-public-keys":
		return s.TrustedPublicKeys
	}
	return confTokens(s.Raw[canon])
}

// finishLists moves the list settings collected in s.lists into Raw and
// the typed fields. The slices it stores are s's own: a later append
// copies them first, so a copy of Settings never sees another's change.
func (s *Settings) finishLists() {
	for canon, toks := range s.lists {
		switch canon {
		case "substituters":
			s.Substituters = toks
		case "trusted-public-keys":
			s.TrustedPublicKeys = toks
		}
		s.Raw[canon] = strings.Join(toks, " ")
	}
	s.lists = nil
}

func (s *Settings) boolField(canon string) *bool {
	switch canon {
	case "keep-outputs":
		return &s.KeepOutputs
	case "keep-derivations":
		return &s.KeepDerivations
	case "auto-optimise-store":
		return &s.AutoOptimiseStore
	case "require-sigs":
		return &s.RequireSigs
	case "fsync-metadata":
		return &s.FsyncMetadata
	default: // "use-sqlite-wal"
		return &s.UseSQLiteWAL
	}
}

func (s *Settings) warnf(format string, a ...any) {
	s.Warnings = append(s.Warnings, fmt.Sprintf(format, a...))
}

// parseNixBool parses a Boolean setting as Nix 2.8 does: "true", "yes",
// "1", "false", "no", "0", nothing else.
func parseNixBool(v string) (bool, bool) {
	switch v {
	case "true", "yes", "1":
		return true, true
	case "false", "no", "0":
		return false, true
	}
	return false, false
}

// parseNixUint parses an unsigned decimal integer up to max as Nix 2.8's
// string2Int (boost::lexical_cast) does: an optional "+", then digits. No
// unit suffix: Nix 2.8 refuses "1G" in nix.conf (sizes on the command line
// are report.ParseSize's).
func parseNixUint(v string, max uint64) (uint64, bool) {
	v = strings.TrimPrefix(v, "+")
	if v == "" || v[0] < '0' || v[0] > '9' {
		return 0, false
	}
	n, err := strconv.ParseUint(v, 10, 64)
	if err != nil || n > max {
		return 0, false
	}
	return n, true
}

// nixSettings maps every setting name and alias that Nix 2.8 (Linux) knows
// to its canonical name; a name outside it draws Nix's "unknown setting"
// warning. Taken from `nix show-config --json` of nix-bin 2.8.0.
var nixSettings = func() map[string]string {
	names := []string{
		"accept-flake-config", "access-tokens", "allow-dirty",
		"allow-import-from-derivation", "allow-new-privileges",
		"allow-symlinked-store", "allow-unsafe-native-code-during-evaluation",
		"allowed-impure-host-deps", "allowed-uris", "allowed-users",
		"auto-optimise-store", "bash-prompt", "bash-prompt-suffix",
		"build-hook", "build-poll-interval", "build-users-group", "builders",
		"builders-use-substitutes", "commit-lockfile-summary",
		"compress-build-log", "connect-timeout", "cores", "diff-hook",
		"download-attempts", "enforce-determinism", "eval-cache",
		"experimental-features", "extra-platforms", "fallback",
		"filter-syscalls", "flake-registry", "fsync-metadata",
		"gc-reserved-space", "hashed-mirrors", "http-connections", "http2",
		"ignored-acls", "impersonate-linux-26", "keep-build-log",
		"keep-derivations", "keep-env-derivations", "keep-failed",
		"keep-going", "keep-outputs", "log-lines", "max-build-log-size",
		"max-free", "max-jobs", "max-silent-time", "min-free",
		"min-free-check-interval", "nar-buffer-size",
		"narinfo-cache-negative-ttl", "narinfo-cache-positive-ttl",
		"netrc-file", "nix-path", "plugin-files", "post-build-hook",
		"pre-build-hook", "preallocate-contents", "print-missing",
		"pure-eval", "repeat", "require-sigs", "restrict-eval",
		"run-diff-hook", "sandbox", "sandbox-build-dir",
		"sandbox-dev-shm-size", "sandbox-fallback", "sandbox-paths",
		"secret-key-files", "show-trace", "stalled-download-timeout", "store",
		"substitute", "substituters", "sync-before-registering", "system",
		"system-features", "tarball-ttl", "timeout", "trace-function-calls",
		"trusted-public-keys", "trusted-substituters", "trusted-users",
		"use-case-hack", "use-registries", "use-sqlite-wal",
		"user-agent-suffix", "warn-dirty",
	}
	m := map[string]string{
		"build-compress-log":                 "compress-build-log",
		"build-cores":                        "cores",
		"build-fallback":                     "fallback",
		"binary-caches-parallel-connections": "http-connections",
		"build-impersonate-linux-26":         "impersonate-linux-26",
		"build-keep-log":                     "keep-build-log",
		"gc-keep-derivations":                "keep-derivations",
		"env-keep-derivations":               "keep-env-derivations",
		"gc-keep-outputs":                    "keep-outputs",
		"build-max-log-size":                 "max-build-log-size",
		"build-max-jobs":                     "max-jobs",
		"build-max-silent-time":              "max-silent-time",
		"build-repeat":                       "repeat",
		"build-use-chroot":                   "sandbox",
		"build-use-sandbox":                  "sandbox",
		"build-chroot-dirs":                  "sandbox-paths",
		"build-sandbox-paths":                "sandbox-paths",
		"build-use-substitutes":              "substitute",
		"binary-caches":                      "substituters",
		"build-timeout":                      "timeout",
		"binary-cache-public-keys":           "trusted-public-keys",
		"trusted-binary-caches":              "trusted-substituters",
	}
	for _, n := range names {
		m[n] = n
	}
	return m
}()

// nixListSettings are the canonical names of Nix 2.8's list (and map)
// settings: the ones extra-NAME appends to.
var nixListSettings = map[string]bool{
	"access-tokens": true, "allowed-impure-host-deps": true,
	"allowed-uris": true, "allowed-users": true,
	"experimental-features": true, "extra-platforms": true,
	"hashed-mirrors": true, "ignored-acls": true, "nix-path": true,
	"plugin-files": true, "sandbox-paths": true, "secret-key-files": true,
	"substituters": true, "system-features": true,
	"trusted-public-keys": true, "trusted-substituters": true,
	"trusted-users": true,
}
