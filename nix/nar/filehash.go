package nar

import (
	"crypto/sha256"
	"encoding/binary"
	"hash"
)

// FileHasher computes the NAR hash of a lone regular file from its
// contents as they stream past (what HashOpenFile returns for the file,
// and the name Nix gives its entry in the .links directory), for a
// caller that reads the file for another purpose already: Reset with the
// file's size and executable bit, Write the contents, then Sum.
//
// A FileHasher is used by one goroutine at a time and may be reused
// after Reset.
type FileHasher struct {
	h       hash.Hash
	size    int64
	written int64
	hdr     []byte
}

// NewFileHasher returns a FileHasher; call Reset before writing.
func NewFileHasher() *FileHasher {
	return &FileHasher{h: sha256.New()}
}

// appendNarStr appends the NAR encoding of s: its length, its bytes and
// zero padding to a multiple of 8.
func appendNarStr(b []byte, s string) []byte {
	b = binary.LittleEndian.AppendUint64(b, uint64(len(s)))
	b = append(b, s...)
	return append(b, zeroPad[:(8-len(s)%8)%8]...)
}

// Reset starts the hash of a regular file of size bytes, executable or
// not (the owner's execute bit, as Nix serialises it).
func (f *FileHasher) Reset(size int64, executable bool) {
	f.h.Reset()
	f.size, f.written = size, 0
	b := f.hdr[:0]
	for _, s := range []string{"nix-archive-1", "(", "type", "regular"} {
		b = appendNarStr(b, s)
	}
	if executable {
		b = appendNarStr(appendNarStr(b, "executable"), "")
	}
	b = appendNarStr(b, "contents")
	b = binary.LittleEndian.AppendUint64(b, uint64(size))
	f.hdr = b
	f.h.Write(b)
}

// Write adds contents; it never fails.
func (f *FileHasher) Write(p []byte) (int, error) {
	f.written += int64(len(p))
	return f.h.Write(p)
}

// Sum returns the file's NAR hash and true when exactly the size given to
// Reset was written, or false (the contents were cut short or ran over:
// the hash would be of another file).
func (f *FileHasher) Sum() (Hash, bool) {
	if f.written != f.size {
		return Hash{}, false
	}
	var tail []byte
	tail = append(tail, zeroPad[:(8-f.size%8)%8]...)
	tail = appendNarStr(tail, ")")
	f.h.Write(tail)
	var h Hash
	f.h.Sum(h[:0])
	return h, true
}
