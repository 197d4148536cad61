package verify

import (
	"os"
	"path/filepath"
	"reflect"
	"testing"

	"storekeeper/nix/nar"
)

func sampleManifest(name string) *Manifest {
	return &Manifest{Name: name, NarHash: nar.Hash{1, 2, 3}, Entries: []Entry{
		{Name: "", Type: nar.FileDirectory, Mode: 0o555},
		{Name: "bin", Type: nar.FileDirectory, Mode: 0o555},
		{Name: "bin/x", Type: nar.FileRegular, Mode: 0o555, Size: 3, Digest: [32]byte{9}},
		{Name: "lib", Type: nar.FileSymlink, Mode: 0o777, Size: 3, Target: "bin"},
	}}
}

func TestManifestRoundTrip(t *testing.T) {
	m := sampleManifest("aaaa-x")
	got, err := unmarshalManifest(m.marshal(nil))
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, m) {
		t.Errorf("got %+v", got)
	}
}

func TestDiff(t *testing.T) {
	old := sampleManifest("a")
	cur := sampleManifest("a")
	cur.Entries[2].Digest[0] = 7                                // changed
	cur.Entries[3].Target = "elsewhere"                         // changed symlink
	cur.Entries = append(cur.Entries[:1:1], cur.Entries[2:]...) // "bin" removed
	cur.Entries = append(cur.Entries, Entry{Name: "new", Type: nar.FileRegular, Mode: 0o444})
	d := Diff(old, cur)
	want := []struct{ kind, file string }{{"removed", "bin"}, {"changed", "bin/x"}, {"changed", "lib"}, {"added", "new"}}
	if len(d) != len(want) {
		t.Fatalf("%+v", d)
	}
	for i, w := range want {
		if d[i].Kind != w.kind || d[i].File != w.file {
			t.Errorf("%d: %+v, want %v", i, d[i], w)
		}
	}
	// Mode changes other than the executable bit are not content.
	cur = sampleManifest("a")
	cur.Entries[0].Mode = 0o755
	if d := Diff(old, cur); len(d) != 0 {
		t.Errorf("%+v", d)
	}
	cur.Entries[2].Mode = 0o444
	if d := Diff(old, cur); len(d) != 1 || d[0].Kind != "changed" {
		t.Errorf("%+v", d)
	}
}

func TestManifestLogTornTail(t *testing.T) {
	dir := t.TempDir()
	l, err := openManifestLog(dir, true)
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{"a", "b", "a"} {
		if err := l.add(sampleManifest(n)); err != nil {
			t.Fatal(err)
		}
	}
	if err := l.close(); err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(dir, manifestLogName)
	full, _ := os.ReadFile(p)
	// Append a torn record: the next open cuts it off and keeps the rest.
	os.WriteFile(p, append(append([]byte{}, full...), 50, 0, 0, 0, 1, 2), 0o644)
	l, err = openManifestLog(dir, true)
	if err != nil {
		t.Fatal(err)
	}
	if len(l.index) != 2 || l.dead != 1 {
		t.Fatalf("index %v dead %d", l.index, l.dead)
	}
	m, err := l.get("a")
	if err != nil || m == nil || m.Name != "a" {
		t.Fatalf("%v %v", m, err)
	}
	l.add(sampleManifest("c"))
	if m, err := l.get("c"); err != nil || m == nil {
		t.Fatalf("unflushed record: %v %v", m, err)
	}
	l.close()
	l, _ = openManifestLog(dir, false)
	if len(l.index) != 3 {
		t.Errorf("after reopen: %v", l.index)
	}
	l.close()
	// A flipped byte in the middle: everything from there on is ignored.
	b, _ := os.ReadFile(p)
	b[len(full)/2] ^= 0xff
	os.WriteFile(p, b, 0o644)
	l, _ = openManifestLog(dir, false)
	if len(l.index) >= 3 {
		t.Errorf("a corrupt record was accepted: %v", l.index)
	}
	l.close()
}

func FuzzUnmarshalManifest(f *testing.F) {
	f.Add(sampleManifest("x").marshal(nil))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := unmarshalManifest(b)
		if err != nil {
			return
		}
		again, err := unmarshalManifest(m.marshal(nil))
		if err != nil || !reflect.DeepEqual(again, m) {
			t.Fatalf("round trip: %v", err)
		}
	})
}

func TestManifestLogCompaction(t *testing.T) {
	dir := t.TempDir()
	l, err := openManifestLog(dir, true)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 5000; i++ {
		l.add(sampleManifest("a"))
	}
	l.add(sampleManifest("b"))
	l.add(sampleManifest("gone"))
	before := l.end
	if err := l.compactIfWasteful(func(n string) bool { return n != "gone" }); err != nil {
		t.Fatal(err)
	}
	l.add(sampleManifest("c"))
	if err := l.close(); err != nil {
		t.Fatal(err)
	}
	after, _ := os.Stat(filepath.Join(dir, manifestLogName))
	if after.Size() >= before/100 {
		t.Errorf("not compacted: %d -> %d bytes", before, after.Size())
	}
	l, _ = openManifestLog(dir, false)
	defer l.close()
	if len(l.index) != 3 || l.dead != 0 {
		t.Fatalf("index %v dead %d", l.index, l.dead)
	}
	for _, n := range []string{"a", "b", "c"} {
		if m, err := l.get(n); err != nil || m == nil || !reflect.DeepEqual(m, sampleManifest(n)) {
			t.Errorf("%s: %v %v", n, m, err)
		}
	}
}
