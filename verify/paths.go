package verify

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"math/bits"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/zeebo/blake3"
	"golang.org/x/sys/unix"

	"storekeeper/graph"
	"storekeeper/nix/nar"
	"storekeeper/report"
	"storekeeper/store/fs"
	"storekeeper/verify/finding"
)

// pathResult is what a worker found in one path.
type pathResult struct {
	id    graph.PathID
	hash  nar.Hash
	size  int64
	files int64
	err   error
	man   *Manifest // the path's current manifest, when computed
	meta  []finding.Finding
}

// worker is one reader's reusable state.
type worker struct {
	v       *verifier
	b3      *blake3.Hasher
	bh      *nar.BatchHasher // nil without io_uring: plain HashPathFiles
	entries []Entry
	pending int // index of the regular file whose digest is being computed, or -1
	lh      *nar.FileHasher
	link    int // index in v.links of the entry being hashed from this read, or -1
	linkKey linkKey
	claims  []int // the .links entries claimed in the current path's read
	tee     teeWriter
	path    string
	meta    []finding.Finding
	files   int64
	inodes  map[devIno]*inodeUse
	collect bool
	check   bool // metadata checks
}

type devIno struct{ dev, ino uint64 }

type inodeUse struct {
	nlink uint64
	seen  uint64
	path  string // the first store path seen holding it
	file  string
}

// finishDigest completes what the previous regular file's contents were
// streamed into: its manifest digest and the .links entry it holds. A
// file whose read was cut short leaves the entry to checkLinks.
func (w *worker) finishDigest() {
	if w.pending >= 0 {
		w.b3.Sum(w.entries[w.pending].Digest[:0])
		w.pending = -1
	}
	if w.link >= 0 {
		if h, ok := w.lh.Sum(); ok {
			w.v.links.res[w.link] = linkResult{ok: true, key: w.linkKey, hash: h}
		}
		w.link = -1
	}
}

// teeWriter writes to two writers that never fail.
type teeWriter struct{ a, b io.Writer }

func (t teeWriter) Write(p []byte) (int, error) {
	t.a.Write(p)
	return t.b.Write(p)
}

// visit is the store.NodeFunc of a path's walk.
func (w *worker) visit(n *nar.Node) (io.Writer, error) {
	w.finishDigest()
	if n.Type == nar.FileRegular {
		w.files++
	}
	if w.check {
		if err := w.checkMeta(n); err != nil {
			return nil, err
		}
	}
	var lw io.Writer
	if s := w.v.links; s != nil && n.Type == nar.FileRegular {
		st, err := n.Stat()
		if err != nil {
			return nil, err
		}
		if i := s.claim(st); i >= 0 {
			w.claims = append(w.claims, i)
			if s.skip(i, st) {
				// Matched its name in this inode state before:
				// counts once this path is found clean (run).
				s.res[i] = linkResult{skipped: true, key: keyOf(st), hash: s.known[i].hash}
			} else {
				w.link, w.linkKey = i, keyOf(st)
				w.lh.Reset(st.Size, st.Mode&unix.S_IXUSR != 0)
				lw = w.lh
			}
		}
	}
	if !w.collect {
		return lw, nil
	}
	st, err := n.Stat()
	if err != nil {
		return nil, err
	}
	e := Entry{Name: n.Rel, Type: n.Type, Mode: st.Mode & 0o7777, Size: n.Size, Target: n.Target}
	w.entries = append(w.entries, e)
	if n.Type == nar.FileRegular {
		w.pending = len(w.entries) - 1
		w.b3.Reset()
		if lw != nil {
			w.tee = teeWriter{blake3Writer{w.b3}, lw}
			return &w.tee, nil // the worker's own: no allocation per file
		}
		return blake3Writer{w.b3}, nil
	}
	return nil, nil
}

// checkMeta checks what Nix canonicalises but never verifies.
func (w *worker) checkMeta(n *nar.Node) error {
	st, err := n.Stat()
	if err != nil {
		return err
	}
	file := n.Rel
	full := w.path
	if file != "" {
		full += "/" + file
	}
	full = report.Name(full) // for the messages; Path and File stay raw
	add := func(kind finding.Kind, exp, got, msg string) {
		w.meta = append(w.meta, finding.Finding{Kind: kind, Path: w.path, File: file, Expected: exp, Got: got,
			Message: msg, Remedy: finding.NewRemedy(finding.RemedyRepairPath, w.path)})
	}
	var probs [3]fs.MetaProblem
	for _, pr := range fs.OwnerModeProblems(probs[:0], full, st, w.v.storeUID) {
		add(finding.Kind(pr.Kind), pr.Expected, pr.Got, pr.Message)
	}
	if st.Mtim.Sec != fs.Nix.Mtime {
		add(finding.KindBadMtime, fmt.Sprint(fs.Nix.Mtime), fmt.Sprint(st.Mtim.Sec),
			fmt.Sprintf("'%s' has mtime %d, not %d", full, st.Mtim.Sec, fs.Nix.Mtime))
	}
	if w.inodes != nil && n.Type == nar.FileRegular && st.Nlink > 1 {
		k := devIno{uint64(st.Dev), st.Ino}
		u := w.inodes[k]
		if u == nil {
			u = &inodeUse{nlink: uint64(st.Nlink), path: w.path, file: file}
			w.inodes[k] = u
		}
		u.seen++
	}
	return nil
}

// hashPath NAR-hashes one path (or only walks it for metadata).
func (w *worker) run(id graph.PathID) pathResult {
	v := w.v
	g := v.g
	w.path = g.Path(id)
	w.meta = nil
	w.files = 0
	w.entries = w.entries[:0]
	w.pending = -1
	w.link = -1
	w.claims = w.claims[:0]
	w.check = v.o.Metadata
	real := v.lay.RealPath(w.path)
	r := pathResult{id: id}
	if !v.o.CheckContents {
		w.collect = false
		r.err = nar.WalkPathStat(real, w.visit)
		r.meta, r.files = w.meta, w.files
		return r
	}
	w.collect = v.recording && !v.hasMan[id]
	r.hash, r.size, r.err = w.bh.HashPathFiles(real, w.visit)
	w.finishDigest()
	r.meta, r.files = w.meta, w.files
	if r.err != nil {
		w.settleClaims(id, &r)
		return r
	}
	if w.collect {
		r.man = w.manifest(g.Name(id), r.hash)
	} else if r.hash != g.NarHash[id] && v.hasMan[id] {
		// Damaged, and a manifest to compare with: read it again for the
		// per-file digests (damage is rare; clean paths are read once).
		w.collect, w.check = true, false
		w.entries = w.entries[:0]
		if h, _, err := w.bh.HashPathFiles(real, w.visit); err == nil && h == r.hash {
			w.finishDigest()
			r.man = w.manifest(g.Name(id), r.hash)
		}
		w.pending, w.link = -1, -1
	}
	w.settleClaims(id, &r)
	return r
}

// settleClaims marks the .links entries claimed in path id's read with
// whether the path verified clean (its NAR hash the DB's): an entry
// known from the links record counts as matching only then, and only
// then is an entry recorded. It runs before the result is sent, so
// before checkLinks reads the entries.
func (w *worker) settleClaims(id graph.PathID, r *pathResult) {
	if len(w.claims) == 0 {
		return
	}
	db := w.v.g.NarHash[id]
	clean := r.err == nil && db != (nar.Hash{}) && r.hash == db
	for _, i := range w.claims {
		lr := &w.v.links.res[i]
		lr.clean = clean
		if lr.skipped {
			lr.ok = clean
		}
	}
	w.claims = w.claims[:0]
}

func (w *worker) manifest(name string, h nar.Hash) *Manifest {
	return &Manifest{Name: name, NarHash: h, Entries: append([]Entry(nil), w.entries...)}
}

// checkPaths hashes (or walks) the selected paths in parallel and
// collects the results in one goroutine, which alone writes manifests and
// the ledger. Each selected path is taken at most once, by one worker, and
// every one is unless ctx is cancelled (checkPaths returns ctx's error)
// or the time budget is spent (Summary.Remaining counts the rest).
// checkPaths returns once its workers and the gate's sampler have ended.
func (v *verifier) checkPaths(ctx context.Context) error {
	g := v.g
	n := g.Len()
	var cand []graph.PathID
	for i := 0; i < n; i++ {
		if v.selected[i] && v.exists[i] {
			cand = append(cand, graph.PathID(i))
		}
	}
	v.hasMan = make([]bool, n)
	if v.o.CheckContents && v.mlog != nil {
		for _, id := range cand {
			v.hasMan[id] = v.mlog.has(g.Name(id), g.NarHash[id])
		}
	}
	// Disk order: by the inode number of the path's top entry, which on
	// ext4, xfs and btrfs follows allocation order, so that the readers
	// together sweep the disk mostly forward instead of seeking; then the
	// paths too big to share the end of the run with others move to the
	// front, largest first (see bigFirst).
	byDisk := func(ids []graph.PathID) {
		sort.Slice(ids, func(a, b int) bool {
			if v.ino[ids[a]] != v.ino[ids[b]] {
				return v.ino[ids[a]] < v.ino[ids[b]]
			}
			return ids[a] < ids[b]
		})
		if v.o.CheckContents {
			bigFirst(ids, g.NarSize, v.o.Jobs, runtime.GOMAXPROCS(0))
		}
	}
	order := cand
	budgeted := v.o.BudgetTime > 0 || v.o.BudgetBytes > 0
	if budgeted {
		led := v.led.entries
		// Least recently checked first; a record from before the path's
		// registration is of other contents: as never checked. Each
		// path's time is looked up once, not at every comparison.
		last := make([]int64, g.Len())
		for _, id := range order {
			if t := led[g.Name(id)].Time; checkedSinceRegistered(g, id, t) {
				last[id] = t
			}
		}
		sort.Slice(order, func(a, b int) bool {
			na, nb := g.Name(order[a]), g.Name(order[b])
			ta, tb := last[order[a]], last[order[b]]
			if ta != tb {
				return ta < tb
			}
			return na < nb
		})
		if v.o.BudgetBytes > 0 {
			var cum int64
			k := 0
			// Like a time budget: go on until it is spent (the last
			// path may overshoot it), so N runs of 1/N cover the store.
			for k < len(order) && cum < v.o.BudgetBytes {
				cum += int64(g.NarSize[order[k]])
				k++
			}
			if k < len(order) {
				v.sum.Stopped = "size budget spent"
			}
			v.sum.Remaining = len(order) - k
			order = append([]graph.PathID(nil), order[:k]...)
			byDisk(order)
		}
	} else {
		byDisk(order)
	}
	var total int64
	for _, id := range order {
		total += int64(g.NarSize[id])
	}
	phase := "checking metadata"
	if v.o.CheckContents {
		phase = "checking contents"
	}
	v.prog.Phase(phase, total, true)
	if v.o.Metadata && v.fullRun {
		v.inodes = &inodeCounter{m: map[devIno]*inodeUse{}}
	}
	var deadline time.Time
	if v.o.BudgetTime > 0 {
		deadline = v.start.Add(v.o.BudgetTime)
	}
	var next atomic.Int64
	var timeUp atomic.Bool
	results := make(chan pathResult, 1024)
	var wg sync.WaitGroup
	gate := newJobGate(v.o.Jobs, v.o.Jobs) // all of them
	if v.autoJobs && v.o.CheckContents {
		gate = newJobGate(runtime.GOMAXPROCS(0), v.o.Jobs)
		defer gate.sample()()
	}
	defer context.AfterFunc(ctx, gate.stop)()
	// Batched hashing holds descriptors open: give it to as many workers
	// as the open-file limit allows with room to spare (the others, and
	// the plain walker, need a few each).
	batchers := v.o.Jobs
	var lim unix.Rlimit
	if unix.Getrlimit(unix.RLIMIT_NOFILE, &lim) == nil {
		batchers = min(batchers, max(0, (int(min(lim.Cur, 1<<20))-512)/nar.BatchHasherFDs))
	}
	for j := 0; j < v.o.Jobs; j++ {
		wg.Add(1)
		w := &worker{v: v, b3: blake3.New(), pending: -1, link: -1, lh: nar.NewFileHasher()}
		if v.inodes != nil {
			w.inodes = map[devIno]*inodeUse{}
		}
		batched := v.o.CheckContents && j < batchers
		go func() {
			defer wg.Done()
			defer func() { w.bh.Close() }()
			defer gate.stop() // nothing left to take, or time is up: release the parked ones
			for gate.enter(j) && ctx.Err() == nil {
				if batched {
					// Made once the gate first lets this worker in: a
					// warm run's parked workers hold no ring or
					// descriptors.
					w.bh, _ = nar.NewBatchHasher() // on error nil, which hashes path by path
					batched = false
				}
				if !deadline.IsZero() && time.Now().After(deadline) {
					timeUp.Store(true)
					break
				}
				i := int(next.Add(1) - 1)
				if i >= len(order) {
					break
				}
				results <- w.run(order[i])
			}
			if w.inodes != nil {
				v.inodes.merge(w.inodes)
			}
		}()
	}
	go func() {
		wg.Wait()
		close(results)
	}()
	done := 0
	var pending []pathResult
	flush := func() {
		if err := v.led.flush(); err != nil && v.recording {
			v.sum.Recording = "ledger write failed: " + err.Error()
		}
		if v.verified != nil {
			for _, r := range pending {
				v.verified.Verified(g.Path(r.id), r.err == nil && r.hash == g.NarHash[r.id])
			}
		}
		pending = pending[:0]
	}
	for r := range results {
		done++
		v.collect(&r)
		v.prog.Add(int64(g.NarSize[r.id]))
		if v.o.CheckContents {
			pending = append(pending, r)
			if len(results) == 0 || len(pending) >= 256 {
				flush()
			}
		}
	}
	flush()
	if err := ctx.Err(); err != nil {
		return err
	}
	if timeUp.Load() && done < len(order) {
		v.sum.Stopped = "time budget spent"
	}
	if budgeted && v.o.BudgetBytes == 0 {
		v.sum.Remaining = len(order) - done
	}
	return nil
}

// bigFirst moves the paths of ids whose NAR is big next to the whole
// run's to the front, largest first (equal sizes in their order), keeping
// the others in their order. Hashing a NAR is sequential, so a path is
// never done faster than one core hashes it; the jobs share the cores,
// so one that starts late crawls at a jobs-th of them and may then
// finish alone while the other cores idle. A path is big when its NAR
// size (NarSize; 0, unknown, is never big) is at least total / (4 *
// cores * jobs), total the sum of the NAR sizes of ids (saturating at
// 2^64-1): started first, the big ones progress together and the small
// ones fill in around them. On a store of small paths (the largest a few
// MB against GBs in all) nothing moves. The order depends only on ids'
// order and the sizes.
func bigFirst(ids []graph.PathID, narSize []uint64, jobs, cores int) {
	var total uint64
	for _, id := range ids {
		var carry uint64
		if total, carry = bits.Add64(total, narSize[id], 0); carry != 0 {
			total = math.MaxUint64
			break
		}
	}
	// Divided one factor at a time: their product may overflow.
	least := total / 4 / uint64(max(1, cores)) / uint64(max(1, jobs))
	var big, rest []graph.PathID
	for _, id := range ids {
		if narSize[id] > 0 && narSize[id] >= least {
			big = append(big, id)
		} else {
			rest = append(rest, id)
		}
	}
	if len(big) == 0 {
		return
	}
	sort.SliceStable(big, func(a, b int) bool { return narSize[big[a]] > narSize[big[b]] })
	copy(ids, big)
	copy(ids[len(big):], rest)
}

// collect turns one worker result into findings, manifests and a ledger
// entry. It runs in one goroutine only.
func (v *verifier) collect(r *pathResult) {
	g := v.g
	id := r.id
	p := g.Path(id)
	v.findings = append(v.findings, r.meta...)
	v.sum.Files += r.files
	if r.err != nil {
		if errors.Is(r.err, os.ErrNotExist) && !v.o.CheckContents {
			return
		}
		v.add(finding.Finding{Kind: finding.KindIOError, Path: p, Got: r.err.Error(),
			Message: fmt.Sprintf("error checking path '%s': %s", p, report.Name(r.err.Error())),
			Remedy:  finding.NewRemedy(finding.RemedyCheckDiskThenRepairPath, p)})
		return
	}
	if !v.o.CheckContents {
		return
	}
	v.sum.ContentsChecked++
	v.sum.Bytes += r.size
	now := v.now().Unix()
	dbHash := g.NarHash[id]
	hashText := ""
	if len(g.HashText) > 0 {
		hashText = g.HashText[id]
	}
	switch {
	case hashText != "" || dbHash == (nar.Hash{}):
		exp := hashText
		v.add(finding.Finding{Kind: finding.KindMissingHash, Path: p, Expected: exp, Got: r.hash.String(),
			Message: fmt.Sprintf("path '%s' has no valid hash in the database (%q); its contents hash to '%s'", p, exp, r.hash.String()),
			Remedy:  v.recordRemedy(id, r)})
		v.led.record(g.Name(id), now, "unhashed")
	case r.hash != dbHash:
		v.add(finding.Finding{Kind: finding.KindModified, Path: p, Expected: dbHash.String(), Got: r.hash.String(),
			Message: fmt.Sprintf("path '%s' was modified! expected hash '%s', got '%s'", p, dbHash.String(), r.hash.String()),
			Remedy:  finding.NewRemedy(finding.RemedyRepairPath, p)})
		if v.hasMan[id] && r.man != nil {
			if old, err := v.mlog.get(g.Name(id)); err == nil && old != nil && old.NarHash == dbHash {
				for _, c := range Diff(old, r.man) {
					v.add(fileFinding(p, c))
				}
			}
		}
		v.led.record(g.Name(id), now, "damaged")
	default:
		switch dbSize := g.NarSize[id]; {
		case dbSize == 0:
			v.add(finding.Finding{Kind: finding.KindMissingNarSize, Path: p, Expected: "0", Got: fmt.Sprint(r.size),
				Message: fmt.Sprintf("path '%s' has no NAR size in the database; it is %d", p, r.size),
				Remedy:  v.recordRemedy(id, r)})
		case dbSize != uint64(r.size):
			v.add(finding.Finding{Kind: finding.KindNarSize, Path: p, Expected: fmt.Sprint(dbSize), Got: fmt.Sprint(r.size),
				Message: fmt.Sprintf("path '%s' has incorrect NAR size: the database says %d, the contents are %d bytes", p, dbSize, r.size),
				Remedy:  v.recordRemedy(id, r)})
		}
		if r.man != nil && v.recording {
			if err := v.mlog.add(r.man); err == nil {
				v.sum.ManifestsRecorded++
				v.hasMan[id] = true
			}
		}
		v.led.record(g.Name(id), now, "ok")
	}
}

// recordRemedy is the remedy that records what path id's contents hash to
// (r) in its row.
func (v *verifier) recordRemedy(id graph.PathID, r *pathResult) *finding.Remedy {
	rem := v.remedy(finding.RemedyRecordNarInfo, id)
	rem.NarHash, rem.NarSize = r.hash, uint64(r.size)
	return rem
}

func fileFinding(p string, c FileChange) finding.Finding {
	full := p
	if c.File != "" {
		full += "/" + c.File
	}
	full = report.Name(full)
	f := finding.Finding{Path: p, File: c.File, Expected: c.Expected, Got: c.Got, Remedy: finding.NewRemedy(finding.RemedyRepairPath, p)}
	switch c.Kind {
	case "changed":
		f.Kind = finding.KindFileChanged
		f.Message = fmt.Sprintf("  changed: '%s' (was %s, now %s)", full, c.Expected, c.Got)
	case "added":
		f.Kind = finding.KindFileAdded
		f.Message = fmt.Sprintf("  added:   '%s' (%s)", full, c.Got)
	default:
		f.Kind = finding.KindFileRemoved
		f.Message = fmt.Sprintf("  removed: '%s' (was %s)", full, c.Expected)
	}
	return f
}

// inodeCounter counts, over the whole store, how many names of each
// multiply linked inode are inside valid paths, .links and the other
// entries of the store directory.
type inodeCounter struct {
	mu sync.Mutex
	m  map[devIno]*inodeUse
}

func (c *inodeCounter) merge(m map[devIno]*inodeUse) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for k, u := range m {
		if e := c.m[k]; e != nil {
			e.seen += u.seen
			if u.path < e.path || (u.path == e.path && u.file < e.file) {
				e.path, e.file = u.path, u.file
			}
		} else {
			c.m[k] = u
		}
	}
}

// checkForeignLinks adds the names in .links and in unregistered store
// entries, then reports inodes with more links than were found.
func (v *verifier) checkForeignLinks(ctx context.Context) {
	v.sum.ForeignLinksCheck = true
	extra := map[devIno]uint64{}
	count := func(st *unix.Stat_t) {
		if st.Mode&unix.S_IFMT == unix.S_IFREG && st.Nlink > 1 {
			k := devIno{uint64(st.Dev), st.Ino}
			if _, ok := v.inodes.m[k]; ok {
				extra[k]++
			}
		}
	}
	if d, err := os.Open(v.lay.LinksDir()); err == nil {
		names, _ := d.Readdirnames(-1)
		for _, nm := range names {
			var st unix.Stat_t
			if unix.Fstatat(int(d.Fd()), nm, &st, unix.AT_SYMLINK_NOFOLLOW) == nil {
				count(&st)
			}
		}
		d.Close()
	}
	for _, nm := range v.dirNames {
		if ctx.Err() != nil {
			return
		}
		if _, valid := v.g.Lookup(nm); valid || nm == ".links" {
			continue
		}
		nar.WalkPathStat(filepath.Join(v.lay.RealStoreDir, nm), func(n *nar.Node) (io.Writer, error) {
			if st, err := n.Stat(); err == nil {
				count(st)
			}
			return nil, nil
		})
	}
	for k, u := range v.inodes.m {
		seen := u.seen + extra[k]
		if u.nlink > seen {
			full := u.path
			if u.file != "" {
				full += "/" + u.file
			}
			pr := fs.ForeignLinkProblem(report.Name(full), u.nlink, seen)
			v.add(finding.Finding{Kind: finding.Kind(pr.Kind), Path: u.path, File: u.file, Expected: pr.Expected, Got: pr.Got,
				Message: pr.Message, Remedy: finding.NewRemedy(finding.RemedyRepairPath, u.path)})
		}
	}
}
