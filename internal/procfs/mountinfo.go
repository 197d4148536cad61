package procfs

import (
	"bufio"
	"io"
	"os"
	"strconv"
	"strings"
)

// maxMountinfo bounds what Mount reads of /proc/self/mountinfo (a few
// hundred bytes a mount), and maxMountLine one line of it.
const (
	maxMountinfo = 16 << 20
	maxMountLine = 64 << 10
)

// MountEntry is one line of /proc/self/mountinfo: the device of the
// mount's superblock (what /proc/locks and the socket table name a file
// by; on btrfs not the subvolume's st_dev), its mount point, file-system
// type and source, octal escapes (\040) undone.
type MountEntry struct {
	Major, Minor               uint32
	MountPoint, FSType, Source string
}

// Mount finds the mount with id mntID (statx's STATX_MNT_ID) in this
// process's /proc/self/mountinfo, reading at most 16 MiB of it, lines cut
// at 64 KiB. ok is false when it is not there, cannot be read, or its line
// is malformed.
func Mount(mntID uint64) (e MountEntry, ok bool) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return e, false
	}
	defer f.Close()
	return parseMount(f, mntID)
}

func parseMount(r io.Reader, mntID uint64) (e MountEntry, ok bool) {
	sc := bufio.NewScanner(io.LimitReader(r, maxMountinfo))
	sc.Buffer(make([]byte, 0, 4096), maxMountLine)
	want := strconv.FormatUint(mntID, 10) + " "
	for sc.Scan() {
		l := sc.Text()
		if !strings.HasPrefix(l, want) {
			continue
		}
		// ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTS [OPTIONAL...] - FSTYPE SOURCE SUPEROPTS
		pre, post, found := strings.Cut(l, " - ")
		fp, fq := strings.Fields(pre), strings.Fields(post)
		if !found || len(fp) < 5 || len(fq) < 2 {
			return e, false
		}
		ma, mi, found := strings.Cut(fp[2], ":")
		a, err1 := strconv.ParseUint(ma, 10, 32)
		b, err2 := strconv.ParseUint(mi, 10, 32)
		if !found || err1 != nil || err2 != nil {
			return e, false
		}
		return MountEntry{Major: uint32(a), Minor: uint32(b), MountPoint: unescapeMountinfo(fp[4]),
			FSType: unescapeMountinfo(fq[0]), Source: unescapeMountinfo(fq[1])}, true
	}
	return e, false
}

// unescapeMountinfo undoes the kernel's octal escapes (\040 for a space).
func unescapeMountinfo(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}
