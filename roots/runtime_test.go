package roots_test

import (
	"os"
	"path/filepath"
	"sort"
	"testing"

	"storekeeper/roots"
)

// TestRuntimeRootsAsNix: what Nix 2.8's findRuntimeRoots makes of maps
// lines, links and kernel files at the edges of its patterns, checked
// against libstdc++'s std::regex (Nix's): its \s is C's isspace, vertical
// tab included, so a mapped file whose name has a vertical tab followed
// by more is not a root, one ending in a vertical tab is, and fields may
// be separated by one; a deleted mapping or one with a space is not; a
// link to a deleted file is a root only when the deletion mark is below
// the store path; a kernel file's trailing newline is part of the path.
func TestRuntimeRootsAsNix(t *testing.T) {
	b, s := fixture(t)
	proc := t.TempDir()
	p := func(i int) string { return b.Outputs[i]["out"] }
	pd := filepath.Join(proc, "4243")
	os.MkdirAll(filepath.Join(pd, "fd"), 0o755)
	os.MkdirAll(filepath.Join(proc, "sys/kernel"), 0o755)
	os.Symlink(p(1)+" (deleted)", filepath.Join(pd, "cwd"))       // not a store path name: no root
	os.Symlink(p(2)+"/x (deleted)", filepath.Join(pd, "fd", "3")) // below the store path: a root
	os.WriteFile(filepath.Join(pd, "maps"), []byte(
		"7f0-7f1 r--p 0 08:01 1 "+p(3)+"/a\vb\n"+ // \v then more: no match
			"7f0-7f1 r--p 0 08:01 1 "+p(4)+"/lib\v\n"+ // trailing \v: p(4)/lib
			"7f0-7f1\vr--p 0 08:01 1 "+p(5)+"/lib\n"+ // \v between fields
			"7f0-7f1 r--p 0 08:01 1 "+p(6)+"/a b\n"+ // a space: no match
			"7f0-7f1 r--p 0 08:01 1 "+p(7)+"/lib.so (deleted)\n"+ // deleted: no match
			"7f0-7f1 r--p 0 08:01 1 "+p(8)+"/lib\f\r\n"), 0o644) // trailing \f\r: p(8)/lib
	os.WriteFile(filepath.Join(pd, "environ"), []byte("A="+p(9)+"\vB="+p(10)+"=x\x00"), 0o644)
	os.WriteFile(filepath.Join(proc, "sys/kernel/modprobe"), []byte(p(11)+"\n"), 0o644)           // the newline ends the name: no root
	os.WriteFile(filepath.Join(proc, "sys/kernel/poweroff_cmd"), []byte(p(12)+"/bin/x\n"), 0o644) // a root
	res := find(t, s, roots.Options{NoTemp: true, ProcDir: proc})
	var got []string
	for _, r := range res.Roots {
		if r.Kind == roots.Runtime {
			got = append(got, r.Link+" -> "+r.Target)
		}
	}
	want := []string{
		pd + "/fd/3 -> " + p(2),
		pd + "/maps -> " + p(4),
		pd + "/maps -> " + p(5),
		pd + "/maps -> " + p(8),
		pd + "/environ -> " + p(9), // "=x" makes p(10)'s match another name
		proc + "/sys/kernel/poweroff_cmd -> " + p(12),
	}
	sort.Strings(got)
	sort.Strings(want)
	if len(got) != len(want) {
		t.Fatalf("runtime roots\n got %q\nwant %q", got, want)
	}
	for i := range got {
		if got[i] != want[i] {
			t.Fatalf("runtime roots\n got %q\nwant %q", got, want)
		}
	}
}
