package store

import (
	"encoding/binary"
	"sync"

	"golang.org/x/sys/unix"
)

// Dirent is one directory entry as getdents64(2) returns it: its name,
// inode number and type (unix.DT_*; DT_UNKNOWN where the file system does
// not say), with no stat.
type Dirent struct {
	Name string
	Ino  uint64
	Type uint8
}

var direntBuf = sync.Pool{New: func() any { b := make([]byte, 64<<10); return &b }}

// ReadDirents appends to out every entry of the directory open at fd
// (from its current offset), without "." and "..". It is safe for
// concurrent use on different descriptors.
func ReadDirents(fd int, out []Dirent) ([]Dirent, error) {
	err := ScanDirents(fd, func(name []byte, ino uint64, typ uint8) {
		out = append(out, Dirent{Name: string(name), Ino: ino, Type: typ})
	})
	return out, err
}

// ScanDirents calls fn for every entry of the directory open at fd (from
// its current offset), without "." and "..", with the name in a buffer
// that is reused after fn returns: listing a directory of a million
// entries this way allocates nothing per entry. It is safe for concurrent
// use on different descriptors.
func ScanDirents(fd int, fn func(name []byte, ino uint64, typ uint8)) error {
	bp := direntBuf.Get().(*[]byte)
	defer direntBuf.Put(bp)
	buf := *bp
	for {
		n, err := unix.Getdents(fd, buf)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return err
		}
		if n <= 0 {
			return nil
		}
		parseDirents(buf[:n], fn)
	}
}

// ParseDirents appends the linux_dirent64 records in b (a getdents64
// buffer) to out, without "." and ".." and entries with inode 0.
func ParseDirents(b []byte, out []Dirent) []Dirent {
	parseDirents(b, func(name []byte, ino uint64, typ uint8) {
		out = append(out, Dirent{Name: string(name), Ino: ino, Type: typ})
	})
	return out
}

func parseDirents(b []byte, fn func(name []byte, ino uint64, typ uint8)) {
	for len(b) >= 19 {
		// struct linux_dirent64 { u64 ino; s64 off; u16 reclen; u8 type; char name[]; }
		reclen := int(binary.NativeEndian.Uint16(b[16:18]))
		if reclen < 19 || reclen > len(b) {
			break
		}
		ino, typ, name := binary.NativeEndian.Uint64(b[0:8]), b[18], b[19:reclen]
		for i, c := range name {
			if c == 0 {
				name = name[:i]
				break
			}
		}
		b = b[reclen:]
		if ino == 0 || string(name) == "." || string(name) == ".." {
			continue
		}
		fn(name, ino, typ)
	}
}
