package optimise

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"sync"

	"golang.org/x/sys/unix"
)

// journal records, before the first rename into a directory, which
// directory is about to get a fresh mtime (and maybe a write bit). A run
// that finishes removes its journal; the next run replays the journal of
// a run that was killed, making those directories canonical again (mode
// 0555 or 0444, mtime 1). This spares a stat of every directory on every
// run. Entries are paths relative to the store directory, each ended by a
// NUL (names inside store paths may hold newlines). A lost journal (e.g.
// a power cut before writeback) only leaves some mtimes that Nix does not
// check.
type journal struct {
	mu   sync.Mutex
	f    *os.File
	path string
}

// journalDir is where optimise journals live: storekeeper's own state.
func (r *run) journalDir() string {
	return filepath.Join(r.s.Layout.OwnStateDir(), "optimise")
}

func (r *run) openJournal() error {
	dir := r.journalDir()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("optimise: creating %s: %w", dir, err)
	}
	p := filepath.Join(dir, strconv.Itoa(r.pid))
	f, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_TRUNC|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("optimise: creating the journal %s: %w", p, err)
	}
	r.journal = &journal{f: f, path: p}
	return nil
}

// note appends rel (a directory relative to the store directory).
func (j *journal) note(rel string) error {
	if j == nil {
		return nil
	}
	j.mu.Lock()
	defer j.mu.Unlock()
	_, err := j.f.Write([]byte(rel + "\x00"))
	return err
}

// noteAll appends every directory of dirs not yet in the journal, in one
// write. It must not run concurrently with renames into those
// directories (the gate calls it before their files are handed out).
func (j *journal) noteAll(dirs []*dirRef) error {
	if j == nil {
		return nil
	}
	var buf []byte
	var noted []*dirRef
	for _, d := range dirs {
		if d.journaled || d.isStoreDir {
			continue
		}
		if rel, ok := d.rel(); ok {
			d.journaled = true // also marks duplicates in dirs as seen
			noted = append(noted, d)
			buf = append(append(buf, rel...), 0)
		}
	}
	if len(buf) == 0 {
		return nil
	}
	j.mu.Lock()
	_, err := j.f.Write(buf)
	j.mu.Unlock()
	if err != nil {
		for _, d := range noted {
			d.journaled = false // acquire tries again
		}
	}
	return err
}

// close removes the journal: every directory it names was restored.
func (j *journal) close() {
	if j == nil {
		return
	}
	j.f.Close()
	os.Remove(j.path)
}

// replayJournals restores the directories named by the journals of dead
// processes and removes those journals. It returns how many directories
// it changed.
func (r *run) replayJournals() int64 {
	dir := r.journalDir()
	ents, err := os.ReadDir(dir)
	if err != nil {
		return 0
	}
	var n int64
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid <= 0 || pid == r.pid || unix.Kill(pid, 0) != unix.ESRCH {
			continue
		}
		p := filepath.Join(dir, e.Name())
		data, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		for _, rel := range bytes.Split(data, []byte{0}) {
			if len(rel) > 0 && r.restoreDir(string(rel)) {
				n++
			}
		}
		os.Remove(p)
	}
	return n
}

// restoreDir makes the directory rel (relative to the store directory)
// canonical, reaching it component by component without following
// symlinks. Missing directories (collected meanwhile) are skipped.
func (r *run) restoreDir(rel string) bool {
	fd, err := r.openRel(rel)
	if err != nil {
		return false
	}
	d := &dirRef{r: r, fd: fd, path: rel}
	defer unix.Close(fd)
	var st unix.Stat_t
	if unix.Fstat(fd, &st) != nil {
		return false
	}
	return d.canonicalise(&st)
}
