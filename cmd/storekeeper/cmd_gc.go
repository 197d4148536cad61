package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"storekeeper/gc"
	"storekeeper/report"
	"storekeeper/store/fs"
)

type gcOptions struct {
	printDead, printLive, dryRun, delete bool
	maxFreed, ensureFree                 string
	keepOutputs, keepDerivations         bool
	keepRecent                           time.Duration
	deleteOlderThan                      string
	deleteOld                            bool
	batchSize, workers                   int

	// gc --auto and the keep policies (issue #26; cmd_gc_auto.go's doc).
	auto                     bool
	minFree, maxFree         string
	keep                     int
	keepSince, keepAutoSince string
	profiles                 []string
}

func newGCCommand(g *globalOptions) *cobra.Command {
	o := &gcOptions{}
	cmd := &cobra.Command{
		Use:   "gc [--delete PATH...]",
		Short: "Collect garbage: delete every store path no root keeps alive",
		Long: `Collect garbage with Nix's semantics (the same dead set as nix-store --gc),
beside a running nix-daemon: gc.lock is taken like Nix does and the gc socket
is served, so builds keep registering their roots. Only invalidation and a
rename into this run's own locked directory in <store>/trash happen under
the exclusive lock; files are deleted afterwards, with the lock held shared,
by parallel workers (another collector waits, Nix clients go on). A run
that finds trash left by a killed or interrupted one empties it first.

A deleting run stops before deleting anything when a root cannot be read
(a directory loop under gcroots/, a root it may not read) or when the store
dir holds none of the valid paths (a store that failed to mount).

Sizes are a number of bytes, or one with a unit K, M, G, T, P or E (powers
of 1024, as Nix's --max-freed; KiB, MiB... and lower case are the same);
--ensure-free, --min-free and --max-free also take a percentage of the
store's file system (e.g. 10%).

--auto (for a timer every few minutes) has Nix's min-free/max-free
semantics: above min-free it exits at once after one statfs, opening no
database and reading no root; below, it collects until max-free is
available. Two never run at once: a second --auto exits 0 saying another
one runs; the free space is read again once the locks are taken, so a run
that waited for another collector does no work if that one freed enough.

Keep policies remove profile generations and auto roots first (every
profile under the profiles directory, or each --profile): --keep N keeps
the N newest generations, --keep-since DURATION those newer than that, both
together what either keeps; the current generation is always kept.
--keep-auto-since removes the gcroots/auto links whose result or .direnv
symlink was not modified within DURATION (only when given). With --dry-run
they list what they would remove and gc what it would then free.`,
		RunE: func(cmd *cobra.Command, args []string) error {
			return runGC(cmd, g, o, args)
		},
	}
	f := cmd.Flags()
	f.BoolVar(&o.printDead, "print-dead", false, "print the paths that would be deleted, one a line, and change nothing")
	f.BoolVar(&o.printLive, "print-live", false, "print the live paths, one a line, and change nothing")
	f.BoolVar(&o.dryRun, "dry-run", false, "report how many paths and bytes would be freed (counting hard links), change nothing")
	f.BoolVar(&o.delete, "delete", false, "delete only the given paths, each only if it is dead")
	f.StringVar(&o.maxFreed, "max-freed", "", "stop after freeing this much (SIZE: bytes, or 10K, 10M, 10G, 10T: powers of 1024)")
	f.StringVar(&o.ensureFree, "ensure-free", "", "collect until the store's file system has this much free (SIZE as for --max-freed, or PCT%)")
	f.BoolVar(&o.keepOutputs, "keep-outputs", false, "keep the outputs of live derivations (default: nix.conf keep-outputs)")
	f.BoolVar(&o.keepDerivations, "keep-derivations", true, "keep the derivations of live outputs (default: nix.conf keep-derivations)")
	f.DurationVar(&o.keepRecent, "keep-recent", 0, "keep paths registered within this duration (a grace period), e.g. 2h")
	f.StringVar(&o.deleteOlderThan, "delete-older-than", "", "first delete profile generations older than this (e.g. 30d, at most 106751d; never the current one)")
	f.BoolVarP(&o.deleteOld, "delete-old", "d", false, "first delete all profile generations but the current ones")
	f.BoolVar(&o.auto, "auto", false, "collect only when the store's file system has less than min-free available, until max-free is; else exit at once (one statfs, no database opened)")
	f.StringVar(&o.minFree, "min-free", "", "with --auto: collect when less than `SIZE` (or PCT%) is available (default: nix.conf min-free; 0: never)")
	f.StringVar(&o.maxFree, "max-free", "", "with --auto: collect until `SIZE` (or PCT%) is available (default: nix.conf max-free; unset: every dead path)")
	f.IntVar(&o.keep, "keep", 0, "first delete profile generations but the `N` newest (by number) and the current one (with --keep-since: kept if either keeps it)")
	f.StringVar(&o.keepSince, "keep-since", "", "first delete profile generations older than `DURATION` (14d, 12h, 2w, 90m) but the current one (with --keep: kept if either keeps it)")
	f.StringVar(&o.keepAutoSince, "keep-auto-since", "", "first remove the gcroots/auto links whose indirect root (a result or .direnv symlink) was not modified within `DURATION` (e.g. 30d)")
	f.StringArrayVar(&o.profiles, "profile", nil, "apply --keep, --keep-since, -d or --delete-older-than only to the profile `PATH` (repeatable; default: every profile under the profiles directory)")
	f.IntVar(&o.batchSize, "batch-size", 0, "most paths invalidated per transaction (default 65536)")
	f.MarkHidden("batch-size")
	f.IntVar(&o.workers, "delete-workers", 0, "workers deleting the trash (default 2 per CPU)")
	f.MarkHidden("delete-workers")
	return cmd
}

func runGC(cmd *cobra.Command, g *globalOptions, o *gcOptions, args []string) error {
	ctx := cmd.Context()
	p := g.printer(cmd)
	opts := gc.Options{Action: gc.Delete, DryRun: o.dryRun, KeepRecent: o.keepRecent, BatchSize: o.batchSize, Workers: o.workers}
	switch {
	case o.printDead && o.printLive:
		return usagef("--print-dead and --print-live exclude each other")
	case o.printDead:
		opts.Action = gc.PrintDead
	case o.printLive:
		opts.Action = gc.PrintLive
	case o.delete:
		opts.Action = gc.DeleteSpecific
		opts.Paths = args
		if len(args) == 0 {
			return usagef("--delete needs the store paths to delete")
		}
	}
	if len(args) > 0 && !o.delete {
		return usagef("unexpected arguments %q (did you mean --delete?)", args)
	}
	// Values are checked before anything is opened or changed.
	if o.keepRecent < 0 {
		return usagef("--keep-recent %s: must not be negative", o.keepRecent)
	}
	gopts := gc.GenerationOptions{DeleteOld: o.deleteOld, DryRun: o.dryRun, Profiles: o.profiles, Warn: func(msg string) { p.Warnf("%s", msg) }}
	if o.deleteOlderThan != "" {
		d, err := gc.ParseOlderThan(o.deleteOlderThan)
		if err != nil {
			return usagef("--delete-older-than: %w", err)
		}
		gopts.OlderThan = d
	}
	policy, err := parseKeepFlags(cmd, o, &gopts)
	if err != nil {
		return err
	}
	if policy.any() && (opts.Action != gc.Delete) {
		return usagef("--keep, --keep-since and --keep-auto-since collect: they exclude --print-dead, --print-live and --delete")
	}
	if o.maxFreed != "" {
		n, err := report.ParseSize(o.maxFreed)
		if err != nil {
			return usagef("--max-freed: %w", err)
		}
		opts.MaxFreed = n
	}
	var ensureFree *gc.FreeSpec
	if o.ensureFree != "" {
		spec, err := parseFreeSpec("--ensure-free", o.ensureFree)
		if err != nil {
			return err
		}
		ensureFree = &spec
		opts.FreeTarget = func(avail, total uint64) (bool, uint64) {
			want := spec.Of(total)
			return avail < want, want - min(avail, want)
		}
	}
	var auto *autoRun
	if o.auto {
		if err := checkAutoFlags(cmd, o); err != nil {
			return err
		}
		var done bool
		auto, done, err = startAuto(g, o, p)
		if err != nil || done {
			return err
		}
		defer auto.lock.Release()
		opts.FreeTarget = auto.thresholds.Need
	} else if cmd.Flags().Changed("min-free") || cmd.Flags().Changed("max-free") {
		return usagef("--min-free and --max-free go with --auto")
	}
	readOnly := opts.Action == gc.PrintDead || opts.Action == gc.PrintLive || o.dryRun
	if o.deleteOld || o.deleteOlderThan != "" || policy.any() {
		readOnly = false
	}
	// --ensure-free's shortfall, read before db/reserved may be released
	// below: with it released the disk would look freer than it is, and a
	// run that then has nothing to do would leave it released.
	var ensureWant uint64
	if ensureFree != nil {
		lay, err := g.layout()
		if err != nil {
			return err
		}
		if ensureWant, err = freeBytesToReach(lay.RealStoreDir, *ensureFree); err != nil {
			return err
		}
	}
	nothingToDo := (o.maxFreed != "" && opts.MaxFreed == 0) || (ensureFree != nil && ensureWant == 0)
	if !readOnly {
		lay, err := g.layout()
		if err != nil {
			return err
		}
		// gc --auto's startAuto did it before taking gc-auto.lock.
		if auto == nil {
			if err := ensureWritableStore(lay); err != nil {
				return err
			}
		}
		if (opts.Action == gc.Delete || opts.Action == gc.DeleteSpecific) && !o.dryRun && !nothingToDo && diskNearlyFull(lay.DBDir()) {
			// On a full disk even opening SQLite needs room: free the
			// reserved space before (Collect would do it right after).
			if err := gc.ReleaseReserved(lay); err != nil {
				p.Warnf("%v", err)
			}
		}
	}
	s, err := g.openStore(ctx, readOnly)
	if err != nil {
		return err
	}
	defer s.Close()
	opts.KeepOutputs, opts.KeepDerivations = s.Settings.KeepOutputs, s.Settings.KeepDerivations
	if cmd.Flags().Changed("keep-outputs") {
		opts.KeepOutputs = o.keepOutputs
	}
	if cmd.Flags().Changed("keep-derivations") {
		opts.KeepDerivations = o.keepDerivations
	}
	if o.maxFreed != "" && opts.MaxFreed == 0 {
		p.Infof("--max-freed 0: nothing to do")
		return nil
	}
	if ensureFree != nil {
		want := ensureWant
		if want == 0 {
			p.Infof("the store's file system already has %s free", o.ensureFree)
			return nil
		}
		if opts.MaxFreed == 0 || want < opts.MaxFreed {
			opts.MaxFreed = want
		}
	}

	verb := "removing" // each profile generation and auto root below
	if o.dryRun {
		verb = "would remove"
	}
	var gens []gc.RemovedGeneration
	if o.deleteOld || o.deleteOlderThan != "" || policy.gens {
		gens, err = gc.DeleteGenerations(ctx, s.Layout.ProfilesDir(), gopts)
		for _, r := range gens {
			p.Infof("%s profile generation %d of %s", verb, r.Number, report.Name(r.Profile))
		}
		if errors.Is(err, gc.ErrNotProfile) {
			return usagef("--profile: %w", err)
		}
		if err != nil {
			return err
		}
	}
	var autoRoots []gc.AutoRoot
	if policy.autoSince > 0 {
		autoRoots, err = gc.PruneAutoRoots(ctx, filepath.Join(s.Layout.GCRootsDir(), "auto"), gc.AutoRootOptions{Since: policy.autoSince, StoreDir: s.Layout.StoreDir, ProfilesDir: s.Layout.ProfilesDir(), DryRun: o.dryRun,
			StateDir: s.Layout.StateDir, OnWait: func() { p.Infof("waiting for the big garbage collector lock...") }})
		for _, r := range autoRoots {
			p.Infof("%s auto root %s (%s -> %s, modified %s)", verb, report.Name(r.Link), report.Name(r.Target), report.Name(r.StorePath), time.Unix(r.MTime, 0).UTC().Format(time.RFC3339))
		}
		if err != nil {
			return err
		}
	}
	if o.dryRun && (len(gens) > 0 || len(autoRoots) > 0) {
		// What the collection would free once they are gone.
		opts.IgnoreRoots = map[string]bool{}
		for _, r := range gens {
			opts.IgnoreRoots[r.Link] = true
		}
		for _, r := range autoRoots {
			opts.IgnoreRoots[r.Target] = true
		}
	}

	if sync := os.Getenv("_STOREKEEPER_TEST_GC_SYNC"); sync != "" {
		// Test hook (like Nix's _NIX_TEST_GC_SYNC): block on reading this
		// file (a FIFO) with the lock held, before invalidating.
		opts.BeforeInvalidation = func() { os.ReadFile(sync) }
	}
	prog := newProgress(p)
	prog.phaseLines = true
	res, err := gc.Collect(ctx, s, opts, prog)
	prog.finish()
	if (opts.Action == gc.Delete || opts.Action == gc.DeleteSpecific) && !o.dryRun {
		g.runResult = res // --metrics-file: only a collection that deletes
	}
	if err != nil && res == nil {
		return err
	}
	if auto != nil {
		auto.finish(s.Layout.RealStoreDir, res, p)
	}
	if g.json {
		type out struct {
			*gc.Result
			Generations []gc.RemovedGeneration `json:"generations_removed,omitempty"`
			AutoRoots   []gc.AutoRoot          `json:"auto_roots_removed,omitempty"`
			Auto        *autoReport            `json:"auto,omitempty"`
			DryRun      bool                   `json:"dry_run,omitempty"`
		}
		var ar *autoReport
		if auto != nil {
			ar = &auto.report
		}
		p.JSON(out{res, gens, autoRoots, ar, o.dryRun})
		return err
	}
	switch {
	case opts.Action == gc.PrintDead:
		writeLines(p, res.Dead)
	case opts.Action == gc.PrintLive:
		writeLines(p, res.Live)
	case o.dryRun:
		if !p.quiet {
			fmt.Fprintf(p.out, "would delete %d store paths, freeing %s\n", len(res.Dead), mib(res.BytesFreed))
		}
	case res.EnoughFree:
		// Another collector freed enough while this run waited: said by
		// auto.finish or below.
		if auto == nil {
			p.Infof("the store's file system has %s free now: nothing to do", report.FormatSize(*res.FreeBytes))
		}
	case err != nil && res.PathsDeleted+res.EntriesDeleted == 0 && res.BytesFreed == 0:
		// Refused or interrupted before deleting anything: the error says it.
	default:
		if !p.quiet {
			if res.LinkSavings != 0 || res.LinksDeleted > 0 {
				p.Infof("note: currently hard linking saves %.2f MiB", float64(res.LinkSavings)/(1<<20))
			}
			fmt.Fprintf(p.out, "%d store paths deleted, %s freed\n", res.PathsDeleted+res.EntriesDeleted, mib(res.BytesFreed))
			p.Verbosef("gc.lock held for %.2fs of %.2fs", res.LockHeldSeconds, res.TotalSeconds)
		}
	}
	return err
}

// diskNearlyFull reports whether dir's file system has less than 1 MiB
// available.
func diskNearlyFull(dir string) bool {
	avail, _, err := fs.FreeSpace(dir)
	return err == nil && avail < 1<<20
}

func writeLines(p *printer, lines []string) {
	var sb strings.Builder
	for _, l := range lines {
		sb.WriteString(report.Name(l))
		sb.WriteByte('\n')
	}
	fmt.Fprint(p.out, sb.String())
}

func mib(b uint64) string { return fmt.Sprintf("%.2f MiB", float64(b)/(1<<20)) }

// ensureFreeBytes turns --ensure-free (SIZE or PCT%) into the number of
// bytes to free now (0: already enough free).
func ensureFreeBytes(dir, spec string) (uint64, error) {
	f, err := parseFreeSpec("--ensure-free", spec)
	if err != nil {
		return 0, err
	}
	return freeBytesToReach(dir, f)
}

// freeBytesToReach is the number of bytes to free now for the store's
// file system (dir) to have spec free (0: already enough free).
func freeBytesToReach(dir string, spec gc.FreeSpec) (uint64, error) {
	avail, total, err := fs.FreeSpace(dir)
	if err != nil {
		return 0, err
	}
	want := spec.Of(total)
	if avail >= want {
		return 0, nil
	}
	return want - avail, nil
}

// parseFreeSpec reads a free-space flag (--ensure-free, --min-free,
// --max-free): a size, or a percentage from 0 to 100 of the file system.
func parseFreeSpec(flag, spec string) (gc.FreeSpec, error) {
	if p, ok := strings.CutSuffix(spec, "%"); ok {
		f, err := strconv.ParseFloat(p, 64)
		if err != nil || !(f >= 0 && f <= 100) { // NaN too
			return gc.FreeSpec{}, usagef("%s %q: expected a size or a percentage from 0%% to 100%%", flag, spec)
		}
		return gc.FreeSpec{Percent: f, IsPercent: true}, nil
	}
	n, err := report.ParseSize(spec)
	if err != nil {
		return gc.FreeSpec{}, usagef("%s: %w, or a percentage from 0%% to 100%%", flag, err)
	}
	return gc.FreeSpec{Bytes: n}, nil
}
