package tests

// The fixtures of the `storekeeper register` tests: outputs built by real
// `nix-build` (so that real Nix's reference scanner decided their
// references), their registration as `nix-store --dump-db` writes it,
// fresh stores holding their trees but no rows, and readers of what a
// store's database and trees hold.

import (
	"bytes"
	"database/sql"
	"encoding/json"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"

	"storekeeper/nix/validity"
)

// regFixture is a set of paths built by real Nix.
type regFixture struct {
	Root    string            // the store they were built in (ROOT/nix)
	Outs    map[string]string // output name (a, b, ..., e, e-dev, ...) -> path
	Drvs    []string          // their derivations
	Closure []string          // outputs and derivations with their closures, sorted
	Dump    string            // `nix-store --dump-db` of Closure (hashes given)
}

// regExpr's derivations refer to their inputs in every way Nix's scanner
// finds (file contents, a symlink target, a file name, the path itself),
// and some do not: b is an input of d that d does not mention, c appears
// in f only reversed. e has two outputs (dev refers to out) and a hard
// link inside out; b has an executable; g is a store path that is a
// symlink.
const regExpr = `
let
  sh = "/bin/sh";
  mk = name: script: derivation { inherit name; system = "x86_64-linux"; builder = sh; args = [ "-c" script ]; salt = "@SALT@"; };
  a = mk "a" "echo hello > $out";
  b = mk "b" "/bin/mkdir -p $out/bin; echo bee > $out/x; printf '#!/bin/sh\necho b\n' > $out/bin/b; /bin/chmod 755 $out/bin/b";
  c = mk "c" "/bin/mkdir $out; echo ${a} > $out/f; /bin/ln -s ${b}/x $out/link";
  d = mk "d" "/bin/mkdir $out; /bin/touch $out/$(/usr/bin/basename ${a}); echo $out > $out/self; echo unused ${b} > /dev/null";
  e = derivation { name = "e"; system = "x86_64-linux"; builder = sh; outputs = [ "out" "dev" ]; salt = "@SALT@";
    args = [ "-c" "/bin/mkdir $out $dev; echo ${c} > $out/c; /bin/ln $out/c $out/c-link; echo $out > $dev/out-path" ]; };
  f = mk "f" "/bin/mkdir $out; echo ${e.dev} ${d} > $out/deps; echo ${c} | /usr/bin/rev > $out/reversed";
  g = mk "g" "/bin/ln -s ${f} $out";
in [ a b c d e.out e.dev f g ]
`

// regOutNames are regExpr's outputs, in nix-build's order.
var regOutNames = []string{"a", "b", "c", "d", "e", "e-dev", "f", "g"}

// buildRegFixture builds regExpr with real nix-build in a new store.
func buildRegFixture(t testing.TB, salt string) *regFixture {
	t.Helper()
	ns := buildNixStore(t, nixSpec{Paths: 1, Seed: 2424, Salt: salt})
	exprFile := filepath.Join(ns.Root, "register.nix")
	if err := os.WriteFile(exprFile, []byte(strings.ReplaceAll(regExpr, "@SALT@", salt)), 0o644); err != nil {
		t.Fatal(err)
	}
	outs := strings.Fields(runNS(t, ns.Root, nil, "nix-build", "--no-out-link", exprFile))
	if len(outs) != len(regOutNames) {
		t.Fatalf("nix-build made %v", outs)
	}
	f := &regFixture{Root: ns.Root, Outs: map[string]string{}}
	for i, o := range outs {
		f.Outs[regOutNames[i]] = o
	}
	f.Drvs = uniqSorted(strings.Fields(runNS(t, ns.Root, nil, append([]string{"nix-store", "-qd"}, outs...)...)))
	f.Closure = uniqSorted(strings.Fields(runNS(t, ns.Root, nil, append(append([]string{"nix-store", "-qR"}, outs...), f.Drvs...)...)))
	if len(f.Closure) != len(outs)+7 {
		t.Fatalf("the closure is %d paths, want %d outputs and 7 derivations: %v", len(f.Closure), len(outs), f.Closure)
	}
	f.Dump = runNS(t, ns.Root, nil, append([]string{"nix-store", "--dump-db"}, f.Closure...)...)
	return f
}

func uniqSorted(s []string) []string {
	sort.Strings(s)
	var out []string
	for i, x := range s {
		if i == 0 || x != s[i-1] {
			out = append(out, x)
		}
	}
	return out
}

// outPaths returns the fixture's output paths of the given names.
func (f *regFixture) outPaths(names ...string) []string {
	var out []string
	for _, n := range names {
		out = append(out, f.Outs[n])
	}
	return out
}

// records returns the registration of paths (a subset of the closure),
// with or without the hashes, in the order of paths.
func (f *regFixture) records(t testing.TB, hashGiven bool, paths ...string) string {
	t.Helper()
	infos, err := validity.ReadAll(strings.NewReader(f.Dump), "/nix/store", true)
	if err != nil {
		t.Fatal(err)
	}
	byPath := map[string]validity.Info{}
	for _, in := range infos {
		byPath[in.Path] = in
	}
	var sel []validity.Info
	for _, p := range paths {
		in, ok := byPath[p]
		if !ok {
			t.Fatalf("%s is not in the fixture's dump", p)
		}
		sel = append(sel, in)
	}
	var b bytes.Buffer
	if err := validity.Write(&b, sel, hashGiven); err != nil {
		t.Fatal(err)
	}
	return b.String()
}

// emptyStore makes a store with an empty database (real `nix-store
// --init`) and no path, with the fixture's nix.conf (no substituters, no
// sandbox), and returns its root.
func emptyStore(t testing.TB) string {
	t.Helper()
	requireNix(t)
	root := t.TempDir()
	mustMkdir(t, filepath.Join(root, "nix/store"))
	mustMkdir(t, filepath.Join(root, "etc-nix"))
	conf := "sandbox = false\nbuild-users-group =\nsubstituters =\n"
	if err := os.WriteFile(filepath.Join(root, "etc-nix/nix.conf"), []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	runNS(t, root, nil, "nix-store", "--init")
	return root
}

// freshStore makes an empty store (emptyStore) and copies the trees of
// paths from the store under src into it (cp -a: the same metadata), so
// that they are on disk and not valid.
func freshStore(t testing.TB, src string, paths []string) string {
	t.Helper()
	root := emptyStore(t)
	args := []string{"-a"}
	for _, p := range paths {
		args = append(args, filepath.Join(src, p))
	}
	if out, err := exec.Command("cp", append(args, filepath.Join(root, "nix/store"))...).CombinedOutput(); err != nil {
		t.Fatalf("cp: %v %s", err, out)
	}
	return root
}

// runRegisterNS runs `storekeeper ARGS...` in ROOT's namespace with stdin.
func runRegisterNS(t testing.TB, root, stdin string, args ...string) result {
	t.Helper()
	cmd := nsScript(root, `exec "$@"`, append([]string{binary}, args...)...)
	cmd.Stdin = strings.NewReader(stdin)
	return runCmd(t, cmd, args)
}

// regEnvelope is the part of register's --json output the tests read.
type regEnvelope struct {
	Command string `json:"command"`
	OK      bool   `json:"ok"`
	Error   *struct {
		Kind    string `json:"kind"`
		Message string `json:"message"`
	} `json:"error"`
	Result *struct {
		Paths []struct {
			Path       string   `json:"path"`
			Registered bool     `json:"registered"`
			NarHash    string   `json:"nar_hash"`
			NarSize    uint64   `json:"nar_size"`
			References []string `json:"references"`
			Error      *struct {
				Kind    string `json:"kind"`
				Message string `json:"message"`
			} `json:"error"`
		} `json:"paths"`
		PathsRequested  int    `json:"paths_requested"`
		PathsRegistered int    `json:"paths_registered"`
		BytesHashed     uint64 `json:"bytes_hashed"`
	} `json:"result"`
}

func parseEnvelope(t testing.TB, r result) regEnvelope {
	t.Helper()
	var e regEnvelope
	if err := json.Unmarshal([]byte(r.stdout), &e); err != nil {
		t.Fatalf("--json output is not one JSON object: %v\n%s\nstderr:\n%s", err, r.stdout, r.stderr)
	}
	return e
}

// regRows returns what registration writes in the database under root,
// as sorted text lines: each ValidPaths row but its id and
// registrationTime (path, hash, narSize, deriver, ultimate, sigs, ca),
// each Refs row by paths, each DerivationOutputs row by paths.
func regRows(t testing.TB, root string) string {
	t.Helper()
	return strings.Join(queryLines(t, root,
		`select path, hash, narSize, deriver, ultimate, sigs, ca from ValidPaths`,
		`select 'ref' as ref, a.path as referrer, b.path as reference from Refs r join ValidPaths a on a.id = r.referrer join ValidPaths b on b.id = r.reference`,
		`select 'drvout' as drvout, d.path as drv, o.id as id, o.path as path from DerivationOutputs o join ValidPaths d on d.id = o.drv`,
	), "\n")
}

// queryLines runs queries on the database under root and returns every
// row as "col=value ..." lines, sorted.
func queryLines(t testing.TB, root string, queries ...string) []string {
	t.Helper()
	db, err := sql.Open("sqlite", "file:"+filepath.Join(root, "nix/var/nix/db/db.sqlite")+"?mode=ro")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var lines []string
	for _, q := range queries {
		rows, err := db.Query(q)
		if err != nil {
			t.Fatalf("%s: %v", q, err)
		}
		cols, _ := rows.Columns()
		for rows.Next() {
			vals := make([]any, len(cols))
			ptrs := make([]any, len(cols))
			for i := range vals {
				ptrs[i] = &vals[i]
			}
			if err := rows.Scan(ptrs...); err != nil {
				t.Fatal(err)
			}
			var sb strings.Builder
			for i, v := range vals {
				if b, ok := v.([]byte); ok {
					v = string(b)
				}
				fmt.Fprintf(&sb, "%s=%v ", cols[i], v)
			}
			lines = append(lines, sb.String())
		}
		if err := rows.Err(); err != nil {
			t.Fatal(err)
		}
		rows.Close()
	}
	sort.Strings(lines)
	return lines
}

// regRefs returns the references of every valid path under root.
func regRefs(t testing.TB, root string) map[string][]string {
	t.Helper()
	out := map[string][]string{}
	for _, l := range queryLines(t, root, `select path as p, '' as r from ValidPaths`,
		`select a.path as p, b.path as r from Refs x join ValidPaths a on a.id = x.referrer join ValidPaths b on b.id = x.reference`) {
		f := strings.Fields(l)
		p := strings.TrimPrefix(f[0], "p=")
		if _, ok := out[p]; !ok {
			out[p] = []string{}
		}
		if r := strings.TrimPrefix(f[1], "r="); r != "" {
			out[p] = append(out[p], r)
		}
	}
	for p := range out {
		sort.Strings(out[p])
	}
	return out
}

// validCount returns how many of paths are valid in the store under root.
func validCount(t testing.TB, root string, paths []string) int {
	t.Helper()
	refs := regRefs(t, root)
	n := 0
	for _, p := range paths {
		if _, ok := refs[p]; ok {
			n++
		}
	}
	return n
}

// treeMeta describes the metadata of every node of p's tree under root
// (name, type and permission bits, owner, group, mtime, extended
// attributes), without inode numbers: two registrations of the same tree
// must leave the same.
func treeMeta(t testing.TB, root, p string) string {
	t.Helper()
	phys := filepath.Join(root, p)
	var sb strings.Builder
	err := filepath.WalkDir(phys, func(q string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		var st syscall.Stat_t
		if err := syscall.Lstat(q, &st); err != nil {
			return err
		}
		rel, _ := filepath.Rel(phys, q)
		fmt.Fprintf(&sb, "%s mode=%o uid=%d gid=%d mtime=%d.%09d xattrs=%q\n", rel, st.Mode, st.Uid, st.Gid, st.Mtim.Sec, st.Mtim.Nsec, listXattrs(q))
		return nil
	})
	if err != nil {
		t.Fatalf("reading %s: %v", phys, err)
	}
	return sb.String()
}

// listXattrs returns the names of q's extended attributes ("" when none
// or when the file system has none), not following a symlink.
func listXattrs(q string) string {
	buf := make([]byte, 4096)
	n, err := syscall.Listxattr(q, buf)
	if err != nil || n <= 0 {
		// syscall.Listxattr follows symlinks; symlinks have no user
		// attributes anyway.
		return ""
	}
	names := strings.Split(strings.TrimRight(string(buf[:n]), "\x00"), "\x00")
	sort.Strings(names)
	return strings.Join(names, ",")
}

// uncanonicalise gives the tree of p under root what a build leaves and
// canonicalisation removes: writable modes, an mtime of now, the setuid
// bit on executables, the setgid bit on directories, owner uid:gid (when
// uid >= 0), and a user extended attribute where the file system takes
// one. Symlinks are left as they are (only their owner changes).
func uncanonicalise(t testing.TB, root, p string, uid, gid int) {
	t.Helper()
	phys := filepath.Join(root, p)
	now := syscall.NsecToTimespec(1_700_000_000_123_456_789)
	err := filepath.WalkDir(phys, func(q string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if uid >= 0 {
			if err := os.Lchown(q, uid, gid); err != nil {
				return err
			}
		}
		switch {
		case d.Type()&fs.ModeSymlink != 0:
			return nil
		case d.IsDir():
			if err := os.Chmod(q, 0o755|fs.ModeSetgid); err != nil {
				return err
			}
		default:
			st, err := os.Lstat(q)
			if err != nil {
				return err
			}
			mode := fs.FileMode(0o644)
			if st.Mode()&0o100 != 0 {
				mode = 0o755 | fs.ModeSetuid
			}
			if err := os.Chmod(q, mode); err != nil {
				return err
			}
			syscall.Setxattr(q, "user.storekeeper-test", []byte("x"), 0) // where the file system takes it
		}
		// Changing a child's mode, owner or attributes leaves its
		// directory's mtime as it is.
		return syscall.UtimesNano(q, []syscall.Timespec{now, now})
	})
	if err != nil {
		t.Fatalf("uncanonicalising %s: %v", phys, err)
	}
}

// checkCanonical fails unless every node of p's tree under root has Nix's
// canonical metadata: owner uid:gid, mode 0444 or 0555 (directories
// 0555; symlinks as they are), no setuid/setgid/sticky bit, mtime 1, no
// user extended attribute.
func checkCanonical(t testing.TB, root, p string, uid, gid int) {
	t.Helper()
	phys := filepath.Join(root, p)
	err := filepath.WalkDir(phys, func(q string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		var st syscall.Stat_t
		if err := syscall.Lstat(q, &st); err != nil {
			return err
		}
		if int(st.Uid) != uid || int(st.Gid) != gid {
			t.Errorf("%s: owner %d:%d, want %d:%d", q, st.Uid, st.Gid, uid, gid)
		}
		if st.Mode&syscall.S_IFMT == syscall.S_IFLNK {
			return nil
		}
		perm := st.Mode & 0o7777
		if perm != 0o444 && perm != 0o555 || st.Mode&syscall.S_IFMT == syscall.S_IFDIR && perm != 0o555 {
			t.Errorf("%s: mode %o, want 0444 or 0555", q, perm)
		}
		if st.Mtim.Sec != 1 || st.Mtim.Nsec != 0 {
			t.Errorf("%s: mtime %d.%09d, want 1", q, st.Mtim.Sec, st.Mtim.Nsec)
		}
		if x := listXattrs(q); strings.Contains(x, "user.") {
			t.Errorf("%s: extended attributes %s left", q, x)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("reading %s: %v", phys, err)
	}
}
