package fs

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// makeTree makes name in dir: a directory with files saying tag, or,
// with file, a single file saying tag.
func makeTree(t *testing.T, dir, name, tag string, file bool) {
	t.Helper()
	p := filepath.Join(dir, name)
	if file {
		if err := os.WriteFile(p, []byte(tag), 0o444); err != nil {
			t.Fatal(err)
		}
		return
	}
	for _, sub := range []string{"", "bin", "share/doc"} {
		if err := os.MkdirAll(filepath.Join(p, sub), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(p, sub, "marker"), []byte(tag), 0o444); err != nil {
			t.Fatal(err)
		}
	}
}

// treeTag says which tree is at name ("" when nothing is), failing when
// it is not one of the complete trees makeTree made.
func treeTag(t *testing.T, dir, name string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	fi, err := os.Lstat(p)
	if os.IsNotExist(err) {
		return ""
	}
	if err != nil {
		t.Fatal(err)
	}
	if !fi.IsDir() {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	tag := ""
	for _, sub := range []string{"", "bin", "share/doc"} {
		b, err := os.ReadFile(filepath.Join(p, sub, "marker"))
		if err != nil {
			t.Fatalf("%s is not a complete tree: %v", name, err)
		}
		if tag != "" && string(b) != tag {
			t.Fatalf("%s mixes trees %s and %s", name, tag, b)
		}
		tag = string(b)
	}
	return tag
}

func openDir(t *testing.T, p string) int {
	t.Helper()
	fd, err := unix.Open(p, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	return fd
}

// TestSwap: Swap (RENAME_EXCHANGE) and SwapByRenames (its fallback) both
// exchange two trees, directories or files, and leave no temporary name.
func TestSwap(t *testing.T) {
	for _, byRenames := range []bool{false, true} {
		for _, kinds := range [][2]bool{{false, false}, {true, true}, {false, true}, {true, false}} {
			t.Run(fmt.Sprintf("renames=%v/afile=%v/bfile=%v", byRenames, kinds[0], kinds[1]), func(t *testing.T) {
				dir := t.TempDir()
				makeTree(t, dir, "a", "old", kinds[0])
				makeTree(t, dir, "b", "new", kinds[1])
				fd := openDir(t, dir)
				swap := Swap
				if byRenames {
					swap = SwapByRenames
				}
				if err := swap(fd, "a", "b"); err != nil {
					if !byRenames && kinds[0] != kinds[1] {
						t.Skip(err) // some file systems exchange only like types
					}
					t.Fatal(err)
				}
				if a, b := treeTag(t, dir, "a"), treeTag(t, dir, "b"); a != "new" || b != "old" {
					t.Fatalf("after the swap a is %q and b %q", a, b)
				}
				if _, err := os.Lstat(filepath.Join(dir, SwapTemp("a"))); !os.IsNotExist(err) {
					t.Fatalf("the temporary name is left: %v", err)
				}
			})
		}
	}
}

// TestSwapMissing: swapping with a missing side fails and changes nothing.
func TestSwapMissing(t *testing.T) {
	dir := t.TempDir()
	makeTree(t, dir, "a", "old", false)
	fd := openDir(t, dir)
	for _, swap := range []func(int, string, string) error{Swap, SwapByRenames} {
		if err := swap(fd, "a", "b"); err == nil {
			t.Fatal("swapping with a missing b succeeded")
		}
		if treeTag(t, dir, "a") != "old" {
			t.Fatal("a changed")
		}
	}
}

// TestSwapHelper is not a test: TestSwapKilled runs the test binary with
// SK_SWAP_DIR set, and this swaps a and b of that directory by renames,
// stopping at step SK_SWAP_STEP (saying "ready") until it is killed.
func TestSwapHelper(t *testing.T) {
	dir := os.Getenv("SK_SWAP_DIR")
	if dir == "" {
		t.Skip("helper process of TestSwapKilled")
	}
	stop, _ := strconv.Atoi(os.Getenv("SK_SWAP_STEP"))
	testHookSwapStep = func(step int) {
		if step == stop {
			fmt.Println("ready")
			select {}
		}
	}
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY, 0)
	if err != nil {
		t.Fatal(err)
	}
	SwapByRenames(fd, "a", "b")
	fmt.Println("ready")
	select {}
}

// TestSwapKilled: SwapByRenames killed with SIGKILL between any two of its
// steps leaves a complete tree at a, or (between its first two renames)
// the old tree complete at SwapTemp(a), which RecoverSwap puts back;
// after RecoverSwap, a and b hold the two trees, and a second swap
// finishes the job.
func TestSwapKilled(t *testing.T) {
	for _, file := range []bool{false, true} {
		for step := 0; step <= 3; step++ {
			t.Run(fmt.Sprintf("file=%v/step=%d", file, step), func(t *testing.T) {
				dir := t.TempDir()
				makeTree(t, dir, "a", "old", file)
				makeTree(t, dir, "b", "new", file)
				cmd := exec.Command(os.Args[0], "-test.run=^TestSwapHelper$")
				cmd.Env = append(os.Environ(), "SK_SWAP_DIR="+dir, "SK_SWAP_STEP="+strconv.Itoa(step))
				out, err := cmd.StdoutPipe()
				if err != nil {
					t.Fatal(err)
				}
				if err := cmd.Start(); err != nil {
					t.Fatal(err)
				}
				line, _ := bufio.NewReader(out).ReadString('\n')
				cmd.Process.Signal(syscall.SIGKILL)
				cmd.Wait()
				if line != "ready\n" {
					t.Fatalf("helper said %q", line)
				}
				a, b, tmp := treeTag(t, dir, "a"), treeTag(t, dir, "b"), treeTag(t, dir, SwapTemp("a"))
				switch {
				case a == "" && (file || step != 1):
					t.Fatalf("a is missing after a kill at step %d", step)
				case a == "" && tmp != "old":
					t.Fatalf("a is missing and the old tree is not at %s (%q)", SwapTemp("a"), tmp)
				}
				fd := openDir(t, dir)
				if err := RecoverSwap(fd, "a", "b"); err != nil {
					t.Fatal(err)
				}
				a, b, tmp = treeTag(t, dir, "a"), treeTag(t, dir, "b"), treeTag(t, dir, SwapTemp("a"))
				if tmp != "" || !(a == "old" && b == "new" || a == "new" && b == "old") {
					t.Fatalf("after recovery a=%q b=%q %s=%q", a, b, SwapTemp("a"), tmp)
				}
				if err := SwapByRenames(fd, "a", "b"); err != nil {
					t.Fatal(err)
				}
				if a2 := treeTag(t, dir, "a"); a2 == a {
					t.Fatalf("the second swap left a as %q", a2)
				}
			})
		}
	}
}
