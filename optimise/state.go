package optimise

import (
	"bytes"
	"encoding/binary"
	"errors"
	"hash/crc32"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"sync"

	"storekeeper/internal/varint"
)

// The linked-paths state lets a run skip the store paths that an earlier
// run left fully linked and that have not changed since, instead of
// walking every directory of the store again: after a large install only
// the new paths are walked.
//
// A record says: store path NAME, registered under DB id ID, whose
// top-level directory was inode TOP, was walked completely by a run with
// --min-size MIN, and every regular file and symlink of it (but SMALL
// ones below MIN) ended up hard-linked to one of the .links inodes
// INODES. A later run skips the path only if all of that still holds: the
// same DB id (a path collected and registered again gets a new one), the
// same top-level inode (from the store directory's entries; a repaired
// path is a new directory), the same --min-size, and every recorded
// inode still among the inode numbers of .links (which the run lists
// anyway). The one change that goes unseen is a file replaced deep inside
// a path without a new top directory: that is tampering, which `verify
// --check-contents` reports, and --full walks everything regardless.
//
// Only top-level directories are recorded: a top-level file costs no
// walk (its inode is in the store directory's entries).
//
// The file (storekeeper's state dir/optimise-linked) is a magic line, then the records,
// then a CRC-32C of all that. It is replaced by write-to-temp and rename at
// the end of a run; a torn or damaged file fails its checksum and is
// ignored (the next run walks everything), so no ordering against the
// store's own writes is needed: a record only ever lets a run skip work.
type linkedState struct {
	mu      sync.Mutex
	recs    map[string]*linkedRec // by store path base name
	changed bool                  // since loaded: save writes only then
}

type linkedRec struct {
	dbID    int64
	top     uint64
	minSize int64
	files   int64    // files linked
	small   int64    // files below minSize, not linked
	inodes  []uint64 // the distinct .links inodes of the linked files, sorted
}

const (
	linkedStateName  = "optimise-linked"
	linkedStateMagic = "storekeeper optimise linked-paths 1\n"
)

var crcTable = crc32.MakeTable(crc32.Castagnoli)

func (r *run) linkedStatePath() string {
	return filepath.Join(r.s.Layout.OwnStateDir(), linkedStateName)
}

// loadLinkedState reads the state file at p. A missing, unreadable or
// damaged file gives an empty state.
func loadLinkedState(p string) *linkedState {
	s := &linkedState{recs: map[string]*linkedRec{}}
	b, err := os.ReadFile(p)
	if err != nil || len(b) < len(linkedStateMagic)+4 || !bytes.HasPrefix(b, []byte(linkedStateMagic)) {
		return s
	}
	body, sum := b[:len(b)-4], binary.LittleEndian.Uint32(b[len(b)-4:])
	if crc32.Checksum(body, crcTable) != sum {
		return s
	}
	d := varint.Decoder{B: body[len(linkedStateMagic):], Bad: errBadState}
	recs := map[string]*linkedRec{}
	for len(d.B) > 0 && d.Err == nil {
		name := d.String()
		rec := &linkedRec{dbID: int64(d.Uvarint()), top: d.Uvarint(), minSize: int64(d.Uvarint()), files: int64(d.Uvarint()), small: int64(d.Uvarint())}
		n := d.Uvarint()
		if n > uint64(len(d.B)) {
			d.Err = errBadState
			break
		}
		rec.inodes = make([]uint64, n)
		var prev uint64
		for i := range rec.inodes {
			prev += d.Uvarint()
			rec.inodes[i] = prev
		}
		recs[name] = rec
	}
	if d.Err == nil {
		s.recs = recs
	}
	return s
}

var errBadState = errors.New("optimise: damaged linked-paths state")

// marshal encodes the state, records sorted by name.
func (s *linkedState) marshal() []byte {
	names := make([]string, 0, len(s.recs))
	for n := range s.recs {
		names = append(names, n)
	}
	sort.Strings(names)
	b := []byte(linkedStateMagic)
	for _, n := range names {
		rec := s.recs[n]
		b = varint.AppendString(b, n)
		b = binary.AppendUvarint(b, uint64(rec.dbID))
		b = binary.AppendUvarint(b, rec.top)
		b = binary.AppendUvarint(b, uint64(rec.minSize))
		b = binary.AppendUvarint(b, uint64(rec.files))
		b = binary.AppendUvarint(b, uint64(rec.small))
		b = binary.AppendUvarint(b, uint64(len(rec.inodes)))
		var prev uint64
		for _, ino := range rec.inodes {
			b = binary.AppendUvarint(b, ino-prev)
			prev = ino
		}
	}
	return binary.LittleEndian.AppendUint32(b, crc32.Checksum(b, crcTable))
}

// save writes the state to p through a temporary file and a rename, so a
// reader sees the old file or the new one. Concurrent runs each replace
// the file with their own view; the records a run loses that way only
// make a later run walk those paths again.
func (s *linkedState) save(p string, pid int) error {
	s.mu.Lock()
	b := s.marshal()
	s.mu.Unlock()
	tmp := p + ".tmp-" + strconv.Itoa(pid)
	if err := os.WriteFile(tmp, b, 0o644); err != nil {
		os.Remove(tmp)
		return err
	}
	if err := os.Rename(tmp, p); err != nil {
		os.Remove(tmp)
		return err
	}
	return nil
}

// unchanged reports whether rec still describes the path registered as
// dbID whose top-level directory is inode top, for a run with minSize and
// the .links inodes in links. (A different --min-size walks again, so
// that the counts are those of a walk.)
func (rec *linkedRec) unchanged(dbID int64, top uint64, minSize int64, links *inodeSet) bool {
	if rec.dbID != dbID || rec.top != top || minSize != rec.minSize {
		return false
	}
	for _, ino := range rec.inodes {
		if !links.has(ino) {
			return false
		}
	}
	return true
}

// pathRecord is what a run learns about one store path while it walks and
// links it. Every file job the walk queues must end in settle (it ends up
// linked) or the path is not recorded; anything unexpected (an error, a
// suspicious file, a vanished or replaced file, a corrupted .links entry,
// cancellation) simply leaves a job unsettled or calls spoil.
type pathRecord struct {
	mu      sync.Mutex
	inodes  []uint64
	small   int64
	jobs    int64 // file jobs queued
	settled int64 // file jobs that ended linked
	spoiled bool
}

// linked notes a file of the path, not queued, that is hard-linked to
// .links inode ino already.
func (p *pathRecord) linked(ino uint64) {
	p.mu.Lock()
	p.inodes = append(p.inodes, ino)
	p.mu.Unlock()
}

// skippedSmall notes a file of the path, not queued, below --min-size.
func (p *pathRecord) skippedSmall() {
	p.mu.Lock()
	p.small++
	p.mu.Unlock()
}

// queued notes a file job of the path.
func (p *pathRecord) queued() {
	p.mu.Lock()
	p.jobs++
	p.mu.Unlock()
}

// settle notes that a queued job ended with its file linked to ino.
func (p *pathRecord) settle(ino uint64) {
	p.mu.Lock()
	p.inodes = append(p.inodes, ino)
	p.settled++
	p.mu.Unlock()
}

// settleSmall notes that a queued job found its file below --min-size.
func (p *pathRecord) settleSmall() {
	p.mu.Lock()
	p.small++
	p.settled++
	p.mu.Unlock()
}

func (p *pathRecord) spoil() {
	p.mu.Lock()
	p.spoiled = true
	p.mu.Unlock()
}

// finish turns a completely processed path into a record, or nil if the
// path is not known to be fully linked.
func (p *pathRecord) finish(dbID int64, top uint64, minSize int64) *linkedRec {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.spoiled || p.settled != p.jobs {
		return nil
	}
	files := int64(len(p.inodes))
	inodes := slices.Clone(p.inodes)
	slices.Sort(inodes)
	return &linkedRec{dbID: dbID, top: top, minSize: minSize, files: files, small: p.small, inodes: slices.Compact(inodes)}
}

// saveLinkedState writes the linked-paths state at the end of a run over
// paths. A run over every valid path drops the records of paths no longer
// valid. Failing to write it only costs the next run a full walk; the
// reason is kept in Result.StateError.
func (r *run) saveLinkedState(paths []target) {
	if len(r.o.Paths) == 0 {
		valid := make(map[string]bool, len(paths))
		off := len(r.s.Layout.StoreDir) + 1
		for _, t := range paths {
			valid[t.path[off:]] = true
		}
		r.linked.mu.Lock()
		for name := range r.linked.recs {
			if !valid[name] {
				delete(r.linked.recs, name)
				r.linked.changed = true
			}
		}
		r.linked.mu.Unlock()
	}
	if !r.linked.changed {
		return
	}
	if err := r.linked.save(r.linkedStatePath(), r.pid); err != nil {
		r.res.StateError = err.Error()
	}
}
