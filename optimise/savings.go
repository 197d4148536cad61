package optimise

import (
	"fmt"

	"golang.org/x/sys/unix"

	"storekeeper/internal/sys"
	"storekeeper/store"
)

// Savings returns how many bytes hard linking into .links currently saves
// in the whole store, computed as Nix's collector does for its note
// "currently hard linking saves X MiB": over the entries with a link count
// other than 1, the sum of (links-1)*size minus the sum of sizes, minus
// the .links directory's own blocks. A missing .links directory saves 0.
// It stats every entry (relative to the directory, without following
// symlinks) and changes nothing.
func Savings(lay store.Layout) (int64, error) {
	fd, err := unix.Open(lay.LinksDir(), unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err == unix.ENOENT {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("%w: opening %s: %w", ErrLinksDir, lay.LinksDir(), err)
	}
	defer unix.Close(fd)
	ents, err := readDirents(fd, nil)
	if err != nil {
		return 0, fmt.Errorf("%w: reading %s: %w", ErrLinksDir, lay.LinksDir(), err)
	}
	var actual, unshared int64
	for _, e := range ents {
		var st unix.Stat_t
		if err := sys.LstatAt(fd, e.Name, &st); err != nil {
			continue // removed meanwhile
		}
		if st.Nlink != 1 {
			actual += st.Size
			unshared += int64(st.Nlink-1) * st.Size
		}
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return 0, err
	}
	return unshared - actual - st.Blocks*512, nil
}
