package substitute

import (
	"crypto/sha256"
	"fmt"
	"hash"
	"io"

	"storekeeper/nix/compression"
	"storekeeper/nix/nar"
	"storekeeper/report"
)

// narStream is the reader Open returns: the decompressed NAR of a file
// whose compressed bytes are counted, bounded and (when the narinfo gives
// FileHash) hashed on the way. It fails, wrapping ErrMismatch, as soon as
// the compressed file passes FileSize or the NAR passes NarSize; once the
// NAR has NarSize bytes it checks at once that nothing follows and that
// the compressed file has exactly FileSize bytes and hashes to FileHash,
// so a caller that stops at the NAR's end still gets the verdict with
// the last bytes. A NAR shorter than NarSize ends with io.EOF: the NAR
// reader reports the truncation, and the caller's hash the rest.
type narStream struct {
	body     io.ReadCloser // the transport's stream
	raw      *rawCounter
	dec      io.ReadCloser // the decompressor over raw
	narSize  uint64        // 0: unknown, unbounded (a local store's row without one)
	got      uint64
	fileSize uint64
	fileHash *nar.Hash
	path     string
	where    string
	done     bool
	err      error
}

// newNarStream wraps body. narSize bounds the NAR; fileSize (0: unknown)
// and fileHash (nil: unknown) describe body itself. When fileSize is
// unknown the compressed bytes are still bounded, by a little more than
// narSize (no codec grows data by more), so a stream of padding that
// decompresses to nothing cannot go on forever.
func newNarStream(body io.ReadCloser, method string, narSize, fileSize uint64, fileHash *nar.Hash, path, where string) (*narStream, error) {
	s := &narStream{body: body, narSize: narSize, fileSize: fileSize, fileHash: fileHash, path: path, where: where}
	s.raw = &rawCounter{r: body, s: s}
	switch {
	case fileSize != 0:
		s.raw.max = fileSize
	case narSize != 0:
		s.raw.max = narSize + narSize/64 + 64<<10
	}
	if fileHash != nil {
		s.raw.h = sha256.New()
	}
	dec, err := compression.NewReader(compression.Method(method), s.raw)
	if err != nil {
		return nil, fmt.Errorf("%s: %s: %w", report.Name(path), report.Name(where), err)
	}
	s.dec = dec
	return s, nil
}

func (s *narStream) mismatch(format string, args ...any) error {
	return fmt.Errorf("%w: %s: %s: %s", ErrMismatch, report.Name(s.path), report.Name(s.where), fmt.Sprintf(format, args...))
}

func (s *narStream) Read(p []byte) (int, error) {
	if s.err != nil {
		return 0, s.err
	}
	if s.done {
		return 0, io.EOF
	}
	if s.narSize != 0 && uint64(len(p)) > s.narSize-s.got {
		p = p[:s.narSize-s.got]
	}
	if len(p) == 0 {
		if err := s.finish(); err != nil {
			s.err = err
			return 0, err
		}
		return 0, io.EOF
	}
	n, err := s.dec.Read(p)
	s.got += uint64(n)
	if err == io.EOF {
		// Short (the NAR reader says so), or a NAR of unknown size.
		s.done = true
		if s.narSize == 0 {
			if ferr := s.checkFile(); ferr != nil {
				s.err = ferr
				return n, ferr
			}
		}
		return n, io.EOF
	}
	if err != nil {
		s.err = err
		return n, err
	}
	if s.narSize != 0 && s.got == s.narSize {
		if ferr := s.finish(); ferr != nil {
			s.err = ferr
			return n, ferr
		}
	}
	return n, nil
}

// finish checks, once the NAR has its NarSize bytes, that the stream
// ends there and that the compressed file is what the narinfo says.
func (s *narStream) finish() error {
	if s.done {
		return nil
	}
	s.done = true
	var one [1]byte
	n, err := io.ReadFull(s.dec, one[:])
	if n > 0 {
		return s.mismatch("the NAR is longer than its NarSize %d", s.narSize)
	}
	if err != io.EOF {
		return fmt.Errorf("%s: %s: after the NAR's %d bytes: %w", report.Name(s.path), report.Name(s.where), s.narSize, err)
	}
	return s.checkFile()
}

// checkFile reads what is left of the compressed file (a codec may stop
// before its end; the bytes count all the same) and checks its size and
// hash.
func (s *narStream) checkFile() error {
	if _, err := io.Copy(io.Discard, s.raw); err != nil {
		return fmt.Errorf("%s: %s: %w", report.Name(s.path), report.Name(s.where), err)
	}
	if s.fileSize != 0 && s.raw.n != s.fileSize {
		return s.mismatch("the NAR file has %d bytes, its FileSize is %d", s.raw.n, s.fileSize)
	}
	if s.fileHash != nil {
		var got nar.Hash
		s.raw.h.Sum(got[:0])
		if got != *s.fileHash {
			return s.mismatch("the NAR file hashes to %s, its FileHash is %s", got, *s.fileHash)
		}
	}
	return nil
}

// Close releases the decoder and the transport's stream (a connection
// goes back to the pool only when it was read to its end).
func (s *narStream) Close() error {
	if s.dec != nil {
		s.dec.Close()
	}
	return s.body.Close()
}

// rawCounter counts, bounds and hashes the compressed bytes.
type rawCounter struct {
	r   io.Reader
	s   *narStream
	n   uint64
	max uint64 // 0: no bound
	h   hash.Hash
}

func (c *rawCounter) Read(p []byte) (int, error) {
	if c.max != 0 && uint64(len(p)) > c.max-c.n+1 {
		p = p[:c.max-c.n+1]
	}
	n, err := c.r.Read(p)
	c.n += uint64(n)
	if c.max != 0 && c.n > c.max {
		n -= int(c.n - c.max)
		c.n = c.max
		if c.s.fileSize != 0 {
			return n, c.s.mismatch("the NAR file is longer than its FileSize %d", c.s.fileSize)
		}
		return n, c.s.mismatch("the NAR file is longer than its NarSize %d allows", c.s.narSize)
	}
	if c.h != nil && n > 0 {
		c.h.Write(p[:n])
	}
	return n, err
}
