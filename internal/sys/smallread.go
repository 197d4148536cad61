//go:build linux && amd64

package sys

import (
	"bytes"
	"fmt"
	"os"
	"unsafe"

	"golang.org/x/sys/unix"
)

const (
	BatchChunk    = 64       // files per submission
	BatchReadSize = 16 << 10 // smaller files are read in the batch, larger ones while the NAR is written
	BatchEntries  = 256      // SQEs per ring
)

// ptrOf is the address of p's first byte, for an SQE.
func PtrOf(p []byte) uint64 { return uint64(uintptr(unsafe.Pointer(&p[0]))) }

// smallRead is one file to read through the ring: name in the directory
// open at dirfd, size bytes long by its lstat, read into arena[off:].
type SmallRead struct {
	Dirfd int
	Name  string
	Size  int64
	Off   int
}

// newFileRing returns a ring with a sparse table of batchChunk file
// slots, checked to open, read and close through a slot (probeRing), or
// ErrNoIOURing when the kernel cannot (Linux 5.6 and later can) or the
// environment sets STOREKEEPER_NO_IO_URING.
func NewFileRing() (*Ring, error) {
	if os.Getenv("STOREKEEPER_NO_IO_URING") != "" {
		return nil, ErrNoIOURing
	}
	r, err := NewRing(BatchEntries)
	if err != nil {
		return nil, err
	}
	slots := make([]int32, BatchChunk)
	for i := range slots {
		slots[i] = -1 // a sparse table: the slots are filled by openat
	}
	if _, _, errno := unix.Syscall6(sysIOUringRegister, uintptr(r.fd), iouRegisterFiles, uintptr(unsafe.Pointer(&slots[0])), uintptr(len(slots)), 0, 0); errno != 0 {
		r.Close()
		return nil, fmt.Errorf("%w: registering a file table: %w", ErrNoIOURing, errno)
	}
	if err := probeRing(r); err != nil {
		r.Close()
		return nil, err
	}
	return r, nil
}

// probeRing opens the root directory into a slot of the ring, reads it
// (EISDIR: the read request itself is understood) and closes it, all
// three hard-linked as pushSmallReads does it.
func probeRing(r *Ring) error {
	name := []byte{'/', 0}
	buf := make([]byte, 64)
	res := []int32{-1, -1, -1}
	r.Push(SQE{Opcode: iouOpOpenat, Flags: iouSQEHardlink, FD: unix.AT_FDCWD, Addr: PtrOf(name), OpFlags: unix.O_RDONLY | unix.O_DIRECTORY, FileIdx: 1, UserData: 0})
	r.Push(SQE{Opcode: iouOpRead, Flags: iouSQEHardlink | iouSQEFixedFile, FD: 0, Addr: PtrOf(buf), Len: uint32(len(buf)), UserData: 1})
	r.Push(SQE{Opcode: OpClose, FileIdx: 1, UserData: 2})
	if err := r.Submit(res, name, buf); err != nil {
		return err
	}
	if res[0] != 0 || res[1] != -int32(unix.EISDIR) || res[2] != 0 {
		return fmt.Errorf("%w: openat, read and close through a file slot gave %d, %d, %d", ErrNoIOURing, res[0], res[1], res[2])
	}
	return nil
}

// pushSmallReads queues, for each file k of chunk (at most batchChunk
// files, 3*len(chunk) SQEs that the caller made room for), an openat
// into slot k of the ring's file table, one read of size+1 bytes into
// arena[off:] and a close of the slot, hard-linked so the close runs
// whatever the others did. Their results go to res[3k], res[3k+1] and
// res[3k+2]; names holds the NUL-terminated names until the submission
// is done.
func PushSmallReads(r *Ring, names [][]byte, res []int32, arena []byte, chunk []SmallRead) {
	flags := uint32(unix.O_RDONLY | unix.O_NOFOLLOW | unix.O_NONBLOCK | unix.O_NOCTTY)
	if readNoatime.Load() {
		flags |= unix.O_NOATIME
	}
	for k, f := range chunk {
		names[k] = append(append(names[k][:0], f.Name...), 0)
		res[3*k], res[3*k+1] = -1, -1
		r.Push(SQE{Opcode: iouOpOpenat, Flags: iouSQEHardlink, FD: int32(f.Dirfd), Addr: PtrOf(names[k]),
			OpFlags: flags, FileIdx: uint32(k + 1), UserData: uint64(3 * k)})
		r.Push(SQE{Opcode: iouOpRead, Flags: iouSQEHardlink | iouSQEFixedFile, FD: int32(k),
			Addr: PtrOf(arena[f.Off:]), Len: uint32(f.Size + 1), UserData: uint64(3*k + 1)})
		r.Push(SQE{Opcode: OpClose, FileIdx: uint32(k + 1), UserData: uint64(3*k + 2)})
	}
}

// readWhole reports whether file k of a submitted chunk was opened and
// had exactly size bytes.
func ReadWhole(res []int32, k int, size int64) bool {
	return res[3*k] == 0 && int64(res[3*k+1]) == size
}

// SmallFileMax is the largest file SmallFileReader reads.
const SmallFileMax = BatchReadSize - 1

// SmallFile is one file for SmallFileReader.ReadFiles.
type SmallFile struct {
	Dirfd int    // the directory holding it
	Name  string // its name there
	Size  int64  // its size by its lstat, at most SmallFileMax
	// Data is set by ReadFiles to the file's contents when it was opened
	// (never following a symlink) and held exactly Size bytes, and to nil
	// otherwise (vanished, replaced, changed size, any error: the caller
	// reads it the ordinary way, which reports what is wrong). It is
	// valid until the next ReadFiles.
	Data []byte
}

// SmallFileReader reads many small files with few system calls: each is
// opened into a slot of an io_uring file table, read in one request and
// closed, 64 files per io_uring_enter(2), where reading them one by one
// takes four calls each (open, fstat, read, close). A SmallFileReader is
// used by one goroutine at a time and holds no descriptor between calls
// besides its ring's.
type SmallFileReader struct {
	r     *Ring
	res   []int32
	names [][]byte
	arena []byte
	reads []SmallRead
}

// NewSmallFileReader returns a SmallFileReader, or an error wrapping
// ErrNoIOURing when the kernel cannot batch the reads (see NewBatchHasher)
// or STOREKEEPER_NO_IO_URING is set.
func NewSmallFileReader() (*SmallFileReader, error) {
	r, err := NewFileRing()
	if err != nil {
		return nil, err
	}
	return &SmallFileReader{r: r, res: make([]int32, 3*BatchChunk), names: make([][]byte, BatchChunk),
		arena: make([]byte, BatchChunk*BatchReadSize)}, nil
}

// ReadFiles reads files (at most 64 at a time are in flight) and sets
// each one's Data. It returns an error only when the ring broke; then
// every Data is nil and the reader must not be used again.
func (s *SmallFileReader) ReadFiles(files []SmallFile) error {
	for start := 0; start < len(files); start += BatchChunk {
		chunk := files[start:min(start+BatchChunk, len(files))]
		s.reads = s.reads[:0]
		off := 0
		for i := range chunk {
			chunk[i].Data = nil
			size := min(max(chunk[i].Size, 0), SmallFileMax)
			s.reads = append(s.reads, SmallRead{Dirfd: chunk[i].Dirfd, Name: chunk[i].Name, Size: size, Off: off})
			off += int(size) + 1
		}
		PushSmallReads(s.r, s.names, s.res, s.arena, s.reads)
		if err := s.r.Submit(s.res, s.names, s.arena); err != nil {
			return err
		}
		for k := range chunk {
			if f := &s.reads[k]; chunk[k].Size == f.Size && ReadWhole(s.res, k, f.Size) {
				chunk[k].Data = s.arena[f.Off : f.Off+int(f.Size)]
			}
		}
		if start+BatchChunk < len(files) {
			// The arena is reused by the next chunk: keep these
			// contents by copying them out.
			for k := range chunk {
				if chunk[k].Data != nil {
					chunk[k].Data = bytes.Clone(chunk[k].Data) // not nil when empty

				}
			}
		}
	}
	return nil
}

// Close releases the ring.
func (s *SmallFileReader) Close() error {
	if s != nil && s.r != nil {
		s.r.Close()
		s.r = nil
	}
	return nil
}
