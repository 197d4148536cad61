package storetest

import (
	"io/fs"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// Canonicalise gives everything under top Nix's canonical metadata:
// directories and executables 0555, other files 0444, mtime 1 (symlinks
// too, without following them). It works bottom-up so that a directory is
// made read-only only after its contents are done.
func Canonicalise(top string) error {
	var dirs []string
	err := filepath.WalkDir(top, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		switch {
		case d.IsDir():
			dirs = append(dirs, p)
		case d.Type()&fs.ModeSymlink != 0:
		default:
			st, err := d.Info()
			if err != nil {
				return err
			}
			mode := os.FileMode(0o444)
			if st.Mode()&0o100 != 0 {
				mode = 0o555
			}
			if err := os.Chmod(p, mode); err != nil {
				return err
			}
		}
		return setMtime1(p)
	})
	if err != nil {
		return err
	}
	for i := len(dirs) - 1; i >= 0; i-- {
		if err := os.Chmod(dirs[i], 0o555); err != nil {
			return err
		}
		if err := setMtime1(dirs[i]); err != nil {
			return err
		}
	}
	return nil
}

func setMtime1(p string) error {
	ts := []unix.Timespec{{Sec: 1}, {Sec: 1}}
	return unix.UtimesNanoAt(unix.AT_FDCWD, p, ts, unix.AT_SYMLINK_NOFOLLOW)
}
