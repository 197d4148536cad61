package main

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"io/fs"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	_ "modernc.org/sqlite"

	"storekeeper/report"
	"storekeeper/store/storetest"
)

// runCLI runs storekeeper in this process with args and returns its
// stdout, stderr and error. nix.conf is read from an empty directory.
func runCLI(t *testing.T, args ...string) (string, string, error) {
	t.Helper()
	conf := t.TempDir()
	t.Setenv("NIX_CONF_DIR", conf)
	t.Setenv("NIX_USER_CONF_FILES", "")
	t.Setenv("NIX_CONFIG", "")
	cmd, _, finish := newRootCommand()
	var out, errb bytes.Buffer
	cmd.SetOut(&out)
	cmd.SetErr(&errb)
	cmd.SetArgs(args)
	err := cmd.ExecuteContext(context.Background())
	finish()
	return out.String(), errb.String(), err
}

// runMain runs storekeeper in this process as main does (run: the
// envelope with --json, the error lines, the exit status).
func runMain(t *testing.T, args ...string) (string, string, int) {
	t.Helper()
	conf := t.TempDir()
	t.Setenv("NIX_CONF_DIR", conf)
	t.Setenv("NIX_USER_CONF_FILES", "")
	t.Setenv("NIX_CONFIG", "")
	var out, errb bytes.Buffer
	code := run(context.Background(), args, &out, &errb)
	return out.String(), errb.String(), code
}

func buildSizeStore(t *testing.T) *storetest.Built {
	t.Helper()
	b, err := storetest.Build(t.TempDir(), storetest.DefaultSpec())
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestSizeFlagsRefuseBadSizes: every size flag reads sizes with
// report.ParseSize, so a bad one is refused before the store is opened,
// with an error naming the flag, the value and the accepted forms. "10MB"
// (a decimal unit, as go-humanize read --budget) is refused everywhere
// rather than read as 10^7 or 10 MiB.
func TestSizeFlagsRefuseBadSizes(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "no-store")
	for _, c := range []struct {
		args []string
		want string
	}{
		// Each from report.ParseSize, which names the accepted forms.
		{[]string{"gc", "--max-freed", "10MB"}, `--max-freed: invalid size "10MB": unit "MB" is ambiguous`},
		{[]string{"gc", "--max-freed", "-1"}, "must not be negative"},
		{[]string{"gc", "--max-freed", "1.5G"}, "not a whole number"},
		{[]string{"gc", "--max-freed", "17E"}, "too large"},
		{[]string{"gc", "--ensure-free", "10MB"}, `--ensure-free: invalid size "10MB"`},
		{[]string{"gc", "--ensure-free", "10X"}, "or a percentage"},
		{[]string{"verify", "--budget", "500MB"}, `--budget: invalid size "500MB"`},
		{[]string{"verify", "--budget", "8E"}, "too large"},
		{[]string{"verify", "--budget", "abc"}, "or a duration (30m, 2h)"},
		{[]string{"optimise", "--dry-run", "--min-size", "4kB"}, `--min-size: invalid size "4kB"`},
		{[]string{"optimise", "--dry-run", "--min-size", "-4K"}, "must not be negative"},
		{[]string{"optimise", "--dry-run", "--min-size", "8EiB"}, "too large: at most 9223372036854775807 bytes"},
	} {
		_, _, err := runCLI(t, append([]string{"--store", missing}, c.args...)...)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%v: error %v; want it to say %q", c.args, err, c.want)
			continue
		}
		if !strings.Contains(err.Error(), report.SizeForms) {
			t.Errorf("%v: error %q does not name the accepted forms", c.args, err)
		}
	}
	if _, _, err := runCLI(t, "--store", missing, "verify", "--budget", "0K"); err == nil || !strings.Contains(err.Error(), `--budget "0K": must be positive`) {
		t.Errorf("verify --budget 0K: %v; want 'must be positive'", err)
	}
	// A good size gets past the parsing: the error is then the missing store.
	for _, args := range [][]string{
		{"verify", "--budget", "10G"}, {"verify", "--budget", "10GiB"},
		{"optimise", "--dry-run", "--min-size", "4k"},
		{"gc", "--max-freed", "10G", "--dry-run"},
	} {
		_, _, err := runCLI(t, append([]string{"--store", missing}, args...)...)
		if err == nil || strings.Contains(err.Error(), "invalid size") || !strings.Contains(err.Error(), "no-store") {
			t.Errorf("%v: error %v; want one about the missing store only", args, err)
		}
	}
}

// TestSizeFlagsSameUnits: --budget, --max-freed and --min-size read "10G"
// as the same 10 GiB, as Nix's --max-freed does.
func TestSizeFlagsSameUnits(t *testing.T) {
	_, budget, err := parseBudget("10G")
	if err != nil {
		t.Fatal(err)
	}
	maxFreed, err := report.ParseSize("10G")
	if err != nil || uint64(budget) != maxFreed || budget != 10<<30 {
		t.Fatalf("--budget 10G is %d bytes, --max-freed 10G %d (%v); want both %d", budget, maxFreed, err, 10<<30)
	}
	b := buildSizeStore(t)
	out, msg, err := runCLI(t, "--store", b.Root, "gc", "--max-freed", "0K")
	if err != nil || out != "" || !strings.Contains(msg, "--max-freed 0: nothing to do") {
		t.Errorf("gc --max-freed 0K: %q, %q, %v; want nothing to do", out, msg, err)
	}
}

// TestBudgetSizeIsBinary runs verify --budget NK on a demo store with an N
// for which N*1000 and N*1024 bytes take different numbers of paths: the
// run must take as many as N*1024 bytes do (a budget is spent path by
// path, least recently verified first; on a fresh store in name order).
func TestBudgetSizeIsBinary(t *testing.T) {
	b := buildSizeStore(t)
	db, err := sql.Open("sqlite", "file:"+b.Layout.DBPath()+"?mode=ro")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	rows, err := db.Query("SELECT narSize FROM ValidPaths ORDER BY path")
	if err != nil {
		t.Fatal(err)
	}
	var sizes []int64
	for rows.Next() {
		var n int64
		if err := rows.Scan(&n); err != nil {
			t.Fatal(err)
		}
		sizes = append(sizes, n)
	}
	rows.Close()
	taken := func(budget int64) int {
		var cum int64
		k := 0
		for k < len(sizes) && cum < budget {
			cum += sizes[k]
			k++
		}
		return k
	}
	n := int64(1)
	for ; n < 1<<20 && taken(n*1000) == taken(n*1024); n++ {
	}
	if n == 1<<20 {
		t.Fatalf("the demo store has no budget N for which NK taken as N*1000 and N*1024 bytes differ (%d paths)", len(sizes))
	}
	for _, v := range []string{fmt.Sprintf("%dK", n), fmt.Sprintf("%dkib", n)} {
		out, msg, code := runMain(t, "--store", b.Root, "--json", "verify", "--budget", v, "--no-record")
		if code != 0 {
			t.Fatalf("verify --budget %s: exit %d\n%s%s", v, code, out, msg)
		}
		var env struct {
			Result struct {
				Summary struct {
					Contents int `json:"paths_hashed"`
				} `json:"summary"`
			} `json:"result"`
		}
		if err := json.Unmarshal([]byte(out), &env); err != nil {
			t.Fatalf("verify --budget %s: %v in %q", v, err, out)
		}
		res := env.Result
		if want := taken(n * 1024); res.Summary.Contents != want {
			t.Errorf("verify --budget %s hashed %d paths; want %d (%d bytes; %d bytes would take %d)",
				v, res.Summary.Contents, want, n*1024, n*1000, taken(n*1000))
		}
	}
}

// TestMinSizeIsBinary runs optimise --dry-run --min-size NK on a demo store
// with an N for which N*1000 and N*1024 bytes skip different numbers of
// files: it must skip the files under N*1024 bytes.
func TestMinSizeIsBinary(t *testing.T) {
	b := buildSizeStore(t)
	var sizes []int64 // of every regular file and symlink in a valid path
	for _, p := range b.Valid {
		err := filepath.WalkDir(b.Layout.RealPath(p), func(path string, d fs.DirEntry, err error) error {
			if err != nil || d.IsDir() {
				return err
			}
			info, err := d.Info()
			if err != nil {
				return err
			}
			if info.Mode().IsRegular() || info.Mode()&fs.ModeSymlink != 0 {
				sizes = append(sizes, info.Size())
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	sort.Slice(sizes, func(i, j int) bool { return sizes[i] < sizes[j] })
	under := func(min int64) int64 {
		return int64(sort.Search(len(sizes), func(i int) bool { return sizes[i] >= min }))
	}
	n := int64(1)
	for ; n < 1<<20 && under(n*1000) == under(n*1024); n++ {
	}
	if n == 1<<20 {
		t.Fatalf("the demo store has no N for which files under N*1000 and N*1024 bytes differ (%d files)", len(sizes))
	}
	for _, v := range []string{fmt.Sprintf("%dK", n), fmt.Sprintf("%dKiB", n), fmt.Sprint(n * 1024)} {
		out, msg, code := runMain(t, "--store", b.Root, "--json", "optimise", "--dry-run", "--min-size", v)
		if code != 0 {
			t.Fatalf("optimise --min-size %s: exit %d\n%s%s", v, code, out, msg)
		}
		var env struct {
			Result struct {
				Seen  int64 `json:"files_seen"`
				Small int64 `json:"skipped_small"`
			} `json:"result"`
		}
		if err := json.Unmarshal([]byte(out), &env); err != nil {
			t.Fatalf("optimise --min-size %s: %v in %q", v, err, out)
		}
		res := env.Result
		if want := under(n * 1024); res.Small != want || res.Seen != int64(len(sizes)) {
			t.Errorf("optimise --min-size %s skipped %d of %d files; want %d of %d (under %d bytes; under %d: %d)",
				v, res.Small, res.Seen, want, len(sizes), n*1024, n*1000, under(n*1000))
		}
	}
}
