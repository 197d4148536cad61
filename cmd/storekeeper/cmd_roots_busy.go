package main

import (
	"fmt"
	"os"
	"sort"
	"strings"

	"github.com/spf13/cobra"

	"storekeeper/report"
	"storekeeper/roots"
)

func newRootsBusyCommand(g *globalOptions) *cobra.Command {
	return &cobra.Command{
		Use:   "busy",
		Short: "List the processes that hold anything in the store directory, grouped by store path",
		Long: `List the processes that hold anything in the store's directory (its real
directory: /mnt/nix/store for --store /mnt), grouped by store path: the
program they run (exe), their working directory (cwd), their root directory
(root: a chroot), open files (fd), mapped files (maps) and environment
variables whose value names a store path (environ, found as Nix finds them).
Each holder with its pid, user and command line. This is what keeps a store
mount busy, and what a garbage collection keeps as runtime roots: each path
says whether it is valid and whether a holder makes it a runtime root (every
way but root, and but a mapped file that was deleted, on a valid path).

Processes whose files this user may not read (other users' processes) are
counted and named by user, never silently left out: run as root to see
them. Read-only: it reads /proc and the database, and needs no write
access. 'roots --busy' is the same as 'roots busy'.

Output: text; --json (store_dir, paths: [{path, valid, runtime_root,
holders: [{pid, user, command, via, link, file, env, runtime_root}]}],
processes, holding, uninspectable, uninspectable_users, notes).

Exit status: 0, or 2 if it could not run (no store, no /proc).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			g.ran = true
			return runRootsBusy(cmd, g)
		},
	}
}

// runRootsBusy lists who holds what in the store directory.
func runRootsBusy(cmd *cobra.Command, g *globalOptions) error {
	for _, name := range []string{"no-runtime", "no-temp"} {
		if f := cmd.Flags().Lookup(name); f != nil && f.Changed {
			return usagef("--%s has no meaning for roots busy: it lists every process holding the store", name)
		}
	}
	ctx := cmd.Context()
	p := g.printer(cmd)
	s, err := g.openStore(ctx, true)
	if err != nil {
		return err
	}
	defer s.Close()
	r, err := roots.Busy(ctx, s, roots.BusyOptions{})
	if err != nil {
		return err
	}
	if g.json {
		return p.JSON(r) // the notes are in the result
	}
	for _, n := range r.Notes {
		p.Warnf("%s", report.Name(n))
	}
	fmt.Fprint(p.out, busyText(r, os.Geteuid() == 0))
	return nil
}

// busyText is the text of roots busy: each path with its holders, then
// what was looked at and what could not be (asRoot: run by root, whom
// only a process that is not dumpable or in another user namespace can
// refuse).
func busyText(r *roots.BusyReport, asRoot bool) string {
	var b strings.Builder
	for _, bp := range r.Paths {
		state := "not valid"
		switch {
		case bp.RuntimeRoot:
			state = "valid, a runtime root"
		case bp.Valid:
			state = "valid, not a runtime root"
		}
		fmt.Fprintf(&b, "%s (%s)\n", report.Name(bp.Path), state)
		for _, h := range bp.Holders {
			user := h.User
			if user == "" {
				user = "unknown user"
			}
			fmt.Fprintf(&b, "  PID %d (%s) '%s': %s", h.PID, report.Name(user), report.Name(h.Command), busyVia(h))
			if bp.Valid && !h.RuntimeRoot {
				b.WriteString(" (not a runtime root)")
			}
			b.WriteString("\n")
		}
	}
	paths := "store paths"
	if len(r.Paths) == 1 {
		paths = "store path"
	}
	if len(r.Paths) == 0 {
		fmt.Fprintf(&b, "nothing in %s is held by the %d processes looked at\n", report.Name(r.StoreDir), r.Processes)
	} else {
		fmt.Fprintf(&b, "%d %s in %s held by %d of the %d processes looked at\n", len(r.Paths), paths, report.Name(r.StoreDir), r.Holding, r.Processes)
	}
	if r.Uninspectable > 0 {
		users := make([]string, 0, len(r.UninspectableUsers))
		for u, n := range r.UninspectableUsers {
			users = append(users, fmt.Sprintf("%s: %d", report.Name(u), n))
		}
		sort.Strings(users)
		proc := "processes"
		if r.Uninspectable == 1 {
			proc = "process"
		}
		hint := "run as root to see what they hold"
		if asRoot {
			hint = "not dumpable, or in another user namespace"
		}
		fmt.Fprintf(&b, "%d %s could not be inspected (%s): %s\n", r.Uninspectable, proc, strings.Join(users, ", "), hint)
	}
	return b.String()
}

// busyVia says how a holder holds its path.
func busyVia(h roots.BusyHolder) string {
	switch h.Via {
	case "fd":
		return fmt.Sprintf("fd %s %s", report.Name(h.Link[strings.LastIndexByte(h.Link, '/')+1:]), report.Name(h.File))
	case "environ":
		return fmt.Sprintf("environment variable %s names %s", report.Name(h.Env), report.Name(h.File))
	}
	return h.Via + " " + report.Name(h.File)
}
