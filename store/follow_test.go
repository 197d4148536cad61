package store

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"storekeeper/nix/storepath"
)

// TestFollowLinksToStorePath: arguments read as Nix's
// followLinksToStorePath: a store path, a file inside one, symlinks
// (relative, chained) from outside the store, the physical store dir of
// a chroot store; and refusals wrapping ErrBadStorePath.
func TestFollowLinksToStorePath(t *testing.T) {
	root := t.TempDir()
	real := filepath.Join(root, "real", "store")
	lay := Layout{StoreDir: "/nix/store", RealStoreDir: real}
	const a = "0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c-a"
	const b = "1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d-b"
	if err := os.MkdirAll(filepath.Join(real, a, "bin"), 0o755); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(root, "out")
	os.MkdirAll(out, 0o755)
	os.Symlink("/nix/store/"+a+"/bin/x", filepath.Join(out, "result"))          // into the store, logical
	os.Symlink("result", filepath.Join(out, "rel"))                             // relative, chained
	os.Symlink(filepath.Join(real, b), filepath.Join(out, "physical"))          // the physical dir
	os.Symlink(filepath.Join(out, "loop"), filepath.Join(out, "loop"))          // a loop
	os.Symlink(filepath.Join(root, "elsewhere"), filepath.Join(out, "outside")) // never reaches the store
	for _, c := range []struct{ arg, want string }{
		{"/nix/store/" + a, "/nix/store/" + a},
		{"/nix/store/" + a + "/bin/x", "/nix/store/" + a},
		{"/nix/store/" + a + "/../" + b, "/nix/store/" + b},
		{filepath.Join(real, a, "bin"), "/nix/store/" + a},
		{filepath.Join(out, "result"), "/nix/store/" + a},
		{filepath.Join(out, "rel"), "/nix/store/" + a},
		{filepath.Join(out, "physical"), "/nix/store/" + b},
	} {
		got, err := lay.FollowLinksToStorePath(c.arg)
		if err != nil || got != c.want {
			t.Errorf("%s: got %q, %v; want %q", c.arg, got, err, c.want)
		}
	}
	for _, arg := range []string{"/nix/store", "/nix/store/" + a + "/..", "/nix/store/bad-name", filepath.Join(out, "loop"), filepath.Join(out, "outside"), out} {
		if got, err := lay.FollowLinksToStorePath(arg); !errors.Is(err, storepath.ErrBadStorePath) {
			t.Errorf("%s: got %q, %v; want an error wrapping ErrBadStorePath", arg, got, err)
		}
	}
}
