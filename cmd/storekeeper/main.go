// Command storekeeper is a maintenance and integrity toolkit for Nix-style
// stores. This package is the CLI only: flags, rendering, progress bars and
// exit codes. The work is done by the library packages (roots, gc, ...)
// on the store-access layer (store).
package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"storekeeper/report"
	"storekeeper/store"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// run runs the command line args and returns the exit status. It is the
// one place where a command's end is rendered: the error (and its hint)
// on stderr, and with --json the envelope on stdout.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	start := time.Now()
	cmd, g, finish := newRootCommand()
	cmd.SetArgs(args)
	cmd.SetOut(stdout)
	cmd.SetErr(stderr)
	executed, err := cmd.ExecuteContextC(ctx)
	finish()
	if err != nil && !g.ran {
		// cobra refused the command line before any command ran: an
		// unknown command or flag, a bad flag value, extra arguments.
		err = &usageError{err}
	}
	var lay *store.Layout
	if l, lerr := g.layout(); lerr == nil {
		lay = &l
	}
	o := classify(err, ctx.Err() != nil, lay, "")
	elapsed := time.Since(start)
	// --metrics-file: the run's metrics, also those of a failed run; a
	// file that cannot be written fails a run that succeeded.
	merr := writeRunMetrics(executed, g, time.Now(), elapsed, o)
	if merr != nil && o.code == exitOK {
		o, merr = classify(merr, false, lay, ""), nil
	}
	jsonOut := g.json || (err != nil && !g.ran && wantsJSON(args))
	if jsonOut && (g.ran || err != nil) {
		p := g.printerFor(stdout, stderr)
		p.json = true
		name := ""
		if executed != nil && executed != cmd {
			name = strings.TrimPrefix(executed.CommandPath(), cmd.Name()+" ") // "lock status"
		}
		storeDir := ""
		if lay != nil {
			storeDir = lay.StoreDir
		}
		if werr := p.writeEnvelope(name, storeDir, o, elapsed); werr != nil && o.code == exitOK {
			o = classify(werr, false, lay, "")
		}
	}
	for _, l := range o.lines() {
		fmt.Fprintln(stderr, report.Text(l))
	}
	if merr != nil {
		fmt.Fprintln(stderr, report.Text("storekeeper: error: "+merr.Error()))
	}
	return o.code
}

// wantsJSON reports whether args ask for --json, for a command line that
// cobra refused before (or while) parsing it.
func wantsJSON(args []string) bool {
	for _, a := range args {
		switch a {
		case "--":
			return false
		case "--json", "--json=true", "--json=1", "--json=t", "--json=TRUE", "--json=True":
			return true
		}
	}
	return false
}
