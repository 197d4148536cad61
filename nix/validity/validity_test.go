package validity

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"testing"
)

const storeDir = "/nix/store"

// TestDumpDBRoundTrip: what real Nix 2.8's `nix-store --dump-db` wrote
// (testdata/dump-db.txt, 60 records of a mkstore store, with and without
// derivers) is read record by record and written back byte for byte.
func TestDumpDBRoundTrip(t *testing.T) {
	data, err := os.ReadFile("testdata/dump-db.txt")
	if err != nil {
		t.Fatal(err)
	}
	infos, err := ReadAll(bytes.NewReader(data), storeDir, true)
	if err != nil {
		t.Fatal(err)
	}
	if len(infos) != 60 {
		t.Fatalf("%d records, want 60", len(infos))
	}
	noDeriver := 0
	for _, in := range infos {
		if !in.HashGiven || in.NarSize == 0 || in.NarHash == ([32]byte{}) {
			t.Errorf("%s: hash not read: %+v", in.Path, in)
		}
		if in.Deriver == "" {
			noDeriver++
		}
	}
	if noDeriver == 0 || noDeriver == len(infos) {
		t.Errorf("%d of %d without deriver: the sample should have both", noDeriver, len(infos))
	}
	var out bytes.Buffer
	if err := Write(&out, infos, true); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(out.Bytes(), data) {
		t.Fatalf("written back differs from nix-store --dump-db's:\n%s", firstDiff(out.String(), string(data)))
	}
	// Without hashes: nix-store --register-validity's plain input.
	out.Reset()
	if err := Write(&out, infos, false); err != nil {
		t.Fatal(err)
	}
	back, err := ReadAll(&out, storeDir, false)
	if err != nil {
		t.Fatal(err)
	}
	for i := range back {
		a, b := back[i], infos[i]
		if a.Path != b.Path || a.Deriver != b.Deriver || strings.Join(a.References, " ") != strings.Join(b.References, " ") || a.HashGiven {
			t.Fatalf("record %d: %+v, want %+v without hash", i, a, b)
		}
	}
}

func firstDiff(a, b string) string {
	la, lb := strings.Split(a, "\n"), strings.Split(b, "\n")
	for i := range min(len(la), len(lb)) {
		if la[i] != lb[i] {
			return fmt.Sprintf("line %d: %q vs %q", i+1, la[i], lb[i])
		}
	}
	return "lengths differ"
}

const (
	pA = "/nix/store/0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c-a"
	pB = "/nix/store/1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d-b"
	pD = "/nix/store/2f2f2f2f2f2f2f2f2f2f2f2f2f2f2f2f-b.drv"
	hx = "89e2932b39a8faab8d90305495bd907a3bdc43131a230958d1115bc68aacc7c9"
)

// TestReadForms: hashes in every form Nix's parseAny takes for SHA-256,
// references sorted and deduplicated (Nix reads them into a set), an
// empty input, several records.
func TestReadForms(t *testing.T) {
	h, err := ParseHash(hx)
	if err != nil {
		t.Fatal(err)
	}
	for _, form := range []string{hx, "sha256:" + hx, h.Base32(), h.String(), h.SRI(), "sha256:" + h.SRI()[len("sha256-"):]} {
		in := pA + "\n" + form + "\n7\n" + pD + "\n3\n" + pB + "\n" + pA + "\n" + pB + "\n"
		infos, err := ReadAll(strings.NewReader(in), storeDir, true)
		if err != nil {
			t.Fatalf("%s: %v", form, err)
		}
		if len(infos) != 1 || infos[0].NarHash != h || infos[0].NarSize != 7 || infos[0].Deriver != pD ||
			strings.Join(infos[0].References, " ") != pA+" "+pB {
			t.Fatalf("%s: %+v", form, infos)
		}
	}
	if infos, err := ReadAll(strings.NewReader(""), storeDir, false); err != nil || len(infos) != 0 {
		t.Fatalf("empty input: %v %v", infos, err)
	}
	two := pA + "\n\n0\n" + pB + "\n" + pD + "\n1\n" + pA + "\n"
	infos, err := ReadAll(strings.NewReader(two), storeDir, false)
	if err != nil || len(infos) != 2 || infos[1].Deriver != pD || infos[1].References[0] != pA || len(infos[0].References) != 0 {
		t.Fatalf("two records: %+v %v", infos, err)
	}
}

// TestReadRefuses: malformed input is an error wrapping
// ErrBadRegistration that names the line, never a panic or a silent stop;
// a record cut after any line (or inside one) is refused.
func TestReadRefuses(t *testing.T) {
	good := pA + "\n" + hx + "\n7\n" + pD + "\n2\n" + pB + "\n" + pA + "\n"
	for cut := 1; cut < len(good); cut++ {
		if _, err := ReadAll(strings.NewReader(good[:cut]), storeDir, true); !errors.Is(err, ErrBadRegistration) {
			t.Errorf("cut at %d (%q): %v", cut, good[:cut], err)
		}
	}
	for _, c := range []struct {
		name, in  string
		hashGiven bool
		want      string
	}{
		{"empty path line", "\n\n0\n", false, "line 1"},
		{"not a store path", "/etc/passwd\n\n0\n", false, "store path"},
		{"other store dir", "/gnu/store/0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c-a\n\n0\n", false, "store path"},
		{"bad deriver", pA + "\nfoo\n0\n", false, "deriver"},
		{"bad reference", pA + "\n\n1\n/nix/store/x\n", false, "reference"},
		{"negative count", pA + "\n\n-1\n", false, "number of references"},
		{"huge count", pA + "\n\n99999999999\n", false, "number of references"},
		{"count not a number", pA + "\n\nthree\n", false, "number of references"},
		{"too few references", pA + "\n\n2\n" + pB + "\n", false, "ends before the reference"},
		{"bad hash", pA + "\nxyz\n7\n\n0\n", true, "NAR hash"},
		{"md5 hash", pA + "\nmd5:" + hx[:32] + "\n7\n\n0\n", true, "NAR hash"},
		{"bad size", pA + "\n" + hx + "\n-7\n\n0\n", true, "NAR size"},
		{"long line", strings.Repeat("x", MaxLine+10) + "\n", false, "longer than"},
		{"CRLF", pA + "\r\n\r\n0\r\n", false, "store path"},
	} {
		_, err := ReadAll(strings.NewReader(c.in), storeDir, c.hashGiven)
		if !errors.Is(err, ErrBadRegistration) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v; want ErrBadRegistration mentioning %q", c.name, err, c.want)
		}
	}
}

type failWriter struct{}

func (failWriter) Write([]byte) (int, error) { return 0, io.ErrShortWrite }

func TestWriteError(t *testing.T) {
	err := Write(failWriter{}, []Info{{Path: pA}}, false)
	if !errors.Is(err, io.ErrShortWrite) || !strings.Contains(err.Error(), pA) {
		t.Fatalf("%v", err)
	}
}

// FuzzReadAll: any input reads without a panic; what reads back writes
// out and reads again to the same registrations.
func FuzzReadAll(f *testing.F) {
	if data, err := os.ReadFile("testdata/dump-db.txt"); err == nil {
		f.Add(data[:min(len(data), 2000)], true)
	}
	f.Add([]byte(pA+"\n\n1\n"+pB+"\n"), false)
	f.Add([]byte(pA+"\n"+hx+"\n7\n"+pD+"\n0\n"), true)
	f.Fuzz(func(t *testing.T, data []byte, hashGiven bool) {
		infos, err := ReadAll(bytes.NewReader(data), storeDir, hashGiven)
		if err != nil {
			return
		}
		var out bytes.Buffer
		if err := Write(&out, infos, hashGiven); err != nil {
			t.Fatal(err)
		}
		back, err := ReadAll(&out, storeDir, hashGiven)
		if err != nil || len(back) != len(infos) {
			t.Fatalf("written form does not read back: %v", err)
		}
		for i := range back {
			a, b := back[i], infos[i]
			if a.Path != b.Path || a.NarHash != b.NarHash || a.NarSize != b.NarSize || a.Deriver != b.Deriver || strings.Join(a.References, " ") != strings.Join(b.References, " ") {
				t.Fatalf("record %d: %+v != %+v", i, a, b)
			}
		}
	})
}
