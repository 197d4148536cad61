package atomicfile

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

func assertOnly(t *testing.T, dir string, names ...string) {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, e := range ents {
		got = append(got, e.Name())
	}
	if strings.Join(got, ",") != strings.Join(names, ",") {
		t.Errorf("%s holds %v, want %v", dir, got, names)
	}
}

func tempDir(t *testing.T) string {
	dir := t.TempDir()
	os.Chmod(dir, 0o755)
	return dir
}

// TestWriteFile: the file is replaced whole, mode perm whatever the
// umask, nothing else left in the directory; a symlink at the name is
// refused or replaced (never followed) as asked; anything else but a
// regular file there is refused; names that name no file are refused.
func TestWriteFile(t *testing.T) {
	old := syscall.Umask(0o077)
	defer syscall.Umask(old)
	for _, tc := range []struct {
		name    string
		setup   func(dir string) // what is at dir/x before
		at      AtSymlink
		wantErr string // "" for success
		want    string // the entries of dir after
	}{
		{name: "new", want: "x"},
		{name: "existing", setup: func(d string) { os.WriteFile(filepath.Join(d, "x"), []byte("old"), 0o600) }, want: "target,x"},
		{name: "symlink refused", setup: func(d string) { os.Symlink("target", filepath.Join(d, "x")) }, wantErr: "symlink", want: "target,x"},
		{name: "symlink replaced", setup: func(d string) { os.Symlink("target", filepath.Join(d, "x")) }, at: ReplaceSymlink, want: "target,x"},
		{name: "directory", setup: func(d string) { os.Mkdir(filepath.Join(d, "x"), 0o755) }, at: ReplaceSymlink, wantErr: "not a regular file", want: "target,x"},
		{name: "fifo", setup: func(d string) { syscall.Mkfifo(filepath.Join(d, "x"), 0o644) }, wantErr: "not a regular file", want: "target,x"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := tempDir(t)
			target := filepath.Join(dir, "target")
			if tc.setup != nil {
				os.WriteFile(target, []byte("keep"), 0o644)
				tc.setup(dir)
			}
			p := filepath.Join(dir, "x")
			err := WriteFile(p, []byte("new\n"), 0o644, Caller, tc.at)
			if tc.wantErr == "" && err != nil || tc.wantErr != "" && (!errors.Is(err, ErrUnsafe) || !strings.Contains(err.Error(), tc.wantErr)) {
				t.Fatalf("err = %v, want %q", err, tc.wantErr)
			}
			if b, err := os.ReadFile(target); err == nil && string(b) != "keep" {
				t.Errorf("a symlink was followed: its target holds %q", b)
			}
			assertOnly(t, dir, strings.Split(tc.want, ",")...)
			if tc.wantErr != "" {
				return
			}
			st, err := os.Lstat(p)
			if err != nil || !st.Mode().IsRegular() || st.Mode().Perm() != 0o644 {
				t.Fatalf("%s: %v %v, want a regular file 0644 whatever the umask", p, st, err)
			}
			if b, _ := os.ReadFile(p); string(b) != "new\n" {
				t.Errorf("holds %q", b)
			}
		})
	}
	dir := tempDir(t)
	for _, p := range []string{"", "/", dir + "/..", dir + "/."} {
		if err := WriteFile(p, nil, 0o644, Caller, RefuseSymlink); err == nil {
			t.Errorf("WriteFile(%q) succeeded", p)
		}
	}
	d, err := OpenDir(dir, Caller)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	for _, n := range []string{"", ".", "..", "a/b"} {
		if err := Write(d, n, nil, 0o644, ReplaceSymlink); !errors.Is(err, ErrUnsafe) {
			t.Errorf("Write(%q): err = %v, want ErrUnsafe", n, err)
		}
	}
	assertOnly(t, dir)
}

// TestOpenDirOwners: the final directory must be owned as asked and
// writable by its owner alone.
func TestOpenDirOwners(t *testing.T) {
	base := tempDir(t)
	mk := func(name string, mode os.FileMode, uid int) string {
		p := filepath.Join(base, name)
		os.Mkdir(p, 0o700)
		os.Chmod(p, mode)
		if uid >= 0 {
			if err := os.Chown(p, uid, uid); err != nil {
				t.Skipf("chown: %v", err)
			}
		}
		return p
	}
	for _, tc := range []struct {
		name     string
		mode     os.FileMode
		uid      int // -1: the caller's
		owners   Owners
		wantErr  string
		rootOnly bool
	}{
		{name: "own", mode: 0o755, uid: -1, owners: Caller},
		{name: "group-writable", mode: 0o775, uid: -1, owners: RootOrCaller, wantErr: "0775"},
		{name: "world-writable-sticky", mode: 0o777 | os.ModeSticky, uid: -1, owners: RootOrCaller, wantErr: "1777"},
		{name: "other-user", mode: 0o755, uid: 65534, owners: RootOrCaller, wantErr: "uid 65534", rootOnly: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.rootOnly && os.Geteuid() != 0 {
				t.Skip("needs root to make a directory another user owns")
			}
			p := mk(tc.name, tc.mode, tc.uid)
			d, err := OpenDir(p, tc.owners)
			if tc.wantErr == "" {
				if err != nil {
					t.Fatal(err)
				}
				d.Close()
				return
			}
			if !errors.Is(err, ErrUnsafe) || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("err = %v, want ErrUnsafe naming %q", err, tc.wantErr)
			}
		})
	}
	if _, err := OpenDir(filepath.Join(base, "missing"), Caller); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing directory: err = %v", err)
	}
}

// TestOpenDirRootOrCaller: a directory of root's is fine for another
// caller with RootOrCaller, not with Caller (run as nobody, by setpriv).
func TestOpenDirRootOrCaller(t *testing.T) {
	if p := os.Getenv("ATOMICFILE_TEST_OPEN"); p != "" {
		for _, o := range []Owners{RootOrCaller, Caller} {
			d, err := OpenDir(p, o)
			fmt.Printf("owners %d: %v\n", o, err)
			if err == nil {
				d.Close()
			}
		}
		return
	}
	setpriv, err := exec.LookPath("setpriv")
	if os.Geteuid() != 0 || err != nil {
		t.Skip("needs root and setpriv")
	}
	dir := tempDir(t)
	os.Chmod(filepath.Dir(dir), 0o755)
	cmd := exec.Command(setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", os.Args[0], "-test.run=^TestOpenDirRootOrCaller$")
	cmd.Env = append(os.Environ(), "ATOMICFILE_TEST_OPEN="+dir)
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "owners 0: <nil>\n") || !strings.Contains(string(out), "owners 1: "+ErrUnsafe.Error()) {
		t.Errorf("%v\n%s", err, out)
	}
}

// TestOpenDirPath: root follows no symlink that another user could have
// put in the directory's path (as the prometheus user can in Debian's
// /var/lib/prometheus, owned by it: node-exporter swapped for a link to
// /etc would have root write there); a real directory owned by root
// under another user's directory (Debian's layout), links in root's own
// directories and root's links in sticky directories are fine.
func TestOpenDirPath(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to make a directory another user owns")
	}
	base := tempDir(t)
	target := filepath.Join(base, "etc")
	os.Mkdir(target, 0o755)
	os.Mkdir(filepath.Join(target, "sub"), 0o755)
	prom := filepath.Join(base, "prometheus")
	os.Mkdir(prom, 0o755)
	os.Chown(prom, 65534, 65534)
	os.Mkdir(filepath.Join(prom, "node-exporter"), 0o755) // root's, in the other user's
	os.Symlink(target, filepath.Join(prom, "link"))       // root's link, but in the other user's directory
	os.Lchown(filepath.Join(prom, "link"), 65534, 65534)
	sticky := filepath.Join(base, "tmp")
	os.Mkdir(sticky, 0o755)
	os.Chmod(sticky, 0o777|os.ModeSticky)
	os.Symlink(target, filepath.Join(sticky, "rootlink"))
	os.Symlink(target, filepath.Join(sticky, "userlink"))
	os.Lchown(filepath.Join(sticky, "userlink"), 65534, 65534)
	os.Symlink("etc", filepath.Join(base, "rel"))
	os.Symlink(filepath.Join(base, "rel", "sub", ".."), filepath.Join(base, "abs"))
	os.Symlink("loop", filepath.Join(base, "loop"))

	for _, tc := range []struct {
		path    string
		wantErr string // "" for success
	}{
		{path: "prometheus/node-exporter"},
		{path: "prometheus/link", wantErr: "symlink"},
		{path: "prometheus/link/sub", wantErr: "symlink"},
		{path: "tmp/rootlink"},
		{path: "tmp/userlink/sub", wantErr: "symlink"},
		{path: "rel"},
		{path: "abs/sub"},
		{path: "loop", wantErr: "too many levels of symbolic links"},
	} {
		t.Run(tc.path, func(t *testing.T) {
			d, err := OpenDir(filepath.Join(base, tc.path), RootOrCaller)
			if tc.wantErr == "" {
				if err != nil {
					t.Fatal(err)
				}
				d.Close()
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) || tc.wantErr == "symlink" && !errors.Is(err, ErrUnsafe) {
				t.Errorf("err = %v, want %q", err, tc.wantErr)
			}
		})
	}
	// A relative path is resolved from the working directory.
	wd, _ := os.Getwd()
	defer os.Chdir(wd)
	os.Chdir(target)
	if err := WriteFile("c", nil, 0o644, Caller, RefuseSymlink); err != nil {
		t.Errorf("relative path: %v", err)
	}
	assertOnly(t, target, "c", "sub")
}

// TestMkdir: a directory is created (mode perm whatever the umask) only
// in a parent no other user controls, reached through no link of
// another user's; an existing one is left as it is.
func TestMkdir(t *testing.T) {
	old := syscall.Umask(0o077)
	defer syscall.Umask(old)
	base := tempDir(t)
	p := filepath.Join(base, "man")
	if created, err := Mkdir(p, 0o755); err != nil || !created {
		t.Fatalf("created %v, err %v", created, err)
	}
	if st, err := os.Stat(p); err != nil || st.Mode().Perm() != 0o755 {
		t.Errorf("%v %v, want mode 0755 whatever the umask", st, err)
	}
	if created, err := Mkdir(p, 0o755); err != nil || created {
		t.Errorf("again: created %v, err %v", created, err)
	}
	if _, err := Mkdir(filepath.Join(base, "missing", "x"), 0o755); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing parent: err = %v", err)
	}
	if os.Geteuid() != 0 {
		return
	}
	other := filepath.Join(base, "other")
	os.Mkdir(other, 0o755)
	os.Chown(other, 65534, 65534)
	victim := filepath.Join(base, "victim")
	os.Mkdir(victim, 0o755)
	os.Symlink(victim, filepath.Join(other, "link"))
	for _, q := range []string{filepath.Join(other, "x"), filepath.Join(other, "link", "x")} {
		if _, err := Mkdir(q, 0o755); !errors.Is(err, ErrUnsafe) {
			t.Errorf("Mkdir(%s): err = %v, want ErrUnsafe", q, err)
		}
	}
	assertOnly(t, other, "link")
	assertOnly(t, victim)
	sticky := filepath.Join(base, "tmp")
	os.Mkdir(sticky, 0o755)
	os.Chmod(sticky, 0o777|os.ModeSticky)
	if _, err := Mkdir(filepath.Join(sticky, "x"), 0o755); err != nil {
		t.Errorf("in a sticky directory: %v", err)
	}
}

// TestWriteStaleTemp: a temporary file that a writer killed between
// creating and renaming it left behind (kill -9, a unit's stop timeout)
// is removed by a later write of the same name once it is old; a recent
// one (a writer at work) and other names' are left alone.
func TestWriteStaleTemp(t *testing.T) {
	dir := tempDir(t)
	old := time.Now().Add(-time.Hour)
	for _, n := range []string{".x.prom.tmp-1-aaaaaaaaaaaa", ".x.prom.tmp-2-bbbbbbbbbbbb", ".y.prom.tmp-3-cccccccccccc", ".x.prom.tmp-dir"} {
		if n == ".x.prom.tmp-dir" {
			os.Mkdir(filepath.Join(dir, n), 0o755)
		} else {
			os.WriteFile(filepath.Join(dir, n), []byte("x 1\n"), 0o644)
		}
		if n != ".x.prom.tmp-2-bbbbbbbbbbbb" {
			os.Chtimes(filepath.Join(dir, n), old, old)
		}
	}
	if err := WriteFile(filepath.Join(dir, "x.prom"), []byte("x 2\n"), 0o644, Caller, RefuseSymlink); err != nil {
		t.Fatal(err)
	}
	assertOnly(t, dir, ".x.prom.tmp-2-bbbbbbbbbbbb", ".x.prom.tmp-dir", ".y.prom.tmp-3-cccccccccccc", "x.prom")
}

// TestWriteConcurrent: writers of one name racing: every read sees one
// writer's whole file, the last rename wins, no temporary file is left.
func TestWriteConcurrent(t *testing.T) {
	dir := tempDir(t)
	p := filepath.Join(dir, "x")
	contents := make([][]byte, 8)
	for i := range contents {
		contents[i] = bytes.Repeat([]byte{byte('a' + i)}, 64<<10)
	}
	if err := WriteFile(p, contents[0], 0o644, Caller, RefuseSymlink); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	stop := make(chan struct{})
	torn := make(chan string, 1)
	go func() {
		for {
			select {
			case <-stop:
				close(torn)
				return
			default:
			}
			b, err := os.ReadFile(p)
			if err != nil || len(b) != 64<<10 || !bytes.Equal(b, bytes.Repeat(b[:1], len(b))) {
				torn <- fmt.Sprintf("read %d bytes, err %v", len(b), err)
				close(torn)
				return
			}
		}
	}()
	for i := range contents {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 20 {
				if err := WriteFile(p, contents[i], 0o644, Caller, RefuseSymlink); err != nil {
					t.Error(err)
				}
			}
		}()
	}
	wg.Wait()
	close(stop)
	if msg, ok := <-torn; ok {
		t.Error(msg)
	}
	assertOnly(t, dir, "x")
}

// TestWriteFailureKeepsOld: a write that fails midway (the file system
// is full) leaves the old file and no temporary file.
func TestWriteFailureKeepsOld(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to mount a small tmpfs")
	}
	dir := t.TempDir()
	if err := syscall.Mount("tmpfs", dir, "tmpfs", 0, "size=8k,mode=0755"); err != nil {
		t.Skipf("cannot mount a tmpfs: %v", err)
	}
	defer syscall.Unmount(dir, syscall.MNT_DETACH)
	p := filepath.Join(dir, "x")
	if err := WriteFile(p, []byte("old\n"), 0o644, Caller, RefuseSymlink); err != nil {
		t.Fatal(err)
	}
	if err := WriteFile(p, make([]byte, 64<<10), 0o644, Caller, RefuseSymlink); !errors.Is(err, syscall.ENOSPC) || !strings.Contains(err.Error(), "unchanged") {
		t.Fatalf("err = %v, want ENOSPC", err)
	}
	if b, _ := os.ReadFile(p); string(b) != "old\n" {
		t.Errorf("the old file changed: %q", b)
	}
	assertOnly(t, dir, "x")
}

// TestOpenDirSearchOnlyAncestor: a directory on the way that the caller
// may search but not read (mode 0711, another user's) does not stop the
// write, as it does not stop opening the path by name. Run as root
// without CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH (setpriv), as a
// hardened unit may be.
func TestOpenDirSearchOnlyAncestor(t *testing.T) {
	if p := os.Getenv("ATOMICFILE_TEST_WRITE"); p != "" {
		if err := WriteFile(p, []byte("x 1\n"), 0o644, Caller, RefuseSymlink); err != nil {
			fmt.Println("WRITE FAILED:", err)
		}
		return
	}
	setpriv, err := exec.LookPath("setpriv")
	if os.Geteuid() != 0 || err != nil {
		t.Skip("needs root and setpriv")
	}
	base := tempDir(t)
	locked := filepath.Join(base, "locked")
	os.Mkdir(locked, 0o711)
	os.Chown(locked, 65534, 65534)
	tf := filepath.Join(locked, "textfile")
	os.Mkdir(tf, 0o755)
	cmd := exec.Command(setpriv, "--bounding-set=-dac_override,-dac_read_search", os.Args[0], "-test.run=^TestOpenDirSearchOnlyAncestor$")
	cmd.Env = append(os.Environ(), "ATOMICFILE_TEST_WRITE="+filepath.Join(tf, "x.prom"))
	out, err := cmd.CombinedOutput()
	if err != nil || strings.Contains(string(out), "WRITE FAILED") {
		t.Errorf("%v\n%s", err, out)
	}
	assertOnly(t, tf, "x.prom")
}
