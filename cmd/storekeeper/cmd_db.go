package main

import (
	"errors"
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"storekeeper/report"
	"storekeeper/store/db"
)

func newDBCommand(g *globalOptions) *cobra.Command {
	cmd := parentCommand("db", "Maintain the store's database (db vacuum)")
	var check bool
	var timeout time.Duration
	vacuum := &cobra.Command{
		Use:   "vacuum",
		Short: "Rebuild the database with SQLite's VACUUM, the big-lock held exclusively",
		Long: `Rebuild the database (<state dir>/db/db.sqlite) with SQLite's VACUUM, which
gives the pages of deleted rows back to the file system: after a large gc a
database of 1.6 GB can shrink to a few dozen MB. It prints the size before
and after (db.sqlite, db.sqlite-wal and db.sqlite-shm together).

It takes db/big-lock exclusively. Every Nix process holds it shared while it
has the database open (a nix-daemon worker, nix-store, nix-env, nix build
without the daemon), so vacuum waits until none has, up to --timeout, saying
who holds it (pid, command line); after --timeout it fails (exit 2, kind
lock-held), changing nothing. While it runs, Nix processes that start wait
for it ("waiting for the big Nix store lock...").

VACUUM needs free space of about the size of the data in the database
twice: once for SQLite's temporary copy, once for the WAL beside the
database. storekeeper's SQLite temporary files go to the database's own
directory (not /var/tmp or /tmp; $SQLITE_TMPDIR, when set, overrides it);
vacuum checks the free space first and refuses (exit 2, kind disk-full)
when there is not enough.

--check runs SQLite's PRAGMA integrity_check first and prints its findings;
a database with problems is not vacuumed (exit 1).

VACUUM is one SQLite transaction, run with synchronous=FULL: a kill or a
power cut at any instant leaves the old database or the new one. It needs
write access to the database directory (root for a multi-user Nix).

Exit status: 0 vacuumed, 1 --check found problems (not vacuumed), 2 could
not run (the big-lock held past --timeout, too little free space, no write
access, a missing or corrupt database), 130 interrupted (the database is as
it was).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			g.ran = true
			if timeout < 0 {
				return usagef("--timeout %s: must not be negative", timeout)
			}
			return runDBVacuum(cmd, g, check, timeout)
		},
	}
	vacuum.Flags().BoolVar(&check, "check", false, "run PRAGMA integrity_check first; do not vacuum a database with problems")
	vacuum.Flags().DurationVar(&timeout, "timeout", 5*time.Minute, "how long to wait for the processes that have the database open (0: do not wait)")
	cmd.AddCommand(vacuum)
	return cmd
}

func runDBVacuum(cmd *cobra.Command, g *globalOptions, check bool, timeout time.Duration) error {
	p := g.printer(cmd)
	lay, err := g.layout()
	if err != nil {
		return err
	}
	settings, err := g.settings()
	if err != nil {
		return err
	}
	r, err := db.Vacuum(cmd.Context(), lay.DBDir(), db.VacuumOptions{
		Timeout: timeout,
		Check:   check,
		UseWAL:  settings.UseSQLiteWAL,
		Printer: newProgress(p),
	})
	if r == nil || (r.Integrity == nil && !r.Vacuumed) {
		return err
	}
	if g.json {
		p.JSON(r)
	} else {
		for i, row := range r.Integrity {
			if i == 0 {
				p.Textln("integrity check: " + row)
			} else {
				p.Textln("                 " + row)
			}
		}
		if r.Vacuumed {
			freed := "no space freed"
			if d := r.SizeBeforeBytes - r.SizeAfterBytes; d > 0 {
				freed = report.FormatSize(uint64(d)) + " freed"
			}
			p.Textln(fmt.Sprintf("vacuumed %s: %s -> %s (%s) in %.2fs",
				r.DBPath, report.FormatSize(uint64(r.SizeBeforeBytes)), report.FormatSize(uint64(r.SizeAfterBytes)), freed, r.ElapsedSeconds))
		}
	}
	if errors.Is(err, db.ErrIntegrity) {
		return &findingsError{msg: fmt.Sprintf("the integrity check of %s found %d problem(s); it was not vacuumed (restore it from a backup)", report.Name(r.DBPath), len(r.Integrity))}
	}
	return err
}
