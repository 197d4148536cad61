package main

import (
	"time"

	"github.com/spf13/cobra"

	"storekeeper/gc"
	"storekeeper/metrics"
	"storekeeper/verify"
)

func newMetricsCommand(g *globalOptions) *cobra.Command {
	return &cobra.Command{
		Use:   "metrics [--metrics-file FILE]",
		Short: "Print the store's health in Prometheus' text format (node_exporter textfile), from the database and state",
		Long: `Print the store's health as Prometheus metrics (the text format that
node_exporter's textfile collector reads), from the database and
storekeeper's state only: nothing is measured on disk (no du), nothing is
changed.

  storekeeper_store_paths, storekeeper_store_nar_bytes
      valid paths and the sum of their NAR sizes (the database's narSize)
  storekeeper_dead_paths, storekeeper_dead_nar_bytes
      what a collection would delete now, as 'gc --print-dead' computes it
      (roots, reference graph, liveness; keep-outputs and keep-derivations
      from nix.conf), and the NAR bytes of the dead valid paths
  storekeeper_verify_coverage_ratio, storekeeper_verify_paths_never_verified,
  storekeeper_verify_oldest_age_seconds,
  storekeeper_verify_newest_timestamp_seconds
      verify's ledger: the share of valid paths whose contents were
      checked within the last 7 days, those never checked, the age of the
      least recent check and the time of the most recent one

Every sample has the label command="metrics". With --metrics-file FILE
they are written to FILE atomically, with the run's own metrics
(storekeeper_last_run_*), instead of stdout; --json gives the same values
as a result.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return runMetrics(cmd, g)
		},
	}
}

// storeHealth is `storekeeper metrics`' result (--json).
type storeHealth struct {
	// Now is when the ages were computed (Unix seconds).
	Now          int64  `json:"now"`
	Paths        int    `json:"paths"`
	NarBytes     uint64 `json:"nar_bytes"`
	DeadPaths    int    `json:"dead_paths"`
	DeadNarBytes uint64 `json:"dead_nar_bytes"`
	// Audit is verify's ledger over the valid paths.
	Audit         verify.Coverage `json:"audit"`
	CoverageRatio float64         `json:"audit_coverage_ratio"`
}

// runMetrics computes the store's health: the dead set through gc's plan
// (PrintDead: read-only, gc.lock held shared while it is computed, so no
// collection runs under it), sizes from the graph that plan loaded (one
// snapshot of the database, tallied by the plan), the coverage from
// verify's ledger.
func runMetrics(cmd *cobra.Command, g *globalOptions) error {
	ctx := cmd.Context()
	p := g.printer(cmd)
	s, err := g.openStore(ctx, true)
	if err != nil {
		return err
	}
	defer s.Close()
	pl, err := gc.NewPlan(ctx, s, gc.Options{Action: gc.PrintDead,
		KeepOutputs: s.Settings.KeepOutputs, KeepDerivations: s.Settings.KeepDerivations}, nil)
	if err != nil {
		return err
	}
	pl.Close()
	// The plan tallied the valid and dead paths' NAR sizes from its graph.
	r := pl.Result()
	now := time.Now()
	h := &storeHealth{Now: now.Unix(), Paths: r.PathsValid, NarBytes: r.ValidNarBytes,
		DeadPaths: len(pl.Dead), DeadNarBytes: r.DeadNarBytesLeft}
	h.Audit, err = verify.LedgerCoverage(s.Layout.OwnStateDir(), pl.Graph, now)
	if err != nil {
		return err
	}
	h.CoverageRatio = h.Audit.Ratio()
	g.runResult = h
	switch {
	case g.json:
		p.JSON(h)
	case g.metricsFile == "":
		b := &familyBuilder{command: "metrics"}
		b.health(h)
		return metrics.Write(p.out, b.fams)
	}
	return nil
}
