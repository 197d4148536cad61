// Package atomicfile writes files atomically into directories that no
// other user controls, for metrics files, systemd units and man pages
// that root may write: a directory's path is walked a component at a
// time, a symlink on the way followed only where no other user could
// have put it (OpenDir); a file is written to a temporary file in the
// same directory, fsynced and renamed over its name (Write, WriteFile).
//
// Guarantees, for every function here: a reader of the final name sees
// the old file or the new one, whole, at every instant. Two writers of
// one name: the last rename wins, each file whole, never a torn one. An
// error, a crash or a kill at any point leaves the old file as it was; a
// kill or crash between creating the temporary file and renaming it
// leaves that file (".NAME.tmp-PID-RANDOM", never matching the final
// name's suffix), which a later Write of the same name removes once it is
// StaleTemp old. Nothing is ever written through a symlink.
package atomicfile

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"storekeeper/report"
)

// ErrUnsafe is wrapped by every refusal of where a file was to be
// written: a directory another user controls or could have swapped (a
// symlink of theirs on the way), a name that is a symlink (RefuseSymlink)
// or not a regular file.
var ErrUnsafe = errors.New("unsafe place to write")

// Owners says who may own the directory OpenDir opens.
type Owners int

const (
	// RootOrCaller: root or the caller's effective uid (systemd units,
	// man pages: a directory of root's is fine for any caller).
	RootOrCaller Owners = iota
	// Caller: exactly the caller's effective uid (metrics files).
	Caller
)

// AtSymlink says what Write does with a symlink at the name it writes.
type AtSymlink int

const (
	// RefuseSymlink refuses it (ErrUnsafe), leaving it as it is.
	RefuseSymlink AtSymlink = iota
	// ReplaceSymlink replaces the link itself by the new file; the link
	// is never followed, its target never touched.
	ReplaceSymlink
)

// maxLinks bounds the symlinks OpenDir follows (Linux's own limit).
const maxLinks = 40

// StaleTemp is the age past which a temporary file of Write's is one a
// killed writer left: a write of a few hundred kilobytes takes
// milliseconds, its fsync seconds on a busy disk.
const StaleTemp = 10 * time.Minute

// OpenDir opens the directory dir (relative: from the working directory)
// for writing files into it with Write, and refuses (ErrUnsafe) one that
// another user could change under the caller: not owned as owners says,
// or writable by group or others. Files are then written relative to the
// descriptor, so the directory checked is the directory written.
//
// The path is walked a component at a time, never letting the kernel
// follow a symlink: a link met on the way is read and followed by
// OpenDir itself, and only when the directory holding it is owned by
// root or the caller and writable by its owner alone, or is sticky (as
// /tmp) and the link is root's or the caller's. A link in a directory
// another user controls is refused (ErrUnsafe): that user could point it
// anywhere, and root would write there. Real directories are walked
// through whoever owns them: another user can put there only directories
// of their own, which the final check refuses. Directories that may be
// searched but not read (0711) are walked through, as the kernel would.
// At most 40 links are followed (then ELOOP).
func OpenDir(dir string, owners Owners) (*os.File, error) {
	fd, at, err := walk(dir)
	if err != nil {
		return nil, err
	}
	dfd, err := unix.Openat(fd, ".", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	unix.Close(fd)
	if err != nil {
		return nil, &os.PathError{Op: "open", Path: at, Err: err}
	}
	d := os.NewFile(uintptr(dfd), dir)
	var st unix.Stat_t
	if err := unix.Fstat(dfd, &st); err != nil {
		d.Close()
		return nil, &os.PathError{Op: "stat", Path: dir, Err: err}
	}
	euid := uint32(os.Geteuid())
	switch {
	case st.Uid != euid && (owners == Caller || st.Uid != 0):
		d.Close()
		want := fmt.Sprintf("uid %d", euid)
		if owners == RootOrCaller && euid != 0 {
			want = fmt.Sprintf("root or uid %d", euid)
		}
		return nil, fmt.Errorf("%w: the directory %s belongs to uid %d (mode %04o), and it must belong to %s: that user could swap what is written there; use a directory of your own (or root's, mode 0755)",
			ErrUnsafe, report.Name(dir), st.Uid, st.Mode&0o7777, want)
	case st.Mode&0o022 != 0:
		d.Close()
		return nil, fmt.Errorf("%w: the directory %s is writable by others than its owner (mode %04o): they could swap what is written there; make it writable by its owner only (chmod go-w), or use another directory",
			ErrUnsafe, report.Name(dir), st.Mode&0o7777)
	}
	return d, nil
}

// Mkdir creates the directory dir with mode perm (whatever the umask)
// unless it exists, and reports whether it created it. Its parent is
// walked as OpenDir walks a path, and must be owned by root or the
// caller and writable by its owner alone, or be sticky (/tmp), for
// Mkdir to create dir there: a directory is never created where another
// user could replace it or where their link points. Whatever already is
// at dir (a directory, a link) is left for OpenDir to judge: the caller
// then opens dir with OpenDir, which refuses one that another user made
// or linked.
func Mkdir(dir string, perm os.FileMode) (created bool, err error) {
	parent, base := filepath.Split(filepath.Clean(dir))
	if base == "" || base == "." || base == ".." || base == "/" {
		if _, err := os.Stat(dir); err != nil {
			return false, err
		}
		return false, nil // "/", ".", "..": they exist
	}
	parent = filepath.Clean(parent) // "" is "."
	pfd, at, err := walk(parent)
	if err != nil {
		return false, err
	}
	defer unix.Close(pfd)
	var st unix.Stat_t
	if unix.Fstatat(pfd, base, &st, unix.AT_SYMLINK_NOFOLLOW) == nil {
		return false, nil // whatever it is: OpenDir judges it
	}
	if err := unix.Fstat(pfd, &st); err != nil {
		return false, &os.PathError{Op: "stat", Path: at, Err: err}
	}
	if !mine(st.Uid) || st.Mode&0o022 != 0 && st.Mode&unix.S_ISVTX == 0 {
		return false, fmt.Errorf("%w: not creating %s: its parent %s is owned by uid %d with mode %04o, a directory another user controls: create it yourself, or use another directory",
			ErrUnsafe, report.Name(dir), report.Name(parent), st.Uid, st.Mode&0o7777)
	}
	switch err := unix.Mkdirat(pfd, base, 0o700); {
	case errors.Is(err, unix.EEXIST):
		return false, nil
	case err != nil:
		return false, &os.PathError{Op: "mkdir", Path: dir, Err: err}
	}
	// The new directory is the caller's; chmod it through a descriptor
	// (no other user can rename it in a parent checked above).
	fd, err := unix.Openat(pfd, base, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err == nil {
		err = unix.Fchmod(fd, uint32(perm.Perm()))
		unix.Close(fd)
	}
	if err != nil {
		return true, &os.PathError{Op: "chmod", Path: dir, Err: err}
	}
	return true, nil
}

func mine(uid uint32) bool { return uid == 0 || uid == uint32(os.Geteuid()) }

// walk opens dir with O_PATH as OpenDir describes, returning the
// descriptor and the path where it is (for messages).
func walk(dir string) (int, string, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return -1, "", err
	}
	const flags = unix.O_PATH | unix.O_DIRECTORY | unix.O_CLOEXEC
	fd, err := unix.Open("/", flags, 0)
	if err != nil {
		return -1, "", &os.PathError{Op: "open", Path: "/", Err: err}
	}
	rest := strings.Split(abs, "/")
	at := "/"
	links := 0
	for len(rest) > 0 {
		c := rest[0]
		rest = rest[1:]
		if c == "" || c == "." {
			continue
		}
		next := filepath.Join(at, c)
		nfd, err := unix.Openat(fd, c, flags|unix.O_NOFOLLOW, 0)
		if err == nil {
			unix.Close(fd)
			fd, at = nfd, next
			continue
		}
		var lst, dst unix.Stat_t
		if (err != unix.ELOOP && err != unix.ENOTDIR) ||
			unix.Fstatat(fd, c, &lst, unix.AT_SYMLINK_NOFOLLOW) != nil || lst.Mode&unix.S_IFMT != unix.S_IFLNK {
			unix.Close(fd)
			return -1, "", &os.PathError{Op: "open", Path: next, Err: err}
		}
		if err := unix.Fstat(fd, &dst); err != nil {
			unix.Close(fd)
			return -1, "", &os.PathError{Op: "stat", Path: at, Err: err}
		}
		if !mine(dst.Uid) || dst.Mode&0o022 != 0 && (dst.Mode&unix.S_ISVTX == 0 || !mine(lst.Uid)) {
			unix.Close(fd)
			return -1, "", fmt.Errorf("%w: %s is a symlink in %s, a directory another user controls (owned by uid %d, mode %04o), which could point it anywhere: give the path it points to, if that is the directory meant",
				ErrUnsafe, report.Name(next), report.Name(at), dst.Uid, dst.Mode&0o7777)
		}
		if links++; links > maxLinks {
			unix.Close(fd)
			return -1, "", &os.PathError{Op: "open", Path: dir, Err: unix.ELOOP}
		}
		buf := make([]byte, unix.PathMax)
		n, err := unix.Readlinkat(fd, c, buf)
		if err == nil && n >= len(buf) {
			err = unix.ENAMETOOLONG
		}
		if err != nil {
			unix.Close(fd)
			return -1, "", &os.PathError{Op: "readlink", Path: next, Err: err}
		}
		target := string(buf[:n])
		if strings.HasPrefix(target, "/") {
			rfd, err := unix.Open("/", flags, 0)
			unix.Close(fd)
			if err != nil {
				return -1, "", &os.PathError{Op: "open", Path: "/", Err: err}
			}
			fd, at = rfd, "/"
		}
		rest = append(strings.Split(target, "/"), rest...)
	}
	return fd, at, nil
}

// Write replaces the entry name in dir (from OpenDir) with a regular file
// holding data, mode perm whatever the umask: data goes to a new
// temporary file in dir (".NAME.tmp-PID-RANDOM", created with O_EXCL and
// O_NOFOLLOW), which is fsynced and renamed over name. A symlink at name
// is refused or replaced as at says, never followed; anything else but a
// regular file there is refused (ErrUnsafe). Temporary files of name that
// killed writers left and that are StaleTemp old are removed first (a
// writer stopped for longer finds its own gone and reports the failed
// rename, the old file kept). The directory is not fsynced: the caller
// fsyncs it after its last write (WriteFile does). Guarantees: see the
// package comment.
func Write(dir *os.File, name string, data []byte, perm os.FileMode, at AtSymlink) error {
	path := filepath.Join(dir.Name(), name)
	if name == "" || name == "." || name == ".." || strings.Contains(name, "/") {
		return fmt.Errorf("%w: %q names no file in %s", ErrUnsafe, name, report.Name(dir.Name()))
	}
	dfd := int(dir.Fd())
	var st unix.Stat_t
	switch err := unix.Fstatat(dfd, name, &st, unix.AT_SYMLINK_NOFOLLOW); {
	case errors.Is(err, unix.ENOENT):
	case err != nil:
		return &os.PathError{Op: "lstat", Path: path, Err: err}
	case st.Mode&unix.S_IFMT == unix.S_IFLNK:
		if at != ReplaceSymlink {
			return fmt.Errorf("%w: %s is a symlink (it is never followed): remove it, or give the file it points to", ErrUnsafe, report.Name(path))
		}
	case st.Mode&unix.S_IFMT != unix.S_IFREG:
		return fmt.Errorf("%w: %s exists and is not a regular file: remove it, or give another file", ErrUnsafe, report.Name(path))
	}

	removeStaleTemps(dfd, name)
	var rnd [6]byte
	rand.Read(rnd[:])
	tmp := fmt.Sprintf("%s%d-%s", tempPrefix(name), os.Getpid(), hex.EncodeToString(rnd[:]))
	fd, err := unix.Openat(dfd, tmp, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return fmt.Errorf("creating a temporary file in %s: %w", report.Name(dir.Name()), &os.PathError{Op: "open", Path: filepath.Join(dir.Name(), tmp), Err: err})
	}
	f := os.NewFile(uintptr(fd), filepath.Join(dir.Name(), tmp))
	err = f.Chmod(perm.Perm()) // whatever the umask
	if err == nil {
		_, err = f.Write(data)
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		if rerr := unix.Renameat(dfd, tmp, dfd, name); rerr != nil {
			err = &os.LinkError{Op: "rename", Old: filepath.Join(dir.Name(), tmp), New: path, Err: rerr}
		}
	}
	if err != nil {
		unix.Unlinkat(dfd, tmp, 0)
		return fmt.Errorf("writing %s (the old file, if any, is unchanged): %w", report.Name(path), err)
	}
	return nil
}

// WriteFile replaces the file at path with data: OpenDir of its directory
// (owners), Write (perm, at), then an fsync of the directory, so that the
// new file survives a crash once WriteFile returns nil. An error before
// the rename leaves the old file; an error of the directory's fsync is
// returned after the file was replaced (it says so).
func WriteFile(path string, data []byte, perm os.FileMode, owners Owners, at AtSymlink) error {
	dir, base := filepath.Split(filepath.Clean(path))
	if base == "" || base == "." || base == ".." || base == "/" {
		return fmt.Errorf("%w: %q names no file", ErrUnsafe, path)
	}
	d, err := OpenDir(filepath.Clean(dir), owners) // "" is "."
	if err != nil {
		return fmt.Errorf("opening the directory of %s: %w", report.Name(path), err)
	}
	defer d.Close()
	if err := Write(d, base, data, perm, at); err != nil {
		return err
	}
	if err := d.Sync(); err != nil {
		return fmt.Errorf("%s was replaced, but syncing its directory failed: %w", report.Name(path), err)
	}
	return nil
}

// tempPrefix starts the names of the temporary files of name.
func tempPrefix(name string) string { return "." + name + ".tmp-" }

// removeStaleTemps removes, in the directory dfd, the regular files named
// as Write's temporary files of name that were last modified more than
// StaleTemp ago. Best effort: an error only leaves them. The directory is
// read in batches of bounded size.
func removeStaleTemps(dfd int, name string) {
	d, err := unix.Openat(dfd, ".", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return
	}
	f := os.NewFile(uintptr(d), ".")
	defer f.Close()
	prefix, cutoff := tempPrefix(name), time.Now().Add(-StaleTemp)
	for {
		names, err := f.Readdirnames(256)
		for _, n := range names {
			var st unix.Stat_t
			if !strings.HasPrefix(n, prefix) || unix.Fstatat(dfd, n, &st, unix.AT_SYMLINK_NOFOLLOW) != nil ||
				st.Mode&unix.S_IFMT != unix.S_IFREG || time.Unix(st.Mtim.Unix()).After(cutoff) {
				continue
			}
			unix.Unlinkat(dfd, n, 0)
		}
		if err != nil {
			return
		}
	}
}
