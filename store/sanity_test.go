package store

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func sanityLayout(t *testing.T) Layout {
	root := t.TempDir()
	l := Layout{StoreDir: "/nix/store", RealStoreDir: filepath.Join(root, "nix/store"), StateDir: filepath.Join(root, "nix/var/nix")}
	os.MkdirAll(l.RealStoreDir, 0o755)
	os.MkdirAll(l.StateDir, 0o755)
	return l
}

func TestCheckPresenceThresholds(t *testing.T) {
	lay := sanityLayout(t)
	for _, c := range []struct {
		p    Presence
		want string // "" accepted, else part of the refusal
	}{
		{Presence{Valid: 0, Missing: 0}, ""},
		{Presence{Valid: 100, Missing: 0, Dropping: true}, ""},
		{Presence{Valid: 5, Missing: 5, Names: []string{}}, "It is empty: is its file system mounted?"},
		{Presence{Valid: 5, Missing: 5, Names: []string{".links", "trash", "lost+found"}, Dropping: true}, "It is empty"},
		{Presence{Valid: 5, Missing: 5, Names: []string{"junk"}}, "None of them is there"},
		{Presence{Valid: 1, Missing: 1}, "None of them is there"},
		// gc's question: only an empty store dir.
		{Presence{Valid: 100, Missing: 99}, ""},
		// More than 10% and more than 20, for a caller that drops rows.
		{Presence{Valid: 200, Missing: 21, Dropping: true}, "More than 10%"},
		{Presence{Valid: 100, Missing: 25, Dropping: true}, "More than 10%"},
		{Presence{Valid: 100, Missing: 20, Dropping: true}, ""},
		{Presence{Valid: 210, Missing: 21, Dropping: true}, ""},
		{Presence{Valid: 30, Missing: 3, Dropping: true}, ""},
		{Presence{Valid: 100000, Missing: 10000, Dropping: true}, ""},
		{Presence{Valid: 100000, Missing: 10001, Dropping: true}, "More than 10%"},
	} {
		err := CheckPresence(lay, c.p)
		switch {
		case c.want == "" && err != nil:
			t.Errorf("%+v: refused: %v", c.p, err)
		case c.want != "" && err == nil:
			t.Errorf("%+v: accepted", c.p)
		case c.want != "":
			var ue *UnmountedError
			if !errors.Is(err, ErrStoreLooksUnmounted) || !errors.As(err, &ue) || ue.Missing != c.p.Missing || ue.Valid != c.p.Valid {
				t.Errorf("%+v: %#v", c.p, err)
			}
			if !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), lay.RealStoreDir) || !strings.Contains(err.Error(), "file system") {
				t.Errorf("%+v: message: %v", c.p, err)
			}
		}
	}
}

func TestCheckPresenceRecordedIdentity(t *testing.T) {
	lay := sanityLayout(t)
	state := lay.OwnStateDir()
	p := Presence{Valid: 100, Missing: 1, Dropping: true, IdentityDir: state}
	if err := CheckPresence(lay, p); err != nil {
		t.Fatalf("no record: %v", err)
	}
	if err := RecordFSIdentity(lay, state); err != nil {
		t.Fatal(err)
	}
	if err := CheckPresence(lay, p); err != nil {
		t.Fatalf("same file system: %v", err)
	}
	now, err := CurrentFSIdentity(lay.RealStoreDir)
	if err != nil {
		t.Fatal(err)
	}
	old := now
	old.MountPoint, old.Dev = true, now.Dev+1
	if err := SaveFSIdentity(state, old); err != nil {
		t.Fatal(err)
	}
	err = CheckPresence(lay, p)
	if err == nil || !strings.Contains(err.Error(), "nothing is mounted on it now") || !strings.Contains(err.Error(), filepath.Join(state, FSIdentityName)) {
		t.Errorf("mount gone: %v", err)
	}
	// Not when dropping nothing (gc), not when nothing is missing.
	if err := CheckPresence(lay, Presence{Valid: 100, Missing: 1, IdentityDir: state}); err != nil {
		t.Errorf("not dropping: %v", err)
	}
	if err := CheckPresence(lay, Presence{Valid: 100, Missing: 0, Dropping: true, IdentityDir: state}); err != nil {
		t.Errorf("nothing missing: %v", err)
	}
	// A record of another store directory is not compared.
	old.StoreDir = "/elsewhere"
	SaveFSIdentity(state, old)
	if err := CheckPresence(lay, p); err != nil {
		t.Errorf("another directory's record: %v", err)
	}
	// A damaged record compares nothing.
	os.WriteFile(filepath.Join(state, FSIdentityName), []byte("garbage"), 0o644)
	if _, _, err := LoadFSIdentity(state); err == nil {
		t.Error("a damaged record loaded")
	}
	if err := CheckPresence(lay, p); err != nil {
		t.Errorf("damaged record: %v", err)
	}
}

func TestFSIdentityChange(t *testing.T) {
	base := FSIdentity{StoreDir: "/nix/store", Type: 0xef53, Fsid: [2]int32{1, 2}, Dev: 2049}
	for _, c := range []struct {
		edit func(*FSIdentity)
		want string
	}{
		{func(*FSIdentity) {}, ""},
		{func(n *FSIdentity) { n.Dev = 2050 }, ""}, // renumbered device, same fsid (UUID)
		{func(n *FSIdentity) { n.MountedOn, n.Source = "/x", "/dev/y" }, ""},
		{func(n *FSIdentity) { n.MountPoint = true }, ""}, // mounted now, same file system
		{func(n *FSIdentity) { n.Type = 0x01021994 }, "another file system"},
		{func(n *FSIdentity) { n.Fsid[1] = 3 }, "another file system"},
		{func(n *FSIdentity) { n.Fsid = [2]int32{}; n.Dev = 7 }, ""}, // no fsid: nothing to compare
		{func(n *FSIdentity) { n.StoreDir = "/gnu/store"; n.Type = 1 }, ""},
	} {
		now := base
		c.edit(&now)
		if got := base.change(now); (c.want == "") != (got == "") || !strings.Contains(got, c.want) {
			t.Errorf("%+v: %q", now, got)
		}
	}
	mp := base
	mp.MountPoint = true
	if got := mp.change(base); got != "" {
		t.Errorf("a bind mount of the same file system gone: %q", got)
	}
	mp.Dev = 2050
	if got := mp.change(base); !strings.Contains(got, "nothing is mounted on it now") {
		t.Errorf("mount gone: %q", got)
	}
	// xfs: fsid and device number change on renumbering; not an alarm.
	x := FSIdentity{StoreDir: "/nix/store", Type: 0x58465342, Fsid: [2]int32{2049, 0}, Dev: 2049, MountPoint: true}
	xn := x
	xn.Fsid, xn.Dev = [2]int32{2065, 0}, 2065
	if got := x.change(xn); got != "" {
		t.Errorf("xfs renumbered: %q", got)
	}
}

func TestFSIdentityRecord(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	if _, ok, err := LoadFSIdentity(dir); ok || err != nil {
		t.Fatalf("no record: %v %v", ok, err)
	}
	id := FSIdentity{StoreDir: "/nix/store", Type: 0xef53, Fsid: [2]int32{-5, 7}, Dev: 1 << 40, MountPoint: true,
		FSType: "ext4", Source: "/dev/disk with space", MountedOn: "/mnt/a\nb"}
	if err := SaveFSIdentity(dir, id); err != nil {
		t.Fatal(err)
	}
	got, ok, err := LoadFSIdentity(dir)
	if err != nil || !ok || got != id {
		t.Fatalf("round trip: %+v %v %v", got, ok, err)
	}
	ents, _ := os.ReadDir(dir)
	if len(ents) != 1 {
		t.Errorf("left behind: %v", ents)
	}
	rec := filepath.Join(dir, FSIdentityName)
	// Bounded, never followed.
	os.WriteFile(rec, append(id.marshal(), make([]byte, maxFSIdentitySize)...), 0o644)
	if _, _, err := LoadFSIdentity(dir); err == nil {
		t.Error("an oversized record loaded")
	}
	other := filepath.Join(t.TempDir(), "other")
	os.WriteFile(other, id.marshal(), 0o644)
	os.Remove(rec)
	os.Symlink(other, rec)
	if _, ok, err := LoadFSIdentity(dir); ok || err == nil {
		t.Error("a symlinked record was followed")
	}
	// Saving replaces the symlink, not its target.
	if err := SaveFSIdentity(dir, FSIdentity{StoreDir: "/x"}); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(other); string(b) != string(id.marshal()) {
		t.Error("the symlink's target was written")
	}
	for _, bad := range []string{"", "storekeeper store-fs 1\nstore-dir \"/x\"\n", "storekeeper store-fs 1\nstore-dir x\ntype 1\nfsid 1 2\ndev 3\nmount-point false\n"} {
		if _, err := unmarshalFSIdentity([]byte(bad)); err == nil {
			t.Errorf("%q parsed", bad)
		}
	}
}

func TestSaveFSIdentityRefusesForeignDir(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	os.Mkdir(dir, 0o777)
	os.Chmod(dir, 0o777)
	if err := SaveFSIdentity(dir, FSIdentity{}); err == nil {
		t.Error("recorded in a world-writable dir")
	}
	link := filepath.Join(t.TempDir(), "link")
	os.Chmod(dir, 0o755)
	os.Symlink(dir, link)
	if err := SaveFSIdentity(link, FSIdentity{}); err == nil {
		t.Error("recorded through a symlinked dir")
	}
	if os.Geteuid() == 0 {
		os.Chown(dir, 12345, 12345)
		if err := SaveFSIdentity(dir, FSIdentity{}); err == nil {
			t.Error("root recorded in another user's dir")
		}
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 0 {
		t.Errorf("wrote %v", ents)
	}
}

func TestCurrentFSIdentity(t *testing.T) {
	plain, err := CurrentFSIdentity(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if plain.MountPoint || plain.Type == 0 {
		t.Errorf("a plain directory: %+v", plain)
	}
	proc, err := CurrentFSIdentity("/proc")
	if err != nil {
		t.Skip(err)
	}
	if !proc.MountPoint || proc.FSType != "proc" || proc.MountedOn != "/proc" {
		t.Errorf("/proc: %+v", proc)
	}
	if d := proc.describe(); !strings.Contains(d, "proc file system") || !strings.Contains(d, "mounted on /proc") {
		t.Errorf("describe: %s", d)
	}
}
