package main

import (
	"fmt"

	"github.com/spf13/cobra"

	"storekeeper/report"
	"storekeeper/roots"
	"storekeeper/store"
)

type rootsOptions struct {
	why        string
	pruneStale bool
	noRuntime  bool
	noTemp     bool
}

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
target, and for runtime roots the pid, command line and what held the path
(exe, cwd, fd, maps, environ, kernel).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return runRoots(cmd, g, o)
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.why, "why", "", "explain why PATH is still alive: the root that keeps it and a shortest chain of paths from that root, each edge with its kind (reference, keep-outputs, keep-derivations)")
	f.BoolVar(&o.pruneStale, "prune-stale", false, "remove stale links in gcroots/auto (needs write access)")
	f.BoolVar(&o.noRuntime, "no-runtime", false, "do not scan /proc for runtime roots")
	f.BoolVar(&o.noTemp, "no-temp", false, "do not read temporary roots")
	return cmd
}

func runRoots(cmd *cobra.Command, g *globalOptions, o *rootsOptions) error {
	ctx := cmd.Context()
	p := g.printer(cmd)
	s, err := g.openStore(ctx, !o.pruneStale)
	if err != nil {
		return err
	}
	defer s.Close()
	if o.why != "" {
		return runWhy(cmd, g, p, s, o)
	}
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
	for _, n := range res.Notes {
		if n.Target != "" {
			p.Verbosef("%s: '%s' -> '%s'", n.Message, report.Name(n.Link), report.Name(n.Target))
		} else {
			p.Verbosef("%s: '%s'", n.Message, report.Name(n.Link))
		}
	}
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

// runWhy answers "why is this path still alive?" with the root and a
// shortest chain of paths that keep it, each edge with its kind, as the
// collector sees it (keep-outputs and keep-derivations from nix.conf).
func runWhy(cmd *cobra.Command, g *globalOptions, p *printer, s *store.Store, o *rootsOptions) error {
	e, err := roots.Why(cmd.Context(), s, o.why, roots.WhyOptions{
		Roots:       roots.Options{NoRuntime: o.noRuntime, NoTemp: o.noTemp},
		KeepOutputs: s.Settings.KeepOutputs, KeepDerivations: s.Settings.KeepDerivations,
	})
	if err != nil {
		return err
	}
	if g.json {
		return p.JSON(e)
	}
	if !e.Alive {
		with := ""
		if e.DeadWith > 0 {
			with = fmt.Sprintf(" with the %d dead paths that keep it", e.DeadWith)
		}
		fmt.Fprintf(p.out, "%s is dead: no root keeps it alive ('storekeeper gc' would delete it%s, about %s by NAR size)\n",
			report.Name(e.Path), with, report.FormatSize(e.NarBytes))
		return nil
	}
	fmt.Fprintf(p.out, "%s is alive\n  root: %s\n", report.Name(e.Path), report.Name(e.Root))
	for i, l := range e.Chain {
		if i == 0 {
			fmt.Fprintf(p.out, "  %s\n", report.Name(l.Path))
		} else {
			fmt.Fprintf(p.out, "  -> %s (%s)\n", report.Name(l.Path), l.Edge)
		}
	}
	return nil
}
