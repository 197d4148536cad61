// Package refscan finds which store paths a store path refers to, the way
// Nix's reference scanner does (scanForReferences, RefScanSink): the
// 32-character hash part of each candidate path is searched for in the
// path's NAR serialisation, so a reference hidden in any file's contents,
// a symlink target or a file name counts, and nothing else does.
//
// A Scanner is an io.Writer: dump the path into it (nix/nar's DumpPath or
// DumpPathAt, which never follow a symlink) and read Found. It keeps the
// last HashLen-1 bytes of each write so a hash split between two writes
// is still found. It does no I/O and is not safe for concurrent use.
package refscan

import (
	"slices"
	"strings"

	"storekeeper/nix/storepath"
)

// HashLen is the length of a store path's hash part.
const HashLen = storepath.HashLen

// isBase32 marks Nix's base-32 digits (0-9 and a-z without e, o, u, t).
var isBase32 [256]bool

func init() {
	for _, c := range []byte(storepath.Base32Chars) {
		isBase32[c] = true
	}
}

// Scanner finds candidate hash parts in what is written to it.
type Scanner struct {
	want map[string]string // hash part -> the candidate's full path (shared, read-only)
	seen map[string]bool   // full paths found
	tail []byte            // the last HashLen-1 bytes written
	buf  []byte
}

// New returns a scanner for the candidate store paths (full paths; a
// path's hash part is what is searched for, as in Nix). Candidates that
// are not store paths of storeDir are ignored.
func New(storeDir string, candidates []string) *Scanner {
	return NewSet(storeDir, candidates).Scanner()
}

// Set is a prepared set of candidates that the scanners of many paths
// share (scanning each path of a large batch against the same
// candidates indexes them once). It is read-only once made, so its
// scanners may run in different goroutines.
type Set struct {
	want map[string]string // hash part -> the candidate's full path
}

// NewSet prepares the candidates as New does.
func NewSet(storeDir string, candidates []string) *Set {
	c := &Set{want: make(map[string]string, len(candidates))}
	for _, p := range candidates {
		base, err := storepath.Parse(storeDir, p)
		if err != nil {
			continue
		}
		c.want[storepath.HashPart(base)] = p
	}
	return c
}

// Scanner returns a new scanner for the set's candidates.
func (c *Set) Scanner() *Scanner {
	return &Scanner{want: c.want, seen: map[string]bool{}}
}

// Write scans p; it never fails.
func (s *Scanner) Write(p []byte) (int, error) {
	if len(s.want) == 0 {
		return len(p), nil
	}
	// The tail of the last write and the head of this one, for hashes
	// split between them (Nix's RefScanSink does the same).
	if len(s.tail) > 0 {
		s.buf = append(append(s.buf[:0], s.tail...), p[:min(len(p), HashLen-1)]...)
		s.search(s.buf)
	}
	s.search(p)
	keep := HashLen - 1
	if len(p) >= keep {
		s.tail = append(s.tail[:0], p[len(p)-keep:]...)
	} else {
		s.tail = append(s.tail, p...)
		if len(s.tail) > keep {
			s.tail = s.tail[len(s.tail)-keep:]
		}
	}
	return len(p), nil
}

// search is Nix's search(): at each position, the HashLen bytes there are
// checked from the last to the first, and the position moves past the
// first byte that is not a base-32 digit.
func (s *Scanner) search(b []byte) {
	for i := 0; i+HashLen <= len(b); {
		j := HashLen - 1
		for ; j >= 0; j-- {
			if !isBase32[b[i+j]] {
				break
			}
		}
		if j >= 0 {
			i += j + 1
			continue
		}
		if p, ok := s.want[string(b[i:i+HashLen])]; ok {
			s.seen[p] = true
		}
		i++
	}
}

// Found returns the candidates whose hash part was seen, sorted.
func (s *Scanner) Found() []string {
	out := make([]string, 0, len(s.seen))
	for p := range s.seen {
		out = append(out, p)
	}
	slices.SortFunc(out, strings.Compare)
	return out
}
