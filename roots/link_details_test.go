package roots_test

import (
	"os"
	"os/user"
	"strconv"
	"testing"

	"golang.org/x/sys/unix"

	"storekeeper/roots"
)

// TestFindLinkOwnerAndMTime: every link root (direct, indirect, profile)
// has the owner and modification time of the link itself, never of what
// it points to: a link given an owner with no user name and an old mtime
// (lchown, lutimes) shows the uid in decimal and that time.
func TestFindLinkOwnerAndMTime(t *testing.T) {
	b, s := fixture(t)
	var link string
	for l := range b.RootLinks {
		if fi, err := os.Lstat(l); err == nil && fi.Mode()&os.ModeSymlink != 0 {
			link = l
			break
		}
	}
	if link == "" {
		t.Fatal("no symlink root in the fixture")
	}
	const uid = 48271
	if _, err := user.LookupId(strconv.Itoa(uid)); err == nil {
		t.Skipf("uid %d has a name on this machine", uid)
	}
	if os.Geteuid() == 0 {
		if err := unix.Lchown(link, uid, uid); err != nil {
			t.Fatal(err)
		}
	}
	old := unix.NsecToTimeval(1_000_000_000 * 1_000_000_000)
	if err := unix.Lutimes(link, []unix.Timeval{old, old}); err != nil {
		t.Fatal(err)
	}
	res := find(t, s, roots.Options{NoTemp: true, NoRuntime: true})
	seen := 0
	for _, r := range res.Roots {
		var st unix.Stat_t
		if err := unix.Lstat(r.Link, &st); err != nil {
			t.Fatal(err)
		}
		if r.Owner != roots.UserName(st.Uid) || r.MTime != st.Mtim.Sec {
			t.Errorf("%s: owner %q mtime %d, the link has uid %d mtime %d", r.Link, r.Owner, r.MTime, st.Uid, st.Mtim.Sec)
		}
		if r.Link == link {
			seen++
			want := "root"
			if os.Geteuid() == 0 {
				want = strconv.Itoa(uid)
			} else if u, err := user.Current(); err == nil {
				want = u.Username
			}
			if r.Owner != want || r.MTime != 1_000_000_000 {
				t.Errorf("%s: owner %q mtime %d, want %s and 1000000000", r.Link, r.Owner, r.MTime, want)
			}
		}
	}
	if seen == 0 {
		t.Errorf("%s not among the roots", link)
	}
}
