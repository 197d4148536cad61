package main

// gc --auto and the keep policies' flags (issue #26).
//
// gc --auto runs from a timer every few minutes, so the common case must
// cost nothing: nix.conf is read and the store's file system statfs'ed
// once, and above min-free the run exits 0 at once with one info line,
// opening no database, reading no root and taking no lock. Below
// min-free it takes <storekeeper state>/gc-auto.lock without waiting: a
// second `gc --auto` started meanwhile exits 0 saying another one runs
// (that one collects until max-free is available, so waiting would only
// queue work). It then reads the free space again, and once more right
// after gc.lock is taken (gc.Options.FreeTarget), so a run that waited for
// another collector (`nix-store --gc`, `storekeeper gc`) does no work
// when that one freed enough.

import (
	"errors"
	"fmt"
	"path/filepath"
	"time"

	"github.com/spf13/cobra"

	"storekeeper/gc"
	"storekeeper/lock"
	"storekeeper/report"
	"storekeeper/store/fs"
)

// keepPolicy is what the keep flags ask beyond the generation options.
type keepPolicy struct {
	gens      bool          // --keep or --keep-since
	autoSince time.Duration // --keep-auto-since
}

func (k keepPolicy) any() bool { return k.gens || k.autoSince > 0 }

// parseAge reads a DURATION flag: Nd, Nh, Nw as --delete-older-than takes
// them, or a Go duration (90m, 1h30m); it must be positive.
func parseAge(flag, v string) (time.Duration, error) {
	d, err := gc.ParseOlderThan(v)
	if err != nil {
		gd, gerr := time.ParseDuration(v)
		if gerr != nil {
			return 0, usagef("%s: %w, or a duration such as 90m or 1h30m", flag, err)
		}
		d = gd
	}
	if d <= 0 {
		return 0, usagef("%s %q: must be more than 0", flag, v)
	}
	return d, nil
}

// parseKeepFlags checks --keep, --keep-since, --keep-auto-since and
// --profile and sets the generation options.
func parseKeepFlags(cmd *cobra.Command, o *gcOptions, gopts *gc.GenerationOptions) (keepPolicy, error) {
	var k keepPolicy
	if cmd.Flags().Changed("keep") {
		if o.keep < 1 {
			return k, usagef("--keep %d: must be at least 1 (the current generation is always kept)", o.keep)
		}
		gopts.Keep = o.keep
	}
	if o.keepSince != "" {
		d, err := parseAge("--keep-since", o.keepSince)
		if err != nil {
			return k, err
		}
		gopts.KeepSince = d
	}
	if o.keepAutoSince != "" {
		d, err := parseAge("--keep-auto-since", o.keepAutoSince)
		if err != nil {
			return k, err
		}
		k.autoSince = d
	}
	k.gens = gopts.Keep > 0 || gopts.KeepSince > 0
	if k.gens && (o.deleteOld || o.deleteOlderThan != "") {
		return k, usagef("--keep and --keep-since exclude -d/--delete-old and --delete-older-than")
	}
	if len(o.profiles) > 0 && !k.gens && !o.deleteOld && o.deleteOlderThan == "" {
		return k, usagef("--profile selects the profiles of --keep, --keep-since, -d or --delete-older-than: give one of them")
	}
	for i, p := range gopts.Profiles {
		abs, err := filepath.Abs(p)
		if err != nil {
			return k, usagef("--profile %q: %w", p, err)
		}
		gopts.Profiles[i] = abs
	}
	return k, nil
}

// checkAutoFlags refuses what --auto does not combine with.
func checkAutoFlags(cmd *cobra.Command, o *gcOptions) error {
	for _, f := range []string{"dry-run", "max-freed", "ensure-free", "print-dead", "print-live", "delete"} {
		if cmd.Flags().Changed(f) {
			return usagef("--auto and --%s exclude each other (--auto collects only below min-free, until max-free is available)", f)
		}
	}
	return nil
}

// autoReport is the "auto" object of gc --auto's JSON result.
type autoReport struct {
	// Bytes, resolved against the file system's size.
	MinFree uint64  `json:"min_free_bytes"`
	MaxFree *uint64 `json:"max_free_bytes"` // null: no limit (every dead path)
	// Available bytes first read, and after the collection.
	FreeBefore uint64  `json:"free_bytes_before"`
	FreeAfter  *uint64 `json:"free_bytes_after,omitempty"`
	Collected  bool    `json:"collected"`
	// Reason: "disabled" (min-free 0), "above-min-free", "another-run"
	// (another gc --auto holds gc-auto.lock), "freed-meanwhile" (enough
	// was available once the locks were taken) or "collected".
	Reason string `json:"reason"`
}

// autoRun is a gc --auto that is collecting: it holds gc-auto.lock.
type autoRun struct {
	thresholds gc.Auto
	lock       *gc.AutoLock
	report     autoReport
}

// startAuto is gc --auto's first step (see the file's doc). done means
// the run has ended (nothing to do, reported); otherwise the caller
// collects with the returned run's thresholds and releases its lock.
func startAuto(g *globalOptions, o *gcOptions, p *printer) (*autoRun, bool, error) {
	lay, err := g.layout()
	if err != nil {
		return nil, false, err
	}
	settings, err := g.settings()
	if err != nil {
		return nil, false, err
	}
	a := gc.Auto{MinFree: gc.FreeSpec{Bytes: settings.MinFree}, MaxFree: gc.FreeSpec{Bytes: settings.MaxFree}}
	if o.minFree != "" {
		if a.MinFree, err = parseFreeSpec("--min-free", o.minFree); err != nil {
			return nil, false, err
		}
	}
	if o.maxFree != "" {
		if a.MaxFree, err = parseFreeSpec("--max-free", o.maxFree); err != nil {
			return nil, false, err
		}
	}
	r := &autoRun{thresholds: a}
	done := func(reason, format string, args ...any) (*autoRun, bool, error) {
		r.report.Reason = reason
		p.Infof(format, args...)
		if g.json {
			p.JSON(struct {
				Auto *autoReport `json:"auto"`
			}{&r.report})
		}
		return nil, true, nil
	}
	if !a.MinFree.IsPercent && a.MinFree.Bytes == 0 {
		return done("disabled", "min-free is 0: automatic collection is off (set min-free in nix.conf, or give --min-free)")
	}
	avail, total, collect, err := a.Check(lay, settings.GCReservedSpace)
	if err != nil {
		return nil, false, err
	}
	r.report.MinFree = a.MinFree.Of(total)
	if max := a.MaxFree.Of(total); max != gc.Unlimited.Bytes || a.MaxFree.IsPercent {
		r.report.MaxFree = &max
	}
	r.report.FreeBefore = avail
	if !collect {
		if avail < r.report.MinFree { // max-free is below min-free
			return done("above-min-free", "%s available on %s, at least max-free %s: nothing to do",
				report.FormatSize(avail), report.Name(lay.RealStoreDir), report.FormatSize(*r.report.MaxFree))
		}
		return done("above-min-free", "%s available on %s, min-free %s: nothing to do",
			report.FormatSize(avail), report.Name(lay.RealStoreDir), report.FormatSize(r.report.MinFree))
	}
	// The store is made writable before gc-auto.lock is taken: on a
	// read-only mount (NixOS) storekeeper re-executes itself in a private
	// mount namespace, and a lock the parent took first would be held
	// for the whole run, so the child would find it held and do nothing.
	if !o.dryRun {
		if err := ensureWritableStore(lay); err != nil {
			return nil, false, err
		}
	}
	l, err := gc.AcquireAutoLock(lay.OwnStateDir())
	if errors.Is(err, gc.ErrAutoRunning) {
		path := filepath.Join(lay.OwnStateDir(), gc.AutoLockName)
		who := ""
		if hs, _ := lock.Holders("", path); len(hs) > 0 && hs[0].PID > 0 {
			who = fmt.Sprintf(" (pid %d '%s')", hs[0].PID, report.Text(hs[0].Command))
		}
		return done("another-run", "another 'storekeeper gc --auto' is running%s, holding %s: it collects; nothing to do",
			who, report.Name(path))
	}
	if err != nil {
		return nil, false, err
	}
	// Read again now that no other gc --auto runs: one that just
	// finished may have freed enough.
	avail, _, collect, err = a.Check(lay, settings.GCReservedSpace)
	if err != nil {
		l.Release()
		return nil, false, err
	}
	if !collect {
		l.Release()
		r.report.FreeBefore = avail
		return done("freed-meanwhile", "%s available on %s now, min-free %s: nothing to do",
			report.FormatSize(avail), report.Name(lay.RealStoreDir), report.FormatSize(r.report.MinFree))
	}
	r.lock = l
	until := "every dead path is deleted"
	if r.report.MaxFree != nil {
		until = report.FormatSize(*r.report.MaxFree) + " is available"
	}
	p.Infof("%s available on %s, less than min-free %s: collecting until %s",
		report.FormatSize(avail), report.Name(lay.RealStoreDir), report.FormatSize(r.report.MinFree), until)
	return r, false, nil
}

// finish records the collection's outcome and says it.
func (r *autoRun) finish(dir string, res *gc.Result, p *printer) {
	r.report.Collected = !res.EnoughFree
	r.report.Reason = "collected"
	if res.EnoughFree {
		r.report.Reason = "freed-meanwhile"
		p.Infof("%s available on %s once gc.lock was taken (another collector freed it): nothing to do", report.FormatSize(*res.FreeBytes), report.Name(dir))
		return
	}
	if avail, _, err := fs.FreeSpace(dir); err == nil {
		r.report.FreeAfter = &avail
		p.Infof("%s available on %s now", report.FormatSize(avail), report.Name(dir))
	}
}
