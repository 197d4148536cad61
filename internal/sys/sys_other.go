//go:build !(linux && amd64)

package sys

import (
	"errors"
	"syscall"
)

// ErrNoIOURing means the kernel offers no usable io_uring; batched
// hashing is built for linux/amd64 only.
var ErrNoIOURing = errors.New("store: io_uring is not available")

// SmallFileMax is the largest file SmallFileReader reads.
const SmallFileMax = 16<<10 - 1

// SmallFile is one file for SmallFileReader.ReadFiles.
type SmallFile struct {
	Dirfd int
	Name  string
	Size  int64
	Data  []byte
}

// SmallFileReader batches reads with io_uring where it is built; here
// NewSmallFileReader always fails.
type SmallFileReader struct{}

// NewSmallFileReader returns ErrNoIOURing on this platform.
func NewSmallFileReader() (*SmallFileReader, error) { return nil, ErrNoIOURing }

// ReadFiles returns ErrNoIOURing.
func (s *SmallFileReader) ReadFiles([]SmallFile) error { return ErrNoIOURing }

// Close does nothing.
func (s *SmallFileReader) Close() error { return nil }

// AsyncCloser closes descriptors through io_uring where it is built;
// here NewAsyncCloser always fails.
type AsyncCloser struct{}

// NewAsyncCloser returns ErrNoIOURing on this platform.
func NewAsyncCloser() (*AsyncCloser, error) { return nil, ErrNoIOURing }

// Close closes fd at once.
func (c *AsyncCloser) Close(fd int) { syscall.Close(fd) }

// Wait does nothing.
func (c *AsyncCloser) Wait() {}
