package verify

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"

	"storekeeper/nix/nar"
	"storekeeper/nix/storepath"
	"storekeeper/report"
	"storekeeper/verify/finding"
)

// linkSet is the store's .links directory as listed before the paths are
// hashed. Every .links entry is checked against its name (the NAR hash
// of the file it is), which Nix never does. After `optimise` nearly every
// file of a store is also a .links entry, so reading each entry on its
// own would read the store twice: instead, when a worker meets a file
// whose inode an entry was listed with, it claims the entry and computes
// the entry's hash from the same read (nar.FileHasher), and only the
// entries nobody claimed are read afterwards.
//
// A recording run writes the entries it found matching their names from
// a path's read, with their inode's state (linkKey), to the links record
// (linkrecord.go). A later run skips the FileHasher of an entry whose
// inode, fstat at the claim, has the recorded key: not written since it
// matched. Bit rot leaves the ctime alone, so a skipped entry counts as
// matching only if the path whose read claimed it verified clean (its
// NAR hash the DB's) in this run; otherwise checkLinks reads it on its
// own. Only entries whose claiming path verified clean are recorded, so
// a recorded entry's bytes as read were in a NAR of the DB's hash, and a
// later clean read of the same inode read the same bytes: the skip is
// sound even if a write left the ctime alone (coarse timestamps).
//
// Concurrency: claim is safe from any number of workers; each entry is
// claimed at most once, and its result is written only by its claimer,
// before the workers are waited for; checkLinks reads the results after.
// A claimed result counts only if the entry is still that inode, in the
// state (linkKey: ctime, size) the claim's stat saw, when it is checked
// (an fstatat of the entry), so an entry replaced meanwhile, an inode
// written, grown or truncated during or after the read, or a file system
// whose directory listings give other inode numbers than stat
// (overlayfs), is read on its own as before.
type linkSet struct {
	dir     string
	dev     uint64
	names   []string       // sorted
	byIno   map[uint64]int // inode number at listing -> index in names
	claimed []atomic.Bool
	res     []linkResult // by index, written by the claimer
	known   []knownLink  // by index: what the links record says, if anything
}

// knownLink is an entry the links record holds: its name decoded and the
// state of the inode it was found matching.
type knownLink struct {
	ok   bool
	hash nar.Hash
	key  linkKey
}

// linkResult is an entry's hash as computed from a path's read of the
// same inode, or as known from the links record for that inode's state.
type linkResult struct {
	ok      bool // hash is the inode's (computed, or known and the path clean)
	skipped bool // known from the record: hash is the name's, not computed
	clean   bool // the claiming path's NAR hash was the DB's
	key     linkKey
	hash    nar.Hash
}

// Test-only counters of how the claimed entries of the last checkLinks
// were hashed; each is set once a run, after the workers are done.
var (
	testLinksSkipped  atomic.Int64 // known from the record, FileHasher skipped
	testLinksInRead   atomic.Int64 // FileHasher in a path's read
	testLinksReadOwn  atomic.Int64 // read on their own in checkLinks
	testLinksRecorded atomic.Int64 // to be written to the links record
)

// listLinks lists the .links directory (names and inode numbers, one
// getdents pass). A store without one has no linkSet.
func (v *verifier) listLinks() error {
	dir := v.lay.LinksDir()
	d, err := os.Open(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("verify: reading %s: %w", dir, err)
	}
	defer d.Close()
	var st unix.Stat_t
	if err := unix.Fstat(int(d.Fd()), &st); err != nil {
		return fmt.Errorf("verify: %s: %w", dir, err)
	}
	ents, err := readDirInodes(int(d.Fd()))
	if err != nil {
		return fmt.Errorf("verify: reading %s: %w", dir, err)
	}
	sort.Slice(ents, func(i, j int) bool { return ents[i].name < ents[j].name })
	s := &linkSet{dir: dir, dev: uint64(st.Dev), names: make([]string, len(ents)), byIno: make(map[uint64]int, len(ents))}
	for i, e := range ents {
		s.names[i] = e.name
		if _, dup := s.byIno[e.ino]; !dup {
			s.byIno[e.ino] = i
		}
	}
	s.claimed = make([]atomic.Bool, len(ents))
	s.res = make([]linkResult, len(ents))
	v.links = s
	v.loadLinkRecord()
	return nil
}

// loadLinkRecord fills v.links.known from the state directory's links
// record, also on a run that does not record. A missing, unreadable or
// invalid record leaves nothing known: every claimed entry is hashed.
func (v *verifier) loadLinkRecord() {
	s := v.links
	m, err := readLinkRecord(v.o.StateDir, linkRecordLimit(len(s.names)))
	if err != nil || len(m) == 0 {
		return
	}
	s.known = make([]knownLink, len(s.names))
	for i, name := range s.names {
		if len(name) != 52 {
			continue
		}
		b, err := storepath.DecodeBase32(name)
		if err != nil || len(b) != 32 {
			continue
		}
		var h nar.Hash
		copy(h[:], b)
		if k, ok := m[h]; ok {
			s.known[i] = knownLink{ok: true, hash: h, key: k}
		}
	}
}

// skip reports whether entry i, claimed for an inode with st, is known
// from the links record for exactly st's state.
func (s *linkSet) skip(i int, st *unix.Stat_t) bool {
	return s.known != nil && s.known[i].ok && s.known[i].key == keyOf(st)
}

// claim returns the index of the entry listed with st's inode if the
// caller is the first to ask for it, or -1: not a multiply linked regular
// file of the .links directory's file system, no entry has its inode, or
// another worker has it.
func (s *linkSet) claim(st *unix.Stat_t) int {
	if s == nil || st.Mode&unix.S_IFMT != unix.S_IFREG || st.Nlink < 2 || uint64(st.Dev) != s.dev {
		return -1
	}
	i, ok := s.byIno[st.Ino]
	if !ok || !s.claimed[i].CompareAndSwap(false, true) {
		return -1
	}
	return i
}

// checkLinks checks every listed .links entry against its name: from the
// hash a path's read gave for its inode (or the links record knew for its
// state, the path clean) when the entry is still that inode in the state
// the claim saw, else by
// NAR-hashing the entry. Entries removed meanwhile (gc, optimise) are
// skipped. On a recording run it leaves in v.linkRec the entries to
// record: found matching from a clean path's read, the inode still in
// the state the read began with; commitState writes them.
func (v *verifier) checkLinks(ctx context.Context) error {
	s := v.links
	dir := s.dir
	v.prog.Phase("checking links", int64(len(s.names)), false)
	type res struct {
		got nar.Hash
		err error
	}
	out := make([]res, len(s.names))
	dirf, err := os.Open(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil // removed since it was listed: nothing left to check
	}
	if err != nil {
		return fmt.Errorf("verify: reading %s: %w", dir, err)
	}
	defer dirf.Close()
	dirfd := int(dirf.Fd())
	// fromRead[i]: out[i] is a claimed result whose inode was still the
	// entry's, in the state it was claimed in, from a clean path's read
	// (so recordable).
	fromRead := make([]bool, len(s.names))
	var readOwn atomic.Int64
	var next atomic.Int64
	var wg sync.WaitGroup
	for w := 0; w < v.o.Jobs; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				i := int(next.Add(1) - 1)
				if i >= len(s.names) {
					return
				}
				if r := &s.res[i]; r.ok {
					var st unix.Stat_t
					err := unix.Fstatat(dirfd, s.names[i], &st, unix.AT_SYMLINK_NOFOLLOW)
					// The inode in the state the read began with: a
					// file written, grown or cut during the read (whose
					// hash may be of neither contents: the FileHasher
					// only sees as many bytes as announced) is read
					// again, as is an entry replaced meanwhile.
					if err == nil && keyOf(&st) == r.key {
						out[i] = res{got: r.hash}
						fromRead[i] = r.clean
						v.prog.Add(1)
						continue
					}
				}
				readOwn.Add(1)
				h, _, err := nar.HashPathFiles(filepath.Join(dir, s.names[i]), nil)
				out[i] = res{h, err}
				v.prog.Add(1)
			}
		}()
	}
	wg.Wait()
	if err := ctx.Err(); err != nil {
		return err
	}
	var skipped, inRead int64
	for i := range s.res {
		if s.res[i].skipped {
			skipped++
		} else if s.res[i].ok {
			inRead++
		}
	}
	testLinksSkipped.Store(skipped)
	testLinksInRead.Store(inRead)
	testLinksReadOwn.Store(readOwn.Load())
	if v.recording {
		// The entries found matching from a clean path's read (or known
		// and confirmed by one), in the state they were read in.
		rec := make(map[[32]byte]linkKey)
		for i, name := range s.names {
			if fromRead[i] && out[i].err == nil && out[i].got.Base32() == name {
				rec[out[i].got] = s.res[i].key
			}
		}
		v.linkRec = rec
	}
	testLinksRecorded.Store(int64(len(v.linkRec)))
	v.sum.Links = len(s.names)
	for i, r := range out {
		name := s.names[i]
		lp := filepath.Join(v.lay.StoreDir, ".links", name)
		if r.err != nil {
			if errors.Is(r.err, os.ErrNotExist) {
				continue // removed meanwhile (gc, optimise)
			}
			if errors.Is(r.err, nar.ErrUnsupportedFileType) {
				// A fifo, socket or device (at the top or inside a
				// directory): no NAR has one, so no link can be one.
				v.add(finding.Finding{Kind: finding.KindLinkModified, File: lp, Expected: name, Got: r.err.Error(),
					Message: fmt.Sprintf("link '%s' cannot be a link of Nix's: %s", report.Name(lp), report.Name(r.err.Error())),
					Remedy:  finding.NewRemedy(finding.RemedyRemoveLinksEntry, lp)})
				continue
			}
			v.add(finding.Finding{Kind: finding.KindIOError, File: lp, Got: r.err.Error(),
				Message: fmt.Sprintf("error checking link '%s': %s", report.Name(lp), report.Name(r.err.Error()))})
			continue
		}
		if got := r.got.Base32(); got != name {
			v.add(finding.Finding{Kind: finding.KindLinkModified, File: lp, Expected: name, Got: got,
				Message: fmt.Sprintf("link '%s' was modified! expected hash '%s', got '%s'", report.Name(lp), report.Name(name), got),
				Remedy:  finding.NewRemedy(finding.RemedyRemoveLinksEntry, lp)})
		}
	}
	return nil
}
