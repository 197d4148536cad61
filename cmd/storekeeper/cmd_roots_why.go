package main

import (
	"fmt"

	"github.com/spf13/cobra"

	"storekeeper/report"
	"storekeeper/roots"
)

// whyOptions are the flags of `roots why`.
type whyOptions struct{}

func newRootsWhyCommand(g *globalOptions, ro *rootsOptions) *cobra.Command {
	o := &whyOptions{}
	cmd := &cobra.Command{
		Use:   "why PATH...",
		Short: "Explain why paths are still alive: the root and a shortest chain of paths that keep each",
		Long: `Explain why each PATH (a store path, a file in one, or a symlink to one such
as ./result) is still alive: the root that keeps it and a shortest chain of
paths from that root, each edge with its kind (reference, keep-outputs,
keep-derivations), as the collector sees it (keep-outputs and
keep-derivations from nix.conf). 'roots --why PATH' is the same.

Exit status: 0 every PATH explained, 1 some PATH is not a valid store path
(named; the others are still explained), 2 could not run.`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			g.ran = true
			return runRootsWhy(cmd, g, ro, o, args)
		},
	}
	return cmd
}

// runRootsWhy answers "why is this path still alive?" for each argument.
func runRootsWhy(cmd *cobra.Command, g *globalOptions, ro *rootsOptions, o *whyOptions, args []string) error {
	ctx := cmd.Context()
	p := g.printer(cmd)
	s, err := g.openStore(ctx, true)
	if err != nil {
		return err
	}
	defer s.Close()
	var all []*roots.Explanation
	failed := 0
	for _, arg := range args {
		e, err := roots.Why(ctx, s, arg, roots.WhyOptions{
			Roots:       roots.Options{NoRuntime: ro.noRuntime, NoTemp: ro.noTemp},
			KeepOutputs: s.Settings.KeepOutputs, KeepDerivations: s.Settings.KeepDerivations,
		})
		if err != nil {
			if len(args) == 1 {
				return err
			}
			failed++
			p.Errorf("%s: %v", report.Name(arg), err)
			continue
		}
		all = append(all, e)
		if g.json {
			continue
		}
		if !e.Alive {
			with := ""
			if e.DeadWith > 0 {
				with = fmt.Sprintf(" with the %d dead paths that keep it", e.DeadWith)
			}
			fmt.Fprintf(p.out, "%s is dead: no root keeps it alive ('storekeeper gc' would delete it%s, about %s by NAR size)\n",
				report.Name(e.Path), with, report.FormatSize(e.NarBytes))
			continue
		}
		fmt.Fprintf(p.out, "%s is alive\n  root: %s\n", report.Name(e.Path), report.Name(e.Root))
		for i, l := range e.Chain {
			if i == 0 {
				fmt.Fprintf(p.out, "  %s\n", report.Name(l.Path))
			} else {
				fmt.Fprintf(p.out, "  -> %s (%s)\n", report.Name(l.Path), l.Edge)
			}
		}
	}
	if g.json {
		if len(args) == 1 && len(all) == 1 {
			p.JSON(all[0])
		} else {
			p.JSON(all)
		}
	}
	if failed > 0 {
		return &findingsError{fmt.Sprintf("%d of %d paths could not be explained", failed, len(args))}
	}
	return nil
}
