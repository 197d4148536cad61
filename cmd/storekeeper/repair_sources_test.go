package main

import (
	"encoding/json"
	"path/filepath"
	"testing"
)

// TestRepairAsksAnIdenticalURLOnce: a substituter named twice (in
// nix.conf and again, or by two flags) is one source, as in Nix: a path
// it lacks was asked once, so its "tried" list names it once.
func TestRepairAsksAnIdenticalURLOnce(t *testing.T) {
	b := buildSizeStore(t)
	cache := "file://" + filepath.Join(t.TempDir(), "no-cache")
	out, _, code := runMain(t, "--store", b.Root, "--json", "repair", "--dry-run",
		"--substituter", cache, "--substituter", cache, b.Drvs[0])
	if code != 1 {
		t.Fatalf("exit %d, want 1 (no source has it): %s", code, out)
	}
	var env struct {
		Result struct {
			Paths []struct {
				Tried []struct {
					Source string `json:"source"`
				} `json:"tried"`
			} `json:"paths"`
		} `json:"result"`
	}
	if err := json.Unmarshal([]byte(out), &env); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	if len(env.Result.Paths) != 1 || len(env.Result.Paths[0].Tried) != 1 || env.Result.Paths[0].Tried[0].Source != cache {
		t.Fatalf("want one path tried at %s once, got %+v", cache, env.Result.Paths)
	}
}
