package repair

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"testing"

	"golang.org/x/sys/unix"

	"storekeeper/nix/nar"
	"storekeeper/store/fs"
	"storekeeper/store/storetest"
	"storekeeper/substitute"
)

// benchSpec is a store of about 200 small paths, as compare.py's repair
// ops repair.
func benchSpec() storetest.Spec {
	s := storetest.DefaultSpec()
	s.Paths = 180
	return s
}

// BenchmarkStage measures staging throughput, MB/s of NAR: nar.Unpack
// (writing and hashing) of every path of a 200-path store into a
// directory on the store's file system; alone, setting mtimes as it
// writes (what Substitute does), and followed by fs.Canonicalise (what
// it does when the owner must change).
func BenchmarkStage(b *testing.B) {
	built := storetest.MustBuild(b, benchSpec())
	var nars [][]byte
	var total int64
	for _, p := range built.Valid {
		var buf bytes.Buffer
		if _, err := nar.DumpPath(&buf, built.Layout.RealPath(p)); err != nil {
			b.Fatal(err)
		}
		nars = append(nars, buf.Bytes())
		total += int64(buf.Len())
	}
	b.Logf("%d paths, %d NAR bytes", len(nars), total)
	for _, mode := range []string{"unpack", "unpack+mtime", "unpack+canonicalise"} {
		canon := mode == "unpack+canonicalise"
		var mtime int64
		if mode == "unpack+mtime" {
			mtime = fs.Nix.Mtime
		}
		b.Run(mode, func(b *testing.B) {
			b.SetBytes(total)
			for i := 0; i < b.N; i++ {
				b.StopTimer()
				dir, err := os.MkdirTemp(built.Layout.RealStoreDir, ".bench-")
				if err != nil {
					b.Fatal(err)
				}
				fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY, 0)
				if err != nil {
					b.Fatal(err)
				}
				b.StartTimer()
				for k, n := range nars {
					name := fmt.Sprint(k)
					if _, _, err := nar.Unpack(bytes.NewReader(n), fd, name, nar.UnpackOptions{Limits: nar.Limits{MaxBytes: int64(len(n))}, Mtime: mtime}); err != nil {
						b.Fatal(err)
					}
					if canon {
						if err := fs.Canonicalise(fd, name, fs.CanonicaliseOptions{BuildUID: fs.NoBuildUser, UID: os.Geteuid(), GID: os.Getegid()}); err != nil {
							b.Fatal(err)
						}
					}
				}
				b.StopTimer()
				for k := range nars {
					fs.RemoveTree(fd, fmt.Sprint(k), "")
				}
				unix.Close(fd)
				os.Remove(dir)
				b.StartTimer()
			}
		})
	}
}

// BenchmarkSubstitute measures a whole run (plan and substitution) of a
// 200-path store's paths from an in-memory source: the floor under a
// real source's transfer and decompression.
func BenchmarkSubstitute(b *testing.B) {
	built := storetest.MustBuild(b, benchSpec())
	src := &fakeSource{url: "mem://", nars: map[string][]byte{}, send: map[string][]byte{}}
	var targets []Target
	for _, p := range built.Valid {
		var buf bytes.Buffer
		if _, err := nar.DumpPath(&buf, built.Layout.RealPath(p)); err != nil {
			b.Fatal(err)
		}
		src.nars[p] = buf.Bytes()
		targets = append(targets, Target{Path: p})
	}
	s := storetest.Open(b, built.Layout)
	o := SubstituteOptions{Sources: []substitute.Source{src}}
	ctx := context.Background()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		plan, err := PlanSubstitution(ctx, s, targets, o)
		if err != nil {
			b.Fatal(err)
		}
		res, err := Substitute(ctx, s, plan, o)
		if err != nil || res.Repaired() != len(targets) {
			b.Fatal(err, res.Failed())
		}
	}
}
