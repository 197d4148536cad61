package tests

import (
	"testing"

	"storekeeper/store/storetest"
)

// buildDemo builds a small fixture store (no Nix needed) under root.
func buildDemo(t testing.TB, root string) *storetest.Built {
	t.Helper()
	b, err := storetest.Build(root, storetest.DefaultSpec())
	if err != nil {
		t.Fatal(err)
	}
	return b
}
