//go:build linux && amd64

package nar

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"storekeeper/internal/sys"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// visitLog records everything a NodeFunc is shown, to compare walks.
type visitLog struct {
	lines []string
	cur   *bytes.Buffer
}

func (l *visitLog) flush() {
	if l.cur != nil {
		l.lines = append(l.lines, fmt.Sprintf("  contents %x", l.cur.Bytes()))
		l.cur = nil
	}
}

func (l *visitLog) visit(n *Node) (io.Writer, error) {
	l.flush()
	st, err := n.Stat()
	if err != nil {
		return nil, err
	}
	l.lines = append(l.lines, fmt.Sprintf("%q %v size=%d target=%q dev=%d ino=%d mode=%o nlink=%d uid=%d gid=%d size=%d mtime=%d.%d",
		n.Rel, n.Type, n.Size, n.Target, st.Dev, st.Ino, st.Mode, st.Nlink, st.Uid, st.Gid, st.Size, st.Mtim.Sec, st.Mtim.Nsec))
	if n.Type == FileRegular {
		l.cur = &bytes.Buffer{}
		return l.cur, nil
	}
	return nil, nil
}

func newTestBatchHasher(t *testing.T) *BatchHasher {
	t.Helper()
	skipWithoutIOURing(t)
	b, err := NewBatchHasher()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	return b
}

// skipWithoutIOURing skips where the kernel has no io_uring at all; where
// it has one, NewBatchHasher must work.
func skipWithoutIOURing(t *testing.T) {
	t.Helper()
	r, err := sys.NewRing(4)
	if err != nil {
		t.Skipf("no io_uring here (%v): the plain walker is used instead, and tested elsewhere", err)
	}
	r.Close()
}

// batchTrees returns paths covering every kind of top and node, sizes
// around the batch read size and NAR buffer size, and the NAR fixtures.
func batchTrees(t *testing.T) []string {
	root := makeTree(t)
	fix := t.TempDir()
	buildNARFixtures(t, fix)
	sizes := filepath.Join(t.TempDir(), "sizes")
	if err := os.Mkdir(sizes, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, n := range []int{0, 1, sys.BatchReadSize - 1, sys.BatchReadSize, sys.BatchReadSize + 1, 2 * sys.BatchReadSize, narBufSize + 3} {
		narTestFile(t, filepath.Join(sizes, fmt.Sprint("f", n)), narDetBytes(n, uint32(n)), 0o555)
	}
	// More small files than the batch holds at once.
	full := filepath.Join(t.TempDir(), "full")
	narTestDir(t, full)
	for i := 0; i < 2*batchArenaSize/(sys.BatchReadSize-100); i++ {
		narTestFile(t, filepath.Join(full, fmt.Sprint(i)), narDetBytes(sys.BatchReadSize-100, uint32(i)), 0o444)
	}
	paths := []string{full, root, root + "/", filepath.Join(root, "a/big"), filepath.Join(root, "bin/link"),
		filepath.Join(root, "empty"), filepath.Join(root, "zero"), filepath.Join(root, "bin/tool"), sizes}
	for _, f := range narFixtures {
		paths = append(paths, filepath.Join(fix, f.name))
	}
	return paths
}

func TestBatchHasherMatchesHashPathFiles(t *testing.T) {
	b := newTestBatchHasher(t)
	paths := batchTrees(t)
	for _, p := range paths {
		var want, got visitLog
		wh, wn, werr := HashPathFiles(p, want.visit)
		want.flush()
		gh, gn, gerr := b.HashPathFiles(p, got.visit)
		got.flush()
		if werr != nil || gerr != nil {
			t.Fatalf("%s: %v / %v", p, werr, gerr)
		}
		if gh != wh || gn != wn {
			t.Errorf("%s: %s %d, want %s %d", p, gh, gn, wh, wn)
		}
		if strings.Join(got.lines, "\n") != strings.Join(want.lines, "\n") {
			t.Errorf("%s: the visitor saw\n%s\nwant\n%s", p, strings.Join(got.lines, "\n"), strings.Join(want.lines, "\n"))
		}
		// Without a visitor, against HashPath.
		hp, np, err := HashPath(p)
		if h, n, err2 := b.HashPathFiles(p, nil); err != nil || err2 != nil || h != hp || n != np {
			t.Errorf("%s without visitor: %s %d %v, want %s %d %v", p, h, n, err2, hp, np, err)
		}
	}
	if b.Fallbacks != 0 || b.Batched != int64(2*len(paths)) {
		t.Errorf("batched %d, fell back %d times; want %d batched", b.Batched, b.Fallbacks, 2*len(paths))
	}
}

// TestBatchHasherFallsBack checks that what the batch does not handle is
// walked by HashPathFiles, with its results and its errors.
func TestBatchHasherFallsBack(t *testing.T) {
	b := newTestBatchHasher(t)
	dir := t.TempDir()

	many := filepath.Join(dir, "many")
	narTestDir(t, many)
	for i := 0; i <= batchMaxFiles; i++ {
		narTestFile(t, filepath.Join(many, fmt.Sprint(i)), []byte(fmt.Sprint(i)), 0o444)
	}
	deep := filepath.Join(dir, "deep")
	p := deep
	for i := 0; i <= batchMaxDirs; i++ {
		p = filepath.Join(p, "d")
	}
	if err := os.MkdirAll(p, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{many, deep} {
		want, _, err := HashPath(p)
		if err != nil {
			t.Fatal(err)
		}
		before := b.Fallbacks
		got, _, err := b.HashPathFiles(p, nil)
		if err != nil || got != want || b.Fallbacks != before+1 {
			t.Errorf("%s: %s %v (fallbacks %d -> %d), want %s", filepath.Base(p), got, err, before, b.Fallbacks, want)
		}
	}

	fifo := makeTree(t)
	if err := unix.Mkfifo(filepath.Join(fifo, "a/fifo"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, _, err := b.HashPathFiles(fifo, nil); !errors.Is(err, ErrUnsupportedFileType) {
		t.Errorf("fifo: %v", err)
	}
	if _, _, err := b.HashPathFiles(filepath.Join(dir, "missing"), nil); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing path: %v", err)
	}
	// An unreadable file: the batch's open fails, the plain walker says
	// which file (as an unprivileged user only: root reads anything).
	if os.Geteuid() != 0 {
		locked := makeTree(t)
		os.Chmod(filepath.Join(locked, "a/b/x"), 0)
		if _, _, err := b.HashPathFiles(locked, nil); !errors.Is(err, os.ErrPermission) || !strings.Contains(err.Error(), "a/b/x") {
			t.Errorf("unreadable file: %v", err)
		}
	}
	// After all that the hasher still batches.
	tree := makeTree(t)
	want, _, _ := HashPath(tree)
	before := b.Batched
	if got, _, err := b.HashPathFiles(tree, nil); err != nil || got != want || b.Batched != before+1 {
		t.Errorf("after fallbacks: %s %v batched %d->%d", got, err, before, b.Batched)
	}
}

func TestBatchHasherVisitorError(t *testing.T) {
	b := newTestBatchHasher(t)
	root := makeTree(t)
	stop := errors.New("stop")
	_, _, err := b.HashPathFiles(root, func(n *Node) (io.Writer, error) {
		if n.Rel == "a/b" {
			return nil, stop
		}
		return nil, nil
	})
	if err != stop {
		t.Errorf("got %v", err)
	}
}

func openFDs(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Skip("no /proc/self/fd")
	}
	return len(ents)
}

// TestBatchHasherClosesDescriptors hashes many paths with one hasher and
// checks it holds a bounded number of descriptors, and none after Close.
func TestBatchHasherClosesDescriptors(t *testing.T) {
	paths := batchTrees(t)
	skipWithoutIOURing(t)
	start := openFDs(t)
	b, err := NewBatchHasher()
	if err != nil {
		t.Fatal(err)
	}
	peak := 0
	for i := 0; i < 20; i++ {
		for _, p := range paths {
			if _, _, err := b.HashPathFiles(p, nil); err != nil {
				t.Fatal(err)
			}
			peak = max(peak, openFDs(t)-start)
		}
	}
	if peak > batchMaxCloses+batchMaxDirs+1 {
		t.Errorf("up to %d descriptors held", peak)
	}
	b.Close()
	if n := openFDs(t); n != start {
		t.Errorf("%d descriptors open after Close, %d before", n, start)
	}
	// A closed hasher, like a nil one, hashes with HashPathFiles.
	var nilB *BatchHasher
	for _, h := range []*BatchHasher{b, nilB} {
		if _, _, err := h.HashPathFiles(paths[0], nil); err != nil {
			t.Error(err)
		}
	}
}

func TestBatchHasherDisabledByEnvironment(t *testing.T) {
	t.Setenv("STOREKEEPER_NO_IO_URING", "1")
	if b, err := NewBatchHasher(); !errors.Is(err, sys.ErrNoIOURing) || b != nil {
		t.Errorf("got %v, %v", b, err)
	}
}

// TestBatchHasherBrokenRing checks that a ring whose submissions fail
// leaves hashing to HashPathFiles, with the same results.
func TestBatchHasherBrokenRing(t *testing.T) {
	b := newTestBatchHasher(t)
	root := makeTree(t)
	want, _, err := HashPath(root)
	if err != nil {
		t.Fatal(err)
	}
	// Put /dev/null where the ring's descriptor was: every io_uring_enter
	// now fails (EOPNOTSUPP), as it would on a ring the kernel broke.
	ringFD := b.r.FD()
	saved, err := unix.Dup(ringFD)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(saved)
	null, err := unix.Open("/dev/null", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.Dup3(null, ringFD, unix.O_CLOEXEC); err != nil {
		t.Fatal(err)
	}
	unix.Close(null)
	for i := 0; i < 3; i++ {
		got, _, err := b.HashPathFiles(root, nil)
		if err != nil || got != want {
			t.Fatalf("run %d: %s %v, want %s", i, got, err, want)
		}
	}
	if b.r.Err == nil || b.Batched != 0 {
		t.Errorf("ring error %v, %d paths batched", b.r.Err, b.Batched)
	}
}
