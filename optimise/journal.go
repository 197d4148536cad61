package optimise

import (
	"fmt"
	"path/filepath"

	"storekeeper/store/fs"
)

// Optimise's directories are journaled by fs.Journal (see fs.Dir): each
// run writes <state>/optimise/<pid>, and the next run replays those of
// killed runs.

// journalDir is where optimise journals live: storekeeper's own state.
func (r *run) journalDir() string {
	return filepath.Join(r.s.Layout.OwnStateDir(), "optimise")
}

func (r *run) openJournal() error {
	j, err := fs.OpenJournal(r.journalDir(), r.s.Layout.RealStoreDir, r.pid)
	if err != nil {
		return fmt.Errorf("optimise: %w", err)
	}
	r.journal = j
	return nil
}

// replayJournals restores the directories named by the journals of dead
// processes and removes those journals. It returns how many directories
// it changed.
func (r *run) replayJournals() int64 {
	return fs.ReplayJournals(r.journalDir(), r.storeFd, r.pid)
}
