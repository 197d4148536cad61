package fs

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// TestExchange: Exchange swaps trees (or files) between two directories,
// with RENAME_EXCHANGE and by its fallback, leaving no temporary name.
func TestExchange(t *testing.T) {
	for _, fallback := range []bool{false, true} {
		for _, file := range []bool{false, true} {
			t.Run(fmt.Sprintf("fallback=%v/file=%v", fallback, file), func(t *testing.T) {
				store, run := t.TempDir(), t.TempDir()
				makeTree(t, store, "a", "old", file)
				makeTree(t, run, "b", "new", file)
				if fallback {
					defer ForceExchangeFallbackForTest()()
				}
				if err := Exchange(openDir(t, run), "b", openDir(t, store), "a"); err != nil {
					t.Fatal(err)
				}
				if a, b := treeTag(t, store, "a"), treeTag(t, run, "b"); a != "new" || b != "old" {
					t.Fatalf("after the exchange a is %q and b %q", a, b)
				}
				for _, n := range []string{SwapTemp("a"), ExchangeTemp("a")} {
					if _, err := os.Lstat(filepath.Join(store, n)); !os.IsNotExist(err) {
						t.Fatalf("%s is left: %v", n, err)
					}
				}
			})
		}
	}
}

// TestPutNew: PutNew puts a tree where nothing is, and refuses (EEXIST,
// changing nothing) where something is, with and without
// RENAME_NOREPLACE.
func TestPutNew(t *testing.T) {
	for _, fallback := range []bool{false, true} {
		t.Run(fmt.Sprintf("fallback=%v", fallback), func(t *testing.T) {
			if fallback {
				defer ForceExchangeFallbackForTest()()
			}
			store, run := t.TempDir(), t.TempDir()
			makeTree(t, run, "b", "new", false)
			makeTree(t, run, "c", "other", false)
			sfd, rfd := openDir(t, store), openDir(t, run)
			if err := PutNew(rfd, "b", sfd, "a"); err != nil {
				t.Fatal(err)
			}
			if err := PutNew(rfd, "c", sfd, "a"); !errors.Is(err, unix.EEXIST) {
				t.Fatalf("PutNew over an existing tree: %v", err)
			}
			if a, c := treeTag(t, store, "a"), treeTag(t, run, "c"); a != "new" || c != "other" {
				t.Fatalf("a=%q c=%q", a, c)
			}
		})
	}
}

// TestExchangeHelper is not a test: TestExchangeKilled runs the test
// binary with SK_EXCHANGE_DIR set, and this exchanges store/a with run/b
// by the fallback, stopping at its SK_EXCHANGE_POINT'th step (counting
// Exchange's and SwapByRenames' steps in the order they come; past the
// last: after the exchange) and saying "ready" until it is killed.
func TestExchangeHelper(t *testing.T) {
	dir := os.Getenv("SK_EXCHANGE_DIR")
	if dir == "" {
		t.Skip("helper process of TestExchangeKilled")
	}
	stop, _ := strconv.Atoi(os.Getenv("SK_EXCHANGE_POINT"))
	n := 0
	point := func(int) {
		if n == stop {
			fmt.Println("ready")
			select {}
		}
		n++
	}
	testHookExchangeStep, testHookSwapStep = point, point
	testForceExchangeFallback = true
	sfd, err := unix.Open(filepath.Join(dir, "store"), unix.O_RDONLY|unix.O_DIRECTORY, 0)
	if err != nil {
		t.Fatal(err)
	}
	rfd, err := unix.Open(filepath.Join(dir, "run"), unix.O_RDONLY|unix.O_DIRECTORY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := Exchange(rfd, "b", sfd, "a"); err != nil {
		fmt.Println(err)
	}
	fmt.Println("ready")
	select {}
}

// TestExchangeKilled: Exchange's fallback killed with SIGKILL at each of
// its steps leaves store/a whole (old or new), or, inside the directory
// swap's window, the old tree whole at SwapTemp("a"); RecoverExchange
// then leaves a whole and no temporary name in the store directory, the
// other tree moved to the directory it is given, and an Exchange after
// it works.
func TestExchangeKilled(t *testing.T) {
	for _, file := range []bool{false, true} {
		for point := 0; point <= 6; point++ {
			t.Run(fmt.Sprintf("file=%v/point=%d", file, point), func(t *testing.T) {
				dir := t.TempDir()
				store, run, out := filepath.Join(dir, "store"), filepath.Join(dir, "run"), filepath.Join(dir, "out")
				for _, d := range []string{store, run, out} {
					if err := os.Mkdir(d, 0o755); err != nil {
						t.Fatal(err)
					}
				}
				makeTree(t, store, "a", "old", file)
				makeTree(t, run, "b", "new", file)
				cmd := exec.Command(os.Args[0], "-test.run=^TestExchangeHelper$")
				cmd.Env = append(os.Environ(), "SK_EXCHANGE_DIR="+dir, "SK_EXCHANGE_POINT="+strconv.Itoa(point))
				stdout, err := cmd.StdoutPipe()
				if err != nil {
					t.Fatal(err)
				}
				if err := cmd.Start(); err != nil {
					t.Fatal(err)
				}
				line, _ := bufio.NewReader(stdout).ReadString('\n')
				cmd.Process.Signal(syscall.SIGKILL)
				cmd.Wait()
				if line != "ready\n" {
					t.Fatalf("helper said %q", line)
				}
				a := treeTag(t, store, "a")
				if a == "" && treeTag(t, store, SwapTemp("a")) != "old" {
					t.Fatalf("a is missing and the old tree is not at %s", SwapTemp("a"))
				}
				if a == "" && file {
					t.Fatal("a file went missing")
				}
				if err := RecoverExchange(openDir(t, store), "a", openDir(t, out)); err != nil {
					t.Fatal(err)
				}
				a = treeTag(t, store, "a")
				if a != "old" && a != "new" {
					t.Fatalf("after recovery a is %q", a)
				}
				ents, _ := os.ReadDir(store)
				if len(ents) != 1 {
					t.Fatalf("the store directory holds %v", ents)
				}
				// Every tree is somewhere whole: the other in run/b or out.
				other := treeTag(t, run, "b")
				if other == "" {
					ents, _ := os.ReadDir(out)
					if len(ents) != 1 {
						t.Fatalf("the other tree is neither in run nor out: %v", ents)
					}
					other = treeTag(t, out, ents[0].Name())
				}
				if other == a || other == "" {
					t.Fatalf("a=%q, the other tree %q", a, other)
				}
				if a == "old" && treeTag(t, run, "b") == "new" {
					if err := Exchange(openDir(t, run), "b", openDir(t, store), "a"); err != nil {
						t.Fatal(err)
					}
					if treeTag(t, store, "a") != "new" {
						t.Fatal("the exchange after recovery did not work")
					}
				}
			})
		}
	}
}
