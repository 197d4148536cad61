package tests

// The interop harness: builds stores with the real Nix installed on this
// machine (Debian's nix-bin), the way Nix itself would write them:
// nix-instantiate writes the .drv files and `nix-store --register-validity`
// registers the outputs, each run in a private mount namespace where
// ROOT/nix is bind-mounted on /nix, so that the store's logical paths are
// the ordinary /nix/store ones.
//
// Without nix-bin (or without root, which unshare and mount need) the
// interop tests skip with a loud message; with STOREKEEPER_REQUIRE_NIX=1
// (as .ci/run sets) they fail instead, so CI cannot silently skip them.

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"sync"
	"testing"

	"storekeeper/store/storetest"
)

var (
	nixOnce sync.Once
	nixWhy  string // why Nix interop is unavailable; "" if available
)

// requireNix skips (or, under STOREKEEPER_REQUIRE_NIX=1, fails) the test
// when real Nix cannot be run in a private mount namespace here.
func requireNix(t testing.TB) {
	t.Helper()
	nixOnce.Do(func() {
		if _, err := exec.LookPath("nix-store"); err != nil {
			nixWhy = "nix-store is not installed (apt-get install -y nix-bin)"
			return
		}
		if os.Geteuid() != 0 {
			nixWhy = "not root: the interop tests need unshare and mount"
			return
		}
		if out, err := exec.Command("unshare", "-m", "--propagation", "private", "true").CombinedOutput(); err != nil {
			nixWhy = fmt.Sprintf("cannot create a mount namespace: %v: %s", err, out)
		}
	})
	if nixWhy == "" {
		return
	}
	msg := "\n*** SKIPPING REAL-NIX INTEROP TEST: " + nixWhy + " ***\n"
	if os.Getenv("STOREKEEPER_REQUIRE_NIX") == "1" {
		t.Fatal(msg + "(STOREKEEPER_REQUIRE_NIX=1: interop tests must run)")
	}
	t.Skip(msg)
}

// nsScript runs a shell script with ROOT/nix bind-mounted on /nix in a
// private mount namespace. Extra arguments are $1, $2, ... in the script.
func nsScript(root, script string, args ...string) *exec.Cmd {
	full := `mount --bind "$NSROOT/nix" /nix || exit 97
` + script
	cmd := exec.Command("unshare", append([]string{"-m", "--propagation", "private", "sh", "-c", full, "sh"}, args...)...)
	cmd.Env = append(os.Environ(), "NSROOT="+root, "NIX_CONF_DIR="+filepath.Join(root, "etc-nix"))
	return cmd
}

// runNSAll runs a command in ROOT's namespace and returns stdout, stderr
// and the exit status, whatever it is.
func runNSAll(t testing.TB, root string, args ...string) result {
	t.Helper()
	return runCmd(t, nsScript(root, `exec "$@"`, args...), args)
}

// nixVerify runs real `nix-store --verify --check-contents` on the store.
func nixVerify(t testing.TB, root string) {
	t.Helper()
	cmd := nsScript(root, `exec nix-store --verify --check-contents`)
	out, err := cmd.CombinedOutput()
	bad := false
	for _, l := range strings.Split(string(out), "\n") {
		if strings.Contains(l, "error") || strings.Contains(l, "modified") || strings.Contains(l, "disappeared") {
			bad = true
		}
	}
	if err != nil || bad {
		t.Fatalf("nix-store --verify --check-contents rejects the store: %v\n%s", err, tail(string(out), 3000))
	}
}

// runNS runs a command inside the namespace and returns stdout; it fails
// the test on a non-zero exit.
func runNS(t testing.TB, root string, stdin []byte, args ...string) string {
	t.Helper()
	cmd := nsScript(root, `exec "$@"`, args...)
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		t.Fatalf("%s: %v\nstderr:\n%s", strings.Join(args, " "), err, tail(errb.String(), 3000))
	}
	return out.String()
}

func tail(s string, n int) string {
	if len(s) > n {
		return "..." + s[len(s)-n:]
	}
	return s
}

// nixStore describes a store built by real Nix.
type nixStore struct {
	Root     string              // ROOT; the store is ROOT/nix
	Drvs     []string            // derivation paths
	Outputs  []map[string]string // per derivation: output name -> path
	Refs     map[string][]string // output path -> references
	Leftover []string            // unregistered entries in the store dir (base names)
}

// nixSpec shapes a store built with real Nix.
type nixSpec struct {
	Paths    int
	Seed     uint64
	MaxDeps  int
	Files    int
	Roots    int
	Gens     int
	NixConf  string // extra nix.conf text
	Leftover int
	// Salt, when set, goes into every derivation, so that no other
	// fixture shares this store's paths: Nix and storekeeper take every
	// process's open store paths as runtime roots, by name, whichever
	// namespace the process is in, so a test comparing collections needs
	// names no concurrent test uses.
	Salt string
}

// buildNixStore builds a store with real Nix under a new temp dir.
func buildNixStore(t testing.TB, spec nixSpec) *nixStore {
	t.Helper()
	requireNix(t)
	if spec.MaxDeps == 0 {
		spec.MaxDeps = 4
	}
	if spec.Files == 0 {
		spec.Files = 3
	}
	root := t.TempDir()
	if err := os.MkdirAll(filepath.Join(root, "nix"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(root, "etc-nix"), 0o755); err != nil {
		t.Fatal(err)
	}
	// No substituters: no test, Nix's or ours, may reach cache.nixos.org.
	conf := "sandbox = false\nbuild-users-group =\nsubstituters =\n" + spec.NixConf
	if err := os.WriteFile(filepath.Join(root, "etc-nix", "nix.conf"), []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll("/nix", 0o755); err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(spec.Seed, 77))
	n := spec.Paths
	multi := make([]bool, n)
	for i := range multi {
		multi[i] = rng.Float64() < 0.15
	}
	type dep struct {
		j   int
		out string
	}
	deps := make([][]dep, n)
	for i := 1; i < n; i++ {
		k := min(i, rng.IntN(spec.MaxDeps+1))
		seen := map[int]bool{}
		for c := 0; c < k; c++ {
			j := rng.IntN(i)
			if seen[j] {
				continue
			}
			seen[j] = true
			o := "out"
			if multi[j] && rng.Float64() < 0.4 {
				o = "dev"
			}
			deps[i] = append(deps[i], dep{j, o})
		}
	}
	salt := ""
	if spec.Salt != "" {
		salt = fmt.Sprintf(" // { salt = %q; }", spec.Salt)
	}
	var expr strings.Builder
	expr.WriteString("let\n  depsTable = [\n")
	for i := 0; i < n; i++ {
		expr.WriteString("    [ ")
		for _, d := range deps[i] {
			fmt.Fprintf(&expr, "(d %d %q) ", d.j, d.out)
		}
		expr.WriteString("]\n")
	}
	expr.WriteString("  ];\n  multiTable = [ ")
	for _, m := range multi {
		fmt.Fprintf(&expr, "%v ", m)
	}
	fmt.Fprintf(&expr, `];
  d = j: o: builtins.getAttr o (builtins.elemAt drvs j);
  mk = i: derivation ({
    name = "sk-${toString i}";
    system = "x86_64-linux";
    builder = "/bin/sh";
    args = [ "-c" "exit 1" ];
    deps = builtins.elemAt depsTable i;
  } // (if builtins.elemAt multiTable i then { outputs = [ "out" "dev" ]; } else {})%s);
  drvs = builtins.genList mk %d;
in drvs
`, salt, n)
	exprFile := filepath.Join(root, "store.nix")
	if err := os.WriteFile(exprFile, []byte(expr.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	drvs := strings.Fields(runNS(t, root, nil, "nix-instantiate", exprFile))
	if len(drvs) != n {
		t.Fatalf("nix-instantiate made %d derivations, want %d", len(drvs), n)
	}
	ns := &nixStore{Root: root, Drvs: drvs, Refs: map[string][]string{}}
	outRe := regexp.MustCompile(`\("(\w+)","(/nix/store/[^"]+)"`)
	for _, drv := range drvs {
		data, err := os.ReadFile(filepath.Join(root, drv))
		if err != nil {
			t.Fatal(err)
		}
		head, _, _ := strings.Cut(string(data), "],[")
		outs := map[string]string{}
		for _, m := range outRe.FindAllStringSubmatch(head, -1) {
			outs[m[1]] = m[2]
		}
		ns.Outputs = append(ns.Outputs, outs)
	}

	// Outputs with references written into their files.
	pool := make([][]byte, 20)
	for i := range pool {
		pool[i] = randBytes(rng, 100+rng.IntN(6000))
	}
	var reg bytes.Buffer
	for i, drv := range drvs {
		names := make([]string, 0, 2)
		for o := range ns.Outputs[i] {
			names = append(names, o)
		}
		sort.Strings(names)
		for _, o := range names {
			p := ns.Outputs[i][o]
			refSet := map[string]bool{}
			for _, d := range deps[i] {
				if rng.Float64() < 0.8 {
					refSet[ns.Outputs[d.j][d.out]] = true
				}
			}
			if o == "dev" {
				refSet[ns.Outputs[i]["out"]] = true
			}
			if rng.Float64() < 0.1 {
				refSet[p] = true
			}
			refs := make([]string, 0, len(refSet))
			for r := range refSet {
				refs = append(refs, r)
			}
			sort.Strings(refs)
			ns.Refs[p] = refs
			phys := filepath.Join(root, p)
			if len(refs) == 0 && rng.Float64() < 0.1 {
				writeFileMode(t, phys, randBytes(rng, 1+rng.IntN(3000)), 0o444)
			} else {
				for _, sub := range []string{"nix-support", "bin", "share/doc"} {
					if err := os.MkdirAll(filepath.Join(phys, sub), 0o755); err != nil {
						t.Fatal(err)
					}
				}
				writeFileMode(t, filepath.Join(phys, "nix-support", "deps"), []byte(strings.Join(refs, "\n")+"\n"), 0o444)
				for k := 0; k < 1+rng.IntN(2*spec.Files); k++ {
					data := pool[rng.IntN(len(pool))]
					if rng.Float64() < 0.6 {
						data = randBytes(rng, 1+rng.IntN(8000))
					}
					sub := []string{"bin", "share", "share/doc"}[rng.IntN(3)]
					mode := os.FileMode(0o444)
					if sub == "bin" {
						mode = 0o555
					}
					writeFileMode(t, filepath.Join(phys, sub, fmt.Sprintf("f%d", k)), data, mode)
				}
				if err := os.Symlink("share/doc", filepath.Join(phys, "doc")); err != nil {
					t.Fatal(err)
				}
			}
			if err := storetest.Canonicalise(phys); err != nil {
				t.Fatal(err)
			}
			fmt.Fprintf(&reg, "%s\n%s\n%d\n", p, drv, len(refs))
			for _, r := range refs {
				reg.WriteString(r + "\n")
			}
		}
	}
	runNS(t, root, reg.Bytes(), "nix-store", "--register-validity")

	// Roots: direct, indirect through gcroots/auto (one stale), a profile.
	state := filepath.Join(root, "nix/var/nix")
	mustMkdir(t, filepath.Join(state, "gcroots/auto"))
	mustMkdir(t, filepath.Join(root, "home"))
	prof := filepath.Join(state, "profiles/per-user/root")
	mustMkdir(t, prof)
	for r := 0; r < spec.Roots; r++ {
		target := ns.Outputs[n/2+rng.IntN(n-n/2)]["out"]
		if r%2 == 0 {
			mustSymlink(t, target, filepath.Join(state, "gcroots", fmt.Sprintf("direct-%d", r)))
		} else {
			link := filepath.Join(root, "home", fmt.Sprintf("result-%d", r))
			mustSymlink(t, target, link)
			mustSymlink(t, link, filepath.Join(state, "gcroots/auto", randName(rng)))
		}
	}
	mustSymlink(t, filepath.Join(root, "home/gone"), filepath.Join(state, "gcroots/auto", randName(rng)))
	for g := 1; g <= spec.Gens; g++ {
		mustSymlink(t, ns.Outputs[n/2+rng.IntN(n-n/2)]["out"], filepath.Join(prof, fmt.Sprintf("profile-%d-link", g)))
	}
	if spec.Gens > 0 {
		mustSymlink(t, fmt.Sprintf("profile-%d-link", spec.Gens), filepath.Join(prof, "profile"))
	}
	for k := 0; k < spec.Leftover; k++ {
		name := randName(rng) + fmt.Sprintf("-leftover-%d", k)
		mustMkdir(t, filepath.Join(root, "nix/store", name, "lib"))
		writeFileMode(t, filepath.Join(root, "nix/store", name, "lib/x"), randBytes(rng, 100), 0o444)
		ns.Leftover = append(ns.Leftover, name)
	}
	return ns
}

func randBytes(rng *rand.Rand, n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(rng.Uint32())
	}
	return b
}

func randName(rng *rand.Rand) string {
	const chars = "0123456789abcdfghijklmnpqrsvwxyz"
	var sb strings.Builder
	for i := 0; i < 32; i++ {
		sb.WriteByte(chars[rng.IntN(32)])
	}
	return sb.String()
}

func writeFileMode(t testing.TB, p string, data []byte, mode os.FileMode) {
	t.Helper()
	if err := os.WriteFile(p, data, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(p, mode); err != nil {
		t.Fatal(err)
	}
}

func mustMkdir(t testing.TB, p string) {
	t.Helper()
	if err := os.MkdirAll(p, 0o755); err != nil {
		t.Fatal(err)
	}
}

func mustSymlink(t testing.TB, target, link string) {
	t.Helper()
	if err := os.Symlink(target, link); err != nil {
		t.Fatal(err)
	}
}
