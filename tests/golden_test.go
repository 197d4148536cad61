package tests

import (
	"bytes"
	"flag"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"

	"storekeeper/store/storetest"
)

// update rewrites the golden files from the current output:
//
//	go test ./tests -run Golden -update
var update = flag.Bool("update", false, "rewrite tests/testdata/golden/* from the current output")

// goldenDir holds one file per command and output format.
const goldenDir = "testdata/golden"

// goldenCase is one command run on a fresh demo store.
type goldenCase struct {
	name string   // golden file name without ".txt" / ".json.txt"
	args []string // after the global flags
	// damage, when set, runs on the store before args (after a first
	// verify --check-contents has recorded manifests).
	damage func(t *testing.T, b *storetest.Built)
}

// TestGolden runs each read-only command on the deterministic demo store
// (store/storetest's DefaultSpec: no Nix needed), as text and with --json,
// and compares stdout, stderr and the exit status, after normaliseGolden,
// with tests/testdata/golden. Every case gets its own fresh store, so no
// case depends on what another recorded in the state dir.
func TestGolden(t *testing.T) {
	cases := []goldenCase{
		{name: "info", args: []string{"info"}},
		{name: "roots", args: []string{"roots", "--no-runtime"}},
		{name: "roots-size", args: []string{"roots", "size", "--no-runtime", "--paths", "--dead"}},
		{name: "gc-print-dead", args: []string{"gc", "--print-dead"}},
		{name: "gc-dry-run", args: []string{"gc", "--dry-run"}},
		{name: "verify", args: []string{"verify"}},
		{name: "verify-check-contents", args: []string{"verify", "--check-contents"}},
		{name: "verify-check-contents-damaged", args: []string{"verify", "--check-contents"}, damage: damageDemo},
		{name: "optimise-dry-run", args: []string{"optimise", "--dry-run"}},
		{name: "repair-dry-run-damaged", args: []string{"repair", "--dry-run", "--damaged", "--substituter", "ROOT/mirror"}, damage: mirrorThenDamageDemo},
	}
	for _, c := range cases {
		for _, json := range []bool{false, true} {
			file := c.name + ".txt"
			if json {
				file = c.name + ".json.txt"
			}
			t.Run(file, func(t *testing.T) {
				root := t.TempDir()
				b := buildDemo(t, root)
				env := goldenEnv(t)
				if c.damage != nil {
					if r := goldenRun(env, root, "verify", "--check-contents"); r.code != 0 {
						t.Fatalf("verify --check-contents on the clean store: exit %d\n%s%s", r.code, r.stdout, r.stderr)
					}
					c.damage(t, b)
				}
				// "ROOT" in an argument is the store's root.
				var args []string
				for _, a := range c.args {
					args = append(args, strings.ReplaceAll(a, "ROOT", root))
				}
				if json {
					args = append([]string{"--json"}, args...)
				}
				r := goldenRun(env, root, args...)
				got := normaliseGolden(formatGolden(args, r), root)
				checkGolden(t, filepath.Join(goldenDir, file), got)
			})
		}
	}
}

// goldenEnv is the environment of a golden run: no nix.conf of this
// machine (NIX_CONF_DIR is an empty directory, no user files, no
// NIX_CONFIG), so settings are Nix's defaults everywhere.
func goldenEnv(t *testing.T) []string {
	conf := t.TempDir()
	var env []string
	for _, kv := range os.Environ() {
		if strings.HasPrefix(kv, "NIX_") || strings.HasPrefix(kv, "XDG_CONFIG") {
			continue
		}
		env = append(env, kv)
	}
	return append(env, "NIX_CONF_DIR="+conf, "NIX_USER_CONF_FILES=", "NIX_CONFIG=", "XDG_CONFIG_HOME="+conf, "XDG_CONFIG_DIRS="+conf)
}

// goldenRun runs the binary on the demo store under root.
func goldenRun(env []string, root string, args ...string) result {
	full := append([]string{"--store", root, "--no-progress"}, args...)
	cmd := exec.Command(binary, full...)
	cmd.Env = env
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	code := 0
	if err := cmd.Run(); err != nil {
		ee, ok := err.(*exec.ExitError)
		if !ok {
			return result{"", "running storekeeper: " + err.Error(), -1}
		}
		code = ee.ExitCode()
	}
	return result{out.String(), errb.String(), code}
}

// formatGolden is what a golden file holds: the command, its exit status,
// then stdout and stderr verbatim (a missing final newline shows as the
// next header starting on the same line).
func formatGolden(args []string, r result) string {
	return fmt.Sprintf("$ storekeeper --store ROOT --no-progress %s\n# exit %d\n# stdout\n%s# stderr\n%s# end\n",
		strings.Join(args, " "), r.code, r.stdout, r.stderr)
}

// The normaliser replaces only what differs between runs and machines;
// everything else must match byte for byte:
//   - the store's temporary root directory becomes ROOT;
//   - durations: Go-formatted ones in text ("in 30ms", "1.2s") become
//     DURATION, and in JSON the values of keys ending in "_seconds"
//     become "DURATION";
//   - byte counts that come from st_blocks, so from the file system's
//     block size and allocation (gc's bytes freed, "freeing 1.17 MiB",
//     its JSON bytes_freed, optimise's blocks_freed), become BLOCKBYTES.
//     optimise's MiB and bytes_freed are file sizes and stay exact;
//     roots size's bytes on disk become BLOCKBYTES too: its JSON
//     closure_bytes, freed_bytes, live_bytes and dead_bytes, and every
//     size in its text but those "by NAR size", with its padding;
//   - in JSON, roots' link "owner" and "mtime" values become "LINK".
var (
	goldenDuration = regexp.MustCompile(`\b(\d+h)?(\d+m)?\d+(\.\d+)?(ns|µs|us|ms|s|m|h)\b`)
	goldenJSONTime = regexp.MustCompile(`("[a-z_]*_seconds": )-?[0-9][0-9.e+-]*`)
	goldenGCFreed  = regexp.MustCompile(`(freeing |freed |"bytes_freed": )[0-9][0-9.]*( [KMGTPE]?i?B)?`)
	goldenBlocks   = regexp.MustCompile(`("blocks_freed": )[0-9]+`)
	// roots size: JSON bytes on disk; text sizes, NAR ones kept.
	goldenSizeJSON = regexp.MustCompile(`("(closure|freed|live|dead)_bytes": )[0-9]+`)
	goldenSizeText = regexp.MustCompile(` *[0-9][0-9.]* (B|[KMGTPE]iB)( by NAR size)?`)
	// roots' link owners and modification times (the test's user, the
	// time the demo store was written).
	goldenRootLink = regexp.MustCompile(`("owner": )"[^"]*"|("mtime": )[0-9]+`)
)

func normaliseGolden(s, root string) string {
	s = strings.ReplaceAll(s, root, "ROOT")
	s = goldenJSONTime.ReplaceAllString(s, `${1}"DURATION"`)
	s = goldenBlocks.ReplaceAllString(s, `${1}"BLOCKS"`)
	s = goldenRootLink.ReplaceAllString(s, `${1}${2}"LINK"`)
	var out []string
	gc := strings.Contains(s, "$ storekeeper --store ROOT --no-progress gc") ||
		strings.Contains(s, "--json gc")
	rootsSize := strings.Contains(s, "--no-progress roots size") || strings.Contains(s, "--json roots size")
	for _, line := range strings.SplitAfter(s, "\n") {
		if !strings.HasPrefix(line, "$ ") {
			line = goldenDuration.ReplaceAllString(line, "DURATION")
		}
		if gc {
			line = goldenGCFreed.ReplaceAllString(line, "${1}BLOCKBYTES")
		}
		if rootsSize {
			line = goldenSizeJSON.ReplaceAllString(line, "${1}BLOCKBYTES")
			line = goldenSizeText.ReplaceAllStringFunc(line, func(m string) string {
				if strings.HasSuffix(m, " by NAR size") {
					return m
				}
				return " BLOCKBYTES" // the column's padding too
			})
		}
		out = append(out, line)
	}
	return strings.Join(out, "")
}

// checkGolden compares got with the golden file, or rewrites it with
// -update.
func checkGolden(t *testing.T, path, got string) {
	t.Helper()
	if *update {
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run `go test ./tests -run Golden -update` to create it)", err)
	}
	if got != string(want) {
		t.Errorf("%s differs from the output (if the change is intended: go test ./tests -run Golden -update)\n%s",
			path, goldenDiff(string(want), got))
	}
}

// goldenDiff names the first differing line and shows both versions.
func goldenDiff(want, got string) string {
	wl, gl := strings.Split(want, "\n"), strings.Split(got, "\n")
	for i := 0; i < len(wl) || i < len(gl); i++ {
		var w, g string
		if i < len(wl) {
			w = wl[i]
		}
		if i < len(gl) {
			g = gl[i]
		}
		if w != g || i >= len(wl) || i >= len(gl) {
			return fmt.Sprintf("first difference at line %d:\n  golden: %q\n  output: %q\n--- full output ---\n%s", i+1, w, g, got)
		}
	}
	return ""
}

// damageDemo damages the demo store deterministically: in the first valid
// output path (sorted) with a regular file, the first byte of its first
// regular file (in lexical walk order) is flipped, mode and mtime kept;
// the next valid non-derivation path that is not that one is removed.
func damageDemo(t *testing.T, b *storetest.Built) {
	t.Helper()
	valid := append([]string(nil), b.Valid...)
	sort.Strings(valid)
	real := func(p string) string {
		return filepath.Join(b.Layout.RealStoreDir, filepath.Base(p))
	}
	flipped := ""
	for _, p := range valid {
		if strings.HasSuffix(p, ".drv") {
			continue
		}
		var file string
		filepath.WalkDir(real(p), func(q string, d fs.DirEntry, err error) error {
			if err != nil || file != "" {
				return err
			}
			if d.Type().IsRegular() {
				file = q
			}
			return nil
		})
		if file == "" {
			continue
		}
		st, err := os.Stat(file)
		if err != nil {
			t.Fatal(err)
		}
		data, err := os.ReadFile(file)
		if err != nil || len(data) == 0 {
			continue
		}
		data[0] ^= 0x01
		if err := os.Chmod(file, 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(file, data, 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(file, st.Mode().Perm()); err != nil {
			t.Fatal(err)
		}
		if err := os.Chtimes(file, st.ModTime(), st.ModTime()); err != nil {
			t.Fatal(err)
		}
		flipped = p
		break
	}
	if flipped == "" {
		t.Fatal("demo store has no valid path with a non-empty regular file")
	}
	for _, p := range valid {
		if p == flipped || strings.HasSuffix(p, ".drv") {
			continue
		}
		dir := real(p)
		filepath.WalkDir(dir, func(q string, d fs.DirEntry, err error) error {
			if err == nil && d.IsDir() {
				os.Chmod(q, 0o755)
			}
			return nil
		})
		if err := os.RemoveAll(dir); err != nil {
			t.Fatal(err)
		}
		return
	}
	t.Fatal("demo store has no second valid output path to remove")
}

// mirrorThenDamageDemo copies the intact demo store to ROOT/mirror (a
// local store to repair from), then damages the store as damageDemo does.
func mirrorThenDamageDemo(t *testing.T, b *storetest.Built) {
	t.Helper()
	root := filepath.Dir(filepath.Dir(b.Layout.RealStoreDir))
	mustMkdir(t, filepath.Join(root, "mirror"))
	if out, err := exec.Command("cp", "-a", filepath.Join(root, "nix"), filepath.Join(root, "mirror", "nix")).CombinedOutput(); err != nil {
		t.Fatalf("cp: %v %s", err, out)
	}
	damageDemo(t, b)
}
