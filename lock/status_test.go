package lock

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// fakeProc writes a /proc with a locks file, /proc/stat's btime and, per
// pid, a cmdline and a stat giving a start time in ticks.
func fakeProc(t *testing.T, locks string, procs map[int]string) string {
	t.Helper()
	dir := t.TempDir()
	write := func(p, s string) {
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write(filepath.Join(dir, "locks"), locks)
	write(filepath.Join(dir, "stat"), "cpu 1 2 3\nbtime 1000000000\nprocesses 5\n")
	for pid, cmd := range procs {
		write(filepath.Join(dir, fmt.Sprint(pid), "cmdline"), strings.ReplaceAll(cmd, " ", "\x00")+"\x00")
		// comm with a space and a ')'; starttime (field 22) = 500 ticks.
		write(filepath.Join(dir, fmt.Sprint(pid), "stat"), fmt.Sprintf("%d (a b) c) S 1 1 1 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 500 0 0\n", pid))
	}
	return dir
}

func devIno(t *testing.T, p string) string {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Stat(p, &st); err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("%02x:%02x:%d", unix.Major(st.Dev), unix.Minor(st.Dev), st.Ino)
}

func touch(t *testing.T, p string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, nil, 0o600); err != nil {
		t.Fatal(err)
	}
}

// TestStatusFromFakeProc: holders, waiters, modes, command lines and start
// times come from the fake /proc by inode; unlocked temp-roots and path
// lock files are stale; a GC runs when gc.lock is held exclusively.
func TestStatusFromFakeProc(t *testing.T) {
	state, store := t.TempDir(), t.TempDir()
	gcLock := filepath.Join(state, "gc.lock")
	big := filepath.Join(state, "db", "big-lock")
	held := filepath.Join(state, "temproots", "42")
	staleTR := filepath.Join(state, "temproots", "43")
	heldPL := filepath.Join(store, "aaaa-x.lock")
	stalePL := filepath.Join(store, "bbbb-y.lock")
	for _, p := range []string{gcLock, big, held, staleTR, heldPL, stalePL, filepath.Join(store, "cccc-z"), filepath.Join(state, "temproots", ".hidden")} {
		touch(t, p)
	}
	locks := fmt.Sprintf(`1: FLOCK  ADVISORY  WRITE 10 %s 0 EOF
1: -> FLOCK  ADVISORY  READ 11 %s 0 EOF
2: FLOCK  ADVISORY  READ 20 %s 0 EOF
3: FLOCK  ADVISORY  READ 21 %s 0 EOF
4: FLOCK  ADVISORY  WRITE 42 %s 0 EOF
5: POSIX  ADVISORY  WRITE 50 %s 0 EOF
garbage line
`, devIno(t, gcLock), devIno(t, gcLock), devIno(t, big), devIno(t, big), devIno(t, held), devIno(t, heldPL))
	proc := fakeProc(t, locks, map[int]string{10: "nix-store --gc", 11: "nix-build x", 20: "nix-daemon", 42: "nix-store -r y", 50: "storekeeper copy"})
	r, err := Status(state, store, StatusOptions{ProcDir: proc})
	if err != nil {
		t.Fatal(err)
	}
	since := time.Unix(1000000000, 0).Add(5 * time.Second)
	if !r.GCRunning || len(r.GCLock.Holders) != 1 || r.GCLock.Holders[0] != (LockUser{PID: 10, Command: "nix-store --gc", Kind: "flock", Mode: "exclusive", Since: since}) {
		t.Errorf("gc.lock: running %v, %+v", r.GCRunning, r.GCLock)
	}
	if len(r.GCLock.Waiters) != 1 || r.GCLock.Waiters[0].PID != 11 || r.GCLock.Waiters[0].Mode != "shared" {
		t.Errorf("gc.lock waiters: %+v", r.GCLock.Waiters)
	}
	if len(r.BigLock.Holders) != 2 || r.BigLock.Holders[0].Command != "nix-daemon" || r.BigLock.Holders[1].Command != "" {
		t.Errorf("big-lock: %+v", r.BigLock)
	}
	if r.TempRootsTotal != 2 || r.TempRootsStale != 1 || len(r.TempRoots) != 2 ||
		r.TempRoots[0].Path != held || r.TempRoots[0].Stale || r.TempRoots[0].Holders[0].PID != 42 ||
		r.TempRoots[1].Path != staleTR || !r.TempRoots[1].Stale {
		t.Errorf("temp roots: %+v", r.TempRoots)
	}
	if r.PathLocksTotal != 2 || r.PathLocksStale != 1 || r.PathLocks[0].Path != heldPL ||
		r.PathLocks[0].Holders[0].Kind != "posix" || r.PathLocks[1].Path != stalePL || !r.PathLocks[1].Stale {
		t.Errorf("path locks: %+v", r.PathLocks)
	}
	if r.GCSocketExists || r.GCSocketAccepts {
		t.Errorf("gc socket: %+v", r)
	}
}

// TestStatusCapsTheListing: many stale path locks are listed up to the
// cap, held ones first, and the rest counted.
func TestStatusCapsTheListing(t *testing.T) {
	state, store := t.TempDir(), t.TempDir()
	for i := 0; i < 30; i++ {
		touch(t, filepath.Join(store, fmt.Sprintf("p%02d.lock", i)))
	}
	heldPL := filepath.Join(store, "p29.lock")
	proc := fakeProc(t, "1: FLOCK  ADVISORY  WRITE 7 "+devIno(t, heldPL)+" 0 EOF\n", nil)
	r, err := Status(state, store, StatusOptions{ProcDir: proc, MaxFiles: 10})
	if err != nil {
		t.Fatal(err)
	}
	if len(r.PathLocks) != 10 || r.PathLocksMore != 20 || r.PathLocksTotal != 30 || r.PathLocksStale != 29 || r.PathLocks[0].Path != heldPL {
		t.Errorf("got %d listed, %d more, %d total, %d stale, first %s", len(r.PathLocks), r.PathLocksMore, r.PathLocksTotal, r.PathLocksStale, r.PathLocks[0].Path)
	}
	if r.GCLock.Exists || r.BigLock.Exists || r.TempRootsTotal != 0 {
		t.Errorf("missing files reported: %+v %+v", r.GCLock, r.BigLock)
	}
}

// listenGCSocket listens on state's gc socket, creating its directory.
func listenGCSocket(t *testing.T, state string) *net.UnixListener {
	t.Helper()
	if err := os.MkdirAll(filepath.Join(state, "gc-socket"), 0o755); err != nil {
		t.Fatal(err)
	}
	l, err := ListenUnix(GCSocketPath(state))
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// TestStatusRealLocksAndSocket: with the real /proc, a lock this process
// holds is seen with its pid, the file is not stale, and a listening gc
// socket accepts.
func TestStatusRealLocksAndSocket(t *testing.T) {
	state, store := t.TempDir(), t.TempDir()
	tr := filepath.Join(state, "temproots", "1")
	touch(t, tr)
	f, err := os.Open(tr)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX); err != nil {
		t.Fatal(err)
	}
	l := listenGCSocket(t, state)
	defer l.Close()
	r, err := Status(state, store, StatusOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(r.TempRoots) != 1 || r.TempRoots[0].Stale || len(r.TempRoots[0].Holders) != 1 || r.TempRoots[0].Holders[0].PID != os.Getpid() || r.TempRoots[0].Holders[0].Since.IsZero() {
		t.Errorf("temp roots: %+v", r.TempRoots)
	}
	if !r.GCSocketExists || !r.GCSocketAccepts {
		t.Errorf("gc socket: exists %v accepts %v (%s)", r.GCSocketExists, r.GCSocketAccepts, r.GCSocketError)
	}
}

// TestStatusNeverConnectsToGCSocket: a listening gc socket is reported as
// served without a connection to it (a client that closes at once can
// crash Nix 2.8's collector); once nobody listens, a socket file left
// behind is reported as not served; another listening socket (another
// inode) is not taken for it.
func TestStatusNeverConnectsToGCSocket(t *testing.T) {
	state, store := t.TempDir(), t.TempDir()
	other, err := ListenUnix(filepath.Join(state, "other-socket"))
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	l := listenGCSocket(t, state)
	accepted := make(chan struct{}, 1)
	go func() {
		if c, err := l.Accept(); err == nil {
			c.Close()
			accepted <- struct{}{}
		}
	}()
	r, err := Status(state, store, StatusOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if !r.GCSocketExists || !r.GCSocketAccepts || r.GCSocketError != "" {
		t.Errorf("listening: exists %v accepts %v (%s)", r.GCSocketExists, r.GCSocketAccepts, r.GCSocketError)
	}
	select {
	case <-accepted:
		t.Error("Status connected to the gc socket")
	case <-time.After(200 * time.Millisecond):
	}
	l.Close() // the socket file stays (ListenUnix does not unlink it)
	r, err = Status(state, store, StatusOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if !r.GCSocketExists || r.GCSocketAccepts || !strings.Contains(r.GCSocketError, "no process listens") {
		t.Errorf("not listening: exists %v accepts %v (%s)", r.GCSocketExists, r.GCSocketAccepts, r.GCSocketError)
	}
}

// TestStatusSkipsStorePathsNamedLock: store paths named NAME.lock are
// common (a fetched Cargo.lock, a source tree named *.lock): a directory,
// or a file holding more than Nix's stale mark "d", is store contents, not
// a path lock, and is neither listed nor counted (let alone called stale,
// an invitation to delete it); an empty file and one holding "d" are.
func TestStatusSkipsStorePathsNamedLock(t *testing.T) {
	state, store := t.TempDir(), t.TempDir()
	cargo := filepath.Join(store, "0123456789abcdfghijklmnpqrsvwxyz-Cargo.lock")
	if err := os.WriteFile(cargo, []byte("# This file is automatically @generated by Cargo.\n"), 0o444); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(filepath.Join(store, "0123456789abcdfghijklmnpqrsvwxyz-src.lock"), 0o555); err != nil {
		t.Fatal(err)
	}
	empty := filepath.Join(store, "0123456789abcdfghijklmnpqrsvwxyz-a.lock")
	marked := filepath.Join(store, "0123456789abcdfghijklmnpqrsvwxyz-b.lock")
	if err := os.WriteFile(empty, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(marked, []byte("d"), 0o600); err != nil {
		t.Fatal(err)
	}
	r, err := Status(state, store, StatusOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, s := range r.PathLocks {
		got = append(got, s.Path)
	}
	if r.PathLocksTotal != 2 || r.PathLocksStale != 2 || strings.Join(got, " ") != empty+" "+marked {
		t.Errorf("path locks: total %d stale %d %v, want %s and %s", r.PathLocksTotal, r.PathLocksStale, got, empty, marked)
	}
}
