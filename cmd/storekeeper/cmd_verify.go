package main

import (
	"fmt"
	"math"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"storekeeper/repair"
	"storekeeper/report"
	"storekeeper/verify"
)

type verifyOptions struct {
	checkContents bool
	metadata      bool
	repair        bool
	allowMassDrop bool
	budget        string
	subset        string
	sigsNeeded    int
	jobs          int
	noRecord      bool
}

func newVerifyCommand(g *globalOptions) *cobra.Command {
	o := &verifyOptions{}
	cmd := &cobra.Command{
		Use:   "verify [PATH...]",
		Short: "Check the database against the disk, and optionally every path's contents",
		Long: `Check the store's database against the disk: every valid path exists (a
missing path that nothing existing refers to is reported as Nix would drop
it, a missing path with valid referrers as "disappeared, but it still has
valid referrers!"), Refs and DerivationOutputs rows name valid paths, and
no unregistered entry has a valid path's hash.

By default verify only reads: it never changes the store or the database.
Unlike 'nix-store --verify' it does not drop vanished paths unless asked.

  --check-contents  NAR-hash every valid path in parallel and compare with
                    the database ("path '...' was modified! expected hash
                    '...', got '...'"), and check every .links entry
                    against its name. The first time a path verifies clean
                    a manifest of its files (name, type, mode, size,
                    BLAKE3) is recorded; when it later fails, the files
                    changed, added and removed are named.
  --metadata        check what Nix never checks: modes other than
                    0444/0555, mtimes other than 1, owners other than the
                    store's, setuid/setgid and writable bits, and (on a
                    whole-store run) hard links to files outside the store.
  --budget D|SIZE   verify the least recently verified paths first and stop
                    after a duration (30m, 1h) or an amount of NAR data
                    (10G, 500M: powers of 1024, as every size flag);
                    --subset N/M verifies a deterministic slice. Both
                    imply --check-contents; repeated runs cover the whole
                    store.
  --repair          fix what can be fixed locally: drop the rows of
                    vanished paths nothing refers to, fill a missing hash
                    or NAR size, correct a wrong NAR size, delete rows
                    naming no valid path, remove damaged .links entries.
                    Then put damaged paths, and missing ones that valid
                    paths refer to, back from nix.conf's substituters
                    (--option substituters=URL), as 'storekeeper repair'
                    does: never deleting first. A path no substituter has
                    keeps its finding, and the command that fixes it.
                    It refuses, changing nothing and exiting with 2, when
                    the store directory looks unmounted or half missing:
                    no valid path is in it (it is empty), or more than 10%
                    and more than 20 of the valid paths are missing at
                    once, or paths are missing and it is on another file
                    system than when storekeeper last saw it whole (or it
                    was a mount point and nothing is mounted on it now).
  --allow-mass-drop with --repair: the missing paths are really gone;
                    drop their rows even so.

Manifests and the ledger of when each path was last verified live in
storekeeper's own state directory beside Nix's (e.g. /nix/var/storekeeper),
created on demand; writing there is the only write of an audit without
--repair. If it cannot be written (read-only file system, not root, another
verify running) the audit still runs and says that nothing was recorded;
--no-record never writes it.

Findings go to stdout in a deterministic order (by path, then kind, then
file); --json prints one object per finding (kind, path, file, expected,
got, message, fix: the command that fixes it, remedy: the same as data,
{action, paths}, repaired) and a summary. verify exits with 1 when any
finding is left unrepaired, including a vanished path that nothing refers
to (Nix drops such a path silently; here it stays reported until
--repair drops it), and with 0 when every finding was repaired.

` + exitCodesHelp,
		RunE: func(cmd *cobra.Command, args []string) error {
			return runVerify(cmd, g, o, args)
		},
	}
	f := cmd.Flags()
	f.BoolVar(&o.checkContents, "check-contents", false, "NAR-hash every path and check .links entries")
	f.BoolVar(&o.metadata, "metadata", false, "check modes, mtimes, owners, setuid bits and hard links")
	f.BoolVar(&o.repair, "repair", false, "fix what can be fixed locally (needs write access)")
	f.BoolVar(&o.allowMassDrop, "allow-mass-drop", false, "with --repair: drop the rows of missing paths even when the store directory looks unmounted or half missing")
	f.StringVar(&o.budget, "budget", "", "verify the least recently verified paths first, for at most this duration (30m) or NAR size (10G: powers of 1024)")
	f.StringVar(&o.subset, "subset", "", "verify only slice N of M (N/M) of the store")
	f.IntVar(&o.sigsNeeded, "sigs-needed", 0, "report paths with fewer valid signatures by trusted-public-keys")
	f.IntVarP(&o.jobs, "jobs", "j", 0, "parallel readers (default: with --check-contents as many as keep the cores busy, up to 16 per core (16 to 64); else 16 per core)")
	f.BoolVar(&o.noRecord, "no-record", false, "record neither manifests nor the ledger")
	return cmd
}

// durationSyntax is what time.ParseDuration reads; a value of this form
// that it refuses is out of range.
var durationSyntax = regexp.MustCompile(`^[-+]?(([0-9]+(\.[0-9]*)?|\.[0-9]+)(ns|us|µs|μs|ms|s|m|h))+$`)

// parseBudget reads a duration ("30m", "1h30m") or, failing that, a size
// as every size flag takes it (report.ParseSize: "10G" is 10 GiB, as for
// --max-freed). Values that do not fit (a duration over about 292 years, a
// size over 8 EiB) are errors, never wrapped around.
func parseBudget(s string) (time.Duration, int64, error) {
	if d, err := time.ParseDuration(s); err == nil {
		if d <= 0 {
			return 0, 0, usagef("--budget %q: must be positive", s)
		}
		return d, 0, nil
	} else if durationSyntax.MatchString(s) {
		return 0, 0, usagef("--budget %q: too long: a duration is at most %dh (about 292 years)", s, math.MaxInt64/int64(time.Hour))
	}
	n, err := report.ParseSizeUpTo(s, math.MaxInt64)
	if err != nil {
		return 0, 0, usagef("--budget: %w, or a duration (30m, 2h)", err)
	}
	if n == 0 {
		return 0, 0, usagef("--budget %q: must be positive", s)
	}
	return 0, int64(n), nil
}

func parseSubset(s string) (int, int, error) {
	a, b, ok := strings.Cut(s, "/")
	n, err1 := strconv.Atoi(a)
	m, err2 := strconv.Atoi(b)
	if !ok || err1 != nil || err2 != nil || m < 1 || n < 1 || n > m {
		return 0, 0, usagef("--subset %q: expected N/M with 1 <= N <= M", s)
	}
	return n, m, nil
}

func runVerify(cmd *cobra.Command, g *globalOptions, o *verifyOptions, args []string) error {
	ctx := cmd.Context()
	p := g.printer(cmd)
	vo := verify.Options{
		Paths: args, CheckContents: o.checkContents, Metadata: o.metadata,
		SigsNeeded: o.sigsNeeded, Jobs: o.jobs, NoRecord: o.noRecord,
	}
	if o.budget != "" {
		d, n, err := parseBudget(o.budget)
		if err != nil {
			return err
		}
		vo.BudgetTime, vo.BudgetBytes = d, n
	}
	if o.subset != "" {
		n, m, err := parseSubset(o.subset)
		if err != nil {
			return err
		}
		vo.SubsetN, vo.SubsetM = n, m
	}
	if o.sigsNeeded < 0 {
		return usagef("--sigs-needed %d: must not be negative", o.sigsNeeded)
	}
	if o.allowMassDrop && !o.repair {
		return usagef("--allow-mass-drop only applies to --repair")
	}
	s, err := g.openStore(ctx, !o.repair)
	if err != nil {
		return err
	}
	if o.repair {
		// Removing .links entries needs a writable store, even where it is
		// a read-only bind mount (NixOS): re-exec in a private namespace.
		lay := s.Layout
		s.Close()
		if err := ensureWritableStore(lay); err != nil {
			return err
		}
		if s, err = g.openStore(ctx, false); err != nil {
			return err
		}
	}
	defer s.Close()
	vo.TrustedKeys = s.Settings.TrustedPublicKeys
	prog := newProgress(p)
	if !vo.CheckContents && vo.BudgetTime == 0 && vo.BudgetBytes == 0 && vo.SubsetM == 0 && !vo.Metadata {
		p.Verbosef("checking path existence (add --check-contents to hash every path)")
	}
	// --repair: the audit, then repair's local fixes of its findings; a
	// store dir that looks unmounted is refused before the audit reads
	// any contents.
	ro := repair.Options{AllowMassDrop: o.allowMassDrop, NoRecord: o.noRecord}
	if o.repair {
		vo.OnSuspect = ro.Refuse
	}
	start := time.Now()
	res, err := verify.Verify(ctx, s, vo, prog)
	prog.finish()
	if res != nil {
		g.runResult = res // --metrics-file
	}
	var subst *repairJSON
	if err == nil && o.repair {
		// The local fixes, then what needs a substitute, through the
		// code `repair --damaged` runs.
		ro.Suspect = res.Suspect
		_, err = repair.Findings(ctx, s, res.Findings, ro)
		if err == nil {
			subst, err = substituteFindings(ctx, g, p, prog, s, res.Findings)
		}
		res.Recount()
		res.Summary.Elapsed = time.Since(start)
	}
	if err != nil {
		return err
	}
	if g.json {
		p.JSON(verifyJSON{Result: res, Summary: verifySummaryJSON{res.Summary, res.Summary.Elapsed.Seconds()}, Substitution: subst})
	} else {
		// Findings are the result: printed even under --quiet.
		for _, f := range res.Findings {
			p.Textln(f.Message)
		}
		printVerifySummary(p, res, vo)
	}
	if res.Summary.StoreSuspect != "" {
		p.Warnf("%s 'storekeeper verify --repair' changes nothing until it looks whole (--allow-mass-drop overrides).", res.Summary.StoreSuspect)
	}
	if res.Problems() {
		return &findingsError{msg: fmt.Sprintf("%d damaged paths (%d findings); see above for the command that fixes each (--json)", res.Summary.Damaged, res.Summary.Findings-res.Summary.Repaired)}
	}
	return nil
}

// verifyJSON is verify's --json result: verify.Result with the run's
// duration in float seconds, as every command's JSON has durations (the
// outer Summary hides the Result's).
type verifyJSON struct {
	*verify.Result
	Summary verifySummaryJSON `json:"summary"`
	// Substitution: --repair's substitution of damaged and missing
	// paths, as repair's result (absent when none was needed).
	Substitution *repairJSON `json:"substitution,omitempty"`
}

type verifySummaryJSON struct {
	verify.Summary
	ElapsedSeconds float64 `json:"elapsed_seconds"`
}

func printVerifySummary(p *printer, res *verify.Result, vo verify.Options) {
	sm := res.Summary
	line := fmt.Sprintf("checked %d of %d valid paths", sm.Checked, sm.ValidPaths)
	if vo.CheckContents || vo.BudgetBytes > 0 || vo.BudgetTime > 0 || vo.SubsetM > 0 {
		line += fmt.Sprintf("; hashed %d paths, %d files, %s", sm.ContentsChecked, sm.Files, report.FormatSize(uint64(sm.Bytes)))
		if sm.Links > 0 {
			line += fmt.Sprintf(", %d links", sm.Links)
		}
	}
	line += fmt.Sprintf(" in %s", sm.Elapsed.Round(10*time.Millisecond))
	p.Infof("%s", line)
	if sm.Stopped != "" {
		p.Infof("%s: %d paths left for the next runs", sm.Stopped, sm.Remaining)
	}
	switch {
	case sm.Recording == "yes":
		if sm.ManifestsRecorded > 0 {
			p.Infof("recorded %d new manifests", sm.ManifestsRecorded)
		}
	case strings.HasPrefix(sm.Recording, "no: contents"):
	default:
		p.Infof("manifests and ledger not recorded (%s)", strings.TrimPrefix(sm.Recording, "no: "))
	}
	if sm.Repaired > 0 {
		p.Infof("repaired %d findings", sm.Repaired)
	}
}
