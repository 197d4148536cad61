package verify

import (
	"context"

	"storekeeper/graph"
	"storekeeper/store"
)

// checkPresence asks store.CheckPresence whether the store directory
// looks like the store the DB describes (not an unmounted mount point, a
// half-missing tree or another file system), counting as missing only the
// paths still valid now (a collector running meanwhile is not a mass
// disappearance). A suspect store directory goes to Options.OnSuspect,
// whose error stops the run before anything is read; without OnSuspect
// the verdict goes into the summary. Either way Result.Suspect has it.
func (v *verifier) checkPresence(ctx context.Context) error {
	g := v.g
	var missing []string
	for i, ok := range v.exists {
		if !ok {
			missing = append(missing, g.Path(graph.PathID(i)))
		}
	}
	if len(missing) == 0 {
		return nil
	}
	valid, err := v.s.DB.ValidAmong(ctx, missing)
	if err != nil {
		return err
	}
	still := 0
	for _, p := range missing {
		if valid[p] {
			still++
		}
	}
	v.suspect = store.CheckPresence(v.lay, store.Presence{
		Valid: g.Len() - (len(missing) - still), Missing: still, Names: v.dirNames,
		Dropping: true, IdentityDir: v.o.StateDir,
	})
	if v.suspect == nil {
		return nil
	}
	if v.o.OnSuspect != nil {
		return v.o.OnSuspect(v.suspect)
	}
	v.sum.StoreSuspect = v.suspect.Error()
	return nil
}

// recordFS records which file system the store directory is on
// (store.RecordFSIdentity), for the next runs' checkPresence, when it
// looked whole (a repair that --allow-mass-drop let run records it
// itself, afterwards). It is best effort, like the ledger: a state dir
// that cannot be written (not root, read-only) records nothing.
func (v *verifier) recordFS() {
	if v.o.NoRecord || v.suspect != nil {
		return
	}
	store.RecordFSIdentity(v.lay, v.o.StateDir)
}
