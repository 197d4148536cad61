package storetest

import (
	"os"

	"golang.org/x/sys/unix"

	"storekeeper/store/fs"
)

// Canonicalise gives everything under top Nix's canonical metadata
// (fs.Nix: directories and executables 0555, other files 0444, mtime 1,
// symlinks too without following them, extended attributes removed), as
// owned by the user running the test: fs.Canonicalise without the
// ownership check.
func Canonicalise(top string) error {
	return fs.Canonicalise(unix.AT_FDCWD, top, fs.CanonicaliseOptions{
		BuildUID: fs.NoBuildUser, UID: os.Geteuid(), GID: os.Getegid()})
}

func setMtime1(p string) error {
	ts := []unix.Timespec{{Sec: fs.Nix.Mtime}, {Sec: fs.Nix.Mtime}}
	return unix.UtimesNanoAt(unix.AT_FDCWD, p, ts, unix.AT_SYMLINK_NOFOLLOW)
}
