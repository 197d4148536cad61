package main

import (
	"fmt"

	"github.com/spf13/cobra"
)

// storeInfo is what `storekeeper info` reports.
type storeInfo struct {
	StoreDir        string `json:"store_dir"`
	RealStoreDir    string `json:"real_store_dir"`
	StateDir        string `json:"state_dir"`
	DB              string `json:"db"`
	Schema          int    `json:"schema"`
	ValidPaths      int    `json:"valid_paths"`
	References      int    `json:"references"`
	KeepOutputs     bool   `json:"keep_outputs"`
	KeepDerivations bool   `json:"keep_derivations"`
}

func newInfoCommand(g *globalOptions) *cobra.Command {
	return &cobra.Command{
		Use:   "info",
		Short: "Show which store storekeeper sees: locations, schema, size, settings",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return runInfo(cmd, g)
		},
	}
}

func runInfo(cmd *cobra.Command, g *globalOptions) error {
	ctx := cmd.Context()
	p := g.printer(cmd)
	s, err := g.openStore(ctx, true)
	if err != nil {
		return err
	}
	defer s.Close()
	var nPaths, nRefs int
	if err := s.DB.SQL.QueryRowContext(ctx, "select (select count(*) from ValidPaths), (select count(*) from Refs)").Scan(&nPaths, &nRefs); err != nil {
		return fmt.Errorf("counting paths in %s: %w", s.DB.Path, err)
	}
	info := storeInfo{
		StoreDir: s.Layout.StoreDir, RealStoreDir: s.Layout.RealStoreDir, StateDir: s.Layout.StateDir,
		DB: s.DB.Path, Schema: s.DB.Schema, ValidPaths: nPaths, References: nRefs,
		KeepOutputs: s.Settings.KeepOutputs, KeepDerivations: s.Settings.KeepDerivations,
	}
	if g.json {
		return p.JSON(info)
	}
	fmt.Fprintf(p.out, "store dir:        %s\n", info.StoreDir)
	if info.RealStoreDir != info.StoreDir {
		fmt.Fprintf(p.out, "physically at:    %s\n", info.RealStoreDir)
	}
	fmt.Fprintf(p.out, "state dir:        %s\n", info.StateDir)
	fmt.Fprintf(p.out, "database:         %s (schema %d)\n", info.DB, info.Schema)
	fmt.Fprintf(p.out, "valid paths:      %d\n", info.ValidPaths)
	fmt.Fprintf(p.out, "references:       %d\n", info.References)
	fmt.Fprintf(p.out, "keep-outputs:     %v\n", info.KeepOutputs)
	fmt.Fprintf(p.out, "keep-derivations: %v\n", info.KeepDerivations)
	return nil
}
