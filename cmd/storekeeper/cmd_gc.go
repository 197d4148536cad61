package main

import (
	"fmt"
	"os"
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
--ensure-free also takes a percentage of the store's file system (e.g. 10%).`,
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
	gopts := gc.GenerationOptions{DeleteOld: o.deleteOld, DryRun: o.dryRun, Warn: func(msg string) { p.Warnf("%s", msg) }}
	if o.deleteOlderThan != "" {
		d, err := gc.ParseOlderThan(o.deleteOlderThan)
		if err != nil {
			return usagef("--delete-older-than: %w", err)
		}
		gopts.OlderThan = d
	}
	if o.maxFreed != "" {
		n, err := report.ParseSize(o.maxFreed)
		if err != nil {
			return usagef("--max-freed: %w", err)
		}
		opts.MaxFreed = n
	}
	if o.ensureFree != "" {
		if _, _, err := parseEnsureFree(o.ensureFree); err != nil {
			return err
		}
	}
	readOnly := opts.Action == gc.PrintDead || opts.Action == gc.PrintLive || o.dryRun
	if o.deleteOld || o.deleteOlderThan != "" {
		readOnly = false
	}
	if !readOnly {
		lay, err := g.layout()
		if err != nil {
			return err
		}
		if err := ensureWritableStore(lay); err != nil {
			return err
		}
		if (opts.Action == gc.Delete || opts.Action == gc.DeleteSpecific) && !o.dryRun && diskNearlyFull(lay.DBDir()) {
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
	if o.ensureFree != "" {
		want, err := ensureFreeBytes(s.Layout.RealStoreDir, o.ensureFree)
		if err != nil {
			return err
		}
		if want == 0 {
			p.Infof("the store's file system already has %s free", o.ensureFree)
			return nil
		}
		if opts.MaxFreed == 0 || want < opts.MaxFreed {
			opts.MaxFreed = want
		}
	}

	var gens []gc.RemovedGeneration
	if o.deleteOld || o.deleteOlderThan != "" {
		gens, err = gc.DeleteGenerations(ctx, s.Layout.ProfilesDir(), gopts)
		for _, r := range gens {
			verb := "removing"
			if o.dryRun {
				verb = "would remove"
			}
			p.Infof("%s profile generation %d of %s", verb, r.Number, r.Profile)
		}
		if err != nil {
			return err
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
	if g.json {
		type out struct {
			*gc.Result
			Generations []gc.RemovedGeneration `json:"generations_removed,omitempty"`
			DryRun      bool                   `json:"dry_run,omitempty"`
		}
		p.JSON(out{res, gens, o.dryRun})
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
	size, pct, err := parseEnsureFree(spec)
	if err != nil {
		return 0, err
	}
	avail, total, err := fs.FreeSpace(dir)
	if err != nil {
		return 0, err
	}
	want := size
	if pct >= 0 {
		want = uint64(pct / 100 * float64(total))
	}
	if avail >= want {
		return 0, nil
	}
	return want - avail, nil
}

// parseEnsureFree reads --ensure-free: a size (pct -1) or a percentage
// from 0 to 100 of the file system.
func parseEnsureFree(spec string) (size uint64, pct float64, err error) {
	if p, ok := strings.CutSuffix(spec, "%"); ok {
		f, err := strconv.ParseFloat(p, 64)
		if err != nil || !(f >= 0 && f <= 100) { // NaN too
			return 0, 0, usagef("--ensure-free %q: expected a size or a percentage from 0%% to 100%%", spec)
		}
		return 0, f, nil
	}
	n, err := report.ParseSize(spec)
	if err != nil {
		return 0, 0, usagef("--ensure-free: %w, or a percentage from 0%% to 100%%", err)
	}
	return n, -1, nil
}
