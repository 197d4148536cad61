package store

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestResolveLayout(t *testing.T) {
	env := func(m map[string]string) func(string) string {
		return func(k string) string { return m[k] }
	}
	tests := []struct {
		name string
		o    LayoutOptions
		want Layout
		err  bool
	}{
		{"default", LayoutOptions{}, Layout{StoreDir: "/nix/store", RealStoreDir: "/nix/store", StateDir: "/nix/var/nix"}, false},
		{"local", LayoutOptions{StoreURI: "local"}, Layout{StoreDir: "/nix/store", RealStoreDir: "/nix/store", StateDir: "/nix/var/nix"}, false},
		{"daemon", LayoutOptions{StoreURI: "daemon"}, Layout{StoreDir: "/nix/store", RealStoreDir: "/nix/store", StateDir: "/nix/var/nix"}, false},
		{"bare root", LayoutOptions{StoreURI: "/mnt"}, Layout{StoreDir: "/nix/store", RealStoreDir: "/mnt/nix/store", StateDir: "/mnt/nix/var/nix", Root: "/mnt"}, false},
		{"local root", LayoutOptions{StoreURI: "local?root=/mnt/"}, Layout{StoreDir: "/nix/store", RealStoreDir: "/mnt/nix/store", StateDir: "/mnt/nix/var/nix", Root: "/mnt"}, false},
		{"guix", LayoutOptions{StoreURI: "local?store=/gnu/store&state=/var/guix"}, Layout{StoreDir: "/gnu/store", RealStoreDir: "/gnu/store", StateDir: "/var/guix"}, false},
		{"root and state", LayoutOptions{StoreURI: "local?root=/r&state=/s"}, Layout{StoreDir: "/nix/store", RealStoreDir: "/r/nix/store", StateDir: "/s", Root: "/r"}, false},
		{"real", LayoutOptions{StoreURI: "local?real=/phys"}, Layout{StoreDir: "/nix/store", RealStoreDir: "/phys", StateDir: "/nix/var/nix"}, false},
		{"env", LayoutOptions{Getenv: env(map[string]string{"NIX_STORE_DIR": "/x/store", "NIX_STATE_DIR": "/x/state"})}, Layout{StoreDir: "/x/store", RealStoreDir: "/x/store", StateDir: "/x/state"}, false},
		{"flags win", LayoutOptions{StoreURI: "local?store=/gnu/store", StoreDir: "/y/store", StateDir: "/y/state", Getenv: env(map[string]string{"NIX_STATE_DIR": "/x/state"})}, Layout{StoreDir: "/y/store", RealStoreDir: "/y/store", StateDir: "/y/state"}, false},
		{"percent-encoded", LayoutOptions{StoreURI: "local?root=/a%20b"}, Layout{StoreDir: "/nix/store", RealStoreDir: "/a b/nix/store", StateDir: "/a b/nix/var/nix", Root: "/a b"}, false},
		{"ssh", LayoutOptions{StoreURI: "ssh://host"}, Layout{}, true},
		{"https", LayoutOptions{StoreURI: "https://cache.nixos.org"}, Layout{}, true},
		{"unknown param", LayoutOptions{StoreURI: "local?foo=1"}, Layout{}, true},
		{"relative store dir", LayoutOptions{StoreURI: "local?store=gnu/store"}, Layout{}, true},
		{"junk", LayoutOptions{StoreURI: "whatever"}, Layout{}, true},
		{"store dir slash", LayoutOptions{StoreDir: "/"}, Layout{}, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ResolveLayout(tc.o)
			if tc.err {
				if err == nil || !errors.Is(err, ErrBadStoreURI) {
					t.Fatalf("want ErrBadStoreURI, got %v (%+v)", err, got)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got != tc.want {
				t.Fatalf("got %+v\nwant %+v", got, tc.want)
			}
		})
	}
}

// TestResolveLayoutRelative: a relative root (a --store path with a "/",
// as Nix reads it, or a root, state or real parameter) is taken against
// the working directory; a bare word keeps its meaning or is refused
// with a hint, and the logical store dir must still be absolute.
func TestResolveLayoutRelative(t *testing.T) {
	wd := func() (string, error) { return "/work/dir", nil }
	root := func(r string) Layout {
		return Layout{StoreDir: "/nix/store", RealStoreDir: r + "/nix/store", StateDir: r + "/nix/var/nix", Root: r}
	}
	for _, c := range []struct {
		uri  string
		want Layout
	}{
		{"./demo-store", root("/work/dir/demo-store")},
		{"./demo-store/", root("/work/dir/demo-store")},
		{"demo-store/", root("/work/dir/demo-store")},
		{"a/b", root("/work/dir/a/b")},
		{"../up", root("/work/up")},
		{".", root("/work/dir")},
		{"..", root("/work")},
		{"./", root("/work/dir")},
		{"./demo-store?state=/s", Layout{StoreDir: "/nix/store", RealStoreDir: "/work/dir/demo-store/nix/store", StateDir: "/s", Root: "/work/dir/demo-store"}},
		{"local?root=./x", root("/work/dir/x")},
		{"local?root=x", root("/work/dir/x")},
		{"local?root=../x", root("/work/x")},
		{"local?state=s&real=./r", Layout{StoreDir: "/nix/store", RealStoreDir: "/work/dir/r", StateDir: "/work/dir/s"}},
		{"/abs", root("/abs")},
		{"local", Layout{StoreDir: "/nix/store", RealStoreDir: "/nix/store", StateDir: "/nix/var/nix"}},
		{"daemon", Layout{StoreDir: "/nix/store", RealStoreDir: "/nix/store", StateDir: "/nix/var/nix"}},
		{"auto", Layout{StoreDir: "/nix/store", RealStoreDir: "/nix/store", StateDir: "/nix/var/nix"}},
	} {
		got, err := ResolveLayout(LayoutOptions{StoreURI: c.uri, Getwd: wd})
		if err != nil || got != c.want {
			t.Errorf("--store %s: %+v, %v\nwant %+v", c.uri, got, err, c.want)
		}
	}
	for _, c := range []struct{ uri, want string }{
		{"demo-store", "as ./demo-store"},
		{"local?store=nix/store", `the store dir "nix/store" is not an absolute path`},
		{"ssh://host/x", "remote store"},
	} {
		got, err := ResolveLayout(LayoutOptions{StoreURI: c.uri, Getwd: wd})
		if !errors.Is(err, ErrBadStoreURI) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("--store %s: %+v, %v; want ErrBadStoreURI saying %q", c.uri, got, err, c.want)
		}
	}
	// The working directory is asked only for a relative path, and its
	// error is the cause.
	gone := errors.New("getcwd: no such file or directory")
	failing := func() (string, error) { return "", gone }
	if _, err := ResolveLayout(LayoutOptions{StoreURI: "./x", Getwd: failing}); !errors.Is(err, ErrBadStoreURI) || !errors.Is(err, gone) || !strings.Contains(err.Error(), `"./x"`) {
		t.Errorf("relative root without a working directory: %v; want ErrBadStoreURI wrapping the cause and naming ./x", err)
	}
	if _, err := ResolveLayout(LayoutOptions{StoreURI: "/abs", Getwd: failing}); err != nil {
		t.Errorf("absolute root without a working directory: %v", err)
	}
	// Without Getwd, the process's working directory.
	cwd, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	got, err := ResolveLayout(LayoutOptions{StoreURI: "./demo"})
	if real, _ := filepath.EvalSymlinks(cwd); err != nil || (got.Root != filepath.Join(cwd, "demo") && got.Root != filepath.Join(real, "demo")) {
		t.Errorf("--store ./demo from %s: %+v, %v", cwd, got, err)
	}
}

func TestLayoutPaths(t *testing.T) {
	l, err := ResolveLayout(LayoutOptions{StoreURI: "/mnt"})
	if err != nil {
		t.Fatal(err)
	}
	p := "/nix/store/00000000000000000000000000000000-x/bin/y"
	if got := l.RealPath(p); got != "/mnt"+p {
		t.Errorf("RealPath = %s", got)
	}
	if got := l.RealPath("/etc/passwd"); got != "/etc/passwd" {
		t.Errorf("RealPath outside store = %s", got)
	}
	for got, want := range map[string]string{
		l.DBPath():       "/mnt/nix/var/nix/db/db.sqlite",
		l.LinksDir():     "/mnt/nix/store/.links",
		l.TempRootsDir(): "/mnt/nix/var/nix/temproots",
		l.GCLockPath():   "/mnt/nix/var/nix/gc.lock",
		l.GCSocketPath(): "/mnt/nix/var/nix/gc-socket/socket",
		l.OwnStateDir():  "/mnt/nix/var/storekeeper",
	} {
		if got != want {
			t.Errorf("got %s want %s", got, want)
		}
	}
}
