package lock

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"
)

const helperEnv = "STOREKEEPER_LOCK_TEST_HELPER"

// TestHelperProcess is not a real test: it is the body of child processes
// started by startHelper. It takes locks as told, prints "ready" and holds
// them until its stdin is closed (or it is killed).
func TestHelperProcess(t *testing.T) {
	mode := os.Getenv(helperEnv)
	if mode == "" {
		return
	}
	args := os.Args
	for i, a := range args {
		if a == "--" {
			args = args[i+1:]
			break
		}
	}
	fail := func(err error) {
		fmt.Fprintln(os.Stderr, "helper:", err)
		os.Exit(2)
	}
	ctx := context.Background()
	release := func() {}
	switch mode {
	case "hold": // path shared|exclusive
		f, err := OpenLockFile(args[0], true)
		if err != nil {
			fail(err)
		}
		m := Exclusive
		if args[1] == "shared" {
			m = Shared
		}
		if err := Lock(ctx, f, m, true); err != nil {
			fail(err)
		}
	case "temproots": // stateDir root...
		tr, err := OpenTempRoots(args[0])
		if err != nil {
			fail(err)
		}
		for _, r := range args[1:] {
			if err := tr.Add(ctx, r); err != nil {
				fail(err)
			}
		}
		release = func() { tr.Close() }
	case "pathlocks": // path...
		pl, err := LockPaths(ctx, args, true, nil)
		if err != nil {
			fail(err)
		}
		release = func() { pl.Unlock(false) }
	default:
		fail(fmt.Errorf("unknown mode %q", mode))
	}
	fmt.Println("ready")
	io.Copy(io.Discard, os.Stdin)
	release()
	os.Exit(0)
}

type helper struct {
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	exited chan struct{}
	err    error // valid after exited is closed
}

// startHelper re-executes the test binary in the given mode and waits until
// it reports that it holds its locks.
func startHelper(t *testing.T, mode string, args ...string) *helper {
	t.Helper()
	cmd := exec.Command(os.Args[0], append([]string{"-test.run=^TestHelperProcess$", "--"}, args...)...)
	cmd.Env = append(os.Environ(), helperEnv+"="+mode)
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	h := &helper{cmd: cmd, stdin: stdin, exited: make(chan struct{})}
	ready := make(chan string, 1)
	go func() {
		line, _ := bufio.NewReader(stdout).ReadString('\n')
		ready <- line
		io.Copy(io.Discard, stdout)
		h.err = cmd.Wait()
		close(h.exited)
	}()
	t.Cleanup(func() { h.kill() })
	select {
	case line := <-ready:
		if strings.TrimSpace(line) != "ready" {
			t.Fatalf("helper %s: got %q instead of ready", mode, line)
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("helper %s did not become ready", mode)
	}
	return h
}

// stop asks the helper to release and exit, and waits for it.
func (h *helper) stop(t *testing.T) {
	t.Helper()
	h.stdin.Close()
	select {
	case <-h.exited:
		if h.err != nil {
			t.Fatalf("helper exited: %v", h.err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("helper did not exit")
	}
}

// kill sends SIGKILL and waits for the process to be reaped.
func (h *helper) kill() {
	select {
	case <-h.exited:
		return
	default:
	}
	h.cmd.Process.Signal(syscall.SIGKILL)
	select {
	case <-h.exited:
	case <-time.After(10 * time.Second):
	}
}
