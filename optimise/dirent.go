package optimise

import (
	"encoding/binary"
	"sync"

	"golang.org/x/sys/unix"
)

// dirent is one directory entry as getdents64 returns it: no stat needed.
type dirent struct {
	ino  uint64
	typ  uint8 // unix.DT_*
	name string
}

var direntBufPool = sync.Pool{New: func() any {
	b := make([]byte, 64<<10)
	return &b
}}

// readDirents reads every entry of the directory open at fd, without "."
// and "..", in the order the file system returns them. It calls getdents
// until it returns 0: a short read is not the end on every file system
// (not even on ext4, where hashed directories may return fewer entries
// than fit).
func readDirents(fd int, out []dirent) ([]dirent, error) {
	bp := direntBufPool.Get().(*[]byte)
	defer direntBufPool.Put(bp)
	buf := *bp
	for {
		n, err := unix.Getdents(fd, buf)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return out, err
		}
		if n <= 0 {
			return out, nil
		}
		out = parseDirents(buf[:n], out)
	}
}

// parseDirents appends the linux_dirent64 records in b to out.
func parseDirents(b []byte, out []dirent) []dirent {
	for len(b) >= 19 {
		ino := binary.NativeEndian.Uint64(b[0:8])
		reclen := int(binary.NativeEndian.Uint16(b[16:18]))
		if reclen < 19 || reclen > len(b) {
			break
		}
		typ := b[18]
		nameb := b[19:reclen]
		for i, c := range nameb {
			if c == 0 {
				nameb = nameb[:i]
				break
			}
		}
		b = b[reclen:]
		if ino == 0 {
			continue
		}
		if len(nameb) == 1 && nameb[0] == '.' || len(nameb) == 2 && nameb[0] == '.' && nameb[1] == '.' {
			continue
		}
		out = append(out, dirent{ino: ino, typ: typ, name: string(nameb)})
	}
	return out
}

// inodeSet is a concurrent set of inode numbers, sharded to keep lock
// contention low when every worker looks inodes up.
type inodeSet struct {
	shards [64]struct {
		sync.RWMutex
		m map[uint64]struct{}
	}
}

func newInodeSet(hint int) *inodeSet {
	s := &inodeSet{}
	for i := range s.shards {
		s.shards[i].m = make(map[uint64]struct{}, hint/64+1)
	}
	return s
}

func (s *inodeSet) shard(ino uint64) int { return int((ino ^ ino>>7) & 63) }

func (s *inodeSet) has(ino uint64) bool {
	sh := &s.shards[s.shard(ino)]
	sh.RLock()
	_, ok := sh.m[ino]
	sh.RUnlock()
	return ok
}

func (s *inodeSet) add(ino uint64) {
	sh := &s.shards[s.shard(ino)]
	sh.Lock()
	sh.m[ino] = struct{}{}
	sh.Unlock()
}

func (s *inodeSet) len() int {
	n := 0
	for i := range s.shards {
		s.shards[i].RLock()
		n += len(s.shards[i].m)
		s.shards[i].RUnlock()
	}
	return n
}
