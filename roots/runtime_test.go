package roots_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"sort"
	"strings"
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

// TestRuntimeUnreadableMapsOrEnviron: a maps or environ file that cannot
// be read for a reason other than the process being gone or this user
// being refused (here a directory: EISDIR; on a real machine ENOMEM or
// EIO) stops Find with an error naming it, as it stops Nix's
// findRuntimeRoots: a root silently missed there could let the collector
// delete a file a process uses. Busy notes it and goes on.
func TestRuntimeUnreadableMapsOrEnviron(t *testing.T) {
	for _, file := range []string{"maps", "environ"} {
		t.Run(file, func(t *testing.T) {
			_, s := fixture(t)
			proc := t.TempDir()
			pd := filepath.Join(proc, "4244")
			os.MkdirAll(filepath.Join(pd, "fd"), 0o755)
			os.WriteFile(filepath.Join(pd, "stat"), []byte("4244 (x) S 1 1 1 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 100 0 0\n"), 0o644)
			for _, f := range []string{"maps", "environ"} {
				if f == file {
					os.MkdirAll(filepath.Join(pd, f), 0o755)
				} else {
					os.WriteFile(filepath.Join(pd, f), nil, 0o644)
				}
			}
			res, err := roots.Find(context.Background(), s, roots.Options{NoTemp: true, ProcDir: proc})
			if !errors.Is(err, roots.ErrRootsUnreadable) || !strings.Contains(err.Error(), pd+"/"+file) || res != nil {
				t.Fatalf("Find: %v (result %v), want an error naming %s", err, res != nil, pd+"/"+file)
			}
			r, err := roots.Busy(context.Background(), s, roots.BusyOptions{ProcDir: proc})
			if err != nil || len(r.Notes) != 1 || !strings.Contains(r.Notes[0], pd+"/"+file) {
				t.Fatalf("Busy: %v, notes %q", err, r.Notes)
			}
		})
	}
}
