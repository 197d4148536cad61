package nar

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"testing"

	"golang.org/x/sys/unix"
)

// makeTree writes a tree with every kind of node and awkward sizes.
func makeTree(t *testing.T) string {
	t.Helper()
	root := filepath.Join(t.TempDir(), "tree")
	rng := rand.New(rand.NewPCG(1, 2))
	data := func(n int) []byte {
		b := make([]byte, n)
		for i := range b {
			b[i] = byte(rng.Uint32())
		}
		return b
	}
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.MkdirAll(filepath.Join(root, "bin"), 0o755))
	must(os.MkdirAll(filepath.Join(root, "empty"), 0o755))
	must(os.MkdirAll(filepath.Join(root, "a/b/c"), 0o755))
	for name, n := range map[string]int{
		"zero": 0, "one": 1, "seven": 7, "eight": 8, "bin/tool": 4097,
		"a/b/c/buf": narBufSize, "a/b/c/buf-1": narBufSize - 1, "a/b/c/buf+1": narBufSize + 1,
		"a/big": 3*narBufSize + 12345, "a/b/x": 100,
	} {
		must(os.WriteFile(filepath.Join(root, name), data(n), 0o644))
	}
	must(os.Chmod(filepath.Join(root, "bin/tool"), 0o755))
	must(os.Symlink("../a/b", filepath.Join(root, "bin/link")))
	must(os.Symlink("/nonexistent/target", filepath.Join(root, "dangling")))
	must(os.WriteFile(filepath.Join(root, "a/B"), []byte("upper"), 0o644)) // sorts before "a/b"
	return root
}

func TestHashPathFilesMatchesHashPath(t *testing.T) {
	root := makeTree(t)
	for _, p := range []string{root, filepath.Join(root, "a/big"), filepath.Join(root, "bin/link"), filepath.Join(root, "empty"), filepath.Join(root, "zero")} {
		want, wantN, err := HashPath(p)
		if err != nil {
			t.Fatal(err)
		}
		got, gotN, err := HashPathFiles(p, nil)
		if err != nil {
			t.Fatal(err)
		}
		if got != want || gotN != wantN {
			t.Errorf("%s: %s %d, want %s %d", p, got, gotN, want, wantN)
		}
		// With a visitor reading every file's contents.
		var rels []string
		sums := map[string][32]byte{}
		var cur *bytes.Buffer
		var curRel string
		flush := func() {
			if cur != nil {
				sums[curRel] = sha256.Sum256(cur.Bytes())
				cur = nil
			}
		}
		got2, _, err := HashPathFiles(p, func(n *Node) (io.Writer, error) {
			flush()
			rels = append(rels, n.Rel)
			if n.Type == FileRegular {
				cur, curRel = &bytes.Buffer{}, n.Rel
				return cur, nil
			}
			return nil, nil
		})
		flush()
		if err != nil || got2 != want {
			t.Fatalf("%s with visitor: %v %s", p, err, got2)
		}
		var walked []string
		walkNAR(p, func(rel string, typ FileType, mode uint32, size int64, target string) error {
			walked = append(walked, rel)
			if typ == FileRegular {
				b, err := os.ReadFile(filepath.Join(p, rel))
				if rel == "" {
					b, err = os.ReadFile(p)
				}
				if err != nil || sha256.Sum256(b) != sums[rel] {
					t.Errorf("%s/%s: contents handed to the visitor differ", p, rel)
				}
			}
			return nil
		})
		if len(walked) != len(rels) {
			t.Fatalf("%s: visited %v, want %v", p, rels, walked)
		}
		for i := range rels {
			if rels[i] != walked[i] {
				t.Errorf("%s: order %v, want %v", p, rels, walked)
				break
			}
		}
		var statWalk []string
		if err := WalkPathStat(p, func(n *Node) (io.Writer, error) {
			statWalk = append(statWalk, n.Rel)
			return nil, nil
		}); err != nil || len(statWalk) != len(walked) {
			t.Errorf("WalkPathStat: %v %v", statWalk, err)
		}
	}
}

func TestHashPathFilesRefusesSpecialFiles(t *testing.T) {
	root := makeTree(t)
	if err := unix.Mkfifo(filepath.Join(root, "a/fifo"), 0o644); err != nil {
		t.Fatal(err)
	}
	_, _, err := HashPathFiles(root, nil)
	if !errors.Is(err, ErrUnsupportedFileType) {
		t.Errorf("fifo: %v", err)
	}
}

func TestHashPathFilesVisitorError(t *testing.T) {
	root := makeTree(t)
	stop := errors.New("stop")
	_, _, err := HashPathFiles(root, func(n *Node) (io.Writer, error) {
		if n.Rel == "a/b" {
			return nil, stop
		}
		return nil, nil
	})
	if err != stop {
		t.Errorf("got %v", err)
	}
}

func BenchmarkHashPathFiles(b *testing.B) {
	root := filepath.Join(b.TempDir(), "tree")
	for i := 0; i < 200; i++ {
		d := filepath.Join(root, "d", string(rune('a'+i%26)), strconv.Itoa(i))
		os.MkdirAll(d, 0o755)
		os.WriteFile(filepath.Join(d, "f"), bytes.Repeat([]byte{byte(i)}, 8192), 0o644)
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, _, err := HashPathFiles(root, nil); err != nil {
			b.Fatal(err)
		}
	}
}

func TestNodeStatMatchesLstat(t *testing.T) {
	root := makeTree(t)
	for _, p := range []string{root, filepath.Join(root, "bin/link")} {
		_, _, err := HashPathFiles(p, func(n *Node) (io.Writer, error) {
			st, err := n.Stat()
			if err != nil {
				return nil, err
			}
			var want unix.Stat_t
			full := p
			if n.Rel != "" {
				full = filepath.Join(p, n.Rel)
			}
			if err := unix.Lstat(full, &want); err != nil {
				return nil, err
			}
			if st.Ino != want.Ino || st.Mode != want.Mode || st.Mtim != want.Mtim {
				t.Errorf("%s: stat %+v, lstat %+v", n.Rel, st, want)
			}
			if n.Type == FileRegular && n.Size != want.Size {
				t.Errorf("%s: size %d, want %d", n.Rel, n.Size, want.Size)
			}
			return nil, nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
}

// HashOpenFile gives every regular file the hash HashPathAt gives it, and
// reports a file whose size is not the one announced.
func TestHashOpenFileMatchesHashPathAt(t *testing.T) {
	root := makeTree(t)
	for _, rel := range []string{"zero", "one", "seven", "eight", "bin/tool", "a/b/c/buf", "a/b/c/buf-1", "a/b/c/buf+1", "a/big"} {
		dir, name := filepath.Split(filepath.Join(root, rel))
		dfd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY, 0)
		if err != nil {
			t.Fatal(err)
		}
		want, _, err := HashPathAt(dfd, name, rel)
		if err != nil {
			t.Fatal(err)
		}
		fd, err := unix.Openat(dfd, name, unix.O_RDONLY, 0)
		if err != nil {
			t.Fatal(err)
		}
		var st unix.Stat_t
		if err := unix.Fstat(fd, &st); err != nil {
			t.Fatal(err)
		}
		got, err := HashOpenFile(fd, &st, rel)
		if err != nil || got != want {
			t.Errorf("%s: HashOpenFile = %v, %v; HashPathAt = %v", rel, got, err, want)
		}
		// The same descriptor, announced one byte short and one long.
		for _, delta := range []int64{-1, 1} {
			if st.Size+delta < 0 {
				continue
			}
			if _, err := unix.Seek(fd, 0, io.SeekStart); err != nil {
				t.Fatal(err)
			}
			bad := st
			bad.Size += delta
			if _, err := HashOpenFile(fd, &bad, rel); !IsChanged(err) {
				t.Errorf("%s announced %d bytes (has %d): err = %v, want a changed error", rel, bad.Size, st.Size, err)
			}
		}
		unix.Close(fd)
		unix.Close(dfd)
	}
	dfd, _ := unix.Open(root, unix.O_RDONLY|unix.O_DIRECTORY, 0)
	defer unix.Close(dfd)
	var st unix.Stat_t
	unix.Fstat(dfd, &st)
	if _, err := HashOpenFile(dfd, &st, "root"); !IsChanged(err) {
		t.Errorf("a directory: err = %v, want a changed error", err)
	}
}

// TestHashingLeavesAccessTimes: reading a tree to hash it does not
// update the access times of what it reads (O_NOATIME), on a file system
// that would (relatime updates an atime older than the ctime).
func TestHashingLeavesAccessTimes(t *testing.T) {
	dir := t.TempDir()
	var fs unix.Statfs_t
	if err := unix.Statfs(dir, &fs); err != nil || fs.Flags&(unix.ST_NOATIME|unix.ST_RDONLY) != 0 {
		t.Skip("atimes are not updated here anyway")
	}
	top := filepath.Join(dir, "p")
	os.MkdirAll(filepath.Join(top, "sub"), 0o755)
	os.WriteFile(filepath.Join(top, "sub", "f"), []byte("contents"), 0o444)
	old := unix.NsecToTimespec(2e9)
	for _, p := range []string{filepath.Join(top, "sub", "f"), filepath.Join(top, "sub"), top} {
		if err := unix.UtimesNanoAt(unix.AT_FDCWD, p, []unix.Timespec{old, old}, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			t.Fatal(err)
		}
	}
	if _, _, err := HashPath(top); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{filepath.Join(top, "sub", "f"), filepath.Join(top, "sub"), top} {
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			t.Fatal(err)
		}
		if st.Atim.Sec != 2 {
			t.Errorf("%s: atime %d after hashing, want 2 (unchanged)", p, st.Atim.Sec)
		}
	}
}
