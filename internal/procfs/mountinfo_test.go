package procfs

import (
	"strings"
	"testing"
)

func TestUnescapeMountinfo(t *testing.T) {
	if got := unescapeMountinfo(`/mnt/a\040b\134c`); got != `/mnt/a b\c` {
		t.Errorf("unescape: %q", got)
	}
}

func TestParseMount(t *testing.T) {
	const info = "22 1 0:21 / /proc rw,nosuid shared:12 - proc proc rw\n" +
		"36 25 0:33 /@home /mnt/my\\040home rw,relatime shared:1 master:2 - btrfs /dev/vda2 rw,space_cache\n" +
		"37 25 x:y / /bad rw - ext4 /dev/x rw\n" +
		"38 25 8:1 / /short rw\n"
	e, ok := parseMount(strings.NewReader(info), 36)
	if want := (MountEntry{Major: 0, Minor: 33, MountPoint: "/mnt/my home", FSType: "btrfs", Source: "/dev/vda2"}); !ok || e != want {
		t.Errorf("mount 36: %+v %v, want %+v", e, ok, want)
	}
	for _, id := range []uint64{3, 37, 38} { // absent, bad device, no " - "
		if e, ok := parseMount(strings.NewReader(info), id); ok {
			t.Errorf("mount %d: %+v, want not found", id, e)
		}
	}
	if _, ok := parseMount(strings.NewReader(strings.Repeat("x", maxMountLine+1)+"\n36 1 0:1 / / rw - ext4 a rw\n"), 36); ok {
		t.Error("a line past the bound: want the scan to stop")
	}
	if _, ok := Mount(1 << 62); ok {
		t.Error("this process's mountinfo has no mount 2^62")
	}
}
