package derivation

import (
	"errors"
	"os"
	"reflect"
	"strings"
	"testing"
)

const sd = "/nix/store"

// TestRealDrvRoundTrip: a .drv written by real Nix 2.8 parses and is
// written back byte for byte.
func TestRealDrvRoundTrip(t *testing.T) {
	data, err := os.ReadFile("testdata/simple.drv")
	if err != nil {
		t.Fatal(err)
	}
	d, err := Parse(data, sd)
	if err != nil {
		t.Fatal(err)
	}
	if d.String() != string(data) {
		t.Fatalf("written back:\n%s\nwant:\n%s", d.String(), data)
	}
	if len(d.Outputs) != 1 || d.OutputPaths()["out"] == "" || len(d.InputDrvs) != 3 || d.Builder != "/bin/sh" {
		t.Fatalf("%+v", d)
	}
}

const (
	pOut = "/nix/store/9bim2ddq1152jxic5i00fvih7skka7id-x"
	pDrv = "/nix/store/7mjxjilfh1027gvrr78nvqy9m93zwazv-y.drv"
	pSrc = "/nix/store/i9xs35dsx4a2rsc6ax8wsjn4m09wpkbw-src"
)

func sample() *Derivation {
	return &Derivation{
		Outputs:   []Output{{Name: "dev", Path: pOut + "-dev"}, {Name: "out", Path: pOut, HashAlgo: "r:sha256", Hash: "00ff"}},
		InputDrvs: []InputDrv{{Path: pDrv, Outputs: []string{"dev", "out"}}},
		InputSrcs: []string{pSrc},
		Platform:  "x86_64-linux",
		Builder:   "/bin/sh",
		Args:      []string{"-c", "echo \"hi\"\n\tdone\\\r"},
		Env:       []EnvVar{{"b", "\"quoted\" \\ back\nslash"}, {"a", ""}},
	}
}

// TestEscapesRoundTrip: every escaped character survives String and
// Parse; the environment keeps its order.
func TestEscapesRoundTrip(t *testing.T) {
	d := sample()
	back, err := Parse([]byte(d.String()), sd)
	if err != nil {
		t.Fatalf("%v\n%s", err, d.String())
	}
	if !reflect.DeepEqual(back, d) {
		t.Fatalf("got %+v\nwant %+v", back, d)
	}
	// A content-addressed output not yet built has no path.
	ca := `Derive([("out","","r:sha256","")],[],[],"x","/bin/sh",[],[])`
	if d, err := Parse([]byte(ca), sd); err != nil || d.Outputs[0].Path != "" || d.String() != ca || len(d.OutputPaths()) != 0 {
		t.Fatalf("%v %+v", err, d)
	}
	// Other escaped characters stand for themselves, as Nix reads them.
	if d, err := Parse([]byte(`Derive([],[],[],"x","a\qb",[],[])`), sd); err != nil || d.Builder != "aqb" {
		t.Fatalf("%v %+v", err, d)
	}
}

// TestRefuses: malformed input wraps ErrBadDerivation, never panics;
// a good .drv cut at any byte is refused.
func TestRefuses(t *testing.T) {
	good := sample().String()
	for cut := 0; cut < len(good); cut++ {
		if _, err := Parse([]byte(good[:cut]), sd); !errors.Is(err, ErrBadDerivation) {
			t.Fatalf("cut at %d: %v", cut, err)
		}
	}
	for _, c := range []struct{ name, in, want string }{
		{"trailing", good + "\n", "after the end"},
		{"not Derive", "DeriveX(", "expected"},
		{"bad output path", `Derive([("out","/tmp/x","","")],[],[],"x","b",[],[])`, "output path"},
		{"other store", `Derive([("out","/gnu/store/9bim2ddq1152jxic5i00fvih7skka7id-x","","")],[],[],"x","b",[],[])`, "output path"},
		{"unnamed output", `Derive([("","` + pOut + `","","")],[],[],"x","b",[],[])`, "without a name"},
		{"outputs unsorted", `Derive([("out","` + pOut + `","",""),("dev","` + pOut + `","","")],[],[],"x","b",[],[])`, "out of order"},
		{"input outputs unsorted", `Derive([],[("` + pDrv + `",["out","dev"])],[],"x","b",[],[])`, "sorted"},
		{"input drv repeated", `Derive([],[("` + pDrv + `",["out"]),("` + pDrv + `",["out"])],[],"x","b",[],[])`, "out of order"},
		{"bad input src", `Derive([],[],["src"],"x","b",[],[])`, "input source"},
		{"srcs repeated", `Derive([],[],["` + pSrc + `","` + pSrc + `"],"x","b",[],[])`, "out of order"},
	} {
		if _, err := Parse([]byte(c.in), sd); !errors.Is(err, ErrBadDerivation) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v; want ErrBadDerivation mentioning %q", c.name, err, c.want)
		}
	}
}

// FuzzParse: any input parses or is refused without a panic; what
// parses writes out and parses again to the same derivation.
func FuzzParse(f *testing.F) {
	if data, err := os.ReadFile("testdata/simple.drv"); err == nil {
		f.Add(data)
	}
	f.Add([]byte(sample().String()))
	f.Fuzz(func(t *testing.T, data []byte) {
		d, err := Parse(data, sd)
		if err != nil {
			return
		}
		back, err := Parse([]byte(d.String()), sd)
		if err != nil || !reflect.DeepEqual(back, d) {
			t.Fatalf("%v: %+v != %+v", err, back, d)
		}
	})
}

// TestExpectedOutputPathsErrors: an input derivation that cannot be
// loaded, or a fixed output's hash that is not base 16, is an error
// naming it. (The paths themselves are checked against real Nix in
// tests/derivation_interop_test.go.)
func TestExpectedOutputPathsErrors(t *testing.T) {
	d := sample()
	d.Outputs = d.Outputs[:1]
	_, err := d.ExpectedOutputPaths(sd, "x", func(p string) (*Derivation, error) { return nil, os.ErrNotExist }, nil)
	if !errors.Is(err, os.ErrNotExist) || !strings.Contains(err.Error(), pDrv) {
		t.Fatalf("%v", err)
	}
	fixed := &Derivation{Outputs: []Output{{Name: "out", Path: pOut, HashAlgo: "sha256", Hash: "zz"}}}
	if _, err := fixed.ExpectedOutputPaths(sd, "x", nil, nil); !errors.Is(err, ErrBadDerivation) {
		t.Fatalf("%v", err)
	}
}
