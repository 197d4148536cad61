package verify

import (
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
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
	// Per valid path, not a map of every record: the ledger of a 315k
	// path store took 0.67 s and 110 MB through loadLedger's map.
	times := make([]int64, g.Len())
	for i := range times {
		times[i] = noRecord
	}
	for _, n := range []string{ledgerName, ledgerLogName} {
		b, err := os.ReadFile(filepath.Join(stateDir, n))
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return Coverage{}, fmt.Errorf("verify: reading the ledger in %s: %w", stateDir, err)
		}
		parseLedger(b, func(t int64, _, name []byte) {
			if id, ok := g.Lookup(string(name)); ok {
				times[id] = t
			}
		})
	}
	return coverageOf(g, now, func(id graph.PathID) (int64, bool) { return times[id], times[id] != noRecord }), nil
}

// checkedSinceRegistered reports whether a ledger record of time t (Unix
// seconds) is about id's present contents: a check before the path was
// registered was of contents deleted since (a collection, then a rebuild
// or substitution registered the path again); these were never checked.
func checkedSinceRegistered(g *graph.Graph, id graph.PathID, t int64) bool {
	return int(id) >= len(g.RegTime) || t >= g.RegTime[id]
}

// noRecord marks a path without a ledger record in LedgerCoverage.
const noRecord = math.MinInt64

// coverageOf counts g's valid paths by when the ledger (record: a path's
// last check's time, if it has one) says they were last verified.
func coverageOf(g *graph.Graph, now time.Time, record func(graph.PathID) (int64, bool)) Coverage {
	c := Coverage{ValidPaths: g.Len(), Since: now.Add(-CoverageWindow).Unix()}
	for id := graph.PathID(0); int(id) < g.Len(); id++ {
		t, ok := record(id)
		if ok && !checkedSinceRegistered(g, id, t) {
			ok = false
		}
		if !ok {
			c.Unverified++
			continue
		}
		if t >= c.Since {
			c.Recent++
		}
		if c.Oldest == 0 || t < c.Oldest {
			c.Oldest = t
		}
		if t > c.Newest {
			c.Newest = t
		}
	}
	return c
}

// coverage is the run's Result.Coverage: the ledger as this run leaves
// it: its records (this run's included) when it recorded and committed
// them, else as it is on disk (a run with --no-record, or that could not
// write or commit the ledger, changed nothing there, and the next run and
// `storekeeper metrics` know only the disk's); nil when it cannot be read.
func (v *verifier) coverage() *Coverage {
	if v.sum.Recording != "yes" {
		c, err := LedgerCoverage(v.o.StateDir, v.g, v.now())
		if err != nil {
			return nil
		}
		return &c
	}
	entries := v.led.entries
	c := coverageOf(v.g, v.now(), func(id graph.PathID) (int64, bool) {
		e, ok := entries[v.g.Name(id)]
		return e.Time, ok
	})
	return &c
}
