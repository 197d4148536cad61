package optimise

import (
	"sync"

	"storekeeper/internal/sys"
)

// dirent is one directory entry as getdents64 returns it: no stat needed.
type dirent = sys.Dirent

// readDirents reads every entry of the directory open at fd, without "."
// and "..", in the order the file system returns them.
func readDirents(fd int, out []dirent) ([]dirent, error) { return sys.ReadDirents(fd, out) }

// parseDirents appends the linux_dirent64 records in b to out.
func parseDirents(b []byte, out []dirent) []dirent { return sys.ParseDirents(b, out) }

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
