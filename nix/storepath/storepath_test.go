package storepath

import (
	"errors"
	"strconv"
	"strings"
	"testing"
)

const spTestHash = "i9pmrzmpshapij2kin22pff6fc2adavx"

func TestValidateBaseName(t *testing.T) {
	long := strings.Repeat("a", MaxNameLen)
	cases := []struct {
		base string
		ok   bool
		why  string // substring of the error
	}{
		{spTestHash + "-hello.txt", true, ""},
		{spTestHash + "-a", true, ""},
		{spTestHash + "-" + long, true, ""},
		{spTestHash + "-+-._?=AZaz09", true, ""},
		// Nix 2.8 accepts names starting with '.', even "." and "..": as
		// base names they are ordinary file names.
		{spTestHash + "-.hidden", true, ""},
		{spTestHash + "-..", true, ""},
		{spTestHash + "-.", true, ""},
		{spTestHash + "--", true, ""},
		{"00000000000000000000000000000000-x", true, ""},
		{"zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz-x", true, ""},

		{"", false, "too short"},
		{spTestHash, false, "too short"},
		{spTestHash[:31] + "-x", false, "base-32 character '-'"},
		{spTestHash[:31] + "-", false, "too short"},
		{spTestHash + "-", false, "empty name"},
		{spTestHash + "-" + long + "a", false, "longer than 211"},
		{"e9pmrzmpshapij2kin22pff6fc2adavx-x", false, `'e'`},
		{"i9pmrzmpshapij2kin22pff6fc2adavo-x", false, `'o'`},
		{"i9pmrzmpshapij2kin22pff6fc2adavu-x", false, `'u'`},
		{"i9pmrzmpshapij2kin22pff6fc2adavt-x", false, `'t'`},
		{"I9PMRZMPSHAPIJ2KIN22PFF6FC2ADAVX-x", false, `'I'`},
		{"i9pmrzmpshapij2kin22pff6fc2adavX-x", false, `'X'`},
		{"i9pmrzmpshapij2kin22pff6fc2ada/x-x", false, `'/'`},
		{"i9pmrzmpshapij2kin22pff6fc2adav\x00-x", false, `'\x00'`},
		{spTestHash + "_x", false, "instead of '-'"},
		{spTestHash + "/x", false, "instead of '-'"},
		{spTestHash + "-a/b", false, `'/'`},
		{spTestHash + "-../../etc", false, `'/'`},
		{spTestHash + "-a\x00", false, `'\x00'`},
		{spTestHash + "-a\nb", false, `'\n'`},
		{spTestHash + "-a b", false, `' '`},
		{spTestHash + "-a\tb", false, `'\t'`},
		{spTestHash + "-caf\u00e9", false, `'\xc3'`},
		{spTestHash + "-a~", false, `'~'`},
		{spTestHash + "-a:b", false, `':'`},
		{spTestHash + "-a*", false, `'*'`},
		{spTestHash + "-a\\b", false, `'\\'`},
		{spTestHash + "-$x", false, `'$'`},
	}
	for _, c := range cases {
		err := ValidateBaseName(c.base)
		if c.ok {
			if err != nil {
				t.Errorf("ValidateBaseName(%q): %v", c.base, err)
				continue
			}
			if HashPart(c.base)+"-"+NamePart(c.base) != c.base || len(HashPart(c.base)) != HashLen {
				t.Errorf("HashPart/NamePart(%q) = %q, %q", c.base, HashPart(c.base), NamePart(c.base))
			}
			continue
		}
		if err == nil {
			t.Errorf("ValidateBaseName(%q) accepted it", c.base)
			continue
		}
		if !errors.Is(err, ErrBadStorePath) {
			t.Errorf("ValidateBaseName(%q): %v does not wrap ErrBadStorePath", c.base, err)
		}
		if !strings.Contains(err.Error(), c.why) {
			t.Errorf("ValidateBaseName(%q): %q does not say %s", c.base, err, c.why)
		}
		if !strings.Contains(err.Error(), strconv.Quote(c.base)) {
			t.Errorf("ValidateBaseName(%q): %q does not name the path", c.base, err)
		}
	}
}

func TestIsInStore(t *testing.T) {
	for p, want := range map[string]bool{
		"/nix/store/x":             true,
		"/nix/store/abc-foo/bin":   true,
		"/nix/store//":             true, // lexical, as Nix's isInDir
		"/nix/store/":              false,
		"/nix/store":               false,
		"/nix/storex/abc":          false,
		"/nix/stor":                false,
		"nix/store/abc":            false,
		"":                         false,
		"/gnu/store/abc":           false,
		"/nix/store/../etc":        true, // lexical: ParseStorePath rejects it
		"/nix/store/" + spTestHash: true,
		"/nix/store/x\x00/y":       true,
		"//nix/store/abc-foo/bin":  false,
	} {
		if got := IsInStore("/nix/store", p); got != want {
			t.Errorf("IsInStore(%q) = %v, want %v", p, got, want)
		}
	}
}

func TestParseStorePath(t *testing.T) {
	good := spTestHash + "-hello.txt"
	cases := []struct {
		storeDir, p, base, why string
	}{
		{"/nix/store", "/nix/store/" + good, good, ""},
		{"/nix/store", "/nix/store/" + good + "/", good, ""},
		{"/nix/store", "/nix/store//" + good, good, ""},
		{"/nix/store", "//nix/store/" + good, good, ""},
		{"/nix/store", "/nix/./store/" + good, good, ""},
		{"/nix/store", "/nix/store/./" + good, good, ""},
		{"/nix/store", "/nix/store/" + good + "/.", good, ""},
		{"/nix/store", "/nix/store/" + good + "/bin/..", good, ""},
		{"/nix/store", "/nix/var/../store/" + good, good, ""},
		{"/nix/store", "/../nix/store/" + good, good, ""},
		{"/gnu/store", "/gnu/store/" + good, good, ""},
		{"/a", "/a/" + good, good, ""},

		{"/nix/store", "nix/store/" + good, "", "not an absolute path"},
		{"/nix/store", "", "", "not an absolute path"},
		{"/nix/store", "./" + good, "", "not an absolute path"},
		{"/nix/store", "/nix/store/" + good + "/bin", "", "not in the store"},
		{"/nix/store", "/nix/store/" + good + "/..", "", "not in the store"},
		{"/nix/store", "/nix/store/..", "", "not in the store"},
		{"/nix/store", "/nix/store/../" + good, "", "not in the store"},
		{"/nix/store", "/nix/store", "", "not in the store"},
		{"/nix/store", "/nix/store/", "", "not in the store"},
		{"/nix/store", "/", "", "not in the store"},
		{"/nix/store", "/gnu/store/" + good, "", "not in the store"},
		{"/nix/store", "/nix/storex/" + good, "", "not in the store"},
		{"/nix/store", "/nix/store/.", "", "not in the store"},
		{"/nix/store", "/nix/store/" + spTestHash, "", "too short"},
		{"/nix/store", "/nix/store/" + spTestHash + "-", "", "empty name"},
		{"/nix/store", "/nix/store/" + spTestHash + "-a b", "", "illegal character"},
		{"/nix/store", "/nix/store/" + spTestHash + "-a\nb", "", "illegal character"},
		{"/nix/store", "/nix/store/" + spTestHash + "-a\x00b", "", "illegal character"},
		{"/nix/store", "/nix/store/" + spTestHash + "-" + strings.Repeat("x", 212), "", "longer than"},
		{"/nix/store", "/nix/store/e9pmrzmpshapij2kin22pff6fc2adavx-x", "", "base-32"},
	}
	for _, c := range cases {
		base, err := Parse(c.storeDir, c.p)
		if c.why == "" {
			if err != nil || base != c.base {
				t.Errorf("ParseStorePath(%s, %q) = %q, %v; want %q", c.storeDir, c.p, base, err, c.base)
			}
			continue
		}
		if err == nil {
			t.Errorf("ParseStorePath(%s, %q) = %q, want an error", c.storeDir, c.p, base)
			continue
		}
		if !errors.Is(err, ErrBadStorePath) || !strings.Contains(err.Error(), c.why) {
			t.Errorf("ParseStorePath(%s, %q): %v; want ErrBadStorePath saying %q", c.storeDir, c.p, err, c.why)
		}
		if !strings.Contains(err.Error(), strconv.Quote(c.p)) {
			t.Errorf("ParseStorePath(%s, %q): %q does not name the path", c.storeDir, c.p, err)
		}
	}
}

func TestToStorePath(t *testing.T) {
	good := spTestHash + "-hello"
	sp := "/nix/store/" + good
	cases := []struct {
		p, sp, rest string
		ok          bool
	}{
		{sp, sp, "", true},
		{sp + "/", sp, "/", true},
		{sp + "/bin/x", sp, "/bin/x", true},
		{sp + "/bin/../../x", sp, "/bin/../../x", true}, // the rest is not interpreted
		{sp + "//x", sp, "//x", true},
		{"/nix/store/" + good + "-2/x", "/nix/store/" + good + "-2", "/x", true},

		{"/nix/store", "", "", false},
		{"/nix/store/", "", "", false},
		{"/nix/store//" + good, "", "", false},
		{"/nix/store/./" + good, "", "", false},
		{"/nix/store/../" + good, "", "", false},
		{"/nix/store/..", "", "", false},
		{"/nix/store/" + spTestHash + "/x", "", "", false},
		{"/nix/store/" + spTestHash + "-a b/x", "", "", false},
		{"/nix/storex/" + good, "", "", false},
		{"/gnu/store/" + good, "", "", false},
		{"nix/store/" + good, "", "", false},
		{"", "", "", false},
	}
	for _, c := range cases {
		gotSP, rest, err := ToStorePath("/nix/store", c.p)
		if c.ok {
			if err != nil || gotSP != c.sp || rest != c.rest {
				t.Errorf("ToStorePath(%q) = %q, %q, %v; want %q, %q", c.p, gotSP, rest, err, c.sp, c.rest)
			}
			continue
		}
		if err == nil {
			t.Errorf("ToStorePath(%q) = %q, %q; want an error", c.p, gotSP, rest)
		} else if !errors.Is(err, ErrBadStorePath) {
			t.Errorf("ToStorePath(%q): %v does not wrap ErrBadStorePath", c.p, err)
		}
	}
}

func FuzzParseStorePath(f *testing.F) {
	for _, s := range []string{
		"/nix/store/" + spTestHash + "-hello",
		"/nix/store/" + spTestHash + "-hello/bin/x",
		"/nix/store/" + spTestHash + "-.",
		"/nix/store/" + spTestHash,
		"/nix/store/../" + spTestHash + "-x",
		"/nix/store//" + spTestHash + "-x/",
		"nix/store/x",
		"/",
		"",
		"/nix/store/" + spTestHash + "-a\x00b",
		"/nix/store/" + spTestHash + "-" + strings.Repeat("x", 212),
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, p string) {
		const dir = "/nix/store"
		base, err := Parse(dir, p)
		if err != nil {
			if !errors.Is(err, ErrBadStorePath) {
				t.Fatalf("ParseStorePath(%q): %v does not wrap ErrBadStorePath", p, err)
			}
		} else {
			spCheckAcceptedBase(t, base)
			again, err := Parse(dir, dir+"/"+base)
			if err != nil || again != base {
				t.Fatalf("ParseStorePath(%q) = %q, but re-parsing gives %q, %v", p, base, again, err)
			}
		}
		sp, rest, err := ToStorePath(dir, p)
		if err != nil {
			if !errors.Is(err, ErrBadStorePath) {
				t.Fatalf("ToStorePath(%q): %v does not wrap ErrBadStorePath", p, err)
			}
			return
		}
		if !strings.HasPrefix(sp, dir+"/") {
			t.Fatalf("ToStorePath(%q) = %q", p, sp)
		}
		spCheckAcceptedBase(t, sp[len(dir)+1:])
		if sp+rest != p || (rest != "" && rest[0] != '/') {
			t.Fatalf("ToStorePath(%q) = %q, %q", p, sp, rest)
		}
		if err := ValidateBaseName(sp[len(dir)+1:]); err != nil {
			t.Fatalf("ToStorePath(%q) = %q, invalid: %v", p, sp, err)
		}
	})
}

func spCheckAcceptedBase(t *testing.T, base string) {
	t.Helper()
	if len(base) < HashLen+2 || len(base) > HashLen+1+MaxNameLen {
		t.Fatalf("accepted %q of length %d", base, len(base))
	}
	for i := 0; i < len(base); i++ {
		c := base[i]
		switch {
		case i < HashLen:
			if !strings.ContainsRune(base32Alphabet, rune(c)) {
				t.Fatalf("accepted %q with hash character %q", base, c)
			}
		case i == HashLen:
			if c != '-' {
				t.Fatalf("accepted %q without '-'", base)
			}
		default:
			if !strings.ContainsRune("0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ+-._?=", rune(c)) {
				t.Fatalf("accepted %q with name character %q", base, c)
			}
		}
	}
	if err := ValidateBaseName(base); err != nil {
		t.Fatalf("accepted %q that does not validate: %v", base, err)
	}
	if HashPart(base)+"-"+NamePart(base) != base {
		t.Fatalf("HashPart/NamePart do not split %q", base)
	}
}
