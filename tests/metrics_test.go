package tests

// --metrics-file and `storekeeper metrics` against the real
// prometheus-node-exporter from Debian: its textfile collector reads the
// files storekeeper writes and serves them over 127.0.0.1; every sample
// must be served with the value the command's --json output gives, and
// node_exporter must report no parse error.

import (
	"database/sql"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"
)

// neLogs maps a node_exporter's /metrics URL to its log file.
var neLogs = map[string]string{}

// startNodeExporter starts prometheus-node-exporter on 127.0.0.1 with
// only the textfile collector, reading dir; it returns the /metrics URL.
func startNodeExporter(t *testing.T, dir string) string {
	t.Helper()
	bin, err := exec.LookPath("prometheus-node-exporter")
	if err != nil {
		msg := "prometheus-node-exporter is not installed (apt-get install -y prometheus-node-exporter)"
		if os.Getenv("STOREKEEPER_REQUIRE_NIX") == "1" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	cmd := exec.Command(bin, "--web.listen-address="+addr, "--collector.disable-defaults",
		"--collector.textfile", "--collector.textfile.directory="+dir)
	logf, _ := os.Create(filepath.Join(t.TempDir(), "node-exporter.log"))
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait(); logf.Close() })
	url := "http://" + addr + "/metrics"
	for i := 0; ; i++ {
		if resp, err := http.Get(url); err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				neLogs[url] = logf.Name()
				return url
			}
		}
		if i == 100 {
			b, _ := os.ReadFile(logf.Name())
			t.Fatalf("node_exporter does not answer on %s:\n%s", url, tail(string(b), 2000))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// exposition is a text-format document: "name{l="v",...}" (labels
// sorted, values unescaped and requoted) -> value.
type exposition map[string]float64

// parseExposition reads the samples of the text format (comments
// skipped); the test fails on a line it cannot read.
func parseExposition(t *testing.T, text string) exposition {
	t.Helper()
	out := exposition{}
	for _, line := range strings.Split(text, "\n") {
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		name, rest := line, ""
		labels := map[string]string{}
		if i := strings.IndexByte(line, '{'); i >= 0 {
			name, rest = line[:i], line[i+1:]
			for !strings.HasPrefix(rest, "}") {
				ln, r, ok := strings.Cut(rest, `="`)
				if !ok {
					t.Fatalf("bad labels in %q", line)
				}
				var v strings.Builder
				j := 0
				for ; j < len(r) && r[j] != '"'; j++ {
					if r[j] == '\\' && j+1 < len(r) {
						j++
						if r[j] == 'n' {
							v.WriteByte('\n')
							continue
						}
					}
					v.WriteByte(r[j])
				}
				if j >= len(r) {
					t.Fatalf("unterminated label value in %q", line)
				}
				labels[ln] = v.String()
				rest = strings.TrimPrefix(r[j+1:], ",")
			}
			rest = rest[1:]
		} else {
			name, rest, _ = strings.Cut(line, " ")
			rest = " " + rest
		}
		f := strings.Fields(rest)
		if len(f) != 1 {
			t.Fatalf("bad sample line %q (a timestamp?)", line)
		}
		val, err := strconv.ParseFloat(f[0], 64)
		if err != nil {
			t.Fatalf("bad value in %q: %v", line, err)
		}
		key := sampleKey(name, labels)
		if _, dup := out[key]; dup {
			t.Fatalf("sample %s twice", key)
		}
		out[key] = val
	}
	return out
}

func sampleKey(name string, labels map[string]string) string {
	var ls []string
	for k, v := range labels {
		ls = append(ls, fmt.Sprintf("%s=%q", k, v))
	}
	sort.Strings(ls)
	return name + "{" + strings.Join(ls, ",") + "}"
}

func scrape(t *testing.T, url string) exposition {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	// Files that disagree on a family's HELP or TYPE, or give one series
	// twice, are dropped by node_exporter 1.5 with only a line in its log
	// (node_textfile_scrape_error stays 0).
	if lb, _ := os.ReadFile(neLogs[url]); strings.Contains(string(lb), "error gathering metrics") {
		t.Errorf("node_exporter dropped metrics:\n%s", tail(string(lb), 2000))
	}
	return parseExposition(t, string(b))
}

// metricsRun runs a command with --json and --metrics-file FILE in the
// store's namespace, checks that node_exporter serves every sample of
// FILE with its value and reports no textfile error, and returns the
// envelope and the file's samples.
func metricsRun(t *testing.T, root, url, file string, wantCode int, args ...string) (map[string]any, exposition) {
	t.Helper()
	before := time.Now()
	r := runInNS(t, root, append([]string{"--json", "--metrics-file", file}, args...)...)
	after := time.Now()
	if r.code != wantCode {
		t.Fatalf("%v: exit %d, want %d\n%s\n%s", args, r.code, wantCode, tail(r.stdout, 2000), tail(r.stderr, 2000))
	}
	var env map[string]any
	if err := json.Unmarshal([]byte(r.stdout), &env); err != nil {
		t.Fatalf("%v: --json: %v\n%s", args, err, tail(r.stdout, 2000))
	}
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatalf("%v: no metrics file: %v", args, err)
	}
	if fi, _ := os.Stat(file); fi.Mode().Perm() != 0o644 {
		t.Errorf("%s: mode %v, want 0644", file, fi.Mode().Perm())
	}
	written := parseExposition(t, string(b))
	cmd := args[0]
	ts := written[sampleKey("storekeeper_last_run_timestamp_seconds", map[string]string{"command": cmd})]
	if ts < float64(before.Unix()) || ts > float64(after.Unix()+1) {
		t.Errorf("%s: last run timestamp %v, not between %v and %v", cmd, ts, before.Unix(), after.Unix())
	}
	expectSample(t, written, "storekeeper_last_run_duration_seconds", cmd, env["duration_seconds"].(float64))
	expectSample(t, written, "storekeeper_last_run_exit_code", cmd, float64(wantCode))
	ok := env["ok"].(bool)
	expectSample(t, written, "storekeeper_last_run_success", cmd, map[bool]float64{true: 1, false: 0}[ok])
	if ok {
		for k := range written {
			if strings.HasPrefix(k, "storekeeper_last_run_error{") {
				t.Errorf("%s succeeded, but its file has %s", cmd, k)
			}
		}
	} else {
		kind := env["error"].(map[string]any)["kind"].(string)
		if v, found := written[sampleKey("storekeeper_last_run_error", map[string]string{"command": cmd, "kind": kind})]; !found || v != 1 {
			t.Errorf("%s failed with %s, its file has no storekeeper_last_run_error{kind=%q} 1:\n%s", cmd, kind, kind, b)
		}
	}
	for k := range written {
		if !strings.HasPrefix(k, "storekeeper_") || !strings.Contains(k, fmt.Sprintf("command=%q", cmd)) {
			t.Errorf("%s: sample %s is not storekeeper_*{command=%q}", file, k, cmd)
		}
	}
	// node_exporter reads the directory at every scrape.
	served := scrape(t, url)
	for k, v := range written {
		got, found := served[k]
		if !found {
			t.Errorf("node_exporter does not serve %s (from %s)", k, file)
		} else if got != v && !(math.IsNaN(got) && math.IsNaN(v)) {
			t.Errorf("node_exporter serves %s = %v, the file says %v", k, got, v)
		}
	}
	if v, found := served["node_textfile_scrape_error{}"]; !found || v != 0 {
		t.Errorf("node_textfile_scrape_error = %v (found %v), want 0", v, found)
	}
	if _, found := served[sampleKey("node_textfile_mtime_seconds", map[string]string{"file": filepath.Base(file)})]; !found {
		// node_exporter 1.5 labels the mtime with the file's path or name.
		if _, found := served[sampleKey("node_textfile_mtime_seconds", map[string]string{"file": file})]; !found {
			t.Errorf("node_exporter has no mtime for %s", file)
		}
	}
	return env, written
}

func expectSample(t *testing.T, e exposition, name, cmd string, want float64) {
	t.Helper()
	got, found := e[sampleKey(name, map[string]string{"command": cmd})]
	if !found {
		t.Errorf("no %s{command=%q}", name, cmd)
	} else if got != want {
		t.Errorf("%s{command=%q} = %v, the JSON says %v", name, cmd, got, want)
	}
}

func num(v any) float64 {
	f, _ := v.(float64)
	return f
}

// dbTotals reads the valid paths' count, NAR size sum and sizes by path.
func dbTotals(t *testing.T, root string) (int, uint64, map[string]uint64) {
	t.Helper()
	db, err := sql.Open("sqlite", "file:"+filepath.Join(root, "nix/var/nix/db/db.sqlite")+"?mode=ro")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var n int
	var sum uint64
	if err := db.QueryRow("select count(*), coalesce(sum(narSize), 0) from ValidPaths").Scan(&n, &sum); err != nil {
		t.Fatal(err)
	}
	rows, err := db.Query("select path, narSize from ValidPaths")
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	sizes := map[string]uint64{}
	for rows.Next() {
		var p string
		var s uint64
		if err := rows.Scan(&p, &s); err != nil {
			t.Fatal(err)
		}
		sizes[p] = s
	}
	return n, sum, sizes
}

// checkStoreMetrics runs `storekeeper metrics` (--json, and written to
// FILE for node_exporter) and compares its values with the database's,
// gc --print-dead's and what verify recorded (wantCoverage, wantNever).
func checkStoreMetrics(t *testing.T, root, url, file string, wantCoverage float64, wantNever int) {
	t.Helper()
	env, written := metricsRun(t, root, url, file, 0, "metrics")
	res := env["result"].(map[string]any)
	n, sum, sizes := dbTotals(t, root)
	dead := strings.Fields(runInNS(t, root, "gc", "--print-dead").stdout)
	var deadBytes uint64
	for _, p := range dead {
		deadBytes += sizes[p]
	}
	for _, c := range []struct {
		name string
		json string
		want float64
	}{
		{"storekeeper_store_paths", "paths", float64(n)},
		{"storekeeper_store_nar_bytes", "nar_bytes", float64(sum)},
		{"storekeeper_dead_paths", "dead_paths", float64(len(dead))},
		{"storekeeper_dead_nar_bytes", "dead_nar_bytes", float64(deadBytes)},
		{"storekeeper_verify_coverage_ratio", "audit_coverage_ratio", wantCoverage},
	} {
		if got := num(res[c.json]); got != c.want {
			t.Errorf("metrics --json %s = %v, want %v", c.json, got, c.want)
		}
		expectSample(t, written, c.name, "metrics", c.want)
	}
	audit := res["audit"].(map[string]any)
	expectSample(t, written, "storekeeper_verify_paths_never_verified", "metrics", float64(wantNever))
	if num(audit["paths_never_verified"]) != float64(wantNever) || num(audit["valid_paths"]) != float64(n) {
		t.Errorf("metrics --json audit = %v, want %d never verified of %d", audit, wantNever, n)
	}
	if oldest := num(audit["oldest_verified"]); oldest > 0 {
		expectSample(t, written, "storekeeper_verify_oldest_age_seconds", "metrics", num(res["now"])-oldest)
		expectSample(t, written, "storekeeper_verify_newest_timestamp_seconds", "metrics", num(audit["newest_verified"]))
	}
	// Text on stdout without --metrics-file: the same samples as the
	// file but the run's own.
	text := parseExposition(t, runInNS(t, root, "metrics").stdout)
	for k, v := range text {
		if strings.Contains(k, "_age_seconds") {
			continue // a second may have passed
		}
		if written[k] != v {
			t.Errorf("metrics on stdout: %s = %v, in the file %v", k, v, written[k])
		}
	}
	if len(text) == 0 || len(text) >= len(written) {
		t.Errorf("metrics on stdout has %d samples, the file %d (with the run's own)", len(text), len(written))
	}
}

func TestMetricsNodeExporter(t *testing.T) {
	ns := buildNixStore(t, nixSpec{Paths: 40, Seed: 2626, Roots: 3, Gens: 2, Leftover: 2, Salt: "metrics-26"})
	root := ns.Root
	intact := copyStore(t, root) // repair's source, later
	dir := t.TempDir()
	url := startNodeExporter(t, dir)
	file := func(cmd string) string { return filepath.Join(dir, "storekeeper-"+cmd+".prom") }

	// The store's health before any audit.
	n, _, _ := dbTotals(t, root)
	checkStoreMetrics(t, root, url, file("metrics"), 0, n)

	// verify: a clean audit of every path.
	env, w := metricsRun(t, root, url, file("verify"), 0, "verify", "--check-contents")
	sum := env["result"].(map[string]any)["summary"].(map[string]any)
	expectSample(t, w, "storekeeper_verify_paths_checked", "verify", num(sum["paths_checked"]))
	expectSample(t, w, "storekeeper_verify_paths_hashed", "verify", num(sum["paths_hashed"]))
	expectSample(t, w, "storekeeper_verify_paths_damaged", "verify", 0)
	expectSample(t, w, "storekeeper_verify_coverage_ratio", "verify", 1)
	expectSample(t, w, "storekeeper_verify_paths_never_verified", "verify", 0)
	if num(sum["paths_hashed"]) != float64(n) {
		t.Errorf("verify hashed %v paths of %d", sum["paths_hashed"], n)
	}
	checkStoreMetrics(t, root, url, file("metrics"), 1, 0)

	// optimise.
	env, w = metricsRun(t, root, url, file("optimise"), 0, "optimise")
	res := env["result"].(map[string]any)
	expectSample(t, w, "storekeeper_optimise_saved_bytes", "optimise", num(res["bytes_freed"]))
	expectSample(t, w, "storekeeper_optimise_files_linked", "optimise", num(res["files_linked"]))
	if num(res["files_linked"]) == 0 {
		t.Errorf("optimise linked nothing: the store has shared contents")
	}

	// gc: what it freed, as its JSON says.
	deadBefore := len(strings.Fields(runInNS(t, root, "gc", "--print-dead").stdout))
	env, w = metricsRun(t, root, url, file("gc"), 0, "gc")
	res = env["result"].(map[string]any)
	expectSample(t, w, "storekeeper_gc_freed_bytes", "gc", num(res["bytes_freed"]))
	expectSample(t, w, "storekeeper_gc_paths_deleted", "gc", num(res["paths_deleted"]))
	expectSample(t, w, "storekeeper_gc_entries_deleted", "gc", num(res["entries_deleted"]))
	expectSample(t, w, "storekeeper_gc_lock_held_seconds", "gc", num(res["lock_held_seconds"]))
	// The store as gc left it: its size and the dead bytes it left (none
	// after a full collection), the values of its JSON.
	expectSample(t, w, "storekeeper_store_paths", "gc", num(res["paths_valid"]))
	expectSample(t, w, "storekeeper_store_nar_bytes", "gc", num(res["valid_nar_bytes"]))
	expectSample(t, w, "storekeeper_dead_nar_bytes", "gc", 0)
	if num(res["paths_valid"]) == 0 || num(res["dead_nar_bytes_left"]) != 0 {
		t.Errorf("gc left %v valid paths and %v dead NAR bytes", res["paths_valid"], res["dead_nar_bytes_left"])
	}
	for _, ph := range res["phases"].([]any) {
		if m := ph.(map[string]any); m["name"] == "lock" {
			expectSample(t, w, "storekeeper_lock_wait_seconds", "gc", num(m["elapsed_seconds"]))
		}
	}
	if got := num(res["paths_deleted"]) + num(res["entries_deleted"]); got != float64(deadBefore) || got == 0 || num(res["bytes_freed"]) == 0 {
		t.Errorf("gc deleted %v entries freeing %v bytes; --print-dead listed %d", got, res["bytes_freed"], deadBefore)
	}
	nixVerify(t, root)
	n, _, _ = dbTotals(t, root)
	checkStoreMetrics(t, root, url, file("metrics"), 1, 0)

	// A failed gc writes its failure: a live path cannot be deleted.
	live := strings.Fields(runInNS(t, root, "gc", "--print-live").stdout)
	_, w = metricsRun(t, root, url, file("gc"), 2, "gc", "--delete", live[0])
	expectSample(t, w, "storekeeper_last_run_success", "gc", 0)

	// A failed verify writes its failure: damage found.
	victim := ""
	for _, p := range live {
		if !strings.HasSuffix(p, ".drv") && damageFlip(t, root, p) != "" {
			victim = p
			break
		}
	}
	if victim == "" {
		t.Fatal("no live output with a file to damage")
	}
	env, w = metricsRun(t, root, url, file("verify"), 1, "verify", "--check-contents")
	sum = env["result"].(map[string]any)["summary"].(map[string]any)
	damaged := num(sum["paths_damaged"]) // the file may be hard-linked (optimise) into other paths
	if damaged < 1 {
		t.Errorf("verify found %v damaged paths, want at least 1", sum["paths_damaged"])
	}
	expectSample(t, w, "storekeeper_verify_paths_damaged", "verify", num(sum["paths_damaged"]))
	expectSample(t, w, "storekeeper_last_run_success", "verify", 0)

	// repair --damaged from the intact copy (another local store).
	env, w = metricsRun(t, root, url, file("repair"), 0, "repair", "--damaged", "--substituter", "local?root="+intact)
	res = env["result"].(map[string]any)
	expectSample(t, w, "storekeeper_repair_paths_repaired", "repair", num(res["paths_repaired"]))
	expectSample(t, w, "storekeeper_repair_paths_failed", "repair", num(res["paths_failed"]))
	expectSample(t, w, "storekeeper_repair_paths_requested", "repair", num(res["paths_requested"]))
	expectSample(t, w, "storekeeper_repair_downloaded_bytes", "repair", num(res["bytes_downloaded"]))
	// (a damaged .links entry counts among verify's damaged paths, and
	// repair drops it rather than substituting it)
	if r := num(res["paths_repaired"]); r < 1 || r > damaged || r != num(res["paths_requested"]) || num(res["paths_failed"]) != 0 {
		t.Errorf("repair repaired %v of %v paths (%v failed), verify found %v damaged", r, res["paths_requested"], res["paths_failed"], damaged)
	}
	nixVerify(t, root)

	// A failed repair writes its failure: no substituter at all.
	_, w = metricsRun(t, root, url, file("repair"), 2, "repair", "--substituter", "ssh://nowhere", victim)
	expectSample(t, w, "storekeeper_last_run_success", "repair", 0)

	// A metrics file that cannot be written fails a run that succeeded.
	r := runInNS(t, root, "metrics", "--metrics-file", filepath.Join(dir, "missing", "m.prom"))
	if r.code != 2 || !strings.Contains(r.stderr, filepath.Join(dir, "missing")) {
		t.Errorf("metrics with an unwritable --metrics-file: exit %d, stderr %q", r.code, r.stderr)
	}

	// Every file at once, one scrape: the families of all commands merge.
	served := scrape(t, url)
	for _, cmd := range []string{"gc", "verify", "optimise", "repair", "metrics"} {
		if _, ok := served[sampleKey("storekeeper_last_run_success", map[string]string{"command": cmd})]; !ok {
			t.Errorf("node_exporter lost %s's file", cmd)
		}
	}
	ents, _ := os.ReadDir(dir)
	if len(ents) != 5 {
		var names []string
		for _, e := range ents {
			names = append(names, e.Name())
		}
		t.Errorf("the textfile directory holds %v: temporary files left behind?", names)
	}
}

// TestMetricsInterrupted: a gc stopped by SIGTERM in the middle (at its
// sync point, gc.lock held) exits 130 and still writes its metrics file:
// exit code 130, error kind "interrupted", and what it freed before it
// stopped, as its --json says; node_exporter serves it.
func TestMetricsInterrupted(t *testing.T) {
	ns := buildNixStore(t, nixSpec{Paths: 20, Seed: 2627, Roots: 2, Salt: "metrics-26-term"})
	dir := t.TempDir()
	tdir := filepath.Join(dir, "textfile")
	os.Mkdir(tdir, 0o755)
	url := startNodeExporter(t, tdir)
	file := filepath.Join(tdir, "storekeeper-gc.prom")
	script := `
mkfifo "$DIR/sync"
_STOREKEEPER_TEST_GC_SYNC="$DIR/sync" "$BIN" gc --json --metrics-file "$FILE" > "$DIR/gc.out" 2> "$DIR/gc.err" & gc=$!
i=0; while [ ! -S /nix/var/nix/gc-socket/socket ] && [ $i -lt 400 ]; do sleep 0.05; i=$((i+1)); done
sleep 0.3
kill -TERM $gc
timeout 20 sh -c 'echo go > "$DIR/sync"'
wait $gc; echo "GC $?"
`
	cmd := nsScript(ns.Root, script)
	cmd.Env = append(cmd.Env, "DIR="+dir, "BIN="+binary, "FILE="+file)
	out, err := cmd.CombinedOutput()
	gcOut, _ := os.ReadFile(filepath.Join(dir, "gc.out"))
	gcErr, _ := os.ReadFile(filepath.Join(dir, "gc.err"))
	if err != nil || !strings.Contains(string(out), "GC 130") {
		t.Fatalf("gc under SIGTERM: %v\n%s\nstdout %s\nstderr %s", err, out, tail(string(gcOut), 2000), tail(string(gcErr), 2000))
	}
	var env map[string]any
	if err := json.Unmarshal(gcOut, &env); err != nil {
		t.Fatalf("--json: %v\n%s", err, tail(string(gcOut), 2000))
	}
	if k := env["error"].(map[string]any)["kind"]; k != "interrupted" {
		t.Errorf("error kind %v, want interrupted", k)
	}
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatalf("an interrupted gc wrote no metrics file: %v", err)
	}
	w := parseExposition(t, string(b))
	expectSample(t, w, "storekeeper_last_run_exit_code", "gc", 130)
	expectSample(t, w, "storekeeper_last_run_success", "gc", 0)
	if v, ok := w[sampleKey("storekeeper_last_run_error", map[string]string{"command": "gc", "kind": "interrupted"})]; !ok || v != 1 {
		t.Errorf("no storekeeper_last_run_error{kind=\"interrupted\"} 1:\n%s", b)
	}
	res, _ := env["result"].(map[string]any)
	if res == nil {
		t.Fatalf("the interrupted gc's --json has no result:\n%s", gcOut)
	}
	expectSample(t, w, "storekeeper_gc_freed_bytes", "gc", num(res["bytes_freed"]))
	expectSample(t, w, "storekeeper_gc_paths_deleted", "gc", num(res["paths_deleted"]))
	served := scrape(t, url)
	for k, v := range w {
		if got, ok := served[k]; !ok || got != v {
			t.Errorf("node_exporter serves %s = %v (found %v), the file says %v", k, got, ok, v)
		}
	}
	nixVerify(t, ns.Root)
}
