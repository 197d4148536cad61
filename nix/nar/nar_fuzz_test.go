package nar

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// The fuzz targets below run their seeds in every `go test ./nix/nar`; to
// fuzz, e.g. `go test ./nix/nar -run X -fuzz FuzzReader -fuzztime 60s`.
// Their seeds are the table tests' inputs (testdata/nar and the hostile
// NARs of badNARCases); crashers found land in testdata/fuzz and run as
// regression cases.

// FuzzReader: the Reader never panics on any input, and whatever it
// accepts is canonical: the Writer writes it back byte for byte, and
// Unpack → DumpPath gives the same bytes, with the NAR's hash and size.
func FuzzReader(f *testing.F) {
	for _, nar := range goldenNARs(f) {
		f.Add(nar)
	}
	for _, c := range badNARCases() {
		if len(c.nar) <= 1<<16 {
			f.Add(c.nar)
		}
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		if _, err := readAllNAR(data, Limits{MaxDepth: 64}); err != nil {
			var e *Error
			if errors.As(err, &e) && !errors.Is(err, ErrBadNAR) && !errors.Is(err, ErrLimit) {
				t.Fatalf("an *Error of no kind: %v", err)
			}
			if !errors.As(err, &e) {
				t.Fatalf("not an *Error: %v", err)
			}
			return
		}
		if got := rewriteNAR(t, data); !bytes.Equal(got, data) {
			t.Fatalf("accepted, but Reader→Writer differs at byte %d", narFirstDiff(got, data))
		}
		dir := t.TempDir()
		allowRemoval(t, dir)
		if got := unpackAndDump(t, data, dir); !bytes.Equal(got, data) {
			t.Fatalf("accepted, but Unpack→DumpPath differs at byte %d", narFirstDiff(got, data))
		}
	})
}

// FuzzNARDump fuzzes the writer: a tree built from the input (regular
// and executable files, symlinks, directories) is dumped; the NAR parses
// (the production Reader, through parseNAR), says what the walker and the
// file system say (checkNARAgainstWalk), and HashPath is the SHA-256 and
// size of DumpPath's bytes.
func FuzzNARDump(f *testing.F) {
	f.Add([]byte("f\x00hello"))
	f.Add([]byte("x\x00#!/bin/sh\n"))
	f.Add([]byte("l\x00../target"))
	f.Add([]byte("d\x00a\x01f\x00one\x01x\x00two\x01l\x00/abs\x01d\x00sub"))
	f.Add([]byte("d\x00"))
	f.Add([]byte("f\x00"))
	ents, err := os.ReadDir(narGoldenDir)
	if err != nil {
		f.Fatal(err)
	}
	for _, e := range ents {
		if strings.HasSuffix(e.Name(), ".nar") {
			data, err := os.ReadFile(filepath.Join(narGoldenDir, e.Name()))
			if err != nil {
				f.Fatal(err)
			}
			if len(data) > 4096 {
				data = data[:4096]
			}
			f.Add(append([]byte("d\x00"), data...))
		}
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		if len(data) > 1<<16 {
			return
		}
		p := filepath.Join(t.TempDir(), "top")
		buildFuzzTree(t, p, data)
		var buf bytes.Buffer
		n, err := DumpPath(&buf, p)
		if err != nil {
			t.Fatalf("DumpPath: %v", err)
		}
		if n != int64(buf.Len()) {
			t.Fatalf("DumpPath says %d bytes, wrote %d", n, buf.Len())
		}
		parseNAR(t, buf.Bytes())
		checkNARAgainstWalk(t, p, buf.Bytes())
		h, hn, err := HashPath(p)
		if err != nil {
			t.Fatalf("HashPath: %v", err)
		}
		if want := sha256.Sum256(buf.Bytes()); h != Hash(want) || hn != n {
			t.Fatalf("HashPath = %s, %d; sha256 of the dump %x, %d", h, hn, want, n)
		}
	})
}

// buildFuzzTree makes p from data: a kind byte ('d' directory, 'x'
// executable file, 'l' symlink, anything else a regular file), NUL, then
// the contents; a directory's contents are entries separated by \x01, each
// "NAME\x00" followed by a kind and contents of its own (one level).
func buildFuzzTree(t *testing.T, p string, data []byte) {
	kind, body := byte('f'), data
	if i := bytes.IndexByte(data, 0); i == 1 {
		kind, body = data[0], data[2:]
	}
	switch kind {
	case 'd':
		narTestDir(t, p)
		seen := map[string]bool{}
		for _, ent := range bytes.Split(body, []byte{1}) {
			name, rest, _ := bytes.Cut(ent, []byte{0})
			n := strings.Map(func(r rune) rune {
				if r == '/' || r == 0 {
					return '_'
				}
				return r
			}, string(name))
			if n == "" || n == "." || n == ".." || len(n) > 200 || seen[n] || len(seen) >= 64 {
				continue
			}
			seen[n] = true
			sub := filepath.Join(p, n)
			k, b := byte('f'), rest
			if i := bytes.IndexByte(rest, 0); i == 1 {
				k, b = rest[0], rest[2:]
			}
			buildFuzzLeaf(t, sub, k, b)
		}
	default:
		buildFuzzLeaf(t, p, kind, body)
	}
}

func buildFuzzLeaf(t *testing.T, p string, kind byte, body []byte) {
	switch kind {
	case 'd':
		narTestDir(t, p)
	case 'x':
		narTestFile(t, p, body, 0o555)
	case 'l':
		target := strings.ReplaceAll(string(body), "\x00", "_")
		if target == "" || len(target) > 1000 {
			target = "t"
		}
		narTestLink(t, target, p)
	default:
		narTestFile(t, p, body, 0o444)
	}
}
