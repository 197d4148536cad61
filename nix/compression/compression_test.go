package compression

import (
	"bytes"
	"errors"
	"io"
	"math/rand/v2"
	"os/exec"
	"testing"

	"github.com/andybalholm/brotli"
)

// payload is 1 MiB, half random and half repetitive, like a NAR of
// binaries and text.
func payload() []byte {
	r := rand.New(rand.NewPCG(1, 2))
	b := make([]byte, 1<<20)
	for i := range b[:len(b)/2] {
		b[i] = byte(r.Uint32())
	}
	for i := len(b) / 2; i < len(b); i++ {
		b[i] = "nix-store --dump\n"[i%17]
	}
	return b
}

// compress compresses data with the real command-line tool, as a cache
// built by `nix copy` holds it (brotli, which has no tool here, through
// the library's writer).
func compress(t *testing.T, method string, data []byte) []byte {
	t.Helper()
	var cmd *exec.Cmd
	switch method {
	case "none":
		return data
	case "br":
		var buf bytes.Buffer
		w := brotli.NewWriter(&buf)
		w.Write(data)
		w.Close()
		return buf.Bytes()
	case "xz":
		cmd = exec.Command("xz", "-c", "-6")
	case "zstd":
		cmd = exec.Command("zstd", "-c", "-q")
	case "bzip2":
		cmd = exec.Command("bzip2", "-c")
	}
	if _, err := exec.LookPath(cmd.Path); err != nil {
		t.Skipf("%s not installed", method)
	}
	cmd.Stdin = bytes.NewReader(data)
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("%s: %v", method, err)
	}
	return out
}

var methods = []string{"none", "xz", "zstd", "bzip2", "br"}

func TestRoundTrip(t *testing.T) {
	data := payload()
	for _, m := range methods {
		t.Run(m, func(t *testing.T) {
			r, err := NewReader(m, bytes.NewReader(compress(t, m, data)))
			if err != nil {
				t.Fatal(err)
			}
			defer r.Close()
			got, err := io.ReadAll(r)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, data) {
				t.Fatalf("decoded %d bytes, not the %d compressed", len(got), len(data))
			}
		})
	}
}

// TestCorrupt: a damaged or truncated stream is an error wrapping
// ErrCorrupt, never silently short or wrong output (brotli has no
// checksum, so only its truncation is checked).
func TestCorrupt(t *testing.T) {
	data := payload()
	for _, m := range methods[1:] {
		c := compress(t, m, data)
		cases := map[string][]byte{"truncated": c[:len(c)/2]}
		if m != "br" {
			flipped := bytes.Clone(c)
			flipped[len(c)/2] ^= 0x40
			cases["flipped"] = flipped
		}
		for name, in := range cases {
			t.Run(m+"/"+name, func(t *testing.T) {
				r, err := NewReader(m, bytes.NewReader(in))
				if err == nil {
					defer r.Close()
					var got []byte
					got, err = io.ReadAll(r)
					if err == nil && !bytes.Equal(got, data) {
						t.Fatalf("no error, %d wrong bytes", len(got))
					}
				}
				if !errors.Is(err, ErrCorrupt) {
					t.Fatalf("got %v, want ErrCorrupt", err)
				}
			})
		}
	}
}

type failAfter struct {
	r   io.Reader
	n   int
	err error
}

func (f *failAfter) Read(p []byte) (int, error) {
	if f.n <= 0 {
		return 0, f.err
	}
	if len(p) > f.n {
		p = p[:f.n]
	}
	n, err := f.r.Read(p)
	f.n -= n
	return n, err
}

// TestSourceError: a read error of the cache's connection reaches the
// caller as itself, not as a corrupt stream (a caller retries the one and
// distrusts the cache for the other).
func TestSourceError(t *testing.T) {
	data := payload()
	reset := errors.New("connection reset by peer")
	for _, m := range methods[1:] {
		t.Run(m, func(t *testing.T) {
			c := compress(t, m, data)
			r, err := NewReader(m, &failAfter{r: bytes.NewReader(c), n: len(c) / 2, err: reset})
			if err == nil {
				defer r.Close()
				_, err = io.ReadAll(r)
			}
			if !errors.Is(err, reset) || errors.Is(err, ErrCorrupt) {
				t.Fatalf("got %v, want the source's error itself", err)
			}
		})
	}
}

func TestMethods(t *testing.T) {
	if Method("") != "bzip2" || Method("xz") != "xz" {
		t.Fatal("Method: an absent Compression field is bzip2, as Nix reads it")
	}
	for _, m := range []string{"gzip", "lz4", "XZ", "zstd "} {
		if _, err := NewReader(m, bytes.NewReader(nil)); !errors.Is(err, ErrUnknownMethod) {
			t.Errorf("%q: %v, want ErrUnknownMethod", m, err)
		}
	}
}
