package main

import (
	"context"
	"io"
	"os"
	"runtime/pprof"
	"runtime/trace"
	"strings"

	"github.com/spf13/cobra"
	"golang.org/x/term"

	"storekeeper/nix/nixconf"
	"storekeeper/store"
)

// globalOptions are the flags every command has.
type globalOptions struct {
	storeURI   string
	storeDir   string
	stateDir   string
	json       bool
	quiet      bool
	verbose    bool
	noProgress bool
	options    []string // --option NAME=VALUE
	cpuProfile string   // hidden --cpu-profile FILE, for performance work
	trace      string   // hidden --trace FILE: a Go execution trace, likewise

	ran bool     // a command's RunE started (cobra accepted the command line)
	p   *printer // the run's printer, once made

	metricsFile string // --metrics-file FILE (metrics.go)
	runResult   any    // the command's typed result, for --metrics-file (metrics.go's runFamilies)
}

// newRootCommand returns the command tree, its global options and a
// function that finishes what the run started (the CPU profile, the
// execution trace); call it before exiting.
func newRootCommand() (*cobra.Command, *globalOptions, func()) {
	g := &globalOptions{}
	var stopProfile func()
	cmd := &cobra.Command{
		Use:   "storekeeper",
		Short: "Fast, safe maintenance and integrity checks for Nix stores",
		Long: `storekeeper maintains a Nix (or Guix) store in place, beside a running
nix-daemon, through Nix's own database and lock protocols.

` + exitCodesHelp,
		SilenceUsage:  true,
		SilenceErrors: true,
		PersistentPreRunE: func(cmd *cobra.Command, args []string) error {
			var stops []func()
			stopProfile = func() {
				for _, stop := range stops {
					stop()
				}
			}
			if g.cpuProfile != "" {
				f, err := os.Create(g.cpuProfile)
				if err != nil {
					return err
				}
				if err := pprof.StartCPUProfile(f); err != nil {
					f.Close()
					return err
				}
				stops = append(stops, func() { pprof.StopCPUProfile(); f.Close() })
			}
			if g.trace != "" {
				f, err := os.Create(g.trace)
				if err != nil {
					return err
				}
				if err := trace.Start(f); err != nil {
					f.Close()
					return err
				}
				stops = append(stops, func() { trace.Stop(); f.Close() })
			}
			return nil
		},
	}
	f := cmd.PersistentFlags()
	f.StringVar(&g.storeURI, "store", "", "the store: 'local' (default), a root directory like /mnt or ./demo-store, or 'local?root=/mnt&store=/gnu/store&state=/var/guix'")
	f.StringVar(&g.storeDir, "store-dir", "", "logical store directory (default $NIX_STORE_DIR or /nix/store)")
	f.StringVar(&g.stateDir, "state-dir", "", "state directory (default $NIX_STATE_DIR or /nix/var/nix)")
	f.BoolVar(&g.json, "json", false, "print one JSON object on stdout: {command, version, store, ok, error, duration_seconds, messages, result}")
	f.BoolVarP(&g.quiet, "quiet", "q", false, "print nothing but errors (for cron)")
	f.BoolVarP(&g.verbose, "verbose", "v", false, "print more detail")
	f.BoolVar(&g.noProgress, "no-progress", false, "never draw progress bars")
	f.StringArrayVar(&g.options, "option", nil, "override a nix.conf setting, as NAME=VALUE (repeatable)")
	f.StringVar(&g.cpuProfile, "cpu-profile", "", "write a Go CPU profile of the run to this file")
	f.MarkHidden("cpu-profile")
	f.StringVar(&g.trace, "trace", "", "write a Go execution trace of the run to this file")
	f.MarkHidden("trace")
	cmd.SetHelpTemplate(cmd.HelpTemplate())
	cmd.AddCommand(newGCCommand(g))
	cmd.AddCommand(newInfoCommand(g))
	cmd.AddCommand(newRootsCommand(g))
	cmd.AddCommand(newVerifyCommand(g))
	cmd.AddCommand(newOptimiseCommand(g))
	cmd.AddCommand(newRepairCommand(g))
	cmd.AddCommand(newRegisterCommand(g))
	cmd.AddCommand(newCopyCommand(g))
	cmd.AddCommand(newLockCommand(g))
	cmd.AddCommand(newMetricsCommand(g))
	addMetricsFlags(cmd, g)
	cmd.AddCommand(newSystemdCommand(g))
	cmd.AddCommand(newManCommand(g))
	cmd.AddCommand(newDBCommand(g))
	for _, c := range cmd.Commands() {
		if run := c.RunE; run != nil {
			c.RunE = func(c *cobra.Command, args []string) error {
				g.ran = true
				return run(c, args)
			}
		}
	}
	return cmd, g, func() {
		if stopProfile != nil {
			stopProfile()
		}
	}
}

// parentCommand is a command that only groups subcommands (db, lock,
// systemd): it takes no arguments and runs nothing itself.
func parentCommand(use, short string) *cobra.Command {
	return &cobra.Command{Use: use, Short: short, Args: cobra.NoArgs}
}

// openStore resolves the layout and settings from the flags and opens the
// store, read-only when the command only reads.
func (g *globalOptions) openStore(ctx context.Context, readOnly bool) (*store.Store, error) {
	lay, err := g.layout()
	if err != nil {
		return nil, err
	}
	settings, err := g.settings()
	if err != nil {
		return nil, err
	}
	return store.Open(ctx, store.Options{Layout: lay, Settings: settings, ReadOnly: readOnly})
}

// ensureWritable makes the store of the flags writable for this process
// before a command that writes opens it (ensureWritableStore: a private
// remount of a read-only bind-mounted store; a read-only database or state
// dir is an error).
func (g *globalOptions) ensureWritable() error {
	lay, err := g.layout()
	if err != nil {
		return err
	}
	return ensureWritableStore(lay)
}

// layout resolves where the store is from --store, --store-dir,
// --state-dir and the environment.
func (g *globalOptions) layout() (store.Layout, error) {
	return store.ResolveLayout(store.LayoutOptions{
		StoreURI: g.storeURI, StoreDir: g.storeDir, StateDir: g.stateDir, Getenv: os.Getenv,
	})
}

func (g *globalOptions) settings() (nixconf.Settings, error) {
	s, err := nixconf.Load(os.Getenv, os.Geteuid() == 0)
	if err != nil {
		return s, err
	}
	for _, o := range g.options {
		name, value, ok := strings.Cut(o, "=")
		if !ok {
			return s, usagef("--option %q: expected NAME=VALUE", o)
		}
		if err := s.Set(strings.TrimSpace(name), strings.TrimSpace(value)); err != nil {
			return s, err
		}
	}
	return s, nil
}

// printer returns the run's one printer (created on first use) for
// cmd's stdout and stderr.
func (g *globalOptions) printer(cmd *cobra.Command) *printer {
	return g.printerFor(cmd.OutOrStdout(), cmd.ErrOrStderr())
}

func (g *globalOptions) printerFor(out, errw io.Writer) *printer {
	if g.p != nil {
		return g.p
	}
	p := &printer{out: out, err: errw, json: g.json, quiet: g.quiet, verb: g.verbose}
	if f, ok := p.err.(*os.File); ok && term.IsTerminal(int(f.Fd())) && !g.noProgress && !g.quiet && !g.json {
		p.progress = true
	}
	g.p = p
	return p
}
