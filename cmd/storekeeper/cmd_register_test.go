package main

import (
	"errors"
	"strings"
	"testing"

	"storekeeper/nix/validity"
	"storekeeper/store"
	storefs "storekeeper/store/fs"
)

// TestParseBuildUser: --build-user takes a uid or a user name; an unknown
// name is a usage error naming it; none means no ownership check.
func TestParseBuildUser(t *testing.T) {
	for _, c := range []struct {
		in   string
		uid  int
		fail bool
	}{
		{"", storefs.NoBuildUser, false},
		{"0", 0, false},
		{"30001", 30001, false},
		{"root", 0, false},
		{"no-such-user-storekeeper", 0, true},
		{"-1", 0, true},
		{"99999999999", 0, true},
	} {
		uid, err := parseBuildUser(c.in)
		switch {
		case c.fail && (err == nil || !errors.Is(err, errUsage) || !strings.Contains(err.Error(), c.in)):
			t.Errorf("%q: %v, want a usage error naming it", c.in, err)
		case !c.fail && (err != nil || uid != c.uid):
			t.Errorf("%q: %d, %v; want %d", c.in, uid, err, c.uid)
		}
	}
}

// TestRegisterArg: a PATH argument is taken as it is (made absolute and
// clean), and under the physical store directory of a chroot store as the
// logical path; nothing else is rewritten (the library refuses what is
// not a store path).
func TestRegisterArg(t *testing.T) {
	lay, err := store.ResolveLayout(store.LayoutOptions{StoreURI: "/mnt"})
	if err != nil {
		t.Fatal(err)
	}
	const p = "/nix/store/00000000000000000000000000000000-x"
	for in, want := range map[string]string{
		p:                             p,
		p + "/":                       p,
		"/mnt" + p:                    p,
		"/mnt/nix/store/../store/a":   "/nix/store/a",
		"/mnt/nix/storex/a":           "/mnt/nix/storex/a",
		"/mnt/nix/store":              "/mnt/nix/store",
		"/tmp/x":                      "/tmp/x",
		"/nix/store/../../etc/shadow": "/etc/shadow",
	} {
		if got := registerArg(lay, in); got != want {
			t.Errorf("%q: %q, want %q", in, got, want)
		}
	}
}

// TestReadRegistrations: the registration format becomes inputs, with
// the hashes when given; malformed input is bad-input naming the line.
func TestReadRegistrations(t *testing.T) {
	const a = "/nix/store/00000000000000000000000000000000-a"
	const b = "/nix/store/11111111111111111111111111111111-b"
	in, err := readRegistrations(strings.NewReader(a+"\n\n0\n"+b+"\n"+a[:len(a)-1]+"a.drv\n1\n"+a+"\n"), "/nix/store", false)
	if err != nil || len(in) != 2 || in[1].Path != b || in[1].Deriver != a+".drv" || len(in[1].References) != 1 || in[0].HashGiven {
		t.Fatalf("%+v %v", in, err)
	}
	_, err = readRegistrations(strings.NewReader(a+"\n\nx\n"), "/nix/store", false)
	if !errors.Is(err, validity.ErrBadRegistration) || !strings.Contains(err.Error(), "line 3") || errorKindOf(err) != "bad-input" {
		t.Fatalf("%v", err)
	}
}
