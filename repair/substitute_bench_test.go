package repair

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
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
// (parsing, writing and hashing) of every path of a 200-path store into
// a directory on the store's file system; alone, setting mtimes as it
// writes (what Substitute does), and followed by fs.Canonicalise (what
// it does when the owner must change); "floor" creates the same
// directories, files and symlinks with the fewest system calls (mkdirat,
// openat+write+close, symlinkat: no parsing, hashing, modes or times),
// the file system's floor for the same tree. The trees are deleted after
// the timed loop, and the file system synced before each iteration, so
// that no earlier writeback lands in it.
func BenchmarkStage(b *testing.B) {
	built := storetest.MustBuild(b, benchSpec())
	var nars [][]byte
	var trees [][]nodeSpec
	var total int64
	files := 0
	for _, p := range built.Valid {
		var buf bytes.Buffer
		if _, err := nar.DumpPath(&buf, built.Layout.RealPath(p)); err != nil {
			b.Fatal(err)
		}
		nars = append(nars, buf.Bytes())
		total += int64(buf.Len())
		tree := narTree(b, buf.Bytes())
		files += len(tree)
		trees = append(trees, tree)
	}
	b.Logf("%d paths, %d nodes, %d NAR bytes", len(nars), files, total)
	for _, mode := range []string{"unpack", "unpack+mtime", "unpack+canonicalise", "floor"} {
		canon := mode == "unpack+canonicalise"
		var mtime int64
		if mode == "unpack+mtime" {
			mtime = fs.Nix.Mtime
		}
		b.Run(mode, func(b *testing.B) {
			b.SetBytes(total)
			var dirs []string
			b.Cleanup(func() {
				for _, d := range dirs {
					exec.Command("chmod", "-R", "u+w", d).Run()
					os.RemoveAll(d)
				}
			})
			for i := 0; i < b.N; i++ {
				b.StopTimer()
				dir, err := os.MkdirTemp(built.Layout.RealStoreDir, ".bench-")
				if err != nil {
					b.Fatal(err)
				}
				dirs = append(dirs, dir)
				unix.Sync() // the writeback of what came before is not timed
				fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY, 0)
				if err != nil {
					b.Fatal(err)
				}
				b.StartTimer()
				for k, n := range nars {
					name := fmt.Sprint(k)
					if mode == "floor" {
						writeTree(b, fd, name, trees[k])
						continue
					}
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
				unix.Close(fd)
				b.StartTimer()
			}
		})
	}
}

// nodeSpec is a node of a NAR, for the floor: path (relative, "" the
// top), type, contents or target.
type nodeSpec struct {
	path string
	typ  nar.FileType
	data []byte
}

func narTree(b *testing.B, data []byte) []nodeSpec {
	r := nar.NewReader(bytes.NewReader(data))
	var out []nodeSpec
	for {
		h, err := r.Next()
		if err == io.EOF {
			return out
		}
		if err != nil {
			b.Fatal(err)
		}
		n := nodeSpec{path: h.Path, typ: h.Type}
		switch h.Type {
		case nar.FileRegular:
			n.data, _ = io.ReadAll(r)
		case nar.FileSymlink:
			n.data = []byte(h.LinkTarget)
		}
		out = append(out, n)
	}
}

// writeTree creates tree as name in dirfd with plain system calls.
func writeTree(b *testing.B, dirfd int, name string, tree []nodeSpec) {
	for _, n := range tree {
		p := name
		if n.path != "" {
			p += "/" + n.path
		}
		var err error
		switch n.typ {
		case nar.FileDirectory:
			err = unix.Mkdirat(dirfd, p, 0o755)
		case nar.FileSymlink:
			err = unix.Symlinkat(string(n.data), dirfd, p)
		default:
			var fd int
			fd, err = unix.Openat(dirfd, p, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_CLOEXEC, 0o444)
			if err == nil {
				if len(n.data) > 0 {
					_, err = unix.Write(fd, n.data)
				}
				unix.Close(fd)
			}
		}
		if err != nil {
			b.Fatal(err)
		}
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
