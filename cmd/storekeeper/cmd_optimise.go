package main

import (
	"fmt"
	"math"
	"strings"
	"sync/atomic"
	"time"

	"github.com/spf13/cobra"

	"storekeeper/optimise"
	"storekeeper/report"
	"storekeeper/store/fs"
)

type optimiseOptions struct {
	dryRun  bool
	minSize string
	jobs    int
	full    bool
}

func newOptimiseCommand(g *globalOptions) *cobra.Command {
	o := &optimiseOptions{}
	cmd := &cobra.Command{
		Use:   "optimise [PATH...]",
		Short: "Hard-link identical files under .links (like nix-store --optimise), in parallel",
		Long: `Replace identical files in the store by hard links to <store>/.links/<hash>,
exactly as 'nix-store --optimise' and 'auto-optimise-store' do: the same
.links names (the base-32 SHA-256 of each file's NAR serialisation, so
executable and non-executable copies stay apart), the same files linked.
Without PATH every valid path is optimised.

Files are hashed in parallel on every core; files already hard-linked into
.links are recognised by their inode number without being read. A path
that an earlier run left fully linked is not walked again while it is
unchanged (the same registration, the same top-level directory, every
file it had still linked into .links; recorded in storekeeper's state
directory), so after a large install only the new paths are walked;
--full walks every path, as Nix does. Writable
files are skipped as suspicious. A file the store's owner does not control
alone (another owner, a mode other than 0444/0555, or hard links that are
not names in the store's paths or .links) never becomes a .links entry and
is never replaced by a link, and nothing is linked to such a .links entry:
linking would let whoever controls that inode rewrite every copy. Such
files are reported and left as they are, and the exit status is 1. A
.links entry whose contents do not match
its name is reported and replaced by the good file; nothing is ever linked
to it. Each path is protected by a temporary root while it is processed,
so a garbage collector can run at the same time. Every change is one
atomic link or rename: the run can be interrupted or killed at any time
and started again.

With --dry-run nothing is changed and no write access is needed.`,
		Aliases: []string{"optimize"},
		RunE: func(cmd *cobra.Command, args []string) error {
			return runOptimise(cmd, g, o, args)
		},
	}
	f := cmd.Flags()
	f.BoolVarP(&o.dryRun, "dry-run", "n", false, "only report what would be linked and freed")
	f.StringVar(&o.minSize, "min-size", "", "skip files smaller than this (SIZE: bytes, or 4K, 1M: powers of 1024, as gc --max-freed)")
	f.IntVarP(&o.jobs, "jobs", "j", 0, "hashing and linking workers (default: 2 per CPU; more help on a cold cache)")
	f.BoolVar(&o.full, "full", false, "walk every path, also those left fully linked by an earlier run and unchanged since")
	return cmd
}

// optimiseJSON is the --json result.
type optimiseJSON struct {
	*optimise.Result
	ElapsedSeconds float64 `json:"elapsed_seconds"`
	// LinkSavingsBytes is what hard linking saves in the whole store
	// (Nix's "currently hard linking saves" note, as gc's
	// link_savings_bytes); only with --verbose.
	LinkSavingsBytes *int64 `json:"link_savings_bytes,omitempty"`
}

func runOptimise(cmd *cobra.Command, g *globalOptions, o *optimiseOptions, args []string) error {
	ctx := cmd.Context()
	p := g.printer(cmd)
	var minSize int64
	if o.minSize != "" {
		n, err := report.ParseSizeUpTo(o.minSize, math.MaxInt64)
		if err != nil {
			return usagef("--min-size: %w", err)
		}
		minSize = int64(n)
	}
	if !o.dryRun {
		if err := g.ensureWritable(); err != nil {
			return err
		}
	}
	s, err := g.openStore(ctx, o.dryRun)
	if err != nil {
		return err
	}
	defer s.Close()

	prog := &optimiseProgress{progress: newProgress(p)}
	t0 := time.Now()
	res, err := optimise.Optimise(ctx, s, optimise.Options{
		Paths: args, MinSize: minSize, DryRun: o.dryRun, Jobs: o.jobs, Full: o.full,
	}, prog)
	prog.finish()
	if res == nil {
		return err
	}
	if !o.dryRun {
		g.runResult = res // --metrics-file
	}
	elapsed := time.Since(t0)

	var savings *int64
	if g.verbose && !o.dryRun {
		if v, serr := optimise.Savings(s.Layout); serr == nil {
			savings = &v
		}
	}

	if g.json {
		p.JSON(optimiseJSON{Result: res, ElapsedSeconds: elapsed.Seconds(), LinkSavingsBytes: savings})
	} else {
		for _, n := range res.Notices {
			switch n.Kind {
			case optimise.KindSuspicious:
				p.Warnf("skipping suspicious writable file '%s'", report.Name(n.Path))
			case optimise.KindCorrupted:
				p.Warnf("corrupted link '%s' (does not hold what its name says); replaced by '%s'. Files linked to it before are damaged: run 'nix-store --verify --check-contents --repair'", report.Name(n.Link), report.Name(n.Path))
			case optimise.KindTooManyLinks:
				p.Infof("'%s' has maximum number of links", report.Name(n.Link))
			case optimise.KindNoSpace:
				p.Infof("cannot link '%s' to '%s': %s", report.Name(n.Link), report.Name(n.Path), report.Name(n.Err))
			case optimise.KindRefused:
				p.Errorf("%s: not linked, left as it is (fix: nix-store --repair-path %s)",
					problemText(n.Problems), report.Name(n.StorePath))
			case optimise.KindUntrustedLink:
				p.Errorf("%s: nothing is linked to it, the files with its contents are left as they are (fix: remove it, then 'storekeeper verify --metadata' names the store files that share its inode)",
					problemText(n.Problems))
			default:
				p.Errorf("%s: %s", report.Name(n.Path), report.Name(n.Err))
			}
		}
		p.Verbosef("%d paths (%d unchanged since an earlier run linked them), %d files considered, %d already linked, %d hashed (%.2f MiB), %d new .links entries, %.1fs",
			res.Paths, res.PathsUnchanged, res.FilesSeen, res.AlreadyLinked, res.FilesHashed, float64(res.BytesHashed)/(1<<20), res.LinksCreated, elapsed.Seconds())
		if res.StateError != "" {
			p.Warnf("could not record the fully linked paths (the next run walks every path): %s", res.StateError)
		}
		if res.StaleTmpLinks > 0 {
			p.Verbosef("removed %d stale temporary links of dead processes", res.StaleTmpLinks)
		}
		if res.RestoredDirs > 0 {
			p.Verbosef("made %d directories read-only with mtime 1 again", res.RestoredDirs)
		}
		if res.Refused > 0 {
			p.Infof("%d files left unlinked: they or their .links entry fail the ownership checks (see above)", res.Refused)
		}
		if o.dryRun {
			p.Infof("%.2f MiB would be freed by hard-linking %d files", float64(res.BytesFreed)/(1<<20), res.FilesLinked)
		} else {
			p.Infof("%.2f MiB freed by hard-linking %d files", float64(res.BytesFreed)/(1<<20), res.FilesLinked)
		}
		if savings != nil {
			p.Infof("note: currently hard linking saves %.2f MiB", float64(*savings)/(1<<20))
		}
	}
	if err != nil {
		return err
	}
	if bad := res.Errors(); len(bad) > 0 {
		return &findingsError{msg: fmt.Sprintf("optimise: %d problems (see above); the files concerned were left unchanged", len(bad))}
	}
	return nil
}

// problemText joins the messages of a refused file's problems.
func problemText(ps []fs.MetaProblem) string {
	msgs := make([]string, len(ps))
	for i, pr := range ps {
		msgs[i] = pr.Message
	}
	return strings.Join(msgs, "; ")
}

// optimiseProgress is progress with the bytes hashed and files linked
// (optimise.Files) in the bar's description, refreshed at most every
// 200ms as paths are done.
type optimiseProgress struct {
	*progress
	hashed atomic.Int64
	linked atomic.Int64
	last   atomic.Int64 // unix nanos of the last description update
}

var _ optimise.Files = (*optimiseProgress)(nil)

// Add advances the bar by the NAR size of a path done.
func (op *optimiseProgress) Add(narBytes int64) {
	op.progress.Add(narBytes)
	op.describe()
}

func (op *optimiseProgress) Hashed(n int64) { op.hashed.Add(n) }

func (op *optimiseProgress) Linked(int64) { op.linked.Add(1) }

func (op *optimiseProgress) describe() {
	b := op.current()
	if b == nil || b.pb == nil {
		return
	}
	now := time.Now().UnixNano()
	last := op.last.Load()
	if now-last < int64(200*time.Millisecond) {
		return
	}
	if !op.last.CompareAndSwap(last, now) {
		return
	}
	b.mu.Lock()
	b.pb.Describe(fmt.Sprintf("optimising (%.0f MiB hashed, %d linked)", float64(op.hashed.Load())/(1<<20), op.linked.Load()))
	b.mu.Unlock()
}
