package lock

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"storekeeper/internal/procfs"
)

// LockUser is a process that holds, or waits for, a lock on a file, as
// /proc/locks says.
type LockUser struct {
	PID     int    `json:"pid"`     // in this PID namespace; 0 when unknown (an OFD lock)
	Command string `json:"command"` // its command line ("" if unreadable)
	Kind    string `json:"kind"`    // flock, posix or ofd
	Mode    string `json:"mode"`    // shared or exclusive
	// Since is when the process started (from /proc/PID/stat's start
	// time and /proc/stat's btime, assuming 100 clock ticks a second),
	// not when it took the lock, which Linux does not record. Zero when
	// unknown.
	Since time.Time `json:"since,omitzero"`
}

// LockFileStatus is one lock file and who holds or waits for it.
type LockFileStatus struct {
	Path    string     `json:"path"`
	Exists  bool       `json:"exists"`
	Holders []LockUser `json:"holders"`
	Waiters []LockUser `json:"waiters"`
	// Stale: the file exists and nobody holds a lock on it (a temp-roots
	// file or path lock whose owner is gone). Only for temp-roots and
	// path-lock files.
	Stale bool   `json:"stale"`
	Error string `json:"error,omitempty"`
}

// StatusOptions tune Status.
type StatusOptions struct {
	ProcDir  string // "" means /proc
	MaxFiles int    // temp-roots and path-lock files listed at most each (0: 100)
}

// StatusReport is what Status found: a snapshot, each part read at a
// slightly different instant.
type StatusReport struct {
	GCLock  LockFileStatus `json:"gc_lock"`
	BigLock LockFileStatus `json:"big_lock"`
	// GCRunning: some process holds gc.lock exclusively, as a collector
	// does while it deletes.
	GCRunning bool `json:"gc_running"`
	// GCSocket is <stateDir>/gc-socket/socket; GCSocketAccepts says
	// whether a process listens on it (a collector serving it), from the
	// kernel's socket table (see unixListening): it is never connected
	// to.
	GCSocket        string `json:"gc_socket"`
	GCSocketExists  bool   `json:"gc_socket_exists"`
	GCSocketAccepts bool   `json:"gc_socket_accepts"`
	GCSocketError   string `json:"gc_socket_error,omitempty"`

	// TempRoots lists the files in <stateDir>/temproots, held ones first
	// (at most MaxFiles); TempRootsMore is how many more there are.
	TempRoots      []LockFileStatus `json:"temp_roots"`
	TempRootsTotal int              `json:"temp_roots_total"`
	TempRootsStale int              `json:"temp_roots_stale"`
	TempRootsMore  int              `json:"temp_roots_more"`
	// PathLocks lists the <path>.lock files in the store directory, held
	// ones first (at most MaxFiles); PathLocksMore is how many more. A
	// directory or a file holding more than "d" that nobody locks is a
	// store path named NAME.lock (a fetched Cargo.lock), not a path lock,
	// and is left out. Status reads no database: an empty store path
	// named NAME.lock shows as a stale path lock (lock prune keeps it).
	PathLocks      []LockFileStatus `json:"path_locks"`
	PathLocksTotal int              `json:"path_locks_total"`
	PathLocksStale int              `json:"path_locks_stale"`
	PathLocksMore  int              `json:"path_locks_more"`

	// LocksTruncated: /proc/locks had more lines than were read.
	LocksTruncated bool `json:"locks_truncated,omitempty"`
}

// lockEntry is one /proc/locks line.
type lockEntry struct {
	pid     int
	kind    string
	mode    string
	waiting bool
}

type inodeKey struct {
	major, minor uint32
	ino          uint64
}

// Status reports who holds or waits for the locks of the store whose
// state directory is stateDir and whose (physical) store directory is
// storeDir: gc.lock, db/big-lock, each temp-roots file and each
// <path>.lock file. It is read-only: it reads procDir/locks once and
// matches files to its lines by device and inode (stat only; no lock file
// is opened, let alone locked or created), and it asks the kernel's
// socket table whether a process listens on the gc socket, never
// connecting to it (a connection that closes at once can crash Nix 2.8's
// collector). A file is stale when nobody holds a lock on
// it as far as /proc/locks shows (a process in another PID namespace may
// show as pid 0; one in a namespace /proc/locks hides is not seen).
func Status(stateDir, storeDir string, o StatusOptions) (*StatusReport, error) {
	if o.ProcDir == "" {
		o.ProcDir = "/proc"
	}
	if o.MaxFiles <= 0 {
		o.MaxFiles = 100
	}
	locks, truncated, err := readAllLocks(o.ProcDir)
	if err != nil {
		return nil, err
	}
	pc := &procCache{dir: o.ProcDir, start: map[int]time.Time{}, cmd: map[int]string{}}
	devs := sbDevs{}
	r := &StatusReport{LocksTruncated: truncated, TempRoots: []LockFileStatus{}, PathLocks: []LockFileStatus{}}
	r.GCLock = statusOf(filepath.Join(stateDir, "gc.lock"), locks, pc, devs, true)
	r.BigLock = statusOf(filepath.Join(stateDir, "db", "big-lock"), locks, pc, devs, true)
	for _, h := range r.GCLock.Holders {
		if h.Mode == "exclusive" {
			r.GCRunning = true
		}
	}
	r.GCSocket = GCSocketPath(stateDir)
	var st unix.Stat_t
	if err := unix.Lstat(r.GCSocket, &st); err == nil {
		r.GCSocketExists = true
		if st.Mode&unix.S_IFMT != unix.S_IFSOCK {
			r.GCSocketError = "not a socket"
		} else if ok, err := unixListening(&st, r.GCSocket); err != nil {
			r.GCSocketError = err.Error() + " (it is not connected to: a client that closes at once can crash Nix 2.8's collector)"
		} else if ok {
			r.GCSocketAccepts = true
		} else {
			r.GCSocketError = "no process listens on it"
		}
	} else if !errors.Is(err, unix.ENOENT) {
		r.GCSocketError = err.Error()
	}
	var errs []error
	r.TempRoots, r.TempRootsTotal, r.TempRootsStale, r.TempRootsMore, err = listLockFiles(TempRootsDir(stateDir), func(name string) bool {
		return !strings.HasPrefix(name, ".")
	}, nil, locks, pc, devs, o.MaxFiles)
	if r.TempRoots == nil {
		r.TempRoots = []LockFileStatus{}
	}
	if err != nil {
		errs = append(errs, fmt.Errorf("listing temporary roots: %w", err))
	}
	r.PathLocks, r.PathLocksTotal, r.PathLocksStale, r.PathLocksMore, err = listLockFiles(storeDir, func(name string) bool {
		return strings.HasSuffix(name, ".lock") && !strings.HasPrefix(name, ".")
	}, storeContents, locks, pc, devs, o.MaxFiles)
	if r.PathLocks == nil {
		r.PathLocks = []LockFileStatus{}
	}
	if err != nil {
		errs = append(errs, fmt.Errorf("listing path locks: %w", err))
	}
	return r, errors.Join(errs...)
}

// readAllLocks reads procDir/locks (at most maxLocksLines lines) into its
// entries by inode.
func readAllLocks(procDir string) (map[inodeKey][]lockEntry, bool, error) {
	f, err := os.Open(procDir + "/locks")
	if err != nil {
		return nil, false, fmt.Errorf("reading the lock table: %w", err)
	}
	defer f.Close()
	m, truncated, err := parseAllLocks(io.LimitReader(f, 64<<20))
	if err != nil {
		return nil, false, fmt.Errorf("reading %s/locks: %w", procDir, err)
	}
	return m, truncated, nil
}

// parseAllLocks parses /proc/locks lines, holders ("1: FLOCK ADVISORY
// WRITE 1234 08:01:5678 0 EOF") and waiters ("1: -> FLOCK ...").
func parseAllLocks(r io.Reader) (map[inodeKey][]lockEntry, bool, error) {
	m := map[inodeKey][]lockEntry{}
	sc := bufio.NewScanner(r)
	n := 0
	for sc.Scan() {
		if n++; n > maxLocksLines {
			return m, true, nil
		}
		l, ok := parseLocksLine(sc.Text())
		if !ok || len(m[l.key]) >= maxHolders*4 {
			continue
		}
		m[l.key] = append(m[l.key], lockEntry{pid: l.pid, kind: kindName(l.typ), mode: modeName(l.mode), waiting: l.waiting})
	}
	if err := sc.Err(); err != nil {
		return m, false, err
	}
	return m, false, nil
}

func kindName(t string) string {
	switch t {
	case "FLOCK":
		return "flock"
	case "POSIX":
		return "posix"
	case "OFDLCK":
		return "ofd"
	}
	return strings.ToLower(t)
}

func modeName(m string) string {
	switch m {
	case "READ":
		return "shared"
	case "WRITE":
		return "exclusive"
	}
	return strings.ToLower(m)
}

// procCache reads each process's command line and start time once.
type procCache struct {
	dir      string
	boot     time.Time // /proc/stat's btime; zero: unreadable
	bootRead bool
	start    map[int]time.Time
	cmd      map[int]string
}

func (c *procCache) user(e lockEntry) LockUser {
	u := LockUser{PID: e.pid, Kind: e.kind, Mode: e.mode}
	if e.pid <= 0 {
		return u
	}
	if s, ok := c.cmd[e.pid]; ok {
		u.Command = s
	} else {
		u.Command = procfs.CommandLine(c.dir, e.pid)
		c.cmd[e.pid] = u.Command
	}
	if t, ok := c.start[e.pid]; ok {
		u.Since = t
	} else {
		u.Since = c.startTime(e.pid)
		c.start[e.pid] = u.Since
	}
	return u
}

// startTime is when pid started: /proc/PID/stat's field 22 (clock ticks
// since boot; 100 a second, as on every Linux architecture Go runs on)
// plus /proc/stat's btime. Zero when either cannot be read.
func (c *procCache) startTime(pid int) time.Time {
	if !c.bootRead {
		c.bootRead = true
		c.boot, _ = procfs.BootTime(c.dir)
	}
	if c.boot.IsZero() {
		return time.Time{}
	}
	st, err := procfs.ReadStat(c.dir, pid)
	if err != nil {
		return time.Time{}
	}
	return st.Started(c.boot)
}

// sbDevs maps the device number stat gives files (st_dev) to their file
// system's (superblock's), by which /proc/locks names a locked file; they
// differ for a file in a btrfs subvolume. Files stat gives one device are
// in one file system, so each device is looked up once.
type sbDevs map[uint64]uint64

// key is the /proc/locks key of the file at path with stat st (path
// followed as st was: follow).
func (c sbDevs) key(path string, st *unix.Stat_t, follow bool) inodeKey {
	dev, ok := c[st.Dev]
	if !ok {
		dev = st.Dev
		if major, minor, ok := superblockDev(path, follow); ok {
			dev = unix.Mkdev(major, minor)
		}
		c[st.Dev] = dev
	}
	return inodeKey{unix.Major(dev), unix.Minor(dev), st.Ino}
}

// statusOf stats path (following symbolic links when follow, as lockers
// open gc.lock and big-lock) and fills in its holders and waiters.
func statusOf(path string, locks map[inodeKey][]lockEntry, pc *procCache, devs sbDevs, follow bool) LockFileStatus {
	s := LockFileStatus{Path: path, Holders: []LockUser{}, Waiters: []LockUser{}}
	var st unix.Stat_t
	var err error
	if follow {
		err = unix.Stat(path, &st)
	} else {
		err = unix.Lstat(path, &st)
	}
	if err != nil {
		if !errors.Is(err, unix.ENOENT) {
			s.Error = (&os.PathError{Op: "stat", Path: path, Err: err}).Error()
		}
		return s
	}
	s.Exists = true
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		s.Error = "not a regular file"
		return s
	}
	for _, e := range locks[devs.key(path, &st, follow)] {
		if e.waiting {
			s.Waiters = append(s.Waiters, pc.user(e))
		} else {
			s.Holders = append(s.Holders, pc.user(e))
		}
	}
	return s
}

// storeContents reports whether the entry with lstat st in the store
// directory, named NAME.lock, is store contents rather than a path lock: a
// directory, or a regular file holding more than Nix's stale mark "d"
// (Nix writes nothing else into a lock file). Store paths named NAME.lock
// are common (a fetched Cargo.lock).
func storeContents(st *unix.Stat_t) bool {
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFDIR:
		return true
	case unix.S_IFREG:
		return st.Size > 1
	}
	return false
}

// listLockFiles reports the files in dir whose names want accepts: held
// ones (and ones with an error) first, then stale ones, at most max, sorted
// by name within each group; total, stale and more count them all. A
// missing dir lists nothing. An entry skip (if not nil) says is no lock
// file is left out, unless a process holds or waits for a lock on it.
func listLockFiles(dir string, want func(string) bool, skip func(*unix.Stat_t) bool, locks map[inodeKey][]lockEntry, pc *procCache, devs sbDevs, max int) (list []LockFileStatus, total, stale, more int, err error) {
	d, err := os.Open(dir)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, 0, 0, 0, nil
		}
		return nil, 0, 0, 0, err
	}
	defer d.Close()
	var held, idle []LockFileStatus
	for {
		names, rerr := d.Readdirnames(1024)
		for _, name := range names {
			if !want(name) {
				continue
			}
			p := filepath.Join(dir, name)
			if skip != nil {
				var st unix.Stat_t
				if unix.Lstat(p, &st) == nil && skip(&st) && len(locks[devs.key(p, &st, false)]) == 0 {
					continue
				}
			}
			s := statusOf(p, locks, pc, devs, false)
			if !s.Exists {
				continue // gone meanwhile
			}
			total++
			if s.Error == "" && len(s.Holders) == 0 {
				s.Stale = true
				stale++
				if len(idle) < max {
					idle = append(idle, s)
				} else {
					more++
				}
				continue
			}
			held = append(held, s) // bounded by the /proc/locks lines read
		}
		if rerr == io.EOF || len(names) == 0 {
			break
		}
		if rerr != nil {
			return nil, 0, 0, 0, rerr
		}
	}
	sort.Slice(held, func(i, j int) bool { return held[i].Path < held[j].Path })
	sort.Slice(idle, func(i, j int) bool { return idle[i].Path < idle[j].Path })
	list = append(append([]LockFileStatus{}, held...), idle...)
	if len(list) > max {
		more += len(list) - max
		list = list[:max]
	}
	return list, total, stale, more, nil
}
