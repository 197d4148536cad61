package main

import (
	"reflect"
	"time"

	"github.com/spf13/cobra"

	"storekeeper/gc"
	"storekeeper/metrics"
	"storekeeper/optimise"
	"storekeeper/verify"
)

// metricsCommands are the commands that take --metrics-file: the ones a
// timer runs unattended, and `metrics` itself.
var metricsCommands = map[string]bool{"gc": true, "optimise": true, "verify": true, "repair": true, "metrics": true}

const metricsFileHelp = "at the end, also when the run fails, write its metrics to `FILE` in node_exporter's textfile format, atomically (a file per command, e.g. /var/lib/prometheus/node-exporter/storekeeper-gc.prom)"

// addMetricsFlags gives each of metricsCommands its --metrics-file flag.
func addMetricsFlags(root *cobra.Command, g *globalOptions) {
	for _, c := range root.Commands() {
		if metricsCommands[c.Name()] {
			c.Flags().StringVar(&g.metricsFile, "metrics-file", "", metricsFileHelp)
		}
	}
}

// metricDef is one metric's name, help and type: one definition per
// name, so that every file gives node_exporter the same HELP and TYPE
// for it (it refuses a family whose files disagree).
type metricDef struct {
	name, help string
	typ        metrics.Type
}

var (
	mRunTimestamp = metricDef{"storekeeper_last_run_timestamp_seconds", "When the command's last run ended (Unix time).", metrics.Gauge}
	mRunDuration  = metricDef{"storekeeper_last_run_duration_seconds", "How long the command's last run took.", metrics.Gauge}
	mRunSuccess   = metricDef{"storekeeper_last_run_success", "1 if the command's last run succeeded (exit status 0), else 0.", metrics.Gauge}
	mRunExitCode  = metricDef{"storekeeper_last_run_exit_code", "The exit status of the command's last run (0 success, 1 problems found, 2 could not run, 130 interrupted).", metrics.Gauge}
	mRunError     = metricDef{"storekeeper_last_run_error", "1 for the kind of error that ended the command's last run (the --json error.kind); absent after a success.", metrics.Gauge}

	mLockWait       = metricDef{"storekeeper_lock_wait_seconds", "How long the command's last run waited for gc.lock.", metrics.Gauge}
	mGCBytesFreed   = metricDef{"storekeeper_gc_freed_bytes", "Bytes the last collection freed: the blocks of the files whose last hard link it removed (not what another process deleted first).", metrics.Gauge}
	mGCPaths        = metricDef{"storekeeper_gc_paths_deleted", "Valid store paths the last collection deleted.", metrics.Gauge}
	mGCEntries      = metricDef{"storekeeper_gc_entries_deleted", "Other store directory entries (invalid leftovers, stale lock files) the last collection deleted.", metrics.Gauge}
	mGCLockHeld     = metricDef{"storekeeper_gc_lock_held_seconds", "How long the last collection held gc.lock exclusively.", metrics.Gauge}
	mOptBytesSaved  = metricDef{"storekeeper_optimise_saved_bytes", "Bytes the last optimise freed: the sizes of the files it replaced by a hard link to an identical one.", metrics.Gauge}
	mOptFilesLinked = metricDef{"storekeeper_optimise_files_linked", "Files the last optimise replaced by a hard link.", metrics.Gauge}
	mVerChecked     = metricDef{"storekeeper_verify_paths_checked", "Valid paths the last verify checked (existence and database rows).", metrics.Gauge}
	mVerHashed      = metricDef{"storekeeper_verify_paths_hashed", "Valid paths the last verify NAR-hashed.", metrics.Gauge}
	mVerDamaged     = metricDef{"storekeeper_verify_paths_damaged", "Paths with unrepaired findings in the last verify.", metrics.Gauge}
	mRepRequested   = metricDef{"storekeeper_repair_paths_requested", "Paths the last repair was asked to (or, with --damaged, found it had to) repair.", metrics.Gauge}
	mRepRepaired    = metricDef{"storekeeper_repair_paths_repaired", "Paths the last repair put back from a substituter.", metrics.Gauge}
	mRepFailed      = metricDef{"storekeeper_repair_paths_failed", "Paths the last repair could not repair.", metrics.Gauge}
	mRepDownloaded  = metricDef{"storekeeper_repair_downloaded_bytes", "Bytes the last repair downloaded.", metrics.Gauge}

	mCoverage   = metricDef{"storekeeper_verify_coverage_ratio", "Fraction of the valid paths whose contents verify checked within the last 7 days and since they were registered (its ledger).", metrics.Gauge}
	mUnverified = metricDef{"storekeeper_verify_paths_never_verified", "Valid paths whose contents verify never checked (no record in its ledger since the path was registered).", metrics.Gauge}
	mOldestAge  = metricDef{"storekeeper_verify_oldest_age_seconds", "Age of the least recent content check of a valid path that has one (its ledger); absent when none has.", metrics.Gauge}
	mNewest     = metricDef{"storekeeper_verify_newest_timestamp_seconds", "When the most recent content check of a valid path was (Unix time; verify's ledger); absent when none was.", metrics.Gauge}

	mStorePaths = metricDef{"storekeeper_store_paths", "Valid paths in the store's database (after the collection, for command=\"gc\").", metrics.Gauge}
	mStoreBytes = metricDef{"storekeeper_store_nar_bytes", "Sum of the valid paths' NAR sizes (the database's narSize; not disk usage: hard links and blocks are not counted).", metrics.Gauge}
	mDeadPaths  = metricDef{"storekeeper_dead_paths", "Store directory entries a collection would delete now (what gc --print-dead lists).", metrics.Gauge}
	mDeadBytes  = metricDef{"storekeeper_dead_nar_bytes", "Sum of the NAR sizes of the dead valid paths.", metrics.Gauge}
)

// familyBuilder collects the families of one run, every sample labelled
// command=<the command> (metricsCommandLabel).
type familyBuilder struct {
	command string
	fams    []metrics.Family
}

func (b *familyBuilder) add(d metricDef, v float64, extra ...metrics.Label) {
	b.fams = append(b.fams, metrics.Family{Name: d.name, Help: d.help, Type: d.typ,
		Samples: []metrics.Sample{{Labels: append([]metrics.Label{{Name: "command", Value: b.command}}, extra...), Value: v}}})
}

// runFamilies are the metrics of a run of command that ended at end
// after elapsed with outcome o; result is what the command recorded in
// globalOptions.runResult (nil, or a nil pointer: only the run's own
// metrics: it failed before having a result, or it changed nothing by
// design, as a dry run).
func runFamilies(command string, end time.Time, elapsed time.Duration, o outcome, result any) []metrics.Family {
	b := &familyBuilder{command: command}
	b.add(mRunTimestamp, float64(end.UnixMilli())/1000)
	b.add(mRunDuration, elapsed.Seconds())
	b.add(mRunSuccess, boolValue(o.code == exitOK))
	b.add(mRunExitCode, float64(o.code))
	if o.code != exitOK {
		b.add(mRunError, 1, metrics.Label{Name: "kind", Value: o.kind})
	}
	if v := reflect.ValueOf(result); v.Kind() == reflect.Pointer && v.IsNil() {
		// A typed nil (cmd_gc records gc.Collect's result, which is nil
		// when Collect failed before it started): nothing to add.
		return b.fams
	}
	switch r := result.(type) {
	case *gc.Result:
		// One sample whatever the phases (a second would be a duplicate
		// series, which the format refuses: the run would fail).
		wait, locked := 0.0, false
		for _, ph := range r.Phases {
			if ph.Name == "lock" {
				wait, locked = wait+ph.Seconds, true
			}
		}
		if locked {
			b.add(mLockWait, wait)
		}
		b.add(mGCBytesFreed, float64(r.BytesFreed))
		b.add(mGCPaths, float64(r.PathsDeleted))
		b.add(mGCEntries, float64(r.EntriesDeleted))
		b.add(mGCLockHeld, r.LockHeldSeconds)
		// The store as the collection left it (its graph, less what it
		// invalidated): size and dead bytes without a separate
		// 'storekeeper metrics' run. No plan, no sample.
		if r.PathsValid > 0 || r.PathsDeleted > 0 {
			b.add(mStorePaths, float64(r.PathsValid))
			b.add(mStoreBytes, float64(r.ValidNarBytes))
			b.add(mDeadBytes, float64(r.DeadNarBytesLeft))
		}
	case *optimise.Result:
		b.add(mOptBytesSaved, float64(r.BytesFreed))
		b.add(mOptFilesLinked, float64(r.FilesLinked))
	case *verify.Result:
		b.add(mVerChecked, float64(r.Summary.Checked))
		b.add(mVerHashed, float64(r.Summary.ContentsChecked))
		b.add(mVerDamaged, float64(r.Summary.Damaged))
		if r.Coverage != nil {
			b.coverage(*r.Coverage, end.Unix())
		}
	case *repairJSON:
		if !r.DryRun {
			b.add(mRepRequested, float64(r.PathsRequested))
			b.add(mRepRepaired, float64(r.PathsRepaired))
			b.add(mRepFailed, float64(r.PathsFailed))
			b.add(mRepDownloaded, float64(r.BytesDownloaded))
		}
	case *storeHealth:
		b.health(r)
	}
	return b.fams
}

// coverage adds the ledger's coverage metrics, ages counted from now.
func (b *familyBuilder) coverage(c verify.Coverage, now int64) {
	b.add(mCoverage, c.Ratio())
	b.add(mUnverified, float64(c.Unverified))
	if c.Oldest > 0 {
		b.add(mOldestAge, float64(max(0, now-c.Oldest)))
	}
	if c.Newest > 0 {
		b.add(mNewest, float64(c.Newest))
	}
}

// health adds the store's health (storekeeper metrics).
func (b *familyBuilder) health(h *storeHealth) {
	b.add(mStorePaths, float64(h.Paths))
	b.add(mStoreBytes, float64(h.NarBytes))
	b.add(mDeadPaths, float64(h.DeadPaths))
	b.add(mDeadBytes, float64(h.DeadNarBytes))
	b.coverage(h.Audit, h.Now)
}

func boolValue(ok bool) float64 {
	if ok {
		return 1
	}
	return 0
}

// writeRunMetrics writes --metrics-file for a run of executed (when it
// is one of metricsCommands and the flag was given): the hook at the end
// of every command, in run.
func writeRunMetrics(executed *cobra.Command, g *globalOptions, end time.Time, elapsed time.Duration, o outcome) error {
	if g.metricsFile == "" || executed == nil || !metricsCommands[executed.Name()] || executed.Parent() == nil || executed.Parent().Parent() != nil {
		return nil
	}
	return metrics.WriteFile(g.metricsFile, runFamilies(metricsCommandLabel(executed), end, elapsed, o, g.runResult))
}

// metricsCommandLabel is the command label of a run of executed: its
// name, but "gc-auto" for gc --auto, which a timer runs every few
// minutes beside the daily gc: two files with the same labels would be
// duplicate series to node_exporter, which then fails the scrape.
func metricsCommandLabel(executed *cobra.Command) string {
	if f := executed.Flags().Lookup("auto"); executed.Name() == "gc" && f != nil && f.Changed && f.Value.String() == "true" {
		return "gc-auto"
	}
	return executed.Name()
}
