package optimise

import (
	"context"
	"encoding/binary"
	"hash/crc32"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"

	"storekeeper/store/storetest"
)

// dirPaths counts the valid paths whose top level is a directory: the
// ones the linked-paths state records.
func dirPaths(t *testing.T, b *storetest.Built) int {
	t.Helper()
	n := 0
	for _, p := range b.Valid {
		var st unix.Stat_t
		if err := unix.Lstat(b.Layout.RealPath(p), &st); err != nil {
			t.Fatal(err)
		}
		if st.Mode&unix.S_IFMT == unix.S_IFDIR {
			n++
		}
	}
	return n
}

// sameCounts checks that a run that skipped unchanged paths reports what
// a full walk of the same store reports.
func sameCounts(t *testing.T, skip, full *Result) {
	t.Helper()
	if skip.FilesSeen != full.FilesSeen || skip.AlreadyLinked != full.AlreadyLinked || skip.SkippedSmall != full.SkippedSmall || skip.Paths != full.Paths {
		t.Errorf("skipping run counted paths %d, seen %d, linked %d, small %d; a full walk %d, %d, %d, %d",
			skip.Paths, skip.FilesSeen, skip.AlreadyLinked, skip.SkippedSmall, full.Paths, full.FilesSeen, full.AlreadyLinked, full.SkippedSmall)
	}
}

func TestUnchangedPathsAreNotWalkedAgain(t *testing.T) {
	b, s := fixture(t, dupSpec())
	ctx := context.Background()
	dirs := dirPaths(t, b)
	first, err := Optimise(ctx, s, Options{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if first.PathsUnchanged != 0 || first.FilesLinked == 0 {
		t.Fatalf("first run: %d unchanged, %d linked", first.PathsUnchanged, first.FilesLinked)
	}
	second, err := Optimise(ctx, s, Options{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if second.PathsUnchanged != dirs || second.FilesHashed != 0 {
		t.Errorf("second run: %d of %d directory paths unchanged, %d files hashed", second.PathsUnchanged, dirs, second.FilesHashed)
	}
	// Skipping keeps the records: a third run skips as much.
	third, err := Optimise(ctx, s, Options{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if third.PathsUnchanged != dirs {
		t.Errorf("third run: %d of %d directory paths unchanged", third.PathsUnchanged, dirs)
	}
	full, err := Optimise(ctx, s, Options{Full: true}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if full.PathsUnchanged != 0 || full.FilesHashed != 0 || full.FilesLinked != 0 {
		t.Errorf("--full run: %d unchanged, %d hashed, %d linked", full.PathsUnchanged, full.FilesHashed, full.FilesLinked)
	}
	sameCounts(t, second, full)
	// Another --min-size walks everything again.
	other, err := Optimise(ctx, s, Options{MinSize: 1}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if other.PathsUnchanged != 0 {
		t.Errorf("run with another --min-size skipped %d paths", other.PathsUnchanged)
	}
	// A dry run uses the state but never writes it.
	os.Remove(filepath.Join(s.Layout.OwnStateDir(), linkedStateName))
	if _, err := Optimise(ctx, s, Options{DryRun: true}, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(s.Layout.OwnStateDir(), linkedStateName)); err == nil {
		t.Errorf("a dry run wrote the linked-paths state")
	}
	checkStore(t, s)
}

// A path is walked again when what made it skippable no longer holds: a
// .links entry its files use is gone, or the path is a new directory (as
// after a repair) with unlinked files.
func TestChangedPathsAreWalkedAgain(t *testing.T) {
	b, s := fixture(t, dupSpec())
	ctx := context.Background()
	if _, err := Optimise(ctx, s, Options{}, nil); err != nil {
		t.Fatal(err)
	}
	nodes := scan(t, b)
	// A file in a directory path, and another directory path.
	var victim node
	var other string
	for _, n := range nodes {
		top := storePathOf(b, n.path)
		if top != n.path && n.mode&unix.S_IFMT == unix.S_IFREG {
			if victim.path == "" {
				victim = n
			} else if top != storePathOf(b, victim.path) {
				other = top
				break
			}
		}
	}
	if victim.path == "" || other == "" {
		t.Fatal("fixture has no two directory paths with files")
	}
	// 1. The .links entry of victim's contents is removed (as verify
	// --repair does with a damaged one).
	if err := os.Remove(filepath.Join(s.Layout.LinksDir(), victim.hash)); err != nil {
		t.Fatal(err)
	}
	// 2. other is replaced by a fresh copy: a new directory whose files
	// are linked to nothing.
	writable(t, other)
	old := other + ".old"
	if err := os.Rename(other, old); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("cp", "-r", "--preserve=mode", old, other).CombinedOutput(); err != nil {
		t.Fatalf("cp: %v: %s", err, out)
	}
	if out, err := exec.Command("rm", "-rf", old).CombinedOutput(); err != nil {
		t.Fatalf("rm: %v: %s", err, out)
	}
	storetest.Canonicalise(other)

	res, err := Optimise(ctx, s, Options{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if res.PathsUnchanged == 0 || res.PathsUnchanged >= dirPaths(t, b)-1 {
		t.Errorf("%d paths skipped as unchanged; want all but the two changed ones (and those sharing the removed entry)", res.PathsUnchanged)
	}
	checkAllLinked(t, b, s)
	checkStore(t, s)
}

// storePathOf returns the physical store path that holds the physical
// path p.
func storePathOf(b *storetest.Built, p string) string {
	rel, _ := filepath.Rel(b.Layout.RealStoreDir, p)
	for i := 0; i < len(rel); i++ {
		if rel[i] == '/' {
			return filepath.Join(b.Layout.RealStoreDir, rel[:i])
		}
	}
	return p
}

// A path with a suspicious file is never recorded: every run looks at it
// (and reports it) again.
func TestSuspiciousPathIsNotRecorded(t *testing.T) {
	b, s := fixture(t, dupSpec())
	ctx := context.Background()
	a, _ := dupPair(t, scan(t, b))
	if storePathOf(b, a.path) == a.path {
		t.Skip("the duplicate is a top-level file")
	}
	if err := os.Chmod(a.path, 0o644); err != nil {
		t.Fatal(err)
	}
	for run := 0; run < 2; run++ {
		res, err := Optimise(ctx, s, Options{}, nil)
		if err != nil {
			t.Fatal(err)
		}
		found := false
		for _, n := range res.Notices {
			found = found || (n.Kind == KindSuspicious && n.Path == a.path)
		}
		if !found {
			t.Errorf("run %d did not report the writable file", run+1)
		}
	}
}

func TestLinkedStateRoundTripAndDamage(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, linkedStateName)
	st := &linkedState{recs: map[string]*linkedRec{
		"aaaa-one": {dbID: 7, top: 1234, minSize: 0, files: 3, small: 0, inodes: []uint64{5, 9, 1 << 40}},
		"bbbb-two": {dbID: 1 << 33, top: 99, minSize: 4096, files: 0, small: 2, inodes: nil},
	}}
	if err := st.save(p, 1); err != nil {
		t.Fatal(err)
	}
	got := loadLinkedState(p)
	if len(got.recs) != 2 {
		t.Fatalf("loaded %d records", len(got.recs))
	}
	one := got.recs["aaaa-one"]
	if one == nil || one.dbID != 7 || one.top != 1234 || one.files != 3 || len(one.inodes) != 3 || one.inodes[2] != 1<<40 {
		t.Errorf("record aaaa-one: %+v", one)
	}
	two := got.recs["bbbb-two"]
	if two == nil || two.dbID != 1<<33 || two.minSize != 4096 || two.small != 2 {
		t.Errorf("record bbbb-two: %+v", two)
	}
	links := newInodeSet(8)
	for _, i := range []uint64{5, 9, 1 << 40} {
		links.add(i)
	}
	if !one.unchanged(7, 1234, 0, links) {
		t.Errorf("unchanged record judged changed")
	}
	for _, c := range []struct {
		name       string
		dbID       int64
		top        uint64
		minSize    int64
		dropInodes bool
	}{
		{"registered again", 8, 1234, 0, false},
		{"new directory", 7, 1235, 0, false},
		{"other --min-size", 7, 1234, 1, false},
		{".links entry gone", 7, 1234, 0, true},
	} {
		l := links
		if c.dropInodes {
			l = newInodeSet(8)
			l.add(5)
			l.add(9)
		}
		if one.unchanged(c.dbID, c.top, c.minSize, l) {
			t.Errorf("%s: judged unchanged", c.name)
		}
	}
	// Any damaged byte (or a torn file) makes the state empty, not wrong.
	b, _ := os.ReadFile(p)
	for i := range b {
		bad := append([]byte(nil), b...)
		bad[i] ^= 0x20
		os.WriteFile(p, bad, 0o644)
		if n := len(loadLinkedState(p).recs); n != 0 {
			t.Fatalf("byte %d damaged: %d records loaded", i, n)
		}
	}
	os.WriteFile(p, b[:len(b)-3], 0o644)
	if n := len(loadLinkedState(p).recs); n != 0 {
		t.Errorf("torn file: %d records loaded", n)
	}
}

// FuzzLoadLinkedState feeds the decoder record bodies with a valid
// checksum: none makes it panic or allocate without bound, and what it
// loads saves back to a file that loads the same.
func FuzzLoadLinkedState(f *testing.F) {
	st := &linkedState{recs: map[string]*linkedRec{"x-y": {dbID: 1, top: 2, files: 1, inodes: []uint64{3}}}}
	b := st.marshal()
	f.Add(b[len(linkedStateMagic) : len(b)-4])
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, body []byte) {
		b := append([]byte(linkedStateMagic), body...)
		b = binary.LittleEndian.AppendUint32(b, crc32.Checksum(b, crcTable))
		p := filepath.Join(t.TempDir(), "s")
		os.WriteFile(p, b, 0o644)
		got := loadLinkedState(p)
		if err := got.save(p, 1); err != nil {
			t.Fatal(err)
		}
		again := loadLinkedState(p)
		if len(again.recs) != len(got.recs) {
			t.Fatalf("%d records, %d after a save", len(got.recs), len(again.recs))
		}
	})
}
