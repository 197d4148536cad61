package lock

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"

	"golang.org/x/sys/unix"
)

// TestUnixListeningBound: the kernel's socket table is read up to a
// bound; a table longer than that is an error, never a silent "nobody
// listens" (the socket asked about may be among the sockets not read).
func TestUnixListeningBound(t *testing.T) {
	dir := t.TempDir()
	var last unix.Stat_t
	var last0 string
	for i := 0; i < 5; i++ {
		p := filepath.Join(dir, "s"+strconv.Itoa(i))
		l, err := ListenUnix(p)
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		last0 = p
		if err := unix.Lstat(p, &last); err != nil {
			t.Fatal(err)
		}
	}
	ok, err := unixListening(&last, last0)
	if err != nil || !ok {
		t.Fatalf("listening socket: %v, %v", ok, err)
	}
	var none unix.Stat_t // a directory: no socket is bound to it
	if err := unix.Lstat(dir, &none); err != nil {
		t.Fatal(err)
	}
	if ok, err := unixListening(&none, dir); ok || err != nil {
		t.Fatalf("a file no socket is bound to: %v, %v", ok, err)
	}
	defer func(n int) { maxDiagMessages = n }(maxDiagMessages)
	maxDiagMessages = 2
	ok, err = unixListening(&none, dir)
	if ok || !errors.Is(err, errDiagTooMany) {
		t.Errorf("more sockets than the bound: %v, %v; want errDiagTooMany", ok, err)
	}
	// One seen within the bound is listening, whatever follows.
	if ok, err := unixListening(&last, last0); !ok && !errors.Is(err, errDiagTooMany) {
		t.Errorf("a listening socket, bound 2: %v, %v", ok, err)
	}
}

// TestStatusGCSocketOnBtrfsSubvolume: on btrfs, stat gives a file in a
// subvolume the subvolume's own device number, while the kernel's socket
// table gives the file system's (its superblock's): a collector serving
// its socket on /nix in a subvolume (Fedora's and openSUSE's layout) was
// reported as not listening. The superblock's device, from the file's
// mount, is matched too.
func TestStatusGCSocketOnBtrfsSubvolume(t *testing.T) {
	mnt := btrfsSubvolume(t)
	state, store := filepath.Join(mnt, "var"), filepath.Join(mnt, "store")
	if err := os.MkdirAll(store, 0o755); err != nil {
		t.Fatal(err)
	}
	l := listenGCSocket(t, state)
	defer l.Close()
	r, err := Status(state, store, StatusOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if !r.GCSocketExists || !r.GCSocketAccepts {
		t.Errorf("a listening gc socket in a btrfs subvolume: exists %v accepts %v (%s)", r.GCSocketExists, r.GCSocketAccepts, r.GCSocketError)
	}
	l.Close()
	if r, err := Status(state, store, StatusOptions{}); err != nil || r.GCSocketAccepts {
		t.Errorf("after the listener closed: accepts %v, %v", r.GCSocketAccepts, err)
	}
}

// btrfsSubvolume mounts a fresh btrfs file system (a loop file) until the
// test ends and returns a subvolume of it, or skips the test.
func btrfsSubvolume(t *testing.T) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root (mount)")
	}
	if _, err := exec.LookPath("mkfs.btrfs"); err != nil {
		t.Skip("no mkfs.btrfs (btrfs-progs)")
	}
	dir := t.TempDir()
	img, mnt := filepath.Join(dir, "img"), filepath.Join(dir, "mnt")
	if err := os.Mkdir(mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, c := range [][]string{{"truncate", "-s", "120M", img}, {"mkfs.btrfs", "-q", img}, {"mount", "-o", "loop", img, mnt}} {
		if out, err := exec.Command(c[0], c[1:]...).CombinedOutput(); err != nil {
			t.Skipf("%v: %v\n%s", c, err, out)
		}
	}
	t.Cleanup(func() { exec.Command("umount", "-l", mnt).Run() })
	sub := filepath.Join(mnt, "nix")
	if out, err := exec.Command("btrfs", "subvolume", "create", sub).CombinedOutput(); err != nil {
		t.Fatalf("btrfs subvolume create: %v\n%s", err, out)
	}
	return sub
}

// TestStatusHoldersOnBtrfsSubvolume: /proc/locks names a locked file by
// its file system's (superblock's) device, which on btrfs is not the
// device stat gives a file in a subvolume: held gc.lock, big-lock,
// temp-roots files and path locks there were all shown free or stale.
// Prune names the holder of a held file too.
func TestStatusHoldersOnBtrfsSubvolume(t *testing.T) {
	sub := btrfsSubvolume(t)
	state, store := filepath.Join(sub, "var"), filepath.Join(sub, "store")
	for _, d := range []string{TempRootsDir(state), filepath.Join(state, "db"), store} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	gcLock := filepath.Join(state, "gc.lock")
	tr := filepath.Join(TempRootsDir(state), strconv.Itoa(os.Getpid()))
	pl := filepath.Join(store, lockHash+"-x.lock")
	for _, p := range []string{gcLock, tr, pl} {
		writeFile(t, p, "")
		holdFile(t, p, Exclusive)
	}
	r, err := Status(state, store, StatusOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if !r.GCRunning || len(r.GCLock.Holders) != 1 || r.GCLock.Holders[0].PID != os.Getpid() {
		t.Errorf("gc.lock held in a btrfs subvolume: running %v, %+v", r.GCRunning, r.GCLock)
	}
	for _, l := range [][]LockFileStatus{r.TempRoots, r.PathLocks} {
		if len(l) != 1 || l[0].Stale || len(l[0].Holders) != 1 {
			t.Errorf("a held file in a btrfs subvolume: %+v", l)
		}
	}
	pr, err := Prune(state, store, PruneOptions{ValidPath: noneValid, DryRun: true})
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range pr.Files {
		if f.Action != PruneKept || f.Reason != PruneHeld || len(f.Holders) != 1 || f.Holders[0].PID != os.Getpid() {
			t.Errorf("prune of a held file in a btrfs subvolume: %+v", f)
		}
	}
}
