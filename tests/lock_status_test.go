package tests

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"
)

type lockStatusUser struct {
	PID     int    `json:"pid"`
	Command string `json:"command"`
	Kind    string `json:"kind"`
	Mode    string `json:"mode"`
	Since   string `json:"since"`
}

type lockStatusFile struct {
	Path    string           `json:"path"`
	Exists  bool             `json:"exists"`
	Holders []lockStatusUser `json:"holders"`
	Waiters []lockStatusUser `json:"waiters"`
	Stale   bool             `json:"stale"`
}

type lockStatusJSON struct {
	Command string `json:"command"`
	OK      bool   `json:"ok"`
	Result  struct {
		GCLock          lockStatusFile   `json:"gc_lock"`
		BigLock         lockStatusFile   `json:"big_lock"`
		GCRunning       bool             `json:"gc_running"`
		GCSocketExists  bool             `json:"gc_socket_exists"`
		GCSocketAccepts bool             `json:"gc_socket_accepts"`
		TempRoots       []lockStatusFile `json:"temp_roots"`
		TempRootsTotal  int              `json:"temp_roots_total"`
		TempRootsStale  int              `json:"temp_roots_stale"`
		PathLocks       []lockStatusFile `json:"path_locks"`
		PathLocksTotal  int              `json:"path_locks_total"`
		PathLocksStale  int              `json:"path_locks_stale"`
	} `json:"result"`
}

// startGroup starts cmd in a process group of its own and kills that
// group (only it) when the test ends.
func startGroup(t *testing.T, cmd *exec.Cmd) {
	t.Helper()
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.Setpgid = true
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		cmd.Wait()
	})
}

func treeListing(t *testing.T, dir string) []string {
	t.Helper()
	var out []string
	filepath.Walk(dir, func(p string, info os.FileInfo, err error) error {
		if err == nil {
			out = append(out, fmt.Sprintf("%s %v %d %d", p, info.Mode(), info.Size(), info.ModTime().UnixNano()))
		}
		return nil
	})
	sort.Strings(out)
	return out
}

// TestLockStatus: a real `nix-store --serve` holds the big-lock (shared,
// for as long as its store is open); flock(1) holds gc.lock exclusively
// (a stand-in for a collector) and a temp-roots file; another temp-roots
// file and a path lock are held by nobody. lock status names the holders
// with their pids and command lines and marks the others stale, as root
// and as an unprivileged user on the root-owned store, changing nothing.
func TestLockStatus(t *testing.T) {
	ns := buildNixStore(t, nixSpec{Paths: 3, Seed: 25, Salt: "lock-status"})
	state := filepath.Join(ns.Root, "nix/var/nix")
	for d := ns.Root; d != "/" && d != "/tmp"; d = filepath.Dir(d) {
		os.Chmod(d, 0o755)
	}
	mustMkdir(t, filepath.Join(state, "temproots"))
	os.Chmod(filepath.Join(state, "temproots"), 0o755)

	serve := nsScript(ns.Root, `exec nix-store --serve`)
	stdin, err := serve.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	defer stdin.Close()
	serve.Stdout, serve.Stderr = io.Discard, io.Discard
	startGroup(t, serve)

	heldTR := filepath.Join(state, "temproots", "999999")
	staleTR := filepath.Join(state, "temproots", "1")
	stalePL := filepath.Join(ns.Root, "nix/store", "00000000000000000000000000000000-gone.lock")
	writeFileMode(t, staleTR, nil, 0o600)
	writeFileMode(t, stalePL, nil, 0o600)
	writeFileMode(t, filepath.Join(state, "gc.lock"), nil, 0o600)
	holdTR := exec.Command("flock", "-x", heldTR, "sleep", "60")
	startGroup(t, holdTR)
	holdGC := exec.Command("flock", "-x", filepath.Join(state, "gc.lock"), "sleep", "60")
	startGroup(t, holdGC)

	var got lockStatusJSON
	ready := func(r result) bool {
		got = lockStatusJSON{}
		if err := json.Unmarshal([]byte(r.stdout), &got); err != nil {
			t.Fatalf("lock status --json: %v\n%s\n%s", err, r.stdout, r.stderr)
		}
		return len(got.Result.BigLock.Holders) > 0 && got.Result.GCRunning && len(got.Result.TempRoots) > 0 && len(got.Result.TempRoots[0].Holders) > 0
	}
	deadline := time.Now().Add(15 * time.Second)
	var r result
	for {
		r = run(t, "--store", ns.Root, "--json", "lock", "status")
		if ready(r) || time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	check := func(who string, r result) {
		t.Helper()
		if r.code != 0 || !got.OK || got.Command != "lock status" {
			t.Fatalf("%s: exit %d, ok %v, command %q\n%s\n%s", who, r.code, got.OK, got.Command, r.stdout, r.stderr)
		}
		res := got.Result
		var serveHolder *lockStatusUser
		for i, h := range res.BigLock.Holders {
			if h.PID == serve.Process.Pid {
				serveHolder = &res.BigLock.Holders[i]
			}
		}
		if serveHolder == nil || !strings.Contains(serveHolder.Command, "nix-store --serve") || serveHolder.Mode != "shared" || serveHolder.Kind != "flock" || serveHolder.Since == "" {
			t.Errorf("%s: big-lock holders %+v, want pid %d 'nix-store --serve' shared flock", who, res.BigLock.Holders, serve.Process.Pid)
		}
		if !res.GCRunning || len(res.GCLock.Holders) != 1 || res.GCLock.Holders[0].PID != holdGC.Process.Pid || res.GCLock.Holders[0].Mode != "exclusive" {
			t.Errorf("%s: gc running %v, gc.lock %+v", who, res.GCRunning, res.GCLock)
		}
		if res.GCSocketExists || res.GCSocketAccepts {
			t.Errorf("%s: a gc socket is reported: %+v", who, res)
		}
		if res.TempRootsTotal != 2 || res.TempRootsStale != 1 || len(res.TempRoots) != 2 {
			t.Fatalf("%s: temp roots %+v", who, res.TempRoots)
		}
		h, s := res.TempRoots[0], res.TempRoots[1]
		if h.Path != heldTR || h.Stale || len(h.Holders) != 1 || h.Holders[0].PID != holdTR.Process.Pid || !strings.Contains(h.Holders[0].Command, "flock -x") || h.Holders[0].Mode != "exclusive" {
			t.Errorf("%s: held temp-roots file %+v", who, h)
		}
		if s.Path != staleTR || !s.Stale || len(s.Holders) != 0 {
			t.Errorf("%s: stale temp-roots file %+v", who, s)
		}
		if res.PathLocksTotal != 1 || res.PathLocksStale != 1 || len(res.PathLocks) != 1 || res.PathLocks[0].Path != stalePL || !res.PathLocks[0].Stale {
			t.Errorf("%s: path locks %+v", who, res.PathLocks)
		}
	}
	check("root", r)

	text := run(t, "--store", ns.Root, "lock", "status")
	for _, want := range []string{
		fmt.Sprintf("held by PID %d 'nix-store --serve' (shared flock, process started ", serve.Process.Pid),
		"garbage collection: running",
		staleTR + ": stale (nobody holds it)",
		stalePL + ": stale (nobody holds it)",
		fmt.Sprintf("held by PID %d 'flock -x %s sleep 60' (exclusive flock", holdTR.Process.Pid, heldTR),
	} {
		if !strings.Contains(text.stdout, want) {
			t.Errorf("text output lacks %q:\n%s\n%s", want, text.stdout, text.stderr)
		}
	}

	// As an unprivileged user, on the root-owned store: the same answer,
	// and nothing in the state or store directory changes.
	uid, gid := realUser(t, "sk-lock-status")
	before := treeListing(t, filepath.Join(ns.Root, "nix"))
	// The test binary's directory is 0700: the user runs a copy.
	userBin := userBinary(t, ns.Root)
	cmd := exec.Command(userBin, "--store", ns.Root, "--json", "lock", "status")
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}}
	ur := runCmd(t, cmd, []string{"lock", "status"})
	ready(ur)
	check("unprivileged", ur)
	if after := treeListing(t, filepath.Join(ns.Root, "nix")); strings.Join(before, "\n") != strings.Join(after, "\n") {
		t.Errorf("lock status as a user changed the store:\nbefore %v\nafter %v", before, after)
	}
}
