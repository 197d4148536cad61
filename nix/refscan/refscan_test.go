package refscan

import (
	"bytes"
	"slices"
	"strings"
	"testing"
)

const (
	hA = "0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c"
	hB = "1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d"
	hC = "2f2f2f2f2f2f2f2f2f2f2f2f2f2f2f2f"
	pA = "/nix/store/" + hA + "-a"
	pB = "/nix/store/" + hB + "-b"
	pC = "/nix/store/" + hC + "-c"
)

// TestScan: hash parts are found wherever they are (with or without the
// store dir and name, inside a longer run of base-32 digits as Nix's
// search finds them), whatever the write boundaries; other hashes, cut
// ones and ones with a non-digit inside are not.
func TestScan(t *testing.T) {
	for _, c := range []struct {
		name, data string
		want       []string
	}{
		{"none", "hello world", nil},
		{"full path", "x=" + pA + "/bin/sh\n", []string{pA}},
		{"hash alone", "...." + hB + "....", []string{pB}},
		{"two", pC + " " + pA, []string{pA, pC}},
		{"in a longer run", "0000" + hA + "1111", []string{pA}},
		{"at the very start and end", hA + hB, []string{pA, pB}},
		{"cut", hA[:31], nil},
		{"a non-digit inside", hA[:10] + "e" + hA[11:], nil},
		{"upper case", strings.ToUpper(hA), nil},
		{"unknown hash", "3g3g3g3g3g3g3g3g3g3g3g3g3g3g3g3g", nil},
	} {
		// Every split of the data into two writes, and byte by byte.
		for cut := 0; cut <= len(c.data); cut++ {
			s := New("/nix/store", []string{pA, pB, pC, "/gnu/store/" + hA + "-x", "junk"})
			s.Write([]byte(c.data[:cut]))
			s.Write([]byte(c.data[cut:]))
			if got := s.Found(); strings.Join(got, " ") != strings.Join(c.want, " ") {
				t.Fatalf("%s, cut at %d: %v, want %v", c.name, cut, got, c.want)
			}
		}
		s := New("/nix/store", []string{pA, pB, pC})
		for i := range len(c.data) {
			s.Write([]byte{c.data[i]})
		}
		if got := s.Found(); strings.Join(got, " ") != strings.Join(c.want, " ") {
			t.Fatalf("%s, byte by byte: %v, want %v", c.name, got, c.want)
		}
	}
}

// TestScanLarge: a hash far into a large stream written in odd-sized
// chunks is found once.
func TestScanLarge(t *testing.T) {
	data := append(bytes.Repeat([]byte("a"), 1<<20), []byte(hB)...)
	data = append(data, bytes.Repeat([]byte("z"), 4093)...)
	s := New("/nix/store", []string{pA, pB})
	for i := 0; i < len(data); i += 4093 {
		s.Write(data[i:min(i+4093, len(data))])
	}
	if got := s.Found(); len(got) != 1 || got[0] != pB {
		t.Fatalf("%v", got)
	}
}

func BenchmarkScan(b *testing.B) {
	data := bytes.Repeat([]byte("some text /nix/store/x-y and more 0123456789abcdfghijklmnpqrsvwxyz "), 1<<14)
	var cands []string
	for i := range 1000 {
		h := []byte(strings.Repeat("0", 32))
		for j, k := 0, i; j < 32 && k > 0; j, k = j+1, k/32 {
			h[j] = "0123456789abcdfghijklmnpqrsvwxyz"[k%32]
		}
		cands = append(cands, "/nix/store/"+string(h)+"-p")
	}
	b.SetBytes(int64(len(data)))
	for b.Loop() {
		s := New("/nix/store", cands)
		s.Write(data)
	}
}

// TestSetScannersShare: scanners of one Set find what New's would, each
// its own, from goroutines at once.
func TestSetScannersShare(t *testing.T) {
	const sd = "/nix/store"
	a := sd + "/" + strings.Repeat("a", HashLen) + "-a"
	b := sd + "/" + strings.Repeat("b", HashLen) + "-b"
	set := NewSet(sd, []string{a, b, "/elsewhere/x"})
	inputs := []string{"x " + a[len(sd)+1:] + " y", "nothing here", b + " and " + a}
	want := [][]string{{a}, {}, {a, b}}
	done := make(chan struct{})
	for i := range inputs {
		go func() {
			defer func() { done <- struct{}{} }()
			s := set.Scanner()
			s.Write([]byte(inputs[i]))
			if got := s.Found(); !slices.Equal(got, want[i]) {
				t.Errorf("input %d: found %v, want %v", i, got, want[i])
			}
		}()
	}
	for range inputs {
		<-done
	}
}
