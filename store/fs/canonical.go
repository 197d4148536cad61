package fs

import (
	"errors"
	"fmt"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"storekeeper/internal/sys"
	"storekeeper/report"
)

// Canonical describes the metadata Nix gives every node of a store path
// (canonicaliseTimestampAndPermissions and canonicalisePathMetaData in
// Nix 2.8's local-store.cc): a mode of File or Exec (Dir for directories;
// a symlink's mode is Symlink and cannot be changed), no setuid, setgid
// or sticky bit, an mtime of Mtime seconds, no extended attribute but
// those in KeepXattrs, and as owner the store directory's owner (root in a
// multi-user store; the checker and Canonicalise are given it).
//
// It is the one statement of the rule: the checker (OwnerModeProblems,
// verify's mtime check), Canonicalise, Dir's restore after a rename and
// the test fixtures all read it from Nix.
type Canonical struct {
	File, Exec, Dir, Symlink uint32
	Mtime                    int64
	// KeepXattrs are the extended attributes canonicalisation leaves:
	// Nix 2.8 keeps security.selinux (a label even root cannot remove)
	// and removes every other one it can list.
	KeepXattrs []string
}

// Nix is the canonical metadata of a Nix store.
var Nix = Canonical{File: 0o444, Exec: 0o555, Dir: 0o555, Symlink: 0o777, Mtime: 1,
	KeepXattrs: []string{"security.selinux"}}

// Want is the permission the checker expects of a node of mode m: Dir for
// a directory, Exec for a file with the owner's execute bit, File for any
// other file (a symlink's is Symlink).
func (c Canonical) Want(m uint32) uint32 {
	switch m & unix.S_IFMT {
	case unix.S_IFDIR:
		return c.Dir
	case unix.S_IFLNK:
		return c.Symlink
	}
	if m&unix.S_IXUSR != 0 {
		return c.Exec
	}
	return c.File
}

// Fix is the permission canonicalisation gives a node of mode m, as Nix:
// a permission that is already File or Exec stays; any other becomes
// File, or Exec when the owner's execute bit is set (directories
// included). It reports whether that is a change. Symlinks are never
// changed.
func (c Canonical) Fix(m uint32) (uint32, bool) {
	perm := m & 0o7777
	if m&unix.S_IFMT == unix.S_IFLNK || perm == c.File || perm == c.Exec {
		return perm, false
	}
	if m&unix.S_IXUSR != 0 {
		return c.Exec, true
	}
	return c.File, true
}

// MtimeOK reports whether st has the canonical mtime.
func (c Canonical) MtimeOK(st *unix.Stat_t) bool {
	return st.Mtim.Sec == c.Mtime && st.Mtim.Nsec == 0
}

// keepXattr reports whether the extended attribute name stays.
func (c Canonical) keepXattr(name string) bool {
	for _, k := range c.KeepXattrs {
		if name == k {
			return true
		}
	}
	return false
}

// NoBuildUser disables Canonicalise's ownership check.
const NoBuildUser = -1

// CanonicaliseOptions are the parameters of Canonicalise.
type CanonicaliseOptions struct {
	// BuildUID, when >= 0, is the user that produced the tree (Nix's
	// build user): the ownership check applies (see Canonicalise).
	// NoBuildUser (-1) disables it.
	BuildUID int
	// UID and GID are the canonical owner the tree is given: the store
	// directory's owner (root in a multi-user store), as Nix gives its
	// own effective uid and gid. A node is chowned only when its uid
	// differs, as Nix does.
	UID, GID int
	// Display names the tree in errors (name when empty).
	Display string
	// CheckOnly runs only the check pass (node types and, with
	// BuildUID, the ownership and hard-link checks) and changes
	// nothing: a caller taking in several trees checks every one before
	// changing any. The tree may change between this check and a later
	// Canonicalise, which checks it again.
	CheckOnly bool
}

// RejectKind says why Canonicalise rejected a tree.
type RejectKind string

const (
	RejectOwner    RejectKind = "owner"     // owned by a user other than the build user
	RejectHardLink RejectKind = "hard-link" // has hard links outside the tree
	RejectType     RejectKind = "type"      // a device node, FIFO or socket
)

// RejectedError is Canonicalise's refusal of a whole tree because of one
// node; the tree was not changed at all.
type RejectedError struct {
	Kind     RejectKind
	Path     string // the node, under the tree's display name (as it is; Error quotes it with report.Name)
	UID      uint32 // the node's owner
	BuildUID int    // the build user (NoBuildUser when unchecked)
	Mode     uint32 // the node's st_mode
	Links    uint64 // its link count
	Inside   uint64 // the links to it found inside the tree
}

func (e *RejectedError) Error() string {
	const tail = "; nothing in the tree was changed"
	switch e.Kind {
	case RejectOwner:
		what := "file"
		if e.Mode&unix.S_IFMT == unix.S_IFDIR {
			what = "directory"
		}
		return fmt.Sprintf("%s '%s' is owned by uid %d, not by the build user (uid %d): a builder may not put a %s of another user into its output (for example by 'ln /etc/shadow $out/foo')%s",
			what, report.Name(e.Path), e.UID, e.BuildUID, what, tail)
	case RejectHardLink:
		if e.BuildUID < 0 {
			return fmt.Sprintf("'%s' (owner uid %d) has %d hard links but only %d are inside the tree, and canonicalising it would change the file outside as well (its mode, mtime, owner or extended attributes): it is left as it is; give the tree its own copy of the file%s",
				report.Name(e.Path), e.UID, e.Links, e.Inside, tail)
		}
		return fmt.Sprintf("'%s' (owner uid %d) has %d hard links but only %d are inside the tree: it is a hard link to a file outside the output%s",
			report.Name(e.Path), e.UID, e.Links, e.Inside, tail)
	default:
		return fmt.Sprintf("'%s' (owner uid %d) is a %s: a store path holds only regular files, directories and symlinks%s",
			report.Name(e.Path), e.UID, sys.FileKind(e.Mode), tail)
	}
}

// ErrTreeChanged is wrapped by Canonicalise's error when the tree changed
// between its check and its change (a process still writing into it).
var ErrTreeChanged = errors.New("changed while it was being canonicalised")

// maxDepth bounds the nesting Canonicalise follows (each level holds a
// descriptor); PATH_MAX allows at most 2048.
const maxDepth = 2048

type devIno struct{ dev, ino uint64 }

type inodeUse struct {
	nlink  uint64
	inside uint64
	first  string // display path of its first name
	uid    uint32
	mode   uint32
	// change: the change pass would change it (without a build user,
	// recorded for nodes with links outside the tree only).
	change bool
}

// Canonicalise makes the tree name (relative to the open directory dirfd;
// unix.AT_FDCWD and a path work too) canonical as Nix's
// canonicalisePathMetaData does: every node gets the permission
// Nix.Fix, mtime Nix.Mtime and, when its uid differs, the owner
// opts.UID/opts.GID; the setuid, setgid and sticky bits go; every
// extended attribute but Nix.KeepXattrs is removed.
//
// It first checks the whole tree, then changes it, and changes nothing
// when the check fails. A device node, FIFO or socket anywhere rejects the
// tree (*RejectedError, RejectType). With opts.BuildUID >= 0 (the
// ownership check of Nix's builds, against 'ln /etc/shadow $out/foo'),
// every node must be owned by the build user, or already be canonical and
// owned by opts.UID (left by a run killed in its change pass, which a
// rerun finishes; changing it changes nothing), and every regular file or
// symlink must have no link outside the tree (its link count equal to
// its names inside); otherwise the tree is rejected (RejectOwner,
// RejectHardLink) naming the node and its owner, and no node, least of
// all the foreign one, has its mode, owner, mtime or attributes changed.
// Without the check (NoBuildUser), a file or symlink with links outside
// the tree that the change pass would change (its owner, mode, mtime or
// an attribute it removes) rejects the tree too (RejectHardLink): the
// change would reach the file outside (a tree holding a hard link to
// /etc/shadow), which Nix's register-validity changes; one already
// canonical (a copy made by hard links) is left as it is and accepted.
//
// It never follows a symlink: each node is reached from its parent's
// descriptor with O_NOFOLLOW and changed through its own descriptor
// (O_PATH for files and symlinks, through /proc/self/fd, which must be
// mounted), after checking that it is an inode the check pass accepted.
// A node that is not (a process still writing into the tree swapped it)
// stops the change pass with an error wrapping ErrTreeChanged.
//
// With opts.CheckOnly it runs the check pass alone, with the same
// rejections, and changes nothing.
//
// Crash or cancellation: a tree is changed node by node, children before
// their directory; a kill leaves it partly canonical, and running
// Canonicalise again (with the same options) finishes it.
func Canonicalise(dirfd int, name string, opts CanonicaliseOptions) error {
	c := &canon{opts: opts, c: Nix, inodes: map[devIno]*inodeUse{}}
	display := opts.Display
	if display == "" {
		display = name
	}
	if err := c.walk(dirfd, name, display, false, 0); err != nil {
		return err
	}
	for _, u := range c.order {
		if u.mode&unix.S_IFMT != unix.S_IFDIR && u.nlink > u.inside && (opts.BuildUID >= 0 || u.change) {
			return &RejectedError{Kind: RejectHardLink, Path: u.first, UID: u.uid, BuildUID: opts.BuildUID,
				Mode: u.mode, Links: u.nlink, Inside: u.inside}
		}
	}
	if opts.CheckOnly {
		return nil
	}
	if testHookChecked != nil {
		testHookChecked()
	}
	return c.walk(dirfd, name, display, true, 0)
}

// testHookChecked, set by tests, runs between Canonicalise's check pass
// and its change pass.
var testHookChecked func()

type canon struct {
	opts   CanonicaliseOptions
	c      Canonical
	inodes map[devIno]*inodeUse
	order  []*inodeUse // in the order met, for a deterministic error
	xbuf   []byte
}

// owned reports whether the ownership check lets st through.
func (c *canon) owned(st *unix.Stat_t) bool {
	if c.opts.BuildUID < 0 || st.Uid == uint32(c.opts.BuildUID) {
		return true
	}
	// Left canonical by an interrupted run of ours.
	if int(st.Uid) != c.opts.UID || !c.c.MtimeOK(st) {
		return false
	}
	_, change := c.c.Fix(st.Mode)
	return !change && st.Mode&0o7000 == 0
}

// wouldChange reports whether the change pass would change the node
// name in dirfd (lstat st, not a directory): its owner, mode, mtime or
// an extended attribute it would remove.
func (c *canon) wouldChange(dirfd int, name, display string, st *unix.Stat_t) (bool, error) {
	if _, change := c.c.Fix(st.Mode); change || st.Mode&0o7000 != 0 || !c.c.MtimeOK(st) || int(st.Uid) != c.opts.UID {
		return true, nil
	}
	fd, err := sys.OpenAt(dirfd, name, unix.O_PATH|unix.O_NOFOLLOW|unix.O_CLOEXEC)
	if err != nil {
		return false, fmt.Errorf("canonicalising %s: %w", display, err)
	}
	defer unix.Close(fd)
	proc := "/proc/self/fd/" + strconv.Itoa(fd)
	n, err := unix.Listxattr(proc, nil)
	for err == nil && n > len(c.xbuf) {
		c.xbuf = make([]byte, n)
		n, err = unix.Listxattr(proc, c.xbuf)
		if errors.Is(err, unix.ERANGE) {
			n, err = unix.Listxattr(proc, nil)
		}
	}
	if errors.Is(err, unix.ENOTSUP) || errors.Is(err, unix.ENODATA) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("listing the extended attributes of %s: %w", display, err)
	}
	for _, a := range strings.Split(string(c.xbuf[:n]), "\x00") {
		if a != "" && !c.c.keepXattr(a) {
			return true, nil
		}
	}
	return false, nil
}

// walk visits name in dirfd: the check pass (fix false) records and
// checks every node; the change pass (fix true) changes them.
func (c *canon) walk(dirfd int, name, display string, fix bool, depth int) error {
	if depth > maxDepth {
		return fmt.Errorf("%s: nested deeper than %d directories", display, maxDepth)
	}
	var st unix.Stat_t
	if err := sys.LstatAt(dirfd, name, &st); err != nil {
		return fmt.Errorf("canonicalising %s: %w", display, err)
	}
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFREG, unix.S_IFDIR, unix.S_IFLNK:
	default:
		if !fix {
			return &RejectedError{Kind: RejectType, Path: display, UID: st.Uid, BuildUID: c.opts.BuildUID, Mode: st.Mode, Links: uint64(st.Nlink)}
		}
		return fmt.Errorf("canonicalising %s: %w", display, ErrTreeChanged)
	}
	isDir := st.Mode&unix.S_IFMT == unix.S_IFDIR
	if !fix {
		if !c.owned(&st) {
			return &RejectedError{Kind: RejectOwner, Path: display, UID: st.Uid, BuildUID: c.opts.BuildUID, Mode: st.Mode, Links: uint64(st.Nlink)}
		}
		k := devIno{uint64(st.Dev), st.Ino}
		u := c.inodes[k]
		if u == nil {
			u = &inodeUse{nlink: uint64(st.Nlink), first: display, uid: st.Uid, mode: st.Mode}
			c.inodes[k] = u
			c.order = append(c.order, u)
		}
		u.inside++
		if !isDir {
			if c.opts.BuildUID < 0 && st.Nlink > 1 && u.inside == 1 {
				ch, err := c.wouldChange(dirfd, name, display, &st)
				if err != nil {
					return err
				}
				u.change = ch
			}
			return nil
		}
	}
	flags := unix.O_PATH | unix.O_NOFOLLOW | unix.O_CLOEXEC
	if isDir {
		flags = unix.O_RDONLY | unix.O_DIRECTORY | unix.O_NOFOLLOW | unix.O_CLOEXEC
	}
	fd, err := sys.OpenAt(dirfd, name, flags)
	if err != nil {
		return fmt.Errorf("canonicalising %s: %w", display, err)
	}
	defer unix.Close(fd)
	if fix {
		// The node changed is the one open: check that it is one the
		// check pass accepted.
		if err := unix.Fstat(fd, &st); err != nil {
			return fmt.Errorf("canonicalising %s: %w", display, err)
		}
		u := c.inodes[devIno{uint64(st.Dev), st.Ino}]
		if u == nil || u.mode&unix.S_IFMT != st.Mode&unix.S_IFMT || !c.owned(&st) && int(st.Uid) != c.opts.UID ||
			c.opts.BuildUID >= 0 && !isDir && uint64(st.Nlink) > u.inside {
			return fmt.Errorf("canonicalising %s: %w", display, ErrTreeChanged)
		}
	}
	if isDir {
		ents, err := sys.ReadDirents(fd, nil)
		if err != nil {
			return fmt.Errorf("reading %s: %w", display, err)
		}
		for _, e := range ents {
			if err := c.walk(fd, e.Name, display+"/"+e.Name, fix, depth+1); err != nil {
				return err
			}
		}
	}
	if !fix {
		return nil
	}
	return c.change(fd, isDir, &st, display)
}

// change makes the node open at fd (fstat st) canonical: attributes,
// mode, mtime, then owner, in Nix's order. A directory's fd is an
// ordinary one; any other node's is O_PATH, changed through
// /proc/self/fd.
func (c *canon) change(fd int, isDir bool, st *unix.Stat_t, display string) error {
	proc := ""
	if !isDir {
		proc = "/proc/self/fd/" + strconv.Itoa(fd)
	}
	if err := c.removeXattrs(fd, proc, display); err != nil {
		return err
	}
	if perm, change := c.c.Fix(st.Mode); change || st.Mode&0o7000 != 0 {
		var err error
		if isDir {
			err = unix.Fchmod(fd, perm)
		} else {
			err = unix.Chmod(proc, perm)
		}
		if err != nil {
			return fmt.Errorf("canonicalising the mode of %s: %w", display, err)
		}
	}
	if !c.c.MtimeOK(st) {
		ts := []unix.Timespec{{Nsec: unix.UTIME_OMIT}, {Sec: c.c.Mtime}}
		var err error
		if isDir {
			err = futimens(fd, ts)
		} else {
			err = unix.UtimesNanoAt(unix.AT_FDCWD, proc, ts, 0)
		}
		if err != nil {
			return fmt.Errorf("setting the mtime of %s: %w", display, err)
		}
	}
	if int(st.Uid) != c.opts.UID {
		if err := unix.Fchownat(fd, "", c.opts.UID, c.opts.GID, unix.AT_EMPTY_PATH); err != nil {
			return fmt.Errorf("changing the owner of %s (uid %d) to uid %d: %w", display, st.Uid, c.opts.UID, err)
		}
	}
	return nil
}

// removeXattrs removes the extended attributes of the node open at fd
// (through proc when it is set) that Nix removes. A file system without
// them is no error.
func (c *canon) removeXattrs(fd int, proc, display string) error {
	list := func(buf []byte) (int, error) {
		if proc == "" {
			return unix.Flistxattr(fd, buf)
		}
		return unix.Listxattr(proc, buf)
	}
	n, err := list(nil)
	for err == nil && n > len(c.xbuf) {
		c.xbuf = make([]byte, n)
		n, err = list(c.xbuf)
		if errors.Is(err, unix.ERANGE) { // grew meanwhile
			n, err = list(nil)
		}
	}
	if errors.Is(err, unix.ENOTSUP) || errors.Is(err, unix.ENODATA) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("listing the extended attributes of %s: %w", display, err)
	}
	for _, a := range strings.Split(string(c.xbuf[:n]), "\x00") {
		if a == "" || c.c.keepXattr(a) {
			continue
		}
		if proc == "" {
			err = unix.Fremovexattr(fd, a)
		} else {
			err = unix.Removexattr(proc, a)
		}
		if err != nil && !errors.Is(err, unix.ENODATA) {
			return fmt.Errorf("removing the extended attribute %s of %s: %w", a, display, err)
		}
	}
	return nil
}
