package lock

import (
	"errors"
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
	for i := 0; i < 5; i++ {
		p := filepath.Join(dir, "s"+strconv.Itoa(i))
		l, err := ListenUnix(p)
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		if err := unix.Lstat(p, &last); err != nil {
			t.Fatal(err)
		}
	}
	ok, err := unixListening(&last)
	if err != nil || !ok {
		t.Fatalf("listening socket: %v, %v", ok, err)
	}
	var none unix.Stat_t // a directory: no socket is bound to it
	if err := unix.Lstat(dir, &none); err != nil {
		t.Fatal(err)
	}
	if ok, err := unixListening(&none); ok || err != nil {
		t.Fatalf("a file no socket is bound to: %v, %v", ok, err)
	}
	defer func(n int) { maxDiagMessages = n }(maxDiagMessages)
	maxDiagMessages = 2
	ok, err = unixListening(&none)
	if ok || !errors.Is(err, errDiagTooMany) {
		t.Errorf("more sockets than the bound: %v, %v; want errDiagTooMany", ok, err)
	}
	// One seen within the bound is listening, whatever follows.
	if ok, err := unixListening(&last); !ok && !errors.Is(err, errDiagTooMany) {
		t.Errorf("a listening socket, bound 2: %v, %v", ok, err)
	}
}
