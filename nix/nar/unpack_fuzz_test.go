package nar

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

// FuzzUnpack unpacks any input into a fresh directory beside things it
// must not reach (a sandbox): it never panics; it succeeds exactly when
// the Reader accepts the input, and then dumping what it created gives
// back the input byte for byte, with the returned hash and size the
// input's; on an error, the error is the Reader's (an *Error naming an
// offset within the input and the entry) and nothing exists outside the
// target name. Either way nothing outside changed and nothing it created
// is writable by others.
//
// Seeds: the golden NARs of testdata/nar, the Reader's bad cases, the
// hostile cases of TestUnpackHostile and some of their truncations; they
// run in every `go test ./nix/nar`. To fuzz:
// `go test ./nix/nar -run X -fuzz FuzzUnpack -fuzztime 3m`; crashers land
// in testdata/fuzz/FuzzUnpack and run as regression cases.
func FuzzUnpack(f *testing.F) {
	for _, nar := range goldenNARs(f) {
		if len(nar) <= 1<<14 {
			f.Add(nar)
		}
	}
	for _, c := range badNARCases() {
		if len(c.nar) <= 1<<14 {
			f.Add(c.nar)
		}
	}
	for _, c := range hostileCases("/tmp/outside") {
		if len(c.nar) <= 1<<14 {
			f.Add(c.nar)
			f.Add(c.nar[:len(c.nar)*2/3])
		}
	}
	// One sandbox per fuzzing process: each input is unpacked as work/out
	// and removed after its checks (a sandbox an input each is ten times
	// slower).
	sb := newSandbox(f)
	f.Fuzz(func(t *testing.T, data []byte) {
		if len(data) > 1<<20 {
			return
		}
		lim := Limits{MaxDepth: 64, MaxBytes: 1 << 20, MaxEntries: 4096}
		out := filepath.Join(sb.work, "out")
		defer func() {
			filepath.WalkDir(out, func(p string, d fs.DirEntry, err error) error {
				if err == nil && d.IsDir() {
					os.Chmod(p, 0o700)
				}
				return nil
			})
			if err := os.RemoveAll(out); err != nil {
				t.Fatal(err)
			}
		}()
		// Half the inputs with Mtime, as repair unpacks.
		mtime := int64(len(data) % 2)
		h, n, err := Unpack(bytes.NewReader(data), sb.fd, "out", UnpackOptions{Limits: lim, Mtime: mtime})
		_, rerr := readAllNAR(data, lim)
		if err == nil {
			if rerr != nil {
				t.Fatalf("Unpack accepted what the Reader refuses: %v", rerr)
			}
			if want := sha256.Sum256(data); h != Hash(want) || n != int64(len(data)) {
				t.Fatalf("Unpack returned %s, %d; the input is %x, %d bytes", h, n, want, len(data))
			}
			var buf bytes.Buffer
			if _, err := DumpPath(&buf, out); err != nil {
				t.Fatalf("DumpPath of what Unpack made: %v", err)
			}
			if !bytes.Equal(buf.Bytes(), data) {
				t.Fatalf("Unpack→DumpPath differs from the input at byte %d", narFirstDiff(buf.Bytes(), data))
			}
			sb.check(t, "out")
			if mtime != 0 {
				filepath.WalkDir(out, func(p string, d fs.DirEntry, err error) error {
					var st unix.Stat_t
					if err == nil && unix.Lstat(p, &st) == nil && (st.Mtim.Sec != mtime || st.Mtim.Nsec != 0) {
						t.Errorf("%s: mtime %d.%09d, want %d", p, st.Mtim.Sec, st.Mtim.Nsec, mtime)
					}
					return nil
				})
			}
			return
		}
		var e *Error
		if !errors.As(err, &e) {
			t.Fatalf("not an *Error: %v", err)
		}
		if !errors.Is(err, ErrBadNAR) && !errors.Is(err, ErrLimit) {
			t.Fatalf("an *Error of no kind: %v", err)
		}
		if e.Offset < 0 || e.Offset > int64(len(data)) {
			t.Fatalf("offset %d outside the %d-byte input: %v", e.Offset, len(data), err)
		}
		if rerr == nil || rerr.Error() != err.Error() {
			t.Fatalf("Unpack says %v, the Reader %v", err, rerr)
		}
		if h != (Hash{}) || n != 0 {
			t.Fatalf("an error with a hash and size: %s %d", h, n)
		}
		sb.check(t, "out")
		if _, err := os.Lstat(filepath.Join(sb.root, "outside/victim")); err != nil {
			t.Fatal(err)
		}
	})
}
