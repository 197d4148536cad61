package store

// The one check, shared by every command that would drop database rows
// or delete on the word of the store directory, that the store directory
// looks like the store the database describes and not like a mount point
// whose file system failed to mount.
//
// Why: a valid path missing from disk is "vanished", and repairing a
// vanished path drops its row. With the store's file system unmounted
// every valid path is vanished, so such a repair empties the database,
// and the next collection after the remount deletes the whole store as
// unregistered garbage. (`nix-store --verify` drops the rows even without
// --repair.)

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"storekeeper/store/fs"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// ErrStoreLooksUnmounted is wrapped by CheckPresence's refusals.
var ErrStoreLooksUnmounted = errors.New("store: the store directory looks unmounted")

// Thresholds of a "mass" disappearance: more than MassMissingPercent of
// the valid paths, and more than MassMissingMin paths, missing at once
// looks like a lost or half-mounted file system, not like damage. (A
// handful of paths deleted by hand, or 3 of 30, stays repairable.)
const (
	MassMissingPercent = 10
	MassMissingMin     = 20
)

// FSIdentityName is the file, in storekeeper's own state dir, that records
// which file system the store directory was on when it was last seen
// whole.
const FSIdentityName = "store-fs"

// Presence is what a caller found in the store directory, for
// CheckPresence.
type Presence struct {
	// Valid is the number of valid paths in the database, Missing how
	// many of them the store directory's listing lacks.
	Valid, Missing int
	// Names is the store directory's listing (to say whether it is
	// empty); nil if not at hand.
	Names []string
	// Dropping: the caller is about to drop the rows of missing paths.
	// Besides an empty store directory it then also refuses a mass
	// disappearance and a changed file system.
	Dropping bool
	// IdentityDir holds the recorded file-system identity
	// (FSIdentityName; Layout.OwnStateDir by default); "" skips that
	// comparison.
	IdentityDir string
}

// UnmountedError is CheckPresence's refusal: what looks wrong.
type UnmountedError struct {
	StoreDir       string // the physical store directory
	DBPath         string
	Valid, Missing int
	Reasons        []string
	FS             string // the file system the store directory is on now
}

func (e *UnmountedError) Error() string {
	return fmt.Sprintf("the store directory %s does not look like the store %s describes: %d of the %d valid paths are missing from it. %s Now it is on %s.",
		e.StoreDir, e.DBPath, e.Missing, e.Valid, strings.Join(e.Reasons, " "), e.FS)
}

func (e *UnmountedError) Unwrap() error { return ErrStoreLooksUnmounted }

// CheckPresence returns nil when the store directory looks like the store
// the database describes, or an *UnmountedError (wrapping
// ErrStoreLooksUnmounted) saying what looks wrong when:
//
//   - valid paths are registered and none of them is in the store
//     directory (it is empty, or holds only .links, trash, lost+found or
//     unregistered entries): its file system is not mounted;
//   - with Dropping, more than MassMissingPercent% and more than
//     MassMissingMin of the valid paths are missing at once;
//   - with Dropping and a recorded identity (RecordFSIdentity): some paths
//     are missing and the store directory is on another file system than
//     when it was last seen whole, or it was a mount point and nothing is
//     mounted on it now.
//
// A store directory that lacks no valid path is never refused, whatever
// file system it is on (a store copied to a new disk is whole). The
// recorded identity is only compared, never written here. It reads the
// store directory's and its parent's metadata and /proc/self/mountinfo;
// it changes nothing.
func CheckPresence(lay Layout, p Presence) error {
	if p.Valid <= 0 || p.Missing <= 0 {
		return nil
	}
	e := &UnmountedError{StoreDir: lay.RealStoreDir, DBPath: lay.DBPath(), Valid: p.Valid, Missing: p.Missing}
	now, nowErr := CurrentFSIdentity(lay.RealStoreDir)
	if p.Missing >= p.Valid {
		if p.Names != nil && onlyHousekeeping(p.Names) {
			e.Reasons = append(e.Reasons, "It is empty: is its file system mounted?")
		} else {
			e.Reasons = append(e.Reasons, "None of them is there: is the right file system mounted on it?")
		}
	} else if p.Dropping && p.Missing > MassMissingMin && p.Missing*100 > p.Valid*MassMissingPercent {
		e.Reasons = append(e.Reasons, fmt.Sprintf("More than %d%% of the valid paths (and more than %d) missing at once looks like a lost or half-mounted file system, not like damage.",
			MassMissingPercent, MassMissingMin))
	}
	if p.Dropping && p.IdentityDir != "" && nowErr == nil {
		if old, ok, err := LoadFSIdentity(p.IdentityDir); err == nil && ok {
			if why := old.change(now); why != "" {
				e.Reasons = append(e.Reasons, fmt.Sprintf("When storekeeper last saw it whole (recorded in %s) %s.", filepath.Join(p.IdentityDir, FSIdentityName), why))
			}
		}
	}
	if len(e.Reasons) == 0 {
		return nil
	}
	e.FS = "a file system storekeeper could not identify"
	if nowErr == nil {
		e.FS = now.describe()
	}
	return e
}

// onlyHousekeeping reports whether a store directory listing holds
// nothing but what an empty or freshly made store file system has.
func onlyHousekeeping(names []string) bool {
	for _, n := range names {
		switch n {
		case ".links", "trash", "lost+found":
		default:
			return false
		}
	}
	return true
}

// FSIdentity says which file system a store directory is on.
type FSIdentity struct {
	StoreDir string   // the physical store directory it describes
	Type     int64    // statfs f_type
	Fsid     [2]int32 // statfs f_fsid (0:0 when the file system has none)
	Dev      uint64   // the store directory's st_dev
	// MountPoint: something is mounted on the store directory (its
	// device or mount differs from its parent's), as /nix/store on its
	// own partition, or NixOS's read-only bind mount.
	MountPoint bool
	// For messages only, from /proc/self/mountinfo ("" if unknown).
	FSType, Source, MountedOn string
}

// CurrentFSIdentity reads dir's file-system identity (following a
// symlink at dir itself, as every use of the store directory does).
func CurrentFSIdentity(dir string) (FSIdentity, error) {
	id := FSIdentity{StoreDir: dir}
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return id, fmt.Errorf("store: opening %s: %w", dir, err)
	}
	defer unix.Close(fd)
	var sfs unix.Statfs_t
	if err := unix.Fstatfs(fd, &sfs); err != nil {
		return id, fmt.Errorf("store: statfs %s: %w", dir, err)
	}
	id.Type = int64(sfs.Type)
	id.Fsid = sfs.Fsid.Val
	var self, parent unix.Statx_t
	const mask = unix.STATX_BASIC_STATS | unix.STATX_MNT_ID
	if err := unix.Statx(fd, "", unix.AT_EMPTY_PATH, mask, &self); err != nil {
		return id, fmt.Errorf("store: statx %s: %w", dir, err)
	}
	if err := unix.Statx(fd, "..", unix.AT_SYMLINK_NOFOLLOW, mask, &parent); err != nil {
		return id, fmt.Errorf("store: statx %s/..: %w", dir, err)
	}
	id.Dev = unix.Mkdev(self.Dev_major, self.Dev_minor)
	id.MountPoint = self.Dev_major != parent.Dev_major || self.Dev_minor != parent.Dev_minor
	if self.Mask&parent.Mask&unix.STATX_MNT_ID != 0 {
		id.MountPoint = id.MountPoint || self.Mnt_id != parent.Mnt_id
		id.FSType, id.Source, id.MountedOn = fs.MountOf(self.Mnt_id)
	}
	return id, nil
}

// fsNames names the f_type of common file systems, for messages when
// mountinfo could not be read.
var fsNames = map[int64]string{
	0xef53: "ext2/3/4", 0x01021994: "tmpfs", 0x58465342: "xfs", 0x9123683e: "btrfs",
	0x2fc12fc1: "zfs", 0x794c7630: "overlay", 0x6969: "nfs", 0x73717368: "squashfs",
	0xf2f52010: "f2fs", 0xca451a4e: "bcachefs", 0x65735546: "fuse",
}

func (id FSIdentity) typeName() string {
	if id.FSType != "" {
		return id.FSType
	}
	if n, ok := fsNames[id.Type]; ok {
		return n
	}
	return fmt.Sprintf("type %#x", id.Type)
}

// describe says which file system it is, for messages: `the ext4 file
// system "/dev/vda" mounted on /`.
func (id FSIdentity) describe() string {
	s := "the " + id.typeName() + " file system"
	if id.Source != "" {
		s += fmt.Sprintf(" %q", id.Source)
	}
	if id.MountedOn != "" {
		s += " mounted on " + id.MountedOn
	}
	return s + fmt.Sprintf(" (fsid %08x:%08x, device %d:%d)", uint32(id.Fsid[0]), uint32(id.Fsid[1]), unix.Major(id.Dev), unix.Minor(id.Dev))
}

// change says how now differs from the recorded old identity of the same
// store directory, or "" if it is the same file system as far as can be
// told without false alarms after a reboot:
//   - a different file-system type is another file system;
//   - a different fsid is, only on file systems whose fsid comes from
//     their UUID (ext2/3/4, btrfs, zfs, bcachefs); xfs's and f2fs's come
//     from the device number, and NFS, FUSE and others report none, and
//     device numbers change across reboots (device-mapper minors, disk
//     order, anonymous devices), so they prove nothing;
//   - a store dir recorded as a mount point that is none now, on another
//     device. (One on the same device is a bind mount of the same file
//     system, such as the one a collection makes in its private mount
//     namespace; a bind mount that is gone leaves the store dir empty or
//     half missing, which CheckPresence's other rules catch.)
func (old FSIdentity) change(now FSIdentity) string {
	if old.StoreDir != now.StoreDir {
		return "" // a record of another directory: nothing to compare
	}
	switch {
	case old.MountPoint && !now.MountPoint && old.Dev != now.Dev:
		return fmt.Sprintf("it was a mount point of %s, and nothing is mounted on it now", old.describe())
	case old.Type != now.Type,
		stableFsid[old.Type] && old.Fsid != [2]int32{} && now.Fsid != [2]int32{} && old.Fsid != now.Fsid:
		return fmt.Sprintf("it was on %s, and it is on another file system now", old.describe())
	}
	return ""
}

// stableFsid lists the f_types whose statfs fsid is derived from the file
// system's UUID, so it survives reboots and device renumbering.
var stableFsid = map[int64]bool{
	0xef53:     true, // ext2/3/4
	0x9123683e: true, // btrfs
	0x2fc12fc1: true, // zfs
	0xca451a4e: true, // bcachefs
}

const fsIdentityMagic = "storekeeper store-fs 1"

// maxFSIdentitySize bounds what LoadFSIdentity reads.
const maxFSIdentitySize = 64 << 10

func (id FSIdentity) marshal() []byte {
	var b bytes.Buffer
	fmt.Fprintln(&b, fsIdentityMagic)
	fmt.Fprintf(&b, "store-dir %s\n", strconv.Quote(id.StoreDir))
	fmt.Fprintf(&b, "type %d\n", id.Type)
	fmt.Fprintf(&b, "fsid %d %d\n", id.Fsid[0], id.Fsid[1])
	fmt.Fprintf(&b, "dev %d\n", id.Dev)
	fmt.Fprintf(&b, "mount-point %t\n", id.MountPoint)
	fmt.Fprintf(&b, "fs-type %s\n", strconv.Quote(id.FSType))
	fmt.Fprintf(&b, "source %s\n", strconv.Quote(id.Source))
	fmt.Fprintf(&b, "mounted-on %s\n", strconv.Quote(id.MountedOn))
	return b.Bytes()
}

var errBadFSIdentity = errors.New("store: damaged store-fs record")

func unmarshalFSIdentity(data []byte) (FSIdentity, error) {
	var id FSIdentity
	lines := strings.Split(strings.TrimSuffix(string(data), "\n"), "\n")
	if len(lines) == 0 || lines[0] != fsIdentityMagic {
		return id, fmt.Errorf("%w: unknown format", errBadFSIdentity)
	}
	seen := map[string]bool{}
	for _, l := range lines[1:] {
		k, v, _ := strings.Cut(l, " ")
		var err error
		switch k {
		case "store-dir":
			id.StoreDir, err = strconv.Unquote(v)
		case "type":
			id.Type, err = strconv.ParseInt(v, 10, 64)
		case "fsid":
			a, b, _ := strings.Cut(v, " ")
			var x, y int64
			if x, err = strconv.ParseInt(a, 10, 32); err == nil {
				y, err = strconv.ParseInt(b, 10, 32)
			}
			id.Fsid = [2]int32{int32(x), int32(y)}
		case "dev":
			id.Dev, err = strconv.ParseUint(v, 10, 64)
		case "mount-point":
			id.MountPoint, err = strconv.ParseBool(v)
		case "fs-type":
			id.FSType, err = strconv.Unquote(v)
		case "source":
			id.Source, err = strconv.Unquote(v)
		case "mounted-on":
			id.MountedOn, err = strconv.Unquote(v)
		default:
			continue // a later version's field
		}
		if err != nil {
			return id, fmt.Errorf("%w: %s: %w", errBadFSIdentity, k, err)
		}
		seen[k] = true
	}
	for _, k := range []string{"store-dir", "type", "fsid", "dev", "mount-point"} {
		if !seen[k] {
			return id, fmt.Errorf("%w: no %s", errBadFSIdentity, k)
		}
	}
	return id, nil
}

// LoadFSIdentity reads the identity recorded in dir. ok is false (and err
// nil) when there is none; a damaged record is an error (CheckPresence
// then compares nothing, and the next RecordFSIdentity replaces it). It
// never follows a symlink at the record and reads at most 64 KiB.
func LoadFSIdentity(dir string) (id FSIdentity, ok bool, err error) {
	fd, err := unix.Open(filepath.Join(dir, FSIdentityName), unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC|unix.O_NONBLOCK, 0)
	if errors.Is(err, unix.ENOENT) {
		return id, false, nil
	}
	if err != nil {
		return id, false, fmt.Errorf("store: reading %s: %w", filepath.Join(dir, FSIdentityName), err)
	}
	f := os.NewFile(uintptr(fd), filepath.Join(dir, FSIdentityName))
	defer f.Close()
	if fi, err := f.Stat(); err != nil || !fi.Mode().IsRegular() {
		return id, false, fmt.Errorf("%w: %s is not a regular file", errBadFSIdentity, f.Name())
	}
	data, err := io.ReadAll(io.LimitReader(f, maxFSIdentitySize+1))
	if err != nil {
		return id, false, fmt.Errorf("store: reading %s: %w", f.Name(), err)
	}
	if len(data) > maxFSIdentitySize {
		return id, false, fmt.Errorf("%w: %s is larger than %d bytes", errBadFSIdentity, f.Name(), maxFSIdentitySize)
	}
	id, err = unmarshalFSIdentity(data)
	if err != nil {
		return id, false, fmt.Errorf("%s: %w", f.Name(), err)
	}
	return id, true, nil
}

// RecordFSIdentity records the file system the store directory is on now
// in dir (creating dir, but not its parents), for CheckPresence to compare
// with later. Callers record only a store that passed CheckPresence (or
// whose check the admin overrode), so the record is of a store seen whole.
//
// The record is replaced atomically (a temporary file, fsync, rename):
// a reader sees the old record or the new one, under concurrent writers
// and after a crash at any instant. It refuses a dir that is a symlink,
// that is writable by group or others, or that another user owns: a file
// is never created where another user could redirect it.
func RecordFSIdentity(lay Layout, dir string) error {
	id, err := CurrentFSIdentity(lay.RealStoreDir)
	if err != nil {
		return err
	}
	return SaveFSIdentity(dir, id)
}

// SaveFSIdentity writes id as the record in dir (see RecordFSIdentity).
func SaveFSIdentity(dir string, id FSIdentity) error {
	if err := os.Mkdir(dir, 0o755); err != nil && !errors.Is(err, os.ErrExist) {
		return fmt.Errorf("store: creating %s: %w", dir, err)
	}
	dfd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("store: opening %s: %w", dir, err)
	}
	defer unix.Close(dfd)
	var st unix.Stat_t
	if err := unix.Fstat(dfd, &st); err != nil {
		return fmt.Errorf("store: %s: %w", dir, err)
	}
	if euid := uint32(os.Geteuid()); st.Mode&0o022 != 0 || st.Uid != euid {
		return fmt.Errorf("store: not recording in %s: it is owned by uid %d with mode %04o (it must be owned by uid %d and writable by its owner only)",
			dir, st.Uid, st.Mode&0o7777, euid)
	}
	tmp := fmt.Sprintf(".%s.tmp-%d", FSIdentityName, os.Getpid())
	unix.Unlinkat(dfd, tmp, 0) // a leftover of a crashed run with this pid
	fd, err := unix.Openat(dfd, tmp, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o644)
	if err != nil {
		return fmt.Errorf("store: creating %s/%s: %w", dir, tmp, err)
	}
	f := os.NewFile(uintptr(fd), filepath.Join(dir, tmp))
	_, err = f.Write(id.marshal())
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = unix.Renameat(dfd, tmp, dfd, FSIdentityName)
	}
	if err != nil {
		unix.Unlinkat(dfd, tmp, 0)
		return fmt.Errorf("store: writing %s/%s: %w", dir, FSIdentityName, err)
	}
	unix.Fsync(dfd)
	return nil
}
