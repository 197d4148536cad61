package verify

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// The links record says which .links entries a recording run found
// matching their names, and for which state of their inode. It is one
// file in the state directory, links.rec, replaced only by write to a
// temporary file, fsync, rename and fsync of the directory, under the
// state directory's lock (as the ledger's snapshot is): a crash or kill
// at any point leaves the old record or the new one, never a mix. Its
// format (little-endian):
//
//	magic    "SKLINKS\n"
//	version  uint32 (1)
//	count    uint32
//	count records of 72 bytes, in any order:
//	  hash   [32]byte  the entry's name, decoded (the file's NAR sha256)
//	  dev    uint64    st_dev
//	  ino    uint64    st_ino
//	  ctsec  int64     st_ctim.tv_sec
//	  ctnsec int64     st_ctim.tv_nsec
//	  size   int64     st_size
//	crc      uint32    CRC-32C (Castagnoli) of everything before it
//
// A file that is not exactly this (other magic or version, wrong length,
// bad CRC, two records of one hash) is ignored as a whole: every entry is
// then hashed, as without a record, and the next recording run replaces
// it.

const (
	linkRecordName    = "links.rec"
	linkRecordMagic   = "SKLINKS\n"
	linkRecordVersion = 1
	linkRecordHeader  = len(linkRecordMagic) + 4 + 4
	linkRecordSize    = 32 + 5*8
)

// linkKey is the state of an inode that a record holds: any write,
// truncation, chmod, chown or change of the link count sets a new ctime,
// so an inode with the same key was not changed since (bit rot aside,
// which is why a skipped entry also needs a clean path; see linkSet).
type linkKey struct {
	dev, ino      uint64
	ctSec, ctNsec int64
	size          int64
}

func keyOf(st *unix.Stat_t) linkKey {
	return linkKey{dev: uint64(st.Dev), ino: st.Ino, ctSec: st.Ctim.Sec, ctNsec: st.Ctim.Nsec, size: st.Size}
}

// errBadLinkRecord is wrapped by the errors of a links record that is not
// one (foreign, truncated, damaged, too big).
var errBadLinkRecord = errors.New("not a valid links record")

// encodeLinkRecord is the record file's contents for m.
func encodeLinkRecord(m map[[32]byte]linkKey) []byte {
	b := make([]byte, 0, linkRecordHeader+len(m)*linkRecordSize+4)
	b = append(b, linkRecordMagic...)
	b = binary.LittleEndian.AppendUint32(b, linkRecordVersion)
	b = binary.LittleEndian.AppendUint32(b, uint32(len(m)))
	for h, k := range m {
		b = append(b, h[:]...)
		b = binary.LittleEndian.AppendUint64(b, k.dev)
		b = binary.LittleEndian.AppendUint64(b, k.ino)
		b = binary.LittleEndian.AppendUint64(b, uint64(k.ctSec))
		b = binary.LittleEndian.AppendUint64(b, uint64(k.ctNsec))
		b = binary.LittleEndian.AppendUint64(b, uint64(k.size))
	}
	return binary.LittleEndian.AppendUint32(b, crc32.Checksum(b, crcTable))
}

// decodeLinkRecord parses a whole record file.
func decodeLinkRecord(b []byte) (map[[32]byte]linkKey, error) {
	if len(b) < linkRecordHeader+4 || string(b[:len(linkRecordMagic)]) != linkRecordMagic {
		return nil, fmt.Errorf("%w: no header", errBadLinkRecord)
	}
	if v := binary.LittleEndian.Uint32(b[8:]); v != linkRecordVersion {
		return nil, fmt.Errorf("%w: version %d", errBadLinkRecord, v)
	}
	n := int64(binary.LittleEndian.Uint32(b[12:]))
	if int64(len(b)) != int64(linkRecordHeader)+n*linkRecordSize+4 {
		return nil, fmt.Errorf("%w: %d bytes for %d records", errBadLinkRecord, len(b), n)
	}
	body := b[:len(b)-4]
	if crc32.Checksum(body, crcTable) != binary.LittleEndian.Uint32(b[len(body):]) {
		return nil, fmt.Errorf("%w: checksum mismatch", errBadLinkRecord)
	}
	m := make(map[[32]byte]linkKey, n)
	for p := body[linkRecordHeader:]; len(p) > 0; p = p[linkRecordSize:] {
		var h [32]byte
		copy(h[:], p)
		r := p[32:]
		k := linkKey{
			dev:    binary.LittleEndian.Uint64(r),
			ino:    binary.LittleEndian.Uint64(r[8:]),
			ctSec:  int64(binary.LittleEndian.Uint64(r[16:])),
			ctNsec: int64(binary.LittleEndian.Uint64(r[24:])),
			size:   int64(binary.LittleEndian.Uint64(r[32:])),
		}
		if _, dup := m[h]; dup {
			return nil, fmt.Errorf("%w: two records of one entry", errBadLinkRecord)
		}
		m[h] = k
	}
	return m, nil
}

// linkRecordLimit is the largest record file read for a .links directory
// of n entries: 128 bytes an entry and 4 KiB, well above what a record of
// them all takes (72 bytes an entry and 20). A bigger file is refused
// unread, so a foreign or runaway file costs no memory.
func linkRecordLimit(n int) int64 { return 128*int64(n) + 4096 }

// readLinkRecord reads dir's links record, refusing one bigger than
// limit bytes. A missing record is (nil, nil); an unreadable, foreign or
// damaged one is an error wrapping the cause, which the caller ignores
// (everything is hashed). It takes no lock: the record is only ever
// replaced by rename, so a reader sees a whole old or a whole new one.
func readLinkRecord(dir string, limit int64) (map[[32]byte]linkKey, error) {
	f, err := os.OpenFile(filepath.Join(dir, linkRecordName), os.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK, 0)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("verify: links record: %w", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("verify: links record: %w", err)
	}
	if !st.Mode().IsRegular() || st.Size() > limit {
		return nil, fmt.Errorf("verify: links record: %w: %d bytes, at most %d read", errBadLinkRecord, st.Size(), limit)
	}
	// At most limit+1 bytes whatever the size said: a file growing
	// meanwhile is refused too.
	b, err := io.ReadAll(io.LimitReader(f, limit+1))
	if err != nil {
		return nil, fmt.Errorf("verify: links record: %w", err)
	}
	if int64(len(b)) > limit {
		return nil, fmt.Errorf("verify: links record: %w: more than %d bytes", errBadLinkRecord, limit)
	}
	m, err := decodeLinkRecord(b)
	if err != nil {
		return nil, fmt.Errorf("verify: links record: %w", err)
	}
	return m, nil
}

// writeLinkRecord replaces dir's links record by one of m (replaceFile):
// a crash leaves the old record or the new one, an error the old one.
// The caller holds the state directory's lock (only it writes the
// temporary file).
func writeLinkRecord(dir string, m map[[32]byte]linkKey) error {
	b := encodeLinkRecord(m)
	err := replaceFile(dir, linkRecordName, func(f io.Writer) error {
		if _, err := f.Write(b[:len(b)/2]); err != nil {
			return err
		}
		testReplaceCrash(linkRecordName, "half")
		_, err := f.Write(b[len(b)/2:])
		return err
	})
	if err != nil {
		return fmt.Errorf("verify: links record: %w", err)
	}
	return nil
}
