package compression

import (
	"bytes"
	"encoding/binary"
	"errors"
	"hash/crc32"
	"io"
	"os/exec"
	"runtime"
	"strings"
	"testing"
)

// xzTool compresses data with the xz command and args.
func xzTool(t *testing.T, data []byte, args ...string) []byte {
	t.Helper()
	if _, err := exec.LookPath("xz"); err != nil {
		t.Skip("xz not installed")
	}
	cmd := exec.Command("xz", append([]string{"-c"}, args...)...)
	cmd.Stdin = bytes.NewReader(data)
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("xz %v: %v", args, err)
	}
	return out
}

// setDict rewrites the LZMA2 dictionary property of the first block
// header of an xz file (one LZMA2 filter, as xz writes) to prop, with
// the header's CRC32 fixed, so only the declared size differs.
func setDict(t *testing.T, file []byte, prop byte) []byte {
	t.Helper()
	f := bytes.Clone(file)
	size := (int(f[12]) + 1) * 4
	h := f[12 : 12+size]
	i := bytes.Index(h, []byte{0x21, 0x01})
	if i < 0 {
		t.Fatal("no LZMA2 filter in the block header")
	}
	h[i+2] = prop
	binary.LittleEndian.PutUint32(h[size-4:], crc32.ChecksumIEEE(h[:size-4]))
	return f
}

// TestXZDictionaryBound: an xz file whose block header declares a
// dictionary larger than MaxXZDict is refused before the decoder
// allocates it (before, a few bytes declaring 4 GiB cost 4 GiB of
// memory and seconds of clearing it, per download); one within the bound
// decodes.
func TestXZDictionaryBound(t *testing.T) {
	data := []byte(strings.Repeat("nix-archive-1\n", 100))
	file := xzTool(t, data, "--lzma2=dict=1MiB")
	for _, c := range []struct {
		prop byte
		ok   bool
	}{{30, false}, {40, false}, {41, false}, {28, true}} { // 128 MiB, 4 GiB, invalid, 32 MiB
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		r, err := NewReader("xz", bytes.NewReader(setDict(t, file, c.prop)))
		var got []byte
		if err == nil {
			got, err = io.ReadAll(r)
			r.Close()
		}
		runtime.ReadMemStats(&after)
		if c.ok {
			if err != nil || !bytes.Equal(got, data) {
				t.Errorf("dictionary property %d: %v", c.prop, err)
			}
			continue
		}
		if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), "dictionary") {
			t.Errorf("dictionary property %d: %v, want ErrCorrupt about the dictionary", c.prop, err)
		}
		if d := after.TotalAlloc - before.TotalAlloc; d > 16<<20 {
			t.Errorf("dictionary property %d: %d MiB allocated", c.prop, d>>20)
		}
	}
}

// TestXZGuardFollowsRealFiles: every layout xz writes passes the guard
// unchanged: presets, one and many blocks, every check, concatenated
// streams with and without stream padding, incompressible data (stored
// chunks), multi-threaded xz (block headers with sizes in them).
func TestXZGuardFollowsRealFiles(t *testing.T) {
	data := payload()[len(payload())/2-100000 : len(payload())/2+100000]
	one := xzTool(t, data[:5000])
	cases := map[string][]byte{
		"-0":                        xzTool(t, data, "-0"),
		"-9":                        xzTool(t, data, "-9"),
		"blocks":                    xzTool(t, data, "--block-size=16384"),
		"check none":                xzTool(t, data, "--check=none"),
		"check crc32":               xzTool(t, data, "--check=crc32"),
		"check sha256":              xzTool(t, data, "--check=sha256"),
		"empty":                     xzTool(t, nil),
		"two streams":               append(bytes.Clone(one), one...),
		"two streams, padding":      append(append(bytes.Clone(one), 0, 0, 0, 0, 0, 0, 0, 0), one...),
		"incompressible, blocks":    xzTool(t, payload()[:300000], "--block-size=65536", "--check=crc64"),
		"threads, sizes in headers": xzTool(t, payload()[:300000], "-T2", "--block-size=65536"),
		"trailing stream padding":   append(bytes.Clone(one), 0, 0, 0, 0),
		"many records, two blocks":  xzTool(t, data[:40000], "--block-size=20000"),
	}
	want := map[string][]byte{
		"two streams":               append(bytes.Clone(data[:5000]), data[:5000]...),
		"two streams, padding":      append(bytes.Clone(data[:5000]), data[:5000]...),
		"empty":                     {},
		"incompressible, blocks":    payload()[:300000],
		"threads, sizes in headers": payload()[:300000],
		"trailing stream padding":   data[:5000],
		"many records, two blocks":  data[:40000],
	}
	for name, file := range cases {
		w, ok := want[name]
		if !ok {
			w = data
		}
		// Through reads of every size: the guard must follow fields split
		// across reads.
		for _, chunk := range []int{1, 7, 4096, 1 << 20} {
			r, err := NewReader("xz", &chunked{r: bytes.NewReader(file), n: chunk})
			if err != nil {
				t.Errorf("%s: %v", name, err)
				continue
			}
			got, err := io.ReadAll(r)
			r.Close()
			if err != nil || !bytes.Equal(got, w) {
				t.Errorf("%s, reads of %d: %d bytes, %v", name, chunk, len(got), err)
			}
		}
	}
}

// chunked returns at most n bytes a read.
type chunked struct {
	r io.Reader
	n int
}

func (c *chunked) Read(p []byte) (int, error) { return c.r.Read(p[:min(len(p), c.n)]) }

// zstdFrame is a zstd frame of data (one raw block) whose header
// declares the window descriptor w.
func zstdFrame(w byte, data string) []byte {
	bh := uint32(1 | len(data)<<3) // last block, raw
	f := []byte{0x28, 0xb5, 0x2f, 0xfd, 0x00, w, byte(bh), byte(bh >> 8), byte(bh >> 16)}
	return append(f, data...)
}

// TestZstdWindowBound: a zstd frame declaring a window over
// MaxZstdWindow is refused before the decoder allocates it (before, 14
// bytes declaring 512 MiB cost 512 MiB, kept afterwards by the pooled
// decoder); a small window decodes.
func TestZstdWindowBound(t *testing.T) {
	for _, c := range []struct {
		w  byte
		ok bool
	}{{0x98, false}, {0x90, false}, {0x40, true}} { // 512 MiB, 256 MiB, 256 KiB
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		r, err := NewReader("zstd", bytes.NewReader(zstdFrame(c.w, "hello")))
		var got []byte
		if err == nil {
			got, err = io.ReadAll(r)
			r.Close()
		}
		runtime.ReadMemStats(&after)
		if c.ok {
			if err != nil || string(got) != "hello" {
				t.Errorf("window %#x: %q, %v", c.w, got, err)
			}
			continue
		}
		if !errors.Is(err, ErrCorrupt) {
			t.Errorf("window %#x: %v, want ErrCorrupt", c.w, err)
		}
		if d := after.TotalAlloc - before.TotalAlloc; d > 16<<20 {
			t.Errorf("window %#x: %d MiB allocated", c.w, d>>20)
		}
	}
}
