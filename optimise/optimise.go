// Package optimise deduplicates a Nix store's files with hard links into
// <store>/.links, converging with Nix's `nix-store --optimise` and
// `auto-optimise-store`: the same .links names (the Nix base-32 SHA-256 of
// each lone file's NAR serialisation, so the executable bit counts), the
// same files linked, the same bytes freed.
//
// Unlike Nix it hashes on every core, reads in inode order (close to disk
// order), skips already-linked files by the inode numbers of .links read
// once from the directory entries (no stat per entry), checks the contents
// of a pre-existing .links entry before linking anything to it, and never
// holds gc.lock: the walk only reads, and a path with files to link is
// registered as a temporary root and its validity rechecked (in batches)
// before any of them is touched. A run over an optimised store registers
// no root and sends one query.
//
// Unlike Nix it never spreads an inode the store's owner does not
// control alone (another owner, a mode other than 0444/0555, links
// outside the store): such a file is neither made a .links entry nor
// replaced by a link, nothing is linked to such an entry, and both are
// reported (trust.go).
//
// Crash safety: every change is one atomic link(2) or rename(2). A file is
// only ever replaced by a hard link to an inode whose NAR hash equals its
// own, through a temporary link in the store directory that is renamed over
// it. kill -9 at any instant leaves every file with its contents; at worst
// a `.tmp-link-PID-N` entry in the store directory (removed by the next run
// once PID is dead, or by any garbage collection) and directories with a
// fresh mtime (or a write bit, when not running as root): each is written
// to a journal in storekeeper's state directory before it is touched, and
// the next run makes them canonical again (0555, mtime 1).
package optimise

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"

	"storekeeper/graph"
	"storekeeper/internal/sys"
	"storekeeper/lock"
	"storekeeper/nix/nar"
	"storekeeper/nix/storepath"
	"storekeeper/report"
	"storekeeper/store"
	"storekeeper/store/db"
	"storekeeper/store/fs"
)

// Sentinel errors; every error Optimise returns for bad input wraps one.
var (
	// ErrNotValid: a path given is not (in) a valid store path.
	ErrNotValid = errors.New("optimise: not a valid store path")
	// ErrReadOnly: the store was opened read-only but the run would write.
	ErrReadOnly = errors.New("optimise: store opened read-only")
	// ErrLinksDir: the .links directory cannot be created or read.
	ErrLinksDir = errors.New("optimise: cannot use the .links directory")
)

// Options choose what Optimise does.
type Options struct {
	// Paths limits the run to these store paths (full logical paths, or
	// paths inside store paths). Empty: every valid path, as Nix does.
	Paths []string
	// MinSize skips regular files and symlinks smaller than this many
	// bytes. 0 (Nix's behaviour) considers every file, empty ones too.
	MinSize int64
	// DryRun computes what would be linked and freed without changing
	// anything; it needs no write access.
	DryRun bool
	// Jobs is the number of hashing and linking workers; 0 means 2 per
	// CPU.
	Jobs int
	// Full walks every selected path, also those that an earlier run
	// left fully linked and that are unchanged since (see state.go).
	Full bool
	// TempRoots registers each store path before it is touched; nil makes
	// Optimise open this process's temporary-roots file itself (unless
	// DryRun).
	TempRoots *lock.TempRoots
}

// Files is an optional extension of the report.Progress passed to
// Optimise: if it implements Files, Hashed is called after each file of
// size bytes was hashed and Linked after each file of size bytes was
// replaced by a link. Both are called from the workers, concurrently, once
// per file: they must be cheap and must not block.
type Files interface {
	Hashed(bytes int64)
	Linked(bytes int64)
}

// noFiles is the Files of a Progress that does not implement it.
type noFiles struct{}

func (noFiles) Hashed(int64) {}
func (noFiles) Linked(int64) {}

// Problem kinds of a Notice.
const (
	// KindSuspicious: a writable regular file, skipped as Nix does.
	KindSuspicious = "suspicious"
	// KindCorrupted: a .links entry whose size, type or contents do not
	// match its name. It is replaced by the (good) file being linked; files
	// already linked to it keep the damage: run
	// `nix-store --verify --check-contents --repair`.
	KindCorrupted = "corrupted-link"
	// KindTooManyLinks: the .links entry has the file system's maximum
	// number of links (EMLINK); the file is kept as it is.
	KindTooManyLinks = "too-many-links"
	// KindNoSpace: the .links directory (or the store directory) is full
	// (ENOSPC); the file is kept as it is.
	KindNoSpace = "no-space"
	// KindError: the file could not be processed (it is unchanged).
	KindError = "error"
	// KindRefused: a file that the store's owner does not control alone
	// (another owner, a mode other than 0444/0555, or hard links that are
	// not names in the store's paths and .links), so neither made a
	// .links entry nor replaced by a link: anyone who can write its inode
	// could otherwise rewrite every store file linked to it. It is left
	// as it is; Problems says why, in verify --metadata's words.
	KindRefused = "refused"
	// KindUntrustedLink: a .links entry failing the same checks (its
	// store-path names are not looked at); nothing is linked to it and
	// the files with its contents are left as they are. Reported once
	// per entry, with the first file concerned as Path.
	KindUntrustedLink = "untrusted-link"
)

// Notice is one thing worth telling about a file.
type Notice struct {
	Kind string `json:"kind"`
	Path string `json:"path"`           // physical path of the file
	Link string `json:"link,omitempty"` // the .links entry concerned
	Err  string `json:"error,omitempty"`

	// For KindRefused and KindUntrustedLink: the store path (logical)
	// and the file inside it ("" for a path that is a single file), what
	// the lstat of the file (KindRefused) or of the .links entry
	// (KindUntrustedLink) said, and what is wrong with it.
	StorePath string           `json:"store_path,omitempty"`
	File      string           `json:"file,omitempty"`
	Inode     *InodeInfo       `json:"inode,omitempty"`
	Problems  []fs.MetaProblem `json:"problems,omitempty"`
}

// InodeInfo is the ownership of a refused file or .links entry.
type InodeInfo struct {
	UID      uint32 `json:"uid"`
	StoreUID uint32 `json:"store_uid"` // the store directory's owner
	Mode     string `json:"mode"`      // permission bits, octal
	Nlink    uint64 `json:"nlink"`
	// StoreNames: the names of the inode this run saw in the store
	// paths it walked (0 when the owner or the mode already failed).
	StoreNames uint64 `json:"store_names"`
}

// Result is what a run did (or, with DryRun, would do).
type Result struct {
	DryRun         bool  `json:"dry_run"`
	Paths          int   `json:"paths_checked"`   // store paths processed
	PathsUnchanged int   `json:"paths_unchanged"` // of which skipped: fully linked by an earlier run and unchanged since
	PathsGone      int   `json:"paths_gone"`      // no longer valid when their turn came
	FilesSeen      int64 `json:"files_seen"`      // regular files and symlinks considered
	AlreadyLinked  int64 `json:"already_linked"`  // skipped: already hard-linked into .links
	SkippedSmall   int64 `json:"skipped_small"`   // skipped: below MinSize
	FilesHashed    int64 `json:"files_hashed"`    //
	BytesHashed    int64 `json:"bytes_hashed"`    //
	LinksCreated   int64 `json:"links_created"`   // new .links entries
	FilesLinked    int64 `json:"files_linked"`    // files replaced by a hard link (Nix's "N files")
	BytesFreed     int64 `json:"bytes_freed"`     // sum of their sizes (Nix's "X MiB freed")
	BlocksFreed    int64 `json:"blocks_freed"`    // sum of their st_blocks (512 bytes)
	TooManyLinks   int64 `json:"too_many_links"`  // kept because of EMLINK
	NoSpace        int64 `json:"no_space"`        // kept because of ENOSPC
	Refused        int64 `json:"refused"`         // kept because the file or its .links entry failed the ownership checks (KindRefused, KindUntrustedLink)
	RestoredDirs   int64 `json:"restored_dirs"`   // directories made canonical again after a killed run
	StaleTmpLinks  int   `json:"stale_tmp_links"` // .tmp-link-* of dead processes removed
	// StateError says why the linked-paths state could not be saved
	// (the next run then walks every path again).
	StateError string `json:"state_error,omitempty"`

	Notices []Notice `json:"notices"` // sorted by kind, then path
}

// Errors returns the notices that are problems (corrupted .links entries,
// files and entries refused by the ownership checks, files that could not
// be processed), as opposed to the informational ones Nix also only
// prints (suspicious files, EMLINK, ENOSPC).
func (r *Result) Errors() []Notice {
	var out []Notice
	for _, n := range r.Notices {
		switch n.Kind {
		case KindCorrupted, KindError, KindRefused, KindUntrustedLink:
			out = append(out, n)
		}
	}
	return out
}

// Optimise replaces identical files of the selected valid store paths by
// hard links to <store>/.links/<name>, as Nix does (see the package doc).
//
// Concurrency: it runs beside nix-daemon, Nix's and storekeeper's garbage
// collectors and other optimisers. It never holds gc.lock; each path is
// registered as a temporary root and rechecked for validity before it is
// walked, so a collector keeps it. A .links entry that a collector removes
// concurrently (its link count was 1) is recreated or the file skipped; a
// link that appears concurrently is used.
//
// Cancellation: when ctx is done no new file is started, the operations in
// flight finish (each is a few system calls), directories are restored and
// the partial Result is returned with an error wrapping ctx.Err().
//
// Errors about single files do not stop the run; they are in
// Result.Notices. The returned error is for what stops it: bad arguments,
// an unreadable .links directory, the database, cancellation.
//
// p receives the progress (nil: report.Discard): one phase, "optimising",
// over the NAR bytes of the selected paths, advanced as each path is done;
// if p also implements Files, each file hashed and linked is reported.
func Optimise(ctx context.Context, s *store.Store, o Options, p report.Progress) (*Result, error) {
	return optimiseWith(ctx, s, o, p, realSys)
}

// optimiseWith is Optimise with the given system calls (tests inject
// failures through it).
func optimiseWith(ctx context.Context, s *store.Store, o Options, p report.Progress, sys sysOps) (*Result, error) {
	if p == nil {
		p = report.Discard
	}
	files, ok := p.(Files)
	if !ok {
		files = noFiles{}
	}
	if s.ReadOnly && !o.DryRun {
		return nil, fmt.Errorf("%w: optimising writes to the store (use --dry-run for a read-only estimate)", ErrReadOnly)
	}
	r := &run{s: s, o: o, p: p, files: files, res: &Result{DryRun: o.DryRun}, pid: os.Getpid(), sys: sys}
	return r.run(ctx)
}

// sysOps are the system calls that change the store; tests replace them
// to inject failures (ENOSPC, EMLINK, EACCES).
type sysOps struct {
	linkat   func(olddirfd int, oldpath string, newdirfd int, newpath string, flags int) error
	renameat func(olddirfd int, oldpath string, newdirfd int, newpath string) error
}

var realSys = sysOps{linkat: unix.Linkat, renameat: unix.Renameat}

type run struct {
	s     *store.Store
	o     Options
	p     report.Progress
	files Files // p's, or noFiles
	res   *Result
	pid   int
	sys   sysOps

	storeFd, linksFd int
	storeDev         uint64
	storeUID         uint32 // the store directory's owner: every file linked must be its (trust.go)
	endMarked        bool   // the store's file system marks the end of a listing (store.DirEndMarked)
	storeDir         *dirRef
	top              map[string]dirent // the store directory's entries
	journal          *fs.Journal

	inodes *inodeSet
	linked *linkedState // the linked-paths state; nil in a dry run without one
	// verified: the .links entries whose contents were checked (or
	// made) in this run, name -> linkInfo of the inode found or made, so
	// that a later file with the same hash needs no lstat of the entry.
	verified sync.Map
	// names: hashes of the .links names known to exist (listed at the
	// start, or met or made since). A name not in it is linked without
	// looking it up first; should it exist after all, link(2) says so.
	names *inodeSet

	corruptMu  sync.Mutex        // serialises replacements of corrupted .links entries
	dryCorrupt map[string]uint64 // dry run: corrupted entries and the inode that would replace each

	virtMu sync.Mutex
	virt   map[string]uint64 // dry run: .links entries that would be created, name -> inode

	noticeMu sync.Mutex
	notices  []Notice

	stop atomic.Bool // ctx done: start nothing new

	closer *closePool // closes the descriptors of replaced files (closer.go)

	// The link-count check (trust.go). nameCount: the names this run
	// saw of each inode with more than one link that is not a .links
	// entry. walkDone: every name of the walk was counted, so a file
	// whose links are not all counted is refused, no longer deferred.
	nameCount *inodeCounter
	walkDone  atomic.Bool
	deferMu   sync.Mutex
	deferred  []deferredFile
	badLinks  sync.Map // .links names reported as untrusted
}

func (r *run) notice(kind, path, link string, err error) {
	n := Notice{Kind: kind, Path: path, Link: link}
	if err != nil {
		n.Err = err.Error()
	}
	r.noticeMu.Lock()
	r.notices = append(r.notices, n)
	r.noticeMu.Unlock()
}

// storePathJob is one store path to walk.
type storePathJob struct {
	path    string // logical full path
	base    string
	narSize int64
	dbID    int64
	pending atomic.Int32 // the walk itself + each file job in flight
	top     uint64       // the inode of its top-level directory, when walked as one
	skipped bool         // not walked: unchanged since an earlier run (its record stays)
	rec     pathRecord
}

func (r *run) pathStep(t *storePathJob) {
	if t.pending.Add(-1) == 0 {
		r.finishPath(t)
		r.p.Add(t.narSize)
	}
}

// finishPath updates the linked-paths state once every file of t is
// done: a path walked as a top-level directory and left fully linked
// gets a record, any other loses its record.
func (r *run) finishPath(t *storePathJob) {
	if r.linked == nil || r.o.DryRun || t.skipped {
		return
	}
	var rec *linkedRec
	if t.top != 0 && !r.stop.Load() {
		rec = t.rec.finish(t.dbID, t.top, r.o.MinSize)
	}
	r.linked.mu.Lock()
	if rec != nil {
		r.linked.recs[t.base] = rec
		r.linked.changed = true
	} else if _, ok := r.linked.recs[t.base]; ok {
		delete(r.linked.recs, t.base)
		r.linked.changed = true
	}
	r.linked.mu.Unlock()
}

// skipUnchanged reports whether the path t, whose top-level directory is
// inode top, is unchanged since a run left it fully linked, and if so
// counts its files as that walk would.
func (r *run) skipUnchanged(t *storePathJob, top uint64) bool {
	if r.linked == nil || r.o.Full {
		return false
	}
	r.linked.mu.Lock()
	rec := r.linked.recs[t.base]
	r.linked.mu.Unlock()
	if rec == nil || !rec.unchanged(t.dbID, top, r.o.MinSize, r.inodes) {
		return false
	}
	atomic.AddInt64(&r.res.FilesSeen, rec.files+rec.small)
	atomic.AddInt64(&r.res.AlreadyLinked, rec.files)
	atomic.AddInt64(&r.res.SkippedSmall, rec.small)
	r.addInt(&r.res.PathsUnchanged, 1)
	return true
}

// fileJob is one regular file or symlink to hash and maybe link.
type fileJob struct {
	dir  *dirRef
	name string
	st   unix.Stat_t // the lstat; only st.Ino (from getdents) when byName
	task *storePathJob
	// byName: getdents called it a regular file and it was not stat'ed;
	// the worker opens it and takes its fstat (processRegular).
	byName bool
	// replaced: the file's name now links to the .links entry, so the
	// descriptor processRegular holds may be the inode's last reference.
	replaced bool
	// held: processRegular holds the file open (replace need not).
	held bool
}

func (r *run) run(ctx context.Context) (*Result, error) {
	res := r.res
	lay := r.s.Layout

	paths, err := r.selectPaths(ctx)
	if err != nil {
		return nil, err
	}

	r.storeFd, err = unix.Open(lay.RealStoreDir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("optimise: opening the store directory %s: %w", lay.RealStoreDir, err)
	}
	defer unix.Close(r.storeFd)
	var sst unix.Stat_t
	if err := unix.Fstat(r.storeFd, &sst); err != nil {
		return nil, fmt.Errorf("optimise: stat %s: %w", lay.RealStoreDir, err)
	}
	r.storeDev = sst.Dev
	r.storeUID = sst.Uid
	r.nameCount = newInodeCounter()
	r.endMarked = sys.DirEndMarked(r.storeFd, sst.Dev)
	r.storeDir = &dirRef{Dir: fs.Dir{Fd: r.storeFd, Path: lay.RealStoreDir, Fixed: true}}
	r.storeDir.refs.Store(1 << 30) // never closed through refs

	if err := r.openLinks(); err != nil {
		return nil, err
	}
	if r.linksFd >= 0 {
		defer unix.Close(r.linksFd)
	}
	if err := r.listStoreDir(); err != nil {
		return nil, err
	}
	r.sortByInode(paths)
	r.linked = loadLinkedState(r.linkedStatePath())
	if r.o.DryRun {
		r.virt = map[string]uint64{}
	} else {
		res.StaleTmpLinks = r.removeStaleTmpLinks()
		res.RestoredDirs = r.replayJournals()
		if err := r.openJournal(); err != nil {
			return nil, err
		}
		defer r.journal.Close()
	}

	tr := r.o.TempRoots
	if tr == nil && !r.o.DryRun {
		tr, err = lock.OpenTempRoots(lay.StateDir)
		if err != nil {
			if werr := fs.CheckWritableDir(lay.StateDir); werr != nil {
				return nil, fmt.Errorf("optimise: opening the temporary roots file: %w", werr)
			}
			hint := "run as root, or as the store's owner"
			if os.Geteuid() == 0 {
				hint = "check the permissions and attributes (lsattr) of " + filepath.Join(lay.StateDir, "temproots")
			}
			return nil, fmt.Errorf("optimise: opening the temporary roots file: %w (%s)", err, hint)
		}
		defer tr.Close()
	}

	var total int64
	for _, t := range paths {
		total += t.narSize
	}
	r.p.Phase("optimising", total, true)

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		<-ctx.Done()
		r.stop.Store(true)
	}()

	nWalk := max(2, runtime.GOMAXPROCS(0))
	nHash := r.o.Jobs
	if nHash <= 0 {
		// Two per core. More keep more reads in flight on a cold
		// cache (16 on 2 cores was faster there), but on a warm one the
		// extra linkers contend for the .links and store directory locks
		// in the kernel and burn the CPU: on the 63k-path store, 2 cores,
		// warm cache, -j 2: 19-22 s, -j 4: 22 s, -j 16: 26-29 s.
		nHash = 2 * runtime.GOMAXPROCS(0)
	}
	tasks := make(chan *storePathJob, 256)
	gate := make(chan gateItem, 64)
	jobs := make(chan []*fileJob, 64)

	// The feeder hands every path to the walkers. The walk only reads;
	// a path with files to link passes the gate (temporary root, then
	// validity rechecked, in batches) before any of them is touched. So a
	// run over an optimised store registers no root and sends no query.
	go func() {
		defer close(tasks)
		for _, p := range paths {
			t := &storePathJob{path: p.path, base: p.path[len(lay.StoreDir)+1:], narSize: p.narSize, dbID: p.dbID}
			t.pending.Store(1)
			select {
			case tasks <- t:
			case <-ctx.Done():
				return
			}
		}
	}()
	var gateErr error
	gateDone := make(chan struct{})
	go func() {
		defer close(gateDone)
		defer close(jobs)
		gateErr = r.gate(ctx, tr, gate, jobs)
		if gateErr != nil {
			r.stop.Store(true)
			cancel()
		}
	}()

	r.closer = newClosePool()
	var walkWG, hashWG sync.WaitGroup
	for range nWalk {
		walkWG.Add(1)
		go func() {
			defer walkWG.Done()
			var buf []dirent
			for t := range tasks {
				if !r.stop.Load() {
					var found []*fileJob
					buf = r.walkPath(t, &found, buf)
					if len(found) > 0 {
						gate <- gateItem{t, found}
					}
				}
				r.addInt(&r.res.Paths, 1)
				r.pathStep(t)
			}
		}()
	}
	for range nHash {
		hashWG.Add(1)
		go func() {
			defer hashWG.Done()
			h := r.newHasher()
			defer h.close()
			for js := range jobs {
				h.processBatch(js)
			}
		}()
	}
	walkWG.Wait()
	close(gate)
	<-gateDone
	hashWG.Wait()
	r.runDeferred(nHash)
	r.closer.wait()
	if !r.o.DryRun {
		r.removeOwnTmpLinks()
		r.saveLinkedState(paths)
	}

	res.Notices = r.notices
	sort.SliceStable(res.Notices, func(i, j int) bool {
		a, b := res.Notices[i], res.Notices[j]
		if a.Kind != b.Kind {
			return a.Kind < b.Kind
		}
		return a.Path < b.Path
	})
	if res.Notices == nil {
		res.Notices = []Notice{}
	}
	if gateErr != nil {
		return res, gateErr
	}
	if err := ctx.Err(); err != nil {
		return res, fmt.Errorf("optimise: interrupted: %w", err)
	}
	return res, nil
}

// target is a store path to optimise.
type target struct {
	path    string // logical full path
	narSize int64
	dbID    int64  // its ValidPaths id
	ino     uint64 // its top-level inode (sortByInode)
}

// selectPaths returns the logical store paths to optimise, sorted.
func (r *run) selectPaths(ctx context.Context) ([]target, error) {
	sd := r.s.Layout.StoreDir
	if len(r.o.Paths) == 0 {
		// Every valid path, in one read of the DB (no references).
		g, err := r.s.LoadGraph(ctx, db.GraphOptions{PathsOnly: true})
		if err != nil {
			return nil, err
		}
		all := make([]target, 0, g.Len())
		for i := range g.Len() {
			id := graph.PathID(i)
			p := g.Path(id)
			if _, err := storepath.Parse(sd, p); err != nil {
				continue // not a path of this store: never touch it
			}
			all = append(all, target{path: p, narSize: int64(g.NarSize[id]), dbID: g.DBID(id)})
		}
		slices.SortFunc(all, func(a, b target) int { return strings.Compare(a.path, b.path) })
		return all, nil
	}
	g, err := r.s.LoadGraph(ctx, db.GraphOptions{PathsOnly: true})
	if err != nil {
		return nil, err
	}
	seen := map[string]bool{}
	var paths []string
	for _, a := range r.o.Paths {
		p := a
		if r.s.Layout.RealStoreDir != sd && storepath.IsInStore(r.s.Layout.RealStoreDir, p) {
			p = sd + p[len(r.s.Layout.RealStoreDir):]
		}
		sp, _, err := storepath.ToStorePath(sd, filepath.Clean(p))
		if err != nil {
			return nil, fmt.Errorf("%w: %w", ErrNotValid, err)
		}
		if _, ok := g.Lookup(sp); !ok {
			return nil, fmt.Errorf("%w: %s is not registered in %s", ErrNotValid, sp, r.s.DB.Path)
		}
		if !seen[sp] {
			seen[sp] = true
			paths = append(paths, sp)
		}
	}
	sort.Strings(paths)
	out := make([]target, len(paths))
	for i, p := range paths {
		id, _ := g.Lookup(p)
		out[i] = target{path: p, narSize: int64(g.NarSize[id]), dbID: g.DBID(id)}
	}
	return out, nil
}

// openLinks opens (creating it unless DryRun) the .links directory and
// loads the inode numbers of its entries from the directory entries alone.
func (r *run) openLinks() error {
	ld := r.s.Layout.LinksDir()
	fd, err := unix.Open(ld, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err == unix.ENOENT && !r.o.DryRun {
		if err = unix.Mkdirat(r.storeFd, ".links", 0o755); err != nil && err != unix.EEXIST {
			return fmt.Errorf("%w: creating %s: %w", ErrLinksDir, ld, err)
		}
		fd, err = unix.Open(ld, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	}
	if err == unix.ENOENT && r.o.DryRun {
		// Nothing linked yet, and a dry run creates nothing.
		r.linksFd = -1
		r.inodes = newInodeSet(1024)
		r.names = newInodeSet(1024)
		return nil
	}
	if err != nil {
		return fmt.Errorf("%w: opening %s: %w", ErrLinksDir, ld, err)
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil || st.Dev != r.storeDev {
		unix.Close(fd)
		if err == nil {
			err = errors.New("it is on another file system than the store")
		}
		return fmt.Errorf("%w: %s: %w", ErrLinksDir, ld, err)
	}
	// A .links entry per distinct file of the store: size the sets from
	// the directory's size (ext4: about 72 bytes per entry) and list it
	// without a string per name.
	hint := int(min(max(st.Size/64, 1024), 4<<20))
	r.inodes = newInodeSet(hint)
	r.names = newInodeSet(hint)
	err = sys.ScanDirents(fd, func(name []byte, ino uint64, typ uint8) {
		r.inodes.add(ino)
		r.names.add(nameKey(name))
	})
	if err != nil {
		unix.Close(fd)
		return fmt.Errorf("%w: reading %s: %w", ErrLinksDir, ld, err)
	}
	r.linksFd = fd
	return nil
}

// nameKey is the key of a .links name in run.names: FNV-1a of the name.
// A collision only costs a lookup.
func nameKey[T ~string | ~[]byte](name T) uint64 {
	h := uint64(14695981039346656037)
	for i := 0; i < len(name); i++ {
		h ^= uint64(name[i])
		h *= 1099511628211
	}
	return h
}

// listStoreDir reads the store directory's entries once: their inode
// numbers and types let the walk skip already-linked top-level files and
// open top-level directories without a stat each.
func (r *run) listStoreDir() error {
	fd, err := unix.Openat(r.storeFd, ".", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("optimise: opening %s: %w", r.s.Layout.RealStoreDir, err)
	}
	defer unix.Close(fd)
	ents, err := readDirents(fd, nil)
	if err != nil {
		return fmt.Errorf("optimise: reading %s: %w", r.s.Layout.RealStoreDir, err)
	}
	r.top = make(map[string]dirent, len(ents))
	for _, e := range ents {
		r.top[e.Name] = e
	}
	return nil
}

// sortByInode orders the paths by the inode number of their top-level
// entry: roughly the order they were written in, and so the order their
// inodes and contents lie on disk. Reading in that order instead of by
// name turns a cold run's random reads into mostly sequential ones. The
// result does not depend on the order.
func (r *run) sortByInode(paths []target) {
	off := len(r.s.Layout.StoreDir) + 1
	for i := range paths {
		paths[i].ino = 1<<64 - 1
		if e, ok := r.top[paths[i].path[off:]]; ok {
			paths[i].ino = e.Ino
		}
	}
	slices.SortFunc(paths, func(a, b target) int {
		if c := cmp.Compare(a.ino, b.ino); c != 0 {
			return c
		}
		return strings.Compare(a.path, b.path)
	})
}

// removeStaleTmpLinks removes .tmp-link-PID-N entries of the store
// directory whose process is dead: left by a killed optimiser (ours or
// Nix's). They are only extra hard links to .links entries.
func (r *run) removeStaleTmpLinks() int {
	n := 0
	for name := range r.top {
		rest, ok := strings.CutPrefix(name, ".tmp-link-")
		if !ok {
			continue
		}
		pidStr, _, ok := strings.Cut(rest, "-")
		pid, err := strconv.Atoi(pidStr)
		if !ok || err != nil || pid <= 0 || pid == r.pid {
			continue
		}
		if err := unix.Kill(pid, 0); err != unix.ESRCH {
			continue // alive (or not ours to judge)
		}
		if unix.Unlinkat(r.storeFd, name, 0) == nil {
			n++
		}
	}
	return n
}

// gateItem is a walked store path with the files it has to link.
type gateItem struct {
	t    *storePathJob
	jobs []*fileJob
}

func (r *run) jobDone(j *fileJob) {
	j.dir.unref()
	r.pathStep(j.task)
}

// gate registers each store path that has files to link as a temporary
// root, then rechecks its validity (one query per batch), and passes the
// files of the paths still valid on to the hashers. The files of a path
// that was collected meanwhile are dropped untouched.
func (r *run) gate(ctx context.Context, tr *lock.TempRoots, in <-chan gateItem, out chan<- []*fileJob) error {
	const batch = 128
	var pend []gateItem
	var failed error
	drop := func(items []gateItem) {
		for _, it := range items {
			for _, j := range it.jobs {
				r.jobDone(j)
			}
		}
	}
	flush := func() {
		items := pend
		pend = nil
		if failed != nil || r.stop.Load() {
			drop(items)
			return
		}
		var valid map[string]bool
		if !r.o.DryRun {
			part := make([]string, len(items))
			for i, it := range items {
				part[i] = it.t.path
			}
			if tr != nil {
				if err := tr.AddAll(ctx, part); err != nil {
					if ctx.Err() == nil {
						failed = fmt.Errorf("optimise: registering temporary roots: %w", err)
					}
					drop(items)
					return
				}
			}
			var err error
			valid, err = r.s.DB.ValidAmong(ctx, part)
			if err != nil {
				if ctx.Err() == nil {
					failed = fmt.Errorf("optimise: rechecking validity: %w", err)
				}
				drop(items)
				return
			}
		}
		if r.journal != nil {
			// The directories that renames may touch, in one write
			// before any of their files is handed out.
			var dirs []*fs.Dir
			for _, it := range items {
				if valid == nil || valid[it.t.path] {
					for _, j := range it.jobs {
						if n := len(dirs); n == 0 || dirs[n-1] != &j.dir.Dir {
							dirs = append(dirs, &j.dir.Dir)
						}
					}
				}
			}
			r.journal.NoteAll(dirs)
		}
		for _, it := range items {
			if valid != nil && !valid[it.t.path] {
				r.addInt(&r.res.PathsGone, 1)
				drop([]gateItem{it})
				continue
			}
			for s := 0; s < len(it.jobs); s += batchSize {
				out <- it.jobs[s:min(s+batchSize, len(it.jobs))]
			}
		}
	}
	for it := range in {
		pend = append(pend, it)
		// Batch what is waiting, but never hold work back when the
		// walkers have nothing more to offer right now.
		for len(pend) < batch {
			select {
			case more, ok := <-in:
				if !ok {
					flush()
					return failed
				}
				pend = append(pend, more)
				continue
			default:
			}
			break
		}
		flush()
	}
	flush()
	return failed
}

func (r *run) addInt(p *int, n int) {
	r.noticeMu.Lock()
	*p += n
	r.noticeMu.Unlock()
}

func (r *run) realPath(d *dirRef, name string) string {
	return d.Path + "/" + name
}

// walkPath walks one store path and queues its candidate files.
func (r *run) walkPath(t *storePathJob, jobs *[]*fileJob, buf []dirent) []dirent {
	if e, ok := r.top[t.base]; ok {
		if r.inodes.has(e.Ino) {
			atomic.AddInt64(&r.res.FilesSeen, 1)
			atomic.AddInt64(&r.res.AlreadyLinked, 1)
			return buf
		}
		if e.Type == unix.DT_DIR {
			if r.skipUnchanged(t, e.Ino) {
				t.skipped = true
				return buf
			}
			t.top = e.Ino
			return r.walkDir(r.storeDir, t.base, t, jobs, buf)
		}
	}
	var st unix.Stat_t
	if err := sys.LstatAt(r.storeFd, t.base, &st); err != nil {
		if err != unix.ENOENT {
			r.notice(KindError, r.realPath(r.storeDir, t.base), "", err)
		}
		return buf
	}
	return r.consider(r.storeDir, t.base, &st, t, jobs, buf)
}

// consider handles one node: recurse into a directory, queue a candidate
// file, skip the rest.
func (r *run) consider(d *dirRef, name string, st *unix.Stat_t, t *storePathJob, jobs *[]*fileJob, buf []dirent) []dirent {
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFDIR:
		return r.walkDir(d, name, t, jobs, buf)
	case unix.S_IFREG, unix.S_IFLNK:
		switch r.candidate(d, name, st, t) {
		case candLink:
		case candLinked:
			t.rec.linked(st.Ino)
			return buf
		case candSmall:
			t.rec.skippedSmall()
			return buf
		default:
			t.rec.spoil()
			return buf
		}
	default:
		return buf
	}
	r.queue(d, &fileJob{dir: d, name: name, st: *st, task: t}, jobs)
	return buf
}

// queue adds a file job of d to jobs.
func (r *run) queue(d *dirRef, j *fileJob, jobs *[]*fileJob) {
	d.ref()
	j.task.pending.Add(1)
	j.task.rec.queued()
	*jobs = append(*jobs, j)
}

// What candidate says of a file.
type candVerdict int

const (
	candLink       candVerdict = iota // hash it and link it
	candLinked                        // already linked into .links
	candSmall                         // under MinSize
	candSuspicious                    // a writable regular file
	candRefused                       // another owner or mode (trust.go)
)

// candidate applies the checks a regular file or symlink (lstat st) of
// store path t passes before it is hashed: a file writable by its owner
// is reported as suspicious (as Nix does); the rest count as seen, and
// those already linked or under MinSize are counted and skipped; one
// with another owner or a mode other than 0444/0555 is refused and
// reported. A name of an inode with more links is counted for the
// link-count check (trust.go).
func (r *run) candidate(d *dirRef, name string, st *unix.Stat_t, t *storePathJob) candVerdict {
	if st.Mode&unix.S_IFMT == unix.S_IFREG && st.Mode&unix.S_IWUSR != 0 {
		r.notice(KindSuspicious, r.realPath(d, name), "", nil)
		return candSuspicious
	}
	atomic.AddInt64(&r.res.FilesSeen, 1)
	if st.Nlink > 1 && r.inodes.has(st.Ino) {
		atomic.AddInt64(&r.res.AlreadyLinked, 1)
		return candLinked
	}
	if st.Size < r.o.MinSize {
		atomic.AddInt64(&r.res.SkippedSmall, 1)
		return candSmall
	}
	if r.untrusted(st) {
		r.refuse(d, name, t, st, 0)
		return candRefused
	}
	if st.Nlink > 1 {
		r.nameCount.add(st.Ino)
	}
	return candLink
}

// walkDir walks the directory name in d, skipping entries whose inode is
// already in .links without a stat.
func (r *run) walkDir(parent *dirRef, name string, t *storePathJob, jobs *[]*fileJob, buf []dirent) []dirent {
	disp := r.realPath(parent, name)
	fd, err := sys.OpenAt(parent.Fd, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC)
	if err != nil {
		if err != unix.ENOENT {
			r.notice(KindError, disp, "", err)
		}
		t.rec.spoil()
		return buf
	}
	d := &dirRef{Dir: fs.Dir{Fd: fd, Path: disp}, r: r}
	d.refs.Store(1)
	defer d.unref()
	start := len(buf)
	buf, err = sys.ReadDirentsMarked(fd, r.endMarked, buf)
	if err != nil {
		// ENOENT: the directory was deleted under us (a collector
		// removing a dead path that was not registered yet).
		if err != unix.ENOENT {
			r.notice(KindError, disp, "", err)
		}
		t.rec.spoil()
		return buf[:start]
	}
	ents := buf[start:]
	// Inode order is close to disk order (see sortByInode).
	sort.Slice(ents, func(i, j int) bool { return ents[i].Ino < ents[j].Ino })
	var subdirs []string
	for _, e := range ents {
		if r.inodes.has(e.Ino) {
			atomic.AddInt64(&r.res.FilesSeen, 1)
			atomic.AddInt64(&r.res.AlreadyLinked, 1)
			t.rec.linked(e.Ino)
			continue
		}
		if e.Type == unix.DT_DIR {
			subdirs = append(subdirs, e.Name)
			continue
		}
		if e.Type != unix.DT_REG && e.Type != unix.DT_LNK && e.Type != unix.DT_UNKNOWN {
			continue
		}
		if r.stop.Load() {
			break
		}
		if e.Type == unix.DT_REG {
			// No stat here: the worker's open and fstat tell it all.
			j := &fileJob{dir: d, name: e.Name, task: t, byName: true}
			j.st.Ino = e.Ino
			r.queue(d, j, jobs)
			continue
		}
		var fst unix.Stat_t
		if err := sys.LstatAt(fd, e.Name, &fst); err != nil {
			if err != unix.ENOENT {
				r.notice(KindError, disp+"/"+e.Name, "", err)
			}
			t.rec.spoil()
			continue
		}
		if fst.Mode&unix.S_IFMT == unix.S_IFDIR {
			subdirs = append(subdirs, e.Name)
			continue
		}
		r.consider(d, e.Name, &fst, t, jobs, nil)
	}
	buf = buf[:start]
	for _, sd := range subdirs {
		if r.stop.Load() {
			break
		}
		buf = r.walkDir(d, sd, t, jobs, buf)
	}
	return buf
}

// process hashes one file and links it.
func (r *run) process(j *fileJob) {
	if r.inodes.has(j.st.Ino) {
		if j.byName {
			atomic.AddInt64(&r.res.FilesSeen, 1)
		}
		atomic.AddInt64(&r.res.AlreadyLinked, 1)
		j.task.rec.settle(j.st.Ino)
		return
	}
	if j.byName {
		r.processRegular(j)
		return
	}
	disp := r.realPath(j.dir, j.name)
	st := j.st
	h, err := nar.HashNodeAt(j.dir.Fd, j.name, disp, &st)
	for try := 0; try < 3 && nar.IsChanged(err); try++ {
		// Another optimiser replaced it by a link meanwhile: look again.
		h, st, err = nar.HashPathAt(j.dir.Fd, j.name, disp)
	}
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return // vanished
		}
		r.notice(KindError, disp, "", fmt.Errorf("hashing: %w", err))
		return
	}
	if st.Mode&unix.S_IFMT != j.st.Mode&unix.S_IFMT || (st.Mode&unix.S_IFMT == unix.S_IFREG && st.Mode&unix.S_IWUSR != 0) {
		return // replaced meanwhile by something we would not link
	}
	atomic.AddInt64(&r.res.FilesHashed, 1)
	atomic.AddInt64(&r.res.BytesHashed, st.Size)
	r.files.Hashed(st.Size)
	r.link(j, h.Base32(), &st)
}

// processRegular handles a file getdents called regular. One descriptor
// serves for its fstat and its contents, and stays open until the file is
// linked: when the rename replaces the file's last name, its inode is then
// released (its blocks freed) by the close, not inside rename(2) with the
// kernel's rename locks held, so the workers' frees run in parallel.
func (r *run) processRegular(j *fileJob) { r.processRegularStat(j, false) }

// processRegularStat is processRegular for a file that was counted
// already (candidate applied to its lstat) when counted is set: then it
// is not counted again, and a file found writable now is left alone
// without a second notice.
func (r *run) processRegularStat(j *fileJob, counted bool) {
	disp := r.realPath(j.dir, j.name)
	fd, err := sys.OpenAt(j.dir.Fd, j.name, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC|unix.O_NONBLOCK|unix.O_NOCTTY)
	switch err {
	case nil:
	case unix.ENOENT:
		return // vanished
	case unix.ELOOP:
		// No longer a regular file: look at what it is now.
		var st unix.Stat_t
		if err := sys.LstatAt(j.dir.Fd, j.name, &st); err == nil && st.Mode&unix.S_IFMT == unix.S_IFLNK {
			if counted || r.considered(j, &st) {
				j.byName = false
				j.st = st
				r.process(j)
			}
		}
		return
	default:
		r.notice(KindError, disp, "", fmt.Errorf("opening: %w", err))
		return
	}
	j.held = true
	defer func() {
		if j.replaced {
			r.closeLater(fd)
		} else {
			unix.Close(fd)
		}
	}()
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		r.notice(KindError, disp, "", fmt.Errorf("fstat: %w", err))
		return
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		return // replaced since getdents by something we would not link
	}
	if counted {
		if st.Mode&unix.S_IWUSR != 0 {
			return
		}
	} else if !r.considered(j, &st) {
		return
	}
	h, err := nar.HashOpenFile(fd, &st, disp)
	if err != nil {
		r.notice(KindError, disp, "", fmt.Errorf("hashing: %w", err))
		return
	}
	atomic.AddInt64(&r.res.FilesHashed, 1)
	atomic.AddInt64(&r.res.BytesHashed, st.Size)
	r.files.Hashed(st.Size)
	r.link(j, h.Base32(), &st)
}

// considered applies candidate to the file of j as a worker found it
// (stat st): it reports whether to hash it, and settles the job of a
// file that is linked already or too small.
func (r *run) considered(j *fileJob, st *unix.Stat_t) bool {
	switch r.candidate(j.dir, j.name, st, j.task) {
	case candLink:
		return true
	case candLinked:
		j.task.rec.settle(st.Ino)
	case candSmall:
		j.task.rec.settleSmall()
	}
	return false
}

// link makes the file of j (whose NAR hash is lname and whose lstat is
// st) share its inode with .links/lname, following Nix's steps. Before
// the file becomes the entry or is replaced by a link to it, the file
// and an entry that exists must pass the checks of trust.go.
func (r *run) link(j *fileJob, lname string, st *unix.Stat_t) {
	d, name := j.dir, j.name
	disp := r.realPath(d, name)
	linkDisp := r.s.Layout.LinksDir() + "/" + lname
	for attempt := 0; attempt < 5; attempt++ {
		var lst unix.Stat_t
		var err error = unix.ENOENT
		cached := false
		// A file with more links is looked up even where the name is
		// not known: another optimiser may have made it the entry since
		// .links was listed (then the extra link is explained).
		if r.linksFd >= 0 && (r.names.has(nameKey(lname)) || st.Nlink > 1) {
			if v, ok := r.verified.Load(lname); ok {
				v.(linkInfo).fill(&lst)
				err, cached = nil, true
			} else {
				err = sys.LstatAt(r.linksFd, lname, &lst)
			}
		}
		if err == unix.ENOENT {
			if r.o.DryRun {
				r.virtMu.Lock()
				ino, ok := r.virt[lname]
				r.virtMu.Unlock()
				if ok && ino == st.Ino {
					return
				}
				if !r.mayLink(j, lname, st) {
					return
				}
				r.virtMu.Lock()
				ino, ok = r.virt[lname]
				if !ok {
					r.virt[lname] = st.Ino
				}
				r.virtMu.Unlock()
				if !ok {
					r.inodes.add(st.Ino)
					atomic.AddInt64(&r.res.LinksCreated, 1)
				} else if ino != st.Ino {
					r.counted(st)
				}
				return
			}
			if !r.mayLink(j, lname, st) {
				return
			}
			err := r.sys.linkat(d.Fd, name, r.linksFd, lname, 0)
			switch err {
			case nil:
				r.inodes.add(st.Ino)
				r.names.add(nameKey(lname))
				r.verified.Store(lname, infoOf(st))
				atomic.AddInt64(&r.res.LinksCreated, 1)
				j.task.rec.settle(st.Ino)
				return
			case unix.EEXIST:
				r.names.add(nameKey(lname))
				continue // it exists (made by another process): use it
			case unix.ENOSPC:
				atomic.AddInt64(&r.res.NoSpace, 1)
				r.notice(KindNoSpace, disp, linkDisp, err)
				return
			case unix.ENOENT:
				return // the file vanished
			case unix.EMLINK:
				atomic.AddInt64(&r.res.TooManyLinks, 1)
				r.notice(KindTooManyLinks, disp, linkDisp, err)
				return
			default:
				r.notice(KindError, disp, linkDisp, fmt.Errorf("creating the .links entry: %w", err))
				return
			}
		}
		if err != nil {
			r.notice(KindError, disp, linkDisp, fmt.Errorf("lstat of the .links entry: %w", err))
			return
		}
		if lst.Ino == st.Ino {
			r.inodes.add(st.Ino)
			j.task.rec.settle(st.Ino)
			return // already linked
		}
		// An entry of this run's making or checking passed already.
		if !cached && r.untrustedEntry(&lst) {
			r.refuseLink(j, lname, &lst)
			return
		}
		if !r.mayLink(j, lname, st) {
			return
		}
		ok, gone := r.entryOK(lname, &lst, st)
		if gone {
			continue // collected meanwhile: create it again
		}
		if !ok {
			if r.replaceCorrupted(d, name, lname, st, &lst) {
				continue // another worker replaced it meanwhile: look again
			}
			return
		}
		if r.o.DryRun {
			r.counted(st)
			return
		}
		switch r.replace(j, lname, st, &lst) {
		case replRetry:
			continue
		default:
			return
		}
	}
}

// linkInfo is what link needs of a .links entry's lstat: kept for the
// entries this run made or checked, it stands in for another lstat. The
// entry can only change under it by being removed (a collector removes
// entries with a link count of 1; nothing rewrites a good one), and then
// the link(2) to it fails with ENOENT and the name is looked up again.
type linkInfo struct {
	ino  uint64
	size int64
	mode uint32
}

func infoOf(st *unix.Stat_t) linkInfo { return linkInfo{ino: st.Ino, size: st.Size, mode: st.Mode} }

func (l linkInfo) fill(st *unix.Stat_t) { st.Ino, st.Size, st.Mode = l.ino, l.size, l.mode }

func (r *run) counted(st *unix.Stat_t) {
	atomic.AddInt64(&r.res.FilesLinked, 1)
	atomic.AddInt64(&r.res.BytesFreed, st.Size)
	atomic.AddInt64(&r.res.BlocksFreed, st.Blocks)
	r.files.Linked(st.Size)
}

// entryOK checks that the existing .links entry (lstat lst) holds what
// its name says, as a file with lstat st does: same type, executable bit
// and size, and (once per entry and run) the NAR hash of its contents.
// gone reports that the entry vanished meanwhile.
func (r *run) entryOK(lname string, lst, st *unix.Stat_t) (ok, gone bool) {
	if lst.Mode&unix.S_IFMT != st.Mode&unix.S_IFMT || lst.Size != st.Size {
		return false, false
	}
	if st.Mode&unix.S_IFMT == unix.S_IFREG && (lst.Mode&unix.S_IXUSR != 0) != (st.Mode&unix.S_IXUSR != 0) {
		return false, false
	}
	if _, ok := r.verified.Load(lname); ok {
		return true, false
	}
	h, hst, err := nar.HashPathAt(r.linksFd, lname, r.s.Layout.LinksDir()+"/"+lname)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return false, true
		}
		return false, false
	}
	if hst.Ino != lst.Ino {
		return false, true // replaced meanwhile: look again
	}
	if h.Base32() != lname {
		return false, false
	}
	r.verified.Store(lname, infoOf(lst))
	return true, false
}

// replaceCorrupted reports a corrupted .links entry (whose lstat was bad)
// and, unless DryRun, atomically puts the (good) file in its place, as
// Nix removes it and links the file anew. The file itself is not touched.
// Replacements are serialised; retry reports that the entry is no longer
// the one found corrupted, so the caller should look again.
func (r *run) replaceCorrupted(d *dirRef, name, lname string, st, bad *unix.Stat_t) (retry bool) {
	r.corruptMu.Lock()
	defer r.corruptMu.Unlock()
	var now unix.Stat_t
	if err := sys.LstatAt(r.linksFd, lname, &now); err != nil || now.Ino != bad.Ino {
		return true
	}
	if r.o.DryRun {
		// Simulate the replacement: report the entry once; the first file
		// would take its place, later ones would be linked to it.
		if r.dryCorrupt == nil {
			r.dryCorrupt = map[string]uint64{}
		}
		if ino, seen := r.dryCorrupt[lname]; seen {
			if ino != st.Ino {
				r.counted(st)
			}
			return false
		}
		r.dryCorrupt[lname] = st.Ino
		r.inodes.add(st.Ino)
	}
	disp := r.realPath(d, name)
	linkDisp := r.s.Layout.LinksDir() + "/" + lname
	r.notice(KindCorrupted, disp, linkDisp, errors.New("the .links entry does not match its name; files already linked to it are damaged: run 'nix-store --verify --check-contents --repair'"))
	if r.o.DryRun {
		return false
	}
	tmp := r.tmpName()
	if err := r.sys.linkat(d.Fd, name, r.storeFd, tmp, 0); err != nil {
		r.notice(KindError, disp, linkDisp, fmt.Errorf("replacing the corrupted .links entry: %w", err))
		return false
	}
	if err := r.sys.renameat(r.storeFd, tmp, r.linksFd, lname); err != nil {
		unix.Unlinkat(r.storeFd, tmp, 0)
		r.notice(KindError, disp, linkDisp, fmt.Errorf("replacing the corrupted .links entry: %w", err))
		return false
	}
	unix.Unlinkat(r.storeFd, tmp, 0) // in case both names were one inode already
	r.inodes.add(st.Ino)
	r.verified.Store(lname, infoOf(st))
	return false
}

type replOutcome int

const (
	replDone replOutcome = iota
	replRetry
)

// replace atomically replaces the file of j (lstat st) by a hard link to
// .links/lname (lstat lst): a temporary link in the store directory,
// renamed over it (fs.ReplaceWithLink).
func (r *run) replace(j *fileJob, lname string, st, lst *unix.Stat_t) replOutcome {
	d, name := j.dir, j.name
	disp := r.realPath(d, name)
	linkDisp := r.s.Layout.LinksDir() + "/" + lname
	tmp := r.tmpName()
	// Hold the inode being replaced, so that it is freed by the close
	// (in the pool, see closer.go), not inside rename(2).
	pin := -1
	if j.byName && !j.held {
		if fd, err := sys.OpenAt(d.Fd, name, unix.O_PATH|unix.O_NOFOLLOW|unix.O_CLOEXEC); err == nil {
			pin = fd
		}
	}
	ops := fs.LinkOps{Linkat: r.sys.linkat, Renameat: r.sys.renameat}
	step, err := fs.ReplaceWithLink(ops, &d.Dir, r.journal, name, r.linksFd, lname, r.storeFd, tmp)
	if pin >= 0 {
		if err == nil {
			r.closeLater(pin)
		} else {
			unix.Close(pin)
		}
	}
	if step == fs.StepLink {
		switch err {
		case unix.EMLINK:
			atomic.AddInt64(&r.res.TooManyLinks, 1)
			r.notice(KindTooManyLinks, disp, linkDisp, err)
			return replDone
		case unix.ENOENT:
			r.verified.Delete(lname) // look it up again, or make it anew
			return replRetry         // a collector removed the entry: start over
		case unix.ENOSPC:
			atomic.AddInt64(&r.res.NoSpace, 1)
			r.notice(KindNoSpace, disp, linkDisp, err)
			return replDone
		default:
			r.notice(KindError, disp, linkDisp, fmt.Errorf("creating a temporary link %s: %w", tmp, err))
			return replDone
		}
	}
	if err != nil {
		switch err {
		case unix.EMLINK:
			atomic.AddInt64(&r.res.TooManyLinks, 1)
			r.notice(KindTooManyLinks, disp, linkDisp, err)
		case unix.ENOENT:
			// The file or the temporary link vanished (a collector).
		default:
			r.notice(KindError, disp, linkDisp, fmt.Errorf("renaming %s over it: %w", tmp, err))
		}
		return replDone
	}
	// rename(2) does nothing when both names are links to one inode
	// already (another optimiser linked the file meanwhile): then the
	// temporary link stays. removeOwnTmpLinks drops such leftovers at
	// the end of the run, instead of a lookup after every rename.
	r.counted(st)
	j.replaced = true
	j.task.rec.settle(lst.Ino)
	return replDone
}

// removeOwnTmpLinks removes this run's temporary links still in the
// store directory (see replace); a killed run's are removed by the next
// (removeStaleTmpLinks).
func (r *run) removeOwnTmpLinks() {
	fd, err := unix.Openat(r.storeFd, ".", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return
	}
	defer unix.Close(fd)
	ents, _ := readDirents(fd, nil)
	prefix := fmt.Sprintf(".tmp-link-%d-", r.pid)
	for _, e := range ents {
		if strings.HasPrefix(e.Name, prefix) {
			unix.Unlinkat(r.storeFd, e.Name, 0)
		}
	}
}

func (r *run) tmpName() string {
	return fmt.Sprintf(".tmp-link-%d-%d", r.pid, rand.Int32())
}
