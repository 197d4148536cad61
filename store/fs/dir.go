package fs

import (
	"errors"
	"strconv"
	"strings"
	"sync"
	"unsafe"

	"golang.org/x/sys/unix"

	"storekeeper/internal/sys"
)

// Dir is an open directory of a store into which entries are renamed (a
// file replaced by a hard link, a damaged tree swapped with a good one),
// with what that needs when not root: its owner's write bit added for a
// moment and taken away after the last rename, and its mtime (which a
// rename changes) set back to the canonical one. Before the first rename
// it is written to a Journal, so that a run killed meanwhile is repaired
// by the next (ReplayJournals).
//
// Concurrency: renames into one Dir may run at once from many
// goroutines, each between Acquire and Release; the mode is restored
// exactly once, after the last of a burst of renames, never while one is
// in flight. The zero Dir with Fd and Path set is ready to use.
type Dir struct {
	Fd   int
	Path string // its physical path: messages, and its Journal entry
	// Fixed marks a directory that is never made writable nor restored:
	// the store directory itself, which Nix never touches.
	Fixed bool

	mu        sync.Mutex
	writers   int
	writable  bool // we added S_IWUSR
	touched   bool // a rename changed its mtime
	journaled bool // recorded in the journal
}

// Acquire marks a rename into d as starting, first writing d to j when it
// is not in it yet (j may be nil: no journal). Once Acquire returns, a
// kill -9 is repaired by the next run's ReplayJournals.
func (d *Dir) Acquire(j *Journal) {
	d.mu.Lock()
	d.writers++
	if !d.journaled && !d.Fixed && j != nil {
		if rel, ok := j.rel(d); ok {
			d.journaled = true
			j.note(rel)
		}
	}
	d.mu.Unlock()
}

// MakeWritable adds the owner's write bit, as Nix does when the process
// lacks CAP_DAC_OVERRIDE, for the renames between Acquire and Release.
// It reports whether d is writable now; a Fixed directory never is.
func (d *Dir) MakeWritable() bool {
	if d.Fixed {
		return false
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.writable {
		return true
	}
	var st unix.Stat_t
	if err := unix.Fstat(d.Fd, &st); err != nil {
		return false
	}
	if err := unix.Fchmod(d.Fd, st.Mode&0o7777|unix.S_IWUSR); err != nil {
		return false
	}
	d.writable = true
	return true
}

// Release marks a rename as finished; renamed says it changed d. A
// directory made writable is made canonical again by the last rename out
// (Nix.Fix of its mode, mtime Nix.Mtime), as Nix's MakeReadOnly does. A
// directory that was only renamed into (as root: its mode never changed)
// gets its mtime back once, in RestoreMtime, instead of after every
// rename.
func (d *Dir) Release(renamed bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.writers--
	d.touched = d.touched || renamed
	if d.writers > 0 || d.Fixed || !d.writable {
		return
	}
	var st unix.Stat_t
	if unix.Fstat(d.Fd, &st) == nil {
		d.restoreLocked(&st)
	}
	d.writable, d.touched = false, false
}

// RestoreMtime sets back the mtime of a directory that renames touched;
// the owner of d calls it when no rename into it can start any more.
func (d *Dir) RestoreMtime() {
	if d.Fixed {
		return
	}
	d.mu.Lock()
	if d.touched {
		futimens(d.Fd, []unix.Timespec{{Nsec: unix.UTIME_OMIT}, {Sec: Nix.Mtime}})
		d.touched = false
	}
	d.mu.Unlock()
}

// Restore makes d's mode and mtime canonical given its fstat st; it
// reports whether anything changed.
func (d *Dir) Restore(st *unix.Stat_t) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.restoreLocked(st)
}

func (d *Dir) restoreLocked(st *unix.Stat_t) bool {
	changed := false
	if perm, change := Nix.Fix(st.Mode); change && unix.Fchmod(d.Fd, perm) == nil {
		changed = true
	}
	if !Nix.MtimeOK(st) && futimens(d.Fd, []unix.Timespec{{Nsec: unix.UTIME_OMIT}, {Sec: Nix.Mtime}}) == nil {
		changed = true
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

// OpenBeneath opens the directory rel (a relative path) below the open
// directory rootFd component by component, never following a symlink;
// an empty, "." or ".." component is EINVAL (rel may come from a file,
// such as a Journal).
func OpenBeneath(rootFd int, rel string) (int, error) {
	fd := rootFd
	for _, c := range strings.Split(rel, "/") {
		if c == "" || c == "." || c == ".." {
			if fd != rootFd {
				unix.Close(fd)
			}
			return -1, unix.EINVAL
		}
		nfd, err := sys.OpenAt(fd, c, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC)
		if fd != rootFd {
			unix.Close(fd)
		}
		if err != nil {
			return -1, err
		}
		fd = nfd
	}
	return fd, nil
}

// AddOwnerBitsAt adds the owner's read, write and search bits (0o700) to
// the directory name in dirfd, without following a symlink (it is opened
// O_PATH|O_NOFOLLOW|O_DIRECTORY and changed through /proc/self/fd): what
// a process that is not root needs to move a directory (rename writes
// its "..") or to list and empty it, when the directory is being
// removed. Anything but a directory is ENOTDIR (a symlink too).
func AddOwnerBitsAt(dirfd int, name string) error {
	fd, err := sys.OpenAt(dirfd, name, unix.O_PATH|unix.O_NOFOLLOW|unix.O_DIRECTORY|unix.O_CLOEXEC)
	if err != nil {
		if errors.Is(err, unix.ELOOP) {
			return unix.ENOTDIR
		}
		return err
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return err
	}
	if st.Mode&0o700 == 0o700 {
		return nil
	}
	return unix.Chmod("/proc/self/fd/"+strconv.Itoa(fd), st.Mode&0o7777|0o700)
}
