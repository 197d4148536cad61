package optimise

import (
	"fmt"
	"sync/atomic"

	"golang.org/x/sys/unix"

	"storekeeper/internal/sys"
	"storekeeper/nix/nar"
)

// batchSize is how many file jobs of one store path travel together from
// the gate to a hasher: the small files among them are read in one
// io_uring submission.
const batchSize = 64

// hasher is one hashing and linking worker.
type hasher struct {
	r     *run
	sr    *sys.SmallFileReader // nil: read every file the plain way
	small []sys.SmallFile
	jobs  []*fileJob // the job of each entry of small
}

func (r *run) newHasher() *hasher {
	h := &hasher{r: r}
	if sr, err := sys.NewSmallFileReader(); err == nil {
		h.sr = sr
	}
	return h
}

func (h *hasher) close() { h.sr.Close() }

// processBatch handles the file jobs js (of one store path) and marks
// each done. Files that getdents called regular are lstat'ed; those of
// at most store.SmallFileMax bytes are opened, read and closed through
// the hasher's ring, a batch per submission (one system call per file
// instead of four), then hashed from memory. Everything else, and any
// small file the batch could not read whole (vanished, replaced, changed
// size, an error), goes the one-by-one way of process, which also
// reports what is wrong.
func (h *hasher) processBatch(js []*fileJob) {
	r := h.r
	if h.sr == nil {
		for _, j := range js {
			if !r.stop.Load() {
				r.process(j)
			}
			r.jobDone(j)
		}
		return
	}
	h.small, h.jobs = h.small[:0], h.jobs[:0]
	for _, j := range js {
		if r.stop.Load() || !h.prepare(j) {
			r.jobDone(j)
		}
	}
	if len(h.small) == 0 {
		return
	}
	if err := h.sr.ReadFiles(h.small); err != nil {
		// The ring broke: never use it again.
		h.sr.Close()
		h.sr = nil
	}
	for k, j := range h.jobs {
		if !r.stop.Load() {
			if data := h.small[k].Data; data != nil {
				h.hashSmall(j, data)
			} else {
				r.processRegularStat(j, true)
			}
		}
		r.jobDone(j)
	}
	clear(h.small) // drop the references to names and contents
}

// prepare handles job j as far as it can without reading the file: it
// reports whether j was queued for the batched read (then it is not done
// yet).
func (h *hasher) prepare(j *fileJob) bool {
	r := h.r
	if !j.byName || r.inodes.has(j.st.Ino) {
		r.process(j)
		return false
	}
	var st unix.Stat_t
	if err := sys.LstatAt(j.dir.Fd, j.name, &st); err != nil {
		if err != unix.ENOENT {
			r.notice(KindError, r.realPath(j.dir, j.name), "", fmt.Errorf("lstat: %w", err))
		}
		return false
	}
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFLNK:
		// A symlink now: handled as the walker handles symlinks.
		if r.considered(j, &st) {
			j.byName, j.st = false, st
			r.process(j)
		}
		return false
	case unix.S_IFREG:
	default:
		return false // replaced since getdents by something we would not link
	}
	if !r.considered(j, &st) {
		return false
	}
	if st.Size > sys.SmallFileMax {
		r.processRegularStat(j, true)
		return false
	}
	j.st = st
	h.small = append(h.small, sys.SmallFile{Dirfd: j.dir.Fd, Name: j.name, Size: st.Size})
	h.jobs = append(h.jobs, j)
	return true
}

// hashSmall hashes a small file read whole by the batch (its lstat is
// j.st) and links it.
func (h *hasher) hashSmall(j *fileJob, data []byte) {
	r := h.r
	hash, err := nar.HashFileBytes(data, &j.st) // its path is only built for an error
	if err != nil {
		r.notice(KindError, r.realPath(j.dir, j.name), "", fmt.Errorf("hashing: %w", err))
		return
	}
	atomic.AddInt64(&r.res.FilesHashed, 1)
	atomic.AddInt64(&r.res.BytesHashed, j.st.Size)
	r.files.Hashed(j.st.Size)
	r.link(j, hash.Base32(), &j.st)
}
