package main

import (
	"fmt"

	"github.com/spf13/cobra"

	"storekeeper/report"
	"storekeeper/roots"
)

// rootsOptions are the flags of `roots` and, for --no-runtime and
// --no-temp (persistent flags), of its subcommands.
type rootsOptions struct {
	why        string
	pruneStale bool
	noRuntime  bool
	noTemp     bool
	size       bool
	busy       bool
}

// newRootsCommand is `roots`: the listing, and the parent of its
// subcommands (why, ...). Each subcommand also has an alias flag on
// `roots` (--why PATH) that runs the same code.
func newRootsCommand(g *globalOptions) *cobra.Command {
	o := &rootsOptions{}
	cmd := &cobra.Command{
		Use:   "roots",
		Short: "List every garbage-collector root (like nix-store --gc --print-roots)",
		Long: `List every garbage-collector root as 'LINK -> STORE PATH', sorted, exactly
the set 'nix-store --gc --print-roots' prints: symlinks and store-path-named
files under gcroots/, indirect roots through gcroots/auto, profiles, runtime
roots of running processes (/proc) and temporary roots ({temp:PID}).

Unlike Nix, roots changes nothing: stale links in gcroots/auto are reported
on stderr and left alone unless --prune-stale is given. With --json, one
object per root: kind (direct, indirect, profile, runtime, temp), link,
target, for link roots the link's owner and modification time (mtime, unix
seconds), for runtime roots the pid, user, command line and what held the
path (exe, cwd, fd, maps, environ with the variable's name in env, kernel),
for temp roots the pid, user and command line.

Subcommands: 'roots why PATH...' explains why paths are alive, 'roots size'
what each root keeps and frees, 'roots busy' which processes hold the store.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return runRoots(cmd, g, o)
		},
	}
	pf := cmd.PersistentFlags()
	pf.BoolVar(&o.noRuntime, "no-runtime", false, "do not scan /proc for runtime roots")
	pf.BoolVar(&o.noTemp, "no-temp", false, "do not read temporary roots")
	f := cmd.Flags()
	f.StringVar(&o.why, "why", "", "explain why PATH is still alive (the same as 'roots why PATH')")
	f.BoolVar(&o.pruneStale, "prune-stale", false, "remove stale links in gcroots/auto (needs write access)")
	cmd.AddCommand(newRootsWhyCommand(g, o))
	f.BoolVar(&o.size, "size", false, "show what each root keeps and what removing it alone frees (the same as 'roots size')")
	cmd.AddCommand(newRootsSizeCommand(g, o))
	f.BoolVar(&o.busy, "busy", false, "list the processes holding anything in the store directory (the same as 'roots busy')")
	cmd.AddCommand(newRootsBusyCommand(g))
	return cmd
}

func runRoots(cmd *cobra.Command, g *globalOptions, o *rootsOptions) error {
	if o.busy {
		if o.why != "" || o.pruneStale || o.size {
			return usagef("--busy excludes --why, --size and --prune-stale")
		}
		return runRootsBusy(cmd, g)
	}
	if o.size {
		if o.why != "" || o.pruneStale {
			return usagef("--size excludes --why and --prune-stale")
		}
		return runRootsSize(cmd, g, o, &sizeOptions{maxShared: 50})
	}
	if o.why != "" {
		if o.pruneStale {
			return usagef("--why and --prune-stale exclude each other")
		}
		return runRootsWhy(cmd, g, o, &whyOptions{}, []string{o.why})
	}
	ctx := cmd.Context()
	p := g.printer(cmd)
	s, err := g.openStore(ctx, !o.pruneStale)
	if err != nil {
		return err
	}
	defer s.Close()
	res, err := roots.Find(ctx, s, roots.Options{PruneStale: o.pruneStale, NoRuntime: o.noRuntime, NoTemp: o.noTemp})
	if err != nil {
		return err
	}
	if g.json {
		if res.Roots == nil {
			res.Roots = []roots.Root{}
		}
		return p.JSON(res)
	}
	printRootNotes(p, res.Notes)
	for _, st := range res.Stale {
		if st.Removed {
			p.Infof("removed stale link from '%s' to '%s'", report.Name(st.Link), report.Name(st.Target))
		} else {
			p.Infof("stale link from '%s' to '%s' (remove it with 'storekeeper roots --prune-stale')", report.Name(st.Link), report.Name(st.Target))
		}
	}
	// The listing is the command's result: printed even under --quiet.
	for _, r := range res.Roots {
		fmt.Fprintf(p.out, "%s -> %s\n", report.Name(r.Link), report.Name(r.Target))
	}
	return nil
}

// printRootNotes prints, with --verbose, what finding the roots noted (a
// root pointing at an invalid path, one it could not read), as Nix
// prints it while finding roots.
func printRootNotes(p *printer, notes []roots.Note) {
	for _, n := range notes {
		if n.Target != "" {
			p.Verbosef("%s: '%s' -> '%s'", n.Message, report.Name(n.Link), report.Name(n.Target))
		} else {
			p.Verbosef("%s: '%s'", n.Message, report.Name(n.Link))
		}
	}
}
