package lock

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// fileState is what a test checks is left untouched: existence, content,
// mode, owner and mtime.
type fileState struct {
	exists   bool
	content  string
	mode     uint32
	uid, gid uint32
	mtime    unix.Timespec
}

func stateOf(t *testing.T, p string) fileState {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Lstat(p, &st); err != nil {
		if errors.Is(err, unix.ENOENT) {
			return fileState{}
		}
		t.Fatal(err)
	}
	s := fileState{exists: true, mode: st.Mode, uid: st.Uid, gid: st.Gid, mtime: st.Mtim}
	if st.Mode&unix.S_IFMT == unix.S_IFREG {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		s.content = string(b)
	}
	return s
}

// lockWithin runs LockPaths on paths in a goroutine and returns its
// result, or fails the test if it has not returned within limit (the
// goroutine is then left spinning: the process ends with the test run).
func lockWithin(t *testing.T, limit time.Duration, paths ...string) (*PathLocks, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), limit/2)
	defer cancel()
	type res struct {
		pl  *PathLocks
		err error
	}
	done := make(chan res, 1)
	go func() {
		pl, err := LockPaths(ctx, paths, true, nil)
		done <- res{pl, err}
	}()
	select {
	case r := <-done:
		return r.pl, r.err
	case <-time.After(limit):
		t.Fatalf("LockPaths(%q) still running after %v although its context ended after %v: it spins", paths, limit, limit/2)
	}
	return nil, nil
}

// TestLockPathsRefusesSymlink: a "<path>.lock" that is a symbolic link is
// never followed, whatever it points to: LockPaths fails at once with an
// error naming the lock file, and the target is neither created nor
// written.
func TestLockPathsRefusesSymlink(t *testing.T) {
	for _, c := range []struct {
		name    string
		prepare func(target string)
	}{
		{"missing", func(string) {}},
		{"empty", func(target string) { writeOld(t, target, "") }},
		{"non-empty", func(target string) { writeOld(t, target, "precious\n") }},
	} {
		t.Run(c.name, func(t *testing.T) {
			dir, elsewhere := t.TempDir(), t.TempDir()
			target := filepath.Join(elsewhere, "target")
			c.prepare(target)
			p := filepath.Join(dir, "profile")
			if err := os.Symlink(target, p+".lock"); err != nil {
				t.Fatal(err)
			}
			before := stateOf(t, target)
			pl, err := lockWithin(t, 4*time.Second, p)
			if err == nil {
				pl.Unlock(true)
				t.Fatal("LockPaths locked through a symbolic link")
			}
			if !errors.Is(err, ErrNotRegular) || !strings.Contains(err.Error(), p+".lock") || !strings.Contains(err.Error(), "symbolic link") {
				t.Errorf("error %q: want ErrNotRegular naming %s.lock as a symbolic link", err, p)
			}
			if after := stateOf(t, target); after != before {
				t.Errorf("the symlink's target changed: %+v, was %+v", after, before)
			}
			if fi, err := os.Lstat(p + ".lock"); err != nil || fi.Mode()&os.ModeSymlink == 0 {
				t.Errorf("the symlink itself was removed or replaced: %v", err)
			}
		})
	}
}

// writeOld writes content to p with mode 0644 and an mtime a day ago, so
// that any later write would show in the mtime.
func writeOld(t *testing.T, p, content string) {
	t.Helper()
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	old := time.Now().Add(-24 * time.Hour)
	if err := os.Chtimes(p, old, old); err != nil {
		t.Fatal(err)
	}
}

// TestLockPathsRefusesNonRegular: a FIFO, a directory or a socket where
// the lock file should be is refused at once (opening a FIFO must not
// block either), with an error naming it.
func TestLockPathsRefusesNonRegular(t *testing.T) {
	for _, c := range []struct {
		name string
		make func(p string) error
	}{
		{"fifo", func(p string) error { return unix.Mkfifo(p, 0o600) }},
		{"directory", func(p string) error { return os.Mkdir(p, 0o700) }},
		{"socket", func(p string) error {
			fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM, 0)
			if err != nil {
				return err
			}
			defer unix.Close(fd)
			return unix.Bind(fd, &unix.SockaddrUnix{Name: p})
		}},
	} {
		t.Run(c.name, func(t *testing.T) {
			p := filepath.Join(t.TempDir(), "x")
			if err := c.make(p + ".lock"); err != nil {
				t.Fatal(err)
			}
			pl, err := lockWithin(t, 4*time.Second, p)
			if err == nil {
				pl.Unlock(true)
				t.Fatalf("LockPaths locked a %s", c.name)
			}
			if !errors.Is(err, ErrNotRegular) || !strings.Contains(err.Error(), p+".lock") {
				t.Errorf("error %q: want ErrNotRegular naming %s.lock", err, p)
			}
			if _, err := os.Lstat(p + ".lock"); err != nil {
				t.Errorf("the %s was removed: %v", c.name, err)
			}
		})
	}
}

// TestLockPathsNonEmptyFile: a regular, non-empty "<path>.lock" that is
// still in place after we lock it was never marked stale by Nix's protocol
// (a holder unlinks its file before writing "d"): it is not a lock file.
// LockPaths reports that at once instead of retrying for ever, and leaves
// the file as it was.
func TestLockPathsNonEmptyFile(t *testing.T) {
	p := filepath.Join(t.TempDir(), "profile")
	writeOld(t, p+".lock", "not a lock file\n")
	before := stateOf(t, p+".lock")
	pl, err := lockWithin(t, 4*time.Second, p)
	if err == nil {
		pl.Unlock(true)
		t.Fatal("LockPaths accepted a non-empty lock file")
	}
	if !errors.Is(err, ErrNotLockFile) || !strings.Contains(err.Error(), p+".lock") {
		t.Errorf("error %q: want ErrNotLockFile naming %s.lock", err, p)
	}
	if after := stateOf(t, p+".lock"); after != before {
		t.Errorf("the file changed: %+v, was %+v", after, before)
	}
}

// TestLockPathsStaleForeverEndsOnCancel: when every lock file we open has
// been deleted by its previous holder by the time we lock it (the stale
// case, retried), cancelling the context ends the retries promptly, and
// the retries back off instead of spinning.
func TestLockPathsStaleForeverEndsOnCancel(t *testing.T) {
	a := filepath.Join(t.TempDir(), "a")
	var mu sync.Mutex
	calls := 0
	testHookBeforeLock = func(p string) {
		mu.Lock()
		calls++
		mu.Unlock()
		simulateCollector(t, p)
	}
	defer func() { testHookBeforeLock = nil }()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		pl, err := LockPaths(ctx, []string{a}, true, nil)
		if err == nil {
			pl.Unlock(false)
		}
		done <- err
	}()
	time.Sleep(500 * time.Millisecond)
	cancel()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("got %v, want context.Canceled", err)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("LockPaths did not return after its context was cancelled: the stale-lock retry loop ignores it")
	}
	mu.Lock()
	defer mu.Unlock()
	// 500ms of retries backing off from 2ms to 100ms: about a dozen.
	if calls > 50 {
		t.Errorf("%d attempts in 500ms: the retry loop does not back off", calls)
	}
}

// TestLockPathsStaleRetriesBounded: retries of stale lock files end even
// with an uncancellable context.
func TestLockPathsStaleRetriesBounded(t *testing.T) {
	a := filepath.Join(t.TempDir(), "a")
	testHookBeforeLock = func(p string) { simulateCollector(t, p) }
	defer func() { testHookBeforeLock = nil }()
	done := make(chan error, 1)
	go func() {
		pl, err := LockPaths(context.Background(), []string{a}, true, nil)
		if err == nil {
			pl.Unlock(false)
		}
		done <- err
	}()
	select {
	case err := <-done:
		if !errors.Is(err, ErrNotLockFile) || !strings.Contains(err.Error(), a+".lock") {
			t.Fatalf("got %v, want ErrNotLockFile naming %s.lock", err, a)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("LockPaths retried a lock file that is always stale for 30s")
	}
}

// TestUnlockDeletesOnlyOurFile: Unlock(true) unlinks the lock file only
// if the name still refers to the file we locked; a file put there since
// is neither unlinked nor written.
func TestUnlockDeletesOnlyOurFile(t *testing.T) {
	dir := t.TempDir()
	a := filepath.Join(dir, "a")
	pl, err := LockPaths(context.Background(), []string{a}, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(a+".lock", filepath.Join(dir, "ours")); err != nil {
		t.Fatal(err)
	}
	writeOld(t, a+".lock", "")
	before := stateOf(t, a+".lock")
	if err := pl.Unlock(true); err != nil {
		t.Fatal(err)
	}
	if after := stateOf(t, a+".lock"); after != before {
		t.Errorf("the file now at %s.lock was changed: %+v, was %+v", a, after, before)
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "ours")); string(b) != "d" {
		t.Errorf("our own lock file holds %q, want \"d\" (waiters on it must see it is stale)", b)
	}
}

// foreignDir makes a directory owned by uid:gid (not this process).
func foreignDir(t *testing.T, uid, gid int) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to give a directory to another user")
	}
	parent := t.TempDir()
	os.Chmod(parent, 0o755)
	dir := filepath.Join(parent, "user")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(dir, uid, gid); err != nil {
		t.Fatal(err)
	}
	return dir
}

// TestLockPathsForeignDir: as root, in a directory another user owns, the
// lock file is created as that user (never as root), and is not deleted
// on Unlock(true) (nothing is unlinked or written in that directory).
func TestLockPathsForeignDir(t *testing.T) {
	const uid, gid = 65534, 65533
	dir := foreignDir(t, uid, gid)
	p := filepath.Join(dir, "profile")
	pl, err := LockPaths(context.Background(), []string{p}, true, nil)
	if err != nil {
		t.Fatal(err)
	}
	var st unix.Stat_t
	if err := unix.Lstat(p+".lock", &st); err != nil {
		t.Fatal(err)
	}
	// The user's own group (from /etc/passwd when it names the uid), not
	// the directory's.
	if wantGid := primaryGid(uid, gid); st.Uid != uid || int(st.Gid) != wantGid || st.Mode&unix.S_IFMT != unix.S_IFREG || st.Mode&0o7777 != 0o600 {
		t.Errorf("lock file uid %d gid %d mode %o, want %d %d regular 0600", st.Uid, st.Gid, st.Mode, uid, wantGid)
	}
	if l, _ := IsLocked(p + ".lock"); !l {
		t.Error("not locked")
	}
	if err := pl.Unlock(true); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(p + ".lock")
	if err != nil || fi.Size() != 0 {
		t.Errorf("lock file in a foreign directory deleted or written on Unlock(true): %v", err)
	}
	// Again, reusing the file the user owns.
	pl, err = LockPaths(context.Background(), []string{p}, true, nil)
	if err != nil {
		t.Fatal(err)
	}
	pl.Unlock(true)
}

// TestLockPathsForeignDirSymlink: in another user's directory too, a
// symlinked lock file is refused and its target not created.
func TestLockPathsForeignDirSymlink(t *testing.T) {
	dir := foreignDir(t, 65534, 65534)
	target := filepath.Join(t.TempDir(), "pwned")
	p := filepath.Join(dir, "profile")
	if err := os.Symlink(target, p+".lock"); err != nil {
		t.Fatal(err)
	}
	if _, err := lockWithin(t, 4*time.Second, p); !errors.Is(err, ErrNotRegular) {
		t.Fatalf("got %v, want ErrNotRegular", err)
	}
	if _, err := os.Lstat(target); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("the symlink's target was created: %v", err)
	}
}

// TestLockPathsForeignDirLeavesThreadsAsRoot: acting as a directory's
// owner changes one OS thread's file-system ids only, and only for the
// open: afterwards every thread of the process creates files as root.
func TestLockPathsForeignDirLeavesThreadsAsRoot(t *testing.T) {
	dir := foreignDir(t, 65534, 65534)
	var wg sync.WaitGroup
	for i := 0; i < 20; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			pl, err := LockPaths(context.Background(), []string{filepath.Join(dir, fmt.Sprint(i))}, true, nil)
			if err != nil {
				t.Error(err)
				return
			}
			pl.Unlock(true)
		}(i)
	}
	wg.Wait()
	createsAsRoot(t)
}

// TestReadTempRootsRefusesSymlink: a symbolic link in the temproots
// directory is reported as an error and never followed: its unlocked
// target is neither unlinked nor marked with "d".
func TestReadTempRootsRefusesSymlink(t *testing.T) {
	dir := t.TempDir()
	target := filepath.Join(t.TempDir(), "victim")
	writeOld(t, target, "")
	if err := os.MkdirAll(TempRootsDir(dir), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(target, filepath.Join(TempRootsDir(dir), "12345")); err != nil {
		t.Fatal(err)
	}
	before := stateOf(t, target)
	scan, err := ReadTempRoots(dir, true)
	if err != nil {
		t.Fatal(err)
	}
	if len(scan.Errors) != 1 || !errors.Is(scan.Errors[0], ErrNotRegular) {
		t.Errorf("scan %+v: want one ErrNotRegular", scan)
	}
	if after := stateOf(t, target); after != before {
		t.Errorf("the symlink's target changed: %+v, was %+v", after, before)
	}
}

// TestOpenAsOwnerDiscardsThreadIfNotRestored: if the file-system ids
// cannot be switched back after the open, the thread that carries them is
// not returned to the runtime: it ends, and no thread of the process is
// left with another user's fsuid.
func TestOpenAsOwnerDiscardsThreadIfNotRestored(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	saved := ownerSwitch
	defer func() { ownerSwitch = saved }()
	ownerSwitch = func(uid, gid int) (func() bool, error) {
		if _, err := saved(uid, gid); err != nil {
			return nil, err
		}
		return func() bool { return false }, nil // "could not switch back"
	}
	dir := t.TempDir()
	_, _, err := openAsOwner(65534, 65534, func() (*os.File, unix.Stat_t, error) {
		return openRegularAt(unix.AT_FDCWD, filepath.Join(dir, "x"), "x", unix.O_RDWR|unix.O_CREAT, 0o600)
	})
	if err == nil {
		t.Fatal("openAsOwner reported success although the ids were not switched back")
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		bad := threadsWithFsuid(t)
		if len(bad) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("threads %v still run with a non-root fsuid", bad)
		}
		time.Sleep(20 * time.Millisecond)
	}
	var st unix.Stat_t
	if err := unix.Lstat(filepath.Join(dir, "x"), &st); err == nil && st.Uid != 65534 {
		t.Errorf("file created as uid %d inside the switch", st.Uid)
	}
	createsAsRoot(t)
}

// createsAsRoot creates files from many goroutines at once (so on many
// threads) and checks every one belongs to root.
func createsAsRoot(t *testing.T) {
	t.Helper()
	mine := t.TempDir()
	var wg sync.WaitGroup
	for i := 0; i < 200; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			p := filepath.Join(mine, fmt.Sprint(i))
			if err := os.WriteFile(p, nil, 0o600); err != nil {
				t.Error(err)
				return
			}
			var st unix.Stat_t
			if err := unix.Stat(p, &st); err != nil || st.Uid != 0 || st.Gid != 0 {
				t.Errorf("%s created as %d:%d, want 0:0 (%v)", p, st.Uid, st.Gid, err)
			}
		}(i)
	}
	wg.Wait()
}

// threadsWithFsuid lists the threads of this process whose fsuid is not
// 0, but for the main thread: the runtime cannot end that one, and wedges
// it for good instead (it never runs a goroutine again).
func threadsWithFsuid(t *testing.T) []string {
	t.Helper()
	tasks, err := os.ReadDir("/proc/self/task")
	if err != nil {
		t.Fatal(err)
	}
	var bad []string
	for _, e := range tasks {
		if e.Name() == fmt.Sprint(os.Getpid()) {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc/self/task", e.Name(), "status"))
		if err != nil {
			continue // ended meanwhile
		}
		for _, l := range strings.Split(string(b), "\n") {
			if f := strings.Fields(l); len(f) == 5 && f[0] == "Uid:" && f[4] != "0" {
				bad = append(bad, e.Name()+" fsuid "+f[4])
			}
		}
	}
	return bad
}

// TestLockPathsForeignDirRootLeftLock: in another user's directory, a
// lock file root left there (mode 0600, which the user cannot open) is
// locked read-only and left as it is; one that is a hard link (so not one
// root made there) is refused.
func TestLockPathsForeignDirRootLeftLock(t *testing.T) {
	dir := foreignDir(t, 65534, 65534)
	p := filepath.Join(dir, "profile")
	writeOld(t, p+".lock", "")
	os.Chmod(p+".lock", 0o600)
	before := stateOf(t, p+".lock")
	pl, err := LockPaths(context.Background(), []string{p}, true, nil)
	if err != nil {
		t.Fatal(err)
	}
	if l, _ := IsLocked(p + ".lock"); !l {
		t.Error("not locked")
	}
	pl.Unlock(true)
	if after := stateOf(t, p+".lock"); after != before {
		t.Errorf("root's lock file changed: %+v, was %+v", after, before)
	}
	q := filepath.Join(dir, "other")
	victim := filepath.Join(filepath.Dir(dir), "victim")
	writeOld(t, victim, "")
	os.Chmod(victim, 0o600)
	if err := os.Link(victim, q+".lock"); err != nil {
		t.Fatal(err)
	}
	if pl, err := LockPaths(context.Background(), []string{q}, true, nil); err == nil {
		pl.Unlock(true)
		t.Fatal("locked a hard link to a root file in a user's directory")
	} else if !errors.Is(err, unix.EACCES) || !strings.Contains(err.Error(), q+".lock") {
		t.Errorf("error %q: want permission denied naming %s.lock", err, q)
	}
}

// TestLockPathsAtPinsDirectory: LockPathsAt opens the lock file in the
// directory the caller opened, even after its path is renamed and
// replaced by a symlink to another directory.
func TestLockPathsAtPinsDirectory(t *testing.T) {
	parent := t.TempDir()
	dir, other := filepath.Join(parent, "d"), t.TempDir()
	os.Mkdir(dir, 0o755)
	f, err := os.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	os.Rename(dir, dir+"-moved")
	os.Symlink(other, dir)
	pl, err := LockPathsAt(context.Background(), f, dir, []string{"profile"}, true, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir+"-moved", "profile.lock")); err != nil {
		t.Errorf("lock file not in the opened directory: %v", err)
	}
	if _, err := os.Stat(filepath.Join(other, "profile.lock")); err == nil {
		t.Error("lock file created through the symlink")
	}
	if got := pl.LockFiles(); len(got) != 1 || got[0] != filepath.Join(dir, "profile.lock") {
		t.Errorf("LockFiles %q", got)
	}
	pl.Unlock(true)
	if _, err := os.Stat(filepath.Join(dir+"-moved", "profile.lock")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("lock file not deleted from our own directory: %v", err)
	}
	for _, bad := range []string{"", ".", "..", "a/b"} {
		if _, err := LockPathsAt(context.Background(), f, dir, []string{bad}, true, nil); err == nil {
			t.Errorf("LockPathsAt accepted the name %q", bad)
		}
	}
}

// TestIsLockedNeverBlocksOrFollows: IsLocked on a FIFO returns at once
// (opening one read-only would wait for a writer), and on a symlink to a
// locked file reports an error, not the target's lock.
func TestIsLockedNeverBlocksOrFollows(t *testing.T) {
	dir := t.TempDir()
	fifo := filepath.Join(dir, "fifo.lock")
	if err := unix.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	target := filepath.Join(dir, "target.lock")
	holdLock(t, target)
	link := filepath.Join(dir, "link.lock")
	os.Symlink(target, link)
	for _, p := range []string{fifo, link} {
		done := make(chan error, 1)
		go func() {
			held, err := IsLocked(p)
			if held {
				err = fmt.Errorf("reported held")
			}
			done <- err
		}()
		select {
		case err := <-done:
			if !errors.Is(err, ErrNotRegular) {
				t.Errorf("IsLocked(%s): %v, want ErrNotRegular", p, err)
			}
		case <-time.After(3 * time.Second):
			t.Fatalf("IsLocked(%s) blocks", p)
		}
	}
}

// TestAcquireGCLockRefusesSymlink: gc.lock and big-lock are lock files
// like any other: a symlink there is refused, its target not created.
func TestAcquireGCLockRefusesSymlink(t *testing.T) {
	dir := t.TempDir()
	target := filepath.Join(t.TempDir(), "pwned")
	os.Symlink(target, filepath.Join(dir, "gc.lock"))
	os.Symlink(target, filepath.Join(dir, "big-lock"))
	if l, err := AcquireGCLock(context.Background(), dir, Exclusive, false, nil); !errors.Is(err, ErrNotRegular) {
		l.Release()
		t.Errorf("AcquireGCLock: %v, want ErrNotRegular", err)
	}
	if l, err := AcquireBigLock(context.Background(), dir, Shared, false); !errors.Is(err, ErrNotRegular) {
		l.Release()
		t.Errorf("AcquireBigLock: %v, want ErrNotRegular", err)
	}
	if _, err := os.Lstat(target); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the symlink's target was created: %v", err)
	}
}

// TestReadTempRootsForeignDir: in a temproots directory another user
// owns, a stale file is reported but neither unlinked nor written, and a
// hard link to a root-only file (what a user could make where hard links
// are not protected) is an error, the file untouched.
func TestReadTempRootsForeignDir(t *testing.T) {
	state := foreignDir(t, 65534, 65534)
	dir := TempRootsDir(state)
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	os.Chown(dir, 65534, 65534)
	stale := filepath.Join(dir, "111")
	writeOld(t, stale, "/nix/store/00000000000000000000000000000000-x\x00")
	os.Chown(stale, 65534, 65534)
	victim := filepath.Join(t.TempDir(), "shadow")
	writeOld(t, victim, "secret\n")
	os.Chmod(victim, 0o600)
	if err := os.Link(victim, filepath.Join(dir, "222")); err != nil {
		t.Fatal(err)
	}
	beforeStale, beforeVictim := stateOf(t, stale), stateOf(t, victim)
	scan, err := ReadTempRoots(state, true)
	if err != nil {
		t.Fatal(err)
	}
	if len(scan.Stale) != 1 || scan.Stale[0] != stale || len(scan.Errors) != 1 || !strings.Contains(scan.Errors[0].Error(), "222") {
		t.Errorf("scan %+v: want %s stale and an error for 222", scan, stale)
	}
	if after := stateOf(t, stale); after != beforeStale {
		t.Errorf("stale file in a user's directory changed: %+v", after)
	}
	if after := stateOf(t, victim); after != beforeVictim {
		t.Errorf("hard-linked root file changed: %+v", after)
	}
}

// TestPrimaryGid: acting as a directory's owner uses the owner's own
// group from the user database, not the directory's (Nix's per-user
// profile directories are group root).
func TestPrimaryGid(t *testing.T) {
	if g := primaryGid(0, 4242); g != 0 {
		t.Errorf("root's primary group: %d, want 0", g)
	}
	if g := primaryGid(4000000000, 4242); g != 4242 {
		t.Errorf("a uid with no entry: %d, want the fallback 4242", g)
	}
	u, err := user.Lookup("nobody")
	if err != nil {
		t.Skip("no user nobody")
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	if g := primaryGid(uint32(uid), 0); g != gid {
		t.Errorf("nobody's primary group: %d, want %d", g, gid)
	}
}
