package main

import (
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"storekeeper/lock"
	"storekeeper/report"
	"storekeeper/store"
)

func newLockCommand(g *globalOptions) *cobra.Command {
	cmd := parentCommand("lock", "Inspect the store's locks (lock status) and remove stale lock files (lock prune)")
	var max int
	status := &cobra.Command{
		Use:   "status",
		Short: "Show who holds or waits for gc.lock, the big-lock, temp-roots files and path locks",
		Long: `Show who holds or waits for the store's locks: gc.lock, db/big-lock, each
temp-roots file (temproots/PID) and each <path>.lock in the store directory,
with each holder's pid, command line, lock kind and mode (shared or
exclusive) and since when (the process's start time: Linux does not record
when a lock was taken); whether a garbage collection is running (gc.lock held
exclusively) and whether a process listens on its socket (asked of the
kernel's socket table: it is never connected to); which temp-roots
and path-lock files are stale (nobody holds them).

Read-only: it reads /proc/locks and stats the files, matching them by inode;
it opens, locks and creates no lock file, and needs no write access.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			g.ran = true
			return runLockStatus(cmd, g, max)
		},
	}
	status.Flags().IntVar(&max, "max-files", 100, "list at most this many temp-roots files and this many path-lock files (held ones first); the rest are counted")
	cmd.AddCommand(status)

	var dryRun bool
	prune := &cobra.Command{
		Use:   "prune",
		Short: "Remove stale temp-roots files and stale <path>.lock files, never a held one",
		Long: `Remove the stale temp-roots files (temproots/PID) and the stale <path>.lock
files in the store directory with Nix's protocols, never a file a process
holds. Each file is opened without following a symbolic link and locked
without waiting (exclusively, as Nix's collector tests temp-roots files): a
file someone holds is kept; a file nobody holds is unlinked while locked and
then marked stale ("d" written into it), so that a Nix process that opened
it before and locks it after starts over with a fresh file, as Nix's
PathLocks and temp-roots code do. Symbolic links, special files, files with
several links, path-lock files holding data, store paths named NAME.lock
(valid in the database, or being added: their own NAME.lock exists),
temp-roots files whose pid runs, and names that are not a pid or a store
path's lock are reported and left alone. gc.lock, db/big-lock and the gc socket are never touched.

It needs the right to delete in the temp-roots directory or the store
directory (root for a multi-user Nix); a stale file it may not delete is
reported. --dry-run takes and releases each lock and removes nothing.

Exit status: 0 done, 1 some stale file could not be removed, 2 could not run.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			g.ran = true
			return runLockPrune(cmd, g, dryRun)
		},
	}
	prune.Flags().BoolVar(&dryRun, "dry-run", false, "say what would be removed (each lock taken and released), remove nothing")
	cmd.AddCommand(prune)
	return cmd
}

func runLockPrune(cmd *cobra.Command, g *globalOptions, dryRun bool) error {
	p := g.printer(cmd)
	lay, err := g.layout()
	if err != nil {
		return err
	}
	if _, err := os.Stat(lay.StateDir); err != nil {
		return fmt.Errorf("%w: %w", store.ErrNoStore, err)
	}
	if !dryRun {
		// Only the store and state directories are written (no database):
		// a read-only bind-mounted store is remounted in a private
		// namespace, a read-only state directory is an error.
		if err := g.ensureWritable(); err != nil {
			return err
		}
	}
	// The database, read-only, tells a store path named NAME.lock (empty,
	// or holding "d") from a path lock.
	s, err := g.openStore(cmd.Context(), true)
	if err != nil {
		return err
	}
	defer s.Close()
	valid := func(name string) (bool, error) {
		path := lay.StoreDir + "/" + name
		v, err := s.DB.ValidAmong(cmd.Context(), []string{path})
		return v[path], err
	}
	r, err := lock.Prune(lay.StateDir, lay.RealStoreDir, lock.PruneOptions{DryRun: dryRun, ValidPath: valid})
	if r == nil {
		return err
	}
	if g.json {
		p.JSON(r)
	} else {
		fmt.Fprint(p.out, pruneText(r))
	}
	if err != nil {
		return err
	}
	if r.Failed > 0 {
		return &findingsError{msg: fmt.Sprintf("%d stale lock file(s) could not be removed", r.Failed)}
	}
	return nil
}

// pruneText is lock prune's text output: a line per file, then totals.
func pruneText(r *lock.PruneReport) string {
	var b strings.Builder
	for _, f := range r.Files {
		what := "stale temp-roots file"
		if f.Kind == lock.KindPathLock {
			what = "stale path lock"
		}
		path := report.Name(f.Path)
		switch f.Action {
		case lock.PruneRemoved:
			fmt.Fprintf(&b, "removed %s (%s, nobody held it)", path, what)
		case lock.PruneWouldRemove:
			fmt.Fprintf(&b, "would remove %s (%s, nobody holds it)", path, what)
		case lock.PruneKept:
			if f.Reason == lock.PruneHeld {
				fmt.Fprintf(&b, "kept %s: held", path)
				if len(f.Holders) == 0 {
					b.WriteString(" by another process")
				}
				for i, h := range f.Holders {
					if i > 0 {
						b.WriteString(",")
					}
					b.WriteString(" by " + userText(h))
				}
			} else {
				fmt.Fprintf(&b, "kept %s: %s", path, f.Reason)
			}
		case lock.PruneFailed:
			fmt.Fprintf(&b, "could not remove %s: %s", path, f.Reason)
		}
		if f.Detail != "" {
			fmt.Fprintf(&b, " (%s)", report.Name(f.Detail))
		}
		b.WriteString("\n")
	}
	verb := "removed"
	if r.DryRun {
		verb = "would remove"
	}
	fmt.Fprintf(&b, "%s %d stale file(s) (%d temp-roots, %d path locks); kept %d (%d held); %d could not be removed\n",
		verb, r.Removed, r.TempRootsRemoved, r.PathLocksRemoved, r.Kept, r.Held, r.Failed)
	return b.String()
}

func runLockStatus(cmd *cobra.Command, g *globalOptions, max int) error {
	p := g.printer(cmd)
	if max < 1 {
		return usagef("--max-files %d: must be at least 1", max)
	}
	lay, err := g.layout()
	if err != nil {
		return err
	}
	if _, err := os.Stat(lay.StateDir); err != nil {
		return fmt.Errorf("%w: %w", store.ErrNoStore, err)
	}
	r, err := lock.Status(lay.StateDir, lay.RealStoreDir, lock.StatusOptions{MaxFiles: max})
	if r == nil {
		return err
	}
	if g.json {
		p.JSON(r)
		return err
	}
	var b strings.Builder
	lockLine(&b, "gc.lock", r.GCLock)
	lockLine(&b, "big-lock", r.BigLock)
	if r.GCRunning {
		b.WriteString("garbage collection: running (gc.lock held exclusively)\n")
	} else {
		b.WriteString("garbage collection: not running\n")
	}
	gcSocketLine(&b, r)
	fileList(&b, "temp-roots files", r.TempRoots, r.TempRootsTotal, r.TempRootsStale, r.TempRootsMore)
	fileList(&b, "path-lock files", r.PathLocks, r.PathLocksTotal, r.PathLocksStale, r.PathLocksMore)
	if r.LocksTruncated {
		b.WriteString("note: /proc/locks was longer than what was read; some holders may be missing\n")
	}
	fmt.Fprint(p.out, b.String())
	return err
}

// gcSocketLine says whether a process listens on the gc socket (the
// kernel's socket table was asked; nothing connected to it).
func gcSocketLine(b *strings.Builder, r *lock.StatusReport) {
	switch {
	case r.GCSocketAccepts:
		fmt.Fprintf(b, "gc socket: %s is served (a process listens on it)\n", report.Name(r.GCSocket))
	case r.GCSocketExists:
		fmt.Fprintf(b, "gc socket: %s is not served (%s)\n", report.Name(r.GCSocket), report.Name(r.GCSocketError))
	case r.GCSocketError != "":
		fmt.Fprintf(b, "gc socket: %s\n", report.Name(r.GCSocketError))
	default:
		fmt.Fprintf(b, "gc socket: %s does not exist\n", report.Name(r.GCSocket))
	}
}

// lockLine prints one of the store's two global locks and its holders.
func lockLine(b *strings.Builder, name string, s lock.LockFileStatus) {
	switch {
	case !s.Exists && s.Error == "":
		fmt.Fprintf(b, "%s: %s does not exist\n", name, report.Name(s.Path))
		return
	case s.Error != "":
		fmt.Fprintf(b, "%s: %s: %s\n", name, report.Name(s.Path), report.Name(s.Error))
		return
	case len(s.Holders) == 0 && len(s.Waiters) == 0:
		fmt.Fprintf(b, "%s: %s is free\n", name, report.Name(s.Path))
		return
	}
	fmt.Fprintf(b, "%s: %s\n", name, report.Name(s.Path))
	users(b, "  ", s)
}

func users(b *strings.Builder, indent string, s lock.LockFileStatus) {
	for _, h := range s.Holders {
		fmt.Fprintf(b, "%sheld by %s\n", indent, userText(h))
	}
	for _, h := range s.Waiters {
		fmt.Fprintf(b, "%swaited for by %s\n", indent, userText(h))
	}
}

func userText(u lock.LockUser) string {
	pid := "an unknown process"
	if u.PID > 0 {
		pid = fmt.Sprintf("PID %d", u.PID)
	}
	s := fmt.Sprintf("%s '%s' (%s %s", pid, report.Name(u.Command), u.Mode, u.Kind)
	if !u.Since.IsZero() {
		s += ", process started " + u.Since.Local().Format(time.DateTime)
	}
	return s + ")"
}

// fileList prints the temp-roots or path-lock files.
func fileList(b *strings.Builder, what string, list []lock.LockFileStatus, total, stale, more int) {
	fmt.Fprintf(b, "%s: %d (%d stale)\n", what, total, stale)
	for _, s := range list {
		switch {
		case s.Error != "":
			fmt.Fprintf(b, "  %s: %s\n", report.Name(s.Path), report.Name(s.Error))
		case s.Stale:
			fmt.Fprintf(b, "  %s: stale (nobody holds it)\n", report.Name(s.Path))
		default:
			fmt.Fprintf(b, "  %s\n", report.Name(s.Path))
			users(b, "    ", s)
		}
	}
	if more > 0 {
		fmt.Fprintf(b, "  ... and %d more\n", more)
	}
}
