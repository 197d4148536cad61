package main

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"storekeeper/nix/storepath"
	"storekeeper/repair"
	"storekeeper/report"
	"storekeeper/store"
	"storekeeper/substitute"
	"storekeeper/verify"
	"storekeeper/verify/finding"
)

type repairOptions struct {
	damaged      bool
	dryRun       bool
	substituters []string
	noCheckSigs  bool
	jobs         int
}

// errNoSources: repair has no substituter to ask (none configured, or
// every one named is unusable); it could not run (exit 2).
var errNoSources = errors.New("no usable substituter")

func newRepairCommand(g *globalOptions) *cobra.Command {
	o := &repairOptions{}
	cmd := &cobra.Command{
		Use:   "repair [flags] PATH... | repair --damaged",
		Short: "Put damaged and missing store paths back from substituters, never deleting first",
		Long: `Put store paths back from a substituter: a binary cache (file://,
http://, https://) or another local store (local?root=/mnt, /mnt). Each
copy is accepted only when its NAR hash and size are what the database
records and it is trusted: a valid signature by a key in
trusted-public-keys (unless --no-check-sigs), a content address that
checks out, or the other store's own database row. It is unpacked next to
the path, hashed, and only then exchanged with the damaged copy under the
path's lock; the old copy goes to the trash. A failed download, a wrong
hash or a kill at any instant leaves the old copy in place, never nothing.

PATH is a store path, a file inside one, or a symlink outside the store
that leads to one (./result), read as 'nix-store --repair-path' reads it;
never anything else. Like Nix, every PATH given is fetched again, also
when it is intact. --damaged instead runs the contents audit of
'verify --check-contents' and repairs every damaged or missing valid path
it finds (the changed files it names are repeated for paths it cannot
repair).

Substituters are nix.conf's 'substituters', in order and then by each
cache's Priority (override with --option substituters='URL ...' or with
--substituter URL, repeatable, which replaces the list); keys come from
'trusted-public-keys' (--option trusted-public-keys=...). Timeouts and
retries: connect-timeout, stalled-download-timeout, http-connections and
download-attempts, as in nix.conf.

  --dry-run  say where each path would come from, why it is trusted and
             how much would be downloaded; change nothing. Exit 0 when
             every path has a source, 1 when some has none.

A line per path says where it came from ("repaired '...' from URL
(signed by KEY, 1.2 MiB)") or why not ("could not repair '...': why;
tried: URL: not found; ..."). --json: paths[] with path, repaired, from,
trust, downloaded_bytes, nar_bytes, error {kind, message}, tried[]
{source, kind, error}, files; and the totals.

Exit status: 0 when every requested path was repaired (or, with --damaged,
nothing was damaged); 1 when some could not be (each says why); 2 when
repair could not run (no store, read-only, a lock, bad flags, no usable
substituter at all); 130 when interrupted (what was swapped in stays, the
rest is as it was).`,
		RunE: func(cmd *cobra.Command, args []string) error {
			return runRepair(cmd, g, o, args)
		},
	}
	f := cmd.Flags()
	f.BoolVar(&o.damaged, "damaged", false, "audit every path's contents (as verify --check-contents) and repair the damaged and missing ones")
	f.BoolVar(&o.dryRun, "dry-run", false, "say where each path would come from and how much would be downloaded; change nothing")
	f.StringArrayVar(&o.substituters, "substituter", nil, "substitute from this URL (repeatable; replaces nix.conf's substituters)")
	f.BoolVar(&o.noCheckSigs, "no-check-sigs", false, "accept substitutes without a valid signature (the NAR hash must still match the database)")
	f.IntVarP(&o.jobs, "jobs", "j", 0, fmt.Sprintf("paths downloaded and unpacked at once (default: %d, growing to http-connections while a cache is slow to answer)", repair.DefaultJobs))
	return cmd
}

func runRepair(cmd *cobra.Command, g *globalOptions, o *repairOptions, args []string) error {
	ctx := cmd.Context()
	p := g.printer(cmd)
	switch {
	case o.damaged && len(args) > 0:
		return usagef("--damaged repairs what the audit finds: give either --damaged or paths, not both")
	case !o.damaged && len(args) == 0:
		return usagef("give the store paths to repair, or --damaged to repair every damaged or missing path")
	case o.jobs < 0:
		return usagef("--jobs %d: must not be negative", o.jobs)
	}
	for _, u := range o.substituters {
		if strings.TrimSpace(u) == "" {
			return usagef("--substituter: empty URL")
		}
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
	start := time.Now()
	prog := newProgress(p)
	res := &repairJSON{DryRun: o.dryRun}
	g.runResult = res // --metrics-file

	var targets []repair.Target
	if o.damaged {
		vo := verify.Options{CheckContents: true, TrustedKeys: s.Settings.TrustedPublicKeys,
			OnSuspect: func(suspect error) error {
				return fmt.Errorf("repair: %w Nothing was changed: mount the store's file system and run again.", suspect)
			}}
		vr, err := verify.Verify(ctx, s, vo, prog)
		prog.finish()
		if err != nil {
			return err
		}
		sum := vr.Summary
		res.Audit = &repairAuditJSON{Summary: sum, ElapsedSeconds: sum.Elapsed.Seconds()}
		targets = substitutionTargets(s.Layout, vr.Findings, true)
		if !g.json {
			p.Infof("checked %d valid paths; hashed %d paths, %d files, %s in %s: %d damaged or missing",
				sum.ValidPaths, sum.ContentsChecked, sum.Files, report.FormatSize(uint64(sum.Bytes)),
				sum.Elapsed.Round(10*time.Millisecond), len(targets))
		}
		for _, f := range vr.Findings {
			if f.Kind == finding.KindIOError && f.Path != "" {
				// A read error says more about the disk than the path.
				p.message(report.LevelWarning, fmt.Sprintf("'%s' could not be read (%s): check the disk (dmesg, smartctl -a); repair replaces the path without reading it", f.Path, f.Got), f.Path)
			}
		}
	} else {
		seen := map[string]bool{}
		for _, a := range args {
			sp, err := s.Layout.FollowLinksToStorePath(a)
			if err != nil {
				return fmt.Errorf("repair: %w", err)
			}
			if !seen[sp] {
				seen[sp] = true
				targets = append(targets, repair.Target{Path: sp})
			}
		}
	}
	res.PathsRequested = len(targets)
	if len(targets) == 0 {
		g.finishRepair(p, res, start)
		p.Infof("nothing to repair")
		return nil
	}
	srcs, so, err := openSources(ctx, s, p, o)
	if err != nil {
		return err
	}
	defer substitute.Close(srcs)
	_, err = substituteTargets(ctx, g, p, prog, s, srcs, so, targets, o, res, true)
	g.finishRepair(p, res, start)
	if err != nil {
		return err
	}
	return res.err()
}

// finishRepair records the run's time and hands res to --json.
func (g *globalOptions) finishRepair(p *printer, res *repairJSON, start time.Time) {
	res.ElapsedSeconds = time.Since(start).Seconds()
	if g.json {
		p.JSON(res)
	}
}

// substitutionTargets picks from an audit's findings the paths that need
// a substitute: those of findings not repaired whose remedy is
// RemedyRepairPath or RemedyCheckDiskThenRepairPath, and with
// disappeared also the vanished paths that nothing refers to (whose
// remedy, in verify --repair, is dropping their row, as Nix does). Each
// path comes once, in the findings' order, with the ValidPaths id the
// audit read, whether it was missing, and the files found changed,
// added or removed. Remedies of .links entries are not paths to
// substitute.
func substitutionTargets(lay store.Layout, fs []finding.Finding, disappeared bool) []repair.Target {
	idx := map[string]int{}
	var out []repair.Target
	add := func(p string, id int64) *repair.Target {
		if _, err := storepath.Parse(lay.StoreDir, p); err != nil {
			return nil
		}
		if i, ok := idx[p]; ok {
			if out[i].ID == 0 {
				out[i].ID = id
			}
			return &out[i]
		}
		idx[p] = len(out)
		out = append(out, repair.Target{Path: p, ID: id})
		return &out[len(out)-1]
	}
	for i := range fs {
		f := &fs[i]
		if f.Repaired || f.Remedy == nil {
			continue
		}
		switch {
		case f.Remedy.Action == finding.RemedyRepairPath || f.Remedy.Action == finding.RemedyCheckDiskThenRepairPath:
		case disappeared && f.Kind == finding.KindDisappeared && f.Remedy.Action == finding.RemedyInvalidate:
		default:
			continue
		}
		for j, p := range f.Remedy.Paths {
			t := add(p, f.Remedy.ID(j))
			if t == nil || p != f.Path {
				continue
			}
			switch f.Kind {
			case finding.KindDisappeared, finding.KindDisappearedReferenced:
				t.Missing = true
			case finding.KindFileChanged, finding.KindFileAdded, finding.KindFileRemoved:
				if f.File != "" {
					t.Files = append(t.Files, f.File)
				}
			}
		}
	}
	return out
}

// openSources makes the substituters to ask, in order: --substituter's
// URLs, else nix.conf's substituters (with --option's overrides), each
// made by substitute.New with the settings' trust and network options,
// then sorted by priority. A URL that cannot be a source (an unsupported
// scheme) is skipped with a warning, as Nix skips it; when none is left,
// repair cannot run (errNoSources, exit 2). A source that fails later (an
// unreachable server, another store directory) fails only the look-ups
// that asked it.
func openSources(ctx context.Context, s *store.Store, p *printer, o *repairOptions) ([]substitute.Source, substitute.Options, error) {
	opts, err := substitute.OptionsFromSettings(&s.Settings, s.Layout.StoreDir)
	if err != nil {
		return nil, opts, err
	}
	if o.noCheckSigs {
		opts.CheckSigs = false
	}
	opts.RealStoreDir = s.Layout.RealStoreDir
	opts.Printer = newProgress(p)
	urls, from := s.Settings.Substituters, "nix.conf's substituters (or --option substituters=...)"
	if len(o.substituters) > 0 {
		urls, from = o.substituters, "--substituter"
	}
	var srcs []substitute.Source
	var bad []string
	// New for each URL (not substitute.Open, which stops at the first
	// bad one): as Nix does, a URL that cannot be a source is skipped.
	seen := map[string]bool{}
	for _, u := range urls {
		if seen[u] {
			continue // asked once, as Nix does
		}
		seen[u] = true
		src, err := substitute.New(u, opts)
		if err != nil {
			p.Warnf("ignoring substituter '%s': %v", report.Name(u), err)
			bad = append(bad, fmt.Sprintf("'%s': %v", report.Name(u), err))
			continue
		}
		srcs = append(srcs, src)
	}
	if len(srcs) == 0 {
		if len(bad) == 0 {
			return nil, opts, fmt.Errorf("repair: %w: %s is empty; name a binary cache or another store with --substituter URL or --option substituters=URL", errNoSources, from)
		}
		return nil, opts, fmt.Errorf("repair: %w: %s names none that can be used (%s)", errNoSources, from, strings.Join(bad, "; "))
	}
	return substitute.Sort(ctx, srcs), opts, nil
}

// substituteFindings is `verify --repair`'s substitution, after the
// local fixes: the paths of fs that need a substitute (substitutionTargets,
// without the vanished paths nothing refers to, whose rows the local
// fixes drop as Nix does) are substituted from nix.conf's substituters
// through substituteTargets, as `repair --damaged` does, and the findings
// of the paths put back are marked repaired (repair.MarkSubstituted).
// With no usable substituter it says so and changes nothing: the
// findings keep their remedy. It returns what --json shows (nil when
// nothing needed a substitute).
func substituteFindings(ctx context.Context, g *globalOptions, p *printer, prog *progress, s *store.Store, fs []finding.Finding) (*repairJSON, error) {
	targets := substitutionTargets(s.Layout, fs, false)
	if len(targets) == 0 {
		return nil, nil
	}
	o := &repairOptions{}
	srcs, so, err := openSources(ctx, s, p, o)
	if errors.Is(err, errNoSources) {
		p.Infof("%d damaged or missing paths need a substitute, and no usable substituter is configured (set substituters in nix.conf, or --option substituters=URL)", len(targets))
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	defer substitute.Close(srcs)
	res := &repairJSON{PathsRequested: len(targets)}
	sr, err := substituteTargets(ctx, g, p, prog, s, srcs, so, targets, o, res, false)
	repair.MarkSubstituted(fs, sr)
	return res, err
}

// substituteTargets is the substitution both `repair` and `verify
// --repair` run: it plans targets (narinfo look-ups in parallel), and
// unless o.dryRun substitutes the plan, filling res. Unless --json it
// prints, with perPath, a line per path on stdout (repair's result);
// without, only the failures, as warnings (verify's findings say what
// was repaired). The error is non-nil only when repair could not run at
// all (the database unreadable, a read-only store, a lock, interrupted);
// per-path failures are in the result and in res.
func substituteTargets(ctx context.Context, g *globalOptions, p *printer, prog *progress, s *store.Store,
	srcs []substitute.Source, opts substitute.Options, targets []repair.Target, o *repairOptions, res *repairJSON, perPath bool) (*repair.SubstitutionResult, error) {
	// Look-ups at once: as many as connections may be open
	// (http-connections).
	so := repair.SubstituteOptions{Sources: srcs, LookupJobs: opts.Connections, Jobs: o.jobs, Progress: prog}
	plan, err := repair.PlanSubstitution(ctx, s, targets, so)
	prog.finish()
	if err != nil {
		return nil, err
	}
	if o.dryRun {
		for i := range plan.Paths {
			pp := &plan.Paths[i]
			pj := repairPathJSON{Path: pp.Path, Missing: pp.Missing, Files: pp.Files, Tried: triedJSON(pp.Tried)}
			if pp.Offer != nil {
				pj.HasSource, pj.From, pj.Trust = true, pp.Offer.Source.URL(), pp.Offer.Trust
				pj.Downloaded, pj.NarSize = downloadSize(pp.Offer), pp.Offer.NarSize
				if !g.json {
					p.Textln(fmt.Sprintf("would repair '%s' from %s (%s, %s to download)", report.Name(pp.Path), report.Name(pj.From), report.Name(pj.Trust), report.FormatSize(pj.Downloaded)))
				}
			} else {
				pj.Error = pathError(pp.Err, pp.Tried)
				if !g.json {
					p.Textln(fmt.Sprintf("cannot repair '%s': %s", report.Name(pp.Path), failureText(pp.Err, pp.Tried, pp.Files, pp.Path)))
				}
			}
			res.add(pj)
		}
		res.BytesDownloaded, res.NarBytes = plan.DownloadSize(), plan.NarSize()
		if !g.json {
			p.Infof("would download %s (%s unpacked) for %d of %d paths", report.FormatSize(res.BytesDownloaded), report.FormatSize(res.NarBytes), res.PathsAvailable, res.PathsRequested)
		}
		return nil, nil
	}
	sr, err := repair.Substitute(ctx, s, plan, so)
	prog.finish()
	if sr != nil {
		for _, oc := range sr.Paths {
			pj := repairPathJSON{Path: oc.Path, Repaired: oc.Done, From: oc.From, Trust: oc.Trust,
				Downloaded: oc.Downloaded, NarSize: oc.NarSize, Files: oc.Files, Tried: triedJSON(oc.Tried)}
			if oc.Done {
				if !g.json && perPath {
					p.Textln(fmt.Sprintf("repaired '%s' from %s (%s, %s)", report.Name(oc.Path), report.Name(oc.From), report.Name(oc.Trust), report.FormatSize(oc.Downloaded)))
				}
			} else {
				why := oc.Err
				if why == nil {
					why = repair.ErrInterrupted
				}
				pj.Error = pathError(why, oc.Tried)
				line := fmt.Sprintf("could not repair '%s': %s", report.Name(oc.Path), failureText(why, oc.Tried, oc.Files, oc.Path))
				switch {
				case g.json:
				case perPath:
					p.Textln(line)
				default:
					p.Warnf("%s", line)
				}
			}
			res.add(pj)
		}
		res.BytesDownloaded = sr.Downloaded
		if !g.json {
			p.Infof("repaired %d of %d paths from substituters, %s downloaded", res.PathsRepaired, res.PathsRequested, report.FormatSize(sr.Downloaded))
		}
	}
	return sr, err
}

func downloadSize(o *substitute.Offer) uint64 {
	if o.DownloadSize > 0 {
		return o.DownloadSize
	}
	return o.NarSize
}

// failureText is why a path was not repaired, for its line: the error
// (without the path it starts with, which the line names already), what
// each source said, and the files the audit found changed. One line:
// the newlines of joined errors become "; ".
func failureText(err error, tried []repair.SourceError, files []string, path string) string {
	msg := "no substituter was asked"
	switch {
	case errors.Is(err, repair.ErrNoSubstitute) && len(tried) > 0:
		// Its text joins what the sources said; they follow below.
		msg = "no substituter has a trusted copy with the database's hash"
	case err != nil:
		msg = strings.TrimPrefix(err.Error(), "'"+path+"' was not repaired: ")
	}
	if len(tried) > 0 && !strings.Contains(msg, "tried: ") {
		var parts []string
		for _, t := range tried {
			parts = append(parts, t.Source+": "+errText(t.Err))
		}
		msg += "; tried: " + strings.Join(parts, "; ")
	}
	if len(files) > 0 {
		q := make([]string, len(files))
		for i, f := range files {
			q[i] = "'" + report.Name(path+"/"+f) + "'"
		}
		msg += "; the audit found changed: " + strings.Join(q, ", ")
	}
	return strings.ReplaceAll(msg, "\n", "; ")
}

func errText(err error) string {
	if err == nil {
		return "not found"
	}
	return err.Error()
}

// pathErrorKinds name a path's failure in --json (error.kind), the first
// that matches: the path's own error, then what the sources said.
var pathErrorKinds = []struct {
	err  error
	kind string
}{
	{repair.ErrNotValid, "not-valid"},
	{repair.ErrChanged, "changed"},
	{repair.ErrInterrupted, "interrupted"},
	{substitute.ErrMismatch, "mismatch"},
	{substitute.ErrUntrusted, "untrusted"},
	{substitute.ErrBadSource, "bad-source"},
	{substitute.ErrNotFound, "not-found"},
}

func errorKind(err error) string {
	for _, k := range pathErrorKinds {
		if errors.Is(err, k.err) {
			return k.kind
		}
	}
	return ""
}

// pathError is a path's failure for --json: its kind (see
// pathErrorKinds; of the sources' errors the first kind in that order
// any of them has; "error" for anything else) and the message.
func pathError(err error, tried []repair.SourceError) *pathErrorJSON {
	kind := errorKind(err)
	if kind == "" || kind == "not-found" {
		for _, k := range pathErrorKinds {
			for _, t := range tried {
				if kind == "" && errors.Is(t.Err, k.err) {
					kind = k.kind
				}
			}
		}
	}
	if kind == "" {
		kind = "error"
	}
	msg := ""
	if err != nil {
		msg = err.Error()
	}
	return &pathErrorJSON{Kind: kind, Message: msg}
}

func triedJSON(tried []repair.SourceError) []sourceErrorJSON {
	var out []sourceErrorJSON
	for _, t := range tried {
		k := errorKind(t.Err)
		if k == "" {
			k = "error"
		}
		out = append(out, sourceErrorJSON{Source: t.Source, Kind: k, Error: errText(t.Err)})
	}
	return out
}

// repairJSON is repair's --json result (and verify --repair's
// "substituted").
type repairJSON struct {
	DryRun bool             `json:"dry_run"`
	Paths  []repairPathJSON `json:"paths"`
	// PathsRequested: the distinct paths asked for (or found damaged);
	// PathsRepaired: put back; PathsFailed: not; PathsAvailable
	// (--dry-run): with a source.
	PathsRequested int `json:"paths_requested"`
	PathsRepaired  int `json:"paths_repaired"`
	PathsFailed    int `json:"paths_failed"`
	PathsAvailable int `json:"paths_available"`
	// BytesDownloaded: transferred (--dry-run: what would be); NarBytes
	// (--dry-run): the NAR bytes the offers unpack to.
	BytesDownloaded uint64           `json:"bytes_downloaded"`
	NarBytes        uint64           `json:"nar_bytes,omitempty"`
	Audit           *repairAuditJSON `json:"audit,omitempty"` // --damaged: the audit's summary
	ElapsedSeconds  float64          `json:"elapsed_seconds"`
}

type repairAuditJSON struct {
	verify.Summary
	ElapsedSeconds float64 `json:"elapsed_seconds"`
}

type repairPathJSON struct {
	Path       string            `json:"path"`
	Repaired   bool              `json:"repaired"`
	HasSource  bool              `json:"has_source,omitempty"` // --dry-run: a source offers it
	Missing    bool              `json:"missing,omitempty"`    // the audit found it missing from disk
	From       string            `json:"from,omitempty"`
	Trust      string            `json:"trust,omitempty"`
	Downloaded uint64            `json:"downloaded_bytes"`
	NarSize    uint64            `json:"nar_bytes"`
	Error      *pathErrorJSON    `json:"error,omitempty"`
	Tried      []sourceErrorJSON `json:"tried,omitempty"`
	Files      []string          `json:"files,omitempty"` // what the audit found changed, relative to path
}

type pathErrorJSON struct {
	Kind    string `json:"kind"`
	Message string `json:"message"`
}

type sourceErrorJSON struct {
	Source string `json:"source"`
	Kind   string `json:"kind"`
	Error  string `json:"error"`
}

func (r *repairJSON) add(pj repairPathJSON) {
	r.Paths = append(r.Paths, pj)
	switch {
	case pj.Repaired:
		r.PathsRepaired++
	case pj.HasSource:
		r.PathsAvailable++
	default:
		r.PathsFailed++
	}
}

// err is the run's findings error: some path could not be repaired (or,
// --dry-run, has no source).
func (r *repairJSON) err() error {
	if r.PathsFailed == 0 {
		return nil
	}
	if r.DryRun {
		return &findingsError{msg: fmt.Sprintf("%d of %d paths have no trusted substitute (see above)", r.PathsFailed, r.PathsRequested)}
	}
	return &findingsError{msg: fmt.Sprintf("%d of %d paths could not be repaired (see above for why, and what each source said)", r.PathsFailed, r.PathsRequested)}
}
