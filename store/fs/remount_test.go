package fs

import (
	"testing"

	"golang.org/x/sys/unix"
)

// TestFreeSpaceFragmentSize: statfs counts blocks in f_frsize units
// (statvfs(3); Nix 2.8's autoGC multiplies f_bavail by f_frsize). ZFS on
// Linux reports f_bsize 128 KiB (its record size) and f_frsize 512, so
// multiplying by f_bsize overstated the free space 256 times and gc --auto
// never collected.
func TestFreeSpaceFragmentSize(t *testing.T) {
	st := unix.Statfs_t{Bsize: 128 << 10, Frsize: 512, Bavail: 2 << 20, Blocks: 8 << 20}
	avail, total := freeSpaceOf(&st)
	if avail != 1<<30 || total != 4<<30 {
		t.Errorf("ZFS-like statfs (bsize 128K, frsize 512): avail %d total %d, want %d and %d", avail, total, 1<<30, 4<<30)
	}
	// A kernel before 2.6 left f_frsize 0: f_bsize is the unit then.
	st = unix.Statfs_t{Bsize: 4096, Bavail: 10, Blocks: 20}
	if avail, total := freeSpaceOf(&st); avail != 40960 || total != 81920 {
		t.Errorf("frsize 0: avail %d total %d, want 40960 and 81920", avail, total)
	}
}
