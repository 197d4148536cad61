package substitute

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"storekeeper/nix/compression"
	"storekeeper/nix/nar"
	"storekeeper/nix/narinfo"
	"storekeeper/nix/signature"
	"storekeeper/nix/storepath"
)

// transports runs fn against the fixture as a file:// cache and as the
// same directory served over HTTP on 127.0.0.1.
func transports(t *testing.T, f *fixture, fn func(t *testing.T, url string)) {
	t.Run("file", func(t *testing.T) { fn(t, f.url()) })
	t.Run("http", func(t *testing.T) {
		srv := newServer(t, f.dir, nil)
		fn(t, srv.URL+"/")
	})
}

func TestLookupFoundEveryCompression(t *testing.T) {
	f := newFixture(t)
	dep := f.add("dep", "a dependency\n", "none", nil, nil, true)
	var es []*entry
	for _, m := range []string{"none", "xz", "zstd", "br"} {
		es = append(es, f.add("hello-"+m, strings.Repeat("hello "+m+"\n", 500), m, []string{dep.want.Path}, nil, true))
	}
	transports(t, f, func(t *testing.T, u string) {
		s := mustNew(t, u, testOptions())
		ctx := context.Background()
		if err := s.Init(ctx); err != nil {
			t.Fatal(err)
		}
		if p := s.Priority(ctx); p != 40 {
			t.Errorf("Priority = %d, want the nix-cache-info's 40", p)
		}
		for _, e := range es {
			o, err := s.Lookup(ctx, e.want)
			if err != nil {
				t.Fatalf("%s: %v", e.ni.Compression, err)
			}
			if o.NarHash != e.want.NarHash || o.NarSize != e.want.NarSize || o.DownloadSize != uint64(len(e.file)) ||
				o.Compression != e.ni.Compression || o.Trust != "signed by test-cache-1" || o.Source != s || o.Path != e.want.Path ||
				!strings.HasSuffix(o.Where, "/"+e.ni.URL) {
				t.Errorf("%s: offer %+v", e.ni.Compression, o)
			}
			got, err := readAll(ctx, s, o)
			if err != nil || !bytes.Equal(got, e.nar) {
				t.Errorf("%s: read %d bytes, %v; want the %d-byte NAR", e.ni.Compression, len(got), err, len(e.nar))
			}
		}
	})
}

func TestLookupNotFound(t *testing.T) {
	f := newFixture(t)
	transports(t, f, func(t *testing.T, u string) {
		s := mustNew(t, u, testOptions())
		_, err := s.Lookup(context.Background(), Want{Path: opaquePath("absent"), NarSize: 1})
		if !errors.Is(err, ErrNotFound) {
			t.Errorf("Lookup of an absent path: %v, want ErrNotFound", err)
		}
	})
}

func TestWrongStoreDir(t *testing.T) {
	f := newFixture(t)
	e := f.add("x", "x", "none", nil, nil, true)
	f.write("nix-cache-info", []byte("StoreDir: /gnu/store\n"))
	transports(t, f, func(t *testing.T, u string) {
		s := mustNew(t, u, testOptions())
		err := s.Init(context.Background())
		if !errors.Is(err, ErrBadSource) || !contains(err, "/gnu/store") || !contains(err, "/nix/store") {
			t.Errorf("Init: %v, want ErrBadSource naming both store dirs", err)
		}
		if _, err2 := s.Lookup(context.Background(), e.want); !errors.Is(err2, ErrBadSource) || err2.Error() != err.Error() {
			t.Errorf("Lookup after a failed Init: %v, want Init's error", err2)
		}
		if p := s.Priority(context.Background()); p != DefaultPriority {
			t.Errorf("Priority of a failed source = %d", p)
		}
	})
}

func TestNoCacheInfo(t *testing.T) {
	f := newFixture(t)
	if err := os.Remove(filepath.Join(f.dir, "nix-cache-info")); err != nil {
		t.Fatal(err)
	}
	transports(t, f, func(t *testing.T, u string) {
		err := mustNew(t, u, testOptions()).Init(context.Background())
		if !errors.Is(err, ErrBadSource) || !contains(err, "not a binary cache") {
			t.Errorf("Init without nix-cache-info: %v", err)
		}
	})
}

// TestLookupRefusals: every narinfo a Lookup must refuse, and why.
func TestLookupRefusals(t *testing.T) {
	f := newFixture(t)
	_, otherPriv, _ := ed25519.GenerateKey(nil)
	otherKey := signature.SecretKey{Name: "other-1", Key: otherPriv}

	type tc struct {
		name  string
		e     *entry
		want  func(*entry) Want
		is    error
		text  string
		check func(t *testing.T, err error)
	}
	var cases []tc
	add := func(name string, mutate func(*narinfo.NarInfo), sign bool, is error, text string) {
		pname := fmt.Sprintf("case-%d", len(cases))
		cases = append(cases, tc{name: name, e: f.add(pname, "contents of "+name, "xz", nil, mutate, sign), is: is, text: text})
	}
	// A narinfo for another path under this path's hash part.
	a := f.add("a", "a", "none", nil, nil, true)
	b := f.add("b", "b", "none", nil, nil, true)
	f.write(strings.TrimPrefix(narinfoPath(b.want.Path), "/"), []byte(a.ni.String()))
	cases = append(cases, tc{name: "another path", e: b, is: ErrMismatch, text: a.want.Path})

	cases = append(cases, tc{name: "hash differs", e: a, want: func(e *entry) Want {
		w := e.want
		w.NarHash = nar.Hash(sha256.Sum256([]byte("other")))
		return w
	}, is: ErrMismatch, text: a.ni.NarHash.String()})
	cases = append(cases, tc{name: "size differs", e: a, want: func(e *entry) Want {
		w := e.want
		w.NarSize++
		return w
	}, is: ErrMismatch, text: "NarSize"})

	for _, bad := range []string{"/etc/passwd", "../secret.nar", "nar/../../x.nar", "http://evil.example/x.nar", "file:///etc/passwd",
		"nar/x.nar?y=/../../etc/passwd", "nar//x.nar", "nar/./x.nar", "%2e%2e/x.nar", "nar/x.nar#f", "nar\\..\\x"} {
		add("url "+bad, func(ni *narinfo.NarInfo) { ni.URL = bad }, true, nil, "URL")
	}
	add("unknown compression", func(ni *narinfo.NarInfo) { ni.Compression = "lz4" }, true, compression.ErrUnknownMethod, "lz4")
	add("no signature", nil, false, ErrUntrusted, "no signature")
	add("bad signature", func(ni *narinfo.NarInfo) {
		ni.Sigs = []string{testKey.Sign("1;" + ni.StorePath + ";something else")}
	}, false, ErrUntrusted, "test-cache-1 (a bad signature)")
	add("untrusted key", func(ni *narinfo.NarInfo) {
		ni.Sigs = []string{otherKey.Sign(ni.Fingerprint())}
	}, false, ErrUntrusted, "other-1 (not trusted)")
	add("signed, then references changed", func(ni *narinfo.NarInfo) {
		ni.Sigs = []string{testKey.Sign(ni.Fingerprint())}
		ni.References = []string{strings.TrimPrefix(opaquePath("injected"), storeDir+"/")}
	}, false, ErrUntrusted, "bad signature")

	transports(t, f, func(t *testing.T, u string) {
		s := mustNew(t, u, testOptions())
		for _, c := range cases {
			w := c.e.want
			if c.want != nil {
				w = c.want(c.e)
			}
			o, err := s.Lookup(context.Background(), w)
			if err == nil {
				t.Errorf("%s: accepted: %+v", c.name, o)
				continue
			}
			if c.is != nil && !errors.Is(err, c.is) {
				t.Errorf("%s: %v, want %v", c.name, err, c.is)
			}
			if errors.Is(err, ErrNotFound) || errors.Is(err, ErrBadSource) {
				t.Errorf("%s: %v: a refusal of one narinfo is neither not-found nor the source's failure", c.name, err)
			}
			if !contains(err, c.text) || !contains(err, c.e.want.Path) {
				t.Errorf("%s: %v: does not say %q and the path", c.name, err, c.text)
			}
		}
	})
}

func TestNoCheckSigs(t *testing.T) {
	f := newFixture(t)
	e := f.add("unsigned", "u", "zstd", nil, nil, false)
	o := testOptions()
	o.CheckSigs = false
	o.TrustedKeys = nil
	transports(t, f, func(t *testing.T, u string) {
		s := mustNew(t, u, o)
		off, err := s.Lookup(context.Background(), e.want)
		if err != nil || off.Trust != "not checked (--no-check-sigs)" {
			t.Fatalf("Lookup without checking signatures: %+v, %v", off, err)
		}
		if got, err := readAll(context.Background(), s, off); err != nil || !bytes.Equal(got, e.nar) {
			t.Errorf("read: %v", err)
		}
	})
}

// TestContentAddressed: a content-addressed path needs no signature when
// its CA reproduces its path; a CA that lies is refused.
func TestContentAddressed(t *testing.T) {
	f := newFixture(t)
	dep := f.add("dep", "dep", "none", nil, nil, true)
	narData := fileNAR(t, "hello\n")
	h := nar.Hash(sha256.Sum256(narData))
	refs := []string{dep.want.Path}
	caPath := storepath.MakeFixedOutputPathRecursive(storeDir, h, "hello.txt", refs, false)
	ca := storepath.ContentAddress{Recursive: true, Algo: "sha256", Hash: h[:]}.String()
	good := f.addPath(caPath, narData, "xz", refs, func(ni *narinfo.NarInfo) { ni.CA = ca }, false)

	// A flat, text address of the same file: the path it gives.
	flatHash := sha256.Sum256([]byte("hello\n"))
	flatCA := storepath.ContentAddress{Algo: "sha256", Hash: flatHash[:]}.String()
	flatPath, err := storepath.MakeFixedOutputPath(storeDir, false, "sha256", flatHash[:], "flat.txt", nil, false)
	if err != nil {
		t.Fatal(err)
	}
	flat := f.addPath(flatPath, narData, "none", nil, func(ni *narinfo.NarInfo) { ni.CA = flatCA }, false)
	textCA := storepath.ContentAddress{Text: true, Algo: "sha256", Hash: flatHash[:]}.String()
	text := f.addPath(storepath.MakeTextPath(storeDir, flatHash, "t.txt", refs), narData, "none", refs, func(ni *narinfo.NarInfo) { ni.CA = textCA }, false)

	// Lies: a CA of other contents; the right CA with a reference
	// dropped; a path made from one hash with another NarHash.
	other := sha256.Sum256([]byte("other"))
	lie1 := f.addPath(opaquePath("lie1"), narData, "none", nil, func(ni *narinfo.NarInfo) {
		ni.CA = storepath.ContentAddress{Recursive: true, Algo: "sha256", Hash: other[:]}.String()
	}, false)
	c0 := "0"
	if caPath[len(storeDir)+1] == '0' {
		c0 = "1"
	}
	lie2 := f.addPath(caPath[:len(storeDir)+1]+c0+caPath[len(storeDir)+2:], narData, "none", refs, func(ni *narinfo.NarInfo) { ni.CA = ca }, false)
	otherPath := storepath.MakeFixedOutputPathRecursive(storeDir, other, "x", nil, false)
	lie3 := f.addPath(otherPath, narData, "none", nil, func(ni *narinfo.NarInfo) {
		ni.CA = storepath.ContentAddress{Recursive: true, Algo: "sha256", Hash: other[:]}.String()
	}, false)

	transports(t, f, func(t *testing.T, u string) {
		s := mustNew(t, u, testOptions())
		for _, e := range []*entry{good, flat, text} {
			o, err := s.Lookup(context.Background(), e.want)
			if err != nil || o.Trust != "content-addressed" {
				t.Errorf("%s (%s): %+v, %v", e.want.Path, e.ni.CA, o, err)
			}
		}
		for _, c := range []struct {
			e    *entry
			text string
		}{{lie1, "gives the path"}, {lie2, "gives the path"}, {lie3, "is not the NarHash"}} {
			_, err := s.Lookup(context.Background(), c.e.want)
			if !errors.Is(err, ErrUntrusted) || !contains(err, "does not check out") || !contains(err, c.text) {
				t.Errorf("%s (%s): %v, want ErrUntrusted saying %q", c.e.want.Path, c.e.ni.CA, err, c.text)
			}
		}
	})
}

// TestOpenBounds: the stream refuses more than NarSize or FileSize, a
// FileHash that differs, and ends short on a truncated file (the NAR
// reader then says so).
func TestOpenBounds(t *testing.T) {
	f := newFixture(t)
	contents := strings.Repeat("0123456789", 1000)
	overNar := f.add("over-nar", contents, "xz", nil, func(ni *narinfo.NarInfo) { ni.NarSize -= 8 }, true)
	overNar.want.NarSize -= 8
	overNarNone := f.add("over-nar-none", contents, "none", nil, func(ni *narinfo.NarInfo) { ni.NarSize -= 8; ni.FileSize = 0; ni.FileHash = nil }, true)
	overNarNone.want.NarSize -= 8
	overFile := f.add("over-file", contents, "zstd", nil, func(ni *narinfo.NarInfo) { ni.FileSize -= 5 }, true)
	fileHash := f.add("file-hash", contents, "br", nil, func(ni *narinfo.NarInfo) {
		h := nar.Hash(sha256.Sum256([]byte("not the file")))
		ni.FileHash = &h
	}, true)
	shortFile := f.add("short-file", contents+"short", "none", nil, func(ni *narinfo.NarInfo) { ni.FileSize = 0; ni.FileHash = nil }, true)
	f.write(shortFile.ni.URL, shortFile.nar[:len(shortFile.nar)/2])
	shortXZ := f.add("short-xz", contents+"short", "xz", nil, nil, true)
	f.write(shortXZ.ni.URL, shortXZ.file[:len(shortXZ.file)-20])

	transports(t, f, func(t *testing.T, u string) {
		s := mustNew(t, u, testOptions())
		ctx := context.Background()
		open := func(e *entry) ([]byte, error) {
			o, err := s.Lookup(ctx, e.want)
			if err != nil {
				t.Fatalf("%s: Lookup: %v", e.want.Path, err)
			}
			return readAll(ctx, s, o)
		}
		for _, c := range []struct {
			e    *entry
			text string
		}{{overNar, "longer than its NarSize"}, {overNarNone, "longer than its NarSize"}, {overFile, "longer than its FileSize"}, {fileHash, "FileHash"}} {
			got, err := open(c.e)
			if !errors.Is(err, ErrMismatch) || !contains(err, c.text) || !contains(err, c.e.want.Path) {
				t.Errorf("%s: %v, want ErrMismatch saying %q", c.e.want.Path, err, c.text)
			}
			if uint64(len(got)) > c.e.want.NarSize {
				t.Errorf("%s: %d bytes delivered, more than NarSize %d", c.e.want.Path, len(got), c.e.want.NarSize)
			}
		}
		// Short: the NAR reader reports the truncation.
		for _, e := range []*entry{shortFile, shortXZ} {
			o, err := s.Lookup(ctx, e.want)
			if err != nil {
				t.Fatal(err)
			}
			r, err := s.Open(ctx, o)
			if err != nil {
				t.Fatal(err)
			}
			nr := nar.NewReader(r)
			for err == nil {
				_, err = nr.Next()
				if err == nil {
					_, err = io.Copy(io.Discard, nr)
				}
			}
			r.Close()
			if err == io.EOF || !(errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, compression.ErrCorrupt)) {
				t.Errorf("%s: reading a truncated NAR: %v, want a truncation error", e.want.Path, err)
			}
		}
	})
}

// TestNarURLWithQuery: harmonia, the common NixOS cache server, writes
// NAR URLs with a query ("nar/<narhash>.nar?hash=<hashpart>"); Nix
// appends them to the cache's URL as they are (a query for an HTTP
// cache, a literal file name for a file:// one), so they are accepted;
// a query that could name something else (a "/", "%", "?" or "#" in it,
// an empty one) is not.
func TestNarURLWithQuery(t *testing.T) {
	f := newFixture(t)
	var url string
	e := f.add("harmonia", "harmonia", "none", nil, func(ni *narinfo.NarInfo) {
		url = ni.URL
		ni.URL += "?hash=" + storepath.HashPart(filepath.Base(ni.StorePath))
	}, true)
	f.write(url, e.file) // what an HTTP server serves for the query's path
	transports(t, f, func(t *testing.T, u string) {
		s := mustNew(t, u, testOptions())
		o, err := s.Lookup(context.Background(), e.want)
		if err != nil {
			t.Fatalf("Lookup: %v", err)
		}
		if data, err := readAll(context.Background(), s, o); err != nil || !bytes.Equal(data, e.nar) {
			t.Errorf("Open: %v", err)
		}
	})
	for _, bad := range []string{"nar/x.nar?", "nar/x.nar?a=../../etc/passwd", "nar/x.nar?a=%2e", "nar/x.nar?a?b", "nar/x.nar?a#b", "?a=b", "nar/x.nar?a=\\"} {
		if err := safeRel(bad); err == nil {
			t.Errorf("safeRel(%q) accepted", bad)
		}
	}
}

// TestTrustedParam: a binary cache named with ?trusted=1 (or true, yes)
// needs no signature, as Nix's substitution skips the signature check
// for a substituter with trusted=true; the NAR hash and size must still
// be the database's. trusted=0 keeps the check, and a value that is not
// a Boolean makes the URL unusable.
func TestTrustedParam(t *testing.T) {
	f := newFixture(t)
	e := f.add("unsigned-trusted", "u", "xz", nil, nil, false)
	transports(t, f, func(t *testing.T, u string) {
		for _, v := range []string{"1", "true", "yes"} {
			s := mustNew(t, u+"?trusted="+v, testOptions())
			off, err := s.Lookup(context.Background(), e.want)
			if err != nil || !strings.Contains(off.Trust, "trusted="+v) {
				t.Fatalf("trusted=%s: %+v, %v", v, off, err)
			}
			if got, err := readAll(context.Background(), s, off); err != nil || !bytes.Equal(got, e.nar) {
				t.Errorf("read: %v", err)
			}
			w := e.want
			w.NarHash[0] ^= 1
			if _, err := s.Lookup(context.Background(), w); !errors.Is(err, ErrMismatch) {
				t.Errorf("trusted=%s, another hash: %v, want ErrMismatch", v, err)
			}
		}
		s := mustNew(t, u+"?trusted=0", testOptions())
		if _, err := s.Lookup(context.Background(), e.want); !errors.Is(err, ErrUntrusted) {
			t.Errorf("trusted=0: %v, want ErrUntrusted", err)
		}
		if _, err := New(u+"?trusted=maybe", testOptions()); !errors.Is(err, ErrBadSource) || !contains(err, "trusted") {
			t.Errorf("trusted=maybe: %v, want ErrBadSource naming it", err)
		}
	})
}
