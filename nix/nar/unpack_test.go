package nar

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// A sandbox is what a hostile-archive test unpacks into: a parent
// directory holding things an archive must never reach (a directory with a
// file, a file, a symlink to the directory) and work/, the directory Unpack
// gets as dirfd. Everything but work/ is recorded first and compared after
// (inode, mode, size, mtime, target, contents).
type sandbox struct {
	root, work string
	fd         int
	before     map[string]string
}

func newSandbox(t testing.TB) *sandbox {
	t.Helper()
	root := fastTempDir(t)
	allowRemoval(t, root)
	narTestFile(t, filepath.Join(root, "outside/victim"), []byte("keep me\n"), 0o644)
	narTestFile(t, filepath.Join(root, "sibling"), []byte("sibling\n"), 0o644)
	narTestLink(t, filepath.Join(root, "outside"), filepath.Join(root, "work-link"))
	narTestDir(t, filepath.Join(root, "work"))
	sb := &sandbox{root: root, work: filepath.Join(root, "work")}
	sb.fd = openDirFD(t, sb.work)
	sb.before = sb.snapshot(t)
	return sb
}

// fastTempDir is a new directory removed when t ends: in /dev/shm when it
// is writable (creating thousands of small trees there is eight times
// faster than on an ext4 /tmp), else t.TempDir.
func fastTempDir(t testing.TB) string {
	t.Helper()
	d, err := os.MkdirTemp("/dev/shm", "storekeeper-nar-test-")
	if err != nil {
		return t.TempDir()
	}
	t.Cleanup(func() { os.RemoveAll(d) })
	return d
}

// snapshot describes every node under root except work/'s entries.
func (sb *sandbox) snapshot(t testing.TB) map[string]string {
	t.Helper()
	m := map[string]string{}
	err := filepath.WalkDir(sb.root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if p == sb.work {
			return nil // its mtime changes with its entries
		}
		if filepath.Dir(p) == sb.work {
			return filepath.SkipDir // skips the rest of work/, file or directory
		}
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			return err
		}
		desc := fmt.Sprintf("ino %d mode %o size %d mtime %d.%d nlink %d", st.Ino, st.Mode, st.Size, st.Mtim.Sec, st.Mtim.Nsec, st.Nlink)
		switch st.Mode & unix.S_IFMT {
		case unix.S_IFLNK:
			l, _ := os.Readlink(p)
			desc += " -> " + l
		case unix.S_IFREG:
			data, _ := os.ReadFile(p)
			desc += fmt.Sprintf(" %x", sha256.Sum256(data))
		}
		m[p] = desc
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// check fails t unless everything outside work/ is as it was, work/ holds
// nothing but the names in allowed, and no node under work/ can be
// written by its group or others, or is setuid or setgid.
func (sb *sandbox) check(t testing.TB, allowed ...string) {
	t.Helper()
	after := sb.snapshot(t)
	for p, d := range sb.before {
		if after[p] != d {
			t.Errorf("outside the target: %s changed: %s, now %q", p, d, after[p])
		}
	}
	for p := range after {
		if _, ok := sb.before[p]; !ok {
			t.Errorf("outside the target: %s created", p)
		}
	}
	ents, err := os.ReadDir(sb.work)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		if !slices.Contains(allowed, e.Name()) {
			t.Errorf("the target directory holds %q, not only %q", e.Name(), allowed)
		}
	}
	filepath.WalkDir(sb.work, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			t.Error(err)
			return nil
		}
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil || p == sb.work || st.Mode&unix.S_IFMT == unix.S_IFLNK {
			return nil
		}
		if st.Mode&0o022 != 0 || st.Mode&(unix.S_ISUID|unix.S_ISGID) != 0 {
			t.Errorf("%s: mode %o: writable by others or set-id", p, st.Mode&0o7777)
		}
		return nil
	})
}

// tree lists what is under work/name: "REL TYPE" lines ("" for name
// itself), sorted, TYPE d, f, x (executable) or l -> TARGET.
func (sb *sandbox) tree(t testing.TB, name string) []string {
	t.Helper()
	var out []string
	top := filepath.Join(sb.work, name)
	if _, err := os.Lstat(top); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	err := filepath.WalkDir(top, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(top, p)
		if rel == "." {
			rel = ""
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		switch {
		case fi.Mode()&os.ModeSymlink != 0:
			l, _ := os.Readlink(p)
			out = append(out, rel+" l -> "+l)
		case fi.IsDir():
			out = append(out, rel+" d")
		case fi.Mode()&0o100 != 0:
			out = append(out, rel+" x")
		default:
			out = append(out, rel+" f")
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(out)
	return out
}

// hostileCase is one archive Unpack must refuse.
type hostileCase struct {
	name string
	nar  []byte
	lim  Limits
	kind error // ErrBadNAR or ErrLimit
	path string
	msg  string
	// leaves is what Unpack created under the target before it stopped
	// (sandbox.tree); nil when left is set.
	leaves []string
	left   func(t testing.TB, tree []string)
}

// hostileCases are the hostile archives (#23): bad names,
// unsorted and duplicate entries, nesting, symlink targets, truncation,
// sizes that lie or pass the limit, trailing data, escapes through a
// symlink.
func hostileCases(outside string) []hostileCase {
	good := narTop(narDir(narEnt("a", narFile("A")), narEnt("b", narFile("B"))))
	fileHdr := narBuild("nix-archive-1", "(", "type", "regular", "contents")
	dirHdr := narBuild("nix-archive-1", "(", "type", "directory")
	longTarget := strings.Repeat("../", 1365) // 4095 bytes
	var cases []hostileCase
	for _, n := range []struct{ name, why string }{
		{"", "is empty"}, {".", "not a file name"}, {"..", "not a file name"},
		{"a/b", "holds a slash"}, {"/etc", "holds a slash"}, {"../../escape", "holds a slash"},
		{"x/", "holds a slash"}, {"a\x00b", "NUL"}, {"\x00", "NUL"},
	} {
		cases = append(cases,
			hostileCase{name: "name " + strconv.Quote(n.name), nar: narTop(narDir(narEnt(n.name, narFile("planted")))),
				kind: ErrBadNAR, msg: n.why, leaves: []string{" d"}},
			hostileCase{name: "nested name " + strconv.Quote(n.name), nar: narTop(narDir(narEnt("d", narDir(narEnt("a", narFile("")), narEnt(n.name, narDir()))))),
				kind: ErrBadNAR, path: "d", msg: n.why, leaves: []string{" d", "d d", "d/a f"}})
	}
	cases = append(cases, []hostileCase{
		{name: "unsorted", nar: narTop(narDir(narEnt("b", narFile("")), narEnt("a", narFile("")))),
			kind: ErrBadNAR, msg: `entry "a" after "b"`, leaves: []string{" d", "b f"}},
		// A directory cannot be entered again after another entry.
		{name: "directory reopened", nar: narTop(narDir(narEnt("a", narDir(narEnt("x", narFile("")))), narEnt("b", narFile("")), narEnt("a", narDir(narEnt("y", narFile("")))))),
			kind: ErrBadNAR, msg: `entry "a" after "b"`, leaves: []string{" d", "a d", "a/x f", "b f"}},
		{name: "duplicate file", nar: narTop(narDir(narEnt("a", narFile("first")), narEnt("a", narFile("second")))),
			kind: ErrBadNAR, msg: `entry "a" twice`, leaves: []string{" d", "a f"}},
		{name: "duplicate directory", nar: narTop(narDir(narEnt("a", narDir()), narEnt("a", narDir(narEnt("x", narFile("")))))),
			kind: ErrBadNAR, msg: `entry "a" twice`, leaves: []string{" d", "a d"}},
		// The escape: "a" a symlink to the outside (or to /), then "a"
		// again as a directory, or "a/x": neither is ever created.
		{name: "symlink then directory of the same name", nar: narTop(narDir(narEnt("a", narLink(outside)), narEnt("a", narDir(narEnt("victim", narFile("overwritten")))))),
			kind: ErrBadNAR, msg: `entry "a" twice`, leaves: []string{" d", "a l -> " + outside}},
		{name: "symlink to / then a/x", nar: narTop(narDir(narEnt("a", narLink("/")), narEnt("a/x", narFile("planted")))),
			kind: ErrBadNAR, msg: "holds a slash", leaves: []string{" d", "a l -> /"}},
		{name: "symlink to .. then ../x", nar: narTop(narDir(narEnt("a", narLink("..")), narEnt("a/../x", narFile("planted")))),
			kind: ErrBadNAR, msg: "holds a slash", leaves: []string{" d", "a l -> .."}},
		{name: "symlink then file of the same name", nar: narTop(narDir(narEnt("victim", narLink(outside+"/victim")), narEnt("victim", narFile("overwritten")))),
			kind: ErrBadNAR, msg: `entry "victim" twice`, leaves: []string{" d", "victim l -> " + outside + "/victim"}},
		{name: "depth", nar: narNested(DefaultMaxDepth + 1), kind: ErrLimit,
			path: strings.Repeat("d/", DefaultMaxDepth-1) + "d", msg: "nested deeper than 256",
			left: func(t testing.TB, tree []string) {
				if len(tree) != DefaultMaxDepth {
					t.Errorf("%d directories left, want %d", len(tree), DefaultMaxDepth)
				}
			}},
		{name: "depth limit", nar: narNested(5), lim: Limits{MaxDepth: 4}, kind: ErrLimit, path: "d/d/d/d", msg: "nested deeper than 4",
			leaves: []string{" d", "d d", "d/d d", "d/d/d d"}},
		{name: "symlink target 4096", nar: narTop(narDir(narEnt("l", narLink(longTarget+"x")))),
			kind: ErrBadNAR, path: "l", msg: "a symlink target of 4096 bytes, longer than the 4095 allowed", leaves: []string{" d"}},
		{name: "top symlink target 4096", nar: narTop(narLink(strings.Repeat("t", 4096))),
			kind: ErrBadNAR, msg: "longer than the 4095 allowed"},
		{name: "empty symlink target", nar: narTop(narDir(narEnt("l", narLink("")))),
			kind: ErrBadNAR, path: "l", msg: "empty symlink target", leaves: []string{" d"}},
		{name: "NUL in symlink target", nar: narTop(narDir(narEnt("l", narLink("/etc\x00/passwd")))),
			kind: ErrBadNAR, path: "l", msg: "NUL", leaves: []string{" d"}},
		// Sizes that lie: contents longer than announced run into the
		// next field; shorter ones swallow the archive's tokens.
		{name: "contents longer than announced", nar: narBuild("nix-archive-1", "(", "type", "directory", "entry", "(", "name", "a", "node",
			"(", "type", "regular", "contents", uint64(2), []byte("hello\x00\x00\x00"), ")", ")", ")"),
			kind: ErrBadNAR, path: "a", msg: "non-zero padding", leaves: []string{" d", "a f"}},
		{name: "contents longer than announced, aligned", nar: narBuild("nix-archive-1", "(", "type", "directory", "entry", "(", "name", "a", "node",
			"(", "type", "regular", "contents", uint64(8), []byte("12345678abcdefgh"), ")", ")", ")"),
			kind: ErrBadNAR, path: "a", msg: "longer than the 16 allowed", leaves: []string{" d", "a f"}},
		{name: "contents shorter than announced", nar: append(narBuild("nix-archive-1", "(", "type", "directory", "entry", "(", "name", "a", "node",
			"(", "type", "regular", "contents", uint64(24), []byte("short\x00\x00\x00"), ")", ")"), append(narEnt("b", narFile("B")), narBuild(")")...)...),
			kind: ErrBadNAR, path: "a", msg: `"entry" where ")" belongs`, leaves: []string{" d", "a f"}},
		{name: "contents run past the end", nar: append(narBuild("nix-archive-1", "(", "type", "directory", "entry", "(", "name", "a", "node",
			"(", "type", "regular", "contents", uint64(1000), []byte("short\x00\x00\x00"), ")", ")"), append(narEnt("b", narFile("B")), narBuild(")")...)...),
			kind: ErrBadNAR, path: "a", msg: "truncated", leaves: []string{" d", "a f"}},
		{name: "top contents shorter than announced", nar: append(append(fileHdr, narBuild(uint64(1000))...), []byte("abc\x00\x00\x00\x00\x00")...),
			kind: ErrBadNAR, msg: "truncated", leaves: []string{" f"}},
		// More bytes than NarSize: the limit is checked before contents
		// are read, so the big file is never created.
		{name: "contents pass NarSize", nar: narTop(narDir(narEnt("a", narFile("A")), narEnt("big", narFile(strings.Repeat("x", 4096))))),
			lim: Limits{MaxBytes: 1024}, kind: ErrLimit, path: "big", msg: "pass the limit of 1024 bytes", leaves: []string{" d", "a f"}},
		{name: "tokens pass NarSize", nar: good, lim: Limits{MaxBytes: int64(len(good)) - 8}, kind: ErrLimit, msg: "more than the limit of",
			leaves: []string{" d", "a f", "b f"}},
		{name: "a huge size announced", nar: append(dirHdr, narEnt("a", narBuild("(", "type", "regular", "contents", uint64(1)<<62))...),
			lim: Limits{MaxBytes: 1 << 30}, kind: ErrLimit, path: "a", msg: "pass the limit", leaves: []string{" d"}},
		{name: "entries limit", nar: good, lim: Limits{MaxEntries: 2}, kind: ErrLimit, path: "b", msg: "more than the limit of 2 entries",
			leaves: []string{" d", "a f"}},
		// Trailing data: the whole tree exists when it is found.
		{name: "trailing garbage", nar: append(slices.Clone(good), "garbage!"...), kind: ErrBadNAR, msg: "data after the end of the archive",
			leaves: []string{" d", "a f", "b f"}},
		{name: "second archive", nar: append(narTop(narFile("x")), narTop(narLink(outside))...), kind: ErrBadNAR, msg: "data after the end",
			leaves: []string{" f"}},
		{name: "truncated after an entry", nar: good[:len(good)-8], kind: ErrBadNAR, msg: "truncated", leaves: []string{" d", "a f", "b f"}},
		{name: "wrong magic", nar: narBuild("nix-archive-0", narFile("")), kind: ErrBadNAR, msg: "not a NAR"},
		{name: "unknown node type", nar: narTop(narDir(narEnt("dev", narBuild("(", "type", "chardev", ")")))),
			kind: ErrBadNAR, path: "dev", msg: `unknown node type "chardev"`, leaves: []string{" d"}},
	}...)
	return cases
}

// TestUnpackHostile: Unpack refuses every hostile archive with an *Error
// naming the offset and entry, the Reader refuses it with the same error,
// what Unpack created is only under the target (as listed), nothing
// outside changed, and nothing created is writable by others, whatever
// the umask.
func TestUnpackHostile(t *testing.T) {
	old := unix.Umask(0)
	defer unix.Umask(old)
	sb := newSandbox(t)
	outside := filepath.Join(sb.root, "outside")
	var names []string
	for i, c := range hostileCases(outside) {
		name := fmt.Sprintf("case%d", i)
		names = append(names, name)
		t.Run(c.name, func(t *testing.T) {
			_, rerr := readAllNAR(c.nar, c.lim)
			// Mtime as repair asks for it: set on each node completed,
			// never through a symlink.
			h, n, err := Unpack(bytes.NewReader(c.nar), sb.fd, name, UnpackOptions{Limits: c.lim, Mtime: 1})
			if err == nil {
				t.Fatalf("accepted (%s, %d bytes)", h, n)
			}
			var e *Error
			if !errors.As(err, &e) || !errors.Is(err, c.kind) {
				t.Fatalf("err = %v, want an *Error wrapping %v", err, c.kind)
			}
			if e.Path != c.path || !strings.Contains(err.Error(), c.msg) {
				t.Errorf("err = %v (entry %q), want entry %q and %q", err, e.Path, c.path, c.msg)
			}
			if e.Offset < 0 || e.Offset > int64(len(c.nar)) || !strings.Contains(err.Error(), fmt.Sprintf("at byte %d ", e.Offset)) {
				t.Errorf("err = %v: offset %d not named, or outside the %d-byte input", err, e.Offset, len(c.nar))
			}
			if rerr == nil || rerr.Error() != err.Error() {
				t.Errorf("the Reader says %v, Unpack %v", rerr, err)
			}
			tree := sb.tree(t, name)
			if c.left != nil {
				c.left(t, tree)
			} else if !slices.Equal(tree, c.leaves) {
				t.Errorf("left %q, want %q", tree, c.leaves)
			}
			sb.check(t, names...)
		})
	}
}

// TestUnpackLimitBoundaries: what is exactly at a limit is accepted (a
// 4095-byte symlink target, MaxBytes = the NAR's size, the deepest
// nesting, a 255-byte name) and round-trips.
func TestUnpackLimitBoundaries(t *testing.T) {
	sb := newSandbox(t)
	target := strings.Repeat("../", 1365)
	good := narTop(narDir(
		narEnt("l", narLink(target)),
		narEnt("m", narLink("/"+strings.Repeat("t", MaxTargetLen-1))),
		narEnt(strings.Repeat("n", MaxNameLen), narFile("long name"))))
	deep := narNested(8)
	for i, c := range []struct {
		nar []byte
		lim Limits
	}{
		{good, Limits{MaxBytes: int64(len(good)), MaxEntries: 4}},
		{deep, Limits{MaxDepth: 8, MaxBytes: int64(len(deep)), MaxEntries: 8}},
		{narNested(DefaultMaxDepth), Limits{}},
	} {
		name := fmt.Sprintf("ok%d", i)
		h, n, err := Unpack(bytes.NewReader(c.nar), sb.fd, name, UnpackOptions{Limits: c.lim})
		if err != nil {
			t.Fatalf("%d: %v", i, err)
		}
		if h != Hash(sha256.Sum256(c.nar)) || n != int64(len(c.nar)) {
			t.Errorf("%d: %s %d", i, h, n)
		}
		var out bytes.Buffer
		if _, err := DumpPath(&out, filepath.Join(sb.work, name)); err != nil || !bytes.Equal(out.Bytes(), c.nar) {
			t.Errorf("%d: dump differs (%v)", i, err)
		}
	}
	if l, err := os.Readlink(filepath.Join(sb.work, "ok0/l")); err != nil || l != target {
		t.Errorf("the 4095-byte target: %d bytes, %v", len(l), err)
	}
	sb.check(t, "ok0", "ok1", "ok2")
}

// TestUnpackTruncatedEverywhere cuts good archives (the golden NARs that
// nix-store --dump wrote and one with every kind of node and nesting) at
// every byte offset: each cut is an error wrapping ErrBadNAR and
// io.ErrUnexpectedEOF, never a panic or a success, and nothing is created
// outside the cut's target name.
func TestUnpackTruncatedEverywhere(t *testing.T) {
	sb := newSandbox(t)
	nars := goldenNARs(t)
	nars["mixed"] = narTop(narDir(
		narEnt("bin", narDir(narEnt("sh", narBuild("(", "type", "regular", "executable", "", "contents", "#!/bin/sh\n", ")")))),
		narEnt("empty", narDir()),
		narEnt("etc", narLink("/etc")),
		narEnt("f", narFile("1234567")),
		narEnt("g", narFile("12345678")),
		narEnt("up", narLink("..")),
		narEnt("z", narDir(narEnt("y", narDir(narEnt("x", narFile("deep"))))))))
	var names []string
	n := 0
	for _, k := range slices.Sorted(func(yield func(string) bool) {
		for k := range nars {
			if !yield(k) {
				return
			}
		}
	}) {
		nar := nars[k]
		cuts := make([]int, 0, len(nar))
		for i := range len(nar) {
			// tree.nar (12 KB, its fields are those of the small ones)
			// is cut once per 56 bytes, at each alignment in turn.
			if len(nar) <= 4096 || i%56 == (i/56)%8 {
				cuts = append(cuts, i)
			}
		}
		for _, cut := range cuts {
			name := fmt.Sprintf("cut%d", n)
			n++
			names = append(names, name)
			_, _, err := Unpack(bytes.NewReader(nar[:cut]), sb.fd, name, UnpackOptions{Limits: Limits{MaxBytes: int64(len(nar))}})
			if !errors.Is(err, ErrBadNAR) || !errors.Is(err, io.ErrUnexpectedEOF) {
				t.Fatalf("%s cut at %d: %v, want a truncation", k, cut, err)
			}
		}
	}
	sb.check(t, names...)
}
