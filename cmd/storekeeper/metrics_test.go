package main

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spf13/cobra"

	"storekeeper/gc"
	"storekeeper/metrics"
	"storekeeper/optimise"
	"storekeeper/verify"
)

// TestRunFamilies: every result kind gives valid families, each name
// with one help and type, every sample labelled with its command.
func TestRunFamilies(t *testing.T) {
	end := time.Unix(1700000000, 250e6)
	failed := classify(&usageError{errors.New("x")}, false, nil, "")
	cov := &verify.Coverage{ValidPaths: 4, Recent: 3, Unverified: 1, Oldest: 1699990000, Newest: 1699999999}
	cases := []struct {
		cmd    string
		o      outcome
		result any
		want   map[string]string // sample line prefix -> value
	}{
		{"gc", outcome{}, &gc.Result{BytesFreed: 4096, PathsDeleted: 3, EntriesDeleted: 1, LockHeldSeconds: 0.5,
			Phases: []gc.PhaseTime{{Name: "lock", Seconds: 2.25}, {Name: "roots", Seconds: 1}}},
			map[string]string{
				`storekeeper_gc_freed_bytes{command="gc"}`: "4096", `storekeeper_gc_paths_deleted{command="gc"}`: "3",
				`storekeeper_gc_entries_deleted{command="gc"}`: "1", `storekeeper_lock_wait_seconds{command="gc"}`: "2.25",
				`storekeeper_gc_lock_held_seconds{command="gc"}`: "0.5", `storekeeper_last_run_success{command="gc"}`: "1",
				`storekeeper_last_run_timestamp_seconds{command="gc"}`: "1700000000.25", `storekeeper_last_run_duration_seconds{command="gc"}`: "1.5",
				`storekeeper_last_run_exit_code{command="gc"}`: "0",
			}},
		{"gc", outcome{}, &gc.Result{Phases: []gc.PhaseTime{{Name: "lock", Seconds: 1}, {Name: "roots", Seconds: 1}, {Name: "lock", Seconds: 0.5}}},
			map[string]string{`storekeeper_lock_wait_seconds{command="gc"}`: "1.5"}},
		{"optimise", outcome{}, &optimise.Result{BytesFreed: 10, FilesLinked: 2}, map[string]string{
			`storekeeper_optimise_saved_bytes{command="optimise"}`: "10", `storekeeper_optimise_files_linked{command="optimise"}`: "2"}},
		{"verify", outcome{code: exitFindings, kind: "findings"}, &verify.Result{Summary: verify.Summary{Checked: 4, ContentsChecked: 2, Damaged: 1}, Coverage: cov},
			map[string]string{
				`storekeeper_verify_paths_checked{command="verify"}`: "4", `storekeeper_verify_paths_hashed{command="verify"}`: "2",
				`storekeeper_verify_paths_damaged{command="verify"}`: "1", `storekeeper_verify_coverage_ratio{command="verify"}`: "0.75",
				`storekeeper_verify_paths_never_verified{command="verify"}`: "1", `storekeeper_verify_oldest_age_seconds{command="verify"}`: "10000",
				`storekeeper_verify_newest_timestamp_seconds{command="verify"}`: "1699999999",
				`storekeeper_last_run_success{command="verify"}`:                "0", `storekeeper_last_run_exit_code{command="verify"}`: "1",
				`storekeeper_last_run_error{command="verify",kind="findings"}`: "1",
			}},
		{"repair", outcome{}, &repairJSON{PathsRequested: 3, PathsRepaired: 2, PathsFailed: 1, BytesDownloaded: 99}, map[string]string{
			`storekeeper_repair_paths_requested{command="repair"}`: "3", `storekeeper_repair_paths_repaired{command="repair"}`: "2",
			`storekeeper_repair_paths_failed{command="repair"}`: "1", `storekeeper_repair_downloaded_bytes{command="repair"}`: "99"}},
		{"repair", failed, &repairJSON{DryRun: true, PathsRequested: 3}, map[string]string{
			`storekeeper_last_run_error{command="repair",kind="usage"}`: "1", `storekeeper_repair_paths_requested`: ""}},
		{"metrics", outcome{}, &storeHealth{Now: 1700000000, Paths: 5, NarBytes: 500, DeadPaths: 2, DeadNarBytes: 200, Audit: verify.Coverage{ValidPaths: 5, Unverified: 5}},
			map[string]string{
				`storekeeper_store_paths{command="metrics"}`: "5", `storekeeper_store_nar_bytes{command="metrics"}`: "500",
				`storekeeper_dead_paths{command="metrics"}`: "2", `storekeeper_dead_nar_bytes{command="metrics"}`: "200",
				`storekeeper_verify_coverage_ratio{command="metrics"}`: "0", `storekeeper_verify_paths_never_verified{command="metrics"}`: "5",
				`storekeeper_verify_oldest_age_seconds`: "", // no record: absent
			}},
		{"gc", failed, nil, map[string]string{`storekeeper_last_run_error{command="gc",kind="usage"}`: "1", `storekeeper_gc_freed_bytes`: ""}},
		// A command that records its result even when the library
		// returned none (gc.Collect's (nil, err)): the run's own only.
		{"gc", failed, (*gc.Result)(nil), map[string]string{`storekeeper_last_run_error{command="gc",kind="usage"}`: "1", `storekeeper_gc_freed_bytes`: ""}},
		{"verify", failed, (*verify.Result)(nil), map[string]string{`storekeeper_last_run_success{command="verify"}`: "0", `storekeeper_verify_paths_checked`: ""}},
		{"optimise", failed, (*optimise.Result)(nil), map[string]string{`storekeeper_optimise_saved_bytes`: ""}},
		{"repair", failed, (*repairJSON)(nil), map[string]string{`storekeeper_repair_paths_requested`: ""}},
		{"metrics", failed, (*storeHealth)(nil), map[string]string{`storekeeper_store_paths`: ""}},
	}
	defs := map[string]metricDef{}
	for _, c := range cases {
		fams := runFamilies(c.cmd, end, 1500*time.Millisecond, c.o, c.result)
		b, err := metrics.Format(fams)
		if err != nil {
			t.Fatalf("%s: %v", c.cmd, err)
		}
		text := string(b)
		for _, f := range fams {
			d := metricDef{f.Name, f.Help, f.Type}
			if old, ok := defs[f.Name]; ok && old != d {
				t.Errorf("%s defined twice: %v and %v", f.Name, old, d)
			}
			defs[f.Name] = d
			for _, s := range f.Samples {
				if len(s.Labels) == 0 || s.Labels[0] != (metrics.Label{Name: "command", Value: c.cmd}) {
					t.Errorf("%s: %s has labels %v", c.cmd, f.Name, s.Labels)
				}
			}
		}
		for prefix, want := range c.want {
			found := ""
			for _, l := range strings.Split(text, "\n") {
				if strings.HasPrefix(l, prefix) && !strings.HasPrefix(l, "#") {
					found = strings.TrimPrefix(l, prefix+" ")
				}
			}
			if found != want {
				t.Errorf("%s: %s = %q, want %q\n%s", c.cmd, prefix, found, want, text)
			}
		}
	}
}

// TestMetricsFlag: --metrics-file is on exactly gc, optimise, verify,
// repair and metrics; a run refused at once still writes its failure; a
// file that cannot be written fails a run that succeeded.
func TestMetricsFlag(t *testing.T) {
	root, _, _ := newRootCommand()
	for _, c := range root.Commands() {
		has := c.Flags().Lookup("metrics-file") != nil
		if has != metricsCommands[c.Name()] {
			t.Errorf("%s: --metrics-file %v", c.Name(), has)
		}
	}
	dir := t.TempDir()
	file := filepath.Join(dir, "gc.prom")
	var out, errb strings.Builder
	code := run(t.Context(), []string{"gc", "--metrics-file", file, "--print-dead", "--print-live"}, &out, &errb)
	if code != exitCannotRun {
		t.Fatalf("exit %d", code)
	}
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(b), "storekeeper_last_run_error{command=\"gc\",kind=\"usage\"} 1\n") ||
		!strings.Contains(string(b), "storekeeper_last_run_success{command=\"gc\"} 0\n") {
		t.Errorf("the failure is not in the file:\n%s", b)
	}
	// gc --auto's runs are labelled gc-auto (its timer's file sits beside
	// the daily gc's).
	if f := findCommand(root, "gc").Flags().Lookup("auto"); f != nil {
		file := filepath.Join(dir, "gc-auto.prom")
		run(t.Context(), []string{"--store", filepath.Join(dir, "none"), "gc", "--auto", "--min-free", "1", "--metrics-file", file}, &out, &errb)
		if b, err := os.ReadFile(file); err != nil || !strings.Contains(string(b), `storekeeper_last_run_success{command="gc-auto"}`) {
			t.Errorf("gc --auto's file: %v\n%s", err, b)
		}
	} else {
		t.Log("gc has no --auto flag yet: its label is not tested")
	}
	// The store does not exist: still a failure (no-store), and the
	// metrics command writes it too.
	code = run(t.Context(), []string{"--store", filepath.Join(dir, "none"), "metrics", "--metrics-file", filepath.Join(dir, "m.prom")}, &out, &errb)
	if code != exitCannotRun {
		t.Fatalf("exit %d", code)
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "m.prom")); !strings.Contains(string(b), `kind="no-store"`) {
		t.Errorf("metrics' failure not written:\n%s", b)
	}
	// An unwritable metrics file (its directory is missing) on a run
	// that fails anyway: the run's error stays, the file's is added.
	errb.Reset()
	code = run(t.Context(), []string{"gc", "--metrics-file", filepath.Join(dir, "missing", "gc.prom"), "--print-dead", "--print-live"}, &out, &errb)
	if code != exitCannotRun || !strings.Contains(errb.String(), "exclude each other") || !strings.Contains(errb.String(), "missing") {
		t.Errorf("exit %d, stderr %q", code, errb.String())
	}
}

func findCommand(root *cobra.Command, name string) *cobra.Command {
	for _, c := range root.Commands() {
		if c.Name() == name {
			return c
		}
	}
	return nil
}
