package store

import (
	"errors"
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
		{"relative root", LayoutOptions{StoreURI: "local?root=mnt"}, Layout{}, true},
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
