package gc

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"

	"storekeeper/internal/sys"
	"storekeeper/lock"
	"storekeeper/nix/storepath"
)

const (
	// maxRootLine bounds a line a client may send, newline included. A
	// store path is the store dir, a slash and a name of at most 211 bytes
	// (hash, dash, name); 4096 (PATH_MAX) leaves room for any store dir.
	// Nix's own server reads a line of any length.
	maxRootLine = 4096
	// maxRootConns bounds the connections served at once: each costs a
	// goroutine and a maxRootLine buffer (about 12 KiB in all), so the
	// bound keeps them to a few MiB. Every Nix process that registers a
	// root while a collection runs (a nix-daemon worker, a build, a
	// nix-store --add) holds one connection until it exits or the
	// collection ends, so the bound is generous: a busy daemon has tens.
	// A connection past it waits, unanswered, in the kernel's listen
	// backlog (its client blocked in connect or in reading the answer)
	// until another one closes or the collection stops serving the socket;
	// the collection itself never waits for a client.
	maxRootConns = 1024
	// maxRejectLogs bounds the messages about bad clients per collection
	// (a client that reconnects in a loop would fill the log); stop
	// reports how many more there were.
	maxRejectLogs = 10
	// rejectShown is how much of a bad line a message quotes.
	rejectShown = 80
)

// rootServer serves <stateDir>/gc-socket/socket with Nix's protocol while
// the collector holds gc.lock exclusively: a client (a Nix process adding
// a temporary root) writes a store path and a newline, and is answered
// "1" once the path and everything it keeps alive are protected. If the
// path is being deleted at that moment, the answer waits until the
// deletion is finished, as Nix's collector does, so the client never
// races with the deletion.
//
// The socket is mode 0666, as Nix's: any local user may connect, so every
// input is bounded. A line longer than maxRootLine, or one that is not a
// store path of this store, closes the connection without an answer
// (Nix's server answers "1" to garbage, telling the client a root is
// protected when nothing is; a Nix client that finds the connection
// closed connects again and resends, and a client that is not Nix has no
// root to protect). Such a line is logged quoted, escaped and cut to
// rejectShown bytes, at most maxRejectLogs times. At most maxRootConns
// connections are served at once.
//
// Concurrency: stop closes the listener and every connection, so a slow
// or silent client (half a line sent, or answers not read) never holds up
// the collection; it returns once every handler has returned.
type rootServer struct {
	c    *collector
	ln   *net.UnixListener
	path string
	wg   sync.WaitGroup
	// slots holds a token per connection being served (maxRootConns).
	slots chan struct{}
	ctx   context.Context // done once stop is called
	stopC context.CancelFunc

	rejected atomic.Int64

	mu    sync.Mutex
	conns map[net.Conn]bool
}

// startServer creates the socket (replacing a stale one left by a killed
// collector) with mode 0666, like Nix.
func startServer(c *collector, socketPath string) (*rootServer, error) {
	return startServerLimit(c, socketPath, maxRootConns)
}

// startServerLimit is startServer serving at most limit connections.
func startServerLimit(c *collector, socketPath string, limit int) (*rootServer, error) {
	if err := os.MkdirAll(filepath.Dir(socketPath), 0o755); err != nil {
		return nil, err
	}
	if err := os.Remove(socketPath); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, err
	}
	// The socket file stays after the server stops, as Nix's does: the
	// server stops while gc.lock is still held exclusively, and a Nix
	// client that connects then must get ECONNREFUSED (on which it goes
	// back to waiting for the lock), not ENOENT (on which it fails). The
	// next collection replaces the file. A state dir too long for
	// sockaddr_un works (lock.ListenUnix), as it does for Nix.
	ln, err := lock.ListenUnix(socketPath)
	if err != nil {
		return nil, err
	}
	if err := os.Chmod(socketPath, 0o666); err != nil {
		ln.Close()
		return nil, err
	}
	s := &rootServer{c: c, ln: ln, path: socketPath, conns: map[net.Conn]bool{},
		slots: make(chan struct{}, limit)}
	s.ctx, s.stopC = context.WithCancel(context.Background())
	s.wg.Add(1)
	go s.accept()
	return s, nil
}

func (s *rootServer) accept() {
	defer s.wg.Done()
	var backoff sys.Backoff
	for {
		select {
		case s.slots <- struct{}{}:
		case <-s.ctx.Done():
			return
		}
		conn, err := s.ln.Accept()
		if err != nil {
			<-s.slots
			if errors.Is(err, net.ErrClosed) {
				return // stop
			}
			// EMFILE and the like: that client finds its connection
			// reset (it retries); pause so as not to spin, then go on.
			if backoff.Wait(s.ctx) != nil {
				return
			}
			continue
		}
		backoff = sys.Backoff{}
		s.mu.Lock()
		if s.conns == nil {
			s.mu.Unlock()
			conn.Close()
			<-s.slots
			return
		}
		s.conns[conn] = true
		s.mu.Unlock()
		s.wg.Add(1)
		go s.handle(conn)
	}
}

func (s *rootServer) handle(conn net.Conn) {
	defer s.wg.Done()
	defer func() {
		s.mu.Lock()
		delete(s.conns, conn)
		s.mu.Unlock()
		conn.Close()
		<-s.slots
	}()
	r := bufio.NewReaderSize(conn, maxRootLine)
	for {
		line, err := r.ReadSlice('\n')
		if errors.Is(err, bufio.ErrBufferFull) {
			s.reject(line, fmt.Sprintf("a line longer than %d bytes", maxRootLine))
			return
		}
		if err != nil {
			return // closed, by the client or by stop; a partial line is dropped
		}
		p := string(line[:len(line)-1])
		base, err := storepath.Parse(s.c.lay.StoreDir, p)
		if err != nil {
			s.reject(line, "a line that is not a store path in "+s.c.lay.StoreDir)
			return
		}
		s.c.addTempRoot(base)
		if _, err := conn.Write([]byte("1")); err != nil {
			return
		}
	}
}

// reject logs a bad line (at most maxRejectLogs per collection), short
// and escaped; the caller closes the connection.
func (s *rootServer) reject(line []byte, what string) {
	n := s.rejected.Add(1)
	if n > maxRejectLogs {
		return
	}
	shown, more := line, ""
	if len(shown) > rejectShown {
		shown, more = shown[:rejectShown], "..."
	}
	msg := fmt.Sprintf("gc socket: closed the connection of a client that sent %s: %q%s", what, shown, more)
	if n == maxRejectLogs {
		msg += " (further bad clients are counted, not logged)"
	}
	s.c.progress.Info(msg)
}

// stop closes the socket and every connection and waits for the handlers.
// It may be called more than once.
func (s *rootServer) stop() {
	first := s.ctx.Err() == nil
	s.stopC()
	s.ln.Close()
	s.mu.Lock()
	for c := range s.conns {
		c.Close()
	}
	s.conns = nil
	s.mu.Unlock()
	s.c.mu.Lock()
	s.c.cond.Broadcast()
	s.c.mu.Unlock()
	s.wg.Wait()
	if n := s.rejected.Load(); first && n > maxRejectLogs {
		s.c.progress.Info(fmt.Sprintf("gc socket: %d more clients sent bad lines and were disconnected", n-maxRejectLogs))
	}
}
