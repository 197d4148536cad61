package substitute

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
	"syscall"
)

// fileTransport reads a file:// cache's files. The cache directory is
// the user's own configuration, so symlinks in it are followed as Nix
// does; only regular files are read (a fifo, a device or a directory,
// even behind a symlink, is refused without blocking), what is read is
// bounded (fetch by its max, a NAR by the offer's sizes) and every name
// comes from safeRel, so nothing outside root is named.
//
// A cache directory owned by another user (not root, not us) is that
// user's: a file read through it must be one its owner could read too
// (owned by them, or readable by everyone), so that a symlink planted
// there (x.narinfo -> /etc/shadow) never makes root read, and quote in an
// error, a file that user may not read.
type fileTransport struct {
	root string

	ownerOnce sync.Once
	owner     int // the cache directory's owner when it is another user's, else -1
}

// foreignOwner returns the uid of the cache directory's owner when that
// is neither root nor the effective user, else -1.
func (f *fileTransport) foreignOwner() int {
	f.ownerOnce.Do(func() {
		f.owner = -1
		var st syscall.Stat_t
		if syscall.Stat(f.root, &st) == nil && st.Uid != 0 && int(st.Uid) != os.Geteuid() {
			f.owner = int(st.Uid)
		}
	})
	return f.owner
}

func (f *fileTransport) where(rel string) string { return "file://" + filepath.Join(f.root, rel) }

func (f *fileTransport) openFile(ctx context.Context, rel string) (*os.File, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	// O_NONBLOCK: a fifo (or a symlink to one) must not block the open
	// forever; it, a device or a directory is then refused by fstat. On
	// a regular file O_NONBLOCK changes nothing.
	name := filepath.Join(f.root, rel)
	file, err := os.OpenFile(name, os.O_RDONLY|syscall.O_NONBLOCK|syscall.O_NOCTTY, 0)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ENOTDIR) {
			return nil, fmt.Errorf("%w: %w", ErrNotFound, err)
		}
		return nil, err
	}
	st, err := file.Stat()
	if err != nil {
		file.Close()
		return nil, err
	}
	if !st.Mode().IsRegular() {
		file.Close()
		return nil, fmt.Errorf("%s is not a regular file (%s); a binary cache holds only files", f.where(rel), st.Mode().Type())
	}
	if uid := f.foreignOwner(); uid >= 0 {
		if sys, ok := st.Sys().(*syscall.Stat_t); ok && int(sys.Uid) != uid && st.Mode().Perm()&0o004 == 0 {
			file.Close()
			return nil, fmt.Errorf("%s is owned by uid %d and not readable by everyone, but the cache directory belongs to uid %d: refusing to read, through another user's directory, a file that user may not read (a symlink to a private file?)", f.where(rel), sys.Uid, uid)
		}
	}
	return file, nil
}

func (f *fileTransport) fetch(ctx context.Context, rel string, max int64) ([]byte, error) {
	file, err := f.openFile(ctx, rel)
	if err != nil {
		return nil, err
	}
	defer file.Close()
	data, err := io.ReadAll(io.LimitReader(file, max+1))
	if err != nil {
		return nil, err
	}
	if int64(len(data)) > max {
		return nil, fmt.Errorf("%s is larger than %d bytes", f.where(rel), max)
	}
	return data, nil
}

func (f *fileTransport) open(ctx context.Context, rel string) (io.ReadCloser, error) {
	file, err := f.openFile(ctx, rel)
	if err != nil {
		return nil, err
	}
	return &ctxReader{ctx: ctx, r: file, c: file}, nil
}

func (f *fileTransport) unreachable(err error) bool { return false }

func (f *fileTransport) close() {}

// ctxReader fails its reads once ctx is done.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
	c   io.Closer
}

func (r *ctxReader) Read(p []byte) (int, error) {
	if err := r.ctx.Err(); err != nil {
		return 0, err
	}
	return r.r.Read(p)
}

func (r *ctxReader) Close() error { return r.c.Close() }
