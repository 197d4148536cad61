package tests

import (
	"os"
	"path/filepath"
	"reflect"
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
}
