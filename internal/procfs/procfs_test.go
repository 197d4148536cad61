package procfs_test

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"storekeeper/internal/procfs"
)

func write(t *testing.T, p string, data []byte) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, data, 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestCommandLine: NULs become spaces, the trailing one goes, a long one
// is cut at MaxCommandLine, control characters stay (the printer
// escapes them), a missing process gives "".
func TestCommandLine(t *testing.T) {
	proc := t.TempDir()
	write(t, proc+"/1/cmdline", []byte("sleep\x0060\x00"))
	write(t, proc+"/2/cmdline", []byte("evil\x1b]0;x\x07\nline\x00a b\x00"))
	write(t, proc+"/3/cmdline", bytes.Repeat([]byte("a\x00"), procfs.MaxCommandLine))
	write(t, proc+"/4/cmdline", nil) // a kernel thread
	for pid, want := range map[int]string{1: "sleep 60", 2: "evil\x1b]0;x\x07\nline a b", 4: "", 5: "", 0: ""} {
		if got := procfs.CommandLine(proc, pid); got != want {
			t.Errorf("pid %d: %q, want %q", pid, got, want)
		}
	}
	if got := procfs.CommandLine(proc, 3); len(got) != procfs.MaxCommandLine-1 || !strings.HasPrefix(got, "a a a") {
		t.Errorf("long command line: %d bytes %q...", len(got), got[:min(len(got), 20)])
	}
}

// TestStatAndUID: the state and flags after the last ')' (a command name
// may hold ") S"), the real uid (the first of the Uid line).
func TestStatAndUID(t *testing.T) {
	proc := t.TempDir()
	write(t, proc+"/7/stat", []byte("7 (a) S 1 (b)) Z 1 7 7 0 -1 2097216 0 0 0 0 0 0 0 0 20 0 1 0 12345 0 0\n"))
	write(t, proc+"/8/stat", []byte("8 (x) S 1\n"))
	write(t, proc+"/10/stat", []byte("10 (x) S 1 10 10 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 12x 0 0\n"))
	write(t, proc+"/7/status", []byte("Name:\ta\nUid:\t1000\t0\t0\t0\nGid:\t0\t0\t0\t0\n"))
	st, err := procfs.ReadStat(proc, 7)
	if err != nil || st.State != 'Z' || !st.Zombie() || !st.KernelThread() || st.StartTicks != 12345 {
		t.Errorf("stat %+v %v", st, err)
	}
	if got := st.Started(time.Unix(1000, 0)); !got.Equal(time.Unix(1123, 450e6)) {
		t.Errorf("started %v", got)
	}
	for _, pid := range []int{8, 10} {
		if _, err := procfs.ReadStat(proc, pid); err == nil || !strings.Contains(err.Error(), fmt.Sprintf("%d/stat", pid)) {
			t.Errorf("bad stat %d: %v", pid, err)
		}
	}
	if _, err := procfs.ReadStat(proc, 9); !procfs.Vanished(err) {
		t.Errorf("missing process: %v", err)
	}
	if uid, err := procfs.RealUID(proc, 7); err != nil || uid != 1000 {
		t.Errorf("uid %d %v", uid, err)
	}
	if _, err := procfs.RealUID(proc, 8); err == nil {
		t.Errorf("no status: no error")
	}
}

// TestMapsBounds: a line longer than MaxMapsLine is passed cut and the
// next line is read whole; past MaxMapsLines the rest is not read and
// truncated says so; memory does not grow with the file (it streams).
func TestMapsBounds(t *testing.T) {
	proc := t.TempDir()
	long := "7f00-7f01 r-xp 0 08:01 1 /" + strings.Repeat("x", procfs.MaxMapsLine+100)
	write(t, proc+"/1/maps", []byte("a b c d e /first\n"+long+"\na b c d e /after\nlast-without-newline"))
	var lines []string
	cut, err := procfs.Maps(proc, 1, func(l []byte) { lines = append(lines, string(l)) })
	if err != nil || cut || len(lines) != 4 {
		t.Fatalf("%d lines, cut %v, %v", len(lines), cut, err)
	}
	if lines[0] != "a b c d e /first" || len(lines[1]) != procfs.MaxMapsLine || lines[2] != "a b c d e /after" || lines[3] != "last-without-newline" {
		t.Errorf("lines %q %d %q %q", lines[0], len(lines[1]), lines[2], lines[3])
	}

	many := bytes.Repeat([]byte("x\n"), procfs.MaxMapsLines)
	write(t, proc+"/2/maps", append(many, "a b c d e /beyond\n"...))
	n, beyond := 0, false
	cut, err = procfs.Maps(proc, 2, func(l []byte) {
		n++
		beyond = beyond || bytes.Contains(l, []byte("beyond"))
	})
	if err != nil || !cut || n != procfs.MaxMapsLines || beyond {
		t.Errorf("past the bound: %d lines, cut %v, beyond read %v, %v", n, cut, beyond, err)
	}
	write(t, proc+"/3/maps", many)
	if cut, err := procfs.Maps(proc, 3, func([]byte) {}); cut || err != nil {
		t.Errorf("exactly at the bound: cut %v, %v", cut, err)
	}
}

// TestEnvironBound: past MaxEnviron the variable cut by the bound is
// dropped, so every variable returned is whole.
func TestEnvironBound(t *testing.T) {
	proc := t.TempDir()
	head := "A=1\x00"
	fill := "B=" + strings.Repeat("y", procfs.MaxEnviron-len(head)-2-10) + "\x00"
	write(t, proc+"/1/environ", []byte(head+fill+"CUT=/nix/store/abcdefgh\x00"))
	env, cut, err := procfs.Environ(proc, 1)
	if err != nil || !cut || string(env) != head+fill {
		t.Errorf("cut %v, %d bytes (want %d), ends %q, %v", cut, len(env), len(head+fill), env[max(0, len(env)-10):], err)
	}
	write(t, proc+"/2/environ", []byte(head))
	if env, cut, err := procfs.Environ(proc, 2); err != nil || cut || string(env) != head {
		t.Errorf("small: %q %v %v", env, cut, err)
	}
}

// TestFDsAndErrors: descriptors listed in batches (more than one batch),
// dot entries skipped; a missing process is Vanished, a denied read
// Denied.
func TestFDsAndErrors(t *testing.T) {
	proc := t.TempDir()
	if err := os.MkdirAll(proc+"/1/fd", 0o755); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 600; i++ {
		if err := os.Symlink("/x", filepath.Join(proc, "1/fd", strings.Repeat("1", 1)+string(rune('a'+i%26))+strings.Repeat("0", i/26))); err != nil {
			t.Fatal(err)
		}
	}
	n := 0
	if err := procfs.FDs(proc, 1, func(string) { n++ }); err != nil || n != 600 {
		t.Errorf("%d fds, %v", n, err)
	}
	if err := procfs.FDs(proc, 2, func(string) {}); !procfs.Vanished(err) || procfs.Denied(err) {
		t.Errorf("missing: %v", err)
	}
	denied := &fs.PathError{Op: "open", Path: "x", Err: fs.ErrPermission}
	if !procfs.Denied(denied) || procfs.Vanished(denied) || procfs.Denied(errors.New("x")) {
		t.Errorf("Denied/Vanished misclassify")
	}
	if l, err := procfs.Link(proc, 1, "fd/1a"); err != nil || l != "/x" {
		t.Errorf("link %q %v", l, err)
	}
}

// TestBootTime: /proc/stat's btime line, found after long lines; a file
// without one is an error naming it.
func TestBootTime(t *testing.T) {
	proc := t.TempDir()
	write(t, proc+"/stat", []byte("cpu 1 2 3\nintr "+strings.Repeat("0 ", 1<<20)+"\nbtime 1700000000\nprocesses 5\n"))
	if bt, err := procfs.BootTime(proc); err != nil || !bt.Equal(time.Unix(1700000000, 0)) {
		t.Errorf("boot time %v %v", bt, err)
	}
	none := t.TempDir()
	write(t, none+"/stat", []byte("cpu 1 2 3\n"))
	if _, err := procfs.BootTime(none); err == nil || !strings.Contains(err.Error(), none+"/stat") {
		t.Errorf("no btime: %v", err)
	}
	if bt, err := procfs.BootTime("/proc"); err != nil || bt.After(time.Now()) || bt.Year() < 2000 {
		t.Errorf("this machine's boot time %v %v", bt, err)
	}
}
