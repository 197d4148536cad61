package tests

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestGCBadInput: a missing, corrupt or unknown-schema database makes gc
// exit 2 with a message naming the file, and nothing in the store changes.
func TestGCBadInput(t *testing.T) {
	cases := []struct {
		name   string
		damage func(root string)
		want   string
	}{
		{"unknown schema", func(root string) {
			os.WriteFile(filepath.Join(root, "nix/var/nix/db/schema"), []byte("42"), 0o644)
		}, "schema version"},
		{"corrupt db", func(root string) {
			os.WriteFile(filepath.Join(root, "nix/var/nix/db/db.sqlite"), bytes.Repeat([]byte("garbage!"), 2000), 0o644)
		}, "corrupt"},
		{"missing db", func(root string) {
			os.Remove(filepath.Join(root, "nix/var/nix/db/db.sqlite"))
		}, "does not exist"},
		{"not a store", func(root string) {
			os.RemoveAll(filepath.Join(root, "nix/var"))
		}, "does not exist"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			root := t.TempDir()
			buildDemo(t, root)
			tc.damage(root)
			before := snapshotTree(t, filepath.Join(root, "nix"))
			for _, args := range [][]string{{"gc"}, {"gc", "--print-dead"}, {"roots"}} {
				r := run(t, append([]string{"--store", root}, args...)...)
				if r.code != 2 || !strings.Contains(r.stderr, tc.want) {
					t.Fatalf("%v: exit %d, stderr %q (want 2 and %q)", args, r.code, r.stderr, tc.want)
				}
			}
			if snapshotTree(t, filepath.Join(root, "nix")) != before {
				t.Fatal("the store changed")
			}
		})
	}
}

// TestGCHostileNames: entries in the store dir whose names are not store
// paths (spaces, newlines, temporary links) are garbage, as for Nix: listed
// by --print-dead and deleted; a store path with odd but legal characters
// works like any other.
func TestGCHostileNames(t *testing.T) {
	root := t.TempDir()
	buildDemo(t, root)
	sd := filepath.Join(root, "nix/store")
	hostile := []string{"foo bar", "new\nline", ".tmp-link-123-456", "00000000000000000000000000000000-a?b=c+d"}
	for _, h := range hostile {
		if err := os.MkdirAll(filepath.Join(sd, h, "x"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	// A symlink pointing out of the store must not be followed while deleting.
	outside := filepath.Join(t.TempDir(), "precious")
	os.WriteFile(outside, []byte("keep me"), 0o644)
	os.Symlink(filepath.Dir(outside), filepath.Join(sd, "00000000000000000000000000000001-evil-link"))
	os.MkdirAll(filepath.Join(sd, "00000000000000000000000000000002-evil-dir"), 0o755)
	os.Symlink(filepath.Dir(outside), filepath.Join(sd, "00000000000000000000000000000002-evil-dir", "up"))

	r := run(t, "--store", root, "gc", "--print-dead")
	if r.code != 0 {
		t.Fatalf("exit %d: %s", r.code, r.stderr)
	}
	for _, h := range []string{"foo bar", ".tmp-link-123-456", "00000000000000000000000000000000-a?b=c+d"} {
		if !strings.Contains(r.stdout, "/nix/store/"+h+"\n") {
			t.Errorf("--print-dead does not list %q", h)
		}
	}
	r = run(t, "--store", root, "gc")
	if r.code != 0 {
		t.Fatalf("exit %d: %s", r.code, r.stderr)
	}
	for _, h := range append(hostile, "00000000000000000000000000000001-evil-link", "00000000000000000000000000000002-evil-dir") {
		if _, err := os.Lstat(filepath.Join(sd, h)); err == nil {
			t.Errorf("%q was not deleted", h)
		}
	}
	if data, err := os.ReadFile(outside); err != nil || string(data) != "keep me" {
		t.Fatalf("a file outside the store was touched through a symlink: %v %q", err, data)
	}
}

// TestGCFullDisk: on a file system with no free space left but the
// reserved file, gc deletes db/reserved first, so SQLite can commit, and
// collects; reserved is recreated afterwards. The big store's DB (19 MB)
// is more than the reserved 8 MiB can hold the WAL of: the collector
// must notice the low space and work in small transactions, deleting as
// it goes, as Nix does.
func TestGCFullDisk(t *testing.T) {
	requireNix(t) // for root and mount namespaces; Nix itself is not used
	for _, c := range []struct{ name, size, demo string }{
		{"small store", "24m", ""},
		{"big store", "400m", "--paths 20000 --files 1 --size 10 --roots 2"},
	} {
		t.Run(c.name, func(t *testing.T) {
			mnt := t.TempDir()
			script := `
mount -t tmpfs -o size=$SIZE tmpfs "$MNT" || exit 97
"$MKDEMO" $DEMO "$MNT/s" > /dev/null || exit 96
dd if=/dev/zero of="$MNT/fill" bs=64k 2>/dev/null
df -k "$MNT" | tail -1 | awk '{print "AVAIL " $4}'
"$BIN" --store "$MNT/s" gc; echo "GC $?"
df -k "$MNT" | tail -1 | awk '{print "AFTER " $4}'
ls -l "$MNT/s/nix/var/nix/db/reserved" | awk '{print "RESERVED " $5}'
"$BIN" --store "$MNT/s" verify; echo "VERIFY $?"
`
			cmd := exec.Command("unshare", "-m", "--propagation", "private", "sh", "-c", script)
			cmd.Env = append(os.Environ(), "MNT="+mnt, "BIN="+binary, "MKDEMO="+mkdemo, "SIZE="+c.size, "DEMO="+c.demo)
			out, err := cmd.CombinedOutput()
			if err != nil {
				t.Fatalf("%v\n%s", err, out)
			}
			s := string(out)
			if !strings.Contains(s, "AVAIL 0") {
				t.Fatalf("the disk was not full:\n%s", s)
			}
			if !strings.Contains(s, "GC 0") || !strings.Contains(s, "store paths deleted") {
				t.Fatalf("gc failed on a full disk:\n%s", s)
			}
			if !strings.Contains(s, "little free space") {
				t.Errorf("the collector did not notice the low space:\n%s", s)
			}
			if !strings.Contains(s, "RESERVED 8388608") {
				t.Errorf("db/reserved was not recreated:\n%s", s)
			}
			if !strings.Contains(s, "VERIFY 0") {
				t.Errorf("the store does not verify after the collection:\n%s", s)
			}
		})
	}
}
