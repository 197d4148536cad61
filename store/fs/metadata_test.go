package fs

import (
	"testing"

	"golang.org/x/sys/unix"
)

func TestOwnerModeProblems(t *testing.T) {
	for _, tc := range []struct {
		mode  uint32
		uid   uint32
		kinds []string
	}{
		{unix.S_IFREG | 0o444, 0, nil},
		{unix.S_IFREG | 0o555, 0, nil},
		{unix.S_IFDIR | 0o555, 0, nil},
		{unix.S_IFLNK | 0o777, 0, nil},
		{unix.S_IFLNK | 0o777, 1000, []string{MetaBadOwner}},
		{unix.S_IFREG | 0o444, 1000, []string{MetaBadOwner}},
		{unix.S_IFREG | 0o4555, 0, []string{MetaSetuid}},
		{unix.S_IFREG | 0o2444, 0, []string{MetaSetuid}},
		{unix.S_IFREG | 0o464, 1000, []string{MetaBadOwner, MetaWritable}},
		{unix.S_IFREG | 0o644, 0, []string{MetaWritable}},
		{unix.S_IFREG | 0o1444, 0, []string{MetaBadMode}},
		{unix.S_IFREG | 0o400, 0, []string{MetaBadMode}},
		{unix.S_IFREG | 0o545, 0, []string{MetaBadMode}},
		{unix.S_IFDIR | 0o755, 0, []string{MetaWritable}},
		{unix.S_IFDIR | 0o444, 0, []string{MetaBadMode}},
	} {
		st := unix.Stat_t{Mode: tc.mode, Uid: tc.uid}
		got := OwnerModeProblems(nil, "/nix/store/x", &st, 0)
		var kinds []string
		for _, p := range got {
			kinds = append(kinds, p.Kind)
			if p.Message == "" || p.Expected == p.Got {
				t.Errorf("mode %o uid %d: %+v", tc.mode, tc.uid, p)
			}
		}
		if len(kinds) != len(tc.kinds) {
			t.Errorf("mode %o uid %d: %v, want %v", tc.mode, tc.uid, kinds, tc.kinds)
			continue
		}
		for i := range kinds {
			if kinds[i] != tc.kinds[i] {
				t.Errorf("mode %o uid %d: %v, want %v", tc.mode, tc.uid, kinds, tc.kinds)
			}
		}
	}
	p := ForeignLinkProblem("/nix/store/x", 3, 1)
	if p.Kind != MetaForeignLink || p.Message != "'/nix/store/x' has 3 hard links, but only 1 are in the store's paths and .links: 2 are elsewhere" {
		t.Errorf("%+v", p)
	}
}
