package storepath

import (
	"errors"
	"testing"
)

// Vectors from Nix 2.8: each path was printed by `nix-store --store
// 'local?root=DIR' --add-fixed [--recursive] ALGO FILE` (or --add, or
// builtins.toFile through nix-instantiate --read-write-mode), and its ca
// column read back from DIR's database. hello.txt is "hello\n", empty is
// empty, d a directory holding a file a ("x"); foo is
// builtins.toFile "foo" "hello" and bar builtins.toFile "bar"
// "ref ${foo} here".
var caVectors = []struct {
	storeDir, path, ca string
	refs               []string
}{
	{"/nix/store", "/nix/store/gy454w1cxaq731grqwylhzf4pp9r5izh-hello.txt", "fixed:sha256:00xyyr3fi8l6hb839bv3f7yb86yjv7xi1cgh1xnhipym4asvb4aq", nil},
	{"/nix/store", "/nix/store/1q82x5ah029adc0r5p06p3ivlzzh3hss-empty", "fixed:sha256:0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73", nil},
	{"/nix/store", "/nix/store/svdva85yi507g9vncgsaxvnd1r808h4w-hello.txt", "fixed:sha1:iwjz551fyw0cxcjgf4l6c879zabd6wpm", nil},
	{"/nix/store", "/nix/store/c51xvp7ql0k41f37pr0f4gb5qi6gwmph-d", "fixed:r:sha1:rvwfpafnra1xswq1v577n1i9hcsihpxc", nil},
	{"/nix/store", "/nix/store/8xkszhbayigjg9vbrrxfa1hp9qflbh6b-hello.txt", "fixed:r:sha512:2q80akf4fi29vbxj82s21m9y6xrdjnwi9q1c3kfab0032zdnl18nzninbjw6n0rz4p76g8s1c5yv9hznv09l085azzqvk4hn9irv389", nil},
	{"/nix/store", "/nix/store/dra1cz5vbrhclpv4y1q0psnbkxz581bk-hello.txt", "fixed:md5:4425hx5d1mc9y39llj4k4nm55i", nil},
	{"/nix/store", "/nix/store/i9pmrzmpshapij2kin22pff6fc2adavx-hello.txt", "fixed:r:sha256:04zwf782yjwnh3q6hz5izfd6jyip8kgw6g6yj43fiqhbyhdd0dqw", nil},
	{"/nix/store", "/nix/store/5z2xnjmzk8mg2axm8rqy92h6646pd2yk-d", "fixed:r:sha256:00a3r8cv7xaw55wjf3lb0gzmfpgsj083h29s5mslnml9k8c0w0zc", nil},
	{"/nix/store", "/nix/store/310sbjjj0kkf5zpszk81r054z76hsrww-foo", "text:sha256:094qif9n4cq4fdg459qzbhg1c6wywawwaaivx0k0x8xhbyx4vwic", nil},
	{"/nix/store", "/nix/store/swk8jdadzyj3jc30kvqxpiv6n596hl7w-bar", "text:sha256:18yzm8prhdnn8kic1898aa3vabicfrnjg0h30nr8ribkllgr4gin", []string{"/nix/store/310sbjjj0kkf5zpszk81r054z76hsrww-foo"}},
	// --store 'local?root=DIR&store=/gnu/store' --add-fixed sha256 hello.txt
	{"/gnu/store", "/gnu/store/wxykb3w2hprzmc82c32q49pfzwx2drsa-hello.txt", "fixed:sha256:00xyyr3fi8l6hb839bv3f7yb86yjv7xi1cgh1xnhipym4asvb4aq", nil},
}

func TestContentAddressedPath(t *testing.T) {
	for _, v := range caVectors {
		base, err := Parse(v.storeDir, v.path)
		if err != nil {
			t.Fatal(err)
		}
		got, err := ContentAddressedPath(v.storeDir, v.path, v.ca, NamePart(base), v.refs)
		if err != nil || got != v.path {
			t.Errorf("ContentAddressedPath(%s) = %q, %v; want %s", v.ca, got, err, v.path)
		}
		c, err := ParseContentAddress(v.ca)
		if err != nil || c.String() != v.ca {
			t.Errorf("ParseContentAddress(%s).String() = %q, %v", v.ca, c.String(), err)
		}
		// Another name, or a reference added, gives another path.
		if p, err := ContentAddressedPath(v.storeDir, v.path, v.ca, NamePart(base)+"x", v.refs); err == nil && p == v.path {
			t.Errorf("%s: the name makes no difference", v.ca)
		}
		if c.Text || c.Recursive && c.Algo == "sha256" {
			if p, _ := ContentAddressedPath(v.storeDir, v.path, v.ca, NamePart(base), append(v.refs, "/nix/store/lx5i78a4izwk2qj1nq8rdc07y8zrwy90-empty")); p == v.path {
				t.Errorf("%s: an added reference makes no difference", v.ca)
			}
		} else if _, err := ContentAddressedPath(v.storeDir, v.path, v.ca, NamePart(base), []string{"/nix/store/lx5i78a4izwk2qj1nq8rdc07y8zrwy90-empty"}); !errors.Is(err, ErrBadContentAddress) {
			t.Errorf("%s with a reference: %v, want ErrBadContentAddress", v.ca, err)
		}
	}
}

func TestContentAddressHashForms(t *testing.T) {
	// The same sha256 in base-16, base-32 and base64 gives one address.
	forms := []string{
		"fixed:r:sha256:1c37d01af40be2e80691de3cc3df44377a699afbb17c68f080964b2fd071fc13",
		"fixed:r:sha256:04zwf782yjwnh3q6hz5izfd6jyip8kgw6g6yj43fiqhbyhdd0dqw",
		"fixed:r:sha256:HDfQGvQL4ugGkd48w99EN3ppmvuxfGjwgJZLL9Bx/BM=",
	}
	for _, f := range forms {
		c, err := ParseContentAddress(f)
		if err != nil || c.String() != forms[1] {
			t.Errorf("%s: %q, %v", f, c.String(), err)
		}
	}
}

func TestContentAddressSelfReference(t *testing.T) {
	h := b32MustHex32(t, fixedOutputVectors[0].narHash)
	self := MakeFixedOutputPathRecursive("/nix/store", h, "x", nil, true)
	ca := ContentAddress{Recursive: true, Algo: "sha256", Hash: h[:]}.String()
	got, err := ContentAddressedPath("/nix/store", self, ca, "x", []string{self})
	if err != nil || got != self {
		t.Errorf("self-referencing: %q, %v; want %s", got, err, self)
	}
}

func TestParseContentAddressBad(t *testing.T) {
	for _, s := range []string{
		"", "sha256:abc", "fixed:", "fixed:sha256", "fixed:sha256:", "fixed:r:sha3:00",
		"text:sha1:iwjz551fyw0cxcjgf4l6c879zabd6wpm",
		"fixed:sha256:00xyyr3fi8l6hb839bv3f7yb86yjv7xi1cgh1xnhipym4asvb4a",  // one short
		"fixed:sha256:00xyyr3fi8l6hb839bv3f7yb86yjv7xi1cgh1xnhipym4asvb4ae", // e is not base-32
		"fixed:md5:zz25hx5d1mc9y39llj4k4nm55izzzzzz",                        // 32 chars: base-16, not hex
	} {
		if _, err := ParseContentAddress(s); !errors.Is(err, ErrBadContentAddress) {
			t.Errorf("ParseContentAddress(%q) = %v, want ErrBadContentAddress", s, err)
		}
	}
}
