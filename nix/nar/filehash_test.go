package nar

import (
	"bytes"
	"testing"

	"golang.org/x/sys/unix"
)

// TestFileHasher checks FileHasher against HashFileBytes (the NAR writer's
// own encoding) for sizes around the padding boundaries, both modes, and
// contents written in pieces.
func TestFileHasher(t *testing.T) {
	f := NewFileHasher()
	for _, size := range []int{0, 1, 7, 8, 9, 15, 16, 17, 1000, 4096, 65537} {
		data := bytes.Repeat([]byte("abcdefghij"), size/10+1)[:size]
		for _, exec := range []bool{false, true} {
			st := unix.Stat_t{Mode: unix.S_IFREG | 0o444, Size: int64(size)}
			if exec {
				st.Mode |= 0o111
			}
			want, err := HashFileBytes(data, &st)
			if err != nil {
				t.Fatal(err)
			}
			f.Reset(int64(size), exec)
			for p := data; len(p) > 0; {
				n := min(len(p), 3+len(p)/3)
				f.Write(p[:n])
				p = p[n:]
			}
			got, ok := f.Sum()
			if !ok || got != want {
				t.Errorf("size %d exec %v: %v %s, want %s", size, exec, ok, got.Base32(), want.Base32())
			}
		}
	}
	f.Reset(10, false)
	f.Write([]byte("short"))
	if _, ok := f.Sum(); ok {
		t.Error("Sum of 5 bytes written for 10 announced: ok")
	}
	f.Reset(2, false)
	f.Write([]byte("long"))
	if _, ok := f.Sum(); ok {
		t.Error("Sum of 4 bytes written for 2 announced: ok")
	}
}
