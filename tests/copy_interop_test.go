package tests

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
)

// copyResult is copy's --json result.
type copyResult struct {
	DryRun       bool   `json:"dry_run"`
	Target       string `json:"target"`
	StoreCreated bool   `json:"store_created"`
	Paths        []struct {
		Path    string `json:"path"`
		Skipped bool   `json:"skipped"`
		Copied  bool   `json:"copied"`
		Method  string `json:"method"`
		Bytes   uint64 `json:"bytes"`
		Error   *struct {
			Kind, Message string
		} `json:"error"`
	} `json:"paths"`
	PathsRequested int     `json:"paths_requested"`
	PathsClosure   int     `json:"paths_closure"`
	PathsCopied    int     `json:"paths_copied"`
	PathsSkipped   int     `json:"paths_skipped"`
	PathsFailed    int     `json:"paths_failed"`
	PathsToCopy    int     `json:"paths_to_copy"`
	BytesCopied    uint64  `json:"bytes_copied"`
	Elapsed        float64 `json:"elapsed_seconds"`
}

func parseCopyJSON(t *testing.T, stdout string) (jsonEnvelope, copyResult) {
	t.Helper()
	env := decodeEnvelope(t, stdout)
	var r copyResult
	dec := json.NewDecoder(strings.NewReader(string(env.Result)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&r); err != nil {
		t.Fatalf("copy's result: %v\n%s", err, stdout)
	}
	return env, r
}

// copyDumpRecords reads `nix-store --dump-db` into one record per path:
// its lines (path, hash, size, deriver, count, references), as text.
func copyDumpRecords(t testing.TB, out string) map[string]string {
	t.Helper()
	lines := strings.Split(strings.TrimRight(out, "\n"), "\n")
	recs := map[string]string{}
	for i := 0; i < len(lines) && lines[i] != ""; {
		if i+4 >= len(lines) {
			t.Fatalf("dump-db: truncated at line %d", i)
		}
		n, err := strconv.Atoi(lines[i+4])
		if err != nil || i+5+n > len(lines) {
			t.Fatalf("dump-db: bad record at line %d", i)
		}
		refs := append([]string(nil), lines[i+5:i+5+n]...)
		sort.Strings(refs)
		recs[lines[i]] = strings.Join(append(lines[i:i+5:i+5], refs...), "\n")
		i += 5 + n
	}
	return recs
}

// copyNixClosure is `nix-store --store STORE -qR PATHS`, sorted.
func copyNixClosure(t testing.TB, root, storeArg string, paths []string) []string {
	t.Helper()
	args := []string{"nix-store"}
	if storeArg != "" {
		args = append(args, "--store", storeArg)
	}
	out := runNS(t, root, nil, append(append(args, "-qR"), paths...)...)
	l := strings.Fields(out)
	sort.Strings(l)
	return l
}

// copyNixVerify runs real `nix-store --verify --check-contents` on the
// store storeArg (seen from root's namespace) and fails on any complaint.
func copyNixVerify(t testing.TB, root, storeArg string) {
	t.Helper()
	r := runNSAll(t, root, "nix-store", "--store", storeArg, "--verify", "--check-contents")
	out := r.stdout + r.stderr
	if r.code != 0 || strings.Contains(out, "error") || strings.Contains(out, "modified") || strings.Contains(out, "disappeared") {
		t.Fatalf("nix-store --store %s --verify --check-contents: exit %d\n%s", storeArg, r.code, tail(out, 3000))
	}
}

// copyFirstFile returns a regular file of the store path p (physical
// prefix root), relative to the store path, or "".
func copyFirstFile(root, p string) string {
	found := ""
	filepath.Walk(filepath.Join(root, p), func(q string, fi os.FileInfo, err error) error {
		if err == nil && found == "" && fi.Mode().IsRegular() {
			found, _ = filepath.Rel(filepath.Join(root, p), q)
		}
		return nil
	})
	return found
}

func copyIno(t testing.TB, p string) uint64 {
	t.Helper()
	var st syscall.Stat_t
	if err := syscall.Lstat(p, &st); err != nil {
		t.Fatal(err)
	}
	return st.Ino
}

// TestCopyInteropNix: `copy --to` a new store, given as local?root=DIR
// and as a plain DIR (both empty directories: the store is created
// there), copies the closure of the paths of a store real Nix wrote:
// real `nix-store --verify --check-contents` on the target passes,
// `nix-store -qR` there gives the source's closure, and the target's
// `--dump-db` records (hash, size, deriver, references) of the closure
// are the source's. On one file system the source's canonical files are
// hard-linked (same inodes). A second run skips everything.
// (The targets are empty directories under the source's root.)
func TestCopyInteropNix(t *testing.T) {
	ns := buildNixStore(t, nixSpec{Paths: 40, Seed: 4040, Files: 4, Salt: "copy-interop"})
	paths := []string{ns.Outputs[39]["out"], ns.Outputs[25]["out"], ns.Drvs[30]}
	want := copyNixClosure(t, ns.Root, "", paths)
	srcRecs := copyDumpRecords(t, runNS(t, ns.Root, nil, "nix-store", "--dump-db"))
	if len(want) < 10 {
		t.Fatalf("closure of %d paths only", len(want))
	}
	for _, form := range []string{"local?root=", ""} {
		// Inside the namespace's /nix mount, so that the source's files
		// can be linked (linkat does not cross mount points, not even
		// bind mounts of one file system).
		name := "/nix/target-" + strconv.Itoa(len(form))
		dir := filepath.Join(ns.Root, name)
		mustMkdir(t, dir)
		target := form + name
		r := runInNS(t, ns.Root, append([]string{"--json", "copy", "--to", target}, paths...)...)
		if r.code != 0 {
			t.Fatalf("copy --to %s: exit %d\n%s%s", target, r.code, r.stdout, tail(r.stderr, 3000))
		}
		env, res := parseCopyJSON(t, r.stdout)
		if env.Command != "copy" || !env.OK || !res.StoreCreated || res.PathsCopied != len(want) || res.PathsClosure != len(want) || res.PathsFailed != 0 || res.BytesCopied == 0 {
			t.Fatalf("copy --to %s: %+v", target, res)
		}
		for _, p := range res.Paths {
			if f := copyFirstFile(ns.Root, p.Path); f != "" {
				if p.Method != "hardlink" {
					t.Errorf("%s: method %q on one file system, want hardlink", p.Path, p.Method)
				}
				if copyIno(t, filepath.Join(ns.Root, p.Path, f)) != copyIno(t, filepath.Join(dir, p.Path, f)) {
					t.Errorf("%s/%s is not hard-linked to the source's", p.Path, f)
				}
			}
		}
		copyNixVerify(t, ns.Root, target)
		if got := copyNixClosure(t, ns.Root, target, paths); strings.Join(got, " ") != strings.Join(want, " ") {
			t.Fatalf("nix-store -qR on the target: %d paths, the source's closure %d:\n%v\n%v", len(got), len(want), got, want)
		}
		recs := copyDumpRecords(t, runNS(t, ns.Root, nil, "nix-store", "--store", target, "--dump-db"))
		if len(recs) != len(want) {
			t.Fatalf("the target has %d valid paths, want %d", len(recs), len(want))
		}
		for _, p := range want {
			if recs[p] != srcRecs[p] {
				t.Errorf("the target's record of %s:\n%s\nthe source's:\n%s", p, recs[p], srcRecs[p])
			}
		}
		r = runInNS(t, ns.Root, append([]string{"--json", "copy", "--to", target}, paths...)...)
		if _, res := parseCopyJSON(t, r.stdout); r.code != 0 || res.PathsSkipped != len(want) || res.PathsCopied != 0 || res.StoreCreated {
			t.Fatalf("second run: exit %d %+v", r.code, res)
		}
	}
}

// TestCopyInteropOtherFileSystem: into a store on another file system (a
// tmpfs mounted in the test's private namespace) the files are copied,
// not linked; real Nix verifies the target and sees the same closure.
// --method hardlink there fails at once (exit 2), naming why.
func TestCopyInteropOtherFileSystem(t *testing.T) {
	ns := buildNixStore(t, nixSpec{Paths: 20, Seed: 4141, Files: 4, Salt: "copy-tmpfs"})
	paths := []string{ns.Outputs[19]["out"], ns.Outputs[12]["out"]}
	want := copyNixClosure(t, ns.Root, "", paths)
	dir := filepath.Join(t.TempDir(), "mnt")
	mustMkdir(t, dir)
	script := `mount -t tmpfs none "$T" || exit 96
"$SK" copy --method hardlink --to "$T" "$@" >/dev/null 2>"$T.hl"; echo "hardlink-exit $?"
"$SK" --json copy --to "$T" "$@" > "$T.json" || { echo "copy failed $?"; cat "$T.json"; exit 1; }
nix-store --store "$T" --verify --check-contents 2>&1 || echo "verify failed"
echo "closure:"
nix-store --store "$T" -qR "$@" | sort
echo "inodes:"
for p in $(nix-store --store "$T" -qR "$@"); do
  f=$(find "$T$p" -type f | head -1); [ -n "$f" ] && echo "$(stat -c %i "$f") $(stat -c %i "$NSROOT${f#$T}")"
done
df -T "$T" | tail -1
`
	cmd := nsScript(ns.Root, script, paths...)
	cmd.Env = append(cmd.Env, "T="+dir, "SK="+binary)
	r := runCmd(t, cmd, nil)
	if r.code != 0 {
		t.Fatalf("exit %d\n%s\n%s", r.code, r.stdout, r.stderr)
	}
	if !strings.Contains(r.stdout, "tmpfs") {
		t.Fatalf("the target is not on a tmpfs:\n%s", r.stdout)
	}
	if !strings.Contains(r.stdout, "hardlink-exit 2") || strings.Contains(r.stdout, "verify failed") {
		t.Fatalf("%s", r.stdout)
	}
	_, after, _ := strings.Cut(r.stdout, "closure:\n")
	closure, inodes, _ := strings.Cut(after, "inodes:\n")
	if got := strings.Fields(closure); strings.Join(got, " ") != strings.Join(want, " ") {
		t.Fatalf("closure on the tmpfs target:\n%v\nwant\n%v", got, want)
	}
	n := 0
	for _, l := range strings.Split(strings.TrimSpace(inodes), "\n") {
		f := strings.Fields(l)
		if len(f) == 2 {
			n++
		}
	}
	if n == 0 {
		t.Fatalf("no file compared:\n%s", r.stdout)
	}
	hl, _ := os.ReadFile(dir + ".hl")
	if !strings.Contains(string(hl), "different file systems") || !strings.Contains(string(hl), "--method auto or copy") {
		t.Errorf("--method hardlink across file systems: %s", hl)
	}
	js, _ := os.ReadFile(dir + ".json")
	_, res := parseCopyJSON(t, string(js))
	for _, p := range res.Paths {
		if copyFirstFile(ns.Root, p.Path) != "" && p.Method != "copy" {
			t.Errorf("%s: method %q to another file system, want copy", p.Path, p.Method)
		}
	}
	if res.PathsCopied != len(want) {
		t.Fatalf("%+v", res)
	}
}

// TestCopyInteropReflink: on a file system that clones (XFS with
// reflink, made on a loop device in the test's private namespace; the
// test skips where mkfs.xfs is not installed), a store copied there with
// --method copy is copied on with --method reflink and with auto
// (--from it): both clone every file (method reflink, new inodes), and
// real Nix verifies the targets and sees the source's closure. A dry run
// before says what would be copied and creates nothing.
func TestCopyInteropReflink(t *testing.T) {
	requireNix(t)
	if _, err := exec.LookPath("mkfs.xfs"); err != nil {
		t.Skip("mkfs.xfs is not installed (apt-get install xfsprogs): no file system that clones to test reflinks on")
	}
	ns := buildNixStore(t, nixSpec{Paths: 20, Seed: 4545, Files: 4, Salt: "copy-reflink"})
	paths := []string{ns.Outputs[19]["out"], ns.Outputs[15]["out"]}
	want := copyNixClosure(t, ns.Root, "", paths)
	img := filepath.Join(t.TempDir(), "xfs.img")
	if out, err := exec.Command("truncate", "-s", "400M", img).CombinedOutput(); err != nil {
		t.Fatalf("%v %s", err, out)
	}
	if out, err := exec.Command("mkfs.xfs", "-q", "-m", "reflink=1", img).CombinedOutput(); err != nil {
		t.Fatalf("mkfs.xfs: %v %s", err, out)
	}
	mustMkdir(t, filepath.Join(ns.Root, "nix/xfs"))
	script := `mount -o loop "$IMG" /nix/xfs || exit 96
mkdir /nix/xfs/src /nix/xfs/dry /nix/xfs/r /nix/xfs/a
"$SK" --json copy --dry-run --to /nix/xfs/dry "$@" > /nix/xfs/dry.json || echo "dry-run failed"
ls -A /nix/xfs/dry | sed 's/^/dry-entry /'
"$SK" --quiet copy --method copy --to /nix/xfs/src "$@" || echo "copy to xfs failed"
"$SK" --json copy --method reflink --from /nix/xfs/src --to /nix/xfs/r "$@" > /nix/xfs/r.json || echo "reflink failed $?"
"$SK" --json copy --from /nix/xfs/src --to /nix/xfs/a "$@" > /nix/xfs/a.json || echo "auto failed $?"
for t in r a; do
  nix-store --store /nix/xfs/$t --verify --check-contents 2>&1 | grep -E "error|modified" && echo "verify $t failed"
  echo "closure $t: $(nix-store --store /nix/xfs/$t -qR "$@" | sort | tr '\n' ' ')"
  for p in $(nix-store --store /nix/xfs/$t -qR "$@"); do
    f=$(find /nix/xfs/$t$p -type f | head -1)
    [ -n "$f" ] && [ "$(stat -c %i "$f")" = "$(stat -c %i "/nix/xfs/src${f#/nix/xfs/$t}")" ] && echo "same inode $f"
  done
done
cat /nix/xfs/dry.json /nix/xfs/r.json /nix/xfs/a.json > "$OUT"
umount /nix/xfs
`
	out := filepath.Join(t.TempDir(), "out.json")
	cmd := nsScript(ns.Root, script, paths...)
	cmd.Env = append(cmd.Env, "IMG="+img, "SK="+binary, "OUT="+out)
	r := runCmd(t, cmd, nil)
	if r.code == 96 {
		t.Skipf("cannot mount an XFS image here: %s", r.stderr)
	}
	if r.code != 0 || strings.Contains(r.stdout, "failed") || strings.Contains(r.stdout, "same inode") || strings.Contains(r.stdout, "dry-entry") {
		t.Fatalf("exit %d\n%s\n%s", r.code, r.stdout, tail(r.stderr, 3000))
	}
	for _, tg := range []string{"r", "a"} {
		if !strings.Contains(r.stdout, "closure "+tg+": "+strings.Join(want, " ")+" ") {
			t.Errorf("the closure in %s is not the source's:\n%s", tg, r.stdout)
		}
	}
	data, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	dec := json.NewDecoder(strings.NewReader(string(data)))
	for i, what := range []string{"dry run", "reflink", "auto"} {
		var env struct {
			OK     bool       `json:"ok"`
			Result copyResult `json:"result"`
		}
		if err := dec.Decode(&env); err != nil {
			t.Fatalf("%s: %v\n%s", what, err, data)
		}
		res := env.Result
		if i == 0 {
			if !env.OK || !res.DryRun || res.PathsToCopy != len(want) || res.PathsCopied != 0 || res.BytesCopied == 0 || res.StoreCreated {
				t.Errorf("dry run: %+v", res)
			}
			continue
		}
		if !env.OK || res.PathsCopied != len(want) {
			t.Fatalf("%s: %+v", what, res)
		}
		for _, p := range res.Paths {
			if copyFirstFile(ns.Root, p.Path) != "" && p.Method != "reflink" {
				t.Errorf("%s: %s was copied by %q, want reflink", what, p.Path, p.Method)
			}
		}
	}
}
