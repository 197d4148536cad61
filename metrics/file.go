package metrics

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
)

// ErrUnsafeFile is wrapped by WriteFile's refusals of where it was asked
// to write: a directory another user controls, a final name that is not
// a regular file.
var ErrUnsafeFile = errors.New("metrics: refusing to write the metrics file")

// WriteFile replaces the file at path with fams in the text format
// (Write), atomically: the text goes to a new temporary file in the same
// directory (".NAME.tmp-PID-RANDOM", created with O_EXCL and O_NOFOLLOW,
// mode 0644; node_exporter reads only names ending in .prom), which is
// fsynced and renamed over path; the directory is then fsynced.
//
// Guarantees: a reader sees the old file or the new one, whole, at every
// instant; an error, a crash or a kill at any point leaves the old file
// as it was (a kill may leave the temporary file behind, which no reader
// of *.prom files reads; the next write of path removes it once it is
// staleTemp old). Two writers of one path: the last rename wins,
// each file whole. Nothing is followed at the final name: a symlink
// there, or anything but a regular file, is refused. The directory must
// be owned by the caller's effective uid and writable by it alone (so
// root never creates a file where another user could swap it). Its path
// is walked a component at a time (openDir): a symlink on the way is
// followed only where another user could not have put it, so that root
// never writes where a link of another user's points (Debian's
// /var/lib/prometheus is the prometheus user's: its node-exporter, a
// root directory, is fine, a link put in its place is refused). fams are
// checked first: invalid families (ErrInvalid) change nothing.
func WriteFile(path string, fams []Family) error {
	text, err := Format(fams)
	if err != nil {
		return err
	}
	dir, base := filepath.Split(filepath.Clean(path))
	if base == "" || base == "." || base == ".." || base == "/" {
		return fmt.Errorf("%w %q: it names no file", ErrUnsafeFile, path)
	}
	if dir == "" {
		dir = "."
	}
	dfd, err := openDir(dir)
	if err != nil {
		return fmt.Errorf("metrics: opening the directory of %s: %w", path, err)
	}
	defer unix.Close(dfd)
	var st unix.Stat_t
	if err := unix.Fstat(dfd, &st); err != nil {
		return fmt.Errorf("metrics: %s: %w", dir, err)
	}
	if euid := uint32(os.Geteuid()); st.Uid != euid || st.Mode&0o022 != 0 {
		return fmt.Errorf("%w %s: its directory %s is owned by uid %d with mode %04o; it must be owned by uid %d and writable by its owner only (use a directory such as /var/lib/prometheus/node-exporter, owned by root, mode 0755)",
			ErrUnsafeFile, path, dir, st.Uid, st.Mode&0o7777, euid)
	}
	switch err := unix.Fstatat(dfd, base, &st, unix.AT_SYMLINK_NOFOLLOW); {
	case errors.Is(err, unix.ENOENT):
	case err != nil:
		return fmt.Errorf("metrics: %w", &os.PathError{Op: "lstat", Path: path, Err: err})
	case st.Mode&unix.S_IFMT == unix.S_IFLNK:
		return fmt.Errorf("%w %s: it is a symlink (it is never followed): remove it, or give the file it points to", ErrUnsafeFile, path)
	case st.Mode&unix.S_IFMT != unix.S_IFREG:
		return fmt.Errorf("%w %s: it exists and is not a regular file: remove it, or give another file", ErrUnsafeFile, path)
	}

	removeStaleTemps(dfd, base)
	var rnd [6]byte
	rand.Read(rnd[:])
	tmp := fmt.Sprintf("%s%d-%s", tempPrefix(base), os.Getpid(), hex.EncodeToString(rnd[:]))
	fd, err := unix.Openat(dfd, tmp, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o644)
	if err != nil {
		return fmt.Errorf("metrics: creating a temporary file in %s: %w", dir, &os.PathError{Op: "open", Path: filepath.Join(dir, tmp), Err: err})
	}
	f := os.NewFile(uintptr(fd), filepath.Join(dir, tmp))
	err = f.Chmod(0o644) // whatever the umask: node_exporter runs as another user
	if err == nil {
		_, err = f.Write(text)
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		if rerr := unix.Renameat(dfd, tmp, dfd, base); rerr != nil {
			err = &os.LinkError{Op: "rename", Old: filepath.Join(dir, tmp), New: path, Err: rerr}
		}
	}
	if err != nil {
		unix.Unlinkat(dfd, tmp, 0)
		return fmt.Errorf("metrics: writing %s (the old file, if any, is unchanged): %w", path, err)
	}
	if err := unix.Fsync(dfd); err != nil {
		return fmt.Errorf("metrics: %s was replaced, but syncing its directory failed: %w", path, &os.PathError{Op: "fsync", Path: dir, Err: err})
	}
	return nil
}

// maxLinks bounds the symlinks openDir follows (Linux's own limit).
const maxLinks = 40

// openDir opens the directory dir (relative: from the working directory)
// a component at a time, never letting the kernel follow a symlink: a
// link met on the way is read and followed by openDir itself, and only
// when the directory holding it is owned by root or the caller and
// writable by its owner alone, or is sticky (as /tmp) and the link is
// root's or the caller's. A link in a directory another user controls
// is refused (ErrUnsafeFile): that user could point it anywhere, and
// root would write there. Real directories are walked through whoever
// owns them: another user can put there only directories of their own,
// which WriteFile's check of the final directory refuses, or move
// root's directories that were already theirs to move.
func openDir(dir string) (int, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return -1, err
	}
	// O_PATH on the way: a directory the caller may search but not read
	// (0711) is walked through, as the kernel would; the last one is
	// opened for reading at the end (fsync needs it).
	const walk = unix.O_PATH | unix.O_DIRECTORY | unix.O_CLOEXEC
	fd, err := unix.Open("/", walk, 0)
	if err != nil {
		return -1, &os.PathError{Op: "open", Path: "/", Err: err}
	}
	rest := strings.Split(abs, "/")
	at := "/" // where fd is, for messages
	links := 0
	for len(rest) > 0 {
		c := rest[0]
		rest = rest[1:]
		if c == "" || c == "." {
			continue
		}
		next := filepath.Join(at, c)
		nfd, err := unix.Openat(fd, c, walk|unix.O_NOFOLLOW, 0)
		if err == nil {
			unix.Close(fd)
			fd, at = nfd, next
			continue
		}
		var lst, dst unix.Stat_t
		if (err != unix.ELOOP && err != unix.ENOTDIR) ||
			unix.Fstatat(fd, c, &lst, unix.AT_SYMLINK_NOFOLLOW) != nil || lst.Mode&unix.S_IFMT != unix.S_IFLNK {
			unix.Close(fd)
			return -1, &os.PathError{Op: "open", Path: next, Err: err}
		}
		if err := unix.Fstat(fd, &dst); err != nil {
			unix.Close(fd)
			return -1, &os.PathError{Op: "stat", Path: at, Err: err}
		}
		euid := uint32(os.Geteuid())
		mine := func(uid uint32) bool { return uid == 0 || uid == euid }
		if !mine(dst.Uid) || dst.Mode&0o022 != 0 && (dst.Mode&unix.S_ISVTX == 0 || !mine(lst.Uid)) {
			unix.Close(fd)
			return -1, fmt.Errorf("%w: %s is a symlink in %s, a directory another user controls (owned by uid %d, mode %04o), which could point it anywhere: give the path it points to, if that is the directory meant",
				ErrUnsafeFile, next, at, dst.Uid, dst.Mode&0o7777)
		}
		if links++; links > maxLinks {
			unix.Close(fd)
			return -1, &os.PathError{Op: "open", Path: dir, Err: unix.ELOOP}
		}
		buf := make([]byte, unix.PathMax)
		n, err := unix.Readlinkat(fd, c, buf)
		if err == nil && n >= len(buf) {
			err = unix.ENAMETOOLONG
		}
		if err != nil {
			unix.Close(fd)
			return -1, &os.PathError{Op: "readlink", Path: next, Err: err}
		}
		target := string(buf[:n])
		if strings.HasPrefix(target, "/") {
			rfd, err := unix.Open("/", walk, 0)
			unix.Close(fd)
			if err != nil {
				return -1, &os.PathError{Op: "open", Path: "/", Err: err}
			}
			fd, at = rfd, "/"
		}
		rest = append(strings.Split(target, "/"), rest...)
	}
	dfd, err := unix.Openat(fd, ".", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	unix.Close(fd)
	if err != nil {
		return -1, &os.PathError{Op: "open", Path: at, Err: err}
	}
	return dfd, nil
}

// staleTemp is the age past which a temporary file of WriteFile's is one
// a killed writer left: a write of a few kilobytes takes milliseconds,
// its fsync seconds on a busy disk.
const staleTemp = 10 * time.Minute

// tempPrefix starts the names of the temporary files of base.
func tempPrefix(base string) string { return "." + base + ".tmp-" }

// removeStaleTemps removes, in the directory dfd, the regular files named
// as WriteFile's temporary files of base that were last modified more
// than staleTemp ago. Best effort: an error only leaves them. A writer
// stopped (SIGSTOP) for longer finds its temporary file gone and reports
// the failed rename, the old file kept. The directory is read in batches
// of bounded size.
func removeStaleTemps(dfd int, base string) {
	d, err := unix.Openat(dfd, ".", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return
	}
	f := os.NewFile(uintptr(d), ".")
	defer f.Close()
	prefix, cutoff := tempPrefix(base), time.Now().Add(-staleTemp)
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
