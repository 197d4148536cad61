package compression

import (
	"fmt"
	"io"
)

// MaxXZDict is the largest LZMA2 dictionary an xz stream may declare:
// 64 MiB, what xz -9 uses (Nix writes with liblzma's preset 6, 8 MiB).
// The decoder allocates the dictionary a block header declares, up to
// 4 GiB, before it decodes a byte: a hostile NAR file of a few bytes
// (it is checked against FileHash only at its end) would otherwise cost
// gigabytes of memory per download.
const MaxXZDict = 64 << 20

// xzGuard passes an xz file through unchanged while following its
// container (stream headers, block headers, the LZMA2 chunks' framing,
// indexes, footers, stream padding) far enough to see every block
// header before the decoder does, and fails on one that declares a
// dictionary larger than MaxXZDict. It checks nothing else (the decoder
// and the caller's hashes do); a layout it cannot follow is an error.
type xzGuard struct {
	r   io.Reader
	err error

	state    int
	skip     int64  // bytes to pass before the state's next byte
	hdr      []byte // the field being collected
	want     int    // its size
	check    int64  // the streams' check field size
	blockLen int64  // the block's header and data so far (for its padding)
	idxLen   int64  // the index's bytes so far (for its padding)
	varints  uint64 // index: varints left to read
	vint     uint64 // the index varint being read, and its next shift
	vshift   uint
}

const (
	xzStreamHeader  = iota // collecting the 12-byte stream header
	xzBlockOrIndex         // the first byte of a block header, or 0: the index
	xzBlockHeader          // collecting the rest of a block header
	xzChunk                // an LZMA2 control byte
	xzChunkHeader          // collecting an LZMA2 chunk's sizes (and properties)
	xzIndexCount           // the index's record count (a varint)
	xzIndexRecords         // the records' varints
	xzStreamPadding        // zero bytes, or the next stream's header
)

func newXZGuard(r io.Reader) *xzGuard {
	return &xzGuard{r: r, state: xzStreamHeader, want: 12}
}

func (g *xzGuard) Read(p []byte) (int, error) {
	if g.err != nil {
		return 0, g.err
	}
	n, err := g.r.Read(p)
	if ferr := g.feed(p[:n]); ferr != nil {
		g.err = ferr
		return 0, ferr
	}
	return n, err
}

func (g *xzGuard) bad(format string, args ...any) error {
	return fmt.Errorf("xz: %s", fmt.Sprintf(format, args...))
}

// collect starts collecting a field of size bytes, of which first (if
// any) are already at hand.
func (g *xzGuard) collect(state, size int, first ...byte) {
	g.state, g.want = state, size
	g.hdr = append(g.hdr[:0], first...)
}

func (g *xzGuard) feed(b []byte) error {
	for len(b) > 0 {
		if g.skip > 0 {
			k := min(g.skip, int64(len(b)))
			g.skip -= k
			b = b[k:]
			continue
		}
		c := b[0]
		b = b[1:]
		switch g.state {
		case xzStreamHeader, xzBlockHeader, xzChunkHeader:
			g.hdr = append(g.hdr, c)
			if len(g.hdr) < g.want {
				continue
			}
			if err := g.field(); err != nil {
				return err
			}
		case xzBlockOrIndex:
			if c == 0 {
				g.state, g.idxLen = xzIndexCount, 1
				g.vint, g.vshift = 0, 0
				continue
			}
			g.collect(xzBlockHeader, (int(c)+1)*4, c)
		case xzChunk:
			g.blockLen++
			switch {
			case c == 0:
				// The end of the LZMA2 data: padding to four bytes, the
				// check, then the next block or the index.
				g.skip = (4-g.blockLen%4)%4 + g.check
				g.state = xzBlockOrIndex
			case c == 1 || c == 2:
				g.collect(xzChunkHeader, 2)
			case c >= 0x80:
				size := 4
				if c >= 0xc0 {
					size = 5 // a new properties byte
				}
				g.collect(xzChunkHeader, size)
			default:
				return g.bad("invalid LZMA2 control byte %#x", c)
			}
		case xzIndexCount, xzIndexRecords:
			g.idxLen++
			g.vint |= uint64(c&0x7f) << g.vshift
			g.vshift += 7
			if c&0x80 != 0 {
				if g.vshift >= 63 {
					return g.bad("malformed index")
				}
				continue
			}
			v := g.vint
			g.vint, g.vshift = 0, 0
			if g.state == xzIndexCount {
				if v > 1<<40 {
					return g.bad("an index of %d records", v)
				}
				g.varints = 2 * v
				g.state = xzIndexRecords
			} else {
				g.varints--
			}
			if g.varints == 0 {
				// Index padding, its CRC32, the stream footer.
				g.skip = (4-g.idxLen%4)%4 + 4 + 12
				g.state = xzStreamPadding
			}
		case xzStreamPadding:
			if c == 0 {
				continue
			}
			if c != 0xfd {
				return g.bad("unexpected byte %#x after a stream", c)
			}
			g.collect(xzStreamHeader, 12, c)
		}
	}
	return nil
}

// field handles a collected field.
func (g *xzGuard) field() error {
	h := g.hdr
	switch g.state {
	case xzStreamHeader:
		if string(h[:6]) != "\xfd7zXZ\x00" {
			return g.bad("not an xz stream")
		}
		switch id := h[7] & 0x0f; {
		case id == 0:
			g.check = 0
		case id <= 3:
			g.check = 4
		case id <= 6:
			g.check = 8
		case id <= 9:
			g.check = 16
		case id <= 12:
			g.check = 32
		default:
			g.check = 64
		}
		g.state = xzBlockOrIndex
	case xzBlockHeader:
		if err := g.blockHeader(h); err != nil {
			return err
		}
		g.blockLen = int64(len(h))
		g.state = xzChunk
	case xzChunkHeader:
		g.blockLen += int64(len(h))
		if len(h) == 2 { // an uncompressed chunk
			g.skip = int64(h[0])<<8 | int64(h[1]) + 1
		} else {
			g.skip = int64(h[2])<<8 | int64(h[3]) + 1
		}
		g.blockLen += g.skip
		g.state = xzChunk
	}
	return nil
}

// blockHeader checks a block header's filters: the last must be LZMA2,
// with a dictionary of at most MaxXZDict.
func (g *xzGuard) blockHeader(h []byte) error {
	i := 2
	varint := func() (uint64, error) {
		var v uint64
		for s := 0; s < 63; s += 7 {
			if i >= len(h)-4 {
				break
			}
			c := h[i]
			i++
			v |= uint64(c&0x7f) << s
			if c&0x80 == 0 {
				return v, nil
			}
		}
		return 0, g.bad("malformed block header")
	}
	flags := h[1]
	if flags&0x40 != 0 {
		if _, err := varint(); err != nil {
			return err
		}
	}
	if flags&0x80 != 0 {
		if _, err := varint(); err != nil {
			return err
		}
	}
	var id uint64
	var props []byte
	for n := int(flags&3) + 1; n > 0; n-- {
		var err error
		if id, err = varint(); err != nil {
			return err
		}
		size, err := varint()
		if err != nil {
			return err
		}
		if size > uint64(len(h)-4-i) {
			return g.bad("malformed block header")
		}
		props = h[i : i+int(size)]
		i += int(size)
	}
	if id != 0x21 || len(props) != 1 {
		return g.bad("a block whose last filter is not LZMA2")
	}
	p := props[0]
	if p > 40 {
		return g.bad("invalid LZMA2 dictionary size %d", p)
	}
	dict := uint64(0xffffffff)
	if p < 40 {
		dict = uint64(2|p&1) << (p/2 + 11)
	}
	if dict > MaxXZDict {
		return g.bad("a block declares a %d MiB dictionary, more than the %d MiB accepted", dict>>20, MaxXZDict>>20)
	}
	return nil
}
