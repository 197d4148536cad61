package optimise

import (
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"

	"storekeeper/internal/sys"
	"storekeeper/report"
	"storekeeper/store/fs"
)

// Linking spreads an inode: every store file replaced by a link to a
// .links entry becomes that inode. So a file is only made an entry, or
// replaced by a link to one, when the store's owner alone controls both
// the file's inode and the entry's:
//
//   - owner: the store directory's owner (root on a multi-user install,
//     the user on a single-user one);
//   - mode (regular files): 0444 or 0555, with no setuid, setgid or
//     sticky bit and no write bit. A file writable by its owner is
//     skipped as suspicious, as Nix does (KindSuspicious); any other
//     difference is a refusal;
//   - link count: an entry's inode may have any number of names (those
//     are the store's files linked to it). A file whose inode is not an
//     entry must have one link, or only names this run saw in the store
//     paths it walked (a builder's hard links inside an output, or the
//     names left by an optimise whose .links was deleted since). Names
//     are counted as files are looked at; a file whose extra links are
//     not all counted yet waits (deferredFile) until the whole walk is
//     counted, and is refused if they still are not all store names.
//     With PATH arguments only the names in those paths count.
//
// A file or entry failing a check is left as it is (no link, no chmod,
// no rename), counted in Result.Refused and reported (KindRefused,
// KindUntrustedLink) in verify --metadata's words (store.MetaProblem).
// Files whose inode is already an entry are skipped by inode number
// without a stat and are not checked: verify --metadata reports those.
//
// The checks use the stat each file is hashed with and the lstat of an
// existing entry that linking needs anyway; only a file with more than
// one link that is not an entry costs more (an lstat of its entry, and
// for a deferred one, its directory's path opened again and an lstat).
// On a store where no file has outside links (every store Nix writes),
// every file gets the verdict Nix's optimise gives it, and the same
// files are linked.

// untrusted reports whether the owner or the mode of a file (stat st)
// fails the checks.
func (r *run) untrusted(st *unix.Stat_t) bool {
	if st.Uid != r.storeUID {
		return true
	}
	if st.Mode&unix.S_IFMT == unix.S_IFLNK {
		return false
	}
	return st.Mode&0o7777 != fs.Nix.Want(st.Mode)
}

// untrustedEntry reports whether an existing .links entry (lstat lst) of
// a type a file can be linked to fails the checks (a directory or other
// odd entry is left to entryOK, which calls it corrupted).
func (r *run) untrustedEntry(lst *unix.Stat_t) bool {
	switch lst.Mode & unix.S_IFMT {
	case unix.S_IFREG, unix.S_IFLNK:
		return r.untrusted(lst)
	}
	return false
}

// namesExplain reports whether every link of the file with stat st is a
// known name: it has one, or its inode is a .links entry, or this run
// counted as many names of it in the store paths; names is that count.
func (r *run) namesExplain(st *unix.Stat_t) (ok bool, names uint64) {
	if st.Nlink <= 1 || r.inodes.has(st.Ino) {
		return true, uint64(st.Nlink)
	}
	n := r.nameCount.get(st.Ino)
	return n >= uint64(st.Nlink), n
}

// mayLink reports whether the file of j (stat st, NAR hash lname) may
// become the .links entry or be replaced by a link to it. If not, it
// is refused and reported, or, while names of its inode may still be
// counted, deferred (runDeferred links or refuses it at the end).
func (r *run) mayLink(j *fileJob, lname string, st *unix.Stat_t) bool {
	if r.untrusted(st) {
		r.refuse(j.dir, j.name, j.task, st, 0)
		return false
	}
	ok, names := r.namesExplain(st)
	if ok {
		return true
	}
	if !r.walkDone.Load() {
		r.deferFile(j, lname, st)
		return false
	}
	r.refuse(j.dir, j.name, j.task, st, names)
	return false
}

// storeFile returns the logical path of the file name in d, which belongs
// to store path t, and its path relative to t ("" for t itself).
func (r *run) storeFile(d *dirRef, name string, t *storePathJob) (full, file string) {
	rel, _ := strings.CutPrefix(r.realPath(d, name), r.s.Layout.RealStoreDir+"/"+t.base)
	file = strings.TrimPrefix(rel, "/")
	if file == "" {
		return t.path, ""
	}
	return t.path + "/" + file, file
}

func (r *run) inodeInfo(st *unix.Stat_t, names uint64) *InodeInfo {
	return &InodeInfo{UID: st.Uid, StoreUID: r.storeUID, Mode: fmt.Sprintf("%04o", st.Mode&0o7777),
		Nlink: uint64(st.Nlink), StoreNames: names}
}

// refuse reports the file name in d (of store path t, stat st) as left
// alone; names is the count of its store names when its link count
// failed (0 when its owner or mode did).
func (r *run) refuse(d *dirRef, name string, t *storePathJob, st *unix.Stat_t, names uint64) {
	atomic.AddInt64(&r.res.Refused, 1)
	full, file := r.storeFile(d, name, t)
	q := report.Name(full)
	probs := fs.OwnerModeProblems(nil, q, st, r.storeUID)
	if len(probs) == 0 {
		p := fs.ForeignLinkProblem(q, uint64(st.Nlink), names)
		if len(r.o.Paths) > 0 {
			p.Message += " (only the paths given were looked at: a run over the whole store may find the others)"
		}
		probs = append(probs, p)
	}
	r.noticeMu.Lock()
	r.notices = append(r.notices, Notice{Kind: KindRefused, Path: r.realPath(d, name), StorePath: t.path, File: file,
		Inode: r.inodeInfo(st, names), Problems: probs})
	r.noticeMu.Unlock()
}

// refuseLink counts the file of j as left alone because its .links entry
// lname (lstat lst) fails the checks, and reports the entry once.
func (r *run) refuseLink(j *fileJob, lname string, lst *unix.Stat_t) {
	atomic.AddInt64(&r.res.Refused, 1)
	if _, seen := r.badLinks.LoadOrStore(lname, true); seen {
		return
	}
	linkDisp := r.s.Layout.LinksDir() + "/" + lname
	_, file := r.storeFile(j.dir, j.name, j.task)
	r.noticeMu.Lock()
	r.notices = append(r.notices, Notice{Kind: KindUntrustedLink, Path: r.realPath(j.dir, j.name), Link: linkDisp,
		StorePath: j.task.path, File: file, Inode: r.inodeInfo(lst, 0),
		Problems: fs.OwnerModeProblems(nil, report.Name(linkDisp), lst, r.storeUID)})
	r.noticeMu.Unlock()
}

// deferredFile is a hashed file whose extra links were not all counted
// as store names when its turn came. Its directory is released (a store
// whose .links was deleted can have a deferred file in most of its
// directories) and opened again by its path when the walk is done.
type deferredFile struct {
	task  *storePathJob
	dir   string // relative to the store directory; "" for the store directory
	name  string
	ino   uint64
	lname string
}

// deferFile defers the file of j (stat st, hash lname). Its store path
// stays pending (not finished, not recorded) until runDeferred is done
// with it.
func (r *run) deferFile(j *fileJob, lname string, st *unix.Stat_t) {
	dir := ""
	if !j.dir.Fixed {
		dir, _ = strings.CutPrefix(j.dir.Path, r.s.Layout.RealStoreDir+"/")
	}
	j.task.pending.Add(1)
	r.deferMu.Lock()
	r.deferred = append(r.deferred, deferredFile{task: j.task, dir: dir, name: j.name, ino: st.Ino, lname: lname})
	r.deferMu.Unlock()
}

// runDeferred marks the walk as counted and links (or refuses) the
// deferred files with jobs workers, a directory at a time. It runs after
// every file job is done, while the paths are still temporary roots.
func (r *run) runDeferred(jobs int) {
	r.walkDone.Store(true)
	list := r.deferred
	r.deferred = nil
	if len(list) == 0 {
		return
	}
	slices.SortFunc(list, func(a, b deferredFile) int {
		if c := strings.Compare(a.dir, b.dir); c != 0 {
			return c
		}
		return strings.Compare(a.name, b.name)
	})
	groups := make(chan []deferredFile)
	var wg sync.WaitGroup
	for range max(1, jobs) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for g := range groups {
				r.deferredDir(g)
			}
		}()
	}
	for i := 0; i < len(list); {
		k := i + 1
		for k < len(list) && list[k].dir == list[i].dir {
			k++
		}
		groups <- list[i:k]
		i = k
	}
	close(groups)
	wg.Wait()
}

// deferredDir handles deferred files of one directory.
func (r *run) deferredDir(files []deferredFile) {
	defer func() {
		for _, f := range files {
			r.pathStep(f.task)
		}
	}()
	if r.stop.Load() {
		return
	}
	d := r.storeDir
	if rel := files[0].dir; rel != "" {
		fd, err := fs.OpenBeneath(r.storeFd, rel)
		if err != nil {
			if err != unix.ENOENT {
				r.notice(KindError, r.s.Layout.RealStoreDir+"/"+rel, "", err)
			}
			for _, f := range files {
				f.task.rec.spoil()
			}
			return
		}
		d = &dirRef{Dir: fs.Dir{Fd: fd, Path: r.s.Layout.RealStoreDir + "/" + rel}, r: r}
		d.refs.Store(1)
		defer d.unref()
	}
	for _, f := range files {
		if r.stop.Load() {
			return
		}
		var st unix.Stat_t
		if err := sys.LstatAt(d.Fd, f.name, &st); err != nil {
			if err != unix.ENOENT {
				r.notice(KindError, r.realPath(d, f.name), "", fmt.Errorf("lstat: %w", err))
			}
			f.task.rec.spoil()
			continue
		}
		if st.Ino != f.ino {
			// Replaced meanwhile (another optimiser): the next run
			// looks at it again.
			f.task.rec.spoil()
			continue
		}
		r.link(&fileJob{dir: d, name: f.name, st: st, task: f.task}, f.lname, &st)
	}
}

// inodeCounter counts names per inode number; safe for concurrent use.
// It only ever holds inodes with more than one link that are not .links
// entries, so it stays empty on a store Nix optimised.
type inodeCounter struct {
	mu sync.Mutex
	m  map[uint64]uint64
}

func newInodeCounter() *inodeCounter { return &inodeCounter{m: map[uint64]uint64{}} }

func (c *inodeCounter) add(ino uint64) {
	c.mu.Lock()
	c.m[ino]++
	c.mu.Unlock()
}

func (c *inodeCounter) get(ino uint64) uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.m[ino]
}
