package tests

// Hardening of gc (#21 items 7 and 8): the gc socket survives bad
// clients; collections started at the same time, two of storekeeper's or
// one beside `nix-store --gc`, all succeed, end like one collection
// alone, and report only what each freed itself.

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// fileBlocks maps the inode of every regular file under dir to its size
// on disk (st_blocks * 512), and says whether any has more than one link.
func fileBlocks(t testing.TB, dir string) (map[uint64]uint64, bool) {
	t.Helper()
	out := map[uint64]uint64{}
	linked := false
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.Type().IsRegular() {
			return nil
		}
		var st syscall.Stat_t
		if err := syscall.Lstat(p, &st); err != nil {
			return err
		}
		out[st.Ino] = uint64(st.Blocks) * 512
		linked = linked || st.Nlink > 1
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out, linked
}

// freedBetween is what the files present in before and gone in after
// occupied.
func freedBetween(before, after map[uint64]uint64) uint64 {
	var n uint64
	for ino, b := range before {
		if _, ok := after[ino]; !ok {
			n += b
		}
	}
	return n
}

// gcJSON reads the bytes_freed of a `storekeeper --json gc` output file.
func gcJSON(t testing.TB, file string) uint64 {
	t.Helper()
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	var r struct {
		BytesFreed *uint64 `json:"bytes_freed"`
	}
	if err := json.Unmarshal(resultOf(data), &r); err != nil || r.BytesFreed == nil {
		t.Fatalf("%s: not a gc result: %v: %q", file, err, data)
	}
	return *r.BytesFreed
}

// concurrentGCScripts start two collections at once in the store's
// namespace: started together, or the second one started while the first
// (a storekeeper gc) holds gc.lock at its sync point, so that it waits
// for the lock and runs right after the first releases it, while the
// first deletes its trash. The script prints "RC1 n" and "RC2 n".
var concurrentGCScripts = map[string]string{
	"together": `
$FIRST > "$DIR/1.out" 2> "$DIR/1.err" & p1=$!
$SECOND > "$DIR/2.out" 2> "$DIR/2.err" & p2=$!
wait $p1; echo "RC1 $?"
wait $p2; echo "RC2 $?"
`,
	"second waits for the lock": `
mkfifo "$DIR/sync"
_STOREKEEPER_TEST_GC_SYNC="$DIR/sync" $FIRST > "$DIR/1.out" 2> "$DIR/1.err" & p1=$!
i=0; while [ ! -S /nix/var/nix/gc-socket/socket ] && [ $i -lt 200 ]; do sleep 0.05; i=$((i+1)); done
$SECOND > "$DIR/2.out" 2> "$DIR/2.err" & p2=$!
i=0; while ! grep -q "waiting for the big garbage collector lock" "$DIR/2.err" 2>/dev/null && [ $i -lt 200 ]; do sleep 0.05; i=$((i+1)); done
echo go > "$DIR/sync"
wait $p1; echo "RC1 $?"
wait $p2; echo "RC2 $?"
`,
}

// runConcurrentGC runs script with the two commands on root and fails
// unless both exit 0. It returns the directory holding 1.out, 2.out, ...
func runConcurrentGC(t *testing.T, root, script, first, second string) string {
	t.Helper()
	dir := t.TempDir()
	cmd := nsScript(root, script)
	cmd.Env = append(cmd.Env, "DIR="+dir, "FIRST="+first, "SECOND="+second)
	out, err := cmd.CombinedOutput()
	e1, _ := os.ReadFile(filepath.Join(dir, "1.err"))
	e2, _ := os.ReadFile(filepath.Join(dir, "2.err"))
	if err != nil || !strings.Contains(string(out), "RC1 0") || !strings.Contains(string(out), "RC2 0") {
		t.Fatalf("%q and %q: %v\n%s\nfirst's stderr:\n%s\nsecond's stderr:\n%s", first, second, err, out, tail(string(e1), 2000), tail(string(e2), 2000))
	}
	return dir
}

// nixAlone runs `nix-store --gc` alone on a copy of src, before the
// collections it is compared with, and returns a function that gives the
// valid paths and store entries it left. It runs first, not beside them:
// Nix and storekeeper take the runtime roots of every process of the
// machine by name, so a collection running at the same time (holding the
// dead paths it deletes open) would make the reference keep them. The
// fixtures are salted (nixSpec.Salt), so no other test's process holds
// a path of the same name.
func nixAlone(t *testing.T, src string) func() (valid, entries string) {
	t.Helper()
	ref := copyStore(t, src)
	cmd := nsScript(ref, `exec nix-store --gc`)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("nix-store --gc alone: %v\n%s", err, tail(string(out), 2000))
	}
	valid, ents := fmt.Sprint(validPaths(t, ref)), fmt.Sprint(entries(t, ref))
	return func() (string, string) { return valid, ents }
}

// checkLikeNixAlone: the store holds the same valid paths and entries as
// after `nix-store --gc` alone (ref, from nixAlone), no trash is left, and
// Nix accepts it.
func checkLikeNixAlone(t *testing.T, root string, ref func() (string, string)) {
	t.Helper()
	wantValid, wantEntries := ref()
	if v := fmt.Sprint(validPaths(t, root)); v != wantValid {
		t.Fatalf("valid paths differ from nix-store --gc alone:\nwant %s\ngot  %s", wantValid, v)
	}
	if e := fmt.Sprint(entries(t, root)); e != wantEntries {
		t.Fatalf("store entries differ from nix-store --gc alone:\nwant %s\ngot  %s", wantEntries, e)
	}
	if _, err := os.Lstat(filepath.Join(root, "nix/store/trash")); err == nil {
		t.Errorf("a trash directory is left in the store")
	}
	nixVerify(t, root)
}

// TestHardeningGCConcurrentRuns: two `storekeeper gc` started at the same
// time on one store both exit 0, the store ends as `nix-store --gc` alone
// leaves it, and the bytes they report add up to what was freed, never
// more (each counts only what it deleted itself). Repeated to make the
// race likely, in both orders of arrival.
func TestHardeningGCConcurrentRuns(t *testing.T) {
	ns := buildNixStore(t, nixSpec{Paths: 150, Seed: 31, Files: 4, Roots: 4, Gens: 2, Leftover: 4, Salt: t.Name()})
	sk := binary + " --json gc"
	for name, script := range concurrentGCScripts {
		for trial := 0; trial < 3; trial++ {
			t.Run(fmt.Sprintf("%s/%d", name, trial), func(t *testing.T) {
				root := copyStore(t, ns.Root)
				before, linked := fileBlocks(t, filepath.Join(root, "nix/store"))
				ref := nixAlone(t, ns.Root)
				dir := runConcurrentGC(t, root, script, sk, sk)
				after, _ := fileBlocks(t, filepath.Join(root, "nix/store"))
				checkLikeNixAlone(t, root, ref)
				freed := freedBetween(before, after)
				r1, r2 := gcJSON(t, filepath.Join(dir, "1.out")), gcJSON(t, filepath.Join(dir, "2.out"))
				if r1+r2 > freed {
					t.Fatalf("the two runs report %d + %d = %d bytes freed, but only %d were", r1, r2, r1+r2, freed)
				}
				if !linked && r1+r2 != freed {
					t.Fatalf("the two runs report %d + %d = %d bytes freed, but %d were (no file has two links: they must agree)", r1, r2, r1+r2, freed)
				}
			})
		}
	}
}

// TestHardeningGCBesideNix: `storekeeper gc` and `nix-store --gc` started
// together both exit 0 and the store ends as after `nix-store --gc`
// alone: neither deletes what the other is deleting under it (Nix's own
// deletion fails when an entry disappears under it).
func TestHardeningGCBesideNix(t *testing.T) {
	ns := buildNixStore(t, nixSpec{Paths: 150, Seed: 32, Files: 4, Roots: 4, Gens: 2, Leftover: 4, Salt: t.Name()})
	sk, nix := binary+" gc", "nix-store --gc"
	cases := []struct{ name, script, first, second string }{
		{"together", concurrentGCScripts["together"], sk, nix},
		{"together, nix first", concurrentGCScripts["together"], nix, sk},
		{"nix waits for the lock", concurrentGCScripts["second waits for the lock"], sk, nix},
	}
	for _, c := range cases {
		for trial := 0; trial < 3; trial++ {
			t.Run(fmt.Sprintf("%s/%d", c.name, trial), func(t *testing.T) {
				root := copyStore(t, ns.Root)
				ref := nixAlone(t, ns.Root)
				runConcurrentGC(t, root, c.script, c.first, c.second)
				checkLikeNixAlone(t, root, ref)
			})
		}
	}
}

// TestHardeningGCSocketBadClients: while `storekeeper gc` serves its gc
// socket (held at its sync point), a client that sends 1 MiB without a
// newline and one that sends a control-character line have their
// connections closed unanswered; a real Nix client still registers its
// root; the collection finishes with exit 0, and its stderr holds one
// short, escaped line per bad client.
func TestHardeningGCSocketBadClients(t *testing.T) {
	ns := buildNixStore(t, nixSpec{Paths: 20, Seed: 33, Roots: 2})
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "new.txt"), []byte("added during the collection\n"), 0o644)
	script := `
mkfifo "$DIR/sync"
_STOREKEEPER_TEST_GC_SYNC="$DIR/sync" "$BIN" gc > "$DIR/gc.out" 2> "$DIR/gc.err" & gc=$!
i=0; while [ ! -e "$DIR/clients-done" ] && [ $i -lt 600 ]; do sleep 0.05; i=$((i+1)); done
timeout 20 nix-store --add "$DIR/new.txt" > "$DIR/new.path" || echo "add failed"
echo go > "$DIR/sync"
wait $gc; echo "GC $?"
`
	cmd := nsScript(ns.Root, script)
	cmd.Env = append(cmd.Env, "DIR="+dir, "BIN="+binary)
	var out strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	socket := filepath.Join(ns.Root, "nix/var/nix/gc-socket/socket")
	for i := 0; i < 400; i++ {
		if fi, err := os.Stat(socket); err == nil && fi.Mode()&fs.ModeSocket != 0 {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	for _, line := range [][]byte{
		append([]byte("/nix/store/"), bytes.Repeat([]byte("x"), 1<<20)...),
		[]byte("\x1b]0;owned\x07/nix/store/junk\n"),
	} {
		conn, err := net.Dial("unix", socket)
		if err != nil {
			t.Fatalf("dialing the gc socket: %v", err)
		}
		go conn.Write(line)
		conn.SetReadDeadline(time.Now().Add(10 * time.Second))
		n, err := conn.Read(make([]byte, 1))
		var ne net.Error
		if n != 0 || err == nil || errors.As(err, &ne) && ne.Timeout() {
			t.Errorf("a bad line of %d bytes: read %d bytes, %v; want the connection closed without an answer", len(line), n, err)
		}
		conn.Close()
	}
	os.WriteFile(filepath.Join(dir, "clients-done"), nil, 0o644)
	if err := cmd.Wait(); err != nil || !strings.Contains(out.String(), "GC 0") || strings.Contains(out.String(), "add failed") {
		e, _ := os.ReadFile(filepath.Join(dir, "gc.err"))
		t.Fatalf("%v\n%s\ngc stderr:\n%s", err, out.String(), tail(string(e), 2000))
	}
	errText, _ := os.ReadFile(filepath.Join(dir, "gc.err"))
	if len(errText) > 2000 || strings.ContainsAny(string(errText), "\x1b\x07") || strings.Count(string(errText), "gc socket: closed the connection") != 2 {
		t.Fatalf("gc's stderr (%d bytes) should hold two short, escaped lines about the bad clients:\n%q", len(errText), tail(string(errText), 2000))
	}
	newPath, _ := os.ReadFile(filepath.Join(dir, "new.path"))
	found := false
	for _, p := range validPaths(t, ns.Root) {
		found = found || p == strings.TrimSpace(string(newPath))
	}
	if !found {
		t.Fatalf("%q, added through the gc socket during the collection, is not valid after it", newPath)
	}
	nixVerify(t, ns.Root)
}
