package lock

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"
)

// Interop tests against the real Nix (2.8, Debian nix-bin). Each test gets a
// private store: ROOT/nix is bind-mounted on /nix in a private mount
// namespace for every Nix command, so Nix uses its default paths while the
// test sees the same files under ROOT/nix.

const nixStoreBin = "/usr/bin/nix-store"

type nixRoot struct {
	root     string // host directory holding nix/
	stateDir string // ROOT/nix/var/nix
}

func newNixRoot(t *testing.T) *nixRoot {
	t.Helper()
	if _, err := os.Stat(nixStoreBin); err != nil {
		t.Skipf("SKIPPING Nix interop test: %s not found (install nix-bin)", nixStoreBin)
	}
	if os.Geteuid() != 0 {
		t.Skip("SKIPPING Nix interop test: must run as root (needs a private mount namespace)")
	}
	for _, bin := range []string{"unshare", "mount"} {
		if _, err := exec.LookPath(bin); err != nil {
			t.Skipf("SKIPPING Nix interop test: %s not found", bin)
		}
	}
	if fi, err := os.Stat("/nix"); err != nil || !fi.IsDir() {
		t.Skip("SKIPPING Nix interop test: /nix does not exist to bind-mount over")
	}
	n := &nixRoot{root: t.TempDir()}
	n.stateDir = filepath.Join(n.root, "nix", "var", "nix")
	if err := os.MkdirAll(filepath.Join(n.root, "nix"), 0o755); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := n.command(ctx, "nix-store", "--init").CombinedOutput()
	if err != nil {
		if bytes.Contains(out, []byte("unshare")) || bytes.Contains(out, []byte("mount")) {
			t.Skipf("SKIPPING Nix interop test: cannot make a private mount namespace: %v: %s", err, out)
		}
		t.Fatalf("nix-store --init: %v: %s", err, out)
	}
	return n
}

func (n *nixRoot) command(ctx context.Context, args ...string) *exec.Cmd {
	sh := `mount --bind "$0/nix" /nix && exec "$@"`
	cmd := exec.CommandContext(ctx, "unshare", append([]string{"-m", "--propagation", "private", "sh", "-c", sh, n.root}, args...)...)
	var env []string
	for _, e := range os.Environ() {
		if !strings.HasPrefix(e, "NIX_") {
			env = append(env, e)
		}
	}
	cmd.Env = append(env, "NIX_REMOTE=local", "XDG_CACHE_HOME="+filepath.Join(n.root, "cache"))
	cmd.WaitDelay = 5 * time.Second
	return cmd
}

// run runs a Nix command to completion and returns its stdout.
func (n *nixRoot) run(t *testing.T, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var stdout, stderr bytes.Buffer
	cmd := n.command(ctx, args...)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("%s: %v\nstdout: %s\nstderr: %s", strings.Join(args, " "), err, &stdout, &stderr)
	}
	return stdout.String()
}

func (n *nixRoot) hostPath(storePath string) string { return filepath.Join(n.root, storePath) }

func writeTempFile(t *testing.T, name, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// While we act as a running collector (gc.lock exclusive + gc socket), a
// real Nix client must send its temp roots to our socket, and ReadTempRoots
// must see the roots in its temproots file while it runs.
func TestNixClientUsesOurGCSocket(t *testing.T) {
	n := newNixRoot(t)
	fa := writeTempFile(t, "a.txt", "interop a\n")
	fb := writeTempFile(t, "b.txt", "interop b\n")

	holdB := make(chan struct{})
	var once sync.Once
	release := func() { once.Do(func() { close(holdB) }) }
	defer release()
	c := startFakeCollector(t, n.stateDir, func(line string) bool {
		if strings.HasSuffix(line, "-b.txt") {
			<-holdB // keep Nix waiting for the ack of its second root
		}
		return true
	})

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var stdout, stderr bytes.Buffer
	cmd := n.command(ctx, "nix-store", "--add", fa, fb)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "Nix to send b.txt's store path to our socket", func() bool {
		lines, _ := c.lines()
		for _, l := range lines {
			if strings.HasSuffix(l, "-b.txt") {
				return true
			}
		}
		return false
	})
	lines, accepted := c.lines()
	var pathA string
	for _, l := range lines {
		if !strings.HasPrefix(l, "/nix/store/") {
			t.Errorf("socket received %q, not a store path", l)
		}
		if strings.HasSuffix(l, "-a.txt") {
			pathA = l
		}
	}
	if pathA == "" || accepted != 1 {
		t.Fatalf("socket received %q over %d connections", lines, accepted)
	}

	// Nix is alive, holds its temproots file and has written a.txt's path.
	pid := cmd.Process.Pid // unshare and sh exec into nix-store
	for _, removeStale := range []bool{false, true} {
		scan, err := ReadTempRoots(n.stateDir, removeStale)
		if err != nil {
			t.Fatal(err)
		}
		if len(scan.Files) != 1 || len(scan.Stale)+len(scan.Errors) != 0 {
			t.Fatalf("removeStale=%v: %+v", removeStale, scan)
		}
		f := scan.Files[0]
		if f.PID != pid || f.Path != filepath.Join(n.stateDir, "temproots", fmt.Sprint(pid)) {
			t.Fatalf("temproots file %+v, Nix pid %d", f, pid)
		}
		found := false
		for _, r := range f.Roots {
			found = found || r == pathA
			if strings.HasSuffix(r, "-b.txt") {
				t.Errorf("b.txt in temproots before its ack: %q", f.Roots)
			}
		}
		if !found {
			t.Fatalf("Nix's temproots %q lack %s", f.Roots, pathA)
		}
	}

	release()
	if err := cmd.Wait(); err != nil {
		t.Fatalf("nix-store --add: %v\n%s", err, &stderr)
	}
	t.Logf("socket received %q; Nix temproots held %s", lines, pathA)
	out := strings.Fields(stdout.String())
	lines, _ = c.lines()
	var sent []string
	for _, l := range lines { // Nix may send a root more than once
		if len(sent) == 0 || sent[len(sent)-1] != l {
			sent = append(sent, l)
		}
	}
	if !reflect.DeepEqual(out, sent) {
		t.Fatalf("nix-store printed %q, socket received %q", out, lines)
	}
}

// A real Nix collector must see and honour our temporary roots.
func TestNixHonoursOurTempRoots(t *testing.T) {
	n := newNixRoot(t)
	p := strings.TrimSpace(n.run(t, "nix-store", "--add", writeTempFile(t, "c.txt", "interop c\n")))
	if !strings.HasPrefix(p, "/nix/store/") {
		t.Fatalf("nix-store --add printed %q", p)
	}
	tr, err := OpenTempRoots(n.stateDir)
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := tr.Add(ctx, p); err != nil {
		t.Fatal(err)
	}

	roots := n.run(t, "nix-store", "--gc", "--print-roots")
	want := fmt.Sprintf("{temp:%d} -> %s", os.Getpid(), p)
	if !strings.Contains(roots, want+"\n") {
		t.Fatalf("nix-store --gc --print-roots lacks %q:\n%s", want, roots)
	}

	n.run(t, "nix-store", "--gc")
	if _, err := os.Stat(n.hostPath(p)); err != nil {
		t.Fatalf("Nix's collector deleted our temp root: %v", err)
	}

	if err := tr.Close(); err != nil {
		t.Fatal(err)
	}
	n.run(t, "nix-store", "--gc")
	if _, err := os.Stat(n.hostPath(p)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("path survived GC after our temp root went away: %v", err)
	}
}

// Nix takes PathLocks on the path it adds; our LockPaths must exclude it.
func TestNixHonoursOurPathLocks(t *testing.T) {
	n := newNixRoot(t)
	src := writeTempFile(t, "d.txt", "interop d\n")
	p := strings.TrimSpace(n.run(t, "nix-store", "--add", src))
	n.run(t, "nix-store", "--delete", p)
	if _, err := os.Stat(n.hostPath(p)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("nix-store --delete left %s: %v", p, err)
	}

	pl, err := LockPaths(context.Background(), []string{n.hostPath(p)}, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer pl.Unlock(false)

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var stdout, stderr bytes.Buffer
	cmd := n.command(ctx, "nix-store", "--add", src)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		t.Fatalf("nix-store --add finished while we held the path lock: %v\n%s%s", err, &stdout, &stderr)
	case <-time.After(700 * time.Millisecond):
	}
	if err := pl.Unlock(false); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("nix-store --add: %v\n%s", err, &stderr)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("nix-store --add did not finish after we released the path lock")
	}
	if got := strings.TrimSpace(stdout.String()); got != p {
		t.Fatalf("nix-store --add printed %q, want %q", got, p)
	}
	// Nix released with deletion: the lock file is gone.
	if _, err := os.Stat(n.hostPath(p) + ".lock"); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("Nix left %s.lock: %v", p, err)
	}
}
