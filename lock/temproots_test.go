package lock

import (
	"bufio"
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"sync"
	"testing"
	"time"
)

const (
	rootA = "/nix/store/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-a"
	rootB = "/nix/store/bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb-b"
)

func readFile(t *testing.T, p string) string {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestTempRootsWriteRead(t *testing.T) {
	dir := t.TempDir()
	ctx := context.Background()
	tr, err := OpenTempRoots(dir)
	if err != nil {
		t.Fatal(err)
	}
	want := filepath.Join(dir, "temproots", strconv.Itoa(os.Getpid()))
	if tr.Path() != want {
		t.Fatalf("path %s, want %s", tr.Path(), want)
	}
	for _, r := range []string{rootA, rootB, rootA} {
		if err := tr.Add(ctx, r); err != nil {
			t.Fatal(err)
		}
	}
	if got := readFile(t, want); got != rootA+"\x00"+rootB+"\x00" {
		t.Fatalf("file content %q", got)
	}
	for _, bad := range []string{"", "relative", "/nix/store/x\ny", "/a\x00b"} {
		if err := tr.Add(ctx, bad); err == nil {
			t.Errorf("Add(%q) accepted", bad)
		}
	}
	// The gc.lock shared lock is released after each Add.
	gl, err := AcquireGCLock(ctx, dir, Exclusive, false, nil)
	if err != nil {
		t.Fatalf("gc.lock still held after Add: %v", err)
	}
	gl.Release()

	for _, removeStale := range []bool{false, true} {
		scan, err := ReadTempRoots(dir, removeStale)
		if err != nil {
			t.Fatal(err)
		}
		wantFiles := []TempRootsFile{{PID: os.Getpid(), Path: want, Roots: []string{rootA, rootB}}}
		if !reflect.DeepEqual(scan.Files, wantFiles) || len(scan.Stale) != 0 || len(scan.Errors) != 0 {
			t.Fatalf("removeStale=%v: %+v", removeStale, scan)
		}
	}

	// A second handle, even through another spelling of the state dir,
	// shares the file; the file goes with the last Close.
	link := filepath.Join(t.TempDir(), "state")
	if err := os.Symlink(dir, link); err != nil {
		t.Fatal(err)
	}
	tr2, err := OpenTempRoots(link)
	if err != nil {
		t.Fatal(err)
	}
	if tr2.Path() != want {
		t.Fatal("second handle uses another file")
	}
	if err := tr.Close(); err != nil {
		t.Fatal(err)
	}
	if err := tr.Close(); err != nil {
		t.Fatal(err)
	}
	if err := tr.Add(ctx, rootA); !errors.Is(err, ErrClosed) {
		t.Fatalf("Add after Close: %v", err)
	}
	if _, err := os.Stat(want); err != nil {
		t.Fatal("file removed while a handle remains")
	}
	if err := tr2.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(want); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("file not removed by the last Close: %v", err)
	}
	scan, err := ReadTempRoots(dir, true)
	if err != nil || len(scan.Files)+len(scan.Stale)+len(scan.Errors) != 0 {
		t.Fatalf("after Close: %+v %v", scan, err)
	}
}

func TestReadTempRootsMissingDirAndHidden(t *testing.T) {
	dir := t.TempDir()
	scan, err := ReadTempRoots(dir, true)
	if err != nil || len(scan.Files)+len(scan.Stale)+len(scan.Errors) != 0 {
		t.Fatalf("missing dir: %+v %v", scan, err)
	}
	os.MkdirAll(filepath.Join(dir, "temproots"), 0o755)
	hidden := filepath.Join(dir, "temproots", ".keep")
	os.WriteFile(hidden, []byte("x"), 0o600)
	scan, err = ReadTempRoots(dir, true)
	if err != nil || len(scan.Files)+len(scan.Stale)+len(scan.Errors) != 0 {
		t.Fatalf("hidden file: %+v %v", scan, err)
	}
	if _, err := os.Stat(hidden); err != nil {
		t.Fatal("hidden file removed")
	}
}

func TestOpenTempRootsReplacesOwnStaleFile(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "temproots", strconv.Itoa(os.Getpid()))
	os.MkdirAll(filepath.Dir(p), 0o755)
	os.WriteFile(p, []byte(rootB+"\x00"), 0o600)
	tr, err := OpenTempRoots(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	if got := readFile(t, p); got != "" {
		t.Fatalf("old content survived: %q", got)
	}
}

// simulateCollector does what Nix's collector does to a temproots or lock
// file it finds unlocked: lock, unlink, write "d", close.
func simulateCollector(t *testing.T, p string) {
	f, err := os.OpenFile(p, os.O_RDWR, 0)
	if err != nil {
		t.Error(err)
		return
	}
	defer f.Close()
	if err := Lock(context.Background(), f, Exclusive, false); err != nil {
		t.Errorf("collector could not lock %s: %v", p, err)
		return
	}
	os.Remove(p)
	f.Write([]byte("d"))
}

func TestOpenTempRootsRetriesWhenCollectorDeletesFile(t *testing.T) {
	dir := t.TempDir()
	calls := 0
	testHookBeforeLock = func(p string) {
		calls++
		if calls == 1 {
			simulateCollector(t, p)
		}
	}
	defer func() { testHookBeforeLock = nil }()
	tr, err := OpenTempRoots(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	if calls != 2 {
		t.Fatalf("open/lock loop ran %d times, want 2", calls)
	}
	fi, err := os.Stat(tr.Path())
	if err != nil {
		t.Fatal(err)
	}
	if fi.Size() != 0 {
		t.Fatalf("not a fresh file: size %d", fi.Size())
	}
	if l, _ := IsLocked(tr.Path()); !l {
		t.Fatal("new temproots file not locked")
	}
	if err := tr.Add(context.Background(), rootA); err != nil {
		t.Fatal(err)
	}
	scan, _ := ReadTempRoots(dir, true)
	if len(scan.Files) != 1 || !reflect.DeepEqual(scan.Files[0].Roots, []string{rootA}) {
		t.Fatalf("%+v", scan)
	}
}

func TestTempRootsStaleAfterKill(t *testing.T) {
	dir := t.TempDir()
	h := startHelper(t, "temproots", dir, rootA, rootB)
	pid := h.cmd.Process.Pid
	p := filepath.Join(dir, "temproots", strconv.Itoa(pid))

	for _, removeStale := range []bool{false, true} {
		scan, err := ReadTempRoots(dir, removeStale)
		if err != nil {
			t.Fatal(err)
		}
		want := []TempRootsFile{{PID: pid, Path: p, Roots: []string{rootA, rootB}}}
		if !reflect.DeepEqual(scan.Files, want) || len(scan.Stale)+len(scan.Errors) != 0 {
			t.Fatalf("live child, removeStale=%v: %+v", removeStale, scan)
		}
	}

	h.kill()

	// Detection only: reported stale, left untouched and unlocked.
	scan, err := ReadTempRoots(dir, false)
	if err != nil {
		t.Fatal(err)
	}
	if len(scan.Files) != 0 || !reflect.DeepEqual(scan.Stale, []string{p}) || len(scan.Errors) != 0 {
		t.Fatalf("killed child, removeStale=false: %+v", scan)
	}
	if got := readFile(t, p); got != rootA+"\x00"+rootB+"\x00" {
		t.Fatalf("stale file modified: %q", got)
	}
	if l, _ := IsLocked(p); l {
		t.Fatal("detection left the stale file locked")
	}

	// Removal: unlinked, and "d" written for anyone who had it open.
	watcher, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer watcher.Close()
	before, _ := watcher.Stat()
	scan, err = ReadTempRoots(dir, true)
	if err != nil {
		t.Fatal(err)
	}
	if len(scan.Files) != 0 || !reflect.DeepEqual(scan.Stale, []string{p}) || len(scan.Errors) != 0 {
		t.Fatalf("killed child, removeStale=true: %+v", scan)
	}
	if _, err := os.Stat(p); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("stale file not removed: %v", err)
	}
	buf := make([]byte, 1)
	if _, err := watcher.ReadAt(buf, 0); err != nil || buf[0] != 'd' {
		t.Fatalf("no d marker: %q %v (size before %d)", buf, err, before.Size())
	}
}

func TestTempRootsChildExitsCleanly(t *testing.T) {
	dir := t.TempDir()
	h := startHelper(t, "temproots", dir, rootA)
	h.stop(t)
	scan, err := ReadTempRoots(dir, false)
	if err != nil || len(scan.Files)+len(scan.Stale)+len(scan.Errors) != 0 {
		t.Fatalf("after clean exit: %+v %v", scan, err)
	}
}

// fakeCollector holds gc.lock exclusively and serves the gc socket. reply
// decides, per received line, whether to answer "1" (true) or hang up.
type fakeCollector struct {
	gc       *FileLock
	ln       *net.UnixListener
	mu       sync.Mutex
	got      []string
	accepted int
}

func startFakeCollector(t *testing.T, dir string, reply func(line string) bool) *fakeCollector {
	t.Helper()
	gc, err := AcquireGCLock(context.Background(), dir, Exclusive, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	sp := GCSocketPath(dir)
	os.MkdirAll(filepath.Dir(sp), 0o755)
	os.Remove(sp)
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: sp, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	c := &fakeCollector{gc: gc, ln: ln}
	t.Cleanup(func() { ln.Close(); gc.Release() })
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			c.mu.Lock()
			c.accepted++
			c.mu.Unlock()
			go func() {
				defer conn.Close()
				r := bufio.NewReader(conn)
				for {
					line, err := r.ReadString('\n')
					if err != nil {
						return
					}
					line = line[:len(line)-1]
					c.mu.Lock()
					c.got = append(c.got, line)
					c.mu.Unlock()
					if !reply(line) {
						return
					}
					if _, err := conn.Write([]byte("1")); err != nil {
						return
					}
				}
			}()
		}
	}()
	return c
}

func (c *fakeCollector) lines() ([]string, int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]string(nil), c.got...), c.accepted
}

func TestAddTalksToRunningCollector(t *testing.T) {
	dir := t.TempDir()
	c := startFakeCollector(t, dir, func(string) bool { return true })
	tr, err := OpenTempRoots(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := tr.Add(ctx, rootA); err != nil {
		t.Fatal(err)
	}
	if err := tr.Add(ctx, rootB); err != nil {
		t.Fatal(err)
	}
	got, accepted := c.lines()
	if !reflect.DeepEqual(got, []string{rootA, rootB}) || accepted != 1 {
		t.Fatalf("collector got %q over %d connections", got, accepted)
	}
	if s := readFile(t, tr.Path()); s != rootA+"\x00"+rootB+"\x00" {
		t.Fatalf("file content %q", s)
	}
}

func TestAddRetriesWhenCollectorHangsUp(t *testing.T) {
	dir := t.TempDir()
	var c *fakeCollector
	c = startFakeCollector(t, dir, func(string) bool {
		// The collector exits without acknowledging.
		go func() { c.ln.Close(); c.gc.Release() }()
		return false
	})
	tr, err := OpenTempRoots(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := tr.Add(ctx, rootA); err != nil {
		t.Fatal(err)
	}
	if got, _ := c.lines(); !reflect.DeepEqual(got, []string{rootA}) {
		t.Fatalf("collector got %q", got)
	}
	if s := readFile(t, tr.Path()); s != rootA+"\x00" {
		t.Fatalf("file content %q", s)
	}
}

func TestAddRetriesOnRefusedOrMissingSocket(t *testing.T) {
	for _, name := range []string{"refused", "missing"} {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			gc, err := AcquireGCLock(context.Background(), dir, Exclusive, false, nil)
			if err != nil {
				t.Fatal(err)
			}
			defer gc.Release()
			if name == "refused" {
				// A socket file left by an exited collector.
				sp := GCSocketPath(dir)
				os.MkdirAll(filepath.Dir(sp), 0o755)
				ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: sp, Net: "unix"})
				if err != nil {
					t.Fatal(err)
				}
				ln.SetUnlinkOnClose(false)
				ln.Close()
			}
			tr, err := OpenTempRoots(dir)
			if err != nil {
				t.Fatal(err)
			}
			defer tr.Close()

			// While gc.lock stays held, Add keeps retrying until ctx ends.
			ctx, cancel := context.WithTimeout(context.Background(), 150*time.Millisecond)
			err = tr.Add(ctx, rootA)
			cancel()
			if !errors.Is(err, context.DeadlineExceeded) {
				t.Fatalf("got %v, want DeadlineExceeded", err)
			}
			if s := readFile(t, tr.Path()); s != "" {
				t.Fatalf("root written although not registered: %q", s)
			}

			// Once the collector is gone, the retry takes gc.lock shared.
			time.AfterFunc(100*time.Millisecond, func() { gc.Release() })
			ctx, cancel = context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			if err := tr.Add(ctx, rootA); err != nil {
				t.Fatal(err)
			}
			if s := readFile(t, tr.Path()); s != rootA+"\x00" {
				t.Fatalf("file content %q", s)
			}
		})
	}
}

func TestAddCancelledWhileWaitingForAck(t *testing.T) {
	dir := t.TempDir()
	block := make(chan struct{})
	defer close(block)
	c := startFakeCollector(t, dir, func(string) bool { <-block; return false })
	tr, err := OpenTempRoots(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	start := time.Now()
	err = tr.Add(ctx, rootA)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("got %v, want DeadlineExceeded", err)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Fatalf("cancellation took %v", d)
	}
	if got, _ := c.lines(); !reflect.DeepEqual(got, []string{rootA}) {
		t.Fatalf("collector got %q", got)
	}
	if s := readFile(t, tr.Path()); s != "" {
		t.Fatalf("root written without acknowledgement: %q", s)
	}
}

// TestAddAll: without a collector the batch is written at once (and
// gc.lock released after); with one running, every new root goes through
// its socket; roots already registered are not sent again.
func TestAddAll(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	rootC := "/nix/store/cccccccccccccccccccccccccccccccc-c"

	dir := t.TempDir()
	tr, err := OpenTempRoots(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	if err := tr.AddAll(ctx, []string{rootA, rootB, rootA}); err != nil {
		t.Fatal(err)
	}
	if err := tr.AddAll(ctx, []string{rootB}); err != nil {
		t.Fatal(err)
	}
	if got := readFile(t, tr.Path()); got != rootA+"\x00"+rootB+"\x00" {
		t.Fatalf("file content %q", got)
	}
	if err := tr.AddAll(ctx, []string{rootC, "relative"}); err == nil {
		t.Error("AddAll accepted a relative path")
	}
	gl, err := AcquireGCLock(ctx, dir, Exclusive, false, nil)
	if err != nil {
		t.Fatalf("gc.lock still held after AddAll: %v", err)
	}
	gl.Release()

	dir2 := t.TempDir()
	c := startFakeCollector(t, dir2, func(string) bool { return true })
	tr2, err := OpenTempRoots(dir2)
	if err != nil {
		t.Fatal(err)
	}
	defer tr2.Close()
	if err := tr2.Add(ctx, rootA); err != nil {
		t.Fatal(err)
	}
	if err := tr2.AddAll(ctx, []string{rootA, rootB, rootC}); err != nil {
		t.Fatal(err)
	}
	got, _ := c.lines()
	if !reflect.DeepEqual(got, []string{rootA, rootB, rootC}) {
		t.Fatalf("collector got %q", got)
	}
	if s := readFile(t, tr2.Path()); s != rootA+"\x00"+rootB+"\x00"+rootC+"\x00" {
		t.Fatalf("file content %q", s)
	}
}
