// Package compression opens the compressed NARs of Nix binary caches: the
// methods a narinfo's Compression field names (xz, zstd, bzip2, br, none;
// bzip2 when the field is absent, as Nix reads it).
//
// It decodes only, and bounds nothing but the memory a stream can make
// the decoder take (an xz dictionary, MaxXZDict; a zstd window,
// MaxZstdWindow). A caller reading from a cache must
// bound what it reads (the NAR reader's limits, the narinfo's NarSize), so
// a small file that decompresses to a huge one costs no more than the
// caller allows. Codecs are well-kept libraries (ulikunitz/xz,
// klauspost/compress/zstd, andybalholm/brotli; compress/bzip2 from the
// standard library) rather than hand-written code.
package compression

import (
	"compress/bzip2"
	"errors"
	"fmt"
	"io"
	"sync"

	"github.com/andybalholm/brotli"
	"github.com/klauspost/compress/zstd"
	"github.com/ulikunitz/xz"
)

// ErrUnknownMethod: the narinfo names a compression method this package
// does not decode (Nix 2.8 also knows lzip, lz4, grzip and gzip for
// writing caches; no public cache serves them).
var ErrUnknownMethod = errors.New("compression: unknown method")

// ErrCorrupt wraps a decoder's error: the compressed stream is not
// valid for its method.
var ErrCorrupt = errors.New("compression: corrupt stream")

// Method returns the method a narinfo's Compression field names, "" for
// an absent field being Nix's default, bzip2.
func Method(field string) string {
	if field == "" {
		return "bzip2"
	}
	return field
}

// Check returns nil when NewReader decodes method (after Method), else
// the error wrapping ErrUnknownMethod that NewReader would return: a
// narinfo's Compression can be refused before anything is downloaded.
func Check(method string) error {
	switch method {
	case "none", "bzip2", "xz", "zstd", "br":
		return nil
	}
	return fmt.Errorf("%w %q (known: none, xz, zstd, bzip2, br)", ErrUnknownMethod, method)
}

// NewReader returns a reader of the decompressed bytes of r, compressed
// with method (a narinfo's Compression field, after Method). Close
// gives the decoder back for reuse by a later NewReader (zstd's keep
// their window's memory); it does not close r. A read error of r reaches the caller as itself (errors.Is works); a
// malformed stream wraps ErrCorrupt. Not safe for concurrent use.
func NewReader(method string, r io.Reader) (io.ReadCloser, error) {
	if method == "none" {
		return io.NopCloser(r), nil
	}
	src := &tracked{r: r}
	switch method {
	case "bzip2":
		return &reader{r: bzip2.NewReader(src), src: src, method: "bzip2"}, nil
	case "xz":
		x, err := xz.NewReader(newXZGuard(src))
		if err != nil {
			return nil, classify("xz", src, err)
		}
		return &reader{r: x, src: src, method: "xz"}, nil
	case "zstd":
		// One goroutine: the decoder keeps pace with a network or a disk,
		// and several repairs run side by side.
		// Decoders are reused: each holds a window-sized history (8 MiB
		// for what Nix writes), which a new one would allocate and clear
		// for every NAR, however small.
		z, _ := zstdPool.Get().(*zstd.Decoder)
		if z == nil {
			var err error
			z, err = zstd.NewReader(nil, zstd.WithDecoderConcurrency(1), zstd.WithDecoderLowmem(true),
				zstd.WithDecoderMaxWindow(MaxZstdWindow))
			if err != nil {
				return nil, classify("zstd", src, err)
			}
		}
		if err := z.Reset(src); err != nil {
			z.Close()
			return nil, classify("zstd", src, err)
		}
		return &reader{r: z, src: src, method: "zstd", close: func() {
			if z.Reset(nil) == nil {
				zstdPool.Put(z)
			} else {
				z.Close()
			}
		}}, nil
	case "br":
		return &reader{r: brotli.NewReader(src), src: src, method: "br"}, nil
	}
	return nil, Check(method)
}

// MaxZstdWindow is the largest window a zstd frame may declare: 128
// MiB, zstd --ultra -22's and --long's (Nix writes level 3: 8 MiB at
// most). The decoder allocates the declared window (and a pooled one
// keeps it) before it decodes a byte.
const MaxZstdWindow = 128 << 20

// zstdPool holds idle zstd decoders (reset to no stream).
var zstdPool sync.Pool

// reader tells the source's errors from the decoder's.
type reader struct {
	r      io.Reader
	src    *tracked
	method string
	close  func()
}

func (d *reader) Read(p []byte) (int, error) {
	n, err := d.r.Read(p)
	if err != nil && err != io.EOF {
		return n, classify(d.method, d.src, err)
	}
	return n, err
}

func (d *reader) Close() error {
	if d.close != nil {
		d.close()
		d.close = nil
	}
	return nil
}

// classify returns err as it is when it came from the source (a read
// error of the cache's connection or file), else wrapped in ErrCorrupt.
// Decoders pass the source's errors through, so a source error is the
// one src recorded.
func classify(method string, src *tracked, err error) error {
	if src.err != nil && errors.Is(err, src.err) {
		return err
	}
	if errors.Is(err, io.ErrUnexpectedEOF) {
		return fmt.Errorf("%w: %s: truncated: %w", ErrCorrupt, method, err)
	}
	return fmt.Errorf("%w: %s: %w", ErrCorrupt, method, err)
}

// tracked remembers the last error its reader returned other than EOF.
type tracked struct {
	r   io.Reader
	err error
}

func (t *tracked) Read(p []byte) (int, error) {
	n, err := t.r.Read(p)
	if err != nil && err != io.EOF {
		t.err = err
	}
	return n, err
}
