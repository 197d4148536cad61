package sys

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
func ReadDirents(fd int, out []Dirent) ([]Dirent, error) { return ReadDirentsMarked(fd, false, out) }

// ScanDirents calls fn for every entry of the directory open at fd (from
// its current offset), without "." and "..", with the name in a buffer
// that is reused after fn returns: listing a directory of a million
// entries this way allocates nothing per entry. It is safe for concurrent
// use on different descriptors.
func ScanDirents(fd int, fn func(name []byte, ino uint64, typ uint8)) error {
	return scanDirents(fd, false, fn)
}

// ReadDirentsMarked is ReadDirents for a directory on a file system for
// which DirEndMarked said true: when the first getdents64 returns the
// whole directory, it knows so and spares the second call that would
// return nothing. Any other directory is read as by ReadDirents.
func ReadDirentsMarked(fd int, marked bool, out []Dirent) ([]Dirent, error) {
	err := scanDirents(fd, marked, func(name []byte, ino uint64, typ uint8) {
		out = append(out, Dirent{Name: string(name), Ino: ino, Type: typ})
	})
	return out, err
}

// dirOffEnd is the position ext4 gives after the last entry of an
// indexed directory (every directory of a file system with dir_index,
// one-block ones included) for a 64-bit reader: EXT4_HTREE_EOF_64BIT.
// getdents64 writes the position after the last entry it returned into
// that entry's d_off, so this value there means the listing is complete.
// No entry's own position can be it (ext4 never gives a name the hash
// that would make it). A listing cut short, by a full buffer or by a
// pending signal (filldir64 stops early then), ends with the position of
// the first entry it did not return instead.
const dirOffEnd = 1<<63 - 1

// getdents is unix.Getdents; tests count the calls through it.
var getdents = unix.Getdents

var endMarked sync.Map // device number -> bool

// DirEndMarked reports whether the file system holding the directory
// open at fd (whose st_dev is dev) marks the end of a listing as ext4
// does (see dirOffEnd), so that ReadDirentsMarked can stop after one
// getdents64 call. The answer is found once per device (one fstatfs) and
// remembered for the life of the process.
func DirEndMarked(fd int, dev uint64) bool {
	if v, ok := endMarked.Load(dev); ok {
		return v.(bool)
	}
	var sfs unix.Statfs_t
	if unix.Fstatfs(fd, &sfs) != nil {
		return false
	}
	ok := sfs.Type == unix.EXT4_SUPER_MAGIC // also ext2 and ext3: the same driver
	endMarked.Store(dev, ok)
	return ok
}

func scanDirents(fd int, marked bool, fn func(name []byte, ino uint64, typ uint8)) error {
	bp := direntBuf.Get().(*[]byte)
	defer direntBuf.Put(bp)
	buf := *bp
	for {
		n, err := getdents(fd, buf)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return err
		}
		if n <= 0 {
			return nil
		}
		if lastOff := parseDirents(buf[:n], fn); marked && lastOff == dirOffEnd {
			return nil
		}
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

// parseDirents calls fn for each record in b (see ParseDirents) and
// returns the d_off of the last one (-1 if there is none).
func parseDirents(b []byte, fn func(name []byte, ino uint64, typ uint8)) int64 {
	last := int64(-1)
	for len(b) >= 19 {
		// struct linux_dirent64 { u64 ino; s64 off; u16 reclen; u8 type; char name[]; }
		reclen := int(binary.NativeEndian.Uint16(b[16:18]))
		if reclen < 19 || reclen > len(b) {
			break
		}
		ino, typ, name := binary.NativeEndian.Uint64(b[0:8]), b[18], b[19:reclen]
		last = int64(binary.NativeEndian.Uint64(b[8:16]))
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
	return last
}
