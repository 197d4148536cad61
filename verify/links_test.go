package verify

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"hash/crc32"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"storekeeper/nix/nar"
	"storekeeper/nix/storepath"
	"storekeeper/report"
	"storekeeper/verify/finding"
)

// linkEvery hard-links every regular file of the store's valid paths
// into .links under its NAR hash, as optimise does, and returns the
// entries made (name -> a store file it is).
func linkEvery(t *testing.T, f *fixture) map[string]string {
	t.Helper()
	links := f.b.Layout.LinksDir()
	if err := os.MkdirAll(links, 0o755); err != nil {
		t.Fatal(err)
	}
	made := map[string]string{}
	for _, p := range f.b.Valid {
		filepath.Walk(f.real(p), func(q string, fi os.FileInfo, err error) error {
			if err != nil || !fi.Mode().IsRegular() {
				return nil
			}
			h, _, err := nar.HashPath(q)
			if err != nil {
				t.Fatal(err)
			}
			name := h.Base32()
			if _, ok := made[name]; ok {
				return nil
			}
			if err := os.Link(q, filepath.Join(links, name)); err != nil {
				t.Fatal(err)
			}
			made[name] = q
			return nil
		})
	}
	if len(made) < 10 {
		t.Fatalf("only %d files to link", len(made))
	}
	return made
}

// TestLinksHashedInPathReads: on a store where every file is a .links
// entry (after optimise), the entries are checked from the paths' reads:
// a clean store is clean, every entry counted; an entry whose name is not
// its inode's hash is found (also when its inode is a valid path's file);
// a file damaged in place is found both in its path and as its entry.
func TestLinksHashedInPathReads(t *testing.T) {
	for _, record := range []bool{false, true} {
		f := newFixture(t, smallSpec())
		made := linkEvery(t, f)
		o := Options{CheckContents: true, NoRecord: !record}
		res := f.verify(o)
		if len(res.Findings) != 0 || res.Summary.Links != len(made) {
			t.Fatalf("record=%v: clean optimised store: links %d of %d, findings %+v", record, res.Summary.Links, len(made), res.Findings)
		}

		// A store file linked under a name that is not its hash (as a
		// hostile or broken optimise would leave it: the next optimise
		// would link a file of that hash to these contents).
		var victim, other string
		for name, q := range made {
			if victim == "" {
				victim = q
			} else if other == "" && name != "" {
				other = name
			}
		}
		wrong := strings.Repeat("0", 52)
		if err := os.Link(victim, filepath.Join(f.b.Layout.LinksDir(), wrong)); err != nil {
			t.Fatal(err)
		}
		k := byKind(f.verify(o))
		if len(k[finding.KindLinkModified]) != 1 || k[finding.KindLinkModified][0].Expected != wrong || len(k) != 1 {
			t.Fatalf("record=%v: a store file under a wrong name: %+v", record, k)
		}
		os.Remove(filepath.Join(f.b.Layout.LinksDir(), wrong))

		// Damage in place: the inode is both a path's file and an entry.
		q := made[other]
		os.Chmod(q, 0o644)
		data, err := os.ReadFile(q)
		if err != nil || len(data) == 0 {
			t.Fatalf("%s: %v (%d bytes)", q, err, len(data))
		}
		data[0] ^= 0xff
		if err := os.WriteFile(q, data, 0o644); err != nil {
			t.Fatal(err)
		}
		os.Chmod(q, 0o444)
		k = byKind(f.verify(o))
		if len(k[finding.KindLinkModified]) != 1 || k[finding.KindLinkModified][0].Expected != other || len(k[finding.KindModified]) < 1 {
			t.Fatalf("record=%v: a linked file damaged in place: %+v", record, k)
		}
	}
}

// listedLinks returns a verifier of a fixture whose every file is linked
// (linkEvery), with its .links entries listed, and the entries made.
func listedLinks(t *testing.T) (*verifier, map[string]string) {
	t.Helper()
	f := newFixture(t, smallSpec())
	made := linkEvery(t, f)
	v := &verifier{lay: f.b.Layout, o: Options{Jobs: 2}, prog: report.Discard}
	if err := v.listLinks(); err != nil || v.links == nil {
		t.Fatalf("listLinks: %v", err)
	}
	return v, made
}

// TestCheckLinksUsesOnlyTheSameInode: a result computed in a path's read
// is used only while the entry is still the inode it was computed from;
// otherwise the entry is read again.
func TestCheckLinksUsesOnlyTheSameInode(t *testing.T) {
	v, made := listedLinks(t)
	s := v.links
	var st unix.Stat_t
	if err := unix.Stat(filepath.Join(s.dir, s.names[0]), &st); err != nil {
		t.Fatal(err)
	}
	// Entry 0: a wrong hash for its real inode (in its state now): used,
	// so reported.
	s.res[0] = linkResult{ok: true, key: keyOf(&st)}
	// Entry 1: a wrong hash for another inode (replaced meanwhile, or
	// overlayfs's listing): not used, so read again and clean.
	s.res[1] = linkResult{ok: true, key: linkKey{dev: uint64(st.Dev), ino: st.Ino + 1<<40}}
	if err := v.checkLinks(context.Background()); err != nil {
		t.Fatal(err)
	}
	if len(v.findings) != 1 || v.findings[0].Expected != s.names[0] || v.sum.Links != len(made) {
		t.Fatalf("links %d of %d, findings %+v", v.sum.Links, len(made), v.findings)
	}
}

// linkRun is how one run hashed the claimed .links entries.
type linkRun struct{ skipped, inRead, readOwn, recorded int64 }

func lastLinkRun() linkRun {
	return linkRun{testLinksSkipped.Load(), testLinksInRead.Load(), testLinksReadOwn.Load(), testLinksRecorded.Load()}
}

func linkRecordPath(f *fixture) string {
	return filepath.Join(f.b.Layout.OwnStateDir(), linkRecordName)
}

// readRecord decodes the fixture's links record, failing the test if it
// is missing or invalid.
func readRecord(t *testing.T, f *fixture) map[[32]byte]linkKey {
	t.Helper()
	b, err := os.ReadFile(linkRecordPath(f))
	if err != nil {
		t.Fatal(err)
	}
	m, err := decodeLinkRecord(b)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// currentRecord is a record of every .links entry with its inode's state
// now, as if each had been found matching its name as it is.
func currentRecord(t *testing.T, f *fixture) map[[32]byte]linkKey {
	t.Helper()
	dir := f.b.Layout.LinksDir()
	names, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	m := map[[32]byte]linkKey{}
	for _, e := range names {
		b, err := storepath.DecodeBase32(e.Name())
		if err != nil || len(b) != 32 {
			t.Fatalf("%s: %v", e.Name(), err)
		}
		var st unix.Stat_t
		if err := unix.Lstat(filepath.Join(dir, e.Name()), &st); err != nil {
			t.Fatal(err)
		}
		m[[32]byte(b)] = keyOf(&st)
	}
	return m
}

// cleanRun verifies, wants no findings and every entry counted, and
// returns how the entries were hashed.
func cleanRun(t *testing.T, f *fixture, o Options, made map[string]string, what string) linkRun {
	t.Helper()
	res := f.verify(o)
	if len(res.Findings) != 0 || res.Summary.Links != len(made) {
		t.Fatalf("%s: links %d of %d, findings %+v", what, res.Summary.Links, len(made), res.Findings)
	}
	return lastLinkRun()
}

// TestLinkRecordSkipsKnownEntries: a recording run records every entry it
// found matching from a clean path's read; a later run, recording or
// not, hashes none of them again (no FileHasher, no read of its own),
// stays clean and counts every entry; the record is rewritten whole.
func TestLinkRecordSkipsKnownEntries(t *testing.T) {
	f := newFixture(t, smallSpec())
	made := linkEvery(t, f)
	n := int64(len(made))
	rec := Options{CheckContents: true}
	if r := cleanRun(t, f, rec, made, "first run"); r != (linkRun{0, n, 0, n}) {
		t.Fatalf("first run: %+v, want all %d hashed in the paths' reads and recorded", r, n)
	}
	if m := readRecord(t, f); len(m) != len(made) {
		t.Fatalf("record of %d entries, want %d", len(m), len(made))
	}
	os.Remove(linkRecordPath(f))
	// Without a record (but with manifests now): hashed again, recorded.
	if r := cleanRun(t, f, rec, made, "record removed"); r != (linkRun{0, n, 0, n}) {
		t.Fatalf("record removed: %+v", r)
	}
	if r := cleanRun(t, f, rec, made, "second run"); r != (linkRun{n, 0, 0, n}) {
		t.Fatalf("second run: %+v, want all %d skipped and recorded again", r, n)
	}
	if m := readRecord(t, f); len(m) != len(made) {
		t.Fatalf("rewritten record of %d entries, want %d", len(m), len(made))
	}
	if r := cleanRun(t, f, Options{CheckContents: true, NoRecord: true}, made, "--no-record"); r != (linkRun{n, 0, 0, 0}) {
		t.Fatalf("--no-record run: %+v, want all %d skipped", r, n)
	}
}

// TestLinkRecordSoundness: what the record knows never hides damage.
func TestLinkRecordSoundness(t *testing.T) {
	for _, record := range []bool{false, true} {
		f := newFixture(t, smallSpec())
		made := linkEvery(t, f)
		o := Options{CheckContents: true, NoRecord: !record}
		cleanRun(t, f, Options{CheckContents: true}, made, "recording run")
		saved, err := os.ReadFile(linkRecordPath(f))
		if err != nil {
			t.Fatal(err)
		}
		restore := func() {
			if err := os.WriteFile(linkRecordPath(f), saved, 0o644); err != nil {
				t.Fatal(err)
			}
		}
		names := make([]string, 0, len(made))
		for name := range made {
			names = append(names, name)
		}
		sort.Strings(names)

		// A store file hard-linked under a wrong name: the name is in
		// no record, so it is hashed (and the record knows every other
		// entry as it is now, so all are skipped but the two of that
		// inode: the read claims the first listed, the wrong name, and
		// hashes it; the right one is read on its own).
		wrong := strings.Repeat("0", 52)
		wl := filepath.Join(f.b.Layout.LinksDir(), wrong)
		if err := os.Link(made[names[0]], wl); err != nil {
			t.Fatal(err)
		}
		cur := currentRecord(t, f)
		delete(cur, [32]byte{})
		if err := writeLinkRecord(f.b.Layout.OwnStateDir(), cur); err != nil {
			t.Fatal(err)
		}
		k := byKind(f.verify(o))
		if len(k[finding.KindLinkModified]) != 1 || k[finding.KindLinkModified][0].Expected != wrong || len(k) != 1 {
			t.Fatalf("record=%v: a store file under a wrong name: %+v", record, k)
		}
		if r := lastLinkRun(); r.skipped != int64(len(made)-1) || r.inRead != 1 || r.readOwn != 1 {
			t.Fatalf("record=%v: wrong name: %+v, want %d right entries skipped", record, r, len(made)-1)
		}
		// The same wrong name known from a record for the same inode
		// number in another state (as after the number was reused by a
		// new file, or the inode changed): hashed, reported.
		for _, change := range []func(k *linkKey){
			func(k *linkKey) { k.ctSec-- },
			func(k *linkKey) { k.ctNsec ^= 1 },
			func(k *linkKey) { k.size++ },
		} {
			var st unix.Stat_t
			if err := unix.Lstat(wl, &st); err != nil {
				t.Fatal(err)
			}
			key := keyOf(&st)
			change(&key)
			cur[[32]byte{}] = key
			if err := writeLinkRecord(f.b.Layout.OwnStateDir(), cur); err != nil {
				t.Fatal(err)
			}
			k := byKind(f.verify(o))
			if len(k[finding.KindLinkModified]) != 1 || k[finding.KindLinkModified][0].Expected != wrong || len(k) != 1 {
				t.Fatalf("record=%v: a wrong name known for another state of its inode: %+v", record, k)
			}
		}
		os.Remove(wl)
		restore()

		// An entry replaced by another inode (same name, other
		// contents): not the recorded inode, so hashed, and reported.
		repl := filepath.Join(f.b.Layout.LinksDir(), names[1])
		tmp := repl + ".new"
		if err := os.Link(made[names[2]], tmp); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, repl); err != nil {
			t.Fatal(err)
		}
		k = byKind(f.verify(o))
		if len(k[finding.KindLinkModified]) != 1 || k[finding.KindLinkModified][0].Expected != names[1] || len(k) != 1 {
			t.Fatalf("record=%v: an entry replaced by another inode: %+v", record, k)
		}
		if err := os.Remove(repl); err != nil {
			t.Fatal(err)
		}
		if err := os.Link(made[names[1]], repl); err != nil {
			t.Fatal(err)
		}
		cleanRun(t, f, Options{CheckContents: true}, made, "entry restored")
		saved, _ = os.ReadFile(linkRecordPath(f))

		// A linked file damaged in place after the recorded run: its
		// path and its entry are reported. It is one of two linked
		// files of a path, so that the other's entry is found matching
		// in the read of a path that failed.
		byDir := map[string][]string{}
		for _, name := range names {
			byDir[filepath.Dir(made[name])] = append(byDir[filepath.Dir(made[name])], name)
		}
		var victim, sibling string
		for _, name := range names {
			if d := byDir[filepath.Dir(made[name])]; len(d) >= 2 {
				victim, sibling = d[0], d[1]
				break
			}
		}
		if victim == "" {
			t.Fatal("no path with two linked files")
		}
		flipByte(t, made[victim])
		checkDamage := func(what string) {
			t.Helper()
			k := byKind(f.verify(o))
			if len(k[finding.KindLinkModified]) != 1 || k[finding.KindLinkModified][0].Expected != victim || len(k[finding.KindModified]) < 1 {
				t.Fatalf("record=%v: %s: %+v", record, what, k)
			}
		}
		checkDamage("a linked file damaged in place")
		restore()
		// A record crafted to know the damaged inode as it is now (as
		// bit rot, which leaves the ctime alone, would leave it): the
		// skip is taken, but the path failed, so the entry is read on
		// its own and reported.
		if err := writeLinkRecord(f.b.Layout.OwnStateDir(), currentRecord(t, f)); err != nil {
			t.Fatal(err)
		}
		checkDamage("damage the record knows the inode state of")
		if r := lastLinkRun(); r.skipped != int64(len(made)) || r.readOwn < 1 {
			t.Fatalf("record=%v: crafted record: %+v, want all skipped and the damaged one read on its own", record, r)
		}
		if record {
			// Recorded only the entries of clean paths: not the
			// sibling's, although it matched its name in the read.
			os.Remove(linkRecordPath(f))
			checkDamage("without a record")
			if r := lastLinkRun(); r.skipped != 0 || r.readOwn != 0 {
				t.Fatalf("without a record: %+v", r)
			}
			m := readRecord(t, f)
			for _, name := range []string{victim, sibling} {
				b, _ := storepath.DecodeBase32(name)
				if _, ok := m[[32]byte(b)]; ok || len(m) == 0 {
					t.Fatalf("the damaged path's entry %s was recorded (%d recorded)", name, len(m))
				}
			}
		}
	}
}

// TestLinkRecordInvalidIgnored: a record that is not a whole, valid one
// of this format (damaged, truncated, too big, foreign magic or version,
// not a regular file) is ignored: every entry is hashed, nothing is
// reported, and the next recording run replaces it with a valid one.
func TestLinkRecordInvalidIgnored(t *testing.T) {
	f := newFixture(t, smallSpec())
	made := linkEvery(t, f)
	n := int64(len(made))
	rec := Options{CheckContents: true}
	cleanRun(t, f, rec, made, "recording run")
	good, err := os.ReadFile(linkRecordPath(f))
	if err != nil {
		t.Fatal(err)
	}
	withCRC := func(b []byte) []byte {
		b = b[:len(b)-4]
		return binary.LittleEndian.AppendUint32(b, crc32.Checksum(b, crcTable))
	}
	mod := func(fn func(b []byte) []byte) []byte { return fn(append([]byte(nil), good...)) }
	limit := linkRecordLimit(len(made))
	bad := map[string][]byte{
		"a flipped bit": mod(func(b []byte) []byte { b[len(b)/2] ^= 1; return b }),
		"truncated":     good[:len(good)-1],
		"half":          good[:len(good)/2],
		"header only":   good[:linkRecordHeader],
		"empty":         {},
		"wrong magic":   mod(func(b []byte) []byte { b[0] = 'X'; return withCRC(b) }),
		"wrong version": mod(func(b []byte) []byte { b[8] = 2; return withCRC(b) }),
		"wrong count": mod(func(b []byte) []byte {
			binary.LittleEndian.PutUint32(b[12:], uint32(n-1))
			return withCRC(b)
		}),
		"duplicate record": mod(func(b []byte) []byte {
			copy(b[linkRecordHeader:], b[linkRecordHeader+linkRecordSize:linkRecordHeader+2*linkRecordSize])
			return withCRC(b)
		}),
		// Valid records, padded past the limit (the count says so).
		"too big": mod(func(b []byte) []byte {
			b = b[:len(b)-4]
			for int64(len(b)) <= limit {
				b = append(b, b[linkRecordHeader:linkRecordHeader+linkRecordSize]...)
				b[linkRecordHeader+len(b)%32]++ // distinct hashes
			}
			binary.LittleEndian.PutUint32(b[12:], uint32((len(b)-linkRecordHeader)/linkRecordSize))
			return binary.LittleEndian.AppendUint32(b, crc32.Checksum(b, crcTable))
		}),
	}
	if m, err := decodeLinkRecord(bad["too big"]); err != nil || int64(len(bad["too big"])) <= limit || len(m) == 0 {
		t.Fatalf("the oversized record is not otherwise valid: %v", err)
	}
	for what, b := range bad {
		if err := os.WriteFile(linkRecordPath(f), b, 0o644); err != nil {
			t.Fatal(err)
		}
		if r := cleanRun(t, f, Options{CheckContents: true, NoRecord: true}, made, what); r != (linkRun{0, n, 0, 0}) {
			t.Fatalf("%s: %+v, want every entry hashed", what, r)
		}
		if r := cleanRun(t, f, rec, made, what+", recording"); r != (linkRun{0, n, 0, n}) {
			t.Fatalf("%s, recording: %+v, want every entry hashed and recorded", what, r)
		}
		if m := readRecord(t, f); len(m) != len(made) {
			t.Fatalf("%s: rewritten record of %d entries, want %d", what, len(m), len(made))
		}
	}
	// Not a regular file: a symbolic link to the good record, a fifo.
	p := linkRecordPath(f)
	os.WriteFile(p+".real", good, 0o644)
	for what, mk := range map[string]func() error{
		"symlink": func() error { return os.Symlink(p+".real", p) },
		"fifo":    func() error { return unix.Mkfifo(p, 0o644) },
	} {
		os.Remove(p)
		if err := mk(); err != nil {
			t.Fatal(err)
		}
		if r := cleanRun(t, f, Options{CheckContents: true, NoRecord: true}, made, what); r != (linkRun{0, n, 0, 0}) {
			t.Fatalf("%s: %+v, want every entry hashed", what, r)
		}
	}
}

// TestLinkRecordCrash: a crash at any step of writing the record leaves
// the old record or the new one, whole; an old record never hides a
// change made after it (the changed inode is hashed again) nor reports
// anything false.
func TestLinkRecordCrash(t *testing.T) {
	for _, step := range []string{"half", "synced", "renamed"} {
		f := newFixture(t, smallSpec())
		made := linkEvery(t, f)
		n := int64(len(made))
		rec := Options{CheckContents: true}
		cleanRun(t, f, rec, made, "recording run")
		old, err := os.ReadFile(linkRecordPath(f))
		if err != nil {
			t.Fatal(err)
		}
		// Replace a path's file by a copy (a new inode, as repair
		// leaves it), with its entry linked to the copy: the next
		// record has another key for it.
		var name string
		for name = range made {
			break
		}
		q := made[name]
		data, err := os.ReadFile(q)
		if err != nil {
			t.Fatal(err)
		}
		fi, _ := os.Stat(q)
		writable(t, filepath.Dir(q), func() {
			os.Remove(q)
			if err := os.WriteFile(q, data, fi.Mode().Perm()); err != nil {
				t.Fatal(err)
			}
			os.Chmod(q, fi.Mode().Perm())
			os.Chtimes(q, time.Unix(1, 0), time.Unix(1, 0))
		})
		lp := filepath.Join(f.b.Layout.LinksDir(), name)
		os.Remove(lp)
		if err := os.Link(q, lp); err != nil {
			t.Fatal(err)
		}

		crashed := errors.New("crashed")
		testReplaceCrash = func(name, s string) {
			if name == linkRecordName && s == step {
				panic(crashed)
			}
		}
		func() {
			defer func() {
				if r := recover(); r != crashed {
					t.Fatalf("%s: not crashed: %v", step, r)
				}
			}()
			f.verify(rec)
		}()
		testReplaceCrash = func(string, string) {}
		now, err := os.ReadFile(linkRecordPath(f))
		if err != nil {
			t.Fatal(err)
		}
		m, err := decodeLinkRecord(now)
		if err != nil || len(m) != len(made) {
			t.Fatalf("%s: record after the crash: %v, %d entries", step, err, len(m))
		}
		// The old record, byte for byte, or the new one: the only
		// entry whose key changed has its new key.
		oldM, err := decodeLinkRecord(old)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := storepath.DecodeBase32(name)
		isNew := m[[32]byte(b)] != oldM[[32]byte(b)]
		if want := step == "renamed"; isNew != want || (!isNew && !bytes.Equal(now, old)) {
			t.Fatalf("%s: the new record is in place: %v, want %v", step, isNew, want)
		}
		for h, k := range m {
			if k != oldM[h] && h != [32]byte(b) {
				t.Fatalf("%s: an unchanged entry's key changed", step)
			}
		}

		// With the old record in place, the copy (not the recorded
		// inode) is hashed, the rest skipped; and then damaged in
		// place, it is reported.
		if err := os.WriteFile(linkRecordPath(f), old, 0o644); err != nil {
			t.Fatal(err)
		}
		no := Options{CheckContents: true, NoRecord: true}
		if r := cleanRun(t, f, no, made, step+": old record"); r != (linkRun{n - 1, 1, 0, 0}) {
			t.Fatalf("%s: old record: %+v, want all but the new inode skipped", step, r)
		}
		flipByte(t, q)
		k := byKind(f.verify(no))
		if len(k[finding.KindLinkModified]) != 1 || k[finding.KindLinkModified][0].Expected != name || len(k[finding.KindModified]) != 1 {
			t.Fatalf("%s: old record, damage after it: %+v", step, k)
		}
	}
}

// optimiseAll links every regular file and symlink of the store's valid
// paths into .links as Nix's optimise does on Linux: a file whose
// contents an entry already has is replaced by a hard link to it, so
// shared contents are one inode held by several paths. It returns the
// entries (name -> one store file it is) and the files of regular
// entries held by two or more paths.
func optimiseAll(t *testing.T, f *fixture) (made map[string]string, shared []string) {
	t.Helper()
	links := f.b.Layout.LinksDir()
	if err := os.MkdirAll(links, 0o755); err != nil {
		t.Fatal(err)
	}
	made = map[string]string{}
	holders := map[string]int{}
	touched := map[string]bool{}
	defer func() {
		// Canonical again, as optimise leaves them.
		for d := range touched {
			os.Chmod(d, 0o555)
			os.Chtimes(d, time.Unix(1, 0), time.Unix(1, 0))
		}
	}()
	for _, p := range f.b.Valid {
		filepath.Walk(f.real(p), func(q string, fi os.FileInfo, err error) error {
			if err != nil || !(fi.Mode().IsRegular() || fi.Mode()&os.ModeSymlink != 0) {
				return nil
			}
			h, _, err := nar.HashPath(q)
			if err != nil {
				t.Fatal(err)
			}
			name := h.Base32()
			e := filepath.Join(links, name)
			if _, ok := made[name]; !ok {
				if err := os.Link(q, e); err != nil {
					t.Fatal(err)
				}
				made[name] = q
			} else {
				touched[filepath.Dir(q)] = true
				os.Chmod(filepath.Dir(q), 0o755)
				if err := os.Link(e, q+".tmp"); err != nil {
					t.Fatal(err)
				}
				if err := os.Rename(q+".tmp", q); err != nil {
					t.Fatal(err)
				}
				if fi.Mode().IsRegular() {
					holders[name]++
					if holders[name] == 1 {
						shared = append(shared, name)
					}
				}
			}
			return nil
		})
	}
	return made, shared
}

// TestLinksVariedStore: on a fully optimised store (executable files,
// files read in the io_uring batch and files read while the NAR is
// written, symlink entries, inodes held by several paths), with and
// without --metadata, a recording run and a run skipping by the record
// are both clean; a large shared file damaged in place is reported as
// its entry and in every path holding it, in both kinds of run.
func TestLinksVariedStore(t *testing.T) {
	spec := smallSpec()
	spec.FileSize = 8 << 10
	spec.Dup = 0.5
	for _, meta := range []bool{false, true} {
		f := newFixture(t, spec)
		made, shared := optimiseAll(t, f)
		var big, exec, syml int
		var victim string
		for _, q := range made {
			var st unix.Stat_t
			if err := unix.Lstat(q, &st); err != nil {
				t.Fatal(err)
			}
			switch {
			case st.Mode&unix.S_IFMT == unix.S_IFLNK:
				syml++
			case st.Size > 16<<10:
				big++
			}
			if st.Mode&unix.S_IFMT == unix.S_IFREG && st.Mode&0o100 != 0 {
				exec++
			}
		}
		for _, name := range shared {
			var st unix.Stat_t
			if unix.Stat(made[name], &st) == nil && st.Size > 16<<10 {
				victim = name
			}
		}
		if big == 0 || exec == 0 || syml == 0 || victim == "" {
			t.Fatalf("fixture: %d big, %d executable, %d symlink entries, shared big %q", big, exec, syml, victim)
		}
		o := Options{CheckContents: true, Metadata: meta}
		r1 := cleanRun(t, f, o, made, "recording run")
		r2 := cleanRun(t, f, o, made, "second run")
		if r1.inRead == 0 || r2.skipped != r1.recorded || r2.recorded != r1.recorded {
			t.Fatalf("metadata=%v: first %+v, second %+v", meta, r1, r2)
		}
		saved, err := os.ReadFile(linkRecordPath(f))
		if err != nil {
			t.Fatal(err)
		}
		os.Chmod(filepath.Dir(made[victim]), 0o755)
		flipByte(t, made[victim])
		for _, with := range []string{"record", "crafted record"} {
			if with == "crafted record" {
				if err := writeLinkRecord(f.b.Layout.OwnStateDir(), currentRecord(t, f)); err != nil {
					t.Fatal(err)
				}
			} else if err := os.WriteFile(linkRecordPath(f), saved, 0o644); err != nil {
				t.Fatal(err)
			}
			k := byKind(f.verify(Options{CheckContents: true, Metadata: meta, NoRecord: true}))
			if len(k[finding.KindLinkModified]) != 1 || k[finding.KindLinkModified][0].Expected != victim || len(k[finding.KindModified]) < 2 {
				t.Fatalf("metadata=%v, %s: a shared big file damaged: %+v", meta, with, k)
			}
		}
	}
}

// TestCheckLinksUsesOnlyTheSameInodeState: a result computed in a path's
// read counts only while the entry's inode is in the state the read
// began with (a file that grew or was written during the read has a
// hash of neither contents): otherwise the entry is read again.
func TestCheckLinksUsesOnlyTheSameInodeState(t *testing.T) {
	v, made := listedLinks(t)
	s := v.links
	for i, change := range []func(k *linkKey){
		func(k *linkKey) { k.size-- },
		func(k *linkKey) { k.ctSec-- },
		func(k *linkKey) { k.ctNsec ^= 1 },
	} {
		var st unix.Stat_t
		if err := unix.Lstat(filepath.Join(s.dir, s.names[i]), &st); err != nil {
			t.Fatal(err)
		}
		// A hash of what the read saw (here of neither contents) for
		// an inode in another state now (grown, cut or rewritten since
		// the claim's stat): not used, the entry is read again.
		k := keyOf(&st)
		change(&k)
		s.res[i] = linkResult{ok: true, clean: true, key: k}
	}
	if err := v.checkLinks(context.Background()); err != nil {
		t.Fatal(err)
	}
	if len(v.findings) != 0 || v.sum.Links != len(made) {
		t.Fatalf("links %d of %d, findings %+v", v.sum.Links, len(made), v.findings)
	}
}

// cancelAt is a Progress that cancels its context when a phase of the
// given name starts, or when the given number of units of the current
// phase are done.
type cancelAt struct {
	report.Progress
	phase  string
	after  int64
	cur    string
	done   int64
	cancel context.CancelFunc
}

func (c *cancelAt) Phase(name string, total int64, bytes bool) {
	c.cur, c.done = name, 0
	if name == c.phase && c.after == 0 {
		c.cancel()
	}
}

func (c *cancelAt) Add(n int64) {
	c.done += n
	if c.cur == c.phase && c.after > 0 && c.done >= c.after {
		c.cancel()
	}
}

// TestLinkRecordOnlyWholeRuns: the record is written only by a recording
// whole-store run that ran to its end: a run cancelled while the paths
// or the entries are checked, a budgeted run and a run of some paths
// leave it byte for byte as it was (and a missing one missing).
func TestLinkRecordOnlyWholeRuns(t *testing.T) {
	f := newFixture(t, smallSpec())
	made := linkEvery(t, f)
	rec := Options{CheckContents: true}
	cleanRun(t, f, rec, made, "recording run")
	old, err := os.ReadFile(linkRecordPath(f))
	if err != nil {
		t.Fatal(err)
	}
	// A changed inode state for one entry (a chmod there and back: a
	// new ctime), so that a run that wrote the record would change it.
	for _, q := range made {
		fi, err := os.Stat(q)
		if err != nil {
			t.Fatal(err)
		}
		os.Chmod(q, 0o644)
		os.Chmod(q, fi.Mode().Perm()) // its own mode back: an executable stays one
		break
	}
	for _, c := range []struct {
		what  string
		o     Options
		phase string
		after int64
	}{
		{"cancelled checking contents", rec, "checking contents", 1},
		{"cancelled at checking links", rec, "checking links", 0},
		{"cancelled checking links", rec, "checking links", 5},
		{"byte budget", Options{CheckContents: true, BudgetBytes: 1 << 40}, "", 0},
		{"some paths", Options{CheckContents: true, Paths: f.b.Valid[:3]}, "", 0},
	} {
		ctx, cancel := context.WithCancel(context.Background())
		s := f.open(true)
		_, err := Verify(ctx, s, c.o, &cancelAt{Progress: report.Discard, phase: c.phase, after: c.after, cancel: cancel})
		s.Close()
		cancel()
		if c.phase != "" && !errors.Is(err, context.Canceled) {
			t.Fatalf("%s: %v, want cancelled", c.what, err)
		} else if c.phase == "" && err != nil {
			t.Fatalf("%s: %v", c.what, err)
		}
		now, err := os.ReadFile(linkRecordPath(f))
		if err != nil || !bytes.Equal(now, old) {
			t.Fatalf("%s: record changed (%v)", c.what, err)
		}
	}
	// The control: a whole run to its end rewrites it.
	cleanRun(t, f, rec, made, "whole run")
	if now, _ := os.ReadFile(linkRecordPath(f)); bytes.Equal(now, old) {
		t.Fatal("a whole recording run left the record as it was")
	}
}
