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

// endless is a registration stream that never ends: path after path, each
// with the most references a record may have.
type endless struct{ buf []byte }

func (e *endless) Read(p []byte) (int, error) {
	if len(e.buf) == 0 {
		const a = "/nix/store/00000000000000000000000000000000-a"
		var b strings.Builder
		b.WriteString(a + "\n\n1000\n")
		for range 1000 {
			b.WriteString(a + "\n")
		}
		e.buf = []byte(b.String())
	}
	n := copy(p, e.buf)
	e.buf = e.buf[n:]
	return n, nil
}

// TestReadRegistrationsBounded: an endless (or huge) registration stream
// is refused once it passes maxRegisterBytes, as bad input, instead of
// being held in memory without bound.
func TestReadRegistrationsBounded(t *testing.T) {
	old := maxRegisterBytes
	maxRegisterBytes = 1 << 20
	defer func() { maxRegisterBytes = old }()
	_, err := readRegistrations(&endless{}, "/nix/store", false)
	if !errors.Is(err, errInputTooLarge) || errorKindOf(err) != "bad-input" || !strings.Contains(err.Error(), "several runs") {
		t.Fatalf("got %v (kind %s)", err, errorKindOf(err))
	}
	// Exactly at the bound is fine.
	const rec = "/nix/store/00000000000000000000000000000000-a\n\n0\n"
	maxRegisterBytes = int64(len(rec))
	if in, err := readRegistrations(strings.NewReader(rec), "/nix/store", false); err != nil || len(in) != 1 {
		t.Fatalf("at the bound: %v, %d", err, len(in))
	}
}
