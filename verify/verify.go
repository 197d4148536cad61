// Package verify audits a Nix store: it checks the database against the
// disk (every valid path exists, references and DerivationOutputs rows
// point at valid paths, no unregistered entry claims a valid path's hash),
// optionally NAR-hashes every valid path in parallel and checks every
// .links entry against its name (--check-contents), checks what Nix never
// checks (file metadata, signatures), and says which file of a damaged
// path changed by comparing with a manifest recorded when the path last
// verified clean.
//
// By default Verify only reads the store and the database; it writes only
// its own state (manifests and the ledger of when each path was last
// verified) in the state directory beside Nix's (Layout.OwnStateDir).
// Each finding carries its remedy as data (package finding); package
// repair carries out those that need nothing from outside the machine
// (verify --repair).
package verify

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"time"

	"github.com/zeebo/blake3"
	"golang.org/x/sys/unix"

	"storekeeper/graph"
	"storekeeper/nix/signature"
	"storekeeper/nix/storepath"
	"storekeeper/report"
	"storekeeper/store"
	"storekeeper/store/db"
	"storekeeper/store/fs"
	"storekeeper/verify/finding"
)

// Sentinel errors.
var (
	// ErrNotValid: a path given to verify is not a valid store path.
	ErrNotValid = errors.New("verify: path is not valid")
	// ErrBadOptions: inconsistent options.
	ErrBadOptions = errors.New("verify: bad options")
)

// Options choose what Verify checks.
type Options struct {
	// Paths restricts the audit to these store paths (logical, full or
	// symlinks to them). Empty: the whole store.
	Paths []string
	// CheckContents NAR-hashes the paths and checks .links entries.
	CheckContents bool
	// Metadata checks modes, mtimes, owners and hard links.
	Metadata bool
	// OnSuspect, if set, receives store.CheckPresence's verdict when it
	// finds the store directory suspect (empty, a large share of the
	// valid paths missing at once, or another file system than the one
	// recorded), before any contents are read: an error it returns ends
	// Verify with that error, having changed nothing (`verify --repair`
	// passes repair's Options.Refuse, so it refuses before a long audit).
	// When it is set the verdict is the caller's: Summary.StoreSuspect
	// stays empty (Result.Suspect has it). Without it the verdict goes
	// into Summary.StoreSuspect.
	OnSuspect func(suspect error) error
	// BudgetTime / BudgetBytes: verify contents of the least recently
	// verified paths first and stop when the budget is spent. They imply
	// CheckContents.
	BudgetTime  time.Duration
	BudgetBytes int64
	// SubsetN/SubsetM (1 <= N <= M): verify only the N-th of M
	// deterministic slices of the store. Implies CheckContents.
	SubsetN, SubsetM int
	// SigsNeeded > 0 counts valid signatures by TrustedKeys.
	SigsNeeded  int
	TrustedKeys []string
	// Jobs is the number of parallel readers. The default (0) is up to
	// 16 per core (16 to 64): a deep queue of reads is what makes a cold
	// store fast (measured on 2 cores, 32 readers beat 8 by 10-15%),
	// while hashing from the page cache wants one reader per core; with
	// --check-contents as many run as keep the cores busy (see jobGate).
	// A number given runs exactly that many.
	Jobs int
	// StateDir holds manifests and the ledger (default
	// Layout.OwnStateDir()).
	StateDir string
	// NoRecord: write neither manifests nor the ledger.
	NoRecord bool
	// Now is the clock (tests).
	Now func() time.Time
}

// Verifications is an optional extension of the report.Progress passed to
// Verify: if it implements Verifications, Verified is called for each path
// whose contents were checked, with ok whether they matched, after its
// ledger entry has been written out (so a run killed after Verified
// returns does not check that path again). It is called from one
// goroutine at a time.
type Verifications interface {
	Verified(path string, ok bool)
}

// Summary counts what a run did.
//
// JSON follows the commands' convention (README, "JSON output"): counts of
// paths are paths_*, bytes are integers, and Elapsed is left to the
// caller, which writes durations as float seconds (elapsed_seconds).
type Summary struct {
	ValidPaths        int           `json:"valid_paths"`
	Checked           int           `json:"paths_checked"` // paths whose existence (and DB rows) were checked
	ContentsChecked   int           `json:"paths_hashed"`  // paths NAR-hashed
	Bytes             int64         `json:"bytes_hashed"`  // NAR bytes hashed
	Files             int64         `json:"files_hashed"`  // regular files read
	Links             int           `json:"links_checked"` // .links entries checked
	Damaged           int           `json:"paths_damaged"` // distinct paths with unrepaired findings
	Findings          int           `json:"findings"`      // findings, repaired ones included
	Repaired          int           `json:"repaired"`      // findings repaired
	ManifestsRecorded int           `json:"manifests_recorded"`
	Recording         string        `json:"recording"`                 // "yes", or why manifests/ledger were not written
	Remaining         int           `json:"paths_remaining,omitempty"` // budgeted runs: paths left for later runs
	Stopped           string        `json:"stopped,omitempty"`         // why a budgeted run stopped early
	ForeignLinksCheck bool          `json:"foreign_links_checked"`
	StoreSuspect      string        `json:"store_suspect,omitempty"` // without Options.OnSuspect (--repair): why the store dir looks unmounted or half missing (store.CheckPresence)
	Elapsed           time.Duration `json:"-"`
}

// Result is what Verify found.
type Result struct {
	Findings []finding.Finding `json:"findings"`
	Summary  Summary           `json:"summary"`
	// Suspect is store.CheckPresence's verdict on the store directory:
	// nil when it looked whole (or no valid path was missing).
	Suspect error `json:"-"`
	// Coverage is the ledger's audit coverage after the run (nil when
	// it could not be read); for --metrics-file.
	Coverage *Coverage `json:"-"`
}

// Problems reports whether any finding is left unrepaired.
func (r *Result) Problems() bool {
	for _, f := range r.Findings {
		if !f.Repaired {
			return true
		}
	}
	return false
}

// Recount sets the summary's counts of findings, repaired findings and
// damaged paths from Findings (after a repair marked some repaired).
func (r *Result) Recount() {
	damaged := map[string]bool{}
	r.Summary.Repaired = 0
	for _, f := range r.Findings {
		if f.Repaired {
			r.Summary.Repaired++
			continue
		}
		damaged[f.Path] = true
	}
	r.Summary.Findings = len(r.Findings)
	r.Summary.Damaged = len(damaged)
}

// verifier holds one run's state.
type verifier struct {
	s        *store.Store
	o        Options
	prog     report.Progress
	verified Verifications // prog's, or nil
	g        *graph.Graph
	lay      store.Layout
	now      func() time.Time
	start    time.Time
	autoJobs bool // Jobs was not given: as many readers run as keep the cores busy

	exists    []bool   // per PathID: the entry is in the store dir
	ino       []uint64 // per PathID: the entry's inode number
	selected  []bool   // per PathID: part of this audit
	hasMan    []bool   // per PathID: a manifest for the DB's hash exists
	storeUID  uint32
	dirNames  []string
	links     *linkSet             // the .links entries of a whole-store --check-contents run, or nil
	linkRec   map[[32]byte]linkKey // what checkLinks found to record, or nil
	findings  []finding.Finding
	sum       Summary
	mlog      *manifestLog
	led       *ledger
	recording bool
	fullRun   bool // the whole store, no budget or subset

	inodes   *inodeCounter
	lockFile *os.File
	suspect  error // store.CheckPresence's verdict on the store dir
}

// Verify audits the store. It returns an error only if the audit could not
// run (unreadable DB or store directory, bad options, a path argument that
// is not valid); problems found are in Result.Findings, in a deterministic
// order (by path, then kind, then file). An I/O error on one path is a
// finding and the audit goes on.
//
// Concurrency: it reads one consistent snapshot of the DB and hashes paths
// in parallel; a nix-daemon may keep working. A path that the garbage
// collector deletes during the audit is not reported (validity is checked
// again before reporting). Cancellation: ctx stops the workers; manifests
// and ledger entries written so far are kept (the ledger stays consistent
// at any instant, even under kill -9) and Verify returns ctx's error. The
// links record (which .links entries need no second hash; linkrecord.go)
// is replaced whole at the end of a recording whole-store run, never
// after a cancelled one, and is read by any whole-store --check-contents run.
//
// prog receives the progress (nil: report.Discard); if it also implements
// Verifications, each path whose contents were checked is reported to it.
func Verify(ctx context.Context, s *store.Store, o Options, prog report.Progress) (*Result, error) {
	if prog == nil {
		prog = report.Discard
	}
	verified, _ := prog.(Verifications)
	if o.SubsetM != 0 && (o.SubsetN < 1 || o.SubsetN > o.SubsetM) {
		return nil, fmt.Errorf("%w: subset %d/%d: need 1 <= N <= M", ErrBadOptions, o.SubsetN, o.SubsetM)
	}
	if o.BudgetTime < 0 || o.BudgetBytes < 0 {
		return nil, fmt.Errorf("%w: negative budget", ErrBadOptions)
	}
	if o.BudgetTime > 0 || o.BudgetBytes > 0 || o.SubsetM > 0 {
		o.CheckContents = true
	}
	autoJobs := o.Jobs <= 0
	if autoJobs {
		o.Jobs = min(64, max(16, 16*runtime.NumCPU()))
	}
	if o.StateDir == "" {
		o.StateDir = s.Layout.OwnStateDir()
	}
	v := &verifier{s: s, o: o, prog: prog, verified: verified, lay: s.Layout, now: o.Now, autoJobs: autoJobs}
	if v.now == nil {
		v.now = time.Now
	}
	v.start = time.Now()
	var keys signature.PublicKeys
	if o.SigsNeeded > 0 {
		var err error
		if keys, err = signature.ParsePublicKeys(o.TrustedKeys); err != nil {
			return nil, err
		}
	}
	g, err := s.LoadGraph(ctx, db.GraphOptions{Hashes: o.CheckContents || o.SigsNeeded > 0, Sigs: o.SigsNeeded > 0, CA: o.SigsNeeded > 0})
	if err != nil {
		return nil, err
	}
	v.g = g
	n := g.Len()
	v.sum.ValidPaths = n
	if err := v.selectPaths(); err != nil {
		return nil, err
	}
	if err := v.readStoreDir(); err != nil {
		return nil, err
	}
	if err := v.checkPresence(ctx); err != nil {
		return nil, err
	}
	v.checkDB()
	v.checkExistence()
	if o.SigsNeeded > 0 {
		v.checkSigs(keys)
	}
	v.openState()
	defer v.closeState()
	if o.CheckContents && v.fullRun {
		// Listed before the paths are hashed, so that each entry whose
		// inode a path holds is hashed in that path's read (see linkSet).
		if err := v.listLinks(); err != nil {
			return nil, err
		}
	}
	if o.CheckContents || o.Metadata {
		if err := v.checkPaths(ctx); err != nil {
			return nil, err
		}
	}
	if v.links != nil {
		if err := v.checkLinks(ctx); err != nil {
			return nil, err
		}
	}
	if v.inodes != nil {
		v.checkForeignLinks(ctx)
	}
	if err := v.dropRaced(ctx); err != nil {
		return nil, err
	}
	if err := v.commitState(); err != nil && v.sum.Recording == "yes" {
		v.sum.Recording = "ledger not committed: " + err.Error()
	}
	v.recordFS()
	finding.Sort(v.findings)
	res := &Result{Findings: v.findings, Summary: v.sum, Suspect: v.suspect, Coverage: v.coverage()}
	if res.Findings == nil {
		res.Findings = []finding.Finding{}
	}
	res.Recount()
	res.Summary.Elapsed = time.Since(v.start)
	return res, nil
}

func (v *verifier) add(f finding.Finding) { v.findings = append(v.findings, f) }

// selectPaths resolves Options.Paths and the subset.
func (v *verifier) selectPaths() error {
	g := v.g
	n := g.Len()
	v.selected = make([]bool, n)
	v.fullRun = len(v.o.Paths) == 0 && v.o.SubsetM == 0 && v.o.BudgetTime == 0 && v.o.BudgetBytes == 0
	if len(v.o.Paths) == 0 {
		for i := range v.selected {
			v.selected[i] = true
		}
	} else {
		for _, p := range v.o.Paths {
			lp := p
			if !v.lay.IsInStore(lp) {
				// A symlink to a store path (./result): follow it like Nix.
				if t, err := filepath.EvalSymlinks(p); err == nil {
					if v.lay.RealStoreDir != v.lay.StoreDir && storepath.IsInStore(v.lay.RealStoreDir, t) {
						t = v.lay.StoreDir + t[len(v.lay.RealStoreDir):]
					}
					lp = t
				}
			}
			if !v.lay.IsInStore(lp) {
				return fmt.Errorf("%w: '%s' is not in the store %s", ErrNotValid, report.Name(p), v.lay.StoreDir)
			}
			base := strings.TrimPrefix(lp, v.lay.StoreDir+"/")
			if i := strings.IndexByte(base, '/'); i >= 0 {
				base = base[:i]
			}
			id, ok := g.Lookup(base)
			if !ok {
				return fmt.Errorf("%w: path '%s' is not valid (not registered in %s)", ErrNotValid, report.Name(v.lay.StorePathOf(base)), v.lay.DBPath())
			}
			v.selected[id] = true
		}
	}
	if v.o.SubsetM > 0 {
		for i := range v.selected {
			if v.selected[i] && !inSubset(g.Name(graph.PathID(i)), v.o.SubsetN, v.o.SubsetM) {
				v.selected[i] = false
			}
		}
	}
	for _, s := range v.selected {
		if s {
			v.sum.Checked++
		}
	}
	return nil
}

// inSubset reports whether a path's base name falls in slice n of m: a
// hash of the name's hash part, so the slices are stable as the store
// grows and shrinks.
func inSubset(name string, n, m int) bool {
	h := fnv.New32a()
	hp := name
	if len(hp) > 32 {
		hp = hp[:32]
	}
	h.Write([]byte(hp))
	return int(h.Sum32()%uint32(m)) == n-1
}

// readStoreDir lists the store directory (what exists on disk) and finds
// its owner.
func (v *verifier) readStoreDir() error {
	d, err := os.Open(v.lay.RealStoreDir)
	if err != nil {
		return fmt.Errorf("verify: reading the store directory: %w", err)
	}
	defer d.Close()
	var st unix.Stat_t
	if err := unix.Fstat(int(d.Fd()), &st); err != nil {
		return fmt.Errorf("verify: %s: %w", v.lay.RealStoreDir, err)
	}
	v.storeUID = st.Uid
	ents, err := readDirInodes(int(d.Fd()))
	if err != nil {
		return fmt.Errorf("verify: reading the store directory %s: %w", v.lay.RealStoreDir, err)
	}
	names := make([]string, 0, len(ents))
	v.exists = make([]bool, v.g.Len())
	v.ino = make([]uint64, v.g.Len())
	for _, e := range ents {
		names = append(names, e.name)
		if id, ok := v.g.Lookup(e.name); ok {
			v.exists[id] = true
			v.ino[id] = e.ino
		}
	}
	sort.Strings(names)
	v.dirNames = names
	return nil
}

type dirInode struct {
	name string
	ino  uint64
}

// readDirInodes lists a directory with each entry's inode number (from
// getdents, without a stat per entry).
func readDirInodes(fd int) ([]dirInode, error) {
	buf := make([]byte, 64<<10)
	var out []dirInode
	for {
		n, err := unix.Getdents(fd, buf)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return nil, err
		}
		if n <= 0 {
			return out, nil
		}
		b := buf[:n]
		for len(b) >= 19 {
			// struct linux_dirent64: ino u64, off s64, reclen u16, type u8, name.
			ino := binary.NativeEndian.Uint64(b[0:8])
			reclen := int(binary.NativeEndian.Uint16(b[16:18]))
			if reclen < 19 || reclen > len(b) {
				return nil, unix.EIO
			}
			nb := b[19:reclen]
			if i := bytes.IndexByte(nb, 0); i >= 0 {
				nb = nb[:i]
			}
			b = b[reclen:]
			if s := string(nb); s != "." && s != ".." && s != "" {
				out = append(out, dirInode{s, ino})
			}
		}
	}
}

// checkDB reports rows that break the schema's invariants and, on a full
// run, unregistered entries that claim a valid path's hash part.
func (v *verifier) checkDB() {
	g := v.g
	if n := g.Problems.DanglingRefs; n > 0 {
		v.add(finding.Finding{Kind: finding.KindDanglingRefs, Got: fmt.Sprint(n),
			Message: fmt.Sprintf("%d reference rows name paths that are not valid", n),
			Remedy:  finding.NewRemedy(finding.RemedyDeleteDanglingRows)})
	}
	if n := g.Problems.DanglingDrvOutputs; n > 0 {
		v.add(finding.Finding{Kind: finding.KindDanglingDrvOutputs, Got: fmt.Sprint(n),
			Message: fmt.Sprintf("%d DerivationOutputs rows belong to derivations that are not valid", n),
			Remedy:  finding.NewRemedy(finding.RemedyDeleteDanglingRows)})
	}
	for i := 0; i < g.Len(); i++ {
		id := graph.PathID(i)
		if !v.selected[id] {
			continue
		}
		if outs := g.Outputs(id); len(outs) > 0 && !strings.HasSuffix(g.Name(id), ".drv") {
			v.add(finding.Finding{Kind: finding.KindOutputsOfNonDrv, Path: g.Path(id), Got: fmt.Sprint(len(outs)),
				Message: fmt.Sprintf("path '%s' is not a derivation but has %d DerivationOutputs rows", g.Path(id), len(outs))})
		}
	}
	if len(v.o.Paths) > 0 || v.o.SubsetM > 0 {
		return
	}
	byHash := make(map[string]graph.PathID, g.Len())
	for i := 0; i < g.Len(); i++ {
		nm := g.Name(graph.PathID(i))
		if len(nm) > 32 {
			byHash[nm[:32]] = graph.PathID(i)
		}
	}
	for _, nm := range v.dirNames {
		if len(nm) <= 33 || nm[32] != '-' {
			continue
		}
		if _, valid := g.Lookup(nm); valid {
			continue
		}
		// Nix's own companions of a path: its lock file and build
		// leftovers (.chroot, .check, .lock) are not claims.
		if strings.HasSuffix(nm, ".lock") || strings.HasSuffix(nm, ".chroot") || strings.HasSuffix(nm, ".check") {
			continue
		}
		if id, ok := byHash[nm[:32]]; ok {
			p := v.lay.StorePathOf(nm)
			v.add(finding.Finding{Kind: finding.KindNameClash, Path: g.Path(id), File: p, Got: p,
				Message: fmt.Sprintf("unregistered entry '%s' has the hash of valid path '%s'", report.Name(p), g.Path(id)),
				Remedy:  finding.NewRemedy(finding.RemedyInspectAndRemove, v.lay.RealPath(p))})
		}
	}
}

// checkExistence reports valid paths missing from disk, sorted into those
// that Nix would drop from the DB (nothing that exists refers to them,
// directly or through other missing paths) and those still referenced.
func (v *verifier) checkExistence() {
	g := v.g
	n := g.Len()
	// state: 0 unknown, 1 visiting, 2 droppable, 3 blocked
	state := make([]uint8, n)
	var visit func(id graph.PathID) bool // reports blocked
	visit = func(id graph.PathID) bool {
		switch state[id] {
		case 1, 2:
			return false
		case 3:
			return true
		}
		state[id] = 1
		blocked := false
		for _, r := range g.Referrers(id) {
			if r == id {
				continue
			}
			if v.exists[r] || visit(r) {
				blocked = true
				break
			}
		}
		if blocked {
			state[id] = 3
		} else {
			state[id] = 2
		}
		return blocked
	}
	for i := 0; i < n; i++ {
		id := graph.PathID(i)
		if v.exists[id] || !v.selected[id] {
			continue
		}
		p := g.Path(id)
		if visit(id) {
			v.add(finding.Finding{Kind: finding.KindDisappearedReferenced, Path: p,
				Message: fmt.Sprintf("path '%s' disappeared, but it still has valid referrers!", p),
				Remedy:  finding.NewRemedy(finding.RemedyRepairPath, p)})
		} else {
			v.add(finding.Finding{Kind: finding.KindDisappeared, Path: p,
				Message: fmt.Sprintf("path '%s' disappeared; nothing valid refers to it ('storekeeper verify --repair' removes it from the database, as 'nix-store --verify' does)", p),
				Remedy:  v.remedy(finding.RemedyInvalidate, id)})
		}
	}
}

// checkSigs counts valid signatures of every selected path.
func (v *verifier) checkSigs(keys signature.PublicKeys) {
	g := v.g
	for i := 0; i < g.Len(); i++ {
		id := graph.PathID(i)
		if !v.selected[id] {
			continue
		}
		if (len(g.Ultimate) > 0 && g.Ultimate[id]) || (len(g.CA) > 0 && g.CA[id] != "") {
			continue // built here, or content-addressed: trusted as Nix does
		}
		p := g.Path(id)
		good := 0
		if g.NarSize[id] != 0 && len(g.Sigs) > 0 {
			refs := g.References(id)
			rp := make([]string, len(refs))
			for j, r := range refs {
				rp[j] = g.Path(r)
			}
			sort.Strings(rp)
			good = signature.CountValidSigs(keys, signature.Fingerprint(p, g.NarHash[id], g.NarSize[id], rp), g.Sigs[id])
		}
		if good < v.o.SigsNeeded {
			v.add(finding.Finding{Kind: finding.KindUntrusted, Path: p, Expected: fmt.Sprint(v.o.SigsNeeded), Got: fmt.Sprint(good),
				Message: fmt.Sprintf("path '%s' is untrusted: %d valid signatures by trusted keys, %d needed", p, good, v.o.SigsNeeded),
				Remedy:  finding.NewRemedy(finding.RemedySign, p)})
		}
	}
}

// openState opens the manifest log and the ledger for writing if allowed
// and possible, otherwise read-only (or not at all).
func (v *verifier) openState() {
	v.sum.Recording = "yes"
	v.led = &ledger{dir: v.o.StateDir, entries: map[string]LedgerEntry{}}
	v.mlog = &manifestLog{index: map[string]manifestRef{}}
	if !v.o.CheckContents {
		v.sum.Recording = "no: contents not checked"
		return
	}
	writable := !v.o.NoRecord
	why := "no: --no-record"
	if writable {
		if err := checkStateDir(v.o.StateDir); err != nil {
			writable, why = false, fmt.Sprintf("no: %v", err)
		} else if err := unix.Access(v.o.StateDir, unix.W_OK); err != nil {
			writable, why = false, fmt.Sprintf("no: %s is not writable: %v", v.o.StateDir, err)
		} else if err := v.lockState(); err != nil {
			writable, why = false, err.Error()
		}
	}
	var err error
	v.mlog, err = openManifestLog(v.o.StateDir, writable)
	if err != nil && writable {
		writable, why = false, fmt.Sprintf("no: %v", err)
		v.mlog, err = openManifestLog(v.o.StateDir, false)
	}
	if err != nil {
		v.mlog = &manifestLog{index: map[string]manifestRef{}}
	}
	v.led, err = loadLedger(v.o.StateDir)
	if err != nil {
		v.led = &ledger{dir: v.o.StateDir, entries: map[string]LedgerEntry{}}
	}
	if writable {
		if err := v.led.openLog(); err != nil {
			writable, why = false, fmt.Sprintf("no: %v", err)
		}
	}
	v.recording = writable
	if !writable {
		v.sum.Recording = why
	}
}

// checkStateDir makes sure dir is a directory, created if missing, and
// never a symbolic link: the ledger and manifests are opened by path in
// it (fs.OpenStateDir).
func checkStateDir(dir string) error {
	fd, err := fs.OpenStateDir(dir)
	if err != nil {
		return err
	}
	return unix.Close(fd)
}

// lockState takes an exclusive, non-blocking flock on the state dir's lock
// file so that two audits never append to the same logs.
func (v *verifier) lockState() error {
	f, err := os.OpenFile(filepath.Join(v.o.StateDir, "lock"), os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return fmt.Errorf("no: %w", err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		return fmt.Errorf("no: another storekeeper verify is recording in %s", v.o.StateDir)
	}
	v.lockFile = f
	return nil
}

func (v *verifier) commitState() error {
	if !v.recording {
		return nil
	}
	g := v.g
	valid := func(name string) bool { _, ok := g.Lookup(name); return ok }
	err := v.mlog.compactIfWasteful(valid)
	if cerr := v.mlog.close(); err == nil {
		err = cerr
	}
	if lerr := v.led.commit(valid); err == nil {
		err = lerr
	}
	if v.linkRec != nil {
		if lerr := writeLinkRecord(v.o.StateDir, v.linkRec); err == nil {
			err = lerr
		}
	}
	v.recording = false
	return err
}

func (v *verifier) closeState() {
	if v.mlog != nil {
		v.mlog.close()
	}
	if v.led != nil {
		v.led.close()
	}
	if v.lockFile != nil {
		v.lockFile.Close()
		v.lockFile = nil
	}
}

// dropRaced re-reads the validity of every path with a finding and drops
// the findings of paths that stopped being valid during the audit (the
// garbage collector deleted them): they are not damage.
func (v *verifier) dropRaced(ctx context.Context) error {
	var paths []string
	seen := map[string]bool{}
	for _, f := range v.findings {
		if f.Path != "" && !seen[f.Path] {
			seen[f.Path] = true
			paths = append(paths, f.Path)
		}
	}
	if len(paths) == 0 {
		return nil
	}
	valid, err := v.s.DB.ValidAmong(ctx, paths)
	if err != nil {
		return err
	}
	kept := v.findings[:0]
	for _, f := range v.findings {
		if f.Path == "" || valid[f.Path] {
			kept = append(kept, f)
		}
	}
	v.findings = kept
	return nil
}

// blake3Writer adapts the BLAKE3 hasher to io.Writer without allocation.
type blake3Writer struct{ h *blake3.Hasher }

func (b blake3Writer) Write(p []byte) (int, error) { return b.h.Write(p) }

var _ io.Writer = blake3Writer{}

// remedy is a remedy of action for the path id, with the id of its row as
// the audit read it.
func (v *verifier) remedy(action finding.Action, id graph.PathID) *finding.Remedy {
	r := finding.NewRemedy(action, v.g.Path(id))
	r.IDs = []int64{v.g.DBID(id)}
	return r
}
