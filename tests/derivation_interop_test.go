package tests

import (
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	"storekeeper/nix/derivation"
)

// TestDerivationsOfNix: every .drv real Nix 2.8 instantiated (single and
// multiple outputs, input derivations) parses, is written back byte for
// byte, and names the outputs Nix made for it.
func TestDerivationsOfNix(t *testing.T) {
	ns := buildNixStore(t, nixSpec{Paths: 40, Seed: 32, Salt: "drvparse"})
	multi := 0
	for i, drv := range ns.Drvs {
		data, err := os.ReadFile(filepath.Join(ns.Root, drv))
		if err != nil {
			t.Fatal(err)
		}
		d, err := derivation.Parse(data, "/nix/store")
		if err != nil {
			t.Fatalf("%s: %v", drv, err)
		}
		if d.String() != string(data) {
			t.Fatalf("%s written back differs:\n%s\nwant:\n%s", drv, d.String(), data)
		}
		if got := d.OutputPaths(); !reflect.DeepEqual(got, ns.Outputs[i]) {
			t.Fatalf("%s: outputs %v, Nix made %v", drv, got, ns.Outputs[i])
		}
		if len(d.Outputs) > 1 {
			multi++
		}
	}
	if multi == 0 {
		t.Fatalf("no derivation with several outputs: the fixture does not exercise them")
	}

	// Output paths computed as Nix's checkDerivationOutputs does
	// (hashDerivationModulo through the input derivations; fixed outputs
	// from their hash) are the ones Nix wrote, for input-addressed
	// derivations with inputs and for fixed-output ones of each kind.
	expr := `
let
  fo = name: mode: algo: hash: derivation { inherit name; system = "x86_64-linux"; builder = "/bin/sh"; args = [ "-c" "exit 1" ];
    outputHashMode = mode; outputHashAlgo = algo; outputHash = hash; };
  f1 = fo "flat" "flat" "sha256" "0000000000000000000000000000000000000000000000000000000000000000";
  f2 = fo "rec" "recursive" "sha256" "1111111111111111111111111111111111111111111111111111111111111111";
  f3 = fo "sha1" "flat" "sha1" "2222222222222222222222222222222222222222";
  f4 = fo "recsha1" "recursive" "sha1" "3333333333333333333333333333333333333333";
  top = derivation { name = "top"; system = "x86_64-linux"; builder = "/bin/sh"; args = [ "-c" "exit 1" ]; outputs = [ "out" "lib" ];
    inputs = [ f1 f2 f3 f4 ]; };
in [ f1 f2 f3 f4 top ]
`
	exprFile := filepath.Join(ns.Root, "fixed.nix")
	if err := os.WriteFile(exprFile, []byte(expr), 0o644); err != nil {
		t.Fatal(err)
	}
	extra := strings.Fields(runNS(t, ns.Root, nil, "nix-instantiate", exprFile))
	if len(extra) != 5 {
		t.Fatalf("nix-instantiate made %v", extra)
	}
	load := func(p string) (*derivation.Derivation, error) {
		data, err := os.ReadFile(filepath.Join(ns.Root, p))
		if err != nil {
			return nil, err
		}
		return derivation.Parse(data, "/nix/store")
	}
	memo := map[string][32]byte{}
	for _, drv := range append(slices.Clone(ns.Drvs), extra...) {
		d, err := load(drv)
		if err != nil {
			t.Fatal(err)
		}
		name := strings.TrimSuffix(filepath.Base(drv)[33:], ".drv")
		got, err := d.ExpectedOutputPaths("/nix/store", name, load, memo)
		if err != nil {
			t.Fatalf("%s: %v", drv, err)
		}
		if want := d.OutputPaths(); !reflect.DeepEqual(got, want) {
			t.Errorf("%s: computed %v, Nix wrote %v", drv, got, want)
		}
	}
}
