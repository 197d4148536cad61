package nixconf

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"
)

const confFixtures = "testdata/nixconf"

// fixture is the absolute path of a fixture file.
func fixture(name string) string {
	p, err := filepath.Abs(filepath.Join(confFixtures, name))
	if err != nil {
		panic(err)
	}
	return p
}

// confCase is one fixture applied onto DefaultSettings(false).
type confCase struct {
	file    string
	wantErr []string                 // substrings of the error; nil: no error
	check   func(*Settings) []string // returns mismatches
	unknown []string                 // names expected in "unknown setting" warnings
}

func eq[T any](what string, got, want T) []string {
	if reflect.DeepEqual(got, want) {
		return nil
	}
	return []string{fmt.Sprintf("%s = %#v, want %#v", what, got, want)}
}

func confCases() []confCase {
	return []confCase{
		{file: "basic.conf", check: func(s *Settings) (bad []string) {
			bad = append(bad, eq("KeepOutputs", s.KeepOutputs, true)...)
			bad = append(bad, eq("KeepDerivations", s.KeepDerivations, false)...)
			bad = append(bad, eq("GCReservedSpace", s.GCReservedSpace, uint64(1<<20))...)
			bad = append(bad, eq("MinFree", s.MinFree, uint64(1<<30))...)
			bad = append(bad, eq("MaxFree", s.MaxFree, uint64(1<<31))...)
			bad = append(bad, eq("BuildUsersGroup", s.BuildUsersGroup, "builders")...)
			bad = append(bad, eq("Substituters", s.Substituters, []string{"https://a.example/", "https://b.example/"})...)
			bad = append(bad, eq("TrustedPublicKeys", s.TrustedPublicKeys, []string{"a-1:AAAA", "b-1:BBBB"})...)
			bad = append(bad, eq("AutoOptimiseStore", s.AutoOptimiseStore, true)...)
			bad = append(bad, eq("RequireSigs", s.RequireSigs, false)...)
			bad = append(bad, eq("FsyncMetadata", s.FsyncMetadata, false)...)
			bad = append(bad, eq("UseSQLiteWAL", s.UseSQLiteWAL, false)...)
			bad = append(bad, eq("StoreURI", s.StoreURI, "local?root=/mnt")...)
			bad = append(bad, eq("Raw[sandbox]", s.Raw["sandbox"], "relaxed")...)
			bad = append(bad, eq("Raw[max-free]", s.Raw["max-free"], "2147483648")...)
			bad = append(bad, eq("Raw[substituters]", s.Raw["substituters"], "https://a.example/ https://b.example/")...)
			bad = append(bad, eq("Sources[keep-outputs]", s.Sources["keep-outputs"], fixture("basic.conf")+":3")...)
			bad = append(bad, eq("Sources[gc-reserved-space]", s.Sources["gc-reserved-space"], fixture("basic.conf")+":5")...)
			return bad
		}},
		{file: "aliases.conf", check: func(s *Settings) (bad []string) {
			bad = append(bad, eq("KeepOutputs", s.KeepOutputs, true)...)
			bad = append(bad, eq("KeepDerivations", s.KeepDerivations, false)...)
			bad = append(bad, eq("Substituters", s.Substituters, []string{"https://old.example/"})...)
			bad = append(bad, eq("TrustedPublicKeys", s.TrustedPublicKeys, []string{"old-1:OOOO"})...)
			bad = append(bad, eq("Raw[sandbox]", s.Raw["sandbox"], "false")...)
			_, aliasKept := s.Raw["gc-keep-outputs"]
			bad = append(bad, eq("alias in Raw", aliasKept, false)...)
			return bad
		}},
		{file: "extra.conf", unknown: []string{"extra-keep-outputs"}, check: func(s *Settings) (bad []string) {
			bad = append(bad, eq("Substituters", s.Substituters,
				[]string{"https://a.example/", "https://b.example/", "https://c.example/", "https://d.example/"})...)
			bad = append(bad, eq("TrustedPublicKeys", s.TrustedPublicKeys, []string{DefaultTrustedKey, "k-1:KKKK"})...)
			bad = append(bad, eq("KeepOutputs", s.KeepOutputs, false)...)
			bad = append(bad, eq("Raw[system-features]", s.Raw["system-features"], "kvm big")...)
			return bad
		}},
		{file: "include_main.conf", check: func(s *Settings) (bad []string) {
			// Nix 2.8 applies each line where it stands: the include's
			// keep-outputs = false comes after this file's true.
			bad = append(bad, eq("KeepOutputs", s.KeepOutputs, false)...)
			bad = append(bad, eq("MinFree", s.MinFree, uint64(7))...)
			bad = append(bad, eq("Substituters", s.Substituters, []string{"https://leaf.example/"})...)
			bad = append(bad, eq("Sources[substituters]", s.Sources["substituters"], fixture("sub/leaf.conf")+":2")...)
			return bad
		}},
		{file: "include_missing.conf", wantErr: []string{"include_missing.conf:2", "missing.conf", "not found"}},
		{file: "include_bad.conf", wantErr: []string{"include_bad.conf:1", "illegal configuration line"}},
		{file: "badbool.conf", wantErr: []string{"badbool.conf:3", "require-sigs", "maybe"}},
		{file: "size_suffix.conf", wantErr: []string{"size_suffix.conf:1", "min-free", "1G"}},
		{file: "size_negative.conf", wantErr: []string{"size_negative.conf:1", "max-free"}},
		{file: "size_overflow.conf", wantErr: []string{"size_overflow.conf:1", "max-free"}},
		{file: "gc_reserved_negative.conf", check: func(s *Settings) (bad []string) {
			bad = append(bad, eq("GCReservedSpace", s.GCReservedSpace, uint64(0))...)
			bad = append(bad, eq("Raw[gc-reserved-space]", s.Raw["gc-reserved-space"], "-1")...)
			bad = append(bad, eq("len(Warnings)", len(s.Warnings), 1)...)
			return bad
		}},
		{file: "malformed.conf", wantErr: []string{"malformed.conf:4", "illegal configuration line 'keep-derivations=false'"}},
		{file: "malformed_noeq.conf", wantErr: []string{"malformed_noeq.conf:1", "illegal"}},
		{file: "malformed_name_only.conf", wantErr: []string{"malformed_name_only.conf:1", "illegal"}},
		{file: "sandbox_bad.conf", wantErr: []string{"sandbox_bad.conf:1", "sandbox"}},
		{file: "loop_a.conf", wantErr: []string{"include loop"}},
		{file: "unknown.conf", unknown: []string{"foo-bar", "extra-foo-bar"}, check: func(s *Settings) (bad []string) {
			bad = append(bad, eq("Raw[foo-bar]", s.Raw["foo-bar"], "2")...)
			bad = append(bad, eq("Raw[sandbox-paths]", s.Raw["sandbox-paths"], "/bin/sh /usr")...)
			return bad
		}},
		{file: "empty_values.conf", check: func(s *Settings) (bad []string) {
			bad = append(bad, eq("StoreURI", s.StoreURI, "")...)
			bad = append(bad, eq("BuildUsersGroup", s.BuildUsersGroup, "")...)
			bad = append(bad, eq("len(Substituters)", len(s.Substituters), 0)...)
			return bad
		}},
		{file: "crlf.conf", check: func(s *Settings) (bad []string) {
			bad = append(bad, eq("KeepOutputs", s.KeepOutputs, true)...)
			bad = append(bad, eq("Substituters", s.Substituters, []string{"https://crlf.example/"})...)
			return bad
		}},
	}
}

var unknownRE = regexp.MustCompile(`unknown setting '([^']*)'`)

func unknownNames(lines []string) []string {
	var out []string
	for _, l := range lines {
		if m := unknownRE.FindStringSubmatch(l); m != nil {
			out = append(out, m[1])
		}
	}
	sort.Strings(out)
	return out
}

func TestSettingsFixtures(t *testing.T) {
	for _, c := range confCases() {
		t.Run(c.file, func(t *testing.T) {
			s := Default(false)
			err := s.ApplyFile(fixture(c.file))
			if c.wantErr != nil {
				if err == nil {
					t.Fatalf("no error, want one containing %q", c.wantErr)
				}
				if !errors.Is(err, ErrBadConfig) {
					t.Errorf("error %v does not wrap ErrBadConfig", err)
				}
				for _, w := range c.wantErr {
					if !strings.Contains(err.Error(), w) {
						t.Errorf("error %q does not contain %q", err, w)
					}
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if c.check != nil {
				for _, m := range c.check(&s) {
					t.Error(m)
				}
			}
			want := append([]string(nil), c.unknown...)
			sort.Strings(want)
			if got := unknownNames(s.Warnings); !reflect.DeepEqual(got, want) && (len(got) > 0 || len(want) > 0) {
				t.Errorf("unknown settings warned about: %q, want %q (warnings %q)", got, want, s.Warnings)
			}
		})
	}
}

func TestSettingsDefaults(t *testing.T) {
	s := Default(false)
	if s.KeepOutputs || !s.KeepDerivations || s.GCReservedSpace != 8<<20 || s.MinFree != 0 ||
		s.MaxFree != math.MaxUint64 || s.BuildUsersGroup != "" || s.AutoOptimiseStore ||
		!s.RequireSigs || !s.FsyncMetadata || !s.UseSQLiteWAL || s.StoreURI != "auto" ||
		!reflect.DeepEqual(s.Substituters, []string{"https://cache.nixos.org/"}) ||
		!reflect.DeepEqual(s.TrustedPublicKeys, []string{DefaultTrustedKey}) {
		t.Errorf("DefaultSettings(false) = %+v", s)
	}
	if g := Default(true).BuildUsersGroup; g != "nixbld" {
		t.Errorf("root build-users-group = %q, want nixbld", g)
	}
	// Appending must not write into another Settings' default slice.
	a, b := Default(false), Default(false)
	if err := a.Set("extra-substituters", "x"); err != nil {
		t.Fatal(err)
	}
	if len(b.Substituters) != 1 {
		t.Errorf("Substituters shared between DefaultSettings values: %q", b.Substituters)
	}
}

func TestSettingsSet(t *testing.T) {
	s := Default(false)
	for _, kv := range [][2]string{
		{"gc-keep-outputs", "true"},
		{"extra-binary-caches", "  https://x.example/   https://y.example/ "},
		{"store", "  a b"},
		{"min-free", "12"},
		{"no-such-setting", "1"},
	} {
		if err := s.Set(kv[0], kv[1]); err != nil {
			t.Fatalf("Set(%q, %q): %v", kv[0], kv[1], err)
		}
	}
	if !s.KeepOutputs || s.MinFree != 12 || s.StoreURI != "  a b" ||
		!reflect.DeepEqual(s.Substituters, []string{DefaultSubstituter, "https://x.example/", "https://y.example/"}) {
		t.Errorf("after Set: %+v", s)
	}
	if s.Sources["keep-outputs"] != "--option" {
		t.Errorf("Sources[keep-outputs] = %q", s.Sources["keep-outputs"])
	}
	if got := unknownNames(s.Warnings); !reflect.DeepEqual(got, []string{"no-such-setting"}) {
		t.Errorf("warnings %q", s.Warnings)
	}
	for _, kv := range [][2]string{
		{"keep-outputs", "maybe"}, {"keep-outputs", "TRUE"}, {"min-free", "1K"},
		{"max-free", "-1"}, {"gc-reserved-space", "9223372036854775808"}, {"sandbox", "on"},
	} {
		before := s.KeepOutputs
		if err := s.Set(kv[0], kv[1]); !errors.Is(err, ErrBadConfig) {
			t.Errorf("Set(%q, %q) = %v, want ErrBadConfig", kv[0], kv[1], err)
		} else if !strings.Contains(err.Error(), kv[0]) {
			t.Errorf("error %q does not name %q", err, kv[0])
		}
		if s.KeepOutputs != before {
			t.Errorf("failed Set changed the value")
		}
	}
	// A Settings literal without maps still works.
	var z Settings
	if err := z.Set("keep-outputs", "1"); err != nil || !z.KeepOutputs || z.Raw["keep-outputs"] != "true" {
		t.Errorf("Set on zero Settings: %v %+v", err, z)
	}
}

func TestSettingsApplyTextOrderAndComments(t *testing.T) {
	s := Default(false)
	text := "keep-outputs = true\n#keep-outputs = false\nsubstituters = a#b c\n\n  \t\nkeep-outputs = no"
	if err := s.ApplyText(text, "T"); err != nil {
		t.Fatal(err)
	}
	if s.KeepOutputs || !reflect.DeepEqual(s.Substituters, []string{"a"}) || s.Sources["keep-outputs"] != "T:6" {
		t.Errorf("got %+v", s)
	}
	// A relative include from a text with no directory is an error, as in Nix.
	if err := s.ApplyText("include foo.conf", "NIX_CONFIG"); !errors.Is(err, ErrBadConfig) ||
		!strings.Contains(err.Error(), "NIX_CONFIG:1") {
		t.Errorf("relative include from NIX_CONFIG: %v", err)
	}
	// But an absolute one works.
	if err := s.ApplyText("include "+fixture("aliases.conf"), "NIX_CONFIG"); err != nil || !s.KeepOutputs {
		t.Errorf("absolute include from NIX_CONFIG: %v", err)
	}
}

func TestSettingsApplyFileMissing(t *testing.T) {
	s := Default(false)
	if err := s.ApplyFile(filepath.Join(t.TempDir(), "nope", "nix.conf")); err != nil {
		t.Errorf("missing top-level file: %v", err)
	}
	// A directory is unreadable: skipped with a warning.
	if err := s.ApplyFile(t.TempDir()); err != nil || len(s.Warnings) != 1 {
		t.Errorf("directory: %v, warnings %q", err, s.Warnings)
	}
}

func TestSettingsIncludeDepth(t *testing.T) {
	dir := t.TempDir()
	// A chain of distinct files deeper than the cap (no loop).
	for i := 0; i <= maxIncludeDepth+1; i++ {
		text := fmt.Sprintf("include f%d.conf\n", i+1)
		if err := os.WriteFile(filepath.Join(dir, fmt.Sprintf("f%d.conf", i)), []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	s := Default(false)
	err := s.ApplyFile(filepath.Join(dir, "f0.conf"))
	if !errors.Is(err, ErrBadConfig) || !strings.Contains(err.Error(), "nested") {
		t.Errorf("deep includes: %v", err)
	}
	// A loop through a symlink, which path comparison cannot see.
	if err := os.WriteFile(filepath.Join(dir, "a.conf"), []byte("include link/a.conf\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(".", filepath.Join(dir, "link")); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { s := Default(false); done <- s.ApplyFile(filepath.Join(dir, "a.conf")) }()
	select {
	case err := <-done:
		if !errors.Is(err, ErrBadConfig) {
			t.Errorf("symlink loop: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("symlink include loop hangs")
	}
	// The self loop fixture.
	s = Default(false)
	if err := s.ApplyFile(fixture("loop_b.conf")); !errors.Is(err, ErrBadConfig) {
		t.Errorf("loop: %v", err)
	}
}

// writeConfTree writes a config tree under a temp root and returns the root.
func writeConfTree(t *testing.T, files map[string]string) string {
	t.Helper()
	root := t.TempDir()
	for name, text := range files {
		p := filepath.Join(root, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return root
}

func mapEnv(root string, env map[string]string) func(string) string {
	return func(k string) string { return strings.ReplaceAll(env[k], "$T", root) }
}

func TestSettingsLoadEnvPrecedence(t *testing.T) {
	root := writeConfTree(t, map[string]string{
		"etc/nix.conf":              "substituters = etc\nkeep-outputs = true\nmin-free = 1\n",
		"u1/nix.conf":               "substituters = u1\n",
		"u2/nix.conf":               "substituters = u2\nmin-free = 2\n",
		"home/.config/nix/nix.conf": "substituters = home\n",
		"xh/nix/nix.conf":           "substituters = xh\n",
		"x1/nix/nix.conf":           "substituters = x1\nmin-free = 3\n",
		"x2/nix/nix.conf":           "substituters = x2\nmin-free = 4\n",
		"etc2/nix.conf":             "store = other\n",
	})
	cases := []struct {
		name    string
		env     map[string]string
		subs    string
		minFree uint64
		source  string // Sources["substituters"], relative to root
	}{
		{"conf dir only", map[string]string{"NIX_CONF_DIR": "$T/etc", "HOME": "$T/none"}, "etc", 1, "etc/nix.conf:1"},
		{"NIX_CONF_DIR trailing slash", map[string]string{"NIX_CONF_DIR": "$T/etc/", "HOME": "$T/none"}, "etc", 1, "etc/nix.conf:1"},
		{"user files: first wins", map[string]string{"NIX_CONF_DIR": "$T/etc", "NIX_USER_CONF_FILES": "$T/u1/nix.conf:$T/u2/nix.conf", "HOME": "$T/home"}, "u1", 2, "u1/nix.conf:1"},
		{"user files: missing skipped", map[string]string{"NIX_CONF_DIR": "$T/etc", "NIX_USER_CONF_FILES": "$T/nope:$T/u2/nix.conf", "HOME": "$T/home"}, "u2", 2, "u2/nix.conf:1"},
		{"HOME/.config", map[string]string{"NIX_CONF_DIR": "$T/etc", "HOME": "$T/home"}, "home", 1, "home/.config/nix/nix.conf:1"},
		{"XDG_CONFIG_HOME over HOME", map[string]string{"NIX_CONF_DIR": "$T/etc", "HOME": "$T/home", "XDG_CONFIG_HOME": "$T/xh"}, "xh", 1, "xh/nix/nix.conf:1"},
		{"XDG_CONFIG_HOME over XDG_CONFIG_DIRS", map[string]string{"NIX_CONF_DIR": "$T/etc", "HOME": "$T/home", "XDG_CONFIG_DIRS": "$T/x1:$T/x2"}, "home", 3, "home/.config/nix/nix.conf:1"},
		{"XDG_CONFIG_DIRS: first wins", map[string]string{"NIX_CONF_DIR": "$T/etc", "HOME": "$T/none", "XDG_CONFIG_DIRS": "$T/x1:$T/x2"}, "x1", 3, "x1/nix/nix.conf:1"},
		{"NIX_USER_CONF_FILES replaces XDG", map[string]string{"NIX_CONF_DIR": "$T/etc", "HOME": "$T/home", "XDG_CONFIG_DIRS": "$T/x1", "NIX_USER_CONF_FILES": "$T/u2/nix.conf"}, "u2", 2, "u2/nix.conf:1"},
		{"NIX_CONFIG last", map[string]string{"NIX_CONF_DIR": "$T/etc", "HOME": "$T/home", "NIX_CONFIG": "min-free = 9\nextra-substituters = env"}, "home env", 9, "NIX_CONFIG:2"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			s, err := Load(mapEnv(root, c.env), false)
			if err != nil {
				t.Fatal(err)
			}
			if got := strings.Join(s.Substituters, " "); got != c.subs {
				t.Errorf("substituters = %q, want %q", got, c.subs)
			}
			if s.MinFree != c.minFree {
				t.Errorf("min-free = %d, want %d", s.MinFree, c.minFree)
			}
			want := c.source
			if !strings.HasPrefix(want, "NIX_CONFIG") {
				want = filepath.Join(root, want)
			}
			if s.Sources["substituters"] != want {
				t.Errorf("Sources[substituters] = %q, want %q", s.Sources["substituters"], want)
			}
			if !s.KeepOutputs {
				t.Errorf("the system file was not applied")
			}
		})
	}

	if _, err := Load(mapEnv(root, map[string]string{"NIX_CONF_DIR": "relative/dir"}), false); !errors.Is(err, ErrBadConfig) {
		t.Errorf("relative NIX_CONF_DIR: %v", err)
	}
	if _, err := Load(mapEnv(root, map[string]string{"NIX_CONF_DIR": "$T/etc", "HOME": "$T/none", "NIX_CONFIG": "bogus"}), false); !errors.Is(err, ErrBadConfig) || !strings.Contains(err.Error(), "NIX_CONFIG:1") {
		t.Errorf("bad NIX_CONFIG: %v", err)
	}
}

// TestSettingsLoadLookupEnv covers the nil getenv: the process
// environment, where a variable set to "" counts as set.
func TestSettingsLoadLookupEnv(t *testing.T) {
	root := writeConfTree(t, map[string]string{
		"etc/nix.conf":              "substituters = etc\n",
		"home/.config/nix/nix.conf": "substituters = home\n",
	})
	t.Setenv("NIX_CONF_DIR", filepath.Join(root, "etc"))
	t.Setenv("HOME", filepath.Join(root, "home"))
	t.Setenv("XDG_CONFIG_DIRS", "")
	os.Unsetenv("XDG_CONFIG_HOME")
	os.Unsetenv("NIX_CONFIG")
	os.Unsetenv("NIX_USER_CONF_FILES")
	s, err := Load(nil, false)
	if err != nil || strings.Join(s.Substituters, " ") != "home" {
		t.Errorf("unset NIX_USER_CONF_FILES: %v %q", err, s.Substituters)
	}
	t.Setenv("NIX_USER_CONF_FILES", "")
	s, err = Load(nil, false)
	if err != nil || strings.Join(s.Substituters, " ") != "etc" {
		t.Errorf("empty NIX_USER_CONF_FILES: %v %q", err, s.Substituters)
	}
}

// TestSettingsConfMatchesNix runs every fixture (and a few environments)
// through the real Nix and checks that it agrees: same failure, same
// values, same unknown-setting warnings.
func TestSettingsConfMatchesNix(t *testing.T) {
	nix := "/usr/bin/nix"
	if _, err := os.Stat(nix); err != nil {
		t.Skip("no /usr/bin/nix")
	}
	isRoot := os.Geteuid() == 0

	type xcase struct {
		name  string
		files map[string]string // relative to the temp root; "etc/nix.conf" is NIX_CONF_DIR's
		env   map[string]string // $T is the temp root
	}
	var cases []xcase
	for _, c := range confCases() {
		if strings.HasPrefix(c.file, "loop") {
			continue // Nix overflows its stack; we refuse
		}
		cases = append(cases, xcase{name: c.file, files: map[string]string{
			"etc/nix.conf": "include " + fixture(c.file) + "\n"}})
	}
	cases = append(cases,
		xcase{name: "defaults", files: map[string]string{"etc/nix.conf": ""}},
		xcase{name: "user files and NIX_CONFIG",
			files: map[string]string{
				"etc/nix.conf": "keep-outputs = true\nsubstituters = etc\nmin-free = 1\n",
				"u1.conf":      "substituters = u1\n",
				"u2.conf":      "substituters = u2\nextra-trusted-public-keys = u2-1:X\nmin-free = 2\n",
			},
			env: map[string]string{"NIX_USER_CONF_FILES": "$T/u1.conf:$T/u2.conf", "NIX_CONFIG": "extra-substituters = env\nmax-free = 10"}},
		xcase{name: "XDG dirs",
			files: map[string]string{
				"etc/nix.conf":    "substituters = etc\n",
				"x1/nix/nix.conf": "substituters = x1\nrequire-sigs = false\n",
				"x2/nix/nix.conf": "substituters = x2\nrequire-sigs = true\nstore = daemon\n",
			},
			env: map[string]string{"HOME": "$T/home", "XDG_CONFIG_DIRS": "$T/x1:$T/x2"}},
	)

	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			root := writeConfTree(t, c.files)
			env := map[string]string{
				"NIX_CONF_DIR":        "$T/etc",
				"HOME":                "$T/home",
				"NIX_USER_CONF_FILES": "$T/no-user-conf",
			}
			for k, v := range c.env {
				env[k] = v
				if k == "XDG_CONFIG_DIRS" {
					delete(env, "NIX_USER_CONF_FILES")
				}
			}
			getenv := mapEnv(root, env)
			ours, ourErr := Load(getenv, isRoot)

			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			cmd := exec.CommandContext(ctx, nix, "show-config", "--extra-experimental-features", "nix-command")
			cmd.Env = []string{"PATH=" + os.Getenv("PATH")}
			for k := range env {
				cmd.Env = append(cmd.Env, k+"="+getenv(k))
			}
			var stdout, stderr bytes.Buffer
			cmd.Stdout, cmd.Stderr = &stdout, &stderr
			nixErr := cmd.Run()
			if (ourErr != nil) != (nixErr != nil) {
				t.Fatalf("we say %v; nix says %v: %s", ourErr, nixErr, stderr.String())
			}
			if nixErr != nil {
				return
			}
			got := map[string]string{}
			sc := bufio.NewScanner(&stdout)
			for sc.Scan() {
				if k, v, ok := strings.Cut(sc.Text(), " = "); ok {
					got[k] = v
				}
			}
			gcReserved := strconv.FormatUint(ours.GCReservedSpace, 10)
			if r, ok := ours.Raw["gc-reserved-space"]; ok {
				gcReserved = r // a negative value, which we clamp
			}
			want := map[string]string{
				"keep-outputs":        strconv.FormatBool(ours.KeepOutputs),
				"keep-derivations":    strconv.FormatBool(ours.KeepDerivations),
				"gc-reserved-space":   gcReserved,
				"min-free":            strconv.FormatUint(ours.MinFree, 10),
				"max-free":            strconv.FormatUint(ours.MaxFree, 10),
				"build-users-group":   ours.BuildUsersGroup,
				"substituters":        strings.Join(ours.Substituters, " "),
				"trusted-public-keys": strings.Join(ours.TrustedPublicKeys, " "),
				"auto-optimise-store": strconv.FormatBool(ours.AutoOptimiseStore),
				"require-sigs":        strconv.FormatBool(ours.RequireSigs),
				"fsync-metadata":      strconv.FormatBool(ours.FsyncMetadata),
				"use-sqlite-wal":      strconv.FormatBool(ours.UseSQLiteWAL),
				"store":               ours.StoreURI,
			}
			for _, k := range []string{"sandbox", "sandbox-paths"} {
				if v, ok := ours.Raw[k]; ok {
					want[k] = v
				}
			}
			for k, v := range want {
				if got[k] != v {
					t.Errorf("%s: ours %q, nix %q", k, v, got[k])
				}
			}
			wantUnknown := unknownNames(strings.Split(stderr.String(), "\n"))
			if gotUnknown := unknownNames(ours.Warnings); !reflect.DeepEqual(gotUnknown, wantUnknown) && (len(gotUnknown) > 0 || len(wantUnknown) > 0) {
				t.Errorf("unknown settings: ours %q, nix %q", gotUnknown, wantUnknown)
			}
		})
	}
}

// FuzzApplyText checks that no config text panics or hangs the parser.
func FuzzApplyText(f *testing.F) {
	entries, err := os.ReadDir(confFixtures)
	if err != nil {
		f.Fatal(err)
	}
	for _, e := range entries {
		if data, err := os.ReadFile(filepath.Join(confFixtures, e.Name())); err == nil {
			f.Add(string(data))
		}
	}
	f.Add("include x\n!include y\nextra-substituters = a\nmin-free = +\ngc-reserved-space = -0\n")
	dir := f.TempDir()
	source := filepath.Join(dir, "fuzz.conf")
	f.Fuzz(func(t *testing.T, text string) {
		// Keep includes inside the empty temp dir: no /dev/zero, no FIFOs.
		for _, line := range strings.Split(text, "\n") {
			if i := strings.IndexByte(line, '#'); i >= 0 {
				line = line[:i]
			}
			toks := confTokens(line)
			if len(toks) >= 2 && (toks[0] == "include" || toks[0] == "!include") &&
				(strings.HasPrefix(toks[1], "/") || strings.Contains(toks[1], "..")) {
				t.Skip()
			}
		}
		s := Default(false)
		err := s.ApplyText(text, source)
		if err != nil && !errors.Is(err, ErrBadConfig) {
			t.Errorf("error %v does not wrap ErrBadConfig", err)
		}
	})
}
