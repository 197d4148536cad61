// Command mkdemostore writes a Nix-compatible demo store (store dir,
// db.sqlite with schema 10, gcroots, profiles) without needing Nix, for
// the README's quick start, tests and benchmarks.
//
//	mkdemostore [--paths N] [--seed S] [--db-only] [--guix] DIR
//
// The store is DIR/nix/store with state DIR/nix/var/nix; use it with
// `storekeeper --store DIR ...`.
package main

import (
	"flag"
	"fmt"
	"os"
	"time"

	"storekeeper/store/storetest"
)

func main() {
	spec := storetest.DefaultSpec()
	flag.IntVar(&spec.Paths, "paths", spec.Paths, "derivations (each has one or two outputs)")
	flag.Uint64Var(&spec.Seed, "seed", spec.Seed, "random seed: same seed, same store")
	flag.IntVar(&spec.Files, "files", spec.Files, "mean files per output")
	flag.IntVar(&spec.FileSize, "size", spec.FileSize, "median file size in bytes")
	flag.IntVar(&spec.Roots, "roots", spec.Roots, "direct and indirect gcroots")
	flag.BoolVar(&spec.DBOnly, "db-only", false, "write only the database and roots (graph benchmarks)")
	flag.BoolVar(&spec.Guix, "guix", false, "write a Guix-style store (/gnu/store, schema 7)")
	flag.Usage = func() {
		fmt.Fprintf(os.Stderr, "usage: mkdemostore [flags] DIR\n")
		flag.PrintDefaults()
	}
	flag.Parse()
	if flag.NArg() != 1 {
		flag.Usage()
		os.Exit(2)
	}
	start := time.Now()
	b, err := storetest.Build(flag.Arg(0), spec)
	if err != nil {
		fmt.Fprintln(os.Stderr, "mkdemostore:", err)
		os.Exit(1)
	}
	fmt.Printf("demo store at %s: %d valid paths, %d roots, %d leftovers (%.1fs)\n",
		b.Root, len(b.Valid), len(b.RootLinks), len(b.Leftovers), time.Since(start).Seconds())
}
