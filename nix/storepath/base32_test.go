package storepath

import (
	"bytes"
	"crypto/md5"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/hex"
	"errors"
	"strings"
	"testing"
)

// Vectors from Nix 2.8: `nix-hash --type T --base32 --flat FILE` and
// `nix-hash --type sha256 --to-base32 HEX`.
var base32HexVectors = []struct{ hex, b32 string }{
	{"0000000000000000000000000000000000000000000000000000000000000000", "0000000000000000000000000000000000000000000000000000"},
	{"ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff", "1zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz"},
	{"0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef", "1vydmf4nfi9307pwvaw9cx2j60ggrnmqjrs54c0yzkdbi5kla8q1"},
	{"8000000000000000000000000000000000000000000000000000000000000001", "0080000000000000000000000000000000000000000000000040"},
	// sha256, sha1, md5 of "hello\n"
	{"5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03", "00xyyr3fi8l6hb839bv3f7yb86yjv7xi1cgh1xnhipym4asvb4aq"},
	{"f572d396fae9206628714fb2ce00f72e94f2258f", "iwjz551fyw0cxcjgf4l6c879zabd6wpm"},
	{"b1946ac92492d2347c6235b4d2611184", "4425hx5d1mc9y39llj4k4nm55i"},
	// sha256, sha1, md5 of ""
	{"e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855", "0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73"},
	{"da39a3ee5e6b4b0d3255bfef95601890afd80709", "143xibwh31h9bvxzalr0sjvbbvpa6ffs"},
	{"d41d8cd98f00b204e9800998ecf8427e", "3y8bwfr609h3lh9ch0izcqq7fl"},
	// sha256, sha1, md5 of 1000 'x'
	{"44f8354494a5ba03ba1792a8d3e9c534c47a9181980fde7a3f44b06ef2ae7c7f", "0zvwmvr6xc247xxdw3wqh68pmi1lqplx7a4j2yx07fm5ji23by24"},
	{"c3efa690fa3fdd2e2526853eed670538ea127638", "71v15siq0mkysgl54qjjxp9zza8advy3"},
	{"398533d48111e9f664b1f64cb10c4b63", "339c6b2k7nn5jgds8ih7a3719r"},
	// sha512 of "hello\n"
	{"e7c22b994c59d9cf2b48e549b1e24666636045930d3da7c1acb299d1c3b7f931f94aae41edda2c2b207a36e10f8bcb8d45223e54878f5b316e7ce3b6bc019629",
		"0lrc0dwnvipqviibf7qfm1y492qvjwb1zhkcyi05cndmva1mr5gjcgrnz1x36djmk0sfg8djd2n0qv68vib2jg590mwznar9jcjphp7"},
}

func TestBase32Vectors(t *testing.T) {
	for _, v := range base32HexVectors {
		b, err := hex.DecodeString(v.hex)
		if err != nil {
			t.Fatal(err)
		}
		if got := EncodeBase32(b); got != v.b32 {
			t.Errorf("EncodeBase32(%s) = %s, want %s", v.hex, got, v.b32)
		}
		if got := Base32Len(len(b)); got != len(v.b32) {
			t.Errorf("Base32Len(%d) = %d, want %d", len(b), got, len(v.b32))
		}
		d, err := DecodeBase32(v.b32)
		if err != nil || !bytes.Equal(d, b) {
			t.Errorf("DecodeBase32(%s) = %x, %v; want %s", v.b32, d, err, v.hex)
		}
	}
}

// TestBase32OfGoHashes checks that Nix's printed hashes of known contents
// (from nix-hash --flat) match Go's hashes of the same bytes.
func TestBase32OfGoHashes(t *testing.T) {
	for _, c := range []struct {
		data                    string
		sha256, sha1, md5, s512 string
	}{
		{data: "hello\n", sha256: "00xyyr3fi8l6hb839bv3f7yb86yjv7xi1cgh1xnhipym4asvb4aq", sha1: "iwjz551fyw0cxcjgf4l6c879zabd6wpm", md5: "4425hx5d1mc9y39llj4k4nm55i",
			s512: "0lrc0dwnvipqviibf7qfm1y492qvjwb1zhkcyi05cndmva1mr5gjcgrnz1x36djmk0sfg8djd2n0qv68vib2jg590mwznar9jcjphp7"},
		{data: "", sha256: "0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73", sha1: "143xibwh31h9bvxzalr0sjvbbvpa6ffs", md5: "3y8bwfr609h3lh9ch0izcqq7fl"},
		{data: strings.Repeat("x", 1000), sha256: "0zvwmvr6xc247xxdw3wqh68pmi1lqplx7a4j2yx07fm5ji23by24", sha1: "71v15siq0mkysgl54qjjxp9zza8advy3", md5: "339c6b2k7nn5jgds8ih7a3719r"},
	} {
		s256 := sha256.Sum256([]byte(c.data))
		s1 := sha1.Sum([]byte(c.data))
		m5 := md5.Sum([]byte(c.data))
		if got := EncodeBase32(s256[:]); got != c.sha256 {
			t.Errorf("sha256 %q: %s, want %s", c.data, got, c.sha256)
		}
		if got := EncodeBase32(s1[:]); got != c.sha1 {
			t.Errorf("sha1 %q: %s, want %s", c.data, got, c.sha1)
		}
		if got := EncodeBase32(m5[:]); got != c.md5 {
			t.Errorf("md5 %q: %s, want %s", c.data, got, c.md5)
		}
		if c.s512 != "" {
			s := sha512.Sum512([]byte(c.data))
			if got := EncodeBase32(s[:]); got != c.s512 {
				t.Errorf("sha512 %q: %s, want %s", c.data, got, c.s512)
			}
		}
	}
}

func TestBase32Len(t *testing.T) {
	for n, want := range map[int]int{0: 0, 1: 2, 2: 4, 3: 5, 4: 7, 5: 8, 16: 26, 20: 32, 32: 52, 64: 103} {
		if got := Base32Len(n); got != want {
			t.Errorf("Base32Len(%d) = %d, want %d", n, got, want)
		}
	}
}

func TestBase32RoundTripAllLengths(t *testing.T) {
	for n := 0; n <= 70; n++ {
		for _, fill := range []byte{0x00, 0xff, 0xa5, 0x5a} {
			b := bytes.Repeat([]byte{fill}, n)
			for i := range b {
				b[i] ^= byte(i * 7)
			}
			s := EncodeBase32(b)
			if len(s) != Base32Len(n) {
				t.Fatalf("len(EncodeBase32(%d bytes)) = %d", n, len(s))
			}
			d, err := DecodeBase32(s)
			if err != nil || !bytes.Equal(d, b) {
				t.Fatalf("round trip of %x: %x, %v", b, d, err)
			}
		}
	}
}

func TestDecodeBase32Errors(t *testing.T) {
	for _, s := range []string{
		"0000000000000000000000000000000e",                     // 'e' not in alphabet
		"000000000000000000000000000000o0",                     // 'o'
		"u0000000000000000000000000000000",                     // 'u'
		"0000000000000000000000000000t000",                     // 't'
		"0000000000000000000000000000000A",                     // uppercase
		"000000000000000000000000000000 0",                     // space
		"2000000000000000000000000000000000000000000000000000", // 52 chars: top char holds 1 overflow bit
		"g000000000000000000000000000000000000000000000000000", // 52 chars: top char 16 overflows
		"000",   // 3 chars: a length no encoding has
		"0",     // 1 char: likewise
		"zz",    // 2 chars is one byte; 'z' at the top overflows
		"\x00z", // NUL
	} {
		if b, err := DecodeBase32(s); err == nil {
			t.Errorf("DecodeBase32(%q) = %x, want error", s, b)
		} else if !errors.Is(err, ErrBadBase32) {
			t.Errorf("DecodeBase32(%q): error %v does not wrap ErrBadBase32", s, err)
		} else if !strings.HasPrefix(err.Error(), "store: ") {
			t.Errorf("DecodeBase32(%q): error %q lacks the store: prefix", s, err)
		}
	}
	// The largest values that fit.
	for _, s := range []string{"1zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz", "7z", "", "zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz"} {
		if _, err := DecodeBase32(s); err != nil {
			t.Errorf("DecodeBase32(%q): %v", s, err)
		}
	}
}

func TestCompressHash(t *testing.T) {
	h := make([]byte, 32)
	for i := range h {
		h[i] = byte(i + 1)
	}
	got := CompressHash(h, 20)
	want := make([]byte, 20)
	for i := range want {
		want[i] = byte(i + 1)
		if i+20 < 32 {
			want[i] ^= byte(i + 21)
		}
	}
	if !bytes.Equal(got, want) {
		t.Errorf("CompressHash = %x, want %x", got, want)
	}
	if got := CompressHash(h, 32); !bytes.Equal(got, h) {
		t.Errorf("CompressHash to the same size changed it: %x", got)
	}
	if got := CompressHash(h, 0); len(got) != 0 {
		t.Errorf("CompressHash(h, 0) = %x", got)
	}
}

func b32MustHex32(t testing.TB, s string) [32]byte {
	t.Helper()
	var h [32]byte
	b, err := hex.DecodeString(s)
	if err != nil || len(b) != 32 {
		t.Fatalf("bad hex %q", s)
	}
	copy(h[:], b)
	return h
}

// Vectors from Nix 2.8: `nix-store --store DIR --add X` printed the path and
// `nix-hash --type sha256 X` the NAR hash. The /gnu/store ones came from
// --store 'local?root=DIR&store=/gnu/store'. hello.txt is "hello\n",
// exe.sh the same with mode 0755, empty is empty, srcdir a small tree.
var fixedOutputVectors = []struct {
	storeDir, name, narHash, path string
}{
	{"/nix/store", "hello.txt", "1c37d01af40be2e80691de3cc3df44377a699afbb17c68f080964b2fd071fc13", "/nix/store/i9pmrzmpshapij2kin22pff6fc2adavx-hello.txt"},
	{"/nix/store", "empty", "77ac62e2629d8e45f624589c0c8bf99e24b3a722349bf1e79bc186008534e246", "/nix/store/lx5i78a4izwk2qj1nq8rdc07y8zrwy90-empty"},
	{"/nix/store", "exe.sh", "65436039d3f93ca19a8dbf1c60b15739ed58f53f14b8d372acc1b351533010fa", "/nix/store/3asri0fyqy76nq62cfvnbghxqvh5k8d0-exe.sh"},
	{"/nix/store", "srcdir", "8a04c24984f1e55c2a011ed532e625376159fe0372c2da20a1b4d019bd1d4c00", "/nix/store/3ss9qrb6la5dvjnwxy7mxm014mrbris1-srcdir"},
	{"/gnu/store", "hello.txt", "1c37d01af40be2e80691de3cc3df44377a699afbb17c68f080964b2fd071fc13", "/gnu/store/mai503rgk7jq72577x5iwgyc5izfvp9i-hello.txt"},
	{"/gnu/store", "srcdir", "8a04c24984f1e55c2a011ed532e625376159fe0372c2da20a1b4d019bd1d4c00", "/gnu/store/hlw1vgb1y5hiffby1wa9gh0qznlfalr3-srcdir"},
}

func TestMakeFixedOutputPathRecursive(t *testing.T) {
	for _, v := range fixedOutputVectors {
		got := MakeFixedOutputPathRecursive(v.storeDir, b32MustHex32(t, v.narHash), v.name, nil, false)
		if got != v.path {
			t.Errorf("MakeFixedOutputPathRecursive(%s, %s) = %s, want %s", v.storeDir, v.name, got, v.path)
		}
		if _, err := Parse(v.storeDir, got); err != nil {
			t.Errorf("result does not parse: %v", err)
		}
	}
}

func TestMakeFixedOutputPathRecursiveRefs(t *testing.T) {
	h := b32MustHex32(t, fixedOutputVectors[0].narHash)
	a := "/nix/store/310sbjjj0kkf5zpszk81r054z76hsrww-foo"
	b := "/nix/store/i9pmrzmpshapij2kin22pff6fc2adavx-hello.txt"
	p1 := MakeFixedOutputPathRecursive("/nix/store", h, "x", []string{b, a}, true)
	p2 := MakeFixedOutputPathRecursive("/nix/store", h, "x", []string{a, b}, true)
	want := MakeStorePath("/nix/store", "source:"+a+":"+b+":self", h, "x")
	if p1 != want || p2 != want {
		t.Errorf("got %s and %s, want %s", p1, p2, want)
	}
	refs := []string{b, a}
	MakeFixedOutputPathRecursive("/nix/store", h, "x", refs, false)
	if refs[0] != b {
		t.Errorf("MakeFixedOutputPathRecursive reordered its argument")
	}
	if MakeFixedOutputPathRecursive("/nix/store", h, "x", nil, true) == MakeFixedOutputPathRecursive("/nix/store", h, "x", nil, false) {
		t.Errorf("selfRef makes no difference")
	}
}

// TestMakeStorePathText checks the reference part of the type against
// Nix 2.8's builtins.toFile (type "text" plus ":"+ref per reference, hash
// the SHA-256 of the contents), evaluated by
// nix-instantiate --eval --strict -E 'let a = builtins.toFile "foo" "hello";
// in [ a (builtins.toFile "bar" "ref ${a} here") ]'.
func TestMakeStorePathText(t *testing.T) {
	foo := "/nix/store/310sbjjj0kkf5zpszk81r054z76hsrww-foo"
	if got := MakeStorePath("/nix/store", "text", sha256.Sum256([]byte("hello")), "foo"); got != foo {
		t.Errorf("foo: %s, want %s", got, foo)
	}
	bar := "/nix/store/swk8jdadzyj3jc30kvqxpiv6n596hl7w-bar"
	if got := MakeStorePath("/nix/store", "text:"+foo, sha256.Sum256([]byte("ref "+foo+" here")), "bar"); got != bar {
		t.Errorf("bar: %s, want %s", got, bar)
	}
}

func FuzzBase32RoundTrip(f *testing.F) {
	f.Add([]byte{}, "")
	f.Add([]byte{0}, "00")
	f.Add([]byte("hello\n"), "00xyyr3fi8l6hb839bv3f7yb86yjv7xi1cgh1xnhipym4asvb4aq")
	f.Add(bytes.Repeat([]byte{0xff}, 32), "1zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz")
	f.Fuzz(func(t *testing.T, b []byte, s string) {
		enc := EncodeBase32(b)
		if len(enc) != Base32Len(len(b)) {
			t.Fatalf("len(EncodeBase32(%x)) = %d, want %d", b, len(enc), Base32Len(len(b)))
		}
		dec, err := DecodeBase32(enc)
		if err != nil || !bytes.Equal(dec, b) {
			t.Fatalf("DecodeBase32(EncodeBase32(%x)) = %x, %v", b, dec, err)
		}
		// Any string that decodes must re-encode to itself.
		d, err := DecodeBase32(s)
		if err != nil {
			if !errors.Is(err, ErrBadBase32) {
				t.Fatalf("DecodeBase32(%q): %v does not wrap ErrBadBase32", s, err)
			}
			return
		}
		if len(d) != len(s)*5/8 {
			t.Fatalf("DecodeBase32(%q) gave %d bytes", s, len(d))
		}
		if e := EncodeBase32(d); e != s {
			t.Fatalf("EncodeBase32(DecodeBase32(%q)) = %q", s, e)
		}
	})
}
