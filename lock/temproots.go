package lock

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"sort"
	"storekeeper/internal/sys"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// TempRootsDir returns <stateDir>/temproots.
func TempRootsDir(stateDir string) string { return filepath.Join(stateDir, "temproots") }

// GCSocketPath returns <stateDir>/gc-socket/socket, where a running
// garbage collector accepts new temporary roots.
func GCSocketPath(stateDir string) string { return filepath.Join(stateDir, "gc-socket", "socket") }

// TempRootsFile is the content of one live process's temproots file.
type TempRootsFile struct {
	PID   int // from the file name; 0 if the name is not a number
	Path  string
	Roots []string // full store paths, in file order (may repeat)
}

// TempRootsScan is the result of ReadTempRoots.
type TempRootsScan struct {
	// Files whose owner is alive (holds the lock), sorted by name.
	Files []TempRootsFile
	// Stale lists temproots files whose owner is dead (nobody held the
	// lock). Their contents are ignored, as Nix does.
	Stale []string
	// Errors are per-file problems that did not stop the scan (e.g. a file
	// that could not be opened or read). A garbage collector must treat a
	// non-empty Errors as "roots unknown" and not delete anything.
	Errors []error
}

// ReadTempRoots reads every file in <stateDir>/temproots (skipping names
// starting with '.'), as Nix's collector does. A missing directory gives an
// empty result; the error is only for failing to list the directory.
//
// For each file it tries a non-blocking exclusive lock. If that succeeds,
// nobody holds the file, so its owner is dead (crashed, killed by SIGKILL,
// or exited without cleaning up) and the file is reported in Stale:
//   - removeStale=true (the collector, needs write access): the file is
//     opened O_RDWR; it is unlinked and "d" is written into it (so a
//     process that opened it but has not locked it yet notices and creates
//     a fresh one), exactly like Nix; but only if the directory is ours
//     (owned by the effective uid, writable by nobody else): in one that
//     another user controls nothing is unlinked or written.
//   - removeStale=false (read-only reporting): the file is opened O_RDONLY,
//     the lock is released at once and nothing is modified.
//
// A symbolic link (never followed) or any other non-regular file in the
// directory is not a temproots file: it is reported in Errors (wrapping
// ErrNotRegular), and neither opened through nor removed. Files are
// opened relative to the directory as OpenLockFile does (as root in a
// directory another user owns, with that user's file-system ids).
//
// Otherwise the owner is alive and the whole file is read without a lock
// and split at NUL; a trailing entry without its NUL (an append in
// progress) is ignored. Files that vanish during the scan are skipped.
//
// Concurrency: the result is a snapshot. A collector must hold gc.lock
// exclusively while calling it (and serve the gc socket from before the
// call) so that roots added afterwards reach it through the socket. A live
// owner that is between creating and locking its file can be reported as
// stale; with removeStale=true the "d" marker makes it retry, so no root is
// lost.
func ReadTempRoots(stateDir string, removeStale bool) (TempRootsScan, error) {
	var scan TempRootsScan
	dir := TempRootsDir(stateDir)
	d, err := openLockDir(dir)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return scan, nil
		}
		return scan, fmt.Errorf("reading temporary roots directory: %w", err)
	}
	defer d.close()
	entries, err := os.ReadDir(dir)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return scan, nil
		}
		return scan, fmt.Errorf("reading temporary roots directory: %w", err)
	}
	sort.Slice(entries, func(i, j int) bool { return entries[i].Name() < entries[j].Name() })
	for _, e := range entries {
		name := e.Name()
		if strings.HasPrefix(name, ".") {
			continue
		}
		path := filepath.Join(dir, name)
		file, stale, err := readTempRootsFile(d, name, removeStale)
		switch {
		case err != nil:
			scan.Errors = append(scan.Errors, err)
		case stale:
			scan.Stale = append(scan.Stale, path)
		case file != nil:
			scan.Files = append(scan.Files, *file)
		}
	}
	return scan, nil
}

// readTempRootsFile handles the temproots file name in d. It returns
// (nil, false, nil) if the file disappeared. A stale file is removed
// only where lock files may be deleted (d is ours): in a directory
// another user controls it is reported stale and left alone.
func readTempRootsFile(d *lockDir, name string, removeStale bool) (*TempRootsFile, bool, error) {
	path := filepath.Join(d.path, name)
	removeStale = removeStale && d.ours()
	flag := unix.O_RDONLY
	if removeStale {
		flag = unix.O_RDWR
	}
	f, st, err := d.open(name, flag)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, false, nil
		}
		return nil, false, fmt.Errorf("opening temporary roots file: %w", err)
	}
	defer f.Close()

	err = tryLock(f, unix.LOCK_EX)
	if err == nil {
		// Nobody holds it: the owner is dead.
		if removeStale {
			if err := unlinkIfSame(d.fd, name, &st); err != nil {
				return nil, true, fmt.Errorf("removing stale temporary roots file %s: %w", path, err)
			}
			if _, err := f.Write([]byte("d")); err != nil {
				return nil, true, fmt.Errorf("marking stale temporary roots file %s: %w", path, err)
			}
			return nil, true, nil
		}
		return nil, true, Unlock(f)
	}
	if !errors.Is(err, ErrWouldBlock) {
		return nil, false, err
	}
	data, err := io.ReadAll(f)
	if err != nil {
		return nil, false, fmt.Errorf("reading temporary roots file %s: %w", path, err)
	}
	pid, _ := strconv.Atoi(filepath.Base(path))
	tf := &TempRootsFile{PID: pid, Path: path}
	for {
		i := bytes.IndexByte(data, 0)
		if i < 0 {
			break
		}
		tf.Roots = append(tf.Roots, string(data[:i]))
		data = data[i+1:]
	}
	return tf, false, nil
}

// TempRoots is this process's temporary-roots file,
// <stateDir>/temproots/<pid>, held exclusively locked until Close. Roots
// added to it protect store paths from any Nix-compatible garbage
// collector, running now or later, for as long as the process lives.
//
// All handles opened for the same state directory in one process share one
// file (there can be only one per pid); the file is removed when the last
// handle is closed. A TempRoots is safe for concurrent use.
type TempRoots struct {
	s      *tempRootsState
	once   sync.Once
	closed atomic.Bool
}

type tempRootsState struct {
	key      string
	stateDir string
	path     string

	mu     sync.Mutex
	refs   int
	f      *os.File // the temproots file, exclusively locked
	gc     *os.File // gc.lock, opened on first Add
	sock   net.Conn // connection to a running collector, if any
	roots  map[string]bool
	closed bool
}

var tempRootsRegistry = struct {
	sync.Mutex
	m map[string]*tempRootsState
}{m: map[string]*tempRootsState{}}

// ErrClosed is returned by methods of a closed TempRoots.
var ErrClosed = errors.New("lock: temporary roots file closed")

// OpenTempRoots creates and exclusively locks <stateDir>/temproots/<our
// pid> (creating the temproots directory if needed), following Nix: unlink
// any stale file with our pid, create and open it, take the exclusive lock
// (blocking: a collector only holds it for an instant), then fstat; if the
// file is no longer empty a collector found it unlocked, deleted it and
// wrote "d" into it, so start over (after 2ms growing to 100ms, at most
// 50 times; a non-empty file still in place, which no collector released,
// is an error wrapping ErrNotLockFile rather than a reason to retry).
// The file is opened as OpenLockFile does: never through a symbolic link.
//
// If this process already has the file open for stateDir, the existing
// file is shared and a new handle returned.
//
// Crashes: if the process dies, the kernel drops the lock and the next
// collector run removes the file as stale. Call Close to remove it
// earlier.
func OpenTempRoots(stateDir string) (*TempRoots, error) {
	dir := TempRootsDir(stateDir)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("creating temporary roots directory: %w", err)
	}
	// Identify the directory by device and inode, so that different
	// spellings of stateDir (symlinks, relative paths) share one file.
	var st unix.Stat_t
	if err := unix.Stat(dir, &st); err != nil {
		return nil, fmt.Errorf("stat %s: %w", dir, err)
	}
	key := fmt.Sprintf("%d:%d", st.Dev, st.Ino)
	tempRootsRegistry.Lock()
	defer tempRootsRegistry.Unlock()
	if s := tempRootsRegistry.m[key]; s != nil {
		s.mu.Lock()
		s.refs++
		s.mu.Unlock()
		return &TempRoots{s: s}, nil
	}

	path := filepath.Join(dir, strconv.Itoa(os.Getpid()))
	var f *os.File
	var b sys.Backoff
	for attempt := 1; ; attempt++ {
		// It must be stale: no two live processes share a pid.
		if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("removing stale temporary roots file: %w", err)
		}
		var err error
		if f, err = OpenLockFile(path, true); err != nil {
			return nil, err
		}
		if testHookBeforeLock != nil {
			testHookBeforeLock(path)
		}
		if err := Lock(context.Background(), f, Exclusive, true); err != nil {
			f.Close()
			return nil, err
		}
		var st unix.Stat_t
		if err := unix.Fstat(int(f.Fd()), &st); err != nil {
			f.Close()
			return nil, fmt.Errorf("stat %s: %w", path, err)
		}
		if st.Size == 0 {
			break
		}
		// A collector deleted it between our open and our lock (it
		// unlinks before it writes "d"), unless it is still in place.
		f.Close()
		if stillLinked(unix.AT_FDCWD, path, &st) {
			return nil, fmt.Errorf("temporary roots file %s holds %d bytes although no collector released it, %w", path, st.Size, ErrNotLockFile)
		}
		if attempt >= maxStaleRetries {
			return nil, fmt.Errorf("temporary roots file %s was deleted by a collector %d times in a row, %w", path, attempt, ErrNotLockFile)
		}
		b.Wait(context.Background())
	}
	s := &tempRootsState{key: key, stateDir: stateDir, path: path, refs: 1, f: f, roots: map[string]bool{}}
	tempRootsRegistry.m[key] = s
	return &TempRoots{s: s}, nil
}

// Path returns the temproots file's path.
func (t *TempRoots) Path() string { return t.s.path }

// Add registers storePath (a full store path such as
// /nix/store/<hash>-name) as a temporary root, following Nix's protocol:
//
//  1. Try to take gc.lock shared without waiting. If that works no
//     collector is running; append storePath+"\0" to our file while still
//     holding the shared lock (a collector that starts afterwards reads
//     it), then release the shared lock.
//  2. Otherwise a collector is running: connect to its socket (the
//     connection is kept for later calls), send storePath+"\n" and wait
//     for the reply "1", then append to our file for later collectors. If
//     the socket is missing or refuses connections, or the connection ends
//     (EOF, EPIPE, ECONNRESET), the collector may have exited or not yet
//     started serving: back off briefly and start again at 1.
//
// When Add returns nil, storePath is protected until Close or process
// exit. Paths already added are not written again. Calls are serialised.
//
// Cancellation: Add gives up when ctx is done, including while waiting for
// the collector's acknowledgement, and returns an error wrapping
// ctx.Err(); the path must then be treated as unprotected. Add retries for
// as long as ctx allows when a collector holds gc.lock but never serves the
// socket.
func (t *TempRoots) Add(ctx context.Context, storePath string) error {
	if storePath == "" || !strings.HasPrefix(storePath, "/") || strings.ContainsAny(storePath, "\x00\n") {
		return fmt.Errorf("lock: invalid store path %q for a temporary root", storePath)
	}
	if t.closed.Load() {
		return ErrClosed
	}
	s := t.s
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return ErrClosed
	}
	if s.roots[storePath] {
		return nil
	}
	if err := s.openGCLock(); err != nil {
		return err
	}
	var b sys.Backoff
	for {
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("adding temporary root %s: %w", storePath, err)
		}
		err := tryLock(s.gc, unix.LOCK_SH)
		if err == nil {
			// No collector: a connection to an earlier one is dead.
			s.closeSock()
			werr := s.appendRoot(storePath)
			uerr := Unlock(s.gc)
			if werr != nil {
				return werr
			}
			return uerr
		}
		if !errors.Is(err, ErrWouldBlock) {
			return err
		}
		retry, err := s.tellCollector(ctx, storePath)
		if err != nil {
			return fmt.Errorf("adding temporary root %s: %w", storePath, err)
		}
		if !retry {
			return s.appendRoot(storePath)
		}
		if err := b.Wait(ctx); err != nil {
			return fmt.Errorf("adding temporary root %s: %w", storePath, err)
		}
	}
}

// AddAll registers every path in paths as a temporary root, as Add does
// for each, but when no collector is running (the common case) with one
// lock and one write for the whole batch. When it returns nil, every path
// is a temporary root. On an error some of them may already be.
func (t *TempRoots) AddAll(ctx context.Context, paths []string) error {
	for _, p := range paths {
		if p == "" || !strings.HasPrefix(p, "/") || strings.ContainsAny(p, "\x00\n") {
			return fmt.Errorf("lock: invalid store path %q for a temporary root", p)
		}
	}
	if t.closed.Load() {
		return ErrClosed
	}
	if done, err := t.addAllUnlocked(paths); done || err != nil {
		return err
	}
	// A collector is running: every root goes through its socket.
	for _, p := range paths {
		if err := t.Add(ctx, p); err != nil {
			return err
		}
	}
	return nil
}

// addAllUnlocked is AddAll's fast path: with gc.lock taken shared (no
// collector can be running), append all new roots in one write. done is
// false when a collector holds the lock.
func (t *TempRoots) addAllUnlocked(paths []string) (done bool, err error) {
	s := t.s
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false, ErrClosed
	}
	var buf []byte
	var added []string
	seen := make(map[string]bool, len(paths))
	for _, p := range paths {
		if !s.roots[p] && !seen[p] {
			buf = append(buf, p...)
			buf = append(buf, 0)
			added = append(added, p)
			seen[p] = true
		}
	}
	if len(buf) == 0 {
		return true, nil
	}
	if err := s.openGCLock(); err != nil {
		return false, err
	}
	if err := tryLock(s.gc, unix.LOCK_SH); err != nil {
		if errors.Is(err, ErrWouldBlock) {
			return false, nil
		}
		return false, err
	}
	s.closeSock()
	_, werr := s.f.Write(buf)
	uerr := Unlock(s.gc)
	if werr != nil {
		return false, fmt.Errorf("writing temporary roots: %w", werr)
	}
	for _, p := range added {
		s.roots[p] = true
	}
	return true, uerr
}

// openGCLock opens gc.lock once (it is probed shared before each write
// of a root). Call with s.mu held.
func (s *tempRootsState) openGCLock() error {
	if s.gc != nil {
		return nil
	}
	f, err := OpenLockFile(filepath.Join(s.stateDir, "gc.lock"), true)
	if err != nil {
		return fmt.Errorf("opening global GC lock: %w", err)
	}
	s.gc = f
	return nil
}

func (s *tempRootsState) appendRoot(storePath string) error {
	// os.File.Write writes everything or fails. The file is only ever
	// appended to by us; the offset is at its end.
	if _, err := s.f.Write([]byte(storePath + "\x00")); err != nil {
		return fmt.Errorf("writing temporary root: %w", err)
	}
	s.roots[storePath] = true
	return nil
}

func (s *tempRootsState) closeSock() {
	if s.sock != nil {
		s.sock.Close()
		s.sock = nil
	}
}

// tellCollector sends storePath to the running collector. retry=true means
// the collector is gone or not ready and the caller should start over.
func (s *tempRootsState) tellCollector(ctx context.Context, storePath string) (retry bool, err error) {
	if s.sock == nil {
		c, err := DialUnix(ctx, GCSocketPath(s.stateDir))
		if err != nil {
			if ctx.Err() != nil {
				return false, ctx.Err()
			}
			if errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ENOENT) {
				return true, nil
			}
			return false, fmt.Errorf("connecting to the garbage collector: %w", err)
		}
		s.sock = c
	}
	c := s.sock
	stop := context.AfterFunc(ctx, func() { c.SetDeadline(time.Unix(1, 0)) })
	defer func() {
		if !stop() && s.sock == c {
			// The deadline may have been set: don't reuse this connection.
			s.closeSock()
		}
	}()
	gone := func(err error) bool {
		return errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
			errors.Is(err, syscall.EPIPE) || errors.Is(err, syscall.ECONNRESET)
	}
	if _, err := c.Write([]byte(storePath + "\n")); err != nil {
		s.closeSock()
		if ctx.Err() != nil {
			return false, ctx.Err()
		}
		if gone(err) {
			return true, nil
		}
		return false, fmt.Errorf("sending root to the garbage collector: %w", err)
	}
	var b [1]byte
	if _, err := io.ReadFull(c, b[:]); err != nil {
		s.closeSock()
		if ctx.Err() != nil {
			return false, ctx.Err()
		}
		if gone(err) {
			return true, nil
		}
		return false, fmt.Errorf("reading acknowledgement from the garbage collector: %w", err)
	}
	if b[0] != '1' {
		s.closeSock()
		return false, fmt.Errorf("garbage collector replied %q instead of \"1\"", b[0])
	}
	return false, nil
}

// Close releases this handle. When the last handle for the state directory
// is closed, the temproots file is unlinked while still locked and then
// closed (releasing the lock), and the gc.lock and socket descriptors are
// closed. Closing twice is a no-op; Add on a closed handle returns
// ErrClosed. After the last Close the roots added are no longer protected.
func (t *TempRoots) Close() error {
	var err error
	t.once.Do(func() {
		t.closed.Store(true)
		s := t.s
		tempRootsRegistry.Lock()
		defer tempRootsRegistry.Unlock()
		s.mu.Lock()
		defer s.mu.Unlock()
		s.refs--
		if s.refs > 0 {
			return
		}
		s.closed = true
		if tempRootsRegistry.m[s.key] == s {
			delete(tempRootsRegistry.m, s.key)
		}
		if rerr := os.Remove(s.path); rerr != nil && !errors.Is(rerr, fs.ErrNotExist) {
			err = rerr
		}
		s.closeSock()
		if s.gc != nil {
			s.gc.Close()
			s.gc = nil
		}
		if cerr := s.f.Close(); cerr != nil && err == nil {
			err = cerr
		}
	})
	return err
}
