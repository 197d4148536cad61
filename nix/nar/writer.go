package nar

import (
	"fmt"
	"io"
	"strings"
)

type writeState uint8

const (
	wStart   writeState = iota // nothing written
	wFile                      // in a regular file's contents
	wBetween                   // in a directory, between entries
	wDone                      // the top node is complete
	wClosed
)

// Writer writes a NAR node by node, like archive/tar's Writer: the top
// node first (Path ""), then every directory's entries after it, in
// strictly ascending byte order of name, each regular file's contents
// through Write after its header. It writes exactly what nix-store
// --dump writes for the same tree, through the same buffered token
// writer as DumpPath, and refuses what the Reader refuses (bad names,
// entries out of order, an entry outside the open directories, bad
// symlink targets, contents of another length than the header's Size)
// with an error wrapping ErrBadNAR. Errors, also the underlying writer's,
// are sticky. Close completes the archive; it does not close the
// underlying writer. A Writer is not safe for concurrent use.
type Writer struct {
	nw    *narWriter
	state writeState
	stack []openDir
	left  int64
	cur   Header
	err   error
}

// NewWriter returns a Writer of a NAR to w.
func NewWriter(w io.Writer) *Writer { return &Writer{nw: newNarWriter(w)} }

func (w *Writer) misuse(path, format string, args ...any) error {
	if w.err == nil {
		w.err = fmt.Errorf("nar: cannot write %q: %s: %w", path, fmt.Sprintf(format, args...), ErrBadNAR)
	}
	return w.err
}

// endFile closes the current regular file.
func (w *Writer) endFile() error {
	if w.left > 0 {
		return w.misuse(w.cur.Path, "%d of its %d bytes of contents not written", w.left, w.cur.Size)
	}
	w.nw.pad(uint64(w.cur.Size))
	w.nw.str(")")
	w.endNode()
	return w.nw.err
}

// endNode closes the entry a complete node is in, if any.
func (w *Writer) endNode() {
	if len(w.stack) > 0 {
		w.nw.str(")")
		w.state = wBetween
	} else {
		w.state = wDone
	}
}

// popDir closes the innermost open directory.
func (w *Writer) popDir() {
	w.nw.str(")")
	w.stack = w.stack[:len(w.stack)-1]
	w.endNode()
}

// WriteHeader starts the node h: the top node (h.Path "") first, then an
// entry of an open directory. It closes the current file (which must
// have had all its contents written) and every open directory that does
// not hold h.
func (w *Writer) WriteHeader(h *Header) error {
	if w.err != nil {
		return w.err
	}
	if w.nw.err != nil {
		w.err = w.nw.err
		return w.err
	}
	if err := w.checkNode(h); err != nil {
		return err
	}
	switch w.state {
	case wClosed:
		return w.misuse(h.Path, "the Writer is closed")
	case wFile:
		if err := w.endFile(); err != nil {
			return err
		}
	case wStart:
		if h.Path != "" {
			return w.misuse(h.Path, "the first node must be the top node (Path \"\")")
		}
		w.nw.str(narMagic)
		return w.node(h)
	}
	if h.Path == "" {
		return w.misuse(h.Path, "a second top node")
	}
	parent, name := "", h.Path
	if i := strings.LastIndexByte(h.Path, '/'); i >= 0 {
		parent, name = h.Path[:i], h.Path[i+1:]
		if parent == "" {
			// "/a": the top's Path is "", its entries' have no slash.
			return w.misuse(h.Path, "not in an open directory (a Path does not start with \"/\")")
		}
	}
	if why := badName(name); why != "" {
		return w.misuse(h.Path, "entry name %q %s", name, why)
	}
	for len(w.stack) > 0 && w.stack[len(w.stack)-1].path != parent {
		w.popDir()
	}
	if len(w.stack) == 0 {
		return w.misuse(h.Path, "not in an open directory")
	}
	d := &w.stack[len(w.stack)-1]
	if d.any && name <= d.prev {
		return w.misuse(h.Path, "entry %q after %q (names must be in strictly ascending byte order)", name, d.prev)
	}
	d.prev, d.any = name, true
	w.nw.str("entry")
	w.nw.str("(")
	w.nw.str("name")
	w.nw.str(name)
	w.nw.str("node")
	return w.node(h)
}

// checkNode checks h's own fields.
func (w *Writer) checkNode(h *Header) error {
	switch h.Type {
	case FileRegular:
		if h.Size < 0 {
			return w.misuse(h.Path, "negative size %d", h.Size)
		}
	case FileSymlink:
		switch t := h.LinkTarget; {
		case t == "":
			return w.misuse(h.Path, "empty symlink target")
		case len(t) > MaxTargetLen:
			return w.misuse(h.Path, "symlink target of %d bytes, longer than %d", len(t), MaxTargetLen)
		case strings.IndexByte(t, 0) >= 0:
			return w.misuse(h.Path, "symlink target holds a NUL byte")
		}
	case FileDirectory:
	default:
		return w.misuse(h.Path, "unknown type %v", h.Type)
	}
	return nil
}

// node writes the node h up to its contents (regular), entirely
// (symlink), or up to its first entry (directory).
func (w *Writer) node(h *Header) error {
	w.nw.str("(")
	w.nw.str("type")
	w.cur = *h
	switch h.Type {
	case FileRegular:
		w.nw.str("regular")
		if h.Executable {
			w.nw.str("executable")
			w.nw.str("")
		}
		w.nw.str("contents")
		w.nw.u64(uint64(h.Size))
		w.left = h.Size
		w.state = wFile
	case FileSymlink:
		w.nw.str("symlink")
		w.nw.str("target")
		w.nw.str(h.LinkTarget)
		w.nw.str(")")
		w.endNode()
	case FileDirectory:
		w.nw.str("directory")
		w.stack = append(w.stack, openDir{path: h.Path})
		w.state = wBetween
	}
	return w.nw.err
}

// Write writes contents of the current regular file; more than its
// header's Size is an error.
func (w *Writer) Write(p []byte) (int, error) {
	if w.err != nil {
		return 0, w.err
	}
	if w.state != wFile {
		return 0, w.misuse(w.cur.Path, "contents written outside a regular file")
	}
	if int64(len(p)) > w.left {
		return 0, w.misuse(w.cur.Path, "more contents than its size of %d bytes", w.cur.Size)
	}
	narRaw(w.nw, p)
	if w.nw.err != nil {
		w.err = w.nw.err
		return 0, w.err
	}
	w.left -= int64(len(p))
	return len(p), nil
}

// Close completes the archive (closing the current file and the open
// directories), flushes it and releases the Writer's buffer. A NAR
// without a node is an error.
func (w *Writer) Close() error {
	if w.state == wClosed {
		return w.err
	}
	defer func() {
		w.state = wClosed
		w.nw.release()
	}()
	if w.err != nil {
		return w.err
	}
	switch w.state {
	case wStart:
		return w.misuse("", "no node written")
	case wFile:
		if err := w.endFile(); err != nil {
			return err
		}
	}
	for len(w.stack) > 0 {
		w.popDir()
	}
	if err := w.nw.flush(); err != nil && w.err == nil {
		w.err = err
	}
	return w.err
}

// Written returns the number of bytes passed to the underlying writer.
func (w *Writer) Written() int64 { return w.nw.written }
