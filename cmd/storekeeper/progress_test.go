package main

import (
	"bytes"
	"testing"

	"storekeeper/report"
)

// TestProgressAddDoesNotAllocate: the libraries call Add once per file or
// path; neither the command's progress nor report.Discard may allocate.
func TestProgressAddDoesNotAllocate(t *testing.T) {
	pr := newProgress(&printer{out: &bytes.Buffer{}, err: &bytes.Buffer{}, verb: true})
	pr.Phase("deletion", 100, false)
	op := &optimiseProgress{progress: newProgress(pr.p)}
	op.Phase("optimising", 100, true)
	for name, p := range map[string]report.Progress{"progress": pr, "optimise": op, "Discard": report.Discard} {
		if n := testing.AllocsPerRun(1000, func() { p.Add(1) }); n != 0 {
			t.Errorf("%s: Add allocates %v times per call", name, n)
		}
	}
}

// TestProgressLines: the lines the commands print through progress, as
// they printed them before the libraries shared report.Progress.
func TestProgressLines(t *testing.T) {
	for _, tc := range []struct {
		name           string
		verbose, quiet bool
		phaseLines     bool
		want           string
	}{
		{"gc -v", true, false, true, "phase: deletion\nwarn\ndeleting '/nix/store/a'\nverified '/nix/store/b'\n"},
		{"verify -v", true, false, false, "warn\ndeleting '/nix/store/a'\nverified '/nix/store/b'\n"},
		{"default", false, false, true, "warn\n"},
		{"quiet", true, true, true, ""},
	} {
		var errw bytes.Buffer
		pr := newProgress(&printer{out: &bytes.Buffer{}, err: &errw, verb: tc.verbose, quiet: tc.quiet})
		pr.phaseLines = tc.phaseLines
		pr.Phase("deletion", 1, false)
		pr.Add(1)
		pr.Info("warn")
		pr.Deleting("/nix/store/a")
		pr.Verified("/nix/store/b", true)
		pr.Verified("/nix/store/c", false)
		pr.finish()
		if got := errw.String(); got != tc.want {
			t.Errorf("%s: printed %q, want %q", tc.name, got, tc.want)
		}
	}
}
