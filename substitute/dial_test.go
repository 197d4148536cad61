package substitute

import (
	"context"
	"net"
	"strconv"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// fullListener listens on 127.0.0.1 with a backlog of 0 and fills its
// accept queue, so that the kernel drops the next SYNs until accept is
// called; it returns the address and a function that starts accepting.
func fullListener(t *testing.T) (string, func()) {
	t.Helper()
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	if err := unix.Bind(fd, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatal(err)
	}
	if err := unix.Listen(fd, 0); err != nil {
		t.Fatal(err)
	}
	sa, _ := unix.Getsockname(fd)
	addr := "127.0.0.1:" + strconv.Itoa(sa.(*unix.SockaddrInet4).Port)
	for i := 0; i < 2; i++ { // backlog 0 holds one; the second fills it
		c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond)
		if err == nil {
			t.Cleanup(func() { c.Close() })
		}
	}
	return addr, func() {
		go func() {
			for {
				nfd, _, err := unix.Accept(fd)
				if err != nil {
					return
				}
				unix.Close(nfd)
			}
		}()
	}
}

// TestStagedDialDroppedSYN: a SYN dropped by a server whose listen queue
// is full is sent again within the first attempt's timeout, not after
// the kernel's one-second retransmission.
func TestStagedDialDroppedSYN(t *testing.T) {
	addr, accept := fullListener(t)
	time.AfterFunc(50*time.Millisecond, accept)
	t0 := time.Now()
	c, err := stagedDial(&net.Dialer{})(context.Background(), "tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	if d := time.Since(t0); d > 900*time.Millisecond {
		t.Errorf("the dial took %v: the dropped SYN waited for the kernel's retransmission", d)
	}
}

// TestStagedDialBounds: a refused connection fails at once (no quick
// retries), and connect-timeout bounds the whole dial.
func TestStagedDialBounds(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	t0 := time.Now()
	if _, err := stagedDial(&net.Dialer{})(context.Background(), "tcp", addr); err == nil || time.Since(t0) > 100*time.Millisecond {
		t.Errorf("a refused dial: %v after %v", err, time.Since(t0))
	}
	// A listener that never accepts (the kernel may still complete a
	// handshake with a SYN cookie: then the dial succeeds at once).
	full, _ := fullListener(t)
	t0 = time.Now()
	c, err := stagedDial(&net.Dialer{Timeout: 400 * time.Millisecond})(context.Background(), "tcp", full)
	d := time.Since(t0)
	if err == nil {
		c.Close()
	}
	if d > 700*time.Millisecond || err != nil && d < 350*time.Millisecond {
		t.Errorf("connect-timeout 400ms: %v after %v", err, d)
	}
}
