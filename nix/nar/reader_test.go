package nar

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// narBuild concatenates NAR fields: a string is a NAR string (length,
// bytes, zero padding), a uint64 a raw number, a []byte raw bytes.
func narBuild(parts ...any) []byte {
	var b bytes.Buffer
	for _, p := range parts {
		switch v := p.(type) {
		case string:
			binary.Write(&b, binary.LittleEndian, uint64(len(v)))
			b.WriteString(v)
			b.Write(make([]byte, (8-len(v)%8)%8))
		case uint64:
			binary.Write(&b, binary.LittleEndian, v)
		case []byte:
			b.Write(v)
		default:
			panic("narBuild: bad part")
		}
	}
	return b.Bytes()
}

// narFile is a regular file node, narLink a symlink node, narEnt an entry.
func narFile(contents string) []byte {
	return narBuild("(", "type", "regular", "contents", contents, ")")
}
func narLink(target string) []byte { return narBuild("(", "type", "symlink", "target", target, ")") }
func narEnt(name string, node []byte) []byte {
	return narBuild("entry", "(", "name", name, "node", node, ")")
}
func narDir(entries ...[]byte) []byte {
	parts := []any{"(", "type", "directory"}
	for _, e := range entries {
		parts = append(parts, e)
	}
	return narBuild(append(parts, ")")...)
}
func narTop(node []byte) []byte { return narBuild("nix-archive-1", node) }

// narNested is a NAR of depth directories, each the only entry "d" of the
// one above.
func narNested(depth int) []byte {
	node := narDir()
	for range depth - 1 {
		node = narDir(narEnt("d", node))
	}
	return narTop(node)
}

// goldenNARs returns the NARs nix-store --dump wrote (testdata/nar).
func goldenNARs(t testing.TB) map[string][]byte {
	t.Helper()
	ents, err := os.ReadDir(narGoldenDir)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string][]byte{}
	for _, e := range ents {
		if name, ok := strings.CutSuffix(e.Name(), ".nar"); ok {
			data, err := os.ReadFile(filepath.Join(narGoldenDir, e.Name()))
			if err != nil {
				t.Fatal(err)
			}
			out[name] = data
		}
	}
	if len(out) < 10 {
		t.Fatalf("only %d golden NARs in %s", len(out), narGoldenDir)
	}
	return out
}

type badNARCase struct {
	name string
	nar  []byte
	lim  Limits
	kind error  // ErrBadNAR or ErrLimit
	path string // the entry the error names
	msg  string // in the error text
}

func badNARCases() []badNARCase {
	badPad := narTop(narFile("x"))
	badPad[len(narBuild("nix-archive-1", "(", "type", "regular", "contents"))+8+1] = 1
	badMagicPad := narBuild("nix-archive-1")
	badMagicPad[8+13] = 'x'
	tree := narTop(narDir(narEnt("a", narFile("A")), narEnt("b", narDir(narEnt("c", narLink("/x"))))))
	return []badNARCase{
		{"empty input", nil, Limits{}, ErrBadNAR, "", "truncated"},
		{"wrong magic", narBuild("nix-archive-2", narFile("")), Limits{}, ErrBadNAR, "", "not a NAR"},
		{"huge magic", narBuild(uint64(1<<40), "x"), Limits{}, ErrBadNAR, "", "longer than the 16 allowed"},
		{"gzip", []byte("\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03"), Limits{}, ErrBadNAR, "", "not a NAR"},
		{"magic padding", append(badMagicPad, narFile("")...), Limits{}, ErrBadNAR, "", "non-zero padding"},
		{"contents padding", badPad, Limits{}, ErrBadNAR, "", "non-zero padding"},
		{"unknown type", narTop(narBuild("(", "type", "fifo", ")")), Limits{}, ErrBadNAR, "", `unknown node type "fifo"`},
		{"unknown field", narTop(narBuild("(", "type", "regular", "mode", "0644", ")")), Limits{}, ErrBadNAR, "", `"mode" where "contents" belongs`},
		{"no contents", narTop(narBuild("(", "type", "regular", ")")), Limits{}, ErrBadNAR, "", `")" where "contents" belongs`},
		{"executable value", narTop(narBuild("(", "type", "regular", "executable", "yes", "contents", "", ")")), Limits{}, ErrBadNAR, "", `"yes" where "" belongs`},
		{"executable after contents", narTop(narBuild("(", "type", "regular", "contents", "", "executable", "", ")")), Limits{}, ErrBadNAR, "", `"executable" where ")" belongs`},
		{"no type", narTop(narBuild("(", "contents", "", ")")), Limits{}, ErrBadNAR, "", `"contents" where "type" belongs`},
		{"two types", narTop(narBuild("(", "type", "symlink", "type", "symlink", ")")), Limits{}, ErrBadNAR, "", `"type" where "target" belongs`},
		{"empty name", narTop(narDir(narEnt("", narFile("")))), Limits{}, ErrBadNAR, "", "is empty"},
		{"dot", narTop(narDir(narEnt(".", narFile("")))), Limits{}, ErrBadNAR, "", "not a file name"},
		{"dotdot", narTop(narDir(narEnt("..", narFile("")))), Limits{}, ErrBadNAR, "", "not a file name"},
		{"slash", narTop(narDir(narEnt("a/b", narFile("")))), Limits{}, ErrBadNAR, "", "holds a slash"},
		{"leading slash", narTop(narDir(narEnt("/etc", narFile("")))), Limits{}, ErrBadNAR, "", "holds a slash"},
		{"NUL", narTop(narDir(narEnt("a\x00b", narFile("")))), Limits{}, ErrBadNAR, "", "NUL"},
		{"long name", narTop(narDir(narEnt(strings.Repeat("n", 256), narFile("")))), Limits{}, ErrBadNAR, "", "longer than the 255 allowed"},
		{"unsorted", narTop(narDir(narEnt("b", narFile("")), narEnt("a", narFile("")))), Limits{}, ErrBadNAR, "", `entry "a" after "b"`},
		{"unsorted bytewise", narTop(narDir(narEnt("a", narFile("")), narEnt("B", narFile("")))), Limits{}, ErrBadNAR, "", `entry "B" after "a"`},
		{"duplicate", narTop(narDir(narEnt("a", narFile("")), narEnt("a", narFile("")))), Limits{}, ErrBadNAR, "", `entry "a" twice`},
		{"duplicate link then dir", narTop(narDir(narEnt("a", narLink("/tmp")), narEnt("a", narDir()))), Limits{}, ErrBadNAR, "", `entry "a" twice`},
		{"nested duplicate", narTop(narDir(narEnt("d", narDir(narEnt("x", narFile("")), narEnt("x", narFile("")))))), Limits{}, ErrBadNAR, "d", `entry "x" twice`},
		{"not entry", narTop(narBuild("(", "type", "directory", "name", "a", ")")), Limits{}, ErrBadNAR, "", `"name" where "entry" or ")" belongs`},
		{"entry not closed", narTop(narBuild("(", "type", "directory", "entry", "(", "name", "a", "node", narFile(""), "entry", ")")), Limits{}, ErrBadNAR, "a", `"entry" where ")" belongs`},
		{"entry without node", narTop(narBuild("(", "type", "directory", "entry", "(", "name", "a", ")", ")")), Limits{}, ErrBadNAR, "a", `")" where "node" belongs`},
		{"empty target", narTop(narLink("")), Limits{}, ErrBadNAR, "", "empty symlink target"},
		{"NUL target", narTop(narLink("a\x00b")), Limits{}, ErrBadNAR, "", "NUL"},
		{"long target", narTop(narLink(strings.Repeat("t", 4096))), Limits{}, ErrBadNAR, "", "longer than the 4095 allowed"},
		{"size overflow", narTop(narBuild("(", "type", "regular", "contents", uint64(1<<63))), Limits{}, ErrBadNAR, "", "overflows"},
		{"size max", narTop(narBuild("(", "type", "regular", "contents", ^uint64(0))), Limits{}, ErrBadNAR, "", "overflows"},
		{"huge size truncated", narTop(narBuild("(", "type", "regular", "contents", uint64(1<<40), "abc")), Limits{}, ErrBadNAR, "", "truncated"},
		{"trailing zeros", append(narTop(narFile("x")), make([]byte, 8)...), Limits{}, ErrBadNAR, "", "after the end"},
		{"trailing byte", append(tree, 'x'), Limits{}, ErrBadNAR, "", "after the end"},
		{"two archives", append(narTop(narFile("x")), narTop(narFile("x"))...), Limits{}, ErrBadNAR, "", "after the end"},
		{"truncated tree", tree[:len(tree)-8], Limits{}, ErrBadNAR, "", "truncated"},
		{"truncated in contents", narTop(narFile("hello"))[:len(narBuild("nix-archive-1", "(", "type", "regular", "contents"))+8+3], Limits{}, ErrBadNAR, "", "truncated"},
		{"depth", narNested(DefaultMaxDepth + 1), Limits{}, ErrLimit, strings.Repeat("d/", DefaultMaxDepth-1) + "d", "nested deeper than 256"},
		{"depth limit", narNested(4), Limits{MaxDepth: 3}, ErrLimit, "d/d/d", "nested deeper than 3"},
		{"bytes limit", narTop(narFile(strings.Repeat("x", 100))), Limits{MaxBytes: 120}, ErrLimit, "", "pass the limit of 120 bytes"},
		{"bytes limit in tokens", tree, Limits{MaxBytes: int64(len(tree)) - 1}, ErrLimit, "", "limit of"},
		{"entries limit", tree, Limits{MaxEntries: 3}, ErrLimit, "b/c", "more than the limit of 3 entries"},
	}
}

// readAllNAR reads a NAR through the Reader, contents included.
func readAllNAR(b []byte, lim Limits) ([]*Header, error) {
	nr := NewReaderLimits(bytes.NewReader(b), lim)
	var hs []*Header
	for {
		h, err := nr.Next()
		if err == io.EOF {
			if nr.Offset() != int64(len(b)) {
				return hs, errors.New("offset at EOF is not the NAR's size")
			}
			return hs, nil
		}
		if err != nil {
			return hs, err
		}
		hs = append(hs, h)
		if h.Type == FileRegular {
			n, err := io.Copy(io.Discard, nr)
			if err != nil {
				return hs, err
			}
			if n != h.Size {
				return hs, errors.New("short contents")
			}
		}
	}
}

func TestReaderRejects(t *testing.T) {
	for _, c := range badNARCases() {
		t.Run(c.name, func(t *testing.T) {
			_, err := readAllNAR(c.nar, c.lim)
			var e *Error
			if !errors.As(err, &e) || !errors.Is(err, c.kind) {
				t.Fatalf("err = %v, want an *Error wrapping %v", err, c.kind)
			}
			if e.Path != c.path || !strings.Contains(err.Error(), c.msg) {
				t.Errorf("err = %v (path %q), want path %q and %q", err, e.Path, c.path, c.msg)
			}
			if e.Offset < 0 || e.Offset > int64(len(c.nar)) {
				t.Errorf("offset %d outside the %d-byte input", e.Offset, len(c.nar))
			}
			if strings.Contains(c.msg, "truncated") && !errors.Is(err, io.ErrUnexpectedEOF) {
				t.Errorf("truncation %v does not wrap io.ErrUnexpectedEOF", err)
			}
			// Sticky.
			nr := NewReaderLimits(bytes.NewReader(c.nar), c.lim)
			var first error
			for first == nil {
				_, first = nr.Next()
				if first == nil {
					io.Copy(io.Discard, nr)
				}
			}
			if _, again := nr.Next(); again != first {
				t.Errorf("after %v, Next returned %v", first, again)
			}
		})
	}
}

// TestReaderErrorOffset: the offset is that of the field at fault.
func TestReaderErrorOffset(t *testing.T) {
	prefix := narBuild("nix-archive-1", "(", "type", "directory", "entry", "(", "name")
	nar := narTop(narDir(narEnt("..", narFile(""))))
	_, err := readAllNAR(nar, Limits{})
	var e *Error
	if !errors.As(err, &e) || e.Offset != int64(len(prefix)) {
		t.Errorf("err %v, want offset %d", err, len(prefix))
	}
}

// TestReaderTruncatedEverywhere: every proper prefix of every golden NAR
// is an error wrapping ErrBadNAR and io.ErrUnexpectedEOF.
func TestReaderTruncatedEverywhere(t *testing.T) {
	for name, nar := range goldenNARs(t) {
		for i := range len(nar) {
			_, err := readAllNAR(nar[:i], Limits{})
			if !errors.Is(err, ErrBadNAR) || !errors.Is(err, io.ErrUnexpectedEOF) {
				t.Fatalf("%s cut at %d: %v", name, i, err)
			}
		}
	}
}

// TestReaderGolden reads every NAR the real nix-store --dump wrote: it is
// accepted, says what the file system walk said (checkNARAgainstWalk in
// TestNARGolden), and the Writer writes it back byte for byte.
func TestReaderGolden(t *testing.T) {
	for name, nar := range goldenNARs(t) {
		t.Run(name, func(t *testing.T) {
			hs, err := readAllNAR(nar, Limits{MaxBytes: int64(len(nar))})
			if err != nil {
				t.Fatal(err)
			}
			if got := rewriteNAR(t, nar); !bytes.Equal(got, nar) {
				t.Errorf("Reader→Writer differs at byte %d", narFirstDiff(got, nar))
			}
			if _, err := readAllNAR(nar, Limits{MaxEntries: int64(len(hs))}); err != nil {
				t.Errorf("MaxEntries %d (exactly enough): %v", len(hs), err)
			}
		})
	}
}

// rewriteNAR copies a NAR through the Reader and the Writer.
func rewriteNAR(t testing.TB, nar []byte) []byte {
	t.Helper()
	var out bytes.Buffer
	nr := NewReader(bytes.NewReader(nar))
	nw := NewWriter(&out)
	for {
		h, err := nr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if err := nw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if h.Type == FileRegular {
			if _, err := io.Copy(nw, nr); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := nw.Close(); err != nil {
		t.Fatal(err)
	}
	if nw.Written() != int64(out.Len()) {
		t.Errorf("Written %d, wrote %d", nw.Written(), out.Len())
	}
	return out.Bytes()
}

func TestReaderPartialReads(t *testing.T) {
	nar := narTop(narDir(narEnt("a", narFile("0123456789")), narEnt("b", narBuild("(", "type", "regular", "executable", "", "contents", "xyz", ")"))))
	nr := NewReader(bytes.NewReader(nar))
	h, err := nr.Next()
	if err != nil || h.Type != FileDirectory || h.Path != "" {
		t.Fatalf("%+v %v", h, err)
	}
	if n, err := nr.Read(make([]byte, 4)); n != 0 || err != io.EOF {
		t.Errorf("Read on a directory: %d %v", n, err)
	}
	h, err = nr.Next()
	if err != nil || h.Path != "a" || h.Size != 10 || h.Executable {
		t.Fatalf("%+v %v", h, err)
	}
	p := make([]byte, 3)
	if n, err := nr.Read(p); n != 3 || err != nil || string(p) != "012" {
		t.Errorf("Read: %d %v %q", n, err, p)
	}
	// The rest of a's contents is skipped.
	h, err = nr.Next()
	if err != nil || h.Path != "b" || h.Size != 3 || !h.Executable {
		t.Fatalf("%+v %v", h, err)
	}
	if data, err := io.ReadAll(nr); err != nil || string(data) != "xyz" {
		t.Errorf("ReadAll: %q %v", data, err)
	}
	if _, err := nr.Next(); err != io.EOF {
		t.Errorf("Next at the end: %v", err)
	}
	if _, err := nr.Next(); err != io.EOF {
		t.Errorf("Next after the end: %v", err)
	}
	if nr.Offset() != int64(len(nar)) {
		t.Errorf("Offset %d, NAR %d bytes", nr.Offset(), len(nar))
	}
}

// TestReaderLongNames: the longest name and target are accepted.
func TestReaderLongNames(t *testing.T) {
	name := strings.Repeat("n", MaxNameLen)
	target := strings.Repeat("t", MaxTargetLen)
	nar := narTop(narDir(narEnt(name, narLink(target))))
	hs, err := readAllNAR(nar, Limits{})
	if err != nil || len(hs) != 2 || hs[1].Path != name || hs[1].LinkTarget != target {
		t.Fatalf("%v %v", hs, err)
	}
	if _, err := readAllNAR(narNested(DefaultMaxDepth), Limits{}); err != nil {
		t.Errorf("depth %d: %v", DefaultMaxDepth, err)
	}
}

func TestWriterRejects(t *testing.T) {
	for _, c := range []struct {
		name string
		hs   []Header
		msg  string
	}{
		{"first not top", []Header{{Path: "a", Type: FileDirectory}}, "first node"},
		{"second top", []Header{{Type: FileRegular}, {Type: FileRegular}}, "second top"},
		{"entry under a file", []Header{{Type: FileRegular}, {Path: "a", Type: FileRegular}}, "not in an open directory"},
		{"unsorted", []Header{{Type: FileDirectory}, {Path: "b", Type: FileDirectory}, {Path: "a", Type: FileDirectory}}, `entry "a" after "b"`},
		{"duplicate", []Header{{Type: FileDirectory}, {Path: "b", Type: FileDirectory}, {Path: "b", Type: FileRegular}}, `entry "b" after "b"`},
		{"back into a closed dir", []Header{{Type: FileDirectory}, {Path: "a", Type: FileDirectory}, {Path: "b", Type: FileDirectory}, {Path: "a/x", Type: FileRegular}}, "not in an open directory"},
		{"dotdot", []Header{{Type: FileDirectory}, {Path: "..", Type: FileDirectory}}, "not a file name"},
		{"empty component", []Header{{Type: FileDirectory}, {Path: "a", Type: FileDirectory}, {Path: "a//b", Type: FileDirectory}}, "not in an open directory"},
		{"leading slash", []Header{{Type: FileDirectory}, {Path: "/a", Type: FileRegular}}, "not in an open directory"},
		{"leading slash nested", []Header{{Type: FileDirectory}, {Path: "a", Type: FileDirectory}, {Path: "/a/b", Type: FileRegular}}, "not in an open directory"},
		{"empty target", []Header{{Type: FileSymlink}}, "empty symlink target"},
		{"NUL target", []Header{{Type: FileSymlink, LinkTarget: "a\x00"}}, "NUL"},
		{"short contents", []Header{{Type: FileDirectory}, {Path: "a", Type: FileRegular, Size: 3}, {Path: "b", Type: FileRegular}}, "3 of its 3 bytes"},
		{"negative size", []Header{{Type: FileRegular, Size: -1}}, "negative"},
		{"bad type", []Header{{Type: 9}}, "unknown type"},
	} {
		t.Run(c.name, func(t *testing.T) {
			nw := NewWriter(io.Discard)
			var err error
			for i := range c.hs {
				if err = nw.WriteHeader(&c.hs[i]); err != nil {
					break
				}
			}
			if err == nil {
				err = nw.Close()
			} else {
				nw.Close()
			}
			if !errors.Is(err, ErrBadNAR) || !strings.Contains(err.Error(), c.msg) {
				t.Errorf("err = %v, want ErrBadNAR and %q", err, c.msg)
			}
		})
	}
	nw := NewWriter(io.Discard)
	nw.WriteHeader(&Header{Type: FileRegular, Size: 2})
	if _, err := nw.Write([]byte("abc")); !errors.Is(err, ErrBadNAR) {
		t.Errorf("too much contents: %v", err)
	}
	if err := NewWriter(io.Discard).Close(); !errors.Is(err, ErrBadNAR) {
		t.Errorf("Close of an empty Writer: %v", err)
	}
}

// TestWriterMatchesDump: a tree written header by header is what DumpPath
// and nix-store --dump wrote.
func TestWriterMatchesDump(t *testing.T) {
	want, err := os.ReadFile(filepath.Join(narGoldenDir, "symlinked-dir.nar"))
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	nw := NewWriter(&out)
	for _, h := range []Header{
		{Type: FileDirectory},
		{Path: "etc", Type: FileSymlink, LinkTarget: "/etc"},
		{Path: "link", Type: FileSymlink, LinkTarget: "real"},
		{Path: "real", Type: FileDirectory},
		{Path: "real/file", Type: FileRegular, Size: 8},
		{Path: "up", Type: FileSymlink, LinkTarget: ".."},
	} {
		if err := nw.WriteHeader(&h); err != nil {
			t.Fatal(err)
		}
		if h.Type == FileRegular {
			io.WriteString(nw, "in real\n")
		}
	}
	if err := nw.Close(); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(out.Bytes(), want) {
		t.Errorf("Writer output differs from nix-store --dump at byte %d", narFirstDiff(out.Bytes(), want))
	}
}

// allowRemoval makes the directories under dir writable at cleanup, so
// t.TempDir can remove 0555 directories when the test is not root.
func allowRemoval(t testing.TB, dir string) {
	t.Cleanup(func() {
		filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
			if err == nil && fi.IsDir() {
				os.Chmod(p, 0o755)
			}
			return nil
		})
	})
}

func openDirFD(t testing.TB, dir string) int {
	t.Helper()
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	return fd
}

// unpackAndDump unpacks nar as dir/out and dumps it again.
func unpackAndDump(t testing.TB, nar []byte, dir string) []byte {
	t.Helper()
	fd := openDirFD(t, dir)
	h, n, err := Unpack(bytes.NewReader(nar), fd, "out", UnpackOptions{})
	if err != nil {
		t.Fatalf("Unpack: %v", err)
	}
	if want := sha256.Sum256(nar); h != Hash(want) || n != int64(len(nar)) {
		t.Errorf("Unpack returned %s, %d; the NAR is %x, %d bytes", h, n, want, len(nar))
	}
	var out bytes.Buffer
	if _, err := DumpPath(&out, filepath.Join(dir, "out")); err != nil {
		t.Fatal(err)
	}
	return out.Bytes()
}

// TestUnpackRoundTrip: for every fixture (the golden NARs' trees and the
// big one), DumpPath → Reader → Unpack → DumpPath is byte-identical, and
// what Unpack created has modes 0444/0555.
func TestUnpackRoundTrip(t *testing.T) {
	src := t.TempDir()
	buildNARFixtures(t, src)
	old := unix.Umask(0o077) // the modes must not depend on it
	defer unix.Umask(old)
	for _, f := range narFixtures {
		t.Run(f.name, func(t *testing.T) {
			var nar bytes.Buffer
			if _, err := DumpPath(&nar, filepath.Join(src, f.name)); err != nil {
				t.Fatal(err)
			}
			dir := t.TempDir()
			allowRemoval(t, dir)
			if got := unpackAndDump(t, nar.Bytes(), dir); !bytes.Equal(got, nar.Bytes()) {
				t.Fatalf("Dump→Unpack→Dump differs at byte %d", narFirstDiff(got, nar.Bytes()))
			}
			filepath.Walk(filepath.Join(dir, "out"), func(p string, fi os.FileInfo, err error) error {
				if err != nil {
					t.Fatal(err)
				}
				var want os.FileMode
				switch {
				case fi.Mode()&os.ModeSymlink != 0:
					return nil
				case fi.IsDir():
					want = os.ModeDir | 0o555
				case fi.Mode()&0o100 != 0:
					want = 0o555
				default:
					want = 0o444
				}
				if fi.Mode() != want {
					t.Errorf("%s: mode %v, want %v", p, fi.Mode(), want)
				}
				return nil
			})
		})
	}
	// The golden NARs themselves (made by nix-store --dump).
	for name, nar := range goldenNARs(t) {
		dir := t.TempDir()
		allowRemoval(t, dir)
		if got := unpackAndDump(t, nar, dir); !bytes.Equal(got, nar) {
			t.Errorf("%s: Unpack→Dump differs at byte %d", name, narFirstDiff(got, nar))
		}
	}
}

// TestUnpackNeverTouchesOutside: an existing name (file, directory, or
// symlink to elsewhere) is never written through; a bad name is refused;
// a hostile NAR stops Unpack with what it created left under name only.
func TestUnpackNeverTouchesOutside(t *testing.T) {
	dir := t.TempDir()
	allowRemoval(t, dir)
	outside := filepath.Join(dir, "outside")
	narTestDir(t, outside)
	narTestLink(t, outside, filepath.Join(dir, "link"))
	narTestDir(t, filepath.Join(dir, "existing"))
	narTestFile(t, filepath.Join(dir, "file"), []byte("keep"), 0o644)
	fd := openDirFD(t, dir)

	tree := narTop(narDir(narEnt("a", narFile("A"))))
	for _, name := range []string{"link", "existing", "file"} {
		for _, nar := range [][]byte{tree, narTop(narFile("x")), narTop(narLink("/"))} {
			if _, _, err := Unpack(bytes.NewReader(nar), fd, name, UnpackOptions{}); !errors.Is(err, os.ErrExist) || !strings.Contains(err.Error(), name) {
				t.Errorf("Unpack over %s: %v", name, err)
			}
		}
	}
	for _, name := range []string{"", ".", "..", "a/b", "../x"} {
		if _, _, err := Unpack(bytes.NewReader(tree), fd, name, UnpackOptions{}); err == nil {
			t.Errorf("Unpack as %q succeeded", name)
		}
	}

	// A symlink to outside, then a directory of the same name (with a
	// file in it): refused before the directory is made.
	hostile := narTop(narDir(
		narEnt("a", narLink(outside)),
		narEnt("a", narDir(narEnt("planted", narFile("x"))))))
	_, _, err := Unpack(bytes.NewReader(hostile), fd, "h", UnpackOptions{})
	if !errors.Is(err, ErrBadNAR) {
		t.Errorf("hostile NAR: %v", err)
	}
	if l, err := os.Readlink(filepath.Join(dir, "h/a")); err != nil || l != outside {
		t.Errorf("h/a: %q %v (what Unpack made is left)", l, err)
	}
	for _, d := range []string{outside, filepath.Join(dir, "existing")} {
		if ents, _ := os.ReadDir(d); len(ents) != 0 {
			t.Errorf("%s was written to: %v", d, ents)
		}
	}
	if data, _ := os.ReadFile(filepath.Join(dir, "file")); string(data) != "keep" {
		t.Errorf("file changed: %q", data)
	}

	// Limits: a NAR bigger than MaxBytes stops before its contents.
	big := narTop(narDir(narEnt("f", narFile(strings.Repeat("x", 1000)))))
	if _, _, err := Unpack(bytes.NewReader(big), fd, "big", UnpackOptions{Limits: Limits{MaxBytes: 500}}); !errors.Is(err, ErrLimit) {
		t.Errorf("MaxBytes: %v", err)
	}
	if _, err := os.Lstat(filepath.Join(dir, "big/f")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("big/f was created: %v", err)
	}
	if _, _, err := Unpack(bytes.NewReader(big), fd, "many", UnpackOptions{Limits: Limits{MaxEntries: 1}}); !errors.Is(err, ErrLimit) {
		t.Errorf("MaxEntries: %v", err)
	}
	// A truncated NAR leaves the partial file; the error says truncated.
	if _, _, err := Unpack(bytes.NewReader(big[:len(big)-600]), fd, "cut", UnpackOptions{}); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Errorf("truncated: %v", err)
	}
	// Every bad case of the Reader is an error of Unpack too.
	for i, c := range badNARCases() {
		if _, _, err := Unpack(bytes.NewReader(c.nar), fd, "bad"+strings.Repeat("x", i), UnpackOptions{Limits: c.lim}); !errors.Is(err, c.kind) {
			t.Errorf("%s: Unpack: %v", c.name, err)
		}
	}
}

// BenchmarkUnpack unpacks the NAR of BenchmarkHashPath's tree (hashing
// it on the way): NAR bytes written per second.
func BenchmarkUnpack(b *testing.B) {
	src := filepath.Join(b.TempDir(), "tree")
	for i := range 4 {
		narTestFile(b, filepath.Join(src, fmt.Sprintf("big%d", i)), narDetBytes(2<<20, uint32(i+1)), 0o644)
	}
	for i := range 300 {
		narTestFile(b, filepath.Join(src, fmt.Sprintf("d%d/f%d", i%10, i)), narDetBytes(1000+i*10, uint32(i+100)), 0o644)
	}
	var buf bytes.Buffer
	if _, err := DumpPath(&buf, src); err != nil {
		b.Fatal(err)
	}
	dir := b.TempDir()
	allowRemoval(b, dir)
	fd := openDirFD(b, dir)
	b.SetBytes(int64(buf.Len()))
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		if _, _, err := Unpack(bytes.NewReader(buf.Bytes()), fd, fmt.Sprintf("out%d", i), UnpackOptions{}); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkReader reads the same NAR without writing anything.
func BenchmarkReader(b *testing.B) {
	src := filepath.Join(b.TempDir(), "tree")
	for i := range 300 {
		narTestFile(b, filepath.Join(src, fmt.Sprintf("d%d/f%d", i%10, i)), narDetBytes(1000+i*10, uint32(i+100)), 0o644)
	}
	var buf bytes.Buffer
	if _, err := DumpPath(&buf, src); err != nil {
		b.Fatal(err)
	}
	b.SetBytes(int64(buf.Len()))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := readAllNAR(buf.Bytes(), Limits{}); err != nil {
			b.Fatal(err)
		}
	}
}

// failingReader returns data, then err.
type failingReader struct {
	data []byte
	err  error
}

func (f *failingReader) Read(p []byte) (int, error) {
	if len(f.data) == 0 {
		return 0, f.err
	}
	n := copy(p, f.data)
	f.data = f.data[n:]
	return n, nil
}

// TestReaderIOError: an error of the underlying reader is returned
// wrapped (not as a malformed NAR), by the Reader and by Unpack, which
// stops there.
func TestReaderIOError(t *testing.T) {
	nar := narTop(narDir(narEnt("a", narFile("hello")), narEnt("b", narFile(strings.Repeat("x", 100)))))
	cause := errors.New("connection reset")
	for _, cut := range []int{0, 8, 100, len(nar) - 60, len(nar) - 1} {
		var err error
		nr := NewReader(&failingReader{data: nar[:cut], err: cause})
		for err == nil {
			_, err = nr.Next()
			if err == nil {
				_, err = io.Copy(io.Discard, nr)
			}
		}
		if !errors.Is(err, cause) || errors.Is(err, ErrBadNAR) {
			t.Errorf("cut %d: %v, want the reader's error", cut, err)
		}
		dir := t.TempDir()
		allowRemoval(t, dir)
		_, _, err = Unpack(&failingReader{data: nar[:cut], err: cause}, openDirFD(t, dir), "out", UnpackOptions{})
		if !errors.Is(err, cause) || errors.Is(err, ErrBadNAR) {
			t.Errorf("Unpack, cut %d: %v, want the reader's error", cut, err)
		}
	}
}
