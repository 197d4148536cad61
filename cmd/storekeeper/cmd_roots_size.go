package main

import (
	"fmt"
	"strings"

	"github.com/spf13/cobra"

	"storekeeper/report"
	"storekeeper/roots"
)

// sizeOptions are the flags of `roots size`.
type sizeOptions struct {
	dot       bool // Graphviz instead of text
	maxShared int  // shared nodes listed (--max-shared)
	jobs      int
	paths     bool // list the paths each root frees
	dead      bool // measure the dead paths too
}

func newRootsSizeCommand(g *globalOptions, ro *rootsOptions) *cobra.Command {
	o := &sizeOptions{}
	cmd := &cobra.Command{
		Use:   "size",
		Short: "Show what each root keeps and what removing it alone would free",
		Long: `For every root (gcroots links, indirect roots, every profile generation,
runtime and temp roots; each link on its own), show its closure (the paths
it keeps alive through references and the keep-outputs / keep-derivations
edges nix.conf enables, their size on disk and by NAR size) and what
removing that root alone would free: the paths no other root keeps (those
it dominates in the graph of all the roots) and their bytes on disk,
counting hard links as the collector does: a file also linked from a path
that stays (another root's, or outside the store) frees nothing, and a file
whose other link is in .links is freed with it. So two links to one path
each free nothing of it, and a file that 'nix-store --optimise' shared
between two roots' paths is freed by neither alone. Sorted largest first;
then each profile's generations, by number, with the current one marked;
then the dead paths (no root keeps them: what 'storekeeper gc' deletes now,
never counted in a root) and the totals.

Every live path's files are measured once, in parallel (-j); the graph and
the roots are read once. --dead measures the dead paths' files too: their
bytes on disk with the unused .links entries' (what a collection frees now),
and a file a root's path shares with a dead path then counts as freed with
the root (both go in the next collection; without --dead it counts as
staying). Removing a root and collecting frees the dead bytes plus that
root's freed bytes, plus the store entries that are not valid paths (failed
builds' leftovers), which are not measured here. Bytes on disk are the
allocated blocks of files and symlinks, as the collector counts them: the
directories' own blocks (a block or more each), which 'df' also shows freed,
are not counted. Nothing is changed and no write access is needed; gc.lock
is held shared while reading when it can be, so a running collection is
waited for. 'roots --size' is the same as 'roots size'.

Output: text (FREED, PATHS, CLOSURE, ROOT); --json (roots: [{kind, link,
target, owner, mtime, pid, user, command, via, env, closure_paths,
closure_nar_bytes, closure_bytes, freed_paths, freed_nar_bytes, freed_bytes,
freed (with --paths: the paths it frees), profile, generation, current}],
profiles: [{profile, current, generations: [{generation, current, link,
closure_paths, closure_bytes, freed_paths, freed_bytes}]}], shared: [{path,
paths, nar_bytes, freed_bytes, roots}], shared_total, dead_paths,
dead_nar_bytes, dead_bytes (with --dead), dead_measured, totals: {roots,
paths, live_paths, live_nar_bytes, live_bytes, freed_paths, freed_bytes},
notes, warnings: what may make the freed numbers too high: roots that
could not be read, and when not run as root, other users' processes not
searched for runtime roots (in text, warnings on stderr)); --dot, a Graphviz digraph of the roots (boxes, with what each frees)
and the paths several roots share (ellipses, with what they hold that only
those roots keep), the --max-shared largest: 'storekeeper roots size --dot |
dot -Tsvg'.

Exit status: 0, or 2 if it could not run (no store, roots unreadable, a
path's files unreadable).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			g.ran = true
			return runRootsSize(cmd, g, ro, o)
		},
	}
	f := cmd.Flags()
	f.BoolVar(&o.dot, "dot", false, "print a Graphviz digraph of the roots and the paths they share instead of text")
	f.IntVar(&o.maxShared, "max-shared", 50, "list at most N of the paths several roots share (the largest; 0: none)")
	f.BoolVar(&o.paths, "paths", false, "also list the paths removing each root would delete")
	f.BoolVar(&o.dead, "dead", false, "also measure the dead paths: their bytes on disk, and files roots' paths share with them")
	f.IntVarP(&o.jobs, "jobs", "j", 0, "measure the paths' files with N parallel walks (default: the number of CPUs)")
	return cmd
}

// runRootsSize computes and prints what each root costs.
func runRootsSize(cmd *cobra.Command, g *globalOptions, ro *rootsOptions, o *sizeOptions) error {
	if o.dot && g.json {
		return usagef("--dot and --json exclude each other")
	}
	if o.maxShared < 0 {
		return usagef("--max-shared %d: expected a number of paths, 0 or more", o.maxShared)
	}
	if o.jobs < 0 {
		return usagef("--jobs %d: expected a number of walks, 1 or more (0: the number of CPUs)", o.jobs)
	}
	ctx := cmd.Context()
	p := g.printer(cmd)
	s, err := g.openStore(ctx, true)
	if err != nil {
		return err
	}
	defer s.Close()
	maxShared := o.maxShared
	if maxShared == 0 {
		maxShared = -1 // none
	}
	prog := newProgress(p)
	rep, err := roots.Size(ctx, s, roots.SizeOptions{
		Roots:       roots.Options{NoRuntime: ro.noRuntime, NoTemp: ro.noTemp},
		KeepOutputs: s.Settings.KeepOutputs, KeepDerivations: s.Settings.KeepDerivations,
		Jobs: o.jobs, MaxShared: maxShared, ListFreed: o.paths, MeasureDead: o.dead, Progress: prog,
	})
	prog.finish()
	if err != nil {
		return err
	}
	printRootNotes(p, rep.Notes)
	for _, w := range rep.Warnings {
		p.Warnf("%s", w) // escaped by the printer; with --json also in messages, as every command's warnings (and in the result, as data)
	}
	switch {
	case g.json:
		if rep.Roots == nil {
			rep.Roots = []roots.RootSize{}
		}
		return p.JSON(rep)
	case o.dot:
		fmt.Fprint(p.out, sizeDot(rep))
	default:
		fmt.Fprint(p.out, sizeText(rep))
	}
	return nil
}

// rootLabel is a root as the text shows it: "LINK -> TARGET" and what it
// is when it says more than the link (a process, a current generation).
func rootLabel(r roots.RootSize) string {
	s := report.Name(r.Link) + " -> " + report.Name(r.Target)
	var tags []string
	switch {
	case r.Profile != "" && r.Current:
		tags = append(tags, "current generation")
	case r.Kind == roots.Runtime || r.Kind == roots.Temp:
		tags = append(tags, string(r.Kind))
		if r.PID != 0 && r.Command != "" {
			tags = append(tags, fmt.Sprintf("pid %d: %s", r.PID, report.Text(r.Command)))
		}
	}
	if len(tags) > 0 {
		s += " (" + strings.Join(tags, ", ") + ")"
	}
	return s
}

// sizeText renders the report: the table of roots, the profiles'
// generations, the dead paths and the totals.
func sizeText(rep *roots.SizeReport) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%10s %7s %10s  %s\n", "FREED", "PATHS", "CLOSURE", "ROOT")
	for _, r := range rep.Roots {
		fmt.Fprintf(&b, "%10s %7d %10s  %s\n", report.FormatSize(r.FreedBytes), r.FreedPaths, report.FormatSize(r.ClosureBytes), rootLabel(r))
		for _, fp := range r.Freed {
			fmt.Fprintf(&b, "%30s%s\n", "", report.Name(fp))
		}
	}
	for _, ps := range rep.Profiles {
		fmt.Fprintf(&b, "\nprofile %s:\n", report.Name(ps.Profile))
		for _, gen := range ps.Generations {
			cur := ""
			if gen.Current {
				cur = " (current)"
			}
			fmt.Fprintf(&b, "  generation %-6d %10s freed (%d paths), closure %s (%d paths)%s\n", gen.Generation,
				report.FormatSize(gen.FreedBytes), gen.FreedPaths, report.FormatSize(gen.ClosureBytes), gen.ClosurePaths, cur)
		}
	}
	if len(rep.Shared) > 0 {
		more := ""
		if rep.SharedTotal > len(rep.Shared) {
			more = fmt.Sprintf(" (the %d largest of %d)", len(rep.Shared), rep.SharedTotal)
		}
		fmt.Fprintf(&b, "\nshared by several roots, freed only when all of them go%s:\n", more)
		for _, sh := range rep.Shared {
			if sh.FreedBytes == 0 && sh.Paths <= 1 {
				continue
			}
			fmt.Fprintf(&b, "%10s %7d  %s (%d roots)\n", report.FormatSize(sh.FreedBytes), sh.Paths, report.Name(sh.Path), len(sh.Roots))
		}
	}
	t := rep.Totals
	fmt.Fprintf(&b, "\n%d roots keep %d of %d paths alive: %s on disk (%s by NAR size); each root alone frees %s in all\n",
		t.Roots, t.LivePaths, t.Paths, report.FormatSize(t.LiveBytes), report.FormatSize(t.LiveNarBytes), report.FormatSize(t.FreedBytes))
	if rep.DeadMeasured {
		fmt.Fprintf(&b, "dead: %d paths no root keeps, %s on disk ('storekeeper gc' frees it now; not counted in any root)\n",
			rep.DeadPaths, report.FormatSize(rep.DeadBytes))
	} else {
		fmt.Fprintf(&b, "dead: %d paths no root keeps, %s by NAR size ('storekeeper gc' deletes them now; not counted in any root; --dead measures them)\n",
			rep.DeadPaths, report.FormatSize(rep.DeadNarBytes))
	}
	return b.String()
}

// sizeDot renders the roots (boxes, with what each frees) and the shared
// paths (ellipses, with what only the roots reaching them keep), an edge
// from each root to each shared path in its closure.
func sizeDot(rep *roots.SizeReport) string {
	var b strings.Builder
	b.WriteString("digraph size {\n  rankdir=LR;\n  node [fontname=\"monospace\"];\n")
	label := func(lines ...string) string {
		q := make([]string, len(lines))
		for i, l := range lines {
			q[i] = dotQuote(l)
		}
		return strings.Join(q, ` + "\n" + `)
	}
	for i, r := range rep.Roots {
		fmt.Fprintf(&b, "  r%d [shape=box, label=%s];\n", i,
			label(r.Link+" ("+string(r.Kind)+")", fmt.Sprintf("frees %s (%d paths)", report.FormatSize(r.FreedBytes), r.FreedPaths)))
	}
	for k, sh := range rep.Shared {
		fmt.Fprintf(&b, "  s%d [shape=ellipse, label=%s];\n", k,
			label(baseName(sh.Path), fmt.Sprintf("%s (%d paths)", report.FormatSize(sh.FreedBytes), sh.Paths)))
		for _, i := range sh.Roots {
			fmt.Fprintf(&b, "  r%d -> s%d;\n", i, k)
		}
	}
	b.WriteString("}\n")
	return b.String()
}
