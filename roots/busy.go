package roots

import (
	"context"
	"fmt"
	"os"
	"path"
	"regexp"
	"sort"
	"strconv"
	"strings"

	"storekeeper/internal/procfs"
	"storekeeper/nix/storepath"
	"storekeeper/store"
)

// BusyOptions tune Busy.
type BusyOptions struct {
	ProcDir string // "" means /proc
}

// BusyReport is what Busy found: every process holding something in the
// store directory, grouped by the store path (or other entry of the
// store directory) it holds.
type BusyReport struct {
	// StoreDir is the directory searched: the store's real directory
	// (/mnt/nix/store for a store at /mnt).
	StoreDir string     `json:"store_dir"`
	Paths    []BusyPath `json:"paths"`
	// Processes is how many processes were looked at (kernel threads and
	// zombies, which hold no file, aside), Holding how many of them hold
	// something in the store directory.
	Processes int `json:"processes"`
	Holding   int `json:"holding"`
	// Uninspectable counts the processes whose files this user may not
	// read (another user's, or one that is not dumpable): what they hold
	// is missing from Paths (root sees every process). UninspectableUsers
	// counts them by user.
	Uninspectable      int            `json:"uninspectable"`
	UninspectableUsers map[string]int `json:"uninspectable_users,omitempty"`
	// Notes: what could not be read in full (a maps or environment file
	// longer than storekeeper reads, a read error), at most maxBusyNotes.
	Notes []string `json:"notes,omitempty"`
}

// BusyPath is one entry of the store directory and who holds it.
type BusyPath struct {
	// Path is the entry as a logical store path (/nix/store/…-name, also
	// for a store at another root); an entry that is no store path
	// (.links, trash, a lock file's name aside) keeps its name, and the
	// store directory itself (a working directory) is the directory.
	Path string `json:"path"`
	// Valid: a valid store path (registered in the database).
	Valid bool `json:"valid"`
	// RuntimeRoot: some holder makes it a runtime root.
	RuntimeRoot bool         `json:"runtime_root"`
	Holders     []BusyHolder `json:"holders"`
}

// BusyHolder is one way one process holds a path.
type BusyHolder struct {
	PID     int    `json:"pid"`
	User    string `json:"user"`    // the real user's name, or the uid in decimal ("" if unreadable)
	Command string `json:"command"` // its command line, arguments separated by spaces (cut at 4 KiB)
	// Via is how: exe (the program it runs), cwd (its working directory),
	// root (its root directory: a chroot), fd (an open file), maps (a
	// mapped file), environ (an environment variable names it).
	Via  string `json:"via"`
	Link string `json:"link"` // what was read: /proc/PID/exe, /proc/PID/fd/3, /proc/PID/maps, /proc/PID/environ
	// File is the file held as the process holds it, under StoreDir
	// (" (deleted)" after a deleted file's name, as /proc writes it); for
	// environ the store path the variable's value names.
	File string `json:"file"`
	Env  string `json:"env,omitempty"` // environ: the variable's name
	// RuntimeRoot: the collector takes the path as a runtime root because
	// of this holding (roots and gc list it; Nix's collector does too):
	// the path is valid and the holding is one Nix looks at (every one
	// but root, and but a mapping of a deleted file or of a path with
	// whitespace).
	RuntimeRoot bool `json:"runtime_root"`
}

// maxBusyNotes bounds BusyReport.Notes; the rest are counted in the last.
const maxBusyNotes = 20

// viaOrder sorts a process's holdings of one path.
var viaOrder = map[string]int{viaExe: 0, viaCwd: 1, viaRoot: 2, viaFD: 3, viaMaps: 4, viaEnviron: 5}

// Busy lists the processes that hold anything in the store's real
// directory: their program (exe), working directory (cwd), root directory
// (root: Nix does not take it as a root, but it keeps a mount busy), open
// files (fd), mapped files (maps) and the environment variables that name
// a store path there (environ, matched with Nix's pattern), grouped by the
// store path held, valid or not, each holder with its pid, user and
// command line and whether the collector counts it as a runtime root.
// Only what names the real directory counts: for a store at another root
// (/mnt), /nix/store/… is this machine's own store, not that one.
//
// It is read-only and needs no write access: it reads /proc and asks the
// database (one batched query) which paths are valid. Processes whose
// files this user may not read are counted (Uninspectable), never
// silently left out; processes that exit while being read are left out.
// Threads are not read one by one (/proc/PID/task): a thread that
// changed only its own working directory is not seen. With /proc mounted
// hidepid=invisible, other users' processes are not seen at all (with
// hidepid=noaccess they are counted as uninspectable).
//
// The answer is a snapshot taken one process after another: a process
// may open or close files meanwhile. The order is deterministic: paths by
// name, holders by pid, then exe, cwd, root, fd (by number), maps,
// environ. Cancelling ctx stops it with ctx's error.
func Busy(ctx context.Context, s *store.Store, o BusyOptions) (*BusyReport, error) {
	proc := o.ProcDir
	if proc == "" {
		proc = "/proc"
	}
	lay := s.Layout
	dir := lay.RealStoreDir
	rep := &BusyReport{StoreDir: dir, Paths: []BusyPath{}}
	ents, err := os.ReadDir(proc)
	if err != nil {
		return nil, fmt.Errorf("roots busy: listing processes: %w; is /proc mounted?", err)
	}
	sc := &procScanner{proc: proc, withRoot: true,
		envRes: []*regexp.Regexp{envPathRegexp(dir)},
		// /proc writes clean paths; a "." or ".." (a fake tree's) could
		// name a file elsewhere.
		want: func(t string) bool { return t == dir || storepath.IsInStore(dir, t) && path.Clean(t) == t },
	}
	type held struct {
		entry string // the entry's base name under dir ("" for dir itself)
		h     BusyHolder
		root  string // the runtime root Find takes it as ("" if none), if valid
	}
	f := &finder{lay: lay} // for toStorePath: Find's mapping of what /proc shows
	var all []held
	var notes []string
	note := func(format string, a ...any) {
		notes = append(notes, fmt.Sprintf(format, a...))
	}
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid <= 0 {
			continue
		}
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		st, err := procfs.ReadStat(proc, pid)
		switch {
		case procfs.Denied(err): // /proc mounted with hidepid=noaccess
			rep.Processes++
			rep.uninspectable("?")
			continue
		case procfs.Vanished(err):
			continue
		case err != nil:
			note("process %d: %v", pid, err)
			continue
		}
		if st.KernelThread() || st.Zombie() {
			continue
		}
		ps := sc.scan(pid)
		if ps.vanished {
			if _, err := os.Lstat(procfs.Dir(proc, pid)); procfs.Vanished(err) {
				continue
			}
		}
		rep.Processes++
		user := processUser(proc, pid)
		if ps.denied {
			rep.uninspectable(user)
		}
		for _, c := range ps.cut {
			note("%s is longer than storekeeper reads: only its beginning was searched", c)
		}
		if ps.fdErr != nil {
			ps.errs = append(ps.errs, ps.fdErr)
		}
		for _, err := range ps.errs {
			note("process %d: %v", pid, err)
		}
		if len(ps.holdings) == 0 {
			continue
		}
		rep.Holding++
		cmd := procfs.CommandLine(proc, pid)
		seen := map[holding]bool{}
		for _, h := range ps.holdings {
			if seen[h] { // a file mapped in several pieces, a path named twice by one variable
				continue
			}
			seen[h] = true
			x := held{entry: storeEntry(dir, h.file)}
			if sp, ok := f.toStorePath(h.file); ok && h.nix {
				x.root = sp
			}
			x.h = BusyHolder{
				PID: pid, User: user, Command: cmd, Via: h.via, Link: h.link, File: h.file, Env: h.env,
			}
			all = append(all, x)
		}
	}

	// Which entries are valid store paths: one batched query.
	var cands []string
	seen := map[string]bool{}
	for _, x := range all {
		p := lay.StoreDir + "/" + x.entry
		if x.entry != "" && !seen[p] && storepath.ValidateBaseName(x.entry) == nil {
			seen[p] = true
			cands = append(cands, p)
		}
	}
	valid, err := s.DB.ValidAmong(ctx, cands)
	if err != nil {
		return nil, err
	}
	byPath := map[string]*BusyPath{}
	for _, x := range all {
		p := lay.StoreDir
		if x.entry != "" {
			p += "/" + x.entry
		}
		bp := byPath[p]
		if bp == nil {
			bp = &BusyPath{Path: p, Valid: valid[p]}
			byPath[p] = bp
		}
		x.h.RuntimeRoot = x.root == p && bp.Valid
		bp.RuntimeRoot = bp.RuntimeRoot || x.h.RuntimeRoot
		bp.Holders = append(bp.Holders, x.h)
	}
	for _, bp := range byPath {
		sort.Slice(bp.Holders, func(i, j int) bool { return holderLess(bp.Holders[i], bp.Holders[j]) })
		rep.Paths = append(rep.Paths, *bp)
	}
	sort.Slice(rep.Paths, func(i, j int) bool { return rep.Paths[i].Path < rep.Paths[j].Path })
	if len(notes) > maxBusyNotes {
		more := len(notes) - maxBusyNotes + 1
		notes = append(notes[:maxBusyNotes-1], fmt.Sprintf("and %d more notes like these", more))
	}
	rep.Notes = notes
	return rep, nil
}

// uninspectable counts a process of user ("" or "?": unknown) that
// could not be inspected.
func (r *BusyReport) uninspectable(user string) {
	if user == "" {
		user = "?"
	}
	if r.UninspectableUsers == nil {
		r.UninspectableUsers = map[string]int{}
	}
	r.Uninspectable++
	r.UninspectableUsers[user]++
}

// storeEntry is the base name of the entry of dir that the file t under
// it is in ("" for dir itself); " (deleted)" after a deleted entry's
// own name (a working directory that was removed) is left out.
func storeEntry(dir, t string) string {
	if t == dir {
		return ""
	}
	e, _, inside := strings.Cut(t[len(dir)+1:], "/")
	if !inside {
		e = strings.TrimSuffix(e, " (deleted)")
	}
	return e
}

// holderLess orders holders by pid, then exe, cwd, root, fd (by number),
// maps, environ, then by file and variable.
func holderLess(a, b BusyHolder) bool {
	if a.PID != b.PID {
		return a.PID < b.PID
	}
	if a.Via != b.Via {
		return viaOrder[a.Via] < viaOrder[b.Via]
	}
	if a.Link != b.Link {
		if a.Via == viaFD {
			x, _ := strconv.Atoi(a.Link[strings.LastIndexByte(a.Link, '/')+1:])
			y, _ := strconv.Atoi(b.Link[strings.LastIndexByte(b.Link, '/')+1:])
			if x != y {
				return x < y
			}
		}
		return a.Link < b.Link
	}
	if a.File != b.File {
		return a.File < b.File
	}
	return a.Env < b.Env
}
