package lock

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"storekeeper/internal/procfs"
)

// HeldError is the error of a lock that another process held when it was
// wanted: a non-waiting attempt that found it busy (Err is ErrWouldBlock),
// or a wait for it that ended because its context was done (Err is the
// context's error). Path names the lock file, so that the caller can say
// who holds it (Holders) and what to do. errors.Is sees through it to
// ErrWouldBlock or context.Canceled.
type HeldError struct {
	Path string
	Err  error
}

func (e *HeldError) Error() string {
	if errors.Is(e.Err, ErrWouldBlock) {
		return e.Path + " is locked: " + e.Err.Error()
	}
	return "locking " + e.Path + " (held by another process): " + e.Err.Error()
}

func (e *HeldError) Unwrap() error { return e.Err }

// Holder is a process holding a lock on a file, as /proc/locks says.
type Holder struct {
	PID     int    // in this process's PID namespace; 0 when unknown (an OFD lock)
	Type    string // FLOCK, POSIX, OFDLCK
	Mode    string // READ (shared) or WRITE (exclusive)
	Command string // its command line, arguments separated by spaces ("" if unreadable)
}

// DescribeHolders names holders as messages do: "PID 12 'nix-store
// --serve' (shared flock lock), ...", a holder without a pid (in another
// PID namespace, or an OFD lock) as "a process in another PID namespace".
// quote makes a command line safe to print (report.Name: anyone's argv
// could otherwise forge a line of output); lock itself prints nothing.
func DescribeHolders(hs []Holder, quote func(string) string) string {
	who := make([]string, 0, len(hs))
	for _, h := range hs {
		s := "a process in another PID namespace"
		if h.PID > 0 {
			s = fmt.Sprintf("PID %d", h.PID)
		}
		if h.Command != "" {
			s += " '" + quote(h.Command) + "'"
		}
		mode := "shared"
		if h.Mode == "WRITE" {
			mode = "exclusive"
		}
		who = append(who, s+" ("+mode+" "+strings.ToLower(h.Type)+" lock)")
	}
	return strings.Join(who, ", ")
}

// Bounds of what Holders reads: /proc/locks lines and holders kept (a
// command line is bounded by procfs.CommandLine).
const (
	maxLocksLines = 1 << 20
	maxHolders    = 16
)

// Holders returns the processes holding a lock on the file at path (not
// those waiting for one), read from procDir/locks (procDir "" means
// /proc) by the file's device and inode. The answer is a snapshot: a
// holder may be gone when it is read. A missing /proc yields no holders
// and an error; a file that nobody locks yields none and no error. At most
// 16 holders are returned.
func Holders(procDir, path string) ([]Holder, error) {
	if procDir == "" {
		procDir = "/proc"
	}
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return nil, &os.PathError{Op: "stat", Path: path, Err: err}
	}
	f, err := os.Open(procDir + "/locks")
	if err != nil {
		return nil, err
	}
	defer f.Close()
	// /proc/locks names the file system's device, which differs from
	// stat's on btrfs subvolumes (sbDevs, as lock status matches them).
	k := sbDevs{}.key(path, &st, true)
	hs, err := parseLocks(io.LimitReader(f, 64<<20), k.major, k.minor, k.ino)
	for i := range hs {
		hs[i].Command = procfs.CommandLine(procDir, hs[i].PID)
	}
	return hs, err
}

// parseLocks reads /proc/locks lines ("1: FLOCK  ADVISORY  WRITE 1234
// 08:01:5678 0 EOF"; blocked waiters have "->" after the number) and
// returns the holders of locks on the inode dev major:minor, ino.
func parseLocks(r io.Reader, major, minor uint32, ino uint64) ([]Holder, error) {
	var out []Holder
	sc := bufio.NewScanner(r)
	for n := 0; sc.Scan() && n < maxLocksLines && len(out) < maxHolders; n++ {
		l, ok := parseLocksLine(sc.Text())
		if !ok || l.waiting || l.key != (inodeKey{major, minor, ino}) {
			continue
		}
		out = append(out, Holder{PID: l.pid, Type: l.typ, Mode: l.mode})
	}
	if err := sc.Err(); err != nil {
		return out, fmt.Errorf("reading /proc/locks: %w", err)
	}
	return out, nil
}

// locksLine is one line of /proc/locks.
type locksLine struct {
	key       inodeKey
	pid       int    // 0 when not a number (a holder in another pid namespace shows -1)
	typ, mode string // as written: FLOCK, POSIX, OFDLCK; READ, WRITE
	waiting   bool   // a blocked waiter ("->" after the number)
}

// parseLocksLine parses a /proc/locks line ("1: FLOCK  ADVISORY  WRITE
// 1234 08:01:5678 0 EOF", a waiter "1: -> FLOCK ..."); ok is false for a
// line of another shape.
func parseLocksLine(line string) (l locksLine, ok bool) {
	f := strings.Fields(line)
	if len(f) > 1 && f[1] == "->" {
		l.waiting = true
		f = append(f[:1], f[2:]...)
	}
	if len(f) < 6 {
		return l, false
	}
	parts := strings.Split(f[5], ":")
	if len(parts) != 3 {
		return l, false
	}
	a, err1 := strconv.ParseUint(parts[0], 16, 32)
	b, err2 := strconv.ParseUint(parts[1], 16, 32)
	c, err3 := strconv.ParseUint(parts[2], 10, 64)
	if err1 != nil || err2 != nil || err3 != nil {
		return l, false
	}
	l.key = inodeKey{uint32(a), uint32(b), c}
	if pid, err := strconv.Atoi(f[4]); err == nil && pid > 0 {
		l.pid = pid
	}
	l.typ, l.mode = f[1], f[3]
	return l, true
}
