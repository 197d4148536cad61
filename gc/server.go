package gc

import (
	"bufio"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"storekeeper/store"
)

// rootServer serves <stateDir>/gc-socket/socket with Nix's protocol while
// the collector holds gc.lock exclusively: a client (a Nix process adding
// a temporary root) writes a store path and a newline, and is answered
// "1" once the path and everything it keeps alive are protected. If the
// path is being deleted at that moment, the answer waits until the
// deletion is finished, as Nix's collector does, so the client never
// races with the deletion.
type rootServer struct {
	c    *collector
	ln   *net.UnixListener
	path string
	wg   sync.WaitGroup

	mu    sync.Mutex
	conns map[net.Conn]bool
}

// startServer creates the socket (replacing a stale one left by a killed
// collector) with mode 0666, like Nix.
func startServer(c *collector, socketPath string) (*rootServer, error) {
	if err := os.MkdirAll(filepath.Dir(socketPath), 0o755); err != nil {
		return nil, err
	}
	if err := os.Remove(socketPath); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, err
	}
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: socketPath, Net: "unix"})
	if err != nil {
		return nil, err
	}
	ln.SetUnlinkOnClose(true)
	if err := os.Chmod(socketPath, 0o666); err != nil {
		ln.Close()
		return nil, err
	}
	s := &rootServer{c: c, ln: ln, path: socketPath, conns: map[net.Conn]bool{}}
	s.wg.Add(1)
	go s.accept()
	return s, nil
}

func (s *rootServer) accept() {
	defer s.wg.Done()
	for {
		conn, err := s.ln.Accept()
		if err != nil {
			return
		}
		s.mu.Lock()
		if s.conns == nil {
			s.mu.Unlock()
			conn.Close()
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
	}()
	r := bufio.NewReader(conn)
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			return
		}
		p := strings.TrimSuffix(line, "\n")
		if base, err := store.ParseStorePath(s.c.lay.StoreDir, p); err == nil {
			s.c.addTempRoot(base)
		} else {
			s.c.progress.Info("received garbage instead of a root from a client: " + err.Error())
		}
		if _, err := conn.Write([]byte("1")); err != nil {
			return
		}
	}
}

// stop closes the socket and every connection and waits for the handlers.
func (s *rootServer) stop() {
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
}
