package verify

import (
	"bufio"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"path/filepath"
	"sort"

	"storekeeper/internal/varint"
	"storekeeper/nix/nar"
)

// ErrBadManifest is wrapped by errors decoding a manifest record.
var ErrBadManifest = errors.New("verify: bad manifest record")

// Entry is one node of a store path as a manifest records it.
type Entry struct {
	Name   string       // relative name, "" for the top of the path
	Type   nar.FileType // regular, directory or symlink
	Mode   uint32       // permission bits (st_mode & 07777)
	Size   int64        // a regular file's size, a symlink target's length
	Digest [32]byte     // BLAKE3 of a regular file's contents
	Target string       // a symlink's target
}

// Manifest lists every node of a store path as it was when the path last
// verified clean against its NAR hash.
type Manifest struct {
	Name    string   // the store path's base name
	NarHash nar.Hash // the NAR hash the contents matched
	Entries []Entry  // in NAR order (sorted by name bytewise, parents first)
}

// marshal encodes m compactly: name, hash, then per entry its name, type,
// mode, size and digest or target.
func (m *Manifest) marshal(b []byte) []byte {
	b = varint.AppendString(b, m.Name)
	b = append(b, m.NarHash[:]...)
	b = binary.AppendUvarint(b, uint64(len(m.Entries)))
	for i := range m.Entries {
		e := &m.Entries[i]
		b = varint.AppendString(b, e.Name)
		b = append(b, byte(e.Type))
		b = binary.AppendUvarint(b, uint64(e.Mode))
		switch e.Type {
		case nar.FileRegular:
			b = binary.AppendUvarint(b, uint64(e.Size))
			b = append(b, e.Digest[:]...)
		case nar.FileSymlink:
			b = varint.AppendString(b, e.Target)
		}
	}
	return b
}

// unmarshalHeader decodes the name and hash at the start of a record body.
func unmarshalHeader(body []byte) (string, nar.Hash, []byte, error) {
	d := varint.Decoder{B: body, Bad: ErrBadManifest}
	name := d.String()
	var h nar.Hash
	copy(h[:], d.Bytes(32))
	return name, h, d.B, d.Err
}

func unmarshalManifest(body []byte) (*Manifest, error) {
	name, h, rest, err := unmarshalHeader(body)
	if err != nil {
		return nil, err
	}
	m := &Manifest{Name: name, NarHash: h}
	d := varint.Decoder{B: rest, Bad: ErrBadManifest}
	n := d.Uvarint()
	if n > uint64(len(body)) {
		return nil, fmt.Errorf("%w: %d entries in %d bytes", ErrBadManifest, n, len(body))
	}
	m.Entries = make([]Entry, 0, n)
	for i := uint64(0); i < n && d.Err == nil; i++ {
		var e Entry
		e.Name = d.String()
		t := d.Bytes(1)
		if d.Err != nil {
			break
		}
		e.Type = nar.FileType(t[0])
		e.Mode = uint32(d.Uvarint())
		switch e.Type {
		case nar.FileRegular:
			e.Size = int64(d.Uvarint())
			copy(e.Digest[:], d.Bytes(32))
		case nar.FileSymlink:
			e.Target = d.String()
			e.Size = int64(len(e.Target))
		case nar.FileDirectory:
		default:
			d.Err = fmt.Errorf("%w: unknown file type %d", ErrBadManifest, t[0])
		}
		m.Entries = append(m.Entries, e)
	}
	if d.Err == nil && len(d.B) != 0 {
		d.Err = fmt.Errorf("%w: %d trailing bytes", ErrBadManifest, len(d.B))
	}
	if d.Err != nil {
		return nil, d.Err
	}
	return m, nil
}

// FileChange is one difference between a path's manifest and its contents.
type FileChange struct {
	Kind     string // "changed", "added" or "removed"
	File     string // relative name ("" for the top of the path)
	Expected string // what the manifest says ("" for an added file)
	Got      string // what is there now ("" for a removed file)
}

func describe(e *Entry) string {
	switch e.Type {
	case nar.FileRegular:
		kind := "file"
		if e.Mode&0o111 != 0 {
			kind = "executable"
		}
		return fmt.Sprintf("%s %d bytes blake3:%s", kind, e.Size, hex.EncodeToString(e.Digest[:]))
	case nar.FileSymlink:
		return "symlink -> " + e.Target
	case nar.FileDirectory:
		return "directory"
	}
	return e.Type.String()
}

// same reports whether two entries have the same NAR-visible contents:
// type, executable bit, size and digest, or target.
func same(a, b *Entry) bool {
	if a.Type != b.Type {
		return false
	}
	switch a.Type {
	case nar.FileRegular:
		return a.Size == b.Size && a.Digest == b.Digest && (a.Mode&0o100 != 0) == (b.Mode&0o100 != 0)
	case nar.FileSymlink:
		return a.Target == b.Target
	}
	return true
}

// Diff compares a recorded manifest with the current one and returns the
// files changed, added and removed, sorted by name. Only what a NAR holds
// counts: type, contents, the executable bit and symlink targets.
func Diff(old, cur *Manifest) []FileChange {
	om := make(map[string]*Entry, len(old.Entries))
	for i := range old.Entries {
		om[old.Entries[i].Name] = &old.Entries[i]
	}
	var out []FileChange
	seen := make(map[string]bool, len(cur.Entries))
	for i := range cur.Entries {
		c := &cur.Entries[i]
		seen[c.Name] = true
		o, ok := om[c.Name]
		switch {
		case !ok:
			out = append(out, FileChange{Kind: "added", File: c.Name, Got: describe(c)})
		case !same(o, c):
			out = append(out, FileChange{Kind: "changed", File: c.Name, Expected: describe(o), Got: describe(c)})
		}
	}
	for i := range old.Entries {
		o := &old.Entries[i]
		if !seen[o.Name] {
			out = append(out, FileChange{Kind: "removed", File: o.Name, Expected: describe(o)})
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].File < out[j].File })
	return out
}

// The manifest log is one append-only file, manifests.log: a sequence of
// records, each a 4-byte little-endian body length, a 4-byte CRC-32C of
// the body, and the body (Manifest.marshal). A later record for the same
// name replaces an earlier one. Appends are cheap (one buffered writer for
// 63k paths, no file per path) and a crash can only leave a torn last
// record, which the next open detects by its length or checksum and cuts
// off. Opening reads the file once and indexes name -> (offset, hash);
// full records are decoded only for paths that fail.

const manifestLogName = "manifests.log"

var crcTable = crc32.MakeTable(crc32.Castagnoli)

type manifestRef struct {
	off  int64 // offset of the body
	size uint32
	hash nar.Hash
}

// manifestLog is the manifest store. It is used by one goroutine (the
// collector) at a time, except get, which only reads the immutable
// prefix through ReadAt and is safe concurrently with appends.
type manifestLog struct {
	path  string
	f     *os.File // read-write when writable, read-only otherwise
	w     *bufio.Writer
	end   int64 // offset where the next record goes
	index map[string]manifestRef
	dead  int // records superseded by later ones
	added int
	buf   []byte
}

// openManifestLog opens (creating if writable) the log in dir and indexes
// it; a torn tail is cut off when writable. A missing log is empty.
func openManifestLog(dir string, writable bool) (*manifestLog, error) {
	p := filepath.Join(dir, manifestLogName)
	l := &manifestLog{path: p, index: map[string]manifestRef{}}
	var err error
	if writable {
		l.f, err = os.OpenFile(p, os.O_RDWR|os.O_CREATE, 0o644)
	} else {
		l.f, err = os.Open(p)
		if errors.Is(err, os.ErrNotExist) {
			return l, nil
		}
	}
	if err != nil {
		return nil, err
	}
	valid, err := l.scan()
	if err != nil {
		l.f.Close()
		return nil, err
	}
	l.end = valid
	if writable {
		st, err := l.f.Stat()
		if err == nil && st.Size() != valid {
			err = l.f.Truncate(valid)
		}
		if err != nil {
			l.f.Close()
			return nil, fmt.Errorf("verify: cutting the torn end of %s: %w", p, err)
		}
		if _, err := l.f.Seek(valid, io.SeekStart); err != nil {
			l.f.Close()
			return nil, err
		}
		l.w = bufio.NewWriterSize(l.f, 1<<20)
	}
	return l, nil
}

// scan indexes the records and returns the length of the valid prefix.
func (l *manifestLog) scan() (int64, error) {
	r := bufio.NewReaderSize(l.f, 1<<20)
	var off int64
	var hdr [8]byte
	var body []byte
	for {
		if _, err := io.ReadFull(r, hdr[:]); err != nil {
			return off, nil // EOF or a torn header
		}
		n := binary.LittleEndian.Uint32(hdr[:4])
		sum := binary.LittleEndian.Uint32(hdr[4:])
		if n > 64<<20 {
			return off, nil
		}
		if cap(body) < int(n) {
			body = make([]byte, n)
		}
		body = body[:n]
		if _, err := io.ReadFull(r, body); err != nil {
			return off, nil
		}
		if crc32.Checksum(body, crcTable) != sum {
			return off, nil
		}
		name, h, _, err := unmarshalHeader(body)
		if err != nil {
			return off, nil
		}
		if _, ok := l.index[name]; ok {
			l.dead++
		}
		l.index[name] = manifestRef{off: off + 8, size: n, hash: h}
		off += 8 + int64(n)
	}
}

// has reports whether a manifest of name taken at hash h is recorded.
func (l *manifestLog) has(name string, h nar.Hash) bool {
	r, ok := l.index[name]
	return ok && r.hash == h
}

// get reads the recorded manifest of name, or nil if there is none.
func (l *manifestLog) get(name string) (*Manifest, error) {
	r, ok := l.index[name]
	if !ok || l.f == nil {
		return nil, nil
	}
	if l.w != nil && r.off+int64(r.size) > l.end-int64(l.w.Buffered()) {
		if err := l.w.Flush(); err != nil {
			return nil, err
		}
	}
	body := make([]byte, r.size)
	if _, err := l.f.ReadAt(body, r.off); err != nil {
		return nil, err
	}
	return unmarshalManifest(body)
}

// add appends m. It is buffered: flush makes it durable against kill -9,
// sync against power loss.
func (l *manifestLog) add(m *Manifest) error {
	if l.w == nil {
		return errors.New("verify: the manifest log is read-only")
	}
	l.buf = m.marshal(l.buf[:0])
	var hdr [8]byte
	binary.LittleEndian.PutUint32(hdr[:4], uint32(len(l.buf)))
	binary.LittleEndian.PutUint32(hdr[4:], crc32.Checksum(l.buf, crcTable))
	if _, err := l.w.Write(hdr[:]); err != nil {
		return err
	}
	if _, err := l.w.Write(l.buf); err != nil {
		return err
	}
	if _, ok := l.index[m.Name]; ok {
		l.dead++
	}
	l.index[m.Name] = manifestRef{off: l.end + 8, size: uint32(len(l.buf)), hash: m.NarHash}
	l.end += 8 + int64(len(l.buf))
	l.added++
	return nil
}

// close flushes, syncs and closes the log.
func (l *manifestLog) close() error {
	if l.f == nil {
		return nil
	}
	var err error
	if l.w != nil {
		err = l.w.Flush()
		if err == nil {
			err = l.f.Sync()
		}
	}
	if cerr := l.f.Close(); err == nil {
		err = cerr
	}
	l.f = nil
	return err
}

// compactIfWasteful rewrites the log without superseded records when they
// outnumber the live ones (each re-recorded path leaves one behind). The
// new log is written beside the old one, fsynced and renamed over it, so
// a crash leaves one complete log or the other. Only names keep accepts
// are kept (manifests of paths no longer valid are dropped).
func (l *manifestLog) compactIfWasteful(keep func(name string) bool) error {
	if l.w == nil {
		return nil
	}
	stale := 0
	for name := range l.index {
		if !keep(name) {
			stale++
		}
	}
	if l.dead+stale < 4096 || l.dead+stale < len(l.index) {
		return nil
	}
	if err := l.w.Flush(); err != nil {
		return err
	}
	type rec struct {
		name string
		ref  manifestRef
	}
	var recs []rec
	for name, r := range l.index {
		if keep(name) {
			recs = append(recs, rec{name, r})
		}
	}
	sort.Slice(recs, func(i, j int) bool { return recs[i].ref.off < recs[j].ref.off })
	tmp := l.path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return err
	}
	w := bufio.NewWriterSize(f, 1<<20)
	index := make(map[string]manifestRef, len(recs))
	var off int64
	var body []byte
	for _, r := range recs {
		if cap(body) < int(r.ref.size) {
			body = make([]byte, r.ref.size)
		}
		body = body[:r.ref.size]
		if _, err = l.f.ReadAt(body, r.ref.off); err != nil {
			break
		}
		var hdr [8]byte
		binary.LittleEndian.PutUint32(hdr[:4], r.ref.size)
		binary.LittleEndian.PutUint32(hdr[4:], crc32.Checksum(body, crcTable))
		w.Write(hdr[:])
		if _, err = w.Write(body); err != nil {
			break
		}
		index[r.name] = manifestRef{off: off + 8, size: r.ref.size, hash: r.ref.hash}
		off += 8 + int64(r.ref.size)
	}
	if err == nil {
		err = w.Flush()
	}
	if err == nil {
		err = f.Sync()
	}
	if err == nil {
		err = os.Rename(tmp, l.path)
	}
	if err != nil {
		f.Close()
		os.Remove(tmp)
		return err
	}
	syncDir(filepath.Dir(l.path))
	l.f.Close()
	if _, err := f.Seek(off, io.SeekStart); err != nil {
		f.Close()
		l.f, l.w = nil, nil
		return err
	}
	l.f, l.w = f, bufio.NewWriterSize(f, 1<<20)
	l.index, l.end, l.dead = index, off, 0
	return nil
}
