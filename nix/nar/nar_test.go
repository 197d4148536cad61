package nar

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

var narUpdateGolden = flag.Bool("update-golden", false, "regenerate store/testdata/nar with the real nix-store --dump and nix-hash")

const narGoldenDir = "testdata/nar"

// narGoldenMaxSize is the largest NAR kept as a golden file; bigger ones
// are checked only against their recorded hash and size.
const narGoldenMaxSize = 64 << 10

// narDetBytes returns n deterministic pseudo-random bytes (xorshift32).
func narDetBytes(n int, seed uint32) []byte {
	b := make([]byte, n)
	x := seed | 1
	for i := range b {
		x ^= x << 13
		x ^= x >> 17
		x ^= x << 5
		b[i] = byte(x >> 11)
	}
	return b
}

// narFixture is one tree (or lone file or symlink) for the golden tests.
type narFixture struct {
	name  string
	build func(t testing.TB, p string)
}

func narTestFile(t testing.TB, p string, data []byte, mode os.FileMode) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, data, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(p, mode); err != nil { // not subject to the umask
		t.Fatal(err)
	}
}

func narTestDir(t testing.TB, p string) {
	t.Helper()
	if err := os.MkdirAll(p, 0o755); err != nil {
		t.Fatal(err)
	}
}

func narTestLink(t testing.TB, target, p string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(target, p); err != nil {
		t.Fatal(err)
	}
}

// narFixtures are built afresh by every test (git keeps neither empty
// directories nor modes other than the x bit); only the NARs that the real
// nix-store --dump produced from them are committed.
var narFixtures = []narFixture{
	{"regular", func(t testing.TB, p string) { narTestFile(t, p, []byte("hello\n"), 0o644) }},
	{"empty", func(t testing.TB, p string) { narTestFile(t, p, nil, 0o644) }},
	{"executable", func(t testing.TB, p string) { narTestFile(t, p, []byte("#!/bin/sh\necho hi\n"), 0o755) }},
	// Only the owner's x bit counts.
	{"exec-owner-only", func(t testing.TB, p string) { narTestFile(t, p, []byte("x\n"), 0o744) }},
	{"exec-not-owner", func(t testing.TB, p string) { narTestFile(t, p, []byte("x\n"), 0o655) }},
	{"eight", func(t testing.TB, p string) { narTestFile(t, p, []byte("12345678"), 0o644) }},
	{"nine", func(t testing.TB, p string) { narTestFile(t, p, []byte("123456789"), 0o644) }},
	{"symlink-relative", func(t testing.TB, p string) { narTestLink(t, "target/of/link", p) }},
	{"symlink-absolute", func(t testing.TB, p string) {
		narTestLink(t, "/nix/store/00000000000000000000000000000000-dangling/bin/sh", p)
	}},
	{"empty-dir", func(t testing.TB, p string) { narTestDir(t, p) }},
	{"symlinked-dir", func(t testing.TB, p string) {
		narTestFile(t, filepath.Join(p, "real/file"), []byte("in real\n"), 0o644)
		narTestLink(t, "real", filepath.Join(p, "link"))
		narTestLink(t, "/etc", filepath.Join(p, "etc"))
		narTestLink(t, "..", filepath.Join(p, "up"))
	}},
	{"tree", func(t testing.TB, p string) {
		narTestDir(t, p)
		// Names whose bytewise order differs from a locale's.
		for i, n := range []string{"a", "B", "Z", "_", "-dash", ".hidden", "a.b", "a-b", "a_b", "aa", "A",
			"a b", "\u00e4", "\u00c4", "z\u0301", "10", "9", "new\nline", "back\\slash", "~tilde", "#hash", "%"} {
			narTestFile(t, filepath.Join(p, n), []byte(fmt.Sprintf("file %d %q\n", i, n)), 0o644)
		}
		narTestDir(t, filepath.Join(p, "empty-dir"))
		narTestDir(t, filepath.Join(p, "nested/empty"))
		narTestFile(t, filepath.Join(p, "nested/deeper/deepest/file"), []byte("deep\n"), 0o444)
		narTestFile(t, filepath.Join(p, "nested/deeper/seven"), []byte("1234567"), 0o644)
		narTestFile(t, filepath.Join(p, "nested/deeper/eight"), []byte("12345678"), 0o644)
		narTestFile(t, filepath.Join(p, "nested/deeper/nine"), []byte("123456789"), 0o644)
		narTestFile(t, filepath.Join(p, "nested/deeper/sixteen"), []byte("0123456789abcdef"), 0o644)
		narTestFile(t, filepath.Join(p, "nested/empty-file"), nil, 0o644)
		narTestFile(t, filepath.Join(p, "bin/prog"), []byte("#!/bin/sh\nexit 0\n"), 0o755)
		narTestFile(t, filepath.Join(p, "bin/empty-exec"), nil, 0o555)
		narTestFile(t, filepath.Join(p, "data.bin"), narDetBytes(3000, 7), 0o644)
		narTestLink(t, "nested/deeper", filepath.Join(p, "link-rel"))
		narTestLink(t, "/etc/passwd", filepath.Join(p, "link-abs"))
		narTestLink(t, "does/not/exist", filepath.Join(p, "dangling"))
		narTestLink(t, strings.Repeat("long/", 200)+"end", filepath.Join(p, "link-long"))
		narTestLink(t, "x", filepath.Join(p, "bin/seven-c"))
		narTestFile(t, filepath.Join(p, strings.Repeat("n", 255)), []byte("long name\n"), 0o644)
	}},
	{"big", func(t testing.TB, p string) {
		narTestFile(t, filepath.Join(p, "big.bin"), narDetBytes(1<<20+12345, 1), 0o644)
		narTestFile(t, filepath.Join(p, "exact-mib"), narDetBytes(1<<20, 2), 0o755)
		narTestFile(t, filepath.Join(p, "small"), []byte("after the big ones\n"), 0o644)
	}},
}

// buildNARFixtures creates every fixture under dir.
func buildNARFixtures(t testing.TB, dir string) {
	t.Helper()
	for _, f := range narFixtures {
		f.build(t, filepath.Join(dir, f.name))
	}
}

// narGolden is a fixture's recorded NAR hash (as nix-hash printed it) and
// NAR size.
type narGolden struct {
	hex, base32 string
	size        int64
}

const (
	goldenHexKey  = "nix-hash --type sha256: "
	goldenB32Key  = "nix-hash --type sha256 --base32: "
	goldenSizeKey = "nar-size: "
)

func readNARGolden(t *testing.T, name string) narGolden {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(narGoldenDir, name+".sha256"))
	if err != nil {
		t.Fatalf("%v (regenerate with go test ./store -run TestNARGolden -update-golden)", err)
	}
	var g narGolden
	for _, l := range strings.Split(string(data), "\n") {
		switch {
		case strings.HasPrefix(l, goldenHexKey):
			g.hex = l[len(goldenHexKey):]
		case strings.HasPrefix(l, goldenB32Key):
			g.base32 = l[len(goldenB32Key):]
		case strings.HasPrefix(l, goldenSizeKey):
			g.size, err = strconv.ParseInt(l[len(goldenSizeKey):], 10, 64)
			if err != nil {
				t.Fatal(err)
			}
		}
	}
	if len(g.hex) != 64 || len(g.base32) != 52 || g.size <= 0 {
		t.Fatalf("%s.sha256 is malformed: %q", name, data)
	}
	return g
}

// writeNARGolden records what the real Nix says about fixture p.
func writeNARGolden(t *testing.T, name, p string) {
	t.Helper()
	run := func(args ...string) []byte {
		out, err := exec.Command(args[0], args[1:]...).Output()
		if err != nil {
			t.Fatalf("%s: %v", strings.Join(args, " "), err)
		}
		return out
	}
	nar := run("nix-store", "--dump", p)
	hexHash := strings.TrimSpace(string(run("nix-hash", "--type", "sha256", p)))
	b32 := strings.TrimSpace(string(run("nix-hash", "--type", "sha256", "--base32", p)))
	if err := os.MkdirAll(narGoldenDir, 0o755); err != nil {
		t.Fatal(err)
	}
	narFile := filepath.Join(narGoldenDir, name+".nar")
	if len(nar) <= narGoldenMaxSize {
		if err := os.WriteFile(narFile, nar, 0o644); err != nil {
			t.Fatal(err)
		}
	} else if err := os.Remove(narFile); err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Fatal(err)
	}
	rec := fmt.Sprintf("%s%s\n%s%s\n%s%d\n", goldenHexKey, hexHash, goldenB32Key, b32, goldenSizeKey, len(nar))
	if err := os.WriteFile(filepath.Join(narGoldenDir, name+".sha256"), []byte(rec), 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestNARGolden checks DumpPath and HashPath against what nix-store --dump
// and nix-hash produced from the same fixtures. With -update-golden it
// first regenerates the golden files with the real Nix.
func TestNARGolden(t *testing.T) {
	dir := t.TempDir()
	buildNARFixtures(t, dir)
	if *narUpdateGolden {
		if _, err := exec.LookPath("nix-store"); err != nil {
			t.Fatalf("-update-golden needs nix-store: %v", err)
		}
		for _, f := range narFixtures {
			writeNARGolden(t, f.name, filepath.Join(dir, f.name))
		}
	}
	for _, f := range narFixtures {
		t.Run(f.name, func(t *testing.T) {
			p := filepath.Join(dir, f.name)
			g := readNARGolden(t, f.name)

			var buf bytes.Buffer
			n, err := DumpPath(&buf, p)
			if err != nil {
				t.Fatal(err)
			}
			if n != int64(buf.Len()) || n != g.size {
				t.Errorf("DumpPath wrote %d bytes (returned %d), nix-store --dump %d", buf.Len(), n, g.size)
			}
			want, err := os.ReadFile(filepath.Join(narGoldenDir, f.name+".nar"))
			switch {
			case err == nil:
				if !bytes.Equal(buf.Bytes(), want) {
					t.Errorf("DumpPath differs from nix-store --dump at byte %d", narFirstDiff(buf.Bytes(), want))
				}
			case errors.Is(err, os.ErrNotExist) && g.size > narGoldenMaxSize:
			default:
				t.Fatal(err)
			}
			if s := sha256.Sum256(buf.Bytes()); Hash(s).Hex() != g.hex {
				t.Errorf("sha256 of DumpPath's output %x, nix-hash %s", s, g.hex)
			}

			h, size, err := HashPath(p)
			if err != nil {
				t.Fatal(err)
			}
			if h.Hex() != g.hex || h.Base32() != g.base32 || size != g.size {
				t.Errorf("HashPath = %s %s %d, nix-hash %s %s, size %d", h.Hex(), h.Base32(), size, g.hex, g.base32, g.size)
			}
			// A trailing slash names the same node (never its target).
			if h2, _, err := HashPath(p + "/"); err != nil || h2 != h {
				t.Errorf("HashPath(%q) = %s, %v; want %s", p+"/", h2, err, h)
			}
			// The NAR parses back into the same tree.
			checkNARAgainstWalk(t, p, buf.Bytes())
		})
	}
}

func narFirstDiff(a, b []byte) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}

// narNode is a parsed NAR node, for tests.
type narNode struct {
	typ        FileType
	executable bool
	contents   []byte
	target     string
	entries    []narEntry
}

type narEntry struct {
	name string
	node *narNode
}

// parseNAR reads a whole NAR into a tree with the production Reader,
// failing the test on any error.
func parseNAR(t *testing.T, b []byte) *narNode {
	t.Helper()
	n, err := readNARTree(b)
	if err != nil {
		t.Fatalf("NAR: %v", err)
	}
	return n
}

// readNARTree reads a whole NAR into a tree with the Reader.
func readNARTree(b []byte) (*narNode, error) {
	nr := NewReader(bytes.NewReader(b))
	var root *narNode
	dirs := map[string]*narNode{}
	for {
		h, err := nr.Next()
		if err == io.EOF {
			return root, nil
		}
		if err != nil {
			return nil, err
		}
		n := &narNode{typ: h.Type, executable: h.Executable, target: h.LinkTarget}
		if h.Type == FileRegular {
			if n.contents, err = io.ReadAll(nr); err != nil {
				return nil, err
			}
			if int64(len(n.contents)) != h.Size {
				return nil, fmt.Errorf("%q: read %d bytes of contents, header says %d", h.Path, len(n.contents), h.Size)
			}
		}
		if h.Type == FileDirectory {
			dirs[h.Path] = n
		}
		if h.Path == "" {
			root = n
			continue
		}
		parent, name := "", h.Path
		if i := strings.LastIndexByte(h.Path, '/'); i >= 0 {
			parent, name = h.Path[:i], h.Path[i+1:]
		}
		p := dirs[parent]
		if p == nil {
			return nil, fmt.Errorf("%q: no parent directory %q", h.Path, parent)
		}
		p.entries = append(p.entries, narEntry{name, n})
	}
}

// walkNAR calls fn for every node WalkPathStat meets, with its mode.
func walkNAR(path string, fn func(rel string, typ FileType, mode uint32, size int64, target string) error) error {
	return WalkPathStat(path, func(n *Node) (io.Writer, error) {
		st, err := n.Stat()
		if err != nil {
			return nil, err
		}
		return nil, fn(n.Rel, n.Type, st.Mode, n.Size, n.Target)
	})
}

// checkNARAgainstWalk checks that nar holds what WalkPathStat and the
// file system say about p.
func checkNARAgainstWalk(t *testing.T, p string, nar []byte) {
	t.Helper()
	type item struct {
		rel  string
		node *narNode
	}
	var flat []item
	var flatten func(rel string, n *narNode)
	flatten = func(rel string, n *narNode) {
		flat = append(flat, item{rel, n})
		for _, e := range n.entries {
			r := e.name
			if rel != "" {
				r = rel + "/" + e.name
			}
			flatten(r, e.node)
		}
	}
	flatten("", parseNAR(t, nar))
	i := 0
	err := walkNAR(p, func(rel string, typ FileType, mode uint32, size int64, target string) error {
		if i >= len(flat) {
			return fmt.Errorf("WalkNAR: extra node %q", rel)
		}
		it := flat[i]
		i++
		if it.rel != rel || it.node.typ != typ {
			return fmt.Errorf("WalkNAR: %q %v, NAR has %q %v", rel, typ, it.rel, it.node.typ)
		}
		full := filepath.Join(p, rel)
		switch typ {
		case FileRegular:
			if size != int64(len(it.node.contents)) || (mode&0o100 != 0) != it.node.executable || mode&unix.S_IFMT != unix.S_IFREG {
				return fmt.Errorf("WalkNAR: %q size %d mode %o", rel, size, mode)
			}
			data, err := os.ReadFile(full)
			if err != nil || !bytes.Equal(data, it.node.contents) {
				return fmt.Errorf("NAR contents of %q differ from the file (%v)", rel, err)
			}
		case FileSymlink:
			if target != it.node.target || size != int64(len(target)) || mode&unix.S_IFMT != unix.S_IFLNK {
				return fmt.Errorf("WalkNAR: %q target %q", rel, target)
			}
			if l, err := os.Readlink(full); err != nil || l != target {
				return fmt.Errorf("readlink %q = %q, %v", rel, l, err)
			}
		case FileDirectory:
			if mode&unix.S_IFMT != unix.S_IFDIR {
				return fmt.Errorf("WalkNAR: %q mode %o", rel, mode)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if i != len(flat) {
		t.Fatalf("WalkNAR saw %d nodes, the NAR has %d", i, len(flat))
	}
}

func TestNARContentsSizeCheck(t *testing.T) {
	for _, c := range []struct {
		data string
		size int64
		ok   bool
	}{
		{"abcdefgh", 8, true},
		{"abcdefgh", 7, false}, // grew
		{"abcdefgh", 9, false}, // shrank
		{"", 0, true},
		{"x", 0, false},
	} {
		p := filepath.Join(t.TempDir(), "f")
		if err := os.WriteFile(p, []byte(c.data), 0o644); err != nil {
			t.Fatal(err)
		}
		f, err := os.Open(p)
		if err != nil {
			t.Fatal(err)
		}
		nw := newNarWriter(io.Discard)
		err = nw.contents(nil, int(f.Fd()), nil, c.size, "/some/file")
		nw.release()
		f.Close()
		if c.ok != (err == nil) {
			t.Errorf("contents(%q, %d): %v", c.data, c.size, err)
		}
		if err != nil && (!errors.Is(err, errChanged) || !strings.Contains(err.Error(), "/some/file")) {
			t.Errorf("contents(%q, %d): %v", c.data, c.size, err)
		}
	}
}

func narSymlinkBytes(target string) []byte {
	var b bytes.Buffer
	for _, s := range []string{"nix-archive-1", "(", "type", "symlink", "target", target, ")"} {
		binary.Write(&b, binary.LittleEndian, uint64(len(s)))
		b.WriteString(s)
		b.Write(make([]byte, (8-len(s)%8)%8))
	}
	return b.Bytes()
}

func TestDumpPathSymlinks(t *testing.T) {
	dir := t.TempDir()
	narTestFile(t, filepath.Join(dir, "d/secret"), []byte("secret\n"), 0o644)
	narTestLink(t, "d", filepath.Join(dir, "top"))
	narTestLink(t, filepath.Join(dir, "d"), filepath.Join(dir, "top-abs"))

	// A symlink at the top is dumped as a symlink, with or without a
	// trailing slash.
	for p, target := range map[string]string{
		filepath.Join(dir, "top"):       "d",
		filepath.Join(dir, "top") + "/": "d",
		filepath.Join(dir, "top-abs"):   filepath.Join(dir, "d"),
	} {
		var buf bytes.Buffer
		if _, err := DumpPath(&buf, p); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(buf.Bytes(), narSymlinkBytes(target)) {
			t.Errorf("DumpPath(%s) is not the symlink NAR", p)
		}
	}

	// A symlinked directory inside the tree is not followed.
	narTestDir(t, filepath.Join(dir, "tree"))
	narTestLink(t, "../d", filepath.Join(dir, "tree/link"))
	var buf bytes.Buffer
	if _, err := DumpPath(&buf, filepath.Join(dir, "tree")); err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(buf.Bytes(), []byte("secret")) {
		t.Errorf("DumpPath followed a symlink")
	}
	n := parseNAR(t, buf.Bytes())
	if len(n.entries) != 1 || n.entries[0].node.typ != FileSymlink || n.entries[0].node.target != "../d" {
		t.Errorf("unexpected NAR %+v", n)
	}
}

// TestDumpPathSwapMidWalk replaces a directory by a symlink to elsewhere
// after it has been opened: the walk goes on in the original directory, by
// descriptor, and never reaches the outside one.
func TestDumpPathSwapMidWalk(t *testing.T) {
	dir := t.TempDir()
	root := filepath.Join(dir, "root")
	out := filepath.Join(dir, "outside")
	narTestFile(t, filepath.Join(root, "a/b/file"), []byte("inside\n"), 0o644)
	narTestFile(t, filepath.Join(out, "b/file"), []byte("OUTSIDE\n"), 0o644)
	narTestFile(t, filepath.Join(out, "b/extra"), []byte("OUTSIDE\n"), 0o644)

	var buf bytes.Buffer
	nw := newNarWriter(&buf)
	defer nw.release()
	nw.str("nix-archive-1")
	swapped := false
	// When the walk has opened directory "a", replace it by a symlink to
	// the outside directory.
	swap := func(n *Node) (io.Writer, error) {
		if n.Rel == "a" {
			a := filepath.Join(root, "a")
			if err := os.Rename(a, a+".moved"); err != nil {
				t.Fatal(err)
			}
			if err := os.Symlink(out, a); err != nil {
				t.Fatal(err)
			}
			swapped = true
		}
		return nil, nil
	}
	tw := treeWalker{nw: nw, fn: swap}
	if err := tw.walkTop(root); err != nil {
		t.Fatal(err)
	}
	if err := nw.flush(); err != nil {
		t.Fatal(err)
	}
	if !swapped {
		t.Fatal("the swap did not happen")
	}
	if bytes.Contains(buf.Bytes(), []byte("OUTSIDE")) || !bytes.Contains(buf.Bytes(), []byte("inside")) {
		t.Errorf("the walk left the tree after the swap")
	}
}

func TestDumpPathUnsupported(t *testing.T) {
	dir := t.TempDir()
	fifo := filepath.Join(dir, "tree/sub/fifo")
	narTestDir(t, filepath.Dir(fifo))
	if err := unix.Mkfifo(fifo, 0o644); err != nil {
		t.Skipf("mkfifo: %v", err)
	}
	for _, p := range []string{filepath.Join(dir, "tree"), fifo} {
		_, err := DumpPath(io.Discard, p)
		if !errors.Is(err, ErrUnsupportedFileType) || !strings.Contains(err.Error(), fifo) || !strings.Contains(err.Error(), "fifo") {
			t.Errorf("DumpPath(%s): %v; want ErrUnsupportedFileType naming %s", p, err, fifo)
		}
		if _, _, err := HashPath(p); !errors.Is(err, ErrUnsupportedFileType) {
			t.Errorf("HashPath(%s): %v", p, err)
		}
	}

	// A socket, if the temporary directory's path is short enough.
	sock := filepath.Join(dir, "s")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Logf("no socket test: %v", err)
		return
	}
	defer l.Close()
	if _, err := DumpPath(io.Discard, sock); !errors.Is(err, ErrUnsupportedFileType) || !strings.Contains(err.Error(), sock) {
		t.Errorf("DumpPath(socket): %v", err)
	}
}

func TestDumpPathErrors(t *testing.T) {
	dir := t.TempDir()
	missing := filepath.Join(dir, "missing")
	if _, err := DumpPath(io.Discard, missing); !errors.Is(err, os.ErrNotExist) || !strings.Contains(err.Error(), missing) {
		t.Errorf("DumpPath(missing): %v", err)
	}
	p := filepath.Join(dir, "f")
	narTestFile(t, p, narDetBytes(3<<20, 3), 0o644)
	wantErr := errors.New("disk full")
	n, err := DumpPath(narFailingWriter{after: 1 << 20, err: wantErr}, p)
	if !errors.Is(err, wantErr) {
		t.Errorf("DumpPath to a failing writer: %d, %v", n, err)
	}
}

type narFailingWriter struct {
	after int
	err   error
}

func (w narFailingWriter) Write(p []byte) (int, error) {
	if len(p) >= w.after {
		return 0, w.err
	}
	return len(p), nil
}

func TestNarHashForms(t *testing.T) {
	// The NAR hash of "hello\n", printed by nix-hash and
	// nix hash to-sri / to-base64.
	const (
		hexForm = "1c37d01af40be2e80691de3cc3df44377a699afbb17c68f080964b2fd071fc13"
		b32Form = "04zwf782yjwnh3q6hz5izfd6jyip8kgw6g6yj43fiqhbyhdd0dqw"
		sriForm = "sha256-HDfQGvQL4ugGkd48w99EN3ppmvuxfGjwgJZLL9Bx/BM="
		b64Form = "HDfQGvQL4ugGkd48w99EN3ppmvuxfGjwgJZLL9Bx/BM="
	)
	want := mustHex32(t, hexForm)
	if want.Hex() != hexForm || want.Base32() != b32Form || want.SRI() != sriForm || want.String() != "sha256:"+b32Form {
		t.Errorf("forms: %s %s %s %s", want.Hex(), want.Base32(), want.SRI(), want)
	}
	for _, s := range []string{"sha256:" + hexForm, "sha256:" + strings.ToUpper(hexForm), "sha256:" + b32Form, sriForm, "sha256:" + b64Form} {
		h, err := ParseHash(s)
		if err != nil || h != want {
			t.Errorf("ParseNarHash(%q) = %s, %v", s, h, err)
		}
	}
	for _, s := range []string{
		"", hexForm, b32Form, "sha256", "sha256:", "sha512:" + hexForm, "md5:" + hexForm,
		"sha256:" + hexForm[1:], "sha256:" + hexForm + "0", "sha256:" + hexForm[:63] + "g",
		"sha256:" + b32Form[:51] + "e", "sha256:1" + b32Form[1:] + "", "sha256:z" + b32Form[1:],
		"sha256-" + b64Form[:43], "sha256-" + b64Form[:43] + "!", "sha256-" + b64Form + "=",
		"sha256-" + hexForm, "SHA256:" + hexForm, " sha256:" + hexForm, "sha256:" + hexForm + "\n",
		// 44 base64 characters without padding are 33 bytes (this
		// panicked once: found by FuzzParse in nix/narinfo).
		"sha256:" + strings.Repeat("0", 44), "sha256-" + strings.Repeat("A", 44),
	} {
		if h, err := ParseHash(s); err == nil {
			if s == "sha256:1"+b32Form[1:] { // a valid value, just another one
				continue
			}
			t.Errorf("ParseNarHash(%q) = %s, want an error", s, h)
		} else if !errors.Is(err, ErrBadHash) {
			t.Errorf("ParseNarHash(%q): %v does not wrap ErrBadHash", s, err)
		}
	}
}

func TestWalkNARStops(t *testing.T) {
	dir := t.TempDir()
	buildNARFixtures(t, dir)
	stop := errors.New("stop")
	var seen []string
	err := walkNAR(filepath.Join(dir, "tree"), func(rel string, typ FileType, mode uint32, size int64, target string) error {
		seen = append(seen, rel)
		if rel == "bin" {
			return stop
		}
		return nil
	})
	if err != stop {
		t.Errorf("WalkNAR returned %v", err)
	}
	if !slices.IsSorted(seen[1:]) || seen[0] != "" {
		t.Errorf("WalkNAR order: %q", seen)
	}
}

// TestNARWriterSmallWrites checks the buffer boundary handling by writing
// tokens through a tiny buffer.
func TestNARWriterSmallWrites(t *testing.T) {
	dir := t.TempDir()
	buildNARFixtures(t, dir)
	p := filepath.Join(dir, "tree")
	var want bytes.Buffer
	if _, err := DumpPath(&want, p); err != nil {
		t.Fatal(err)
	}
	for _, size := range []int{1, 3, 8, 13} {
		var got bytes.Buffer
		bw := bufio.NewWriter(&got)
		nw := &narWriter{w: bw, buf: make([]byte, size)}
		nw.str("nix-archive-1")
		tw := treeWalker{nw: nw}
		if err := tw.walkTop(p); err != nil {
			t.Fatal(err)
		}
		if err := nw.flush(); err != nil {
			t.Fatal(err)
		}
		bw.Flush()
		if !bytes.Equal(got.Bytes(), want.Bytes()) || nw.written != int64(want.Len()) {
			t.Errorf("buffer of %d bytes: output differs", size)
		}
	}
}

func BenchmarkHashPath(b *testing.B) {
	dir := b.TempDir()
	root := filepath.Join(dir, "tree")
	for i := range 4 {
		narTestFile(b, filepath.Join(root, fmt.Sprintf("big%d", i)), narDetBytes(2<<20, uint32(i+1)), 0o644)
	}
	for i := range 300 {
		narTestFile(b, filepath.Join(root, fmt.Sprintf("d%d/f%d", i%10, i)), narDetBytes(1000+i*10, uint32(i+100)), 0o644)
	}
	_, size, err := HashPath(root)
	if err != nil {
		b.Fatal(err)
	}
	b.SetBytes(size)
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		if _, _, err := HashPath(root); err != nil {
			b.Fatal(err)
		}
	}
}

func mustHex32(t testing.TB, s string) Hash {
	t.Helper()
	var h Hash
	if b, err := hex.DecodeString(s); err != nil || len(b) != len(h) {
		t.Fatalf("bad hex %q", s)
	} else {
		copy(h[:], b)
	}
	return h
}
