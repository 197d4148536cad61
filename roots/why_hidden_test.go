package roots_test

import (
	"context"
	"strings"
	"testing"

	"storekeeper/report"
	"storekeeper/roots"
	"storekeeper/store"
	"storekeeper/store/storetest"
)

// whyEvery builds the fixture of spec and explains every valid path of it,
// with the runtime and temporary roots left out; an error fails the test.
func whyEvery(t *testing.T, spec storetest.Spec) (*storetest.Built, *store.Store, []*roots.Explanation) {
	t.Helper()
	b := storetest.MustBuild(t, spec)
	s := storetest.OpenRO(t, b.Layout)
	es, errs, err := roots.WhyPaths(context.Background(), s, b.Valid, roots.WhyOptions{Roots: roots.Options{NoRuntime: true, NoTemp: true}})
	if err != nil {
		t.Fatal(err)
	}
	for _, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	return b, s, es
}

// TestWhyDeadWarnsOfRootsLeftOut: with runtime or temporary roots left
// out, a path reported dead may be alive for the collector, and a Warn
// says so, naming what was left out; with only live paths asked about,
// nothing is said.
func TestWhyDeadWarnsOfRootsLeftOut(t *testing.T) {
	_, s, es := whyEvery(t, storetest.Spec{Paths: 40, Seed: 8, MaxDeps: 3, Files: 1, FileSize: 16, Roots: 3, Generations: 1})
	var dead, live string
	for _, e := range es {
		if e.Alive {
			live = e.Path
		} else {
			dead = e.Path
		}
	}
	if dead == "" || live == "" {
		t.Fatalf("fixture: dead %q, live %q", dead, live)
	}
	for _, c := range []struct {
		noRuntime, noTemp bool
		paths             []string
		want              []string // in the one warning; none expected when empty
	}{
		{true, true, []string{live, dead}, []string{"runtime roots were not looked for", "temporary roots were not read"}},
		{true, false, []string{dead}, []string{"runtime roots were not looked for"}},
		{false, true, []string{dead}, []string{"temporary roots were not read"}},
		{true, true, []string{live}, nil},
	} {
		var log report.Log
		o := roots.WhyOptions{Roots: roots.Options{NoRuntime: c.noRuntime, NoTemp: c.noTemp}, Progress: &log}
		if _, _, err := roots.WhyPaths(context.Background(), s, c.paths, o); err != nil {
			t.Fatal(err)
		}
		warns := log.Texts(report.LevelWarning)
		if len(c.want) == 0 {
			if len(warns) != 0 {
				t.Errorf("%+v: warned %q", c, warns)
			}
			continue
		}
		if len(warns) != 1 || !strings.HasPrefix(warns[0], "a path reported dead may still be kept by a root not seen here (") {
			t.Errorf("%+v: warnings %q", c, warns)
			continue
		}
		for _, w := range c.want {
			if !strings.Contains(warns[0], w) {
				t.Errorf("%+v: %q does not say %q", c, warns[0], w)
			}
		}
		if strings.Contains(warns[0], "running as") {
			t.Errorf("%+v: %q: the tests run as root", c, warns[0])
		}
	}
}
