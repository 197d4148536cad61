package narinfo

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	"storekeeper/nix/nar"
	"storekeeper/nix/signature"
)

const storeDir = "/nix/store"

// realNarInfos returns the narinfo files real nix copy wrote (testdata).
func realNarInfos(t testing.TB) map[string][]byte {
	t.Helper()
	files, err := filepath.Glob("testdata/*.narinfo")
	if err != nil || len(files) < 5 {
		t.Fatalf("testdata narinfos: %v %v", files, err)
	}
	out := map[string][]byte{}
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		out[filepath.Base(f)] = data
	}
	return out
}

func trustedKeys(t testing.TB) signature.PublicKeys {
	t.Helper()
	var ks []string
	for _, f := range []string{"testdata/test-cache-1.pub", "testdata/other-key-2.pub"} {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		ks = append(ks, strings.TrimSpace(string(data)))
	}
	keys, err := signature.ParsePublicKeys(ks)
	if err != nil {
		t.Fatal(err)
	}
	return keys
}

// TestParseReal: every narinfo nix copy wrote parses, formats back byte
// for byte, and its signatures verify under the keys that made them.
func TestParseReal(t *testing.T) {
	keys := trustedKeys(t)
	for name, data := range realNarInfos(t) {
		t.Run(name, func(t *testing.T) {
			n, err := Parse(data, storeDir)
			if err != nil {
				t.Fatal(err)
			}
			if got := n.String(); got != string(data) {
				t.Errorf("String() differs from nix copy's file:\n%s\nwant:\n%s", got, data)
			}
			n2, err := Read(bytes.NewReader(data), storeDir)
			if err != nil || !reflect.DeepEqual(n, n2) {
				t.Errorf("Read: %+v %v", n2, err)
			}
			if n.FileHash == nil || n.FileSize == 0 || n.URL == "" || n.NarSize == 0 {
				t.Errorf("fields missing: %+v", n)
			}
			if n.CA == "" && len(n.Sigs) == 0 {
				t.Errorf("neither CA nor signature")
			}
			if got := n.ValidSigs(keys); got != len(n.Sigs) {
				t.Errorf("ValidSigs = %d of %d", got, len(n.Sigs))
			}
			if got := n.ValidSigs(signature.PublicKeys{}); got != 0 {
				t.Errorf("ValidSigs with no trusted key = %d", got)
			}
			fp := n.Fingerprint()
			for _, s := range n.Sigs {
				if !keys.Verify(fp, s) {
					t.Errorf("signature %s does not verify %q", s, fp)
				}
				if keys.Verify(fp+"x", s) {
					t.Errorf("signature %s verifies another fingerprint", s)
				}
			}
		})
	}
}

func TestParseFields(t *testing.T) {
	data, err := os.ReadFile("testdata/withrefs-xz.narinfo")
	if err != nil {
		t.Fatal(err)
	}
	n, err := Parse(data, storeDir)
	if err != nil {
		t.Fatal(err)
	}
	// What nix path-info --json said of the same path.
	wantHash, err := nar.ParseHash("sha256-8VcGEpLl7OPy8E0QuvfDar1CfNTurjURc4hFdS5bkyA=")
	if err != nil {
		t.Fatal(err)
	}
	const self = "/nix/store/0c6kzph7l0dcbgmjiwchyfrwsqsq4iy4-withrefs"
	want := &NarInfo{
		StorePath:   self,
		URL:         "nar/0jxf8p37x37fhjddx19krydd2sxbg6di9wppz58jhhc6v3bvnq4r.nar.xz",
		Compression: "xz",
		FileSize:    308,
		NarHash:     wantHash,
		NarSize:     656,
		References: []string{"0c6kzph7l0dcbgmjiwchyfrwsqsq4iy4-withrefs", "dic12prshyzh2cfw4zpavajc5bnr6ppk-tree",
			"i9pmrzmpshapij2kin22pff6fc2adavx-hello.txt"},
		Deriver: "7rjj86a15146cq1d3rhxbyl7c4dkx7mj-prog-1.0.drv",
		Sigs: []string{
			"other-key-2:myDOIsSe9xGHG+5XdPkQb4xSAsgixpO0qI/1G7s0WVmA6Cz5vuWpf3LuOHuu7GHcZklaJK67TGCEPPdEWqCJDQ==",
			"test-cache-1:dzwriMeDcJRAIgC/CDRT02a3oGj0d9SpZcHksTR7Sn8HonVlhBAyRrgE1sJnU/SP3JWTX0ANUIOkDh5uLNL6DA==",
		},
	}
	fh, _ := nar.ParseHash("sha256:0jxf8p37x37fhjddx19krydd2sxbg6di9wppz58jhhc6v3bvnq4r")
	want.FileHash = &fh
	if !reflect.DeepEqual(n, want) {
		t.Errorf("Parse =\n%+v\nwant\n%+v", n, want)
	}
	wantFP := "1;" + self + ";sha256:084kbcp7aic8fc8kbbpfsiy45gbaqgvvl42dy3rf7v75j890cmzi;656;" +
		self + ",/nix/store/dic12prshyzh2cfw4zpavajc5bnr6ppk-tree,/nix/store/i9pmrzmpshapij2kin22pff6fc2adavx-hello.txt"
	if fp := n.Fingerprint(); fp != wantFP {
		t.Errorf("Fingerprint = %q\nwant %q", fp, wantFP)
	}
	keys := trustedKeys(t)
	if got := n.ValidSigs(keys); got != 2 {
		t.Errorf("ValidSigs = %d, want 2", got)
	}
	// A cache that lies about the size, a reference or the hash.
	for _, tamper := range []func(*NarInfo){
		func(m *NarInfo) { m.NarSize++ },
		func(m *NarInfo) { m.References = m.References[1:] },
		func(m *NarInfo) { m.NarHash[0] ^= 1 },
		func(m *NarInfo) { m.StorePath += "x" },
	} {
		m := *n
		m.References = slices.Clone(n.References)
		tamper(&m)
		if got := m.ValidSigs(keys); got != 0 {
			t.Errorf("tampered narinfo: ValidSigs = %d", got)
		}
	}
	if n.StoreDir() != storeDir {
		t.Errorf("StoreDir = %q", n.StoreDir())
	}
}

const minimal = "StorePath: /nix/store/i9pmrzmpshapij2kin22pff6fc2adavx-hello.txt\n" +
	"URL: nar/x.nar\n" +
	"NarHash: sha256:04zwf782yjwnh3q6hz5izfd6jyip8kgw6g6yj43fiqhbyhdd0dqw\n" +
	"NarSize: 120\n"

func TestParseLenient(t *testing.T) {
	for _, c := range []struct {
		name, data string
		check      func(*NarInfo) bool
	}{
		{"minimal", minimal, func(n *NarInfo) bool {
			return n.Compression == "bzip2" && n.FileHash == nil && n.References == nil && n.Deriver == ""
		}},
		{"unknown keys", "Future: thing\n" + minimal + "X-Other: a: b\n", func(n *NarInfo) bool { return n.NarSize == 120 }},
		{"unknown deriver", minimal + "Deriver: unknown-deriver\n", func(n *NarInfo) bool { return n.Deriver == "" }},
		{"base16 hash", strings.Replace(minimal, "sha256:04zwf782yjwnh3q6hz5izfd6jyip8kgw6g6yj43fiqhbyhdd0dqw",
			"sha256:1c37d01af40be2e80691de3cc3df44377a699afbb17c68f080964b2fd071fc13", 1), func(n *NarInfo) bool {
			return n.NarHash.Base32() == "04zwf782yjwnh3q6hz5izfd6jyip8kgw6g6yj43fiqhbyhdd0dqw"
		}},
		{"SRI hash", strings.Replace(minimal, "sha256:04zwf782yjwnh3q6hz5izfd6jyip8kgw6g6yj43fiqhbyhdd0dqw",
			"sha256-HDfQGvQL4ugGkd48w99EN3ppmvuxfGjwgJZLL9Bx/BM=", 1), func(n *NarInfo) bool {
			return n.NarHash.Base32() == "04zwf782yjwnh3q6hz5izfd6jyip8kgw6g6yj43fiqhbyhdd0dqw"
		}},
		{"system and text CA", minimal + "System: x86_64-linux\nCA: text:sha256:04zwf782yjwnh3q6hz5izfd6jyip8kgw6g6yj43fiqhbyhdd0dqw\n",
			func(n *NarInfo) bool { return n.System == "x86_64-linux" && strings.HasPrefix(n.CA, "text:") }},
		{"flat sha1 CA", minimal + "CA: fixed:sha1:0000000000000000000000000000000000000000\n",
			func(n *NarInfo) bool { return n.CA != "" }},
		{"empty references", minimal + "References: \n", func(n *NarInfo) bool { return len(n.References) == 0 }},
		{"spaces between references", minimal + "References:  i9pmrzmpshapij2kin22pff6fc2adavx-hello.txt  0c6kzph7l0dcbgmjiwchyfrwsqsq4iy4-withrefs \n",
			func(n *NarInfo) bool { return len(n.References) == 2 }},
	} {
		t.Run(c.name, func(t *testing.T) {
			n, err := Parse([]byte(c.data), storeDir)
			if err != nil {
				t.Fatal(err)
			}
			if !c.check(n) {
				t.Errorf("%+v", n)
			}
		})
	}
}

func TestParseRejects(t *testing.T) {
	drop := func(key string) string {
		var out []string
		for _, l := range strings.SplitAfter(minimal, "\n") {
			if !strings.HasPrefix(l, key+":") {
				out = append(out, l)
			}
		}
		return strings.Join(out, "")
	}
	sig := "test-cache-1:dzwriMeDcJRAIgC/CDRT02a3oGj0d9SpZcHksTR7Sn8HonVlhBAyRrgE1sJnU/SP3JWTX0ANUIOkDh5uLNL6DA=="
	for _, c := range []struct{ name, data, msg string }{
		{"empty", "", "no StorePath"},
		{"no StorePath", drop("StorePath"), "no StorePath"},
		{"no URL", drop("URL"), "no URL"},
		{"no NarHash", drop("NarHash"), "no NarHash"},
		{"no NarSize", drop("NarSize"), "no NarSize"},
		{"NarSize 0", strings.Replace(minimal, "NarSize: 120", "NarSize: 0", 1), "NarSize is 0"},
		{"NarSize negative", strings.Replace(minimal, "NarSize: 120", "NarSize: -1", 1), "not a number"},
		{"NarSize overflow", strings.Replace(minimal, "NarSize: 120", "NarSize: 18446744073709551616", 1), "not a number"},
		{"empty URL", strings.Replace(minimal, "URL: nar/x.nar", "URL: ", 1), "empty"},
		{"no final newline", strings.TrimSuffix(minimal, "\n"), "does not end with a newline"},
		{"no colon space", minimal + "Sig:" + sig + "\n", `not "Key: value"`},
		{"blank line", minimal + "\n", `line 5 is not "Key: value"`},
		{"CRLF", strings.ReplaceAll(minimal, "\n", "\r\n"), "StorePath"},
		{"other store", strings.Replace(minimal, "/nix/store/", "/gnu/store/", 1), "not in the store"},
		{"not canonical", strings.Replace(minimal, "/nix/store/", "/nix//store/", 1), "not a canonical store path"},
		{"dotdot", strings.Replace(minimal, "/nix/store/", "/nix/store/../store/", 1), "not a canonical store path"},
		{"bad path", strings.Replace(minimal, "i9pmrzmpshapij2kin22pff6fc2adavx-hello.txt", "i9pmrzmpshapij2kin22pff6fc2adavx-hel/lo", 1), "bad store path"},
		{"bad hash", strings.Replace(minimal, "sha256:04zwf", "sha256:04zwe", 1), "bad hash"},
		{"md5 hash", strings.Replace(minimal, "sha256:04zwf782yjwnh3q6hz5izfd6jyip8kgw6g6yj43fiqhbyhdd0dqw", "md5:d41d8cd98f00b204e9800998ecf8427e", 1), "bad hash"},
		{"bad FileHash", minimal + "FileHash: sha256:xyz\n", "FileHash"},
		{"bad FileSize", minimal + "FileSize: 1e3\n", "FileSize: not a number"},
		{"bad reference", minimal + "References: i9pmrzmpshapij2kin22pff6fc2adavx-hello.txt ../etc\n", "bad store path"},
		// Nix splits References at spaces only, and keeps a set: a tab
		// makes one bad name, and a name listed twice would be signed once
		// but fingerprinted twice here.
		{"tab-separated references", minimal + "References: i9pmrzmpshapij2kin22pff6fc2adavx-hello.txt\t0c6kzph7l0dcbgmjiwchyfrwsqsq4iy4-withrefs\n", "bad store path"},
		{"reference twice", minimal + "References: i9pmrzmpshapij2kin22pff6fc2adavx-hello.txt i9pmrzmpshapij2kin22pff6fc2adavx-hello.txt\n", "listed twice"},
		{"full-path reference", minimal + "References: /nix/store/i9pmrzmpshapij2kin22pff6fc2adavx-hello.txt\n", "bad store path"},
		{"bad deriver", minimal + "Deriver: x.drv\n", "Deriver"},
		{"bad sig", minimal + "Sig: test-cache-1:abc\n", "bad signature"},
		{"sig without name", minimal + "Sig: " + sig[len("test-cache-1:"):] + "\n", "bad signature"},
		{"bad CA", minimal + "CA: sha256:abc\n", "neither text: nor fixed:"},
		{"CA algo", minimal + "CA: fixed:r:crc32:abc\n", "no known hash algorithm"},
		{"CA no hash", minimal + "CA: fixed:r:sha256:\n", "has no hash"},
		{"duplicate StorePath", minimal + "StorePath: /nix/store/i9pmrzmpshapij2kin22pff6fc2adavx-hello.txt\n", "given twice"},
		{"duplicate References", minimal + "References: \nReferences: \n", "given twice"},
		{"duplicate NarHash", minimal + "NarHash: sha256:04zwf782yjwnh3q6hz5izfd6jyip8kgw6g6yj43fiqhbyhdd0dqw\n", "given twice"},
		{"too large", minimal + "X: " + strings.Repeat("x", MaxSize) + "\n", "larger than"},
	} {
		t.Run(c.name, func(t *testing.T) {
			n, err := Parse([]byte(c.data), storeDir)
			if !errors.Is(err, ErrBadNarInfo) || !strings.Contains(err.Error(), c.msg) {
				t.Errorf("Parse = %+v, %v; want ErrBadNarInfo and %q", n, err, c.msg)
			}
		})
	}
	// Read stops at MaxSize+1 bytes.
	if _, err := Read(strings.NewReader(minimal+strings.Repeat("X: y\n", MaxSize)), storeDir); !errors.Is(err, ErrBadNarInfo) {
		t.Errorf("Read of a huge narinfo: %v", err)
	}
}

func TestFormat(t *testing.T) {
	h, _ := nar.ParseHash("sha256:04zwf782yjwnh3q6hz5izfd6jyip8kgw6g6yj43fiqhbyhdd0dqw")
	n := &NarInfo{
		StorePath:  "/nix/store/i9pmrzmpshapij2kin22pff6fc2adavx-hello.txt",
		URL:        "nar/x.nar",
		NarHash:    h,
		NarSize:    120,
		References: []string{"zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz-z", "00000000000000000000000000000000-a", "zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz-z"},
		Sigs:       []string{"b:sig", "a:sig", "b:sig"},
		System:     "x86_64-linux",
	}
	want := "StorePath: /nix/store/i9pmrzmpshapij2kin22pff6fc2adavx-hello.txt\nURL: nar/x.nar\nCompression: bzip2\n" +
		"NarHash: sha256:04zwf782yjwnh3q6hz5izfd6jyip8kgw6g6yj43fiqhbyhdd0dqw\nNarSize: 120\n" +
		"References: 00000000000000000000000000000000-a zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz-z\nSystem: x86_64-linux\nSig: a:sig\nSig: b:sig\n"
	if got := n.String(); got != want {
		t.Errorf("String() =\n%s\nwant\n%s", got, want)
	}
	if n.References[0] != "zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz-z" {
		t.Errorf("String() reordered the caller's slice")
	}
}

func TestCacheInfo(t *testing.T) {
	data, err := os.ReadFile("testdata/nix-cache-info")
	if err != nil {
		t.Fatal(err)
	}
	ci, err := ParseCacheInfo(data)
	if err != nil || *ci != (CacheInfo{StoreDir: "/nix/store"}) || ci.String() != string(data) {
		t.Errorf("nix copy's nix-cache-info: %+v %v", ci, err)
	}
	// As cache.nixos.org serves it.
	const nixos = "StoreDir: /nix/store\nWantMassQuery: 1\nPriority: 40\n"
	ci, err = ReadCacheInfo(strings.NewReader(nixos))
	if err != nil || *ci != (CacheInfo{StoreDir: "/nix/store", WantMassQuery: true, Priority: 40, HasPriority: true}) || ci.String() != nixos {
		t.Errorf("cache.nixos.org's: %+v %v", ci, err)
	}
	// Nix's leniency: no final newline, blank lines, lines without a
	// colon, spaces around values, unknown keys.
	ci, err = ParseCacheInfo([]byte("\n\ngarbage line\nStoreDir:/gnu/store  \nWantMassQuery: 0\nFoo: bar\nPriority: -3"))
	if err != nil || *ci != (CacheInfo{StoreDir: "/gnu/store", Priority: -3, HasPriority: true}) {
		t.Errorf("lenient: %+v %v", ci, err)
	}
	if ci, err := ParseCacheInfo(nil); err != nil || ci.StoreDir != "" {
		t.Errorf("empty: %+v %v", ci, err)
	}
	for _, bad := range []string{
		"StoreDir: nix/store\n", "StoreDir: /nix/store/\n", "StoreDir: /nix//store\n", "StoreDir: /nix/../store\n",
		"StoreDir: /nix/store\nStoreDir: /nix/store\n", "Priority: high\n", "Priority: 99999999999999999999\n",
		"X: " + strings.Repeat("x", MaxSize),
	} {
		if ci, err := ParseCacheInfo([]byte(bad)); !errors.Is(err, ErrBadNarInfo) {
			t.Errorf("ParseCacheInfo(%.40q) = %+v, %v", bad, ci, err)
		}
	}
}

// TestValidSigsNameWithSpace: a Sig line's key name is everything before
// its first colon, as in Nix's verifyDetached: "Sig: x test-cache-1:SIG"
// is a signature by a key named "x test-cache-1", which no trusted key
// is, so it is not valid even though SIG is test-cache-1's good signature
// (splitting the line at white space would make it one).
func TestValidSigsNameWithSpace(t *testing.T) {
	data, err := os.ReadFile("testdata/withrefs-xz.narinfo")
	if err != nil {
		t.Fatal(err)
	}
	n, err := Parse(data, storeDir)
	if err != nil {
		t.Fatal(err)
	}
	keys := trustedKeys(t)
	for _, s := range n.Sigs {
		for _, forged := range []string{"x " + s, "x\t" + s, "evil\u00a0" + s} {
			m := *n
			m.Sigs = []string{forged}
			if got := m.ValidSigs(keys); got != 0 {
				t.Errorf("ValidSigs of %q = %d, want 0 (no key is named %q)", forged, got, forged[:strings.IndexByte(forged, ':')])
			}
			// Also as a cache serves it.
			text := strings.Replace(string(data), "Sig: "+s+"\n", "Sig: "+forged+"\n", 1)
			p, err := Parse([]byte(text), storeDir)
			if err != nil {
				continue // refusing the line is as good
			}
			if got := p.ValidSigs(keys); got > len(n.Sigs)-1 {
				t.Errorf("a narinfo with %q: ValidSigs = %d, want at most %d", forged, got, len(n.Sigs)-1)
			}
		}
	}
}
