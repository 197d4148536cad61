package tests

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

type lockPruneFile struct {
	Path    string           `json:"path"`
	Kind    string           `json:"kind"`
	Action  string           `json:"action"`
	Reason  string           `json:"reason"`
	Detail  string           `json:"detail"`
	Holders []lockStatusUser `json:"holders"`
}

type lockPruneJSON struct {
	Command string `json:"command"`
	OK      bool   `json:"ok"`
	Error   *struct {
		Kind    string `json:"kind"`
		Message string `json:"message"`
	} `json:"error"`
	Result *struct {
		DryRun           bool            `json:"dry_run"`
		Files            []lockPruneFile `json:"files"`
		Removed          int             `json:"removed"`
		TempRootsRemoved int             `json:"temp_roots_removed"`
		PathLocksRemoved int             `json:"path_locks_removed"`
		Kept             int             `json:"kept"`
		Held             int             `json:"held"`
		Failed           int             `json:"failed"`
	} `json:"result"`
}

func parsePrune(t *testing.T, r result) lockPruneJSON {
	t.Helper()
	var got lockPruneJSON
	if err := json.Unmarshal([]byte(r.stdout), &got); err != nil {
		t.Fatalf("lock prune --json: %v\n%s\n%s", err, r.stdout, r.stderr)
	}
	return got
}

// pruneJSON runs 'lock prune --json' on the store at root and stops the
// test unless it exits 0 with a result.
func pruneJSON(t *testing.T, root string) (result, lockPruneJSON) {
	t.Helper()
	r := run(t, "--store", root, "--json", "lock", "prune")
	got := parsePrune(t, r)
	if r.code != 0 || got.Result == nil {
		t.Fatalf("lock prune: exit %d\n%s\n%s", r.code, r.stdout, r.stderr)
	}
	return r, got
}

// pruneActions is what lock prune did with each file, by path.
func pruneActions(got lockPruneJSON) map[string]lockPruneFile {
	actions := map[string]lockPruneFile{}
	for _, f := range got.Result.Files {
		actions[f.Path] = f
	}
	return actions
}

// freePID is a pid no process has, for a stale temp-roots file's name
// (a temp-roots file whose pid runs is kept).
func freePID(t *testing.T, skip int) int {
	t.Helper()
	for pid := 4194000; pid > 300000; pid-- {
		if _, err := os.Stat("/proc/" + strconv.Itoa(pid)); errors.Is(err, fs.ErrNotExist) && pid != skip {
			return pid
		}
	}
	t.Fatal("no free pid")
	return 0
}

func inode(t *testing.T, p string) uint64 {
	t.Helper()
	st, err := os.Lstat(p)
	if err != nil {
		t.Fatalf("%s: %v", p, err)
	}
	return st.Sys().(*syscall.Stat_t).Ino
}

// TestLockPruneWhileNixGC: a real `nix-store --gc` is in progress, held
// there by a temp-roots file whose owner (flock -x) holds it: Nix 2.8's
// collector takes gc.lock exclusively, serves its socket and waits for a
// read lock on every temp-roots file whose owner lives. lock status
// shows the collector (gc.lock, the big-lock, the socket, its wait) and
// the held and stale files; lock prune, as an unprivileged user, is
// refused and changes nothing; --dry-run changes nothing; as root it
// removes the stale temp-roots file and the stale path locks only, while
// the collector waits. Once the holder exits the collector finishes and
// `nix-store --verify --check-contents` accepts the store.
func TestLockPruneWhileNixGC(t *testing.T) {
	ns := buildNixStore(t, nixSpec{Paths: 3, Seed: 26, Salt: "lock-prune"})
	state := filepath.Join(ns.Root, "nix/var/nix")
	storeDir := filepath.Join(ns.Root, "nix/store")
	for d := ns.Root; d != "/" && d != "/tmp"; d = filepath.Dir(d) {
		os.Chmod(d, 0o755)
	}
	mustMkdir(t, filepath.Join(state, "temproots"))
	os.Chmod(filepath.Join(state, "temproots"), 0o755)

	heldPID := freePID(t, 0)
	heldTR := filepath.Join(state, "temproots", strconv.Itoa(heldPID))
	holdTR := exec.Command("flock", "-x", heldTR, "sleep", "120")
	startGroup(t, holdTR)
	waitFor(t, "flock to hold the temp-roots file", func() bool { _, err := os.Stat(heldTR); return err == nil })

	// A real collector in progress: Nix 2.8's nix-store --gc, holding
	// gc.lock exclusively and serving its socket, after it has read the
	// roots and temp roots, reads the file named by _NIX_TEST_GC_SYNC (its
	// own synchronisation point for tests/gc-non-blocking.sh): a FIFO
	// keeps it there until written to and closed. (It does not wait for
	// held temp-roots files: it reads them without a lock.)
	fifo := filepath.Join(ns.Root, "gc-sync")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	// In a PID namespace of its own with its own /proc, so that its scan
	// for runtime roots sees no process of a concurrent test (a file
	// name longer than PATH_MAX behind a /proc/PID/fd link stops it).
	// Its pid here is its parent's child: unshare --fork's.
	gcOut := &strings.Builder{}
	gc := exec.Command("unshare", "-m", "-p", "--fork", "--mount-proc", "--propagation", "private", "sh", "-c",
		`mount --bind "$NSROOT/nix" /nix || exit 97
exec nix-store --gc`)
	gc.Env = append(os.Environ(), "NSROOT="+ns.Root, "NIX_CONF_DIR="+filepath.Join(ns.Root, "etc-nix"), "_NIX_TEST_GC_SYNC="+fifo)
	gc.Stdout, gc.Stderr = gcOut, gcOut
	startGroup(t, gc)
	gcDone := make(chan error, 1)
	go func() { gcDone <- gc.Wait() }()

	gcEnded := func() {
		t.Helper()
		select {
		case err := <-gcDone:
			t.Fatalf("nix-store --gc ended while it should wait at its synchronisation point: %v\n%s", err, gcOut)
		default:
		}
	}
	var st lockStatusJSON
	gcPID := 0
	waitFor(t, "nix-store --gc to hold gc.lock", func() bool {
		gcEnded()
		r := run(t, "--store", ns.Root, "--json", "lock", "status")
		st = lockStatusJSON{}
		if err := json.Unmarshal([]byte(r.stdout), &st); err != nil {
			t.Fatalf("lock status --json: %v\n%s\n%s", err, r.stdout, r.stderr)
		}
		for _, h := range st.Result.GCLock.Holders {
			if h.Mode == "exclusive" && parentPID(h.PID) == gc.Process.Pid {
				gcPID = h.PID
			}
		}
		return st.Result.GCRunning && gcPID != 0
	})
	// At its synchronisation point once it opened the FIFO (after it read
	// the temp-roots directory): a writer can open it without waiting.
	var fifoW *os.File
	waitFor(t, "nix-store --gc to open the FIFO", func() bool {
		gcEnded()
		fd, err := syscall.Open(fifo, syscall.O_WRONLY|syscall.O_NONBLOCK|syscall.O_CLOEXEC, 0)
		if err != nil {
			return false
		}
		fifoW = os.NewFile(uintptr(fd), fifo)
		return true
	})
	defer fifoW.Close()

	// Created now, after the collector listed the directory: it will not
	// remove them itself.
	stalePID := freePID(t, heldPID)
	staleTR := filepath.Join(state, "temproots", strconv.Itoa(stalePID))
	writeFileMode(t, staleTR, []byte(ns.Outputs[0]["out"]+"\x00"), 0o600)
	stalePL := ns.Outputs[0]["out"] + ".lock"
	stalePL = filepath.Join(storeDir, filepath.Base(stalePL))
	markedPL := filepath.Join(storeDir, "00000000000000000000000000000000-marked.lock")
	heldPL := filepath.Join(storeDir, "11111111111111111111111111111111-held.lock")
	writeFileMode(t, stalePL, nil, 0o600)
	writeFileMode(t, markedPL, []byte("d"), 0o600)
	holdPL := exec.Command("flock", "-x", heldPL, "sleep", "120")
	startGroup(t, holdPL)
	waitFor(t, "flock to hold the path lock", func() bool { _, err := os.Stat(heldPL); return err == nil })
	heldTRIno, heldPLIno := inode(t, heldTR), inode(t, heldPL)

	// lock status: the collector and the files.
	r := run(t, "--store", ns.Root, "--json", "lock", "status")
	st = lockStatusJSON{}
	if err := json.Unmarshal([]byte(r.stdout), &st); err != nil || r.code != 0 {
		t.Fatalf("lock status: %v, exit %d\n%s\n%s", err, r.code, r.stdout, r.stderr)
	}
	res := st.Result
	gcHolds := func(l lockStatusFile, mode string) bool {
		for _, h := range l.Holders {
			if h.PID == gcPID && strings.Contains(h.Command, "nix-store --gc") && h.Mode == mode && h.Since != "" {
				return true
			}
		}
		return false
	}
	if !res.GCRunning || !gcHolds(res.GCLock, "exclusive") {
		t.Errorf("gc.lock: running %v, %+v; want pid %d 'nix-store --gc' exclusive", res.GCRunning, res.GCLock, gcPID)
	}
	if !gcHolds(res.BigLock, "shared") {
		t.Errorf("big-lock: %+v; want pid %d 'nix-store --gc' shared", res.BigLock, gcPID)
	}
	if !res.GCSocketExists || !res.GCSocketAccepts {
		t.Errorf("gc socket: exists %v accepts %v", res.GCSocketExists, res.GCSocketAccepts)
	}
	files := map[string]lockStatusFile{}
	for _, f := range append(append([]lockStatusFile{}, res.TempRoots...), res.PathLocks...) {
		files[f.Path] = f
	}
	for _, p := range []string{heldTR, heldPL} {
		f := files[p]
		if f.Stale || len(f.Holders) != 1 || !strings.Contains(f.Holders[0].Command, "flock -x "+p) {
			t.Errorf("lock status: %s: %+v, want held by flock", p, f)
		}
	}
	for _, p := range []string{staleTR, stalePL, markedPL} {
		if f := files[p]; !f.Stale {
			t.Errorf("lock status: %s: %+v, want stale", p, f)
		}
	}
	text := run(t, "--store", ns.Root, "lock", "status")
	if want := "held by PID " + strconv.Itoa(gcPID) + " 'nix-store --gc' (exclusive flock"; !strings.Contains(text.stdout, want) || !strings.Contains(text.stdout, "garbage collection: running") {
		t.Errorf("lock status text lacks %q:\n%s", want, text.stdout)
	}

	// lock status never connects to the gc socket: a client that closes
	// at once crashes Nix 2.8's collector within a few connections
	// ("terminate called without an active exception"), which this loop
	// did when lock status connected to see whether it accepts.
	for i := 0; i < 15; i++ {
		if r := run(t, "--store", ns.Root, "--json", "lock", "status"); r.code != 0 || !strings.Contains(r.stdout, `"gc_socket_accepts": true`) {
			t.Fatalf("lock status %d: exit %d\n%s\n%s", i, r.code, r.stdout, r.stderr)
		}
	}
	gcEnded()

	nixDir := filepath.Join(ns.Root, "nix")
	before := pruneListing(t, nixDir)
	same := func(what string) {
		t.Helper()
		if after := pruneListing(t, nixDir); strings.Join(before, "\n") != strings.Join(after, "\n") {
			t.Errorf("%s changed the store or state directory:\nbefore %v\nafter %v", what, before, after)
		}
	}

	// An unprivileged user may delete nothing in root's directories:
	// refused, naming them, and nothing changes.
	uid, gid := realUser(t, "sk-lock-prune")
	userBin := userBinary(t, ns.Root)
	before = pruneListing(t, nixDir) // with the user's binary beside nix/
	for _, args := range [][]string{{"lock", "prune"}, {"lock", "prune", "--dry-run"}} {
		cmd := exec.Command(userBin, append([]string{"--store", ns.Root, "--json"}, args...)...)
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}}
		ur := runCmd(t, cmd, args)
		got := parsePrune(t, ur)
		if ur.code != 2 || got.OK || got.Command != "lock prune" || got.Error == nil || got.Error.Kind != "permission" ||
			!strings.Contains(got.Error.Message, filepath.Join(state, "temproots")) || !strings.Contains(got.Error.Message, storeDir) {
			t.Errorf("unprivileged %v: exit %d, %+v\n%s", args, ur.code, got.Error, ur.stderr)
		}
	}
	same("an unprivileged lock prune")

	// --dry-run: what would go, and nothing changes.
	r = run(t, "--store", ns.Root, "--json", "lock", "prune", "--dry-run")
	dry := parsePrune(t, r)
	if r.code != 0 || !dry.OK || dry.Command != "lock prune" || dry.Result == nil || !dry.Result.DryRun || dry.Result.Removed != 3 || dry.Result.Held != 2 {
		t.Fatalf("dry run: exit %d, %+v\n%s", r.code, dry.Result, r.stderr)
	}
	same("lock prune --dry-run")

	// The real thing, while the collector waits.
	r = run(t, "--store", ns.Root, "--json", "lock", "prune")
	got := parsePrune(t, r)
	if r.code != 0 || !got.OK || got.Result == nil {
		t.Fatalf("lock prune: exit %d\n%s\n%s", r.code, r.stdout, r.stderr)
	}
	actions := pruneActions(got)
	for p, want := range map[string]string{staleTR: "removed", stalePL: "removed", markedPL: "removed", heldTR: "kept", heldPL: "kept"} {
		if a := actions[p]; a.Action != want {
			t.Errorf("%s: %+v, want %s", p, a, want)
		}
	}
	if len(got.Result.Files) != 5 || got.Result.TempRootsRemoved != 1 || got.Result.PathLocksRemoved != 2 || got.Result.Held != 2 || got.Result.Failed != 0 {
		t.Errorf("lock prune report: %+v", got.Result)
	}
	if h := actions[heldTR].Holders; len(h) == 0 || h[0].PID != holdTR.Process.Pid {
		t.Errorf("the held temp-roots file's holder: %+v, want pid %d", h, holdTR.Process.Pid)
	}
	for _, p := range []string{staleTR, stalePL, markedPL} {
		if _, err := os.Lstat(p); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("%s is still there: %v", p, err)
		}
	}
	if inode(t, heldTR) != heldTRIno || inode(t, heldPL) != heldPLIno {
		t.Error("a held file was replaced")
	}
	if st, err := os.Stat(heldPL); err != nil || st.Size() != 0 {
		t.Errorf("the held path lock was written: %v %v", st, err)
	}
	select {
	case err := <-gcDone:
		t.Fatalf("nix-store --gc ended during the prune: %v\n%s", err, gcOut)
	default:
	}
	r = run(t, "--store", ns.Root, "lock", "prune")
	if r.code != 0 || !strings.Contains(r.stdout, "removed 0 stale file(s)") || !strings.Contains(r.stdout, "kept "+heldTR+": held by PID "+strconv.Itoa(holdTR.Process.Pid)) {
		t.Errorf("second lock prune: exit %d\n%s\n%s", r.code, r.stdout, r.stderr)
	}

	// The collector goes on (the FIFO written to and closed) and
	// finishes; the temp-roots file's holder exits too.
	fifoW.Write([]byte("go\n"))
	fifoW.Close()
	syscall.Kill(-holdTR.Process.Pid, syscall.SIGKILL)
	select {
	case err := <-gcDone:
		if err != nil {
			t.Fatalf("nix-store --gc: %v\n%s", err, gcOut)
		}
	case <-time.After(60 * time.Second):
		t.Fatalf("nix-store --gc did not finish after the holder exited\n%s", gcOut)
	}
	syscall.Kill(-holdPL.Process.Pid, syscall.SIGKILL)
	nixVerify(t, ns.Root)
}

// waitFor polls cond every 100 ms for up to 30 s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestLockPruneSkipsWhatItMayNot: lock prune removes only what its user
// may delete and reports the rest (exit 1): an unprivileged user who owns
// the temp-roots directory removes their own stale file there, not root's
// (which they cannot open), nor root's path lock in root's store
// directory; root, in a sticky store directory (1775, as Nix's), removes
// its own stale path lock and not a user's. A store that is not there is
// exit 2.
func TestLockPruneSkipsWhatItMayNot(t *testing.T) {
	ns := buildNixStore(t, nixSpec{Paths: 2, Seed: 27, Salt: "lock-prune-perm"})
	state := filepath.Join(ns.Root, "nix/var/nix")
	storeDir := filepath.Join(ns.Root, "nix/store")
	trDir := filepath.Join(state, "temproots")
	for d := ns.Root; d != "/" && d != "/tmp"; d = filepath.Dir(d) {
		os.Chmod(d, 0o755)
	}
	mustMkdir(t, trDir)
	uid, gid := realUser(t, "sk-lock-prune")
	if err := os.Chown(trDir, uid, gid); err != nil {
		t.Fatal(err)
	}
	os.Chmod(trDir, 0o755)
	p1 := freePID(t, 0)
	userTR := filepath.Join(trDir, strconv.Itoa(p1))
	rootTR := filepath.Join(trDir, strconv.Itoa(freePID(t, p1)))
	rootPL := filepath.Join(storeDir, "00000000000000000000000000000000-root.lock")
	writeFileMode(t, userTR, nil, 0o600)
	if err := os.Chown(userTR, uid, gid); err != nil {
		t.Fatal(err)
	}
	writeFileMode(t, rootTR, nil, 0o600)
	writeFileMode(t, rootPL, nil, 0o600)

	userBin := userBinary(t, ns.Root)
	cmd := exec.Command(userBin, "--store", ns.Root, "--json", "lock", "prune")
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}}
	ur := runCmd(t, cmd, []string{"lock", "prune"})
	got := parsePrune(t, ur)
	if ur.code != 1 || got.OK || got.Error == nil || got.Error.Kind != "findings" || got.Result == nil {
		t.Fatalf("unprivileged: exit %d, %+v\n%s\n%s", ur.code, got.Error, ur.stdout, ur.stderr)
	}
	actions := pruneActions(got)
	if a := actions[userTR]; a.Action != "removed" {
		t.Errorf("the user's own stale temp-roots file: %+v", a)
	}
	for _, p := range []string{rootTR, rootPL} {
		if a := actions[p]; a.Action != "failed" || a.Reason != "permission" {
			t.Errorf("%s: %+v, want failed permission", p, a)
		}
		if st, err := os.Stat(p); err != nil || st.Size() != 0 {
			t.Errorf("%s changed: %v %v", p, st, err)
		}
	}
	if _, err := os.Lstat(userTR); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("the user's stale file is still there: %v", err)
	}
	if got.Result.Removed != 1 || got.Result.Failed != 2 {
		t.Errorf("unprivileged report %+v", got.Result)
	}

	// Root, the store directory sticky as Nix makes it: root's stale
	// path lock goes, the user's stays (not ours to delete in a sticky
	// directory), and the user's temp-roots directory is not root's.
	if err := os.Chmod(storeDir, os.ModeSticky|0o775); err != nil {
		t.Fatal(err)
	}
	userPL := filepath.Join(storeDir, "11111111111111111111111111111111-user.lock")
	writeFileMode(t, userPL, nil, 0o600)
	if err := os.Chown(userPL, uid, gid); err != nil {
		t.Fatal(err)
	}
	r := run(t, "--store", ns.Root, "lock", "prune")
	if r.code != 1 || !strings.Contains(r.stdout, "removed "+rootPL+" (stale path lock, nobody held it)") ||
		!strings.Contains(r.stdout, "could not remove "+userPL+": permission") ||
		!strings.Contains(r.stdout, "could not remove "+rootTR+": permission") ||
		!strings.Contains(r.stderr, "2 stale lock file(s) could not be removed") {
		t.Errorf("root on a sticky store: exit %d\n%s\n%s", r.code, r.stdout, r.stderr)
	}
	for _, p := range []string{userPL, rootTR} {
		if _, err := os.Stat(p); err != nil {
			t.Errorf("%s: %v", p, err)
		}
	}
	if _, err := os.Lstat(rootPL); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("root's stale path lock is still there: %v", err)
	}
	nixVerify(t, ns.Root)

	r = run(t, "--store", filepath.Join(ns.Root, "nothing-here"), "--json", "lock", "prune")
	if got := parsePrune(t, r); r.code != 2 || got.OK || got.Error == nil || got.Error.Kind != "no-store" {
		t.Errorf("no store: exit %d, %+v\n%s", r.code, got.Error, r.stderr)
	}
}

// parentPID is pid's parent (from /proc/PID/stat), 0 if unknown.
func parentPID(pid int) int {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 2 {
		return 0
	}
	ppid, _ := strconv.Atoi(f[1])
	return ppid
}

// TestLockPruneReadOnly: on a store that is a read-only bind mount (as
// NixOS makes /nix/store) lock prune makes it writable in a private mount
// namespace of its own and removes the stale path lock; --dry-run needs
// no write access; a read-only state directory is "read-only", exit 2,
// and nothing changes.
func TestLockPruneReadOnly(t *testing.T) {
	ns := buildNixStore(t, nixSpec{Paths: 2, Seed: 28, Salt: "lock-prune-ro"})
	storeDir := filepath.Join(ns.Root, "nix/store")
	stalePL := filepath.Join(storeDir, "00000000000000000000000000000000-ro.lock")
	writeFileMode(t, stalePL, nil, 0o600)
	roStore := `mount --bind /nix/store /nix/store && mount -o remount,ro,bind /nix/store || exit 98
touch /nix/store/.probe 2>/dev/null && exit 99
exec "$@"`
	nixDir := filepath.Join(ns.Root, "nix")
	before := pruneListing(t, nixDir)

	r := runCmd(t, nsScript(ns.Root, roStore, binary, "--json", "lock", "prune", "--dry-run"), nil)
	if got := parsePrune(t, r); r.code != 0 || got.Result == nil || got.Result.Removed != 1 || got.Result.Files[0].Action != "would-remove" {
		t.Errorf("dry run on a read-only store: exit %d\n%s\n%s", r.code, r.stdout, r.stderr)
	}
	roState := `mount --bind /nix/var/nix /nix/var/nix && mount -o remount,ro,bind /nix/var/nix || exit 98
exec "$@"`
	r = runCmd(t, nsScript(ns.Root, roState, binary, "--json", "lock", "prune"), nil)
	if got := parsePrune(t, r); r.code != 2 || got.Error == nil || got.Error.Kind != "read-only" {
		t.Errorf("read-only state directory: exit %d, %+v\n%s", r.code, got.Error, r.stderr)
	}
	if after := pruneListing(t, nixDir); strings.Join(before, "\n") != strings.Join(after, "\n") {
		t.Errorf("a dry run or a refused prune changed the store:\nbefore %v\nafter %v", before, after)
	}

	r = runCmd(t, nsScript(ns.Root, roStore, binary, "lock", "prune"), nil)
	if r.code != 0 || !strings.Contains(r.stdout, "removed /nix/store/00000000000000000000000000000000-ro.lock (stale path lock, nobody held it)") {
		t.Errorf("lock prune on a read-only bind mount: exit %d\n%s\n%s", r.code, r.stdout, r.stderr)
	}
	if _, err := os.Lstat(stalePL); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("the stale path lock is still there: %v", err)
	}
	nixVerify(t, ns.Root)
}

// TestLockPruneKeepsStorePaths: a store path may itself be named like a
// path lock (NAME.lock) and hold nothing, or just "d": `nix-store --add`
// of an empty file named empty.lock, or of one holding "d". Such files
// are store contents, not lock files: lock prune keeps them (reason
// "store-path") and nix-store --verify still accepts the store. So does
// a file being added or built (its own lock, NAME.lock.lock, held), which
// is not valid yet. A real stale path lock beside them is removed.
func TestLockPruneKeepsStorePaths(t *testing.T) {
	ns := buildNixStore(t, nixSpec{Paths: 2, Seed: 29, Salt: "lock-prune-storepath"})
	storeDir := filepath.Join(ns.Root, "nix/store")
	src := t.TempDir()
	os.Chmod(src, 0o755)
	var valid []string
	for name, data := range map[string]string{"empty.lock": "", "d.lock": "d"} {
		f := filepath.Join(src, name)
		writeFileMode(t, f, []byte(data), 0o644)
		r := runNSAll(t, ns.Root, "nix-store", "--add", f)
		sp := strings.TrimSpace(r.stdout)
		if r.code != 0 || !strings.HasPrefix(sp, "/nix/store/") || !strings.HasSuffix(sp, "-"+name) {
			t.Fatalf("nix-store --add %s: exit %d\n%s\n%s", name, r.code, r.stdout, r.stderr)
		}
		valid = append(valid, filepath.Join(storeDir, filepath.Base(sp)))
	}
	building := filepath.Join(storeDir, "22222222222222222222222222222222-building.lock")
	writeFileMode(t, building, nil, 0o644)
	hold := exec.Command("flock", "-x", building+".lock", "sleep", "120")
	startGroup(t, hold)
	waitFor(t, "flock to hold the lock of a path being built", func() bool { _, err := os.Stat(building + ".lock"); return err == nil })
	stale := filepath.Join(storeDir, "33333333333333333333333333333333-stale.lock")
	writeFileMode(t, stale, nil, 0o600)

	_, got := pruneJSON(t, ns.Root)
	actions := pruneActions(got)
	for _, p := range append(valid, building) {
		if a := actions[p]; a.Action != "kept" || a.Reason != "store-path" {
			t.Errorf("%s: %+v, want kept store-path", p, a)
		}
		if _, err := os.Lstat(p); err != nil {
			t.Errorf("lock prune removed a store path: %v", err)
		}
	}
	if a := actions[stale]; a.Action != "removed" {
		t.Errorf("the stale path lock: %+v", a)
	}
	if _, err := os.Lstat(stale); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("the stale path lock is still there: %v", err)
	}
	syscall.Kill(-hold.Process.Pid, syscall.SIGKILL)
	os.Remove(building)
	os.Remove(building + ".lock")
	nixVerify(t, ns.Root)
}

// pruneListing is treeListing without what SQLite's readers of a WAL
// database create and touch (db.sqlite-shm, db.sqlite-wal, so the db
// directory's mtime): lock prune reads the database, read-only, to tell
// a store path named NAME.lock from a lock file, as every reader (Nix
// included) does.
func pruneListing(t *testing.T, dir string) []string {
	t.Helper()
	var out []string
	for _, l := range treeListing(t, dir) {
		p, rest, _ := strings.Cut(l, " ")
		switch {
		case strings.HasSuffix(p, "/db/db.sqlite-shm"), strings.HasSuffix(p, "/db/db.sqlite-wal"):
			continue
		case strings.HasSuffix(p, "/var/nix/db"):
			l = p + " " + rest[:strings.LastIndexByte(rest, ' ')]
		}
		out = append(out, l)
	}
	return out
}

// TestLockPruneWhileNixBuilds: a real nix-build is building (its builder
// waits for a file): Nix itself holds its temp-roots file
// (temproots/PID, exclusively, for as long as it runs) and the output's
// path lock (OUT.lock, exclusively, until the output is registered).
// lock prune, run several times while it builds, keeps both (naming
// nix-build as the holder of its temp-roots file) and removes the stale
// files beside them; the build then finishes, its output is valid, and
// nix-store --verify accepts the store.
func TestLockPruneWhileNixBuilds(t *testing.T) {
	ns := buildNixStore(t, nixSpec{Paths: 2, Seed: 30, Salt: "lock-prune-build"})
	state := filepath.Join(ns.Root, "nix/var/nix")
	storeDir := filepath.Join(ns.Root, "nix/store")
	sync := t.TempDir()
	os.Chmod(sync, 0o755)
	goFile := filepath.Join(sync, "go")
	expr := fmt.Sprintf(`derivation { name = "sk-held-build"; system = "x86_64-linux"; builder = "/bin/sh";
  args = [ "-c" "while [ ! -e %s ]; do sleep 0.05; done; echo built > $out" ]; salt = "%d"; }`, goFile, time.Now().UnixNano())
	out := &strings.Builder{}
	build := nsScript(ns.Root, `exec "$@"`, "nix-build", "--no-out-link", "-E", expr)
	build.Stdout, build.Stderr = out, out
	startGroup(t, build)
	done := make(chan error, 1)
	go func() { done <- build.Wait() }()

	var outLock, tempRoots string
	waitFor(t, "nix-build to lock its output", func() bool {
		select {
		case err := <-done:
			t.Fatalf("nix-build ended early: %v\n%s", err, out)
		default:
		}
		m, _ := filepath.Glob(filepath.Join(storeDir, "*-sk-held-build.lock"))
		if len(m) != 1 {
			return false
		}
		outLock = m[0]
		trs, _ := filepath.Glob(filepath.Join(state, "temproots", "*"))
		for _, tr := range trs {
			if b, _ := os.ReadFile(tr); strings.Contains(string(b), "sk-held-build") {
				tempRoots = tr
			}
		}
		return tempRoots != ""
	})
	nixPID, _ := strconv.Atoi(filepath.Base(tempRoots))
	outIno, trIno := inode(t, outLock), inode(t, tempRoots)

	staleTR := filepath.Join(state, "temproots", strconv.Itoa(freePID(t, nixPID)))
	stalePL := filepath.Join(storeDir, "44444444444444444444444444444444-stale.lock")
	for i := 0; i < 5; i++ {
		writeFileMode(t, staleTR, nil, 0o600)
		writeFileMode(t, stalePL, nil, 0o600)
		r, got := pruneJSON(t, ns.Root)
		actions := pruneActions(got)
		for _, p := range []string{outLock, tempRoots} {
			if a := actions[p]; a.Action != "kept" || a.Reason != "held" {
				t.Fatalf("run %d: %s, held by nix-build: %+v\n%s", i, p, a, r.stdout)
			}
		}
		if h := actions[tempRoots].Holders; len(h) != 1 || h[0].PID != nixPID || !strings.Contains(h[0].Command, "nix-build") {
			t.Errorf("run %d: the temp-roots file's holder: %+v, want pid %d nix-build", i, h, nixPID)
		}
		for _, p := range []string{staleTR, stalePL} {
			if a := actions[p]; a.Action != "removed" || exists(p) {
				t.Errorf("run %d: %s: %+v", i, p, a)
			}
		}
		if inode(t, outLock) != outIno || inode(t, tempRoots) != trIno {
			t.Fatalf("run %d: a file nix-build holds was replaced", i)
		}
	}

	writeFileMode(t, goFile, nil, 0o644)
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("nix-build: %v\n%s", err, out)
		}
	case <-time.After(60 * time.Second):
		t.Fatalf("nix-build did not finish\n%s", out)
	}
	outPath := strings.TrimSpace(out.String())
	outPath = outPath[strings.LastIndex(outPath, "\n")+1:]
	if r := runNSAll(t, ns.Root, "nix-store", "--check-validity", outPath); r.code != 0 {
		t.Errorf("the built output %q is not valid: %s", outPath, r.stderr)
	}
	nixVerify(t, ns.Root)
}

func exists(p string) bool {
	_, err := os.Lstat(p)
	return err == nil
}
