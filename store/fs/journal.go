package fs

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"

	"golang.org/x/sys/unix"
)

// Journal records, before the first rename into a Dir, which directory is
// about to get a fresh mtime (and maybe a write bit). A run that finishes
// closes (removes) its journal; the next run replays the journal of a run
// that was killed (ReplayJournals), making those directories canonical
// again (Nix.Fix of the mode, mtime Nix.Mtime). This spares a stat of
// every directory on every run. A journal is the file <dir>/<pid>; its
// entries are paths relative to the root directory, each ended by a NUL
// (names inside store paths may hold newlines). A lost journal (e.g. a
// power cut before writeback) only leaves some mtimes that Nix does not
// check. Safe for concurrent use.
type Journal struct {
	mu   sync.Mutex
	f    *os.File
	path string
	root string // the directory entries are relative to, with a trailing "/"
}

// OpenJournal creates the journal of process pid in dir (created 0755 if
// missing), for directories below root (a physical path: Dir.Path values
// start with it).
func OpenJournal(dir, root string, pid int) (*Journal, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("creating %s: %w", dir, err)
	}
	p := filepath.Join(dir, strconv.Itoa(pid))
	f, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_TRUNC|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("creating the journal %s: %w", p, err)
	}
	return &Journal{f: f, path: p, root: root + "/"}, nil
}

// rel is d's path relative to the journal's root.
func (j *Journal) rel(d *Dir) (string, bool) {
	return strings.CutPrefix(d.Path, j.root)
}

// note appends rel (a directory relative to the root).
func (j *Journal) note(rel string) error {
	j.mu.Lock()
	defer j.mu.Unlock()
	_, err := j.f.Write([]byte(rel + "\x00"))
	return err
}

// NoteAll appends every directory of dirs not yet in the journal, in one
// write (duplicates in dirs are written once). It must not run
// concurrently with Acquire on those directories (callers write the
// directories of a batch before any rename into them is handed out). On
// a failed write the directories stay unmarked, so Acquire tries again.
func (j *Journal) NoteAll(dirs []*Dir) error {
	if j == nil {
		return nil
	}
	var buf []byte
	var noted []*Dir
	for _, d := range dirs {
		if d.journaled || d.Fixed {
			continue
		}
		if rel, ok := j.rel(d); ok {
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
			d.journaled = false
		}
	}
	return err
}

// Close removes the journal: the caller restored every directory it
// names. A nil Journal is a no-op.
func (j *Journal) Close() {
	if j == nil {
		return
	}
	j.f.Close()
	os.Remove(j.path)
}

// ReplayJournals restores the directories named by the journals in dir of
// processes that are dead (any pid but self that kill(pid, 0) says does
// not exist), reaching each from rootFd with OpenBeneath (never following
// a symlink; directories gone meanwhile are skipped), and removes those
// journals. It returns how many directories it changed. Journals of live
// processes are left alone; a replay killed midway is done again by the
// next one (restoring is idempotent).
func ReplayJournals(dir string, rootFd, self int) int64 {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return 0
	}
	var n int64
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid <= 0 || pid == self || unix.Kill(pid, 0) != unix.ESRCH {
			continue
		}
		p := filepath.Join(dir, e.Name())
		data, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		for _, rel := range bytes.Split(data, []byte{0}) {
			if len(rel) > 0 && restoreBeneath(rootFd, string(rel)) {
				n++
			}
		}
		os.Remove(p)
	}
	return n
}

// restoreBeneath makes the directory rel below rootFd canonical.
func restoreBeneath(rootFd int, rel string) bool {
	fd, err := OpenBeneath(rootFd, rel)
	if err != nil {
		return false
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if unix.Fstat(fd, &st) != nil {
		return false
	}
	d := Dir{Fd: fd, Path: rel}
	return d.Restore(&st)
}
