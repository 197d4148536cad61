package tests

import (
	"fmt"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// TestRegisterInterop: the outputs and derivations of real nix-build runs
// (regExpr: references in contents, symlink targets and file names, a
// self-reference, two outputs, a hard link, an executable, a store path
// that is a symlink), with their registration as `nix-store --dump-db`
// writes it, are put into two fresh stores as trees without rows, given
// the same metadata a build leaves (writable modes, mtime now, setuid and
// setgid bits, another owner, a user xattr), and registered: by real
// `nix-store --register-validity` in one and by `storekeeper register` in
// the other, from the same input, with and without --hash-given.
// ValidPaths (hash, narSize, deriver, ultimate, sigs, ca), Refs by path
// and DerivationOutputs are equal, and so is every node's metadata after
// canonicalisation; `nix-store --verify --check-contents` accepts ours.
// --json names each path with Nix's hash (as `nix-store -q --hash`
// prints it), size and references.
func TestRegisterInterop(t *testing.T) {
	f := buildRegFixture(t, "register-interop")
	for _, hashGiven := range []bool{false, true} {
		t.Run(fmt.Sprintf("hash-given=%v", hashGiven), func(t *testing.T) {
			input := f.records(t, hashGiven, f.Closure...)
			nixRoot := freshStore(t, f.Root, f.Closure)
			ourRoot := freshStore(t, f.Root, f.Closure)
			for _, p := range f.Closure {
				uncanonicalise(t, nixRoot, p, 65534, 65534)
				uncanonicalise(t, ourRoot, p, 65534, 65534)
			}
			if a, b := treeMeta(t, nixRoot, f.Outs["b"]), treeMeta(t, ourRoot, f.Outs["b"]); a != b || !strings.Contains(a, "uid=65534") {
				t.Fatalf("the two copies differ before registration, or are canonical:\n%s\n%s", a, b)
			}
			nixArgs := []string{"nix-store", "--register-validity"}
			ourArgs := []string{"--json", "register"}
			if hashGiven {
				nixArgs = append(nixArgs, "--hash-given")
				ourArgs = append(ourArgs, "--hash-given")
			}
			runNS(t, nixRoot, []byte(input), nixArgs...)
			r := runRegisterNS(t, ourRoot, input, ourArgs...)
			if r.code != 0 {
				t.Fatalf("storekeeper register: exit %d\nstdout:\n%s\nstderr:\n%s", r.code, tail(r.stdout, 3000), tail(r.stderr, 3000))
			}
			want, got := regRows(t, nixRoot), regRows(t, ourRoot)
			if got != want {
				t.Fatalf("the rows differ from real Nix's\nstorekeeper:\n%s\nnix:\n%s", got, want)
			}
			for _, needle := range []string{"drvout=drvout", "ref=ref", "deriver=/nix/store/"} {
				if !strings.Contains(want, needle) {
					t.Fatalf("real Nix's rows have no %q: the fixture does not exercise it\n%s", needle, want)
				}
			}
			if n := validCount(t, ourRoot, f.Closure); n != len(f.Closure) {
				t.Fatalf("%d of %d paths valid", n, len(f.Closure))
			}
			for _, p := range f.Closure {
				if a, b := treeMeta(t, ourRoot, p), treeMeta(t, nixRoot, p); a != b {
					t.Errorf("%s: metadata after registration differs from Nix's\nstorekeeper:\n%s\nnix:\n%s", p, a, b)
				}
				checkCanonical(t, ourRoot, p, 0, 0)
			}
			nixVerify(t, ourRoot)

			// --json: each path with the hash real Nix prints, its
			// size and references.
			e := parseEnvelope(t, r)
			if e.Command != "register" || !e.OK || e.Result == nil {
				t.Fatalf("envelope: %+v", e)
			}
			if e.Result.PathsRequested != len(f.Closure) || e.Result.PathsRegistered != len(f.Closure) || len(e.Result.Paths) != len(f.Closure) {
				t.Fatalf("result: requested %d, registered %d, %d paths; want %d", e.Result.PathsRequested, e.Result.PathsRegistered, len(e.Result.Paths), len(f.Closure))
			}
			hashes := strings.Fields(runNS(t, nixRoot, nil, append([]string{"nix-store", "-q", "--hash"}, f.Closure...)...))
			nixRefs := regRefs(t, nixRoot)
			var bytes uint64
			for i, pj := range e.Result.Paths {
				p := f.Closure[i]
				size, _ := strconv.ParseUint(strings.TrimSpace(runNS(t, nixRoot, nil, "nix-store", "-q", "--size", p)), 10, 64)
				refs := slices.Clone(pj.References)
				slices.Sort(refs)
				switch {
				case pj.Path != p:
					t.Errorf("paths[%d] is %s, want %s (input order)", i, pj.Path, p)
				case !pj.Registered || pj.Error != nil:
					t.Errorf("%s: registered %v, error %v", p, pj.Registered, pj.Error)
				case pj.NarHash != hashes[i]:
					t.Errorf("%s: nar_hash %s, nix-store -q --hash says %s", p, pj.NarHash, hashes[i])
				case pj.NarSize != size:
					t.Errorf("%s: nar_size %d, nix-store -q --size says %d", p, pj.NarSize, size)
				case strings.Join(refs, " ") != strings.Join(nixRefs[p], " "):
					t.Errorf("%s: references %v, Nix registered %v", p, refs, nixRefs[p])
				}
				bytes += size
			}
			if e.Result.BytesHashed != bytes {
				t.Errorf("bytes_hashed %d, want the sum of the NAR sizes %d", e.Result.BytesHashed, bytes)
			}
		})
	}
}

// TestRegisterScan: outputs built by real nix-build (regExpr) are put as
// trees into a fresh store and registered with `register --scan PATH...`
// in three batches: the first without candidates (an empty store: the
// batch alone), the second with --candidates naming its inputs (b is one
// that d does not refer to), the third without (every valid path). The
// references found are exactly those real Nix's scanner registered:
// contents, a symlink target, a file name, a self-reference, a store path
// that is a symlink, and not an input mentioned only reversed or not at
// all. In another store, --candidates that leave out a path an output
// names keep it out of its references.
func TestRegisterScan(t *testing.T) {
	f := buildRegFixture(t, "register-scan")
	outs := f.outPaths(regOutNames...)
	nixRefs := regRefs(t, f.Root)
	nonEmpty, self := 0, false
	for _, p := range outs {
		if len(nixRefs[p]) > 0 {
			nonEmpty++
		}
		if slices.Contains(nixRefs[p], p) {
			self = true
		}
	}
	if nonEmpty < 5 || !self || slices.Contains(nixRefs[f.Outs["f"]], f.Outs["c"]) || slices.Contains(nixRefs[f.Outs["d"]], f.Outs["b"]) {
		t.Fatalf("the fixture does not exercise the scanner: %v", nixRefs)
	}

	root := freshStore(t, f.Root, outs)
	for _, step := range [][]string{
		{"register", "--scan", f.Outs["a"], f.Outs["b"]},
		{"register", "--scan", "--candidates", f.Outs["a"], "--candidates", f.Outs["b"], f.Outs["c"], f.Outs["d"]},
		{"register", "--scan", f.Outs["e"], f.Outs["e-dev"], f.Outs["f"], f.Outs["g"]},
	} {
		if r := runRegisterNS(t, root, "", step...); r.code != 0 {
			t.Fatalf("%v: exit %d\n%s", step, r.code, tail(r.stderr, 3000))
		}
	}
	got := regRefs(t, root)
	for _, p := range outs {
		g, ok := got[p]
		if !ok {
			t.Errorf("%s is not valid", p)
			continue
		}
		if strings.Join(g, " ") != strings.Join(nixRefs[p], " ") {
			t.Errorf("%s: --scan found %v, real Nix registered %v", p, g, nixRefs[p])
		}
	}
	nixVerify(t, root)

	// --candidates narrows the search to their closure and the batch: c
	// names a in a file and b in a symlink; with b alone as candidate
	// only b is found.
	root = freshStore(t, f.Root, f.outPaths("a", "b", "c", "d"))
	if r := runRegisterNS(t, root, "", "register", "--scan", f.Outs["a"], f.Outs["b"]); r.code != 0 {
		t.Fatalf("exit %d\n%s", r.code, r.stderr)
	}
	// The physical path of the store (a chroot store seen from outside,
	// through --store) is taken as the logical one.
	phys := filepath.Join(root, f.Outs["c"])
	if r := run(t, "--store", root, "register", "--scan", "--candidates", f.Outs["b"], phys); r.code != 0 {
		t.Fatalf("exit %d\n%s", r.code, r.stderr)
	}
	if g := regRefs(t, root)[f.Outs["c"]]; strings.Join(g, " ") != f.Outs["b"] {
		t.Fatalf("with --candidates %s, c's references are %v, want only it", f.Outs["b"], g)
	}

	// In the registration format --scan replaces the references given,
	// with a warning naming the path when they differ.
	r := runRegisterNS(t, root, fmt.Sprintf("%s\n\n1\n%s\n", f.Outs["d"], f.Outs["b"]), "--json", "register", "--scan")
	e := parseEnvelope(t, r)
	if r.code != 0 || !e.OK {
		t.Fatalf("exit %d\n%s\n%s", r.code, r.stdout, r.stderr)
	}
	if g, w := regRefs(t, root)[f.Outs["d"]], nixRefs[f.Outs["d"]]; strings.Join(g, " ") != strings.Join(w, " ") {
		t.Fatalf("d's references are %v, real Nix registered %v", g, w)
	}
	if !strings.Contains(r.stdout, `"level": "warning"`) || !strings.Contains(r.stdout, `"path": "`+f.Outs["d"]+`"`) {
		t.Fatalf("no warning about d's given references:\n%s", r.stdout)
	}
}
