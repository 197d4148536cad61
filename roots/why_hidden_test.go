package roots_test

import (
	"context"
	"strings"
	"testing"

	"storekeeper/report"
	"storekeeper/roots"
	"storekeeper/store/storetest"
)

// TestWhyDeadWarnsOfRootsLeftOut: with runtime or temporary roots left
// out, a path reported dead may be alive for the collector, and a Warn
// says so, naming what was left out; with only live paths asked about,
// nothing is said.
func TestWhyDeadWarnsOfRootsLeftOut(t *testing.T) {
	b := storetest.MustBuild(t, storetest.Spec{Paths: 40, Seed: 8, MaxDeps: 3, Files: 1, FileSize: 16, Roots: 3, Generations: 1})
	s := storetest.OpenRO(t, b.Layout)
	o := roots.WhyOptions{Roots: roots.Options{NoRuntime: true, NoTemp: true}}
	es, errs, err := roots.WhyPaths(context.Background(), s, b.Valid, o)
	if err != nil {
		t.Fatal(err)
	}
	var dead, live string
	for i, e := range es {
		if errs[i] != nil {
			t.Fatal(errs[i])
		}
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
