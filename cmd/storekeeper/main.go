// Command storekeeper is a maintenance and integrity toolkit for Nix-style
// stores. This package is the CLI only: flags, rendering, progress bars and
// exit codes. The work is done by the library packages (roots, gc, ...)
// on the store-access layer (store).
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"storekeeper/report"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	cmd, finish := newRootCommand()
	err := cmd.ExecuteContext(ctx)
	finish()
	interrupted := ctx.Err() != nil
	stop()
	os.Exit(exitCode(err, interrupted))
}

// Exit codes; documented in `storekeeper help` and the README.
const (
	exitOK          = 0   // success; for verify: the store is clean
	exitFindings    = 1   // the command ran and found problems (verify: damage)
	exitCannotRun   = 2   // bad usage, bad store, DB missing/corrupt/locked, no permission, read-only or full disk
	exitInterrupted = 130 // SIGINT/SIGTERM: stopped cleanly, cleanup finished
)

const exitCodesHelp = `Exit status:
  0    success (verify: no problem found)
  1    the command ran and found problems (verify: damaged paths)
  2    the command could not run: bad usage, no such store, missing,
       corrupt or locked database, unknown schema, permission denied,
       a read-only file system where it must write, a disk too full to
       read the database
  130  interrupted by SIGINT or SIGTERM; cleanup finished, the store is
       consistent and the next run continues`

// findingsError marks a run that completed but found problems.
type findingsError struct{ msg string }

func (e *findingsError) Error() string { return e.msg }

func exitCode(err error, interrupted bool) int {
	if err == nil {
		return exitOK
	}
	var fe *findingsError
	if errors.As(err, &fe) {
		if fe.msg != "" {
			fmt.Fprintln(os.Stderr, report.Text("storekeeper: "+fe.msg))
		}
		return exitFindings
	}
	if interrupted || errors.Is(err, context.Canceled) {
		fmt.Fprintln(os.Stderr, "storekeeper: interrupted")
		return exitInterrupted
	}
	fmt.Fprintln(os.Stderr, report.Text("storekeeper: error: "+err.Error()))
	return exitCannotRun
}
