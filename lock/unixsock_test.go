package lock

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// TestUnixSocketLongPath: a socket whose path is longer than sockaddr_un
// allows is created at that path and reachable through it; a short path
// is used as it is.
func TestUnixSocketLongPath(t *testing.T) {
	for _, n := range []int{10, 200, 1000} {
		dir := t.TempDir()
		for len(dir) < n {
			dir = filepath.Join(dir, strings.Repeat("d", 100))
		}
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		path := filepath.Join(dir, "gc-socket", "socket")
		os.MkdirAll(filepath.Dir(path), 0o755)
		ln, err := ListenUnix(path)
		if err != nil {
			t.Fatalf("%d-byte path: %v", len(path), err)
		}
		if fi, err := os.Lstat(path); err != nil || fi.Mode()&os.ModeSocket == 0 {
			t.Fatalf("%d-byte path: no socket at the path: %v", len(path), err)
		}
		go func() {
			if c, err := ln.Accept(); err == nil {
				c.Write([]byte("1"))
				c.Close()
			}
		}()
		c, err := DialUnix(context.Background(), path)
		if err != nil {
			t.Fatalf("%d-byte path: dial: %v", len(path), err)
		}
		buf := make([]byte, 1)
		if _, err := c.Read(buf); err != nil || buf[0] != '1' {
			t.Fatalf("%d-byte path: read %q %v", len(path), buf, err)
		}
		c.Close()
		ln.Close()
		// Closed, the file stays and refuses, as Nix's does.
		if _, err := DialUnix(context.Background(), path); !errors.Is(err, syscall.ECONNREFUSED) {
			t.Fatalf("%d-byte path: dial after close: %v, want ECONNREFUSED", len(path), err)
		}
	}
}
