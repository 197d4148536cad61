package verify

import (
	"fmt"
	"time"

	"storekeeper/graph"
)

// CoverageWindow is the audit window of Coverage's Recent: a rolling
// audit (verify --budget from a daily timer) should cover every valid
// path within a week.
const CoverageWindow = 7 * 24 * time.Hour

// Coverage is what the ledger says of the valid paths' content audits.
type Coverage struct {
	// ValidPaths is the number of valid paths counted.
	ValidPaths int `json:"valid_paths"`
	// Recent counts the valid paths last verified at or after Since;
	// Unverified those the ledger has no record of, or only one older
	// than the path's registration (of contents deleted since: the path
	// was collected and registered again).
	Recent     int `json:"paths_verified_recently"`
	Unverified int `json:"paths_never_verified"`
	// Since is the start of the window (Unix seconds): now less
	// CoverageWindow.
	Since int64 `json:"since"`
	// Oldest and Newest are the times (Unix seconds) of the least and
	// the most recent record of a valid path (not counting records older
	// than the path's registration); 0 when none has one.
	Oldest int64 `json:"oldest_verified"`
	Newest int64 `json:"newest_verified"`
}

// Ratio is the fraction of valid paths verified within the window (1
// for a store without valid paths).
func (c Coverage) Ratio() float64 {
	if c.ValidPaths == 0 {
		return 1
	}
	return float64(c.Recent) / float64(c.ValidPaths)
}

// LedgerCoverage reads the ledger in stateDir (storekeeper's state dir,
// Layout.OwnStateDir; missing: nothing was ever verified) and counts the
// valid paths of g by when they were last verified, against the window
// ending at now. It only reads: the ledger's snapshot and the log of a
// run in progress or killed (whose lines count, as the next run folds
// them in), each read whole; a torn last line is ignored.
func LedgerCoverage(stateDir string, g *graph.Graph, now time.Time) (Coverage, error) {
	l, err := loadLedger(stateDir)
	if err != nil {
		return Coverage{}, fmt.Errorf("verify: reading the ledger in %s: %w", stateDir, err)
	}
	return coverageOf(l.entries, g, now), nil
}

func coverageOf(entries map[string]LedgerEntry, g *graph.Graph, now time.Time) Coverage {
	c := Coverage{ValidPaths: g.Len(), Since: now.Add(-CoverageWindow).Unix()}
	for id := graph.PathID(0); int(id) < g.Len(); id++ {
		e, ok := entries[g.Name(id)]
		if ok && int(id) < len(g.RegTime) && e.Time < g.RegTime[id] {
			// Checked before the path was registered: those contents
			// were deleted and these registered since (a collection,
			// then a rebuild or substitution); they were never checked.
			ok = false
		}
		if !ok {
			c.Unverified++
			continue
		}
		if e.Time >= c.Since {
			c.Recent++
		}
		if c.Oldest == 0 || e.Time < c.Oldest {
			c.Oldest = e.Time
		}
		if e.Time > c.Newest {
			c.Newest = e.Time
		}
	}
	return c
}

// coverage is the run's Result.Coverage: the ledger as this run leaves
// it (its own records included), or, when the run did not load it (no
// contents checked), as it is on disk; nil when it cannot be read.
func (v *verifier) coverage() *Coverage {
	entries := v.led.entries
	if !v.o.CheckContents {
		l, err := loadLedger(v.o.StateDir)
		if err != nil {
			return nil
		}
		entries = l.entries
	}
	c := coverageOf(entries, v.g, v.now())
	return &c
}
