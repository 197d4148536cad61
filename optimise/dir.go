package optimise

import (
	"strings"
	"sync"
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"
)

// dirRef is an open directory of a store path, shared by the file jobs of
// its entries. It is closed when the last job is done. Renames into it are
// counted (acquire/release) so that its mode and mtime are restored exactly
// once after the last of a burst of concurrent renames, never while one is
// in flight.
type dirRef struct {
	r          *run
	fd         int
	path       string // physical path, for messages
	isStoreDir bool
	refs       atomic.Int32

	mu        sync.Mutex
	writers   int
	writable  bool // we added S_IWUSR
	touched   bool // a rename changed its mtime
	journaled bool // recorded in the journal
}

func (d *dirRef) ref() { d.refs.Add(1) }

// unref drops a reference; the last one sets back the mtime of a
// directory that was only renamed into (see release) and closes it.
func (d *dirRef) unref() {
	if d.refs.Add(-1) == 0 && !d.isStoreDir {
		d.mu.Lock()
		if d.touched {
			futimens(d.fd, []unix.Timespec{{Nsec: unix.UTIME_OMIT}, {Sec: 1}})
			d.touched = false
		}
		d.mu.Unlock()
		unix.Close(d.fd)
	}
}

// acquire marks a rename into d as starting. d is in the journal by then
// (the gate writes the directories of a batch of paths before any of
// their files is handed out; acquire writes it otherwise), so that a
// kill -9 from now on is repaired by the next run.
func (d *dirRef) acquire() {
	d.mu.Lock()
	d.writers++
	if !d.journaled && !d.isStoreDir {
		d.journaled = true
		if rel, ok := d.rel(); ok {
			d.r.journal.note(rel)
		}
	}
	d.mu.Unlock()
}

// rel is d's path relative to the store directory.
func (d *dirRef) rel() (string, bool) {
	return strings.CutPrefix(d.path, d.r.s.Layout.RealStoreDir+"/")
}

// makeWritable adds the owner's write bit, as Nix does when the process
// lacks CAP_DAC_OVERRIDE. Nix never touches the store directory itself.
func (d *dirRef) makeWritable() bool {
	if d.isStoreDir {
		return false
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.writable {
		return true
	}
	var st unix.Stat_t
	if err := unix.Fstat(d.fd, &st); err != nil {
		return false
	}
	if err := unix.Fchmod(d.fd, st.Mode&0o7777|unix.S_IWUSR); err != nil {
		return false
	}
	d.writable = true
	return true
}

// release marks a rename as finished. A directory made writable for it
// is made canonical again by the last rename out: mode 0555 (0444
// without the owner's x bit) and mtime 1, as Nix's MakeReadOnly does. A
// directory that was only renamed into (as root: its mode never changed)
// gets its mtime back once, when its last file is done (unref), instead
// of after every rename.
func (d *dirRef) release(renamed bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.writers--
	d.touched = d.touched || renamed
	if d.writers > 0 || d.isStoreDir || !d.writable {
		return
	}
	var st unix.Stat_t
	if unix.Fstat(d.fd, &st) == nil {
		d.canonicaliseLocked(&st)
	}
	d.writable, d.touched = false, false
}

// canonicalise makes the directory's mode and mtime canonical; it reports
// whether anything changed.
func (d *dirRef) canonicalise(st *unix.Stat_t) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.canonicaliseLocked(st)
}

func (d *dirRef) canonicaliseLocked(st *unix.Stat_t) bool {
	changed := false
	perm := st.Mode & 0o7777
	if perm != 0o444 && perm != 0o555 {
		mode := uint32(0o444)
		if st.Mode&unix.S_IXUSR != 0 {
			mode = 0o555
		}
		if unix.Fchmod(d.fd, mode) == nil {
			changed = true
		}
	}
	if st.Mtim.Sec != 1 || st.Mtim.Nsec != 0 {
		ts := []unix.Timespec{{Nsec: unix.UTIME_OMIT}, {Sec: 1}}
		if futimens(d.fd, ts) == nil {
			changed = true
		}
	}
	return changed
}

// futimens sets the times of the file open at fd (utimensat with a NULL
// path), without resolving any path.
func futimens(fd int, ts []unix.Timespec) error {
	_, _, e := unix.Syscall6(unix.SYS_UTIMENSAT, uintptr(fd), 0, uintptr(unsafe.Pointer(&ts[0])), 0, 0, 0)
	if e != 0 {
		return e
	}
	return nil
}
