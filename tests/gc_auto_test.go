package tests

// gc --auto (issue #26) against stores built by real Nix: above min-free
// it does nothing and opens no database (a corrupt one, a directory loop
// under gcroots/); below it (a store on a small tmpfs, so the free space
// is the test's to set) it frees up to max-free and stops, also with a
// full /tmp and /var/tmp; two started at once collect once; a run queued
// behind gc.lock does no work when the space was freed meanwhile.

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// autoEnvelope is gc --auto --json's output as these tests read it.
type autoEnvelope struct {
	OK    bool `json:"ok"`
	Error *struct {
		Kind    string `json:"kind"`
		Message string `json:"message"`
	} `json:"error"`
	Result struct {
		Auto *struct {
			MinFree    uint64  `json:"min_free_bytes"`
			MaxFree    *uint64 `json:"max_free_bytes"`
			FreeBefore uint64  `json:"free_bytes_before"`
			FreeAfter  *uint64 `json:"free_bytes_after"`
			Collected  bool    `json:"collected"`
			Reason     string  `json:"reason"`
		} `json:"auto"`
		PathsDeleted int      `json:"paths_deleted"`
		BytesFreed   uint64   `json:"bytes_freed"`
		Dead         []string `json:"dead"`
		EnoughFree   bool     `json:"enough_free"`
	} `json:"result"`
}

func parseAuto(t *testing.T, what, out string) autoEnvelope {
	t.Helper()
	var e autoEnvelope
	if err := json.Unmarshal([]byte(out), &e); err != nil {
		t.Fatalf("%s: not one JSON object: %v\n%s", what, err, tail(out, 3000))
	}
	return e
}

// varState lists every file under ROOT/nix/var with its size and mtime:
// what a run above min-free must leave as it was (no database, lock or
// state file opened for writing or created).
func varState(t *testing.T, root string) string {
	t.Helper()
	var lines []string
	filepath.Walk(filepath.Join(root, "nix/var"), func(p string, fi os.FileInfo, err error) error {
		if err != nil {
			return nil
		}
		lines = append(lines, fmt.Sprintf("%s %v %d %d", strings.TrimPrefix(p, root), fi.Mode(), fi.Size(), fi.ModTime().UnixNano()))
		return nil
	})
	sort.Strings(lines)
	return strings.Join(lines, "\n")
}

// TestGCAutoAboveMinFree: with a corrupt database and a directory loop
// under gcroots/ (either would stop a collection), gc --auto above
// min-free (from --min-free or nix.conf) or with min-free 0 exits 0 with
// one line and changes, creates and locks nothing under nix/var; below
// min-free the same store is refused with exit 2 and the database named.
func TestGCAutoAboveMinFree(t *testing.T) {
	ns := buildNixStore(t, nixSpec{Paths: 8, Seed: 261, Roots: 1, Gens: 1})
	root := copyStore(t, ns.Root)
	db := filepath.Join(root, "nix/var/nix/db/db.sqlite")
	if err := os.WriteFile(db, []byte(strings.Repeat("not a database\n", 500)), 0o644); err != nil {
		t.Fatal(err)
	}
	os.Remove(db + "-wal")
	os.Remove(db + "-shm")
	mustMkdir(t, filepath.Join(root, "nix/var/nix/gcroots/loop"))
	before := varState(t, root)
	dbBefore := statSame(t, db)
	script := `mount --bind /nix/var/nix/gcroots /nix/var/nix/gcroots/loop || exit 98
"$BIN" "$@"`
	runAuto := func(args ...string) result {
		cmd := nsScript(root, script, args...)
		cmd.Env = append(cmd.Env, "BIN="+binary)
		return runCmd(t, cmd, args)
	}
	for _, c := range []struct {
		args   []string
		conf   string
		reason string
	}{
		{[]string{"gc", "--auto", "--json"}, "", "disabled"},
		{[]string{"gc", "--auto", "--json", "--min-free", "1K"}, "", "above-min-free"},
		{[]string{"gc", "--auto", "--json", "--min-free", "0%"}, "", "above-min-free"},
		{[]string{"gc", "--auto", "--json"}, "min-free = 1024\n", "above-min-free"},
		{[]string{"gc", "--auto", "--json", "--min-free", "1M", "--max-free", "1K"}, "", "above-min-free"},
		{[]string{"gc", "--auto", "--json", "--keep", "1", "--keep-auto-since", "1d"}, "min-free = 4096\n", "above-min-free"},
	} {
		conf := filepath.Join(root, "etc-nix/nix.conf")
		base, _ := os.ReadFile(conf)
		os.WriteFile(conf, append(append([]byte{}, base...), c.conf...), 0o644)
		r := runAuto(c.args...)
		os.WriteFile(conf, base, 0o644)
		e := parseAuto(t, strings.Join(c.args, " "), r.stdout)
		if r.code != 0 || !e.OK || e.Result.Auto == nil || e.Result.Auto.Reason != c.reason || e.Result.Auto.Collected {
			t.Fatalf("%v with nix.conf %q: exit %d, %s\n%s", c.args, c.conf, r.code, r.stdout, r.stderr)
		}
		if c.reason == "above-min-free" && e.Result.Auto.FreeBefore == 0 {
			t.Errorf("%v: free_bytes_before 0", c.args)
		}
	}
	// Text: one info line on stderr, nothing on stdout.
	r := runAuto("gc", "--auto", "--min-free", "1K")
	if r.code != 0 || r.stdout != "" || strings.Count(strings.TrimSpace(r.stderr), "\n") != 0 || !strings.Contains(r.stderr, "nothing to do") {
		t.Fatalf("gc --auto text: exit %d\nstdout %q\nstderr %q", r.code, r.stdout, r.stderr)
	}
	if after := varState(t, root); after != before {
		t.Fatalf("gc --auto above min-free changed nix/var:\nbefore:\n%s\nafter:\n%s", before, after)
	}
	if got := statSame(t, db); got != dbBefore {
		t.Fatalf("the database changed: %s", got)
	}
	// Below min-free the corrupt database stops it, named, exit 2.
	r = runAuto("gc", "--auto", "--json", "--min-free", "100%")
	e := parseAuto(t, "gc --auto --min-free 100%", r.stdout)
	if r.code != 2 || e.OK || e.Error == nil || !strings.Contains(e.Error.Message, "db.sqlite") {
		t.Fatalf("gc --auto below min-free on a corrupt database: exit %d\n%s\n%s", r.code, r.stdout, r.stderr)
	}
	if got := statSame(t, db); got != dbBefore {
		t.Fatalf("the corrupt database was changed: %s", got)
	}
}

// tmpfsStore copies the store at src (ROOT with nix/ and etc-nix/) onto a
// new tmpfs of size bytes and returns its root.
func tmpfsStore(t *testing.T, src string, size int64) string {
	t.Helper()
	root := t.TempDir()
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", fmt.Sprintf("size=%d,mode=755", size), "tmpfs", root).CombinedOutput(); err != nil {
		t.Fatalf("mount tmpfs: %v %s", err, out)
	}
	t.Cleanup(func() { exec.Command("umount", "-l", root).Run() })
	for _, d := range []string{"nix", "etc-nix"} {
		if out, err := exec.Command("cp", "-a", filepath.Join(src, d), filepath.Join(root, d)).CombinedOutput(); err != nil {
			t.Fatalf("cp: %v %s", err, out)
		}
	}
	return root
}

// freeBytes is what statfs says is available on root's file system.
func freeBytes(t *testing.T, root string) uint64 {
	t.Helper()
	var st unix.Statfs_t
	if err := unix.Statfs(root, &st); err != nil {
		t.Fatal(err)
	}
	return st.Bavail * uint64(st.Bsize)
}

// autoFixture is a real-Nix store with garbage on its own tmpfs, filled
// so that little is free: Garbage bytes of Dead dead entries, Avail
// bytes free after the filler.
type autoFixture struct {
	Root    string
	Garbage uint64
	Dead    int
	Avail   uint64
}

func buildAutoFixture(t *testing.T, seed uint64) autoFixture {
	t.Helper()
	ns := buildNixStore(t, nixSpec{Paths: 120, Seed: seed, Files: 8, Roots: 2, Gens: 2, Salt: fmt.Sprintf("%s-%d", t.Name(), seed)})
	root := tmpfsStore(t, ns.Root, 192<<20)
	r := runInNS(t, root, "gc", "--dry-run", "--json")
	e := parseAuto(t, "gc --dry-run", r.stdout)
	if r.code != 0 || e.Result.BytesFreed < 1<<20 || len(e.Result.Dead) < 20 {
		t.Fatalf("the fixture has too little garbage (%d bytes, %d entries): exit %d %s", e.Result.BytesFreed, len(e.Result.Dead), r.code, r.stderr)
	}
	// Leave 24 MiB free: room for SQLite's WAL and the trash.
	fill := int64(freeBytes(t, root)) - 24<<20
	if out, err := exec.Command("fallocate", "-l", fmt.Sprint(fill), filepath.Join(root, "filler")).CombinedOutput(); err != nil {
		t.Fatalf("fallocate: %v %s", err, out)
	}
	return autoFixture{Root: root, Garbage: e.Result.BytesFreed, Dead: len(e.Result.Dead), Avail: freeBytes(t, root)}
}

// deadLeft is how many entries gc would still delete.
func deadLeft(t *testing.T, root string) int {
	t.Helper()
	r := runInNS(t, root, "gc", "--dry-run", "--json")
	if r.code != 0 {
		t.Fatalf("gc --dry-run: exit %d %s", r.code, r.stderr)
	}
	return len(parseAuto(t, "gc --dry-run", r.stdout).Result.Dead)
}

// slack is what the file system may lose to SQLite's WAL and directories
// while a collection frees space.
const slack = 2 << 20

// TestGCAutoBelowMinFree: below min-free gc --auto collects until
// max-free is free and stops there (garbage is left), statfs agreeing,
// with /tmp and /var/tmp full (TMPDIR on the full one); the store passes
// nix-store --verify. A second run is then above min-free and does
// nothing.
func TestGCAutoBelowMinFree(t *testing.T) {
	f := buildAutoFixture(t, 262)
	minFree := f.Avail + f.Garbage/4
	maxFree := f.Avail + f.Garbage/2
	args := []string{"gc", "--auto", "--json", "--min-free", fmt.Sprint(minFree), "--max-free", fmt.Sprint(maxFree)}
	script := `exec 9<"$BIN"
mount -t tmpfs -o size=64k tmpfs /tmp && mount -t tmpfs -o size=64k tmpfs /var/tmp || exit 98
dd if=/dev/zero of=/tmp/fill bs=4k 2>/dev/null; dd if=/dev/zero of=/var/tmp/fill bs=4k 2>/dev/null
[ "$(df --output=avail /tmp | tail -1)" -eq 0 ] && [ "$(df --output=avail /var/tmp | tail -1)" -eq 0 ] || exit 99
TMPDIR=/tmp /dev/fd/9 "$@"`
	cmd := nsScript(f.Root, script, args...)
	cmd.Env = append(cmd.Env, "BIN="+binary)
	r := runCmd(t, cmd, args)
	e := parseAuto(t, "gc --auto", r.stdout)
	if r.code != 0 || e.Result.Auto == nil || !e.Result.Auto.Collected || e.Result.Auto.Reason != "collected" {
		t.Fatalf("gc --auto below min-free: exit %d\n%s\n%s", r.code, r.stdout, r.stderr)
	}
	a := e.Result.Auto
	if a.MinFree != minFree || a.MaxFree == nil || *a.MaxFree != maxFree || a.FreeBefore != f.Avail {
		t.Errorf("auto: min %d max %v before %d; want %d %d %d", a.MinFree, a.MaxFree, a.FreeBefore, minFree, maxFree, f.Avail)
	}
	if e.Result.BytesFreed < maxFree-f.Avail {
		t.Errorf("freed %d bytes, want at least max-free - free = %d", e.Result.BytesFreed, maxFree-f.Avail)
	}
	now := freeBytes(t, f.Root)
	if now+slack < maxFree || a.FreeAfter == nil || *a.FreeAfter+slack < maxFree {
		t.Errorf("free after: statfs %d, reported %v; want at least max-free %d", now, a.FreeAfter, maxFree)
	}
	if left := deadLeft(t, f.Root); left == 0 || left >= f.Dead {
		t.Errorf("%d of %d dead entries left: it should stop once max-free is free", left, f.Dead)
	}
	nixVerify(t, f.Root)

	r = runInNS(t, f.Root, args...)
	e = parseAuto(t, "second gc --auto", r.stdout)
	if r.code != 0 || e.Result.Auto == nil || e.Result.Auto.Collected || e.Result.Auto.Reason != "above-min-free" {
		t.Fatalf("second gc --auto: exit %d\n%s\n%s", r.code, r.stdout, r.stderr)
	}
}

// TestGCAutoTwoAtOnce: while one gc --auto collects (held at the test
// sync point with gc-auto.lock and gc.lock taken), a second exits 0 at
// once saying another runs, and collects nothing; the first collects.
func TestGCAutoTwoAtOnce(t *testing.T) {
	f := buildAutoFixture(t, 263)
	minFree := f.Avail + f.Garbage/4
	maxFree := f.Avail + f.Garbage/2
	dir := t.TempDir()
	script := `mkfifo "$DIR/sync"
_STOREKEEPER_TEST_GC_SYNC="$DIR/sync" "$BIN" gc --auto --json --min-free $MIN --max-free $MAX > "$DIR/1.out" 2> "$DIR/1.err" & p1=$!
i=0; while [ ! -S /nix/var/nix/gc-socket/socket ] && [ $i -lt 400 ]; do sleep 0.05; i=$((i+1)); done
timeout 20 "$BIN" gc --auto --json --min-free $MIN --max-free $MAX > "$DIR/2.out" 2> "$DIR/2.err"; echo "RC2 $?"
timeout 20 sh -c 'echo go > "$DIR/sync"' || { echo "the first never reached the sync point"; kill $p1; }
wait $p1; echo "RC1 $?"
`
	cmd := nsScript(f.Root, script)
	cmd.Env = append(cmd.Env, "DIR="+dir, "BIN="+binary, fmt.Sprintf("MIN=%d", minFree), fmt.Sprintf("MAX=%d", maxFree))
	out, err := cmd.CombinedOutput()
	o1, _ := os.ReadFile(filepath.Join(dir, "1.out"))
	o2, _ := os.ReadFile(filepath.Join(dir, "2.out"))
	if err != nil || !strings.Contains(string(out), "RC1 0") || !strings.Contains(string(out), "RC2 0") {
		t.Fatalf("%v\n%s\nfirst:\n%s\nsecond:\n%s", err, out, o1, o2)
	}
	e1, e2 := parseAuto(t, "first", string(o1)), parseAuto(t, "second", string(o2))
	if e1.Result.Auto == nil || !e1.Result.Auto.Collected || e1.Result.PathsDeleted == 0 {
		t.Errorf("the first did not collect:\n%s", o1)
	}
	if e2.Result.Auto == nil || e2.Result.Auto.Collected || e2.Result.Auto.Reason != "another-run" || e2.Result.PathsDeleted != 0 {
		t.Errorf("the second:\n%s", o2)
	}
	var msgs struct {
		Messages []struct{ Text string } `json:"messages"`
	}
	json.Unmarshal(o2, &msgs)
	if len(msgs.Messages) == 0 || !strings.Contains(msgs.Messages[0].Text, "gc-auto.lock") || !strings.Contains(msgs.Messages[0].Text, "pid ") {
		t.Errorf("the second's message names neither the lock nor its holder: %+v", msgs)
	}
	nixVerify(t, f.Root)
}

// TestGCAutoQueued: a gc --auto below min-free that waits for gc.lock
// (held by another process) while the space is freed elsewhere reads the
// free space again once it has the lock and does no work.
func TestGCAutoQueued(t *testing.T) {
	f := buildAutoFixture(t, 264)
	minFree := f.Avail + f.Garbage/4
	dir := t.TempDir()
	script := `flock -x /nix/var/nix/gc.lock sh -c 'touch "$DIR/held"; while [ ! -e "$DIR/release" ]; do sleep 0.05; done' & holder=$!
i=0; while [ ! -e "$DIR/held" ] && [ $i -lt 400 ]; do sleep 0.05; i=$((i+1)); done
"$BIN" gc --auto --min-free $MIN > "$DIR/1.out" 2> "$DIR/1.err" & p1=$!
i=0; while ! grep -q "waiting for the big garbage collector lock" "$DIR/1.err" 2>/dev/null && [ $i -lt 400 ]; do sleep 0.05; i=$((i+1)); done
grep -q "waiting for the big garbage collector lock" "$DIR/1.err" || echo "NOT WAITING"
rm "$NSROOT/filler"
touch "$DIR/release"; wait $holder
i=0; while kill -0 $p1 2>/dev/null && [ $i -lt 600 ]; do sleep 0.05; i=$((i+1)); done
kill $p1 2>/dev/null
wait $p1; echo "RC1 $?"
`
	cmd := nsScript(f.Root, script)
	cmd.Env = append(cmd.Env, "DIR="+dir, "BIN="+binary, fmt.Sprintf("MIN=%d", minFree))
	out, err := cmd.CombinedOutput()
	o1, _ := os.ReadFile(filepath.Join(dir, "1.out"))
	e1, _ := os.ReadFile(filepath.Join(dir, "1.err"))
	if err != nil || !strings.Contains(string(out), "RC1 0") || strings.Contains(string(out), "NOT WAITING") {
		t.Fatalf("%v\n%s\nstdout:\n%s\nstderr:\n%s", err, out, o1, e1)
	}
	if !strings.Contains(string(e1), "once gc.lock was taken") || strings.Contains(string(o1), "deleted") {
		t.Errorf("the queued run worked:\nstdout:\n%s\nstderr:\n%s", o1, e1)
	}
	if left := deadLeft(t, f.Root); left != f.Dead {
		t.Errorf("%d of %d dead entries left: the queued run deleted some", left, f.Dead)
	}
}

// TestGCAutoFullStore: with the store's file system full (nothing
// available to users), gc --auto collects, and its JSON says what it
// read: free_bytes 0 under gc.lock (present, not left out as if no free
// space had been read) and free_bytes_before 0.
// fullStoreScript runs $BIN (opened first) with the script's arguments
// after filling the store's file system to its last block.
const fullStoreScript = `exec 9<"$BIN"
fallocate -l $(( $(stat -f -c '%a * %S' "$NSROOT") )) "$NSROOT/filler2" 2>/dev/null
dd if=/dev/zero of="$NSROOT/filler3" bs=4k 2>/dev/null
[ "$(stat -f -c %a "$NSROOT")" -eq 0 ] || { echo "NOT FULL"; exit 99; }
rm -f "$NSROOT/filler2" "$NSROOT/filler3"
fallocate -l $(( $(stat -f -c '%a * %S' "$NSROOT") )) "$NSROOT/filler2" 2>/dev/null
dd if=/dev/zero of="$NSROOT/filler3" bs=4k 2>/dev/null
/dev/fd/9 "$@"`

// TestGCEnsureFreeFullStoreKeepsReserve: on a full store, a gc with
// nothing to do leaves Nix's db/reserved in place, and --ensure-free
// measures the free space before the reserve is released (with it
// released the disk looked 8 MiB freer: "already has 4M free", nothing
// collected, and the reserve left deleted).
func TestGCEnsureFreeFullStoreKeepsReserve(t *testing.T) {
	f := buildAutoFixture(t, 266)
	reserved := filepath.Join(f.Root, "nix", "var", "nix", "db", "reserved")
	var st unix.Stat_t
	if err := unix.Stat(reserved, &st); err != nil || st.Blocks*512 < 4<<20 {
		t.Fatalf("the fixture has no db/reserved of at least 4 MiB: %v, %d blocks", err, st.Blocks)
	}
	run := func(args ...string) result {
		cmd := nsScript(f.Root, fullStoreScript, args...)
		cmd.Env = append(cmd.Env, "BIN="+binary)
		return runCmd(t, cmd, args)
	}
	if r := run("gc", "--max-freed", "0"); r.code != 0 {
		t.Fatalf("gc --max-freed 0 on a full store: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	if err := unix.Stat(reserved, &st); err != nil {
		t.Fatalf("gc --max-freed 0 left db/reserved deleted: %v", err)
	}
	r := run("gc", "--ensure-free", "4M", "--json")
	e := parseAuto(t, "gc --ensure-free on a full store", r.stdout)
	if r.code != 0 || e.Result.PathsDeleted == 0 {
		t.Fatalf("gc --ensure-free 4M on a full store: exit %d, %d paths deleted\n%s\n%s", r.code, e.Result.PathsDeleted, r.stdout, r.stderr)
	}
	if err := unix.Stat(reserved, &st); err != nil {
		t.Errorf("gc --ensure-free left db/reserved deleted: %v", err)
	}
	nixVerify(t, f.Root)
}

func TestGCAutoFullStore(t *testing.T) {
	f := buildAutoFixture(t, 265)
	args := []string{"gc", "--auto", "--json", "--min-free", fmt.Sprint(f.Avail), "--max-free", fmt.Sprint(f.Avail + f.Garbage/2)}
	cmd := nsScript(f.Root, fullStoreScript, args...)
	cmd.Env = append(cmd.Env, "BIN="+binary)
	r := runCmd(t, cmd, args)
	var raw struct {
		Result map[string]json.RawMessage `json:"result"`
	}
	json.Unmarshal([]byte(r.stdout), &raw)
	e := parseAuto(t, "gc --auto on a full store", r.stdout)
	if r.code != 0 || e.Result.Auto == nil || !e.Result.Auto.Collected || e.Result.PathsDeleted == 0 {
		t.Fatalf("gc --auto on a full store: exit %d\n%s\n%s", r.code, r.stdout, r.stderr)
	}
	if e.Result.Auto.FreeBefore != 0 {
		t.Errorf("free_bytes_before %d on a full file system", e.Result.Auto.FreeBefore)
	}
	if fb, ok := raw.Result["free_bytes"]; !ok || string(fb) != "0" {
		t.Errorf("result.free_bytes: %q (present %v), want 0: the free space read under gc.lock\n%s", fb, ok, r.stdout)
	}
	nixVerify(t, f.Root)
}
