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
	cmd := &cobra.Command{
		Use:   "lock",
		Short: "Inspect the store's locks (lock status)",
		Args:  cobra.NoArgs,
	}
	var max int
	status := &cobra.Command{
		Use:   "status",
		Short: "Show who holds or waits for gc.lock, the big-lock, temp-roots files and path locks",
		Long: `Show who holds or waits for the store's locks: gc.lock, db/big-lock, each
temp-roots file (temproots/PID) and each <path>.lock in the store directory,
with each holder's pid, command line, lock kind and mode (shared or
exclusive) and since when (the process's start time: Linux does not record
when a lock was taken); whether a garbage collection is running (gc.lock held
exclusively) and whether its socket accepts a connection; which temp-roots
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
	return cmd
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
	switch {
	case r.GCSocketAccepts:
		fmt.Fprintf(&b, "gc socket: %s accepts connections\n", report.Name(r.GCSocket))
	case r.GCSocketExists:
		fmt.Fprintf(&b, "gc socket: %s does not accept connections (%s)\n", report.Name(r.GCSocket), report.Name(r.GCSocketError))
	case r.GCSocketError != "":
		fmt.Fprintf(&b, "gc socket: %s\n", report.Name(r.GCSocketError))
	default:
		fmt.Fprintf(&b, "gc socket: %s does not exist\n", report.Name(r.GCSocket))
	}
	fileList(&b, "temp-roots files", r.TempRoots, r.TempRootsTotal, r.TempRootsStale, r.TempRootsMore)
	fileList(&b, "path-lock files", r.PathLocks, r.PathLocksTotal, r.PathLocksStale, r.PathLocksMore)
	if r.LocksTruncated {
		b.WriteString("note: /proc/locks was longer than what was read; some holders may be missing\n")
	}
	fmt.Fprint(p.out, b.String())
	return err
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
