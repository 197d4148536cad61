package gc

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"storekeeper/graph"
	"storekeeper/lock"
	"storekeeper/store"
)

// logProgress records the messages a collection reports.
type logProgress struct {
	mu    sync.Mutex
	infos []string
}

func (*logProgress) Phase(string, int64, bool) {}
func (*logProgress) Add(int64)                 {}
func (l *logProgress) Info(msg string) {
	l.mu.Lock()
	l.infos = append(l.infos, msg)
	l.mu.Unlock()
}

func (l *logProgress) Warn(msg, _ string) { l.Info("warning: " + msg) }
func (*logProgress) Verbose(string)       {}

func (l *logProgress) messages() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]string(nil), l.infos...)
}

// serveForTest serves a gc socket in a temp dir for a collector with no
// graph loaded yet (roots are only recorded), and stops it at cleanup.
func serveForTest(t *testing.T) (*rootServer, *collector, *logProgress, string) {
	t.Helper()
	lp := &logProgress{}
	c := &collector{lay: store.Layout{StoreDir: "/nix/store"}, progress: lp, res: &Result{},
		tempHash: map[string]bool{}, pendingID: map[graph.PathID]bool{}, pendingHash: map[string]bool{}}
	c.cond = sync.NewCond(&c.mu)
	path := filepath.Join(t.TempDir(), "socket")
	s, err := startServer(c, path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.stop) // stop is idempotent
	return s, c, lp, path
}

func dialForTest(t *testing.T, path string) *net.UnixConn {
	t.Helper()
	conn, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// readAnswer reads what the server sends until it closes the connection
// or d passes; closed says the server closed it.
func readAnswer(conn *net.UnixConn, want int, d time.Duration) (got []byte, closed bool) {
	conn.SetReadDeadline(time.Now().Add(d))
	buf := make([]byte, 64)
	for len(got) < want {
		n, err := conn.Read(buf)
		got = append(got, buf[:n]...)
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				return got, false
			}
			return got, true // EOF or reset: closed
		}
	}
	return got, false
}

const testRoot = "/nix/store/0123456789abcdfghijklmnpqrsvwxyz-foo"

// TestServerAnswersValidRoots: a valid store path is registered (by hash
// part) and answered "1", again and again on the same connection.
func TestServerAnswersValidRoots(t *testing.T) {
	_, c, lp, path := serveForTest(t)
	conn := dialForTest(t, path)
	for i := 0; i < 3; i++ {
		if _, err := conn.Write([]byte(testRoot + "\n")); err != nil {
			t.Fatal(err)
		}
		if got, closed := readAnswer(conn, 1, 5*time.Second); string(got) != "1" || closed {
			t.Fatalf("answer %d: %q (closed %v), want \"1\"", i, got, closed)
		}
	}
	c.mu.Lock()
	ok := c.tempHash["0123456789abcdfghijklmnpqrsvwxyz"]
	c.mu.Unlock()
	if !ok {
		t.Fatal("the root was not registered")
	}
	if m := lp.messages(); len(m) != 0 {
		t.Fatalf("valid roots were logged: %q", m)
	}
}

// checkRejectLog: exactly one message, short, naming the gc socket, with
// no control character of the client's line in it.
func checkRejectLog(t *testing.T, lp *logProgress, want string) {
	t.Helper()
	var m []string
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		if m = lp.messages(); len(m) > 0 {
			break
		}
	}
	if len(m) != 1 {
		t.Fatalf("want one message about the bad client, got %d: %.300q", len(m), m)
	}
	msg := m[0]
	if len(msg) > 300 {
		t.Errorf("the message is %d bytes long: %.300q...", len(msg), msg)
	}
	if strings.ContainsAny(msg, "\x1b\n\r\x00") {
		t.Errorf("the message holds the client's control characters: %q", msg)
	}
	if !strings.Contains(msg, "gc socket") || !strings.Contains(msg, want) {
		t.Errorf("message %q does not say %q about the gc socket", msg, want)
	}
}

// TestServerClosesOnOverlongLine: a client sending 1 MiB without a
// newline has its connection closed once the bound is passed (not read to
// the end), gets no answer, and is logged in one short, escaped message.
func TestServerClosesOnOverlongLine(t *testing.T) {
	_, c, lp, path := serveForTest(t)
	conn := dialForTest(t, path)
	line := append([]byte("\x1b[31m/nix/store/"), bytes.Repeat([]byte("a"), 1<<20)...)
	go conn.Write(line) // fails once the server closes
	got, closed := readAnswer(conn, 1, 10*time.Second)
	if !closed || len(got) != 0 {
		t.Fatalf("after 1 MiB without a newline: answer %q, closed %v; want the connection closed without an answer", got, closed)
	}
	checkRejectLog(t, lp, "longer than")
	c.mu.Lock()
	n := len(c.tempHash)
	c.mu.Unlock()
	if n != 0 {
		t.Fatalf("%d roots registered", n)
	}
}

// TestServerClosesOnInvalidLine: a line that is not a store path closes
// the connection without an answer ("1" would tell the client its root is
// protected when nothing is), and is logged escaped.
func TestServerClosesOnInvalidLine(t *testing.T) {
	for _, line := range []string{"garbage\x1b[2J\n", "/etc/passwd\n", "/nix/store/not-a-hash\n", "\n"} {
		t.Run(strings.TrimSpace(line), func(t *testing.T) {
			_, c, lp, path := serveForTest(t)
			conn := dialForTest(t, path)
			if _, err := conn.Write([]byte(line)); err != nil {
				t.Fatal(err)
			}
			got, closed := readAnswer(conn, 1, 5*time.Second)
			if !closed || len(got) != 0 {
				t.Fatalf("answer %q, closed %v; want the connection closed without an answer", got, closed)
			}
			checkRejectLog(t, lp, "not a store path")
			c.mu.Lock()
			n := len(c.tempHash)
			c.mu.Unlock()
			if n != 0 {
				t.Fatalf("%d roots registered", n)
			}
		})
	}
}

// TestServerStopsDespiteSlowClient: a client that sent half a line and
// went quiet does not hold up the collector: stop returns at once.
func TestServerStopsDespiteSlowClient(t *testing.T) {
	s, _, _, path := serveForTest(t)
	conn := dialForTest(t, path)
	conn.Write([]byte(testRoot[:20]))
	time.Sleep(50 * time.Millisecond)
	done := make(chan struct{})
	go func() { s.stop(); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("stop is blocked by a slow client")
	}
	if _, err := conn.Read(make([]byte, 1)); !errors.Is(err, io.EOF) && err == nil {
		t.Fatal("the slow client's connection is still open")
	}
}

// TestServerBoundsConnections: past the limit a new connection is not
// served (no goroutine, no buffer) until another one closes; then it is.
func TestServerBoundsConnections(t *testing.T) {
	lp := &logProgress{}
	c := &collector{lay: store.Layout{StoreDir: "/nix/store"}, progress: lp, res: &Result{},
		tempHash: map[string]bool{}, pendingID: map[graph.PathID]bool{}, pendingHash: map[string]bool{}}
	c.cond = sync.NewCond(&c.mu)
	path := filepath.Join(t.TempDir(), "socket")
	s, err := startServerLimit(c, path, 2)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.stop)
	var conns []*net.UnixConn
	for i := 0; i < 3; i++ {
		conn := dialForTest(t, path)
		conns = append(conns, conn)
		if _, err := conn.Write([]byte(testRoot + "\n")); err != nil {
			t.Fatal(err)
		}
	}
	for i := 0; i < 2; i++ {
		if got, _ := readAnswer(conns[i], 1, 5*time.Second); string(got) != "1" {
			t.Fatalf("connection %d (within the limit): answer %q", i, got)
		}
	}
	if got, closed := readAnswer(conns[2], 1, 300*time.Millisecond); len(got) != 0 || closed {
		t.Fatalf("the connection past the limit was served: %q, closed %v", got, closed)
	}
	conns[0].Close()
	if got, _ := readAnswer(conns[2], 1, 5*time.Second); string(got) != "1" {
		t.Fatalf("after a slot freed: answer %q", got)
	}
}

// TestServerBoundsRejectLogs: a client reconnecting in a loop with bad
// lines is logged maxRejectLogs times, then counted once at stop.
func TestServerBoundsRejectLogs(t *testing.T) {
	s, _, lp, path := serveForTest(t)
	for i := 0; i < maxRejectLogs+5; i++ {
		conn := dialForTest(t, path)
		conn.Write([]byte("bad\n"))
		if _, closed := readAnswer(conn, 1, 5*time.Second); !closed {
			t.Fatal("not closed")
		}
	}
	s.stop()
	m := lp.messages()
	if len(m) != maxRejectLogs+1 || !strings.Contains(m[len(m)-1], "5 more") {
		t.Fatalf("%d messages: %q", len(m), m)
	}
}

// TestServerLeavesSocketRefusing: once stopped (gc.lock may still be
// held), the socket file is left in place and refuses connections, as
// Nix's does: a Nix client retries on ECONNREFUSED but fails on ENOENT.
func TestServerLeavesSocketRefusing(t *testing.T) {
	s, _, _, path := serveForTest(t)
	s.stop()
	_, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: path, Net: "unix"})
	if !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("connecting to a stopped server: %v, want ECONNREFUSED", err)
	}
	// The next collection's server replaces the stale file.
	s2, err := startServer(s.c, path)
	if err != nil {
		t.Fatal(err)
	}
	defer s2.stop()
	dialForTest(t, path)
}

// TestServerLongStateDir: a state dir whose gc-socket path does not fit
// in sockaddr_un (108 bytes) still gets its socket, and clients reach it.
func TestServerLongStateDir(t *testing.T) {
	lp := &logProgress{}
	c := &collector{lay: store.Layout{StoreDir: "/nix/store"}, progress: lp, res: &Result{},
		tempHash: map[string]bool{}, pendingID: map[graph.PathID]bool{}, pendingHash: map[string]bool{}}
	c.cond = sync.NewCond(&c.mu)
	dir := t.TempDir()
	for len(dir) < 200 {
		dir = filepath.Join(dir, strings.Repeat("s", 60))
	}
	path := filepath.Join(dir, "gc-socket", "socket")
	s, err := startServer(c, path)
	if err != nil {
		t.Fatalf("a %d-byte socket path: %v", len(path), err)
	}
	defer s.stop()
	conn, err := lock.DialUnix(context.Background(), path)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := conn.Write([]byte("/nix/store/" + strings.Repeat("a", 32) + "-x\n")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 1)
	conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := conn.Read(buf); err != nil || buf[0] != '1' {
		t.Fatalf("answer %q: %v", buf, err)
	}
}
