package verify

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"storekeeper/nix/nar"
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

// TestCheckLinksUsesOnlyTheSameInode: a result computed in a path's read
// is used only while the entry is still the inode it was computed from;
// otherwise the entry is read again.
func TestCheckLinksUsesOnlyTheSameInode(t *testing.T) {
	f := newFixture(t, smallSpec())
	made := linkEvery(t, f)
	v := &verifier{lay: f.b.Layout, o: Options{Jobs: 2}, prog: report.Discard}
	if err := v.listLinks(); err != nil || v.links == nil {
		t.Fatalf("listLinks: %v", err)
	}
	s := v.links
	var st unix.Stat_t
	if err := unix.Stat(filepath.Join(s.dir, s.names[0]), &st); err != nil {
		t.Fatal(err)
	}
	// Entry 0: a wrong hash for its real inode: used, so reported.
	s.res[0] = linkResult{ok: true, dev: uint64(st.Dev), ino: st.Ino}
	// Entry 1: a wrong hash for another inode (replaced meanwhile, or
	// overlayfs's listing): not used, so read again and clean.
	s.res[1] = linkResult{ok: true, dev: uint64(st.Dev), ino: st.Ino + 1<<40}
	if err := v.checkLinks(context.Background()); err != nil {
		t.Fatal(err)
	}
	if len(v.findings) != 1 || v.findings[0].Expected != s.names[0] || v.sum.Links != len(made) {
		t.Fatalf("links %d of %d, findings %+v", v.sum.Links, len(made), v.findings)
	}
}
