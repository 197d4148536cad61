package repair

import (
	"errors"
	"fmt"

	"golang.org/x/sys/unix"

	"storekeeper/internal/sys"
	"storekeeper/nix/nar"
	"storekeeper/store/fs"
)

// maxLinksDepth bounds the nesting dropDamagedLinks follows.
const maxLinksDepth = 256

// linksDir opens <store>/.links once; a store without one, or with an
// empty one (never optimised), gives -1 and no error.
func (r *subRun) linksDir() (int, error) {
	r.links.Do(func() {
		fd, err := unix.Openat(r.storeFd, ".links", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		switch {
		case err == nil && isEmpty(fd):
			unix.Close(fd) // nothing to drop: no walk of the old copies
		case err == nil:
			r.linksFd = fd
		case errors.Is(err, unix.ENOENT):
		default:
			r.linksErr = fmt.Errorf("opening %s: %w", r.s.Layout.LinksDir(), err)
		}
	})
	return r.linksFd, r.linksErr
}

// isEmpty: an unreadable .links counts as not empty (the walk then
// reports what it cannot read).
func isEmpty(fd int) bool {
	empty, err := fs.IsEmptyDir(fd)
	return err == nil && empty
}

// dropDamagedLinks looks, in the old copy old of a path (an entry of
// oldDir: the live path in the store directory, before the swap), for
// regular files with more than one link (an optimised store) and removes
// the .links entries they are: for such a file it computes the .links
// name the intact file at the same place in the new copy (newName in
// newDir: the staged tree) has (the NAR hash of the lone file, as
// optimise names entries), and when <store>/.links/<name> is the old
// file's inode and the old contents do not hash to that name (or cannot
// be read), the entry is damaged and removed; `storekeeper optimise` or
// `nix-store --optimise` links the path's files again later. An intact
// shared file keeps its entry. It returns the entries removed.
//
// Whether an entry is removed depends only on the entry itself (its
// inode's contents do not hash to its name), so the walk needs no lock
// and may run at any time: repair runs it before the swap, so that no
// kill -9 can leave a damaged entry behind a repaired path (optimise,
// which checks only an entry's size, would link the intact file to the
// damaged inode again). Removing a .links name never removes data a
// store path still names (other paths sharing the damaged inode keep it,
// and were damaged with it: an audit reports them). The walk never
// follows a symlink; an unreadable node of the old copy is skipped, not
// an error.
func (r *subRun) dropDamagedLinks(oldDir int, old string, newDir int, newName string) ([]string, error) {
	lfd, err := r.linksDir()
	if err != nil || lfd < 0 {
		return nil, err
	}
	w := linksWalk{r: r, links: lfd}
	err = w.node(oldDir, old, newDir, newName, 0)
	return w.removed, err
}

type linksWalk struct {
	r       *subRun
	links   int
	removed []string
}

// node visits the old node name in oldDir and the new node newName in
// newDir (-1 when the new copy has no directory there).
func (w *linksWalk) node(oldDir int, name string, newDir int, newName string, depth int) error {
	if depth > maxLinksDepth {
		return nil
	}
	var st unix.Stat_t
	if err := sys.LstatAt(oldDir, name, &st); err != nil {
		return nil // unreadable: nothing to learn from it
	}
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFREG:
		if st.Nlink > 1 && newDir >= 0 {
			return w.file(oldDir, name, &st, newDir, newName)
		}
		return nil
	case unix.S_IFDIR:
	default:
		return nil
	}
	ofd, err := sys.OpenAt(oldDir, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC)
	if err != nil {
		return nil
	}
	defer unix.Close(ofd)
	ents, err := sys.ReadDirents(ofd, nil)
	if err != nil {
		return nil
	}
	nfd := -1
	if newDir >= 0 {
		if fd, err := sys.OpenAt(newDir, newName, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC); err == nil {
			nfd = fd
			defer unix.Close(nfd)
		}
	}
	for _, e := range ents {
		if err := w.node(ofd, e.Name, nfd, e.Name, depth+1); err != nil {
			return err
		}
	}
	return nil
}

// file checks the old regular file name (lstat st, several links) against
// the new file at the same place.
func (w *linksWalk) file(oldDir int, name string, st *unix.Stat_t, newDir int, newName string) error {
	var nst unix.Stat_t
	if err := sys.LstatAt(newDir, newName, &nst); err != nil || nst.Mode&unix.S_IFMT != unix.S_IFREG {
		return nil
	}
	want, _, err := nar.HashPathAt(newDir, newName, newName)
	if err != nil {
		return fmt.Errorf("hashing the new copy's file %s: %w", newName, err)
	}
	link := want.Base32()
	var lst unix.Stat_t
	if err := sys.LstatAt(w.links, link, &lst); err != nil || lst.Ino != st.Ino || lst.Dev != st.Dev {
		return nil // not the old file's entry
	}
	if got, _, err := nar.HashPathAt(oldDir, name, name); err == nil && got == want {
		return nil // intact: the entry is good
	}
	// Damaged (or unreadable): the entry's contents are not its name's.
	// Unlinked only while it is still that inode.
	if err := sys.LstatAt(w.links, link, &lst); err != nil || lst.Ino != st.Ino || lst.Dev != st.Dev {
		return nil
	}
	if err := unix.Unlinkat(w.links, link, 0); err != nil && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("removing the damaged link %s/%s: %w", w.r.s.Layout.LinksDir(), link, err)
	}
	w.removed = append(w.removed, w.r.s.Layout.LinksDir()+"/"+link)
	return nil
}
